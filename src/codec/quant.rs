//! The quantized linear format (codec version 1) and the host-side parts of quantization.
//!
//! A weight row is split into groups of `group_size` input channels. Each group stores an
//! 8-bit scale code `c` and a zero point `z` in `[0, 2^bits - 1]`; each weight a code `q` in
//! the same range. With the tensor's base exponent `E`:
//!
//!   step(c) = (16 + (c & 15)) * 2^(E + (c >> 4))        (an unsigned E4M4 number: the
//!                                                         step grows monotonically with c)
//!   w       = step(c) * (q - z)
//!
//! so every reconstructed weight is an integer of at most 13 bits times a power of two,
//! rounded once to the output dtype. The zero point makes 0 exactly representable. Scale
//! metadata costs 8 + bits per group (0.2 bits per weight at 5 bits, groups of 64).

use crate::backend::GroupFixed;

/// Mantissa width of the ingest the quantizer searches on: |m| <= 2^15.
pub const SEARCH_MANTISSA_BITS: u32 = 16;
/// Largest importance weight per input channel (the search metric's bound needs it).
pub const MAX_IMPORTANCE: u32 = 1 << 12;
/// Largest group size (bounds the 64-bit search sums).
pub const MAX_GROUP_SIZE: u32 = 1 << 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantParams {
    pub bits: u32,
    pub group_size: u32,
}

/// Codes of one quantized `[rows, cols]` linear, unpacked (one byte per value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantTensor {
    pub rows: usize,
    pub cols: usize,
    pub params: QuantParams,
    /// Tensor base exponent E.
    pub base_exp: i32,
    /// `[rows * cols]` codes q.
    pub codes: Vec<u8>,
    /// `[rows * groups_per_row]` scale codes c.
    pub scales: Vec<u8>,
    /// `[rows * groups_per_row]` zero points z.
    pub zeros: Vec<u8>,
    /// Low-rank correction added before the one rounding (None = rank 0).
    pub overlay: Option<Overlay>,
}

/// A rank-r correction `O = diag(mu) · U · diag(mv) · V · 2^exp`, exact in integers:
/// `O_ij = Σ_k (mu_i · U_ik · mv_k) · V_kj` (docs/FORMAT.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub rank: usize,
    /// Exponent of the overlay integers; `base_exp - 34 <= exp <= base_exp + 11` so the
    /// exact sum with the quantized part fits 63 bits (bounds in `backend/cpu/quant.rs`).
    pub exp: i32,
    /// `[rows * rank]`, each in [-127, 127]
    pub u: Vec<i8>,
    /// `[rows]` per-row scale mantissas of U
    pub mu: Vec<u16>,
    /// `[rank * cols]`, each in [-127, 127]
    pub v: Vec<i8>,
    /// `[rank]` per-rank scale mantissas of V
    pub mv: Vec<u16>,
}

/// Largest overlay rank (bounds the exact 64-bit reconstruction sum).
pub const MAX_RANK: usize = 32;
/// Allowed range of `overlay.exp - base_exp`.
pub const OVERLAY_EXP_RANGE: std::ops::RangeInclusive<i32> = -34..=11;

impl QuantTensor {
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.params.group_size as usize)
    }
}

/// The step of scale code `c` as (integer, exponent): `(16 + c & 15) * 2^(base + c >> 4)`.
pub fn step(c: u8, base_exp: i32) -> (u32, i32) {
    (16 + (c & 15) as u32, base_exp + (c >> 4) as i32)
}

/// Range of a group including 0: `max(0, max m) - min(0, min m)`, at most 2^16.
pub fn group_range(m: &[i32]) -> u32 {
    let hi = m.iter().copied().max().unwrap_or(0).max(0);
    let lo = m.iter().copied().min().unwrap_or(0).min(0);
    (hi - lo) as u32
}

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
    let ingest = crate::backend::IngestParams { group_size: params.group_size, mantissa_bits: SEARCH_MANTISSA_BITS };
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
