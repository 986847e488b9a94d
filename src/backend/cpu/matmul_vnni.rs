//! The CPU matmul with AVX-512 VNNI integer dot products (`vpdpwssd`: pairs of i16 × i16
//! products summed into i32 lanes): the same sums as `linear::matmul_rows`, bit for bit.
//!
//! Why it is exact (every step is integer arithmetic that cannot overflow):
//! - Activations (|a| <= 2^17, `check_matmul_args`) are split as a = a_hi·2^9 + a_lo with
//!   a_lo = a & 511 in [0, 511] and a_hi = a >> 9 (arithmetic) in [-256, 256]: both i16.
//! - Weights are i16 as they are, except values outside [-2^15, 2^15) (only +2^15 under the
//!   contract |m| <= 2^15, e.g. from f32 sources whose group maximum rounds up): those are
//!   stored as 0 and listed as corrections, added afterwards as a·m exactly in i64.
//! - Per (token, row, group) two i32 lanes accumulate S_lo = Σ a_lo·m and S_hi = Σ a_hi·m
//!   over the group's <= 64 columns (32 pairs). |a_lo·m| <= 511·2^15 < 2^24, so every partial
//!   sum of S_lo has magnitude < 64·2^24 = 2^30; |a_hi·m| <= 2^8·2^15 = 2^23, so |S_hi| <=
//!   2^29. Both fit i32 (`vpdpwssd` wraps, but nothing here reaches 2^31).
//! - The group sum S_hi·2^9 + S_lo (|.| <= 2^38) is formed in i64, shifted by the group's
//!   exponent above the row's smallest (<= `matmul_max_spread(K)` <= 16) and summed in i64,
//!   as the reference does (< K·2^(32+S) <= 2^61 for every K up to `MATMUL_MAX_COLS`; the
//!   i32 lanes hold one group only, so K does not enter their bound). Corrections (a·m·2^shift, |.| <= 2^17·2^31·2^16 only for out-of-contract
//!   weights; 2^48 for m = 2^15) are added into the same i64 sums.
//!
//! Integer sums do not depend on order, so the tiling cannot change a bit.
//!
//! Layout (`matmul_pairs`, shared with the AVX2 kernel): weights are packed once into row
//! tiles of `ROW_TILE` rows (lanes = rows): for each column pair, `ROW_TILE` i32 words each
//! holding a row's two i16 weights. Activations are packed once per call into tiles of `TOK_TILE` tokens: for each pair, the
//! tile's a_hi pairs then its a_lo pairs (each broadcast to every lane). Groups are padded
//! with zero columns to whole pairs (a zero adds nothing). The output is split into fixed
//! blocks of `TOKENS_PER_BLOCK` × `ROWS_PER_BLOCK` (one rayon task each, independent of the
//! thread count, never overlapping).

use super::matmul_blocks::{add_fixes, blocked_sums, write_tile};
use super::matmul_pairs::{PackedRows, PairShape as Shape, pack_acts};
use crate::fixed::tensor::{GroupFixed, TokenFixed};

/// Tokens per micro-kernel tile.
const TOK_TILE: usize = 6;
/// i32 lanes per vector (`__m512i`: the 256-bit form of the same kernel, 8 lanes, measured
/// 70 GMAC/s against 88 here on both SmolLM2 shapes; see benches/kernels.rs).
const LANES: usize = 16;
/// Vectors of rows per micro-kernel tile: 2·TOK_TILE·ROW_VECS accumulators (hi and lo) plus
/// ROW_VECS weights and a broadcast fit AVX-512's 32 vector registers.
const ROW_VECS: usize = 2;
/// Weight rows per micro-kernel tile (one i32 lane each).
const ROW_TILE: usize = LANES * ROW_VECS;
/// Tokens per block (a multiple of TOK_TILE).
const TOKENS_PER_BLOCK: usize = 96;
/// Weight rows per block (a multiple of ROW_TILE).
const ROWS_PER_BLOCK: usize = 96;
const _: () = assert!(TOKENS_PER_BLOCK.is_multiple_of(TOK_TILE) && ROWS_PER_BLOCK.is_multiple_of(ROW_TILE));
// Accumulators and weights, and one more register for a broadcast.
const _: () = assert!(2 * TOK_TILE * ROW_VECS + ROW_VECS < 32);

