//! Ingest a named tensor: float bits → fixed-point groups on a backend, with errors that
//! name the tensor and the offending element.

use crate::backend::{Backend, KernelError};
use crate::dtype::{DType, Decoded};
use crate::error::{Error, Result};
use crate::fixed::tensor::{GroupFixed, IngestParams};

/// Ingest `[rows, cols]` of `dtype` bits; NaN/Inf is an error naming `tensor`, the flat
/// index and its row and column (never silently encoded).
pub fn ingest_tensor(
    backend: &dyn Backend,
    tensor: &str,
    src: &[u8],
    dtype: DType,
    rows: usize,
    cols: usize,
    params: IngestParams,
) -> Result<GroupFixed> {
    backend.ingest(src, dtype, rows, cols, params).map_err(|e| match e {
        KernelError::NonFinite { index } => {
            let what = match dtype.decode(dtype.load_bits(src, index)) {
                Decoded::NaN => "NaN",
                Decoded::Inf { neg: true } => "-Inf",
                _ => "+Inf",
            };
            Error::bad_input(format!(
                "tensor \"{tensor}\": element {index} (row {}, column {}) is {what}",
                index / cols.max(1),
                index % cols.max(1)
            ))
        }
        KernelError::Overflow { index } => Error::bad_input(format!("tensor \"{tensor}\": element {index} overflows")),
        KernelError::Device(e) => Error::bad_input(format!("tensor \"{tensor}\": {e}")),
    })
}
