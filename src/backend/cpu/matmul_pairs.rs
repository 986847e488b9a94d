//! The i16-pair operand layout shared by the AVX2 (`matmul_avx2`, `vpmaddwd`) and AVX-512
//! VNNI (`matmul_vnni`, `vpdpwssd`) kernels: both multiply two i16 pairs into one i32 lane,
//! so both want weights as i16 pairs with rows across the lanes, and activations split into
//! two i16 halves broadcast to every lane. Only the tile sizes differ (the registers each
//! ISA has), so they are parameters here; the exactness argument is in each kernel's file.
//!
//! - Activations: a = a_hi·2^LO_BITS + a_lo, a_lo = a & (2^LO_BITS − 1) in [0, 511] and a_hi
//!   = a >> LO_BITS (arithmetic) in [-256, 256] for |a| <= 2^17: both i16.
//! - Weights: i16 as they are; values outside [-2^15, 2^15) (only +2^15 under the contract
//!   |m| <= 2^15) are stored as 0 and listed as (row, column) corrections, which
//!   `matmul_blocks::add_fixes` adds in i64.
//! - Groups are padded with zero columns to whole pairs (a zero adds nothing).

use std::ops::Range;

use rayon::prelude::*;

use crate::fixed::tensor::{GroupFixed, TokenFixed};

/// Bits of an activation's low part a_lo (unsigned).
pub const LO_BITS: u32 = 9;

/// Column layout of the packed operands: groups of `g` columns padded to `pg` pairs.
#[derive(Clone, Copy, Debug)]
pub struct PairShape {
    pub k: usize,
    pub g: usize,
    pub gpr: usize,
    /// Pairs per (padded) group.
    pub pg: usize,
    /// Pairs per (padded) row, `gpr * pg`.
    pub pairs: usize,
}

impl PairShape {
    pub fn new(w: &GroupFixed) -> PairShape {
        let (k, g, gpr) = (w.cols, w.params.group_size as usize, w.groups_per_row());
        let pg = g.div_ceil(2);
        PairShape { k, g, gpr, pg, pairs: gpr * pg }
    }

    /// Columns of group `gi`, clipped to the row.
    fn cols(&self, gi: usize) -> Range<usize> {
        gi * self.g..((gi + 1) * self.g).min(self.k)
    }
}

/// Two i16 values as one i32 word (`lo` in the low half, as `vpmaddwd` and `vpdpwssd` pair
/// them).
#[inline]
fn pair(lo: i32, hi: i32) -> i32 {
    (lo as u16 as u32 | (hi as u16 as u32) << 16) as i32
}

/// Weight rows packed for a kernel with `row_tile` lanes of rows.
pub struct PairRows {
    /// `[row tiles][pairs][row_tile]` i16 pairs (zero rows pad the last tile).
    pub wp: Vec<i32>,
    /// (row, column) of every weight outside i16 (stored as 0), sorted.
    pub fixes: Vec<(usize, usize)>,
    /// `[row tiles][gpr][row_tile]`: each group's exponent above its row's smallest
    /// (0..=`MATMUL_MAX_SPREAD`); padding rows 0.
    pub shifts: Vec<i64>,
}

/// Rows `rows` of `w` (row tiles counted from `rows.start`), `re = linear::row_exps(w)`.
/// Each tile is written in its own order (pairs outer, lanes inner: sequential writes,
/// `row_tile` sequential reads), since the AVX2 kernel's one-off products (`matmul`, without
/// `prepare_matmul`) pack every block of rows again for each call and a lane-by-lane fill
/// touched a new cache line per weight.
pub fn pack_rows(w: &GroupFixed, re: &[i32], s: PairShape, rows: Range<usize>, row_tile: usize) -> PairRows {
    let tiles = rows.len().div_ceil(row_tile);
    let mut wp = vec![0i32; tiles * s.pairs * row_tile];
    let mut shifts = vec![0i64; tiles * s.gpr * row_tile];
    let fixes = wp
        .par_chunks_mut((s.pairs * row_tile).max(1)) // no columns: nothing to pack
        .zip(shifts.par_chunks_mut((s.gpr * row_tile).max(1)))
        .enumerate()
        .flat_map_iter(|(q, (dst, sdst))| {
            let first = rows.start + q * row_tile;
            let tile_rows: Vec<&[i32]> =
                (first..(first + row_tile).min(rows.end)).map(|r| &w.mantissas[r * s.k..(r + 1) * s.k]).collect();
            // Weights outside i16 are stored as 0 and listed (row, then column: sorted).
            let fit = |v: i32| if v as i16 as i32 == v { v } else { 0 };
            let mut fixes = Vec::new();
            for (lane, row) in tile_rows.iter().enumerate() {
                fixes.extend(
                    row.iter().enumerate().filter(|&(_, &m)| m as i16 as i32 != m).map(|(c, _)| (first + lane, c)),
                );
            }
            for gi in 0..s.gpr {
                let cols = s.cols(gi);
                for (j, c) in cols.clone().step_by(2).enumerate() {
                    let words = &mut dst[(gi * s.pg + j) * row_tile..][..tile_rows.len()];
                    if c + 1 < cols.end {
                        for (d, row) in words.iter_mut().zip(&tile_rows) {
                            *d = pair(fit(row[c]), fit(row[c + 1]));
                        }
                    } else {
                        for (d, row) in words.iter_mut().zip(&tile_rows) {
                            *d = pair(fit(row[c]), 0);
                        }
                    }
                }
                for (lane, r) in (first..first + tile_rows.len()).enumerate() {
                    let sh = w.exponents[r * s.gpr + gi] - re[r];
                    debug_assert!((0..=crate::fixed::tensor::MATMUL_MAX_SPREAD).contains(&sh));
                    sdst[gi * row_tile + lane] = sh as i64;
                }
            }
            fixes
        })
        .collect();
    PairRows { wp, fixes, shifts }
}

