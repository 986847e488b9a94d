//! The host-side parts of quantization: the tensor base exponent and `quantize_tensor`,
//! which ingests a float tensor and runs the backend's search. The format itself (codes,
//! scales, zero points, overlay and their bounds) is `fixed::quant`.

use crate::fixed::quant::{QuantParams, QuantTensor, SEARCH_MANTISSA_BITS, group_range};
use crate::fixed::tensor::{GroupFixed, IngestParams};

/// Tensor base exponent: chosen so the group needing the largest step finds it near the
/// top code (c = 255 gives 31 * 2^(E + 15) ≈ 2^(E + 20)). Groups whose ideal step is more
/// than 2^16 below that use the smallest code. All-zero tensors get 0.
pub fn base_exponent(x: &GroupFixed, bits: u32) -> i32 {
    let qmax = (1u32 << bits) - 1;
    let g = x.params.group_size as usize;
    let gpr = x.groups_per_row();
    let mut best: Option<i32> = None;
    for r in 0..x.rows {
        for gi in 0..gpr {
            let c0 = r * x.cols + gi * g;
            let c1 = r * x.cols + ((gi + 1) * g).min(x.cols);
            let range = group_range(&x.mantissas[c0..c1]);
            if range == 0 {
                continue;
            }
            // ideal step <= 2^l in value units
            let l = (32 - range.div_ceil(qmax).leading_zeros()) as i32 + x.exponents[r * gpr + gi];
            best = Some(best.map_or(l, |b| b.max(l)));
        }
    }
    best.map_or(0, |l| l - 20)
}

/// Quantize a `[rows, cols]` float tensor on `backend`: ingest in the quantizer's groups
/// with 16-bit mantissas, pick the tensor base exponent, then search each group.
/// `importance`: one weight in [0, 2^12] per column (None = uniform).
#[allow(clippy::too_many_arguments)]
pub fn quantize_tensor(
    backend: &dyn crate::backend::Backend,
    tensor: &str,
    src: &[u8],
    dtype: crate::dtype::DType,
    rows: usize,
    cols: usize,
    params: QuantParams,
    importance: Option<&[u32]>,
) -> crate::Result<QuantTensor> {
    let ingest = IngestParams { group_size: params.group_size, mantissa_bits: SEARCH_MANTISSA_BITS };
    let x = super::ingest::ingest_tensor(backend, tensor, src, dtype, rows, cols, ingest)?;
    let base_exp = base_exponent(&x, params.bits);
    let uniform;
    let h = match importance {
        Some(h) => h,
        None => {
            uniform = vec![1u32; cols];
            &uniform
        }
    };
    backend.quantize(&x, h, params, base_exp).map_err(|e| bad_input!("tensor \"{tensor}\": {e}"))
}
