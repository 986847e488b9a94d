//! The codec: float weights → fixed point → quantized codes (later issues) → reconstruction.

pub mod ingest;
