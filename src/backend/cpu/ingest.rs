//! CPU twin of shaders/ingest.wgsl.

use crate::dtype::{DType, Decoded};
use crate::fixed::tensor::IngestParams;

/// round_half_even(sig * 2^(exp - e)) with the sign applied (twin of `to_mantissa`).
#[inline]
fn to_mantissa(d: Decoded, e: i32) -> i32 {
    let Decoded::Finite { neg, sig, exp } = d else { return 0 };
    if sig == 0 {
        return 0;
    }
    let k = exp - e;
    let m = if k >= 0 {
        sig << k
    } else {
        let r = (-k) as u32;
        if r >= 32 {
            0
        } else {
            let q = sig >> r;
            let rem = sig & ((1u32 << r) - 1);
            let half = 1u32 << (r - 1);
            q + u32::from(rem > half || (rem == half && q & 1 == 1))
        }
    };
    if neg { -(m as i32) } else { m as i32 }
}

/// Ingest rows `[r0, r0 + exps.len() / groups_per_row)` into the given output slices.
/// Returns the smallest non-finite element index (global, row-major), if any.
pub fn ingest_rows(
    src: &[u8],
    dtype: DType,
    cols: usize,
    params: IngestParams,
    r0: usize,
    exps: &mut [i32],
    mants: &mut [i32],
) -> Option<usize> {
    let g_size = params.group_size as usize;
    let gpr = cols.div_ceil(g_size);
    let mut first_bad: Option<usize> = None;
    for (lg, e_out) in exps.iter_mut().enumerate() {
        let lrow = lg / gpr;
        let c0 = (lg % gpr) * g_size;
        let c1 = (c0 + g_size).min(cols);
        let base = (r0 + lrow) * cols;
        let mut top: Option<i32> = None;
        for c in c0..c1 {
            match dtype.decode(dtype.load_bits(src, base + c)) {
                Decoded::Finite { sig, exp, .. } if sig != 0 => {
                    let t = exp + (32 - sig.leading_zeros() as i32);
                    top = Some(top.map_or(t, |x| x.max(t)));
                }
                Decoded::Finite { .. } => {}
                Decoded::Inf { .. } | Decoded::NaN => {
                    first_bad = Some(first_bad.map_or(base + c, |b| b.min(base + c)));
                }
            }
        }
        let e = top.map_or(0, |t| t - params.mantissa_bits as i32 + 1);
        *e_out = e;
        let lbase = lrow * cols;
        for c in c0..c1 {
            mants[lbase + c] = to_mantissa(dtype.decode(dtype.load_bits(src, base + c)), e);
        }
    }
    first_bad
}