/// Whether this CPU has what the kernel needs (AVX-512 F/BW/VL and VNNI) and `isa::allows`
/// AVX-512.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::isa::allows(super::isa::Isa::Avx512)
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Exact sums `[x.tokens, w.rows]` (row-major), identical to `linear::matmul_rows` over all
/// tokens, or None when the CPU lacks the features (`available()`). Expects arguments that
/// passed `check_matmul_args` and `re = linear::row_exps(w)`.
pub fn matmul(x: &TokenFixed, w: &GroupFixed, re: &[i32]) -> Option<Vec<i64>> {
    #[cfg(target_arch = "x86_64")]
    if available() {
        return Some(blocked(x, w, &Packed::new(w, re)));
    }
    let _ = (x, w, re);
    None
}

/// A weight matrix packed for the kernel (i16 pairs, out-of-i16 corrections, group shifts),
/// kept by `CpuBackend::prepare_matmul` so that repeated products pack it once.
pub struct Packed(PackedRows);

impl Packed {
    /// Expects `w` that passed `check_matmul_weights` and `re = linear::row_exps(w)`.
    pub fn new(w: &GroupFixed, re: &[i32]) -> Packed {
        Packed(PackedRows::new(w, re, ROW_TILE))
    }

    /// Host bytes held.
    pub fn bytes(&self) -> u64 {
        self.0.bytes()
    }

    /// Whether this was packed from weights of `w`'s shape (`PackedRows::fits`).
    pub fn fits(&self, w: &GroupFixed) -> bool {
        self.0.fits(w)
    }

    /// `linear::row_exps` of the weights.
    pub fn row_exps(&self) -> &[i32] {
        &self.0.re
    }
}

/// `matmul` with weights packed beforehand (`Packed::new(w, ..)`), or None without the
/// features.
pub fn matmul_packed(x: &TokenFixed, w: &GroupFixed, p: &Packed) -> Option<Vec<i64>> {
    #[cfg(target_arch = "x86_64")]
    if available() {
        return Some(blocked(x, w, p));
    }
    let _ = (x, w, p);
    None
}

