//! Fixed-point tensors: weights in groups sharing an exponent (`GroupFixed`, the format
//! `ingest` produces), activations with one exponent per token (`TokenFixed`), the exact
//! products of `matmul` (`ExactSums`), and the bounds on them every matmul, on every
//! backend, relies on (`MATMUL_*`, `matmul_max_spread`, `align_row_exponents`).

use super::round::shr_round;
use crate::error::Error;

/// Fixed-point group format produced by `ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestParams {
    /// Consecutive elements of a row sharing one exponent (the last group may be shorter).
    pub group_size: u32,
    /// Signed mantissa width: |m| <= 2^(mantissa_bits - 1).
    pub mantissa_bits: u32,
}

impl IngestParams {
    pub const MIN_MANTISSA_BITS: u32 = 2;
    pub const MAX_MANTISSA_BITS: u32 = 30;
    pub const MAX_GROUP_SIZE: u32 = 1 << 16;

    pub fn validate(&self) -> Result<(), Error> {
        if !(Self::MIN_MANTISSA_BITS..=Self::MAX_MANTISSA_BITS).contains(&self.mantissa_bits) {
            return Err(bad_input!(
                "mantissa width {} out of range {}..={}",
                self.mantissa_bits,
                Self::MIN_MANTISSA_BITS,
                Self::MAX_MANTISSA_BITS
            ));
        }
        if self.group_size == 0 || self.group_size > Self::MAX_GROUP_SIZE {
            return Err(bad_input!("group size {} out of range 1..={}", self.group_size, Self::MAX_GROUP_SIZE));
        }
        Ok(())
    }
}

/// A `[rows, cols]` tensor as `mantissas[r*cols + c] * 2^exponents[r*groups_per_row + g]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFixed {
    pub rows: usize,
    pub cols: usize,
    pub params: IngestParams,
    pub exponents: Vec<i32>,
    pub mantissas: Vec<i32>,
}

impl GroupFixed {
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.params.group_size as usize)
    }
}

/// Activations in fixed point: token t's vector is `mants[t*width ..] * 2^exps[t]` (one
/// shared exponent per token, DESIGN §4: the residual stream's outliers make any coarser
/// sharing lose the small channels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFixed {
    pub tokens: usize,
    pub width: usize,
    pub exps: Vec<i32>,
    pub mants: Vec<i32>,
}

/// Largest |value| of a calibration window on its grid (`Backend::gram_add`): 18-bit
/// activation mantissas shifted up by at most two bits (codec/gram.rs).
pub const GRAM_MAX_X: i32 = 1 << 19;

/// Index of entry (j, j) of a symmetric `n × n` matrix kept as its packed lower triangle,
/// column-major ((i, j), i ≥ j, at `tri_offset(n, j) + i − j`): the layout of the exact
/// Gram statistics on the host (codec/gram.rs) and on a device (shaders/gram.wgsl).
pub fn tri_offset(n: usize, j: usize) -> usize {
    j * n - j * j.saturating_sub(1) / 2
}

/// Largest |activation mantissa| `matmul` accepts (18-bit signed inputs).
pub const MATMUL_MAX_ACT: i32 = 1 << 17;
/// Largest spread of a weight row's group exponents `matmul` accepts for rows of up to
/// `MATMUL_FULL_SPREAD_COLS` columns (see `matmul_max_spread` for wider rows).
pub const MATMUL_MAX_SPREAD: i32 = 16;
/// Widest row that keeps the full `MATMUL_MAX_SPREAD` (2^13 columns: 128 groups of 64).
pub const MATMUL_FULL_SPREAD_COLS: usize = 1 << 13;
/// Widest row (inner dimension K) `matmul` accepts: 2^16 columns, spread 13.
pub const MATMUL_MAX_COLS: usize = 1 << 16;

/// Largest spread of group exponents `matmul` accepts in a weight row of `cols` columns:
/// 16 up to 2^13 columns, then one less per doubling (15 up to 2^14, 14 up to 2^15, 13 up
/// to 2^16), i.e. the largest S with cols · 2^(32 + S) <= 2^61.
///
/// The bound it keeps, for every backend: |a| <= 2^17 and |m| <= 2^15, so each product
/// |a·m| <= 2^32; a product in a group shifted by s <= S to its row's smallest exponent is
/// <= 2^(32+S); a row's exact sum over `cols` such products is then
/// <= cols · 2^(32+S) <= 2^61, and strictly below it (the row's smallest group is shifted
/// by 0). So every exact sum, and every partial sum over any subset of a row's columns
/// (groups, slices of columns, split-K partials), stays below 2^61 in magnitude: exact in
/// i64, and inside what `renorm` and the NLL kernels assume of `ExactSums` — the same
/// invariant as before wide rows existed (128 groups of 64 × 2^38 × 2^16 = 2^61).
///
/// Why lower the spread instead of widening the accumulators: rows up to 2^13 columns
/// (every layer of SmolLM2, Llama hidden sizes up to 8192) keep spread 16 and every bit; a
/// wider row only loses weight bits far below its largest group (`align_row_exponents`
/// rounds a group whose exponent lies more than S below the row's largest to 2^(emax − S)
/// steps, i.e. a step of 2^-(S+15) of the row's largest weight instead of 2^-31 at
/// S = 16: 2^-28 at S = 13, far below the 2^-16 relative step of the 16-bit mantissas
/// themselves). A third accumulator word (96-bit sums) would instead slow every matmul on
/// every backend, change `ExactSums` and every kernel that reads it.
pub fn matmul_max_spread(cols: usize) -> i32 {
    let doublings = cols.div_ceil(MATMUL_FULL_SPREAD_COLS).max(1).next_power_of_two().trailing_zeros() as i32;
    MATMUL_MAX_SPREAD - doublings
}

/// Exact products of `matmul`: `sums[t*n + o] * 2^(x.exps[t] + row_exps[o])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactSums {
    pub tokens: usize,
    pub n: usize,
    pub sums: Vec<i64>,
    /// Per output row: the smallest group exponent of that weight row.
    pub row_exps: Vec<i32>,
}

/// Raise every group exponent of each row to at least (row max − `spread`), rounding the
/// mantissas of the raised groups half to even, so `matmul`'s alignment shifts are bounded.
/// All-zero groups take the floor exponent. Host integer arithmetic, deterministic.
pub fn align_row_exponents(w: &mut GroupFixed, spread: i32) {
    let gpr = w.groups_per_row();
    let g = w.params.group_size as usize;
    for r in 0..w.rows {
        let nonzero = |gi: usize| {
            let (c0, c1) = (r * w.cols + gi * g, r * w.cols + ((gi + 1) * g).min(w.cols));
            w.mantissas[c0..c1].iter().any(|&m| m != 0)
        };
        let Some(emax) = (0..gpr).filter(|&gi| nonzero(gi)).map(|gi| w.exponents[r * gpr + gi]).max() else {
            continue;
        };
        let floor = emax - spread;
        for gi in 0..gpr {
            let e = &mut w.exponents[r * gpr + gi];
            if *e >= floor {
                continue;
            }
            let shift = (floor - *e) as u32;
            *e = floor;
            let (c0, c1) = (r * w.cols + gi * g, r * w.cols + ((gi + 1) * g).min(w.cols));
            for m in &mut w.mantissas[c0..c1] {
                *m = shr_round(*m as i64, shift.min(63)) as i32;
            }
        }
    }
}
