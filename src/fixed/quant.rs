//! The quantized linear format (codec version 1): parameters, the quantized-tensor data
//! type with its low-rank overlay, and the bounds every encoder and decoder relies on.
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
//!
//! The search that picks the codes is `Backend::quantize` (algorithm in
//! `backend/cpu/quant.rs`); the host-side choices around it are `codec::quant`.

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
