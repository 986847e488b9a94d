//! The CPU matmul with AVX2 integer dot products (`vpmaddwd`: pairs of i16 × i16 products
//! summed into i32 lanes, then `vpaddd`): the same sums as `linear::matmul_rows`, bit for bit.
//! It is `matmul_vnni`'s arithmetic on 256-bit vectors without VNNI's fused add; on a Zen 3
//! core it runs at about 1.6x the f64 kernel (`matmul_fast`, 4 multiply-adds per FMA):
//! each `vpmaddwd` does 8 of them (16 i16 products, two per exact product) and two issue
//! per cycle, but each needs its own `vpaddd` (BENCHMARKS.md).
//!
//! Why it is exact (every step is integer arithmetic that cannot overflow):
//! - Activations (|a| <= 2^17, `check_matmul_args`) are split as a = a_hi·2^9 + a_lo with
//!   a_lo = a & 511 in [0, 511] and a_hi = a >> 9 (arithmetic) in [-256, 256]: both i16.
//! - Weights are i16 as they are, except values outside [-2^15, 2^15) (only +2^15 under the
//!   contract |m| <= 2^15): those are stored as 0 and listed as corrections, added afterwards
//!   as a·m·2^shift exactly in i64 (`matmul_blocks::add_fixes`).
//! - `vpmaddwd` forms a0·m0 + a1·m1 in an i32 lane; it wraps only for two products of
//!   (-2^15)·(-2^15), and here one factor of each product is an activation part with
//!   magnitude <= 511. Per (token, row, group) two i32 lanes accumulate S_lo = Σ a_lo·m and
//!   S_hi = Σ a_hi·m over the group's <= 64 columns (32 pairs): |a_lo·m| <= 511·2^15 < 2^24,
//!   so every partial sum of S_lo has magnitude < 64·2^24 = 2^30; |a_hi·m| <= 2^8·2^15 =
//!   2^23, so |S_hi| <= 2^29. Both fit i32.
//! - The group sum S_hi·2^9 + S_lo (|.| <= 2^38) is formed in i64, shifted by the group's
//!   exponent above the row's smallest (<= `matmul_max_spread(K)` <= 16) and summed in i64,
//!   as the reference does (< K·2^(32+S) <= 2^61 for every K up to `MATMUL_MAX_COLS`; the
//!   i32 lanes hold one group only, so K does not enter their bound).
//!
//! Integer sums do not depend on order, so the tiling and the column passes cannot change a
//! bit.
//!
//! Layout (`matmul_pairs`, as `matmul_vnni`'s): the weights are packed either once per
//! matrix (`Packed`, kept by `CpuBackend::prepare_matmul` in place of the ingested weights,
//! for the forward pass's repeated products) or block by block on each call (`matmul`: no
//! copy of the whole weight, for one-off products). The output is split into fixed blocks
//! of `TOKENS_PER_BLOCK` tokens × `ROWS_PER_BLOCK` rows (one rayon task each, independent
//! of the thread count, never overlapping). The activations are packed once per call into
//! tiles of `TOK_TILE` tokens (for each column pair, the tile's a_hi pairs then its a_lo
//! pairs, each broadcast to every lane), the weight rows into tiles of `ROW_TILE` rows (for
//! each pair, `ROW_TILE` i32 words, a row's two i16 weights each). Groups are padded with
//! zero columns to whole pairs (a zero adds nothing). A block runs in passes of whole
//! groups (about `PAIRS_PER_PASS` pairs) so that a token tile's share of a pass stays in L1
//! while the block's row tiles stream past.

use std::borrow::Cow;

use super::matmul_blocks::{add_fixes, blocked_sums, fix_value, write_tile};
use super::matmul_pairs::{PackedRows, PairRows, PairShape, pack_acts, pack_rows};
use crate::fixed::tensor::{GroupFixed, TokenFixed};

