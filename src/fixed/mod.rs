//! The fixed-point core every layer shares (DESIGN §2): the integer formats of weights and
//! activations and their bounds (`tensor`), the quantized-tensor format (`quant`), rounding
//! of shifts half to even (`round`) and the host constant tables the kernels read
//! (`tables`).
//!
//! What belongs here: types, constants and helpers that more than one of `model`,
//! `backend`, `codec`, `forward`, `compress`, `pack` name. The rule: this module depends on
//! nothing above it (std, external crates and `crate::error` only), so every module can
//! import it and none has to import "up" — in particular `backend` and `codec` no longer
//! import each other's definitions. Kernels and their argument checks stay in `backend`,
//! the choices of the codec in `codec`.

pub mod quant;
pub mod round;
pub mod tables;
pub mod tensor;