/// A whole weight matrix packed once for a kernel with `row_tile` lanes of rows (`pack_rows`
/// of every row), with what its products read besides: each correction's value
/// (`matmul_blocks::fix_value`) and the row exponents. The AVX2 and VNNI kernels each wrap
/// one, with their own row tile.
pub struct PackedRows {
    pub s: PairShape,
    pub rows: usize,
    pub row_tile: usize,
    /// `[row tiles][pairs][row_tile]`
    pub wp: Vec<i32>,
    /// `[row tiles][gpr][row_tile]`
    pub shifts: Vec<i64>,
    pub fixes: Vec<(usize, usize)>,
    /// m·2^shift of each fix.
    pub values: Vec<i64>,
    /// `linear::row_exps(w)`
    pub re: Vec<i32>,
}

impl PackedRows {
    /// Expects `w` that passed `check_matmul_weights` and `re = linear::row_exps(w)`.
    pub fn new(w: &GroupFixed, re: &[i32], row_tile: usize) -> PackedRows {
        let s = PairShape::new(w);
        let PairRows { wp, fixes, shifts } = pack_rows(w, re, s, 0..w.rows, row_tile);
        let values = fixes.iter().map(|&f| super::matmul_blocks::fix_value(w, re, f)).collect();
        PackedRows { s, rows: w.rows, row_tile, wp, shifts, fixes, values, re: re.to_vec() }
    }

    pub fn cols(&self) -> usize {
        self.s.k
    }

    /// Host bytes held.
    pub fn bytes(&self) -> u64 {
        (self.wp.len() * 4 + self.shifts.len() * 8 + self.fixes.len() * 24 + self.re.len() * 4) as u64
    }

    /// Whether this was packed from weights of `w`'s shape (a cheap guard; the contract is
    /// that it was packed from `w` itself).
    pub fn fits(&self, w: &GroupFixed) -> bool {
        self.rows == w.rows && self.s.k == w.cols && self.s.g == w.params.group_size as usize
    }

    /// The packed weights and shifts of rows `r0..r0 + nr`, tiles counted from `r0` (a
    /// multiple of `row_tile`: blocks start at a whole tile).
    pub fn tiles(&self, r0: usize, nr: usize) -> (&[i32], &[i64]) {
        debug_assert!(r0.is_multiple_of(self.row_tile));
        let (q0, q1) = (r0 / self.row_tile, (r0 + nr).div_ceil(self.row_tile));
        let (w_tile, s_tile) = (self.s.pairs * self.row_tile, self.s.gpr * self.row_tile);
        (&self.wp[q0 * w_tile..q1 * w_tile], &self.shifts[q0 * s_tile..q1 * s_tile])
    }
}