/// Tokens per micro-kernel tile. Measured (benches/kernels.rs, 512 tokens, this file's
/// other constants fixed): 2 tokens × 16 rows gave 38 and 29 G multiply-adds/s on the
/// 1536→576 and 14336→256 shapes, 3 × 16 (12 accumulators: two spilled) 28 and 25, and
/// 6 × 8 33 and 28, on a 2-core Zen 3.
const TOK_TILE: usize = 2;
/// i32 lanes per vector (`__m256i`).
const LANES: usize = 8;
/// Vectors of rows per micro-kernel tile: 2·TOK_TILE·ROW_VECS accumulators (hi and lo),
/// ROW_VECS weights and two broadcasts fit AVX2's 16 vector registers.
const ROW_VECS: usize = 2;
/// Weight rows per micro-kernel tile (one i32 lane each).
const ROW_TILE: usize = LANES * ROW_VECS;
/// Tokens per block (a multiple of TOK_TILE; forward-pass chunks of up to 128 tokens take
/// one block, so each block of weight rows is packed once per call).
const TOKENS_PER_BLOCK: usize = 144;
/// Weight rows per block (a multiple of ROW_TILE).
const ROWS_PER_BLOCK: usize = 32;
/// Column pairs per pass over a block (rounded to whole groups): a token tile's share
/// (2·TOK_TILE words per pair, 5 KiB) and a row tile's (ROW_TILE words, 20 KiB) stay in L1
/// (1024 measured 20% slower, 160 no better).
const PAIRS_PER_PASS: usize = 320;
const _: () = assert!(TOKENS_PER_BLOCK.is_multiple_of(TOK_TILE) && ROWS_PER_BLOCK.is_multiple_of(ROW_TILE));
const _: () = assert!(2 * TOK_TILE * ROW_VECS + ROW_VECS + 2 <= 16);

/// Whether this CPU has AVX2 and `isa::allows` it.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::isa::allows(super::isa::Isa::Avx2) && is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Exact sums `[x.tokens, w.rows]` (row-major), identical to `linear::matmul_rows` over all
/// tokens, or None when the CPU lacks AVX2 (`available()`). Expects arguments that passed
/// `check_matmul_args` and `re = linear::row_exps(w)`. Packs each block of weight rows as it
/// goes (no copy of the whole weight); `Packed` packs once for many calls.
pub fn matmul(x: &TokenFixed, w: &GroupFixed, re: &[i32]) -> Option<Vec<i64>> {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let s = PairShape::new(w);
        return Some(blocked(x, s, w.rows, |r0, nr| {
            let PairRows { wp, fixes, shifts } = pack_rows(w, re, s, r0..r0 + nr, ROW_TILE);
            let values = fixes.iter().map(|&f| fix_value(w, re, f)).collect::<Vec<_>>();
            BlockRows {
                wp: Cow::Owned(wp),
                shifts: Cow::Owned(shifts),
                fixes: Cow::Owned(fixes),
                values: Cow::Owned(values),
            }
        }));
    }
    let _ = (x, w, re);
    None
}

/// A weight matrix packed once for the kernel (`CpuBackend::prepare_matmul`): every weight
/// as i16 pairs, the rare ones outside i16 as exact corrections with their values, and each
/// group's shift above its row's smallest exponent. That is all the products read, so it
/// replaces the ingested weights (2 bytes per weight and 8 per group, against 4 and 4):
/// the forward pass multiplies every window and every lm_head chunk by the same weights,
/// and packing them on each call cost about a third of `ucw eval`'s time (BENCHMARKS.md).
pub struct Packed(PackedRows);

impl Packed {
    /// Expects `w` that passed `check_matmul_weights` and `re = linear::row_exps(w)`; None
    /// where the CPU lacks AVX2 (the kernel could not use it).
    pub fn new(w: &GroupFixed, re: &[i32]) -> Option<Packed> {
        available().then(|| Packed(PackedRows::new(w, re, ROW_TILE)))
    }

    pub fn rows(&self) -> usize {
        self.0.rows
    }

    pub fn cols(&self) -> usize {
        self.0.cols()
    }

    /// Host bytes held.
    pub fn bytes(&self) -> u64 {
        self.0.bytes()
    }

