//! ucw: bit-exact ~5-bit compression of transformer language models.
//!
//! Data flows one way: model → codec → pack → verify/eval (DESIGN §2). `backend` runs the
//! integer kernels on the CPU or any wgpu adapter with identical results.

#[macro_use]
pub mod error;

pub mod backend;
pub mod cli;
pub mod codec;
pub mod compress;
pub mod digest;
pub mod dtype;
pub mod fixed;
pub mod forward;
pub mod model;
pub mod pack;
#[cfg(test)]
mod test_rng;

pub use error::{Error, Result};