#[cfg(target_arch = "x86_64")]
fn blocked(x: &TokenFixed, w: &GroupFixed, p: &Packed) -> Vec<i64> {
    let (tokens, n) = (x.tokens, w.rows);
    let p = &p.0;
    let s = p.s;
    if n == 0 || tokens == 0 || s.pairs == 0 {
        return vec![0i64; tokens * n]; // no rows, no tokens, or no columns: every sum is empty
    }
    let (wp, shifts) = (&p.wp, &p.shifts);
    let ap = pack_acts(x, s, TOK_TILE);
    let (a_tile, w_tile, s_tile) = (s.pairs * 2 * TOK_TILE, s.pairs * ROW_TILE, s.gpr * ROW_TILE);
    blocked_sums(tokens, n, TOKENS_PER_BLOCK, ROWS_PER_BLOCK, |t0, r0, out| {
        let (nt, nr) = (out.len(), out[0].len());
        let mut acc = [0i64; TOK_TILE * ROW_TILE];
        for lt0 in (0..nt).step_by(TOK_TILE) {
            let a = &ap[(t0 + lt0) / TOK_TILE * a_tile..][..a_tile];
            for lr0 in (0..nr).step_by(ROW_TILE) {
                let q = (r0 + lr0) / ROW_TILE;
                let (wq, sq) = (&wp[q * w_tile..][..w_tile], &shifts[q * s_tile..][..s_tile]);
                // SAFETY: `blocked` only runs where `available()`.
                unsafe { avx512::tile(s, a, wq, sq, &mut acc) };
                write_tile(out, lt0, lr0, TOK_TILE, ROW_TILE, &acc);
            }
        }
        // Weights outside i16 (rare): a·m·2^shift, exactly, into the same i64 sums.
        add_fixes(x, &p.fixes, |i| p.values[i], t0, r0, out);
    })
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::matmul_pairs::LO_BITS;
    use super::{LANES, ROW_TILE, ROW_VECS, Shape, TOK_TILE};
    use std::arch::x86_64::*;

    /// One tile's sums: `acc[t·ROW_TILE + r]` = Σ over all groups of (group sum << shift)
    /// for token t and row r of the tile (`a`: one packed token tile, `w`: one packed row
    /// tile, `sh`: its shifts).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile(s: Shape, a: &[i32], w: &[i32], sh: &[i64], acc: &mut [i64; TOK_TILE * ROW_TILE]) {
        // Every access below stays inside these bounds.
        assert!(a.len() == s.pairs * 2 * TOK_TILE && w.len() == s.pairs * ROW_TILE && sh.len() == s.gpr * ROW_TILE);
        let (a, w, shp, out) = (a.as_ptr(), w.as_ptr(), sh.as_ptr(), acc.as_mut_ptr());
        acc.fill(0);
        for gi in 0..s.gpr {
            let mut hi = [[_mm512_setzero_si512(); ROW_VECS]; TOK_TILE];
            let mut lo = [[_mm512_setzero_si512(); ROW_VECS]; TOK_TILE];
            for p in gi * s.pg..(gi + 1) * s.pg {
                // SAFETY: p < pairs: inside `w` (pairs·ROW_TILE) and `a` (pairs·2·TOK_TILE).
                unsafe {
                    let wv: [__m512i; ROW_VECS] =
                        std::array::from_fn(|v| _mm512_loadu_si512(w.add(p * ROW_TILE + v * LANES) as *const __m512i));
                    for t in 0..TOK_TILE {
                        let ah = _mm512_set1_epi32(*a.add(p * 2 * TOK_TILE + t));
                        let al = _mm512_set1_epi32(*a.add(p * 2 * TOK_TILE + TOK_TILE + t));
                        for v in 0..ROW_VECS {
                            // |S_hi| <= 2^29, |S_lo| < 2^30: no i32 lane wraps.
                            hi[t][v] = _mm512_dpwssd_epi32(hi[t][v], ah, wv[v]);
                            lo[t][v] = _mm512_dpwssd_epi32(lo[t][v], al, wv[v]);
                        }
                    }
                }
            }
            for v in 0..ROW_VECS {
                for h in 0..2 {
                    // SAFETY: gi·ROW_TILE + v·LANES + h·8 + 8 <= sh.len().
                    let s = unsafe { _mm512_loadu_si512(shp.add(gi * ROW_TILE + v * LANES + h * 8) as *const __m512i) };
                    for t in 0..TOK_TILE {
                        let (vh, vl) = if h == 0 {
                            (_mm512_castsi512_si256(hi[t][v]), _mm512_castsi512_si256(lo[t][v]))
                        } else {
                            (_mm512_extracti64x4_epi64::<1>(hi[t][v]), _mm512_extracti64x4_epi64::<1>(lo[t][v]))
                        };
                        // The group sum S_hi·2^9 + S_lo (<= 2^38) in i64, shifted by <= 16.
                        let g = _mm512_add_epi64(
                            _mm512_slli_epi64::<{ LO_BITS }>(_mm512_cvtepi32_epi64(vh)),
                            _mm512_cvtepi32_epi64(vl),
                        );
                        // SAFETY: t·ROW_TILE + v·LANES + h·8 + 8 <= TOK_TILE·ROW_TILE.
                        unsafe {
                            let o = out.add(t * ROW_TILE + v * LANES + h * 8) as *mut __m512i;
                            _mm512_storeu_si512(o, _mm512_add_epi64(_mm512_loadu_si512(o), _mm512_sllv_epi64(g, s)));
                        }
                    }
                }
            }
        }
    }
}