    /// `linear::row_exps` of the weights.
    pub fn row_exps(&self) -> &[i32] {
        &self.0.re
    }
}

/// `matmul` of `x` (`check_matmul_acts` passed) with weights packed beforehand, for any
/// number of tokens (one token takes a tile of two, half of it zeros: still far faster than
/// the reference loop, which `matmul` uses for one token because packing would cost more).
pub fn matmul_packed(x: &TokenFixed, p: &Packed) -> Vec<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        let p = &p.0;
        blocked(x, p.s, p.rows, |r0, nr| {
            let (wp, shifts) = p.tiles(r0, nr);
            BlockRows {
                wp: Cow::Borrowed(wp),
                shifts: Cow::Borrowed(shifts),
                fixes: Cow::Borrowed(&p.fixes),
                values: Cow::Borrowed(&p.values),
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("Packed::new gives None off x86_64: {}", p.0.rows)
}

/// One block's packed weight rows: row tiles counted from the block's first row, and the
/// out-of-i16 corrections (`add_fixes` picks the block's own).
#[cfg(target_arch = "x86_64")]
struct BlockRows<'a> {
    wp: Cow<'a, [i32]>,
    shifts: Cow<'a, [i64]>,
    fixes: Cow<'a, [(usize, usize)]>,
    values: Cow<'a, [i64]>,
}

/// The `[x.tokens, n]` sums, with `block_rows(r0, nr)` giving the packed rows
/// `r0..r0 + nr` of each block.
#[cfg(target_arch = "x86_64")]
fn blocked<'a>(
    x: &TokenFixed,
    s: PairShape,
    n: usize,
    block_rows: impl Fn(usize, usize) -> BlockRows<'a> + Sync,
) -> Vec<i64> {
    let tokens = x.tokens;
    if n == 0 || tokens == 0 || s.pairs == 0 {
        return vec![0i64; tokens * n]; // no rows, no tokens, or no columns: every sum is empty
    }
    let ap = pack_acts(x, s, TOK_TILE);
    let a_tile = s.pairs * 2 * TOK_TILE;
    // Whole groups per pass, passes of (nearly) equal size.
    let passes = s.pairs.div_ceil(PAIRS_PER_PASS).max(1);
    let groups_per_pass = s.gpr.div_ceil(passes).max(1);
    blocked_sums(tokens, n, TOKENS_PER_BLOCK, ROWS_PER_BLOCK, |t0, r0, out| {
        let (nt, nr) = (out.len(), out[0].len());
        let BlockRows { wp, shifts, fixes, values } = block_rows(r0, nr);
        let (tt_n, rt_n) = (nt.div_ceil(TOK_TILE), nr.div_ceil(ROW_TILE));
        // The block's sums, tile by tile: `acc[(tt·rt_n + rt)·TOK_TILE·ROW_TILE + t·ROW_TILE + r]`.
        let mut acc = vec![0i64; tt_n * rt_n * TOK_TILE * ROW_TILE];
        for g0 in (0..s.gpr).step_by(groups_per_pass) {
            let groups = g0..(g0 + groups_per_pass).min(s.gpr);
            for tt in 0..tt_n {
                let a = &ap[(t0 / TOK_TILE + tt) * a_tile..][..a_tile];
                for rt in 0..rt_n {
                    let wq = &wp[rt * s.pairs * ROW_TILE..][..s.pairs * ROW_TILE];
                    let sq = &shifts[rt * s.gpr * ROW_TILE..][..s.gpr * ROW_TILE];
                    let at = &mut acc[(tt * rt_n + rt) * TOK_TILE * ROW_TILE..][..TOK_TILE * ROW_TILE];
                    // SAFETY: `blocked` only runs where `available()`.
                    unsafe { avx2::tile(s, groups.clone(), a, wq, sq, at.try_into().expect("one tile")) };
                }
            }
        }
        for (i, tile) in acc.chunks_exact(TOK_TILE * ROW_TILE).enumerate() {
            write_tile(out, i / rt_n * TOK_TILE, i % rt_n * ROW_TILE, TOK_TILE, ROW_TILE, tile);
        }
        // Weights outside i16 (rare): a·m·2^shift, exactly, into the same i64 sums.
        add_fixes(x, &fixes, |i| values[i], t0, r0, out);
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::matmul_pairs::{LO_BITS, PairShape as Shape};
    use super::{LANES, ROW_TILE, ROW_VECS, TOK_TILE};
    use std::arch::x86_64::*;

    /// Adds one tile's sums over the groups `groups` into `acc`: `acc[t·ROW_TILE + r]` +=
    /// Σ (group sum << shift) for token t and row r of the tile (`a`: one packed token tile,
    /// `w`: one packed row tile, `sh`: its shifts).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile(
        s: Shape,
        groups: std::ops::Range<usize>,
        a: &[i32],
        w: &[i32],
        sh: &[i64],
        acc: &mut [i64; TOK_TILE * ROW_TILE],
    ) {
        // Every access below stays inside these bounds.
        assert!(a.len() == s.pairs * 2 * TOK_TILE && w.len() == s.pairs * ROW_TILE && sh.len() == s.gpr * ROW_TILE);
        assert!(groups.end <= s.gpr);
        let (a, w, shp, out) = (a.as_ptr(), w.as_ptr(), sh.as_ptr(), acc.as_mut_ptr());
        for gi in groups {
            let mut hi = [[_mm256_setzero_si256(); ROW_VECS]; TOK_TILE];
            let mut lo = [[_mm256_setzero_si256(); ROW_VECS]; TOK_TILE];
            for p in gi * s.pg..(gi + 1) * s.pg {
                // SAFETY: p < pairs: inside `w` (pairs·ROW_TILE) and `a` (pairs·2·TOK_TILE).
                unsafe {
                    let wv: [__m256i; ROW_VECS] =
                        std::array::from_fn(|v| _mm256_loadu_si256(w.add(p * ROW_TILE + v * LANES) as *const __m256i));
                    for t in 0..TOK_TILE {
                        let ah = _mm256_set1_epi32(*a.add(p * 2 * TOK_TILE + t));
                        let al = _mm256_set1_epi32(*a.add(p * 2 * TOK_TILE + TOK_TILE + t));
                        for v in 0..ROW_VECS {
                            // |S_hi| <= 2^29, |S_lo| < 2^30: no i32 lane wraps.
                            hi[t][v] = _mm256_add_epi32(hi[t][v], _mm256_madd_epi16(ah, wv[v]));
                            lo[t][v] = _mm256_add_epi32(lo[t][v], _mm256_madd_epi16(al, wv[v]));
                        }
                    }
                }
            }
            for v in 0..ROW_VECS {
                for h in 0..2 {
                    // SAFETY: gi·ROW_TILE + v·LANES + h·4 + 4 <= sh.len().
                    let s = unsafe { _mm256_loadu_si256(shp.add(gi * ROW_TILE + v * LANES + h * 4) as *const __m256i) };
                    for t in 0..TOK_TILE {
                        let (vh, vl) = if h == 0 {
                            (_mm256_castsi256_si128(hi[t][v]), _mm256_castsi256_si128(lo[t][v]))
                        } else {
                            (_mm256_extracti128_si256::<1>(hi[t][v]), _mm256_extracti128_si256::<1>(lo[t][v]))
                        };
                        // The group sum S_hi·2^9 + S_lo (<= 2^38) in i64, shifted by <= 16.
                        let g = _mm256_add_epi64(
                            _mm256_slli_epi64::<{ LO_BITS as i32 }>(_mm256_cvtepi32_epi64(vh)),
                            _mm256_cvtepi32_epi64(vl),
                        );
                        // SAFETY: t·ROW_TILE + v·LANES + h·4 + 4 <= TOK_TILE·ROW_TILE.
                        unsafe {
                            let o = out.add(t * ROW_TILE + v * LANES + h * 4) as *mut __m256i;
                            _mm256_storeu_si256(o, _mm256_add_epi64(_mm256_loadu_si256(o), _mm256_sllv_epi64(g, s)));
                        }
                    }
                }
            }
        }
    }
}