/// Activations as `[token tiles][pairs][hi tok_tile, lo tok_tile]` i16 pairs (zero tokens pad
/// the last tile).
pub fn pack_acts(x: &TokenFixed, s: PairShape, tok_tile: usize) -> Vec<i32> {
    let tiles = x.tokens.div_ceil(tok_tile);
    let mut out = vec![0i32; tiles * s.pairs * 2 * tok_tile];
    let mask = (1 << LO_BITS) - 1;
    out.par_chunks_mut((s.pairs * 2 * tok_tile).max(1)).enumerate().for_each(|(tt, dst)| {
        for lt in 0..tok_tile.min(x.tokens - tt * tok_tile) {
            let a = &x.mants[(tt * tok_tile + lt) * s.k..][..s.k];
            for gi in 0..s.gpr {
                let cols = s.cols(gi);
                for (j, c) in cols.clone().step_by(2).enumerate() {
                    let (a0, a1) = (a[c], if c + 1 < cols.end { a[c + 1] } else { 0 });
                    let at = (gi * s.pg + j) * 2 * tok_tile + lt;
                    dst[at] = pair(a0 >> LO_BITS, a1 >> LO_BITS);
                    dst[at + tok_tile] = pair(a0 & mask, a1 & mask);
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    //! The layout, checked by unpacking on any CPU (the VNNI kernel's own tests need AVX-512):
    //! every weight and activation comes back from its documented place, padding is zero,
    //! out-of-i16 weights are listed, shifts are where the kernels read them.
    use super::*;
    use crate::backend::cpu::linear::row_exps;
    use crate::fixed::tensor::IngestParams;
    use crate::test_rng::SplitMix64 as Rng;

    #[test]
    fn weights_and_activations_are_where_the_kernels_read_them() {
        let mut rng = Rng(11);
        // (tokens, k, n, group size, row range); tile sizes of both kernels below.
        let cases: &[(usize, usize, usize, u32, Range<usize>)] =
            &[(1, 1, 1, 1, 0..1), (7, 67, 37, 64, 0..37), (5, 130, 40, 33, 16..40), (4, 64, 20, 7, 3..19)];
        for (tokens, k, n, g, rows) in cases.iter().cloned() {
            let gpr = k.div_ceil(g as usize);
            let w = GroupFixed {
                rows: n,
                cols: k,
                params: IngestParams { group_size: g, mantissa_bits: 16 },
                exponents: (0..n * gpr).map(|_| (rng.next() % 17) as i32).collect(),
                mantissas: (0..n * k)
                    .map(|i| if i % 29 == 3 { 1 << 15 } else { (rng.next() % (1 << 16)) as i32 - (1 << 15) })
                    .collect(),
            };
            let x = TokenFixed {
                tokens,
                width: k,
                exps: vec![0; tokens],
                mants: (0..tokens * k).map(|_| (rng.next() % ((1 << 18) + 1)) as i32 - (1 << 17)).collect(),
            };
            let re = row_exps(&w);
            let s = PairShape::new(&w);
            let what = format!("tokens {tokens} k {k} n {n} g {g} rows {rows:?}");
            // Column c's pair in the padded layout, and the i16 half it takes (low first).
            let place = |c: usize| (c / s.g * s.pg + c % s.g / 2, 16 * (c % s.g % 2));
            let put = |word: &mut i32, half: usize, v: i32| *word |= ((v as u16 as u32) << half) as i32;
            for row_tile in [16, 32] {
                let p = pack_rows(&w, &re, s, rows.clone(), row_tile);
                let tiles = rows.len().div_ceil(row_tile);
                let (mut wp, mut shifts, mut fixes) =
                    (vec![0i32; tiles * s.pairs * row_tile], vec![0i64; tiles * gpr * row_tile], Vec::new());
                for (lr, r) in rows.clone().enumerate() {
                    let (q, lane) = (lr / row_tile, lr % row_tile);
                    for c in 0..k {
                        let (pi, half) = place(c);
                        let m = w.mantissas[r * k + c];
                        if m == 1 << 15 {
                            fixes.push((r, c)); // stored as 0
                        } else {
                            put(&mut wp[(q * s.pairs + pi) * row_tile + lane], half, m);
                        }
                    }
                    for gi in 0..gpr {
                        shifts[(q * gpr + gi) * row_tile + lane] = (w.exponents[r * gpr + gi] - re[r]) as i64;
                    }
                }
                assert!(fixes.is_empty() == (rows.len() * k < 29), "{what}: the case has +2^15 weights");
                assert_eq!(p.wp, wp, "{what}: weights, row tile {row_tile}");
                assert_eq!(p.shifts, shifts, "{what}: shifts, row tile {row_tile}");
                assert_eq!(p.fixes, fixes, "{what}: corrections, row tile {row_tile}");
            }
            for tok_tile in [3, 6] {
                let mut want = vec![0i32; tokens.div_ceil(tok_tile) * s.pairs * 2 * tok_tile];
                for t in 0..tokens {
                    let (tt, lt) = (t / tok_tile, t % tok_tile);
                    for c in 0..k {
                        let (pi, half) = place(c);
                        let a = x.mants[t * k + c];
                        // a = hi·512 + lo, lo in [0, 512), computed apart from the packer.
                        let lo = a.rem_euclid(1 << LO_BITS);
                        let hi = (a - lo) / (1 << LO_BITS);
                        let at = (tt * s.pairs + pi) * 2 * tok_tile + lt;
                        put(&mut want[at], half, hi);
                        put(&mut want[at + tok_tile], half, lo);
                    }
                }
                assert_eq!(pack_acts(&x, s, tok_tile), want, "{what}: activations, token tile {tok_tile}");
            }
        }
    }
}
