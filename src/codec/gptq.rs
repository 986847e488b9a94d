//! GPTQ-style error feedback (Frantar et al. 2022) on the codec's own grid: with each
//! group's scale code and zero point fixed by the search, the codes are chosen one input
//! column at a time and each column's rounding error is spread over the columns not yet
//! rounded, weighted by the inverse of the calibration statistic H. This minimises the
//! H-weighted output error ‖(W − Ŵ)X‖² far better than rounding every weight to its nearest
//! code. Columns go in descending order of diag(H) ("act-order"; the groups stay the
//! stored groups, since their scales are fixed first).
//!
//! Host f64 under DESIGN §3 rule 6: `+ − × / sqrt` and `round_ties_even` only, every
//! element's updates applied in one fixed order (ascending step), no `mul_add`; rows are
//! independent and split in fixed blocks, so the codes are the same on every machine
//! whatever the thread count. Vectorisation only runs independent elements side by side.

use rayon::prelude::*;

use crate::fixed::quant::{QuantTensor, step};

/// Damping added to H's diagonal before error feedback: λ = num/den × the mean of
/// diag(H). A larger λ trusts the calibration statistic's off-diagonal structure less: the
/// codes move less toward what the calibration text alone rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damp {
    pub num: u32,
    pub den: u32,
}

impl Damp {
    /// GPTQ's usual 1%: codec version 1's only value.
    pub const GPTQ: Damp = Damp { num: 1, den: 100 };
    /// The default from codec version 2 on: measured on SmolLM2-135M calibrated on one genre
    /// and scored on others (BENCHMARKS.md, issue 15), where 1% fits the calibration text
    /// at the others' expense.
    pub const DEFAULT: Damp = Damp { num: 1, den: 1 };

    /// A positive decimal ("1", "0.01", "2.5"; up to 6 decimals), kept as an exact ratio.
    pub fn parse(s: &str) -> Result<Damp, String> {
        let bad =
            || format!("--damp {s}: expected a positive decimal such as 1 or 0.01 (up to 6 decimals, at most 1000)");
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() && frac.is_empty()
            || frac.len() > 6
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let den = 10u64.pow(frac.len() as u32);
        let num = format!("{int}{frac}").parse::<u64>().map_err(|_| bad())?;
        if num == 0 || num > 1000 * den {
            return Err(bad());
        }
        let g = gcd(num, den);
        Ok(Damp { num: (num / g) as u32, den: (den / g) as u32 })
    }

    pub fn value(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// Shortest decimal of the ratio ("num/den" if it has none within 6 decimals).
impl std::fmt::Display for Damp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scale = 1_000_000u64;
        if self.den == 0 || !scale.is_multiple_of(self.den as u64) {
            return write!(f, "{}/{}", self.num, self.den);
        }
        let v = self.num as u64 * (scale / self.den as u64);
        let (i, mut fr) = (v / scale, format!("{:06}", v % scale));
        while fr.ends_with('0') {
            fr.pop();
        }
        if fr.is_empty() { write!(f, "{i}") } else { write!(f, "{i}.{fr}") }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
/// Rows per parallel task (fixed partition).
const ROWS_PER_TASK: usize = 64;

/// Columns per block of the Cholesky factorisation: a block's updates reach each element
/// while it is in registers, instead of one pass over the whole matrix per column.
const BLOCK: usize = 64;
/// Rows per block of the triangular inverse (each block reads all finished rows of X once).
const INV_BLOCK: usize = 128;

/// Offset of row i in a packed lower triangle, row-major (row i holds columns 0..=i).
fn row_offset(i: usize) -> usize {
    i * (i + 1) / 2
}

/// The rows of a packed lower triangle (row-major), as separate mutable slices.
fn packed_rows(l: &mut [f64], n: usize) -> Vec<&mut [f64]> {
    let mut rows = Vec::with_capacity(n);
    let mut rest = l;
    for i in 0..n {
        let (r, b) = std::mem::take(&mut rest).split_at_mut(i + 1);
        rows.push(r);
        rest = b;
    }
    rows
}

/// Register tile of the blocked updates: TR rows × TC columns of the output stay in
/// registers over a run of steps, loaded and stored once per run instead of once per step.
const TR: usize = 4;
const TC: usize = 8;
/// Cholesky trailing update: rows per parallel task (fixed partition), and column tiles per
/// cache chunk (the chunk's slice of the packed panel, 8·TC·BLOCK·CHOL_COL_TILES = 64 KiB,
/// is read from L2 by every row tile of the task).
const CHOL_ROWS_PER_TASK: usize = 32;
const CHOL_COL_TILES: usize = 16;
/// Inverse: columns per parallel task (a strip of the block's rows; a multiple of TC), and
/// finished rows per cache chunk (the chunk's part of the strip's columns of X is packed,
/// 8·INV_COLS·INV_K_CHUNK = 128 KiB, and read from L2 by every row tile of the block).
const INV_COLS: usize = 128;
const INV_K_CHUNK: usize = 128;
/// Inverse: rows per sub-block of a row block (its earlier sub-blocks reach it in tiles).
const INV_SUB: usize = 32;

/// Cholesky trailing update of one task's rows (`rows` are rows k1 + first.. of the matrix):
/// every element (i, j), k1 ≤ j ≤ i, receives a_ij −= l_ik · l_jk for k in k0..k1 ascending.
/// `pk` holds l_jk by column tile: pk[((j − k1)/TC · (k1 − k0) + k − k0) · TC + (j − k1) % TC].
type CholKernel = fn(&mut [&mut [f64]], usize, usize, usize, &[f64]);
/// The inverse's work on one strip of a row block (see `inv_strip_body`).
type InvKernel = fn(&mut [f64], usize, usize, usize, &[f64], &[f64]);

/// The hot loops, compiled twice: for baseline x86-64 (or any target) and with AVX2 (never
/// FMA: every multiply and subtract stays its own rounding, so both give the same bits).
#[derive(Clone, Copy)]
struct Kernels {
    chol: CholKernel,
    inv: InvKernel,
}

impl Kernels {
    const PORTABLE: Kernels = Kernels { chol: chol_trailing_portable, inv: inv_strip_portable };

    fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            return Kernels { chol: chol_trailing_avx2, inv: inv_strip_avx2 };
        }
        Kernels::PORTABLE
    }
}

fn chol_trailing_portable(rows: &mut [&mut [f64]], first: usize, k0: usize, k1: usize, pk: &[f64]) {
    chol_trailing_body(rows, first, k0, k1, pk)
}

#[cfg(target_arch = "x86_64")]
fn chol_trailing_avx2(rows: &mut [&mut [f64]], first: usize, k0: usize, k1: usize, pk: &[f64]) {
    #[target_feature(enable = "avx2")]
    unsafe fn run(rows: &mut [&mut [f64]], first: usize, k0: usize, k1: usize, pk: &[f64]) {
        chol_trailing_body(rows, first, k0, k1, pk)
    }
    // SAFETY: only selected by `Kernels::detect` when the CPU has AVX2 (no FMA is enabled).
    unsafe { run(rows, first, k0, k1, pk) }
}

fn inv_strip_portable(strip: &mut [f64], c0: usize, i0: usize, i1: usize, lrows: &[f64], xs: &[f64]) {
    inv_strip_body(strip, c0, i0, i1, lrows, xs)
}

#[cfg(target_arch = "x86_64")]
fn inv_strip_avx2(strip: &mut [f64], c0: usize, i0: usize, i1: usize, lrows: &[f64], xs: &[f64]) {
    #[target_feature(enable = "avx2")]
    unsafe fn run(strip: &mut [f64], c0: usize, i0: usize, i1: usize, lrows: &[f64], xs: &[f64]) {
        inv_strip_body(strip, c0, i0, i1, lrows, xs)
    }
    // SAFETY: only selected by `Kernels::detect` when the CPU has AVX2 (no FMA is enabled).
    unsafe { run(strip, c0, i0, i1, lrows, xs) }
}

/// Cholesky factor L of a symmetric matrix given as its packed lower triangle (row-major,
/// row i at `row_offset(i)`), in place; false if not positive definite. Every element
/// (i, j) receives its updates a_ij −= l_ik·l_jk in ascending k and then its division (or
/// square root), exactly as the textbook right-looking algorithm: the blocking and the
/// register tiles only change when, not in which order, each element is updated, so the
/// bits are those of `tests::cholesky_ref`. Working memory beyond the triangle: one packed
/// panel, 8·BLOCK·(n + TC) bytes, and the block's diagonal, 8·BLOCK² bytes.
fn cholesky_packed(l: &mut [f64], n: usize, block: usize) -> bool {
    cholesky_with(l, n, block, Kernels::detect())
}

fn cholesky_with(l: &mut [f64], n: usize, block: usize, kern: Kernels) -> bool {
    let mut rows = packed_rows(l, n);
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + block).min(n);
        let w = k1 - k0;
        // Diagonal block, row by row: row i takes each step k < i of the block in order (its
        // division by d_k, then the update of its columns k+1..=i), then its square root.
        let mut d = vec![0f64; w];
        let mut lt = vec![0f64; w * w]; // lt[(k − k0)·w + j − k0] = l_jk for k < j in the block
        for i in k0..k1 {
            let row = &mut *rows[i];
            for k in k0..i {
                let lik = row[k] / d[k - k0];
                row[k] = lik;
                lt[(k - k0) * w + i - k0] = lik;
                let lk = &lt[(k - k0) * w + k + 1 - k0..(k - k0) * w + i - k0];
                for (x, &v) in row[k + 1..i].iter_mut().zip(lk) {
                    *x -= lik * v;
                }
                row[i] -= lik * lik;
            }
            let p = row[i];
            if p.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return false;
            }
            d[i - k0] = p.sqrt();
            row[i] = d[i - k0];
        }
        if k1 < n {
            // Panel: every row below the block takes the block's steps in order (division,
            // then the update of its later panel columns); rows are independent.
            let (d, lt) = (&d, &lt);
            rows[k1..].par_iter_mut().with_min_len(64).for_each(|row| {
                let p = &mut row[k0..k1];
                for kk in 0..w {
                    let lik = p[kk] / d[kk];
                    p[kk] = lik;
                    for (x, &v) in p[kk + 1..].iter_mut().zip(&lt[kk * w + kk + 1..(kk + 1) * w]) {
                        *x -= lik * v;
                    }
                }
            });
            // Trailing matrix: columns j ≥ k1, rows i ≥ j, the block's k in ascending order.
            let nt = (n - k1).div_ceil(TC);
            let mut pk = vec![0f64; nt * w * TC];
            let rs = &rows;
            pk.par_chunks_mut(w * TC).enumerate().for_each(|(t, tile)| {
                for c in 0..TC.min(n - k1 - t * TC) {
                    for (kk, &v) in rs[k1 + t * TC + c][k0..k1].iter().enumerate() {
                        tile[kk * TC + c] = v;
                    }
                }
            });
            rows[k1..]
                .par_chunks_mut(CHOL_ROWS_PER_TASK)
                .enumerate()
                .for_each(|(g, chunk)| (kern.chol)(chunk, g * CHOL_ROWS_PER_TASK, k0, k1, &pk));
        }
        k0 = k1;
    }
    true
}

/// `CholKernel`: row tiles of TR rows against whole column tiles left of their diagonal,
/// in registers; the rest (columns near the diagonal, the last rows) element by element.
#[inline(always)]
fn chol_trailing_body(rows: &mut [&mut [f64]], first: usize, k0: usize, k1: usize, pk: &[f64]) {
    let w = k1 - k0;
    let nr = rows.len();
    let full = nr / TR * TR;
    // The row tile at q (rows first + q.. relative to k1) has whole column tiles t < tiles(q).
    let tiles = |q: usize| (first + q + 1) / TC;
    let nt = if full > 0 { tiles(full - TR) } else { 0 };
    for tc0 in (0..nt).step_by(CHOL_COL_TILES) {
        for q in (0..full).step_by(TR) {
            for t in tc0..tiles(q).min(tc0 + CHOL_COL_TILES) {
                let c = k1 + t * TC;
                let mut acc = [[0f64; TC]; TR];
                for (i, a) in acc.iter_mut().enumerate() {
                    a.copy_from_slice(&rows[q + i][c..c + TC]);
                }
                let a: [&[f64]; TR] = std::array::from_fn(|i| &rows[q + i][k0..k1]);
                tile_sub::<false>(&mut acc, &a, pk[t * w * TC..(t + 1) * w * TC].chunks_exact(TC));
                for (i, a) in acc.iter().enumerate() {
                    rows[q + i][c..c + TC].copy_from_slice(a);
                }
            }
        }
    }
    for (r, row) in rows.iter_mut().enumerate() {
        let from = if r < full { tiles(r / TR * TR) * TC } else { 0 };
        let (a, out) = row.split_at_mut(k1);
        for (kk, &lik) in a[k0..].iter().enumerate() {
            for (j, x) in (from..).zip(&mut out[from..]) {
                *x -= lik * pk[((j / TC) * w + kk) * TC + j % TC];
            }
        }
    }
}

/// acc[i][c] −= a[i][k] · b_k[c] for the steps k in order (`b` yields b_0, b_1, …; as many
/// steps as both `b` and the a[i] have); with SKIP, the terms with a[i][k] = 0 are skipped
/// (as the inverse does). The rows are named one by one so that the tile stays in
/// registers (TR = 4).
#[inline(always)]
fn tile_sub<'b, const SKIP: bool>(acc: &mut [[f64; TC]; TR], a: &[&[f64]; TR], b: impl Iterator<Item = &'b [f64]>) {
    let [mut x0, mut x1, mut x2, mut x3] = *acc;
    let [a0, a1, a2, a3] = *a;
    for (((bk, &v0), &v1), (&v2, &v3)) in b.zip(a0).zip(a1).zip(a2.iter().zip(a3)) {
        let bk: &[f64; TC] = bk[..TC].try_into().expect("tile");
        if !SKIP || v0 != 0.0 {
            row_sub(&mut x0, v0, bk);
        }
        if !SKIP || v1 != 0.0 {
            row_sub(&mut x1, v1, bk);
        }
        if !SKIP || v2 != 0.0 {
            row_sub(&mut x2, v2, bk);
        }
        if !SKIP || v3 != 0.0 {
            row_sub(&mut x3, v3, bk);
        }
    }
    *acc = [x0, x1, x2, x3];
}

/// x[c] −= a · b[c]: a separate multiply and subtract per element.
#[inline(always)]
fn row_sub(x: &mut [f64; TC], a: f64, b: &[f64; TC]) {
    for (y, &v) in x.iter_mut().zip(b) {
        *y -= a * v;
    }
}

/// X = L⁻¹ in place for lower-triangular L, packed as in `cholesky_packed`: row i of X is
/// (e_i − Σ_{k<i} L_ik X_k) / L_ii, every element's sum over ascending k (terms with
/// L_ik = 0 skipped). Row i of X needs only row i of L and the finished rows k < i of X, so
/// it replaces row i of L. Rows go in blocks: the block's rows of L are copied out, and the
/// block's rows of X are made in strips of INV_COLS columns, in parallel (columns of X are
/// independent): first the contributions of all finished rows, in register tiles, then the
/// block's own rows in order (`inv_strip_body`); then the strips are written back. The
/// blocking and the tiles only change when, not in which order, each element gets its
/// terms, so the bits are those of `tests::lower_inverse_ref`. Working memory beyond the
/// triangle: 8·block·(2n + INV_COLS) bytes, and 8·INV_COLS·INV_K_CHUNK = 128 KiB per thread.
fn lower_inverse_packed(l: &mut [f64], n: usize, block: usize) {
    lower_inverse_with(l, n, block, Kernels::detect())
}

fn lower_inverse_with(l: &mut [f64], n: usize, block: usize, kern: Kernels) {
    let mut i0 = 0;
    while i0 < n {
        let i1 = (i0 + block).min(n);
        let b = i1 - i0;
        // The block's rows of L (width i1; row i has columns 0..=i).
        let mut lrows = vec![0f64; b * i1];
        for i in i0..i1 {
            lrows[(i - i0) * i1..(i - i0) * i1 + i + 1].copy_from_slice(&l[row_offset(i)..row_offset(i) + i + 1]);
        }
        // Strip s: columns s·INV_COLS.. of the block's rows, b × INV_COLS row-major.
        let mut strips = vec![0f64; i1.div_ceil(INV_COLS) * b * INV_COLS];
        let (xs, lr) = (&l[..row_offset(i0)], &lrows);
        strips
            .par_chunks_mut(b * INV_COLS)
            .enumerate()
            .for_each(|(s, strip)| (kern.inv)(strip, s * INV_COLS, i0, i1, lr, xs));
        for i in i0..i1 {
            let r = i - i0;
            for (s, strip) in strips.chunks(b * INV_COLS).enumerate() {
                let c0 = s * INV_COLS;
                if c0 > i {
                    break;
                }
                let c1 = (c0 + INV_COLS).min(i + 1);
                l[row_offset(i) + c0..row_offset(i) + c1].copy_from_slice(&strip[r * INV_COLS..r * INV_COLS + c1 - c0]);
            }
        }
        i0 = i1;
    }
}

/// `InvKernel`: the block i0..i1's rows of X in columns c0..c0+INV_COLS (below i1), into
/// `strip` (zeros on entry; b × INV_COLS row-major). `lrows`: the block's rows of L (width
/// i1); `xs`: the finished rows of X, packed. Every element gets its terms in ascending k:
/// finished rows k < i0 first (row tiles against whole column tiles in registers, k in
/// chunks; the rest element by element), then the block's rows (in sub-blocks, the earlier
/// ones in register tiles where all their terms count), then its division by L_ii.
#[inline(always)]
fn inv_strip_body(strip: &mut [f64], c0: usize, i0: usize, i1: usize, lrows: &[f64], xs: &[f64]) {
    let b = i1 - i0;
    let sw = INV_COLS;
    let cend = (c0 + sw).min(i1);
    for r in 0..b {
        if (c0..cend).contains(&(i0 + r)) {
            strip[r * sw + i0 + r - c0] = 1.0;
        }
    }
    // Finished rows k < i0 reach columns j < i0 (X_kj = 0 for j > k, so k ≥ j ≥ c0).
    let pend = cend.min(i0);
    if c0 < pend {
        let full = b / TR * TR;
        let tend = c0 + (pend - c0) / TC * TC;
        // The chunk's rows of X in the whole column tiles, packed by tile (as the Cholesky
        // panel): xp[((j − c0)/TC · INV_K_CHUNK + k − kc0) · TC + (j − c0) % TC] = X_kj.
        let mut xp = vec![0f64; (tend - c0) * INV_K_CHUNK];
        let mut kc0 = c0;
        while kc0 < i0 {
            let kc1 = (kc0 + INV_K_CHUNK).min(i0);
            for (t, tile) in xp.chunks_exact_mut(INV_K_CHUNK * TC).enumerate() {
                let j = c0 + t * TC;
                for k in kc0.max(j + TC - 1)..kc1 {
                    tile[(k - kc0) * TC..(k - kc0 + 1) * TC]
                        .copy_from_slice(&xs[row_offset(k) + j..row_offset(k) + j + TC]);
                }
            }
            for q in (0..full).step_by(TR) {
                let lr: [&[f64]; TR] = std::array::from_fn(|i| &lrows[(q + i) * i1 + kc0..(q + i) * i1 + kc1]);
                let dense = lr.iter().all(|s| s.iter().all(|&v| v != 0.0));
                for j in (c0..tend).step_by(TC) {
                    if kc1 <= j {
                        break;
                    }
                    let mut acc = [[0f64; TC]; TR];
                    for (i, a) in acc.iter_mut().enumerate() {
                        a.copy_from_slice(&strip[(q + i) * sw + j - c0..(q + i) * sw + j - c0 + TC]);
                    }
                    // k in j..j+TC−1 reach only the tile's columns ≤ k.
                    let kb = (j + TC - 1).clamp(kc0, kc1);
                    for k in kc0.max(j)..kb {
                        let xk = &xs[row_offset(k) + j..row_offset(k) + k + 1];
                        for (x, l) in acc.iter_mut().zip(&lr) {
                            let lik = l[k - kc0];
                            if lik != 0.0 {
                                for (y, &xv) in x.iter_mut().zip(xk) {
                                    *y -= lik * xv;
                                }
                            }
                        }
                    }
                    let a: [&[f64]; TR] = std::array::from_fn(|i| &lr[i][kb - kc0..]);
                    let t = (j - c0) / TC;
                    let xt = &xp[(t * INV_K_CHUNK + kb - kc0) * TC..(t * INV_K_CHUNK + kc1 - kc0) * TC];
                    if dense {
                        tile_sub::<false>(&mut acc, &a, xt.chunks_exact(TC));
                    } else {
                        tile_sub::<true>(&mut acc, &a, xt.chunks_exact(TC));
                    }
                    for (i, a) in acc.iter().enumerate() {
                        strip[(q + i) * sw + j - c0..(q + i) * sw + j - c0 + TC].copy_from_slice(a);
                    }
                }
            }
            kc0 = kc1;
        }
        // The rest: the last rows (all columns), the columns past the whole tiles.
        for r in 0..b {
            let ja = if r < full { tend } else { c0 };
            if ja >= pend {
                continue;
            }
            let out = &mut strip[r * sw..(r + 1) * sw];
            let lrow = &lrows[r * i1..r * i1 + i0];
            for (k, &lik) in (ja..).zip(&lrow[ja..]) {
                if lik != 0.0 {
                    let hi = pend.min(k + 1);
                    let xk = &xs[row_offset(k) + ja..row_offset(k) + hi];
                    for (y, &xv) in out[ja - c0..hi - c0].iter_mut().zip(xk) {
                        *y -= lik * xv;
                    }
                }
            }
        }
    }
    // The block's own rows, in sub-blocks of INV_SUB rows: the rows of earlier sub-blocks
    // reach the whole column tiles left of the block (columns j < i0, which every k ≥ i0
    // reaches) in register tiles; the rest of the terms row by row, in order, each row then
    // divided by L_ii.
    let tw = (cend.min(i0).max(c0) - c0) / TC * TC; // tiled columns c0..c0 + tw
    for sb0 in (0..b).step_by(INV_SUB) {
        let sb1 = (sb0 + INV_SUB).min(b);
        let full = sb0 + (sb1 - sb0) / TR * TR;
        if sb0 > 0 && tw > 0 {
            let (done, cur) = strip.split_at_mut(sb0 * sw);
            for q in (sb0..full).step_by(TR) {
                let lr: [&[f64]; TR] = std::array::from_fn(|i| &lrows[(q + i) * i1 + i0..(q + i) * i1 + i0 + sb0]);
                let dense = lr.iter().all(|s| s.iter().all(|&v| v != 0.0));
                for j in (0..tw).step_by(TC) {
                    let mut acc = [[0f64; TC]; TR];
                    for (i, a) in acc.iter_mut().enumerate() {
                        a.copy_from_slice(&cur[(q - sb0 + i) * sw + j..(q - sb0 + i) * sw + j + TC]);
                    }
                    if dense {
                        tile_sub::<false>(&mut acc, &lr, done[j..].chunks(sw));
                    } else {
                        tile_sub::<true>(&mut acc, &lr, done[j..].chunks(sw));
                    }
                    for (i, a) in acc.iter().enumerate() {
                        cur[(q - sb0 + i) * sw + j..(q - sb0 + i) * sw + j + TC].copy_from_slice(a);
                    }
                }
            }
        }
        for r in sb0..sb1 {
            let i = i0 + r;
            // Columns below `tiled` already have the terms of k < i0 + sb0.
            let tiled = if r < full { tw } else { 0 };
            let (done, cur) = strip.split_at_mut(r * sw);
            let cur = &mut cur[..sw];
            let lrow = &lrows[r * i1..r * i1 + i + 1];
            for k in i0..i {
                let lik = lrow[k];
                let lo = if k < i0 + sb0 { tiled } else { 0 };
                let hi = (cend.min(k + 1)).saturating_sub(c0);
                if lik != 0.0 && lo < hi {
                    let xk = &done[(k - i0) * sw + lo..(k - i0) * sw + hi];
                    for (y, &xv) in cur[lo..hi].iter_mut().zip(xk) {
                        *y -= lik * xv;
                    }
                }
            }
            let d = lrow[i];
            for y in cur[..cend.min(i + 1).saturating_sub(c0)].iter_mut() {
                *y /= d;
            }
        }
    }
}

/// U, upper triangular with H⁻¹ = UᵀU (what GPTQ's update needs), for H = `hp(i, j)`
/// (n × n) + λI: one Cholesky factorisation of H with its index order reversed
/// (P H P = L Lᵀ gives U = P L⁻¹ P) and one triangular inverse, no full inverse. One packed
/// triangle (8·n(n+1)/2 bytes) throughout: the reversed matrix becomes L in place, then
/// X = L⁻¹ in place; reversing the packed array of X (row-major lower) gives U packed
/// row-major upper (row a at `upper_offset(n, a)`, columns a..n).
fn inverse_upper_factor(hp: impl Fn(usize, usize) -> f64 + Sync, lambda: f64, n: usize) -> Option<Vec<f64>> {
    let mut rev = vec![0f64; row_offset(n)];
    packed_rows(&mut rev, n).into_par_iter().enumerate().for_each(|(i, row)| {
        for (j, o) in row.iter_mut().enumerate() {
            let v = hp(n - 1 - i, n - 1 - j);
            *o = if i == j { v + lambda } else { v };
        }
    });
    if !cholesky_packed(&mut rev, n, BLOCK) {
        return None;
    }
    lower_inverse_packed(&mut rev, n, INV_BLOCK);
    rev.reverse();
    Some(rev)
}

/// Offset of row a of a packed upper triangle (row-major, row a holds columns a..n).
fn upper_offset(n: usize, a: usize) -> usize {
    a * (2 * n - a + 1) / 2
}

/// Column order: descending diag(H), ties by index (`h` full, row-major).
pub fn act_order(h: &[f64], n: usize) -> Vec<usize> {
    let d: Vec<f64> = (0..n).map(|j| h[j * n + j]).collect();
    act_order_diag(&d)
}

/// Column order from diag(H): descending, ties by index.
pub fn act_order_diag(d: &[f64]) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..d.len()).collect();
    perm.sort_by(|&a, &b| d[b].total_cmp(&d[a]).then(a.cmp(&b)));
    perm
}

/// What error feedback needs from one statistic H, computed once per linear input and
/// shared by the linears that read it (q, k, v; gate, up) and by every bit width tried.
/// Memory: U packed, 8·n(n+1)/2 bytes (plus the n-entry order); while it is made, H (as
/// given) and that one triangle.
pub struct Feedback {
    n: usize,
    /// Column order (act-order).
    perm: Vec<usize>,
    /// U with H_damped⁻¹ = UᵀU, in act order, packed upper (`upper_offset`).
    u: Vec<f64>,
}

impl Feedback {
    /// From H (`n × n` row-major, symmetric PSD, any positive scale); None when H carries
    /// no signal.
    pub fn new(h: &[f64], n: usize, damp: Damp) -> Option<Feedback> {
        let d: Vec<f64> = (0..n).map(|j| h[j * n + j]).collect();
        Feedback::with(&d, |a, b| h[a * n + b], n, damp)
    }

    /// From H as a packed triangle (the same values give the same bits as `new`).
    pub fn from_packed(h: &super::gram::SymPacked, damp: Damp) -> Option<Feedback> {
        Feedback::with(&h.diag(), |a, b| h.get(a, b), h.n, damp)
    }

    fn with(d: &[f64], h: impl Fn(usize, usize) -> f64 + Sync, n: usize, damp: Damp) -> Option<Feedback> {
        let mut trace = 0.0;
        for &v in d {
            trace += v;
        }
        if trace.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
        let perm = act_order_diag(d);
        let hp = |a: usize, b: usize| h(perm[a], perm[b]);
        // Damping: λ = `damp` × the mean diagonal (two correctly rounded operations on the
        // same integers everywhere); a matrix that still fails (rounding on a nearly
        // singular H) gets ten times more, a fixed sequence, so the result is the same
        // everywhere.
        let mut lambda = damp.value() * (trace / n as f64);
        loop {
            if let Some(u) = inverse_upper_factor(hp, lambda, n) {
                return Some(Feedback { n, perm, u });
            }
            lambda *= 10.0;
            if !lambda.is_finite() {
                return None;
            }
        }
    }

    /// Re-choose `q`'s codes by error feedback (`q.cols` must be this statistic's width).
    /// `w`: the source weights, exact, row-major. Scales and zero points are kept. Returns
    /// the error of the chosen codes under the damped H, tr(E H Eᵀ), which GPTQ gets for
    /// free: Σ ((w − ŵ) / U_jj)² over the steps (rows summed in ascending order).
    pub fn refine(&self, q: &mut QuantTensor, w: &[f64]) -> f64 {
        let n = self.n;
        assert_eq!(q.cols, n, "statistic width");
        let tail = tail_kernel();
        let losses: Vec<Vec<f64>> = {
            // Field by field: the codes are borrowed mutably beside them.
            let fixed = Fixed {
                scales: &q.scales,
                zeros: &q.zeros,
                base_exp: q.base_exp,
                qmax: (1i32 << q.params.bits) - 1,
                g: q.params.group_size as usize,
                gpr: q.groups_per_row(),
            };
            q.codes
                .par_chunks_mut(ROWS_PER_TASK * n)
                .enumerate()
                .map(|(blk, codes)| self.refine_rows(&fixed, blk * ROWS_PER_TASK, codes, w, tail))
                .collect()
        };
        let mut total = 0.0;
        for l in losses.iter().flatten() {
            total += l;
        }
        total
    }

    /// One task's rows (`codes` holds rows r0.. of the tensor): the columns in act order, in
    /// blocks of `FEEDBACK_BLOCK` ("lazy batch" GPTQ). Inside a block each column is rounded
    /// and its error applied to the block's later columns at once; the block's errors reach
    /// the columns after it in one pass (`tail`). Every element still receives its updates
    /// one step at a time in ascending step order, so the codes and the loss are those of
    /// the unblocked loop (`tests::refine_unblocked`) bit for bit, with one exception that
    /// changes neither: the tail also applies steps whose error is ±0, which can only flip
    /// the sign of a zero weight, and a ±0 weight rounds to the zero point with error ±0.
    fn refine_rows(&self, q: &Fixed, r0: usize, codes: &mut [u8], w: &[f64], tail: TailKernel) -> Vec<f64> {
        let n = self.n;
        let (perm, u) = (&self.perm, &self.u);
        let nr = codes.len() / n;
        let mut loss = vec![0f64; nr];
        // This block's rows in act order.
        let mut wp: Vec<f64> = Vec::with_capacity(nr * n);
        for r in 0..nr {
            wp.extend(perm.iter().map(|&p| w[(r0 + r) * n + p]));
        }
        let mut errs = vec![0f64; nr * FEEDBACK_BLOCK];
        let mut a0 = 0;
        while a0 < n {
            let a1 = (a0 + FEEDBACK_BLOCK).min(n);
            for (a, &col) in perm.iter().enumerate().take(a1).skip(a0) {
                // Row a of U from its diagonal to the block's end: U_aa, U_a,a+1, …
                let urow = &u[upper_offset(n, a)..upper_offset(n, a) + a1 - a];
                let d = urow[0];
                for r in 0..nr {
                    let gi = (r0 + r) * q.gpr + col / q.g;
                    let (m, e) = step(q.scales[gi], q.base_exp);
                    let z = q.zeros[gi] as i32;
                    let x = wp[r * n + a];
                    let code = ((libm::ldexp(x, -e) / m as f64).round_ties_even() as i64 + z as i64)
                        .clamp(0, q.qmax as i64) as i32;
                    codes[r * n + col] = code as u8;
                    let err = (x - libm::ldexp((m as i64 * (code - z) as i64) as f64, e)) / d;
                    errs[r * FEEDBACK_BLOCK + a - a0] = err;
                    if err != 0.0 {
                        loss[r] += err * err;
                        let wr = &mut wp[r * n + a + 1..r * n + a1];
                        for (wv, &uv) in wr.iter_mut().zip(&urow[1..]) {
                            *wv -= err * uv;
                        }
                    }
                }
            }
            if a1 < n {
                // U_aj = u[uoff[a − a0] + j] for the block's rows a.
                let uoff: Vec<usize> = (a0..a1).map(|a| upper_offset(n, a) - a).collect();
                tail(&mut wp, n, nr, &errs, &uoff, u, a1);
            }
            a0 = a1;
        }
        loss
    }
}

/// Columns per lazy-update block of the error feedback.
const FEEDBACK_BLOCK: usize = 32;

/// What the feedback reads of a quantized tensor besides its codes.
struct Fixed<'a> {
    scales: &'a [u8],
    zeros: &'a [u8],
    base_exp: i32,
    qmax: i32,
    g: usize,
    gpr: usize,
}

/// `wp[r, j] −= errs[r, k] · U[a0 + k, j]` for every row r < nr, column j in a1..n and the
/// block's steps k in ascending order: each element's operations are those of the
/// unblocked loop, in its order (separate multiply and subtract, as everywhere in rule 6).
type TailKernel = fn(&mut [f64], usize, usize, &[f64], &[usize], &[f64], usize);

fn tail_kernel() -> TailKernel {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        return tail_avx2;
    }
    tail_portable
}

fn tail_portable(wp: &mut [f64], n: usize, nr: usize, errs: &[f64], uoff: &[usize], u: &[f64], a1: usize) {
    tail_body(wp, n, nr, errs, uoff, u, a1)
}

#[cfg(target_arch = "x86_64")]
fn tail_avx2(wp: &mut [f64], n: usize, nr: usize, errs: &[f64], uoff: &[usize], u: &[f64], a1: usize) {
    #[target_feature(enable = "avx2")]
    unsafe fn run(wp: &mut [f64], n: usize, nr: usize, errs: &[f64], uoff: &[usize], u: &[f64], a1: usize) {
        tail_body(wp, n, nr, errs, uoff, u, a1)
    }
    // SAFETY: only selected by `tail_kernel` when the CPU has AVX2 (no FMA is enabled, so
    // the multiply and subtract stay two roundings, as on every other path).
    unsafe { run(wp, n, nr, errs, uoff, u, a1) }
}

/// A tile of TILE_ROWS rows × TILE_COLS columns stays in registers over the block's steps:
/// each weight is loaded and stored once per block instead of once per step.
#[inline(always)]
fn tail_body(wp: &mut [f64], n: usize, nr: usize, errs: &[f64], uoff: &[usize], u: &[f64], a1: usize) {
    const TILE_ROWS: usize = 4;
    const TILE_COLS: usize = 8;
    let bw = uoff.len();
    let fb = FEEDBACK_BLOCK;
    let mut j = a1;
    while j + TILE_COLS <= n {
        let mut r = 0;
        while r + TILE_ROWS <= nr {
            let mut acc = [[0f64; TILE_COLS]; TILE_ROWS];
            for (i, a) in acc.iter_mut().enumerate() {
                a.copy_from_slice(&wp[(r + i) * n + j..(r + i) * n + j + TILE_COLS]);
            }
            for (k, &o) in uoff.iter().enumerate() {
                let uk: &[f64; TILE_COLS] = u[o + j..o + j + TILE_COLS].try_into().expect("tile");
                for (i, a) in acc.iter_mut().enumerate() {
                    let ev = errs[(r + i) * fb + k];
                    for (x, &uv) in a.iter_mut().zip(uk) {
                        *x -= ev * uv;
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                wp[(r + i) * n + j..(r + i) * n + j + TILE_COLS].copy_from_slice(a);
            }
            r += TILE_ROWS;
        }
        for r in r..nr {
            tail_scalar(&mut wp[r * n..(r + 1) * n], &errs[r * fb..r * fb + bw], uoff, u, j, j + TILE_COLS);
        }
        j += TILE_COLS;
    }
    if j < n {
        for r in 0..nr {
            tail_scalar(&mut wp[r * n..(r + 1) * n], &errs[r * fb..r * fb + bw], uoff, u, j, n);
        }
    }
}

/// One row's columns j0..j1 of the tail, step by step.
#[inline(always)]
fn tail_scalar(row: &mut [f64], errs: &[f64], uoff: &[usize], u: &[f64], j0: usize, j1: usize) {
    for (&ev, &o) in errs.iter().zip(uoff) {
        for (x, &uv) in row[j0..j1].iter_mut().zip(&u[o + j0..o + j1]) {
            *x -= ev * uv;
        }
    }
}

/// tr(E H Eᵀ) for E = W − Ŵ (the H-weighted squared error), f64 in a fixed order; tests
/// and benchmarks compare quantizers with it.
pub fn weighted_error(q: &QuantTensor, w: &[f64], h: &[f64]) -> f64 {
    let (rows, n) = (q.rows, q.cols);
    let g = q.params.group_size as usize;
    let gpr = q.groups_per_row();
    let mut total = 0.0;
    for r in 0..rows {
        let e: Vec<f64> = (0..n)
            .map(|j| {
                let gi = r * gpr + j / g;
                let (m, ex) = step(q.scales[gi], q.base_exp);
                w[r * n + j] - libm::ldexp((m as i64 * (q.codes[r * n + j] as i64 - q.zeros[gi] as i64)) as f64, ex)
            })
            .collect();
        for i in 0..n {
            let mut s = 0.0;
            for j in 0..n {
                s += h[i * n + j] * e[j];
            }
            total += e[i] * s;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damp_parses_exact_ratios_and_prints_them_back() {
        for (s, num, den, back) in [
            ("1", 1, 1, "1"),
            ("0.01", 1, 100, "0.01"),
            ("2.50", 5, 2, "2.5"),
            (".5", 1, 2, "0.5"),
            ("0.000001", 1, 1_000_000, "0.000001"),
            ("1000", 1000, 1, "1000"),
        ] {
            let d = Damp::parse(s).unwrap();
            assert_eq!((d.num, d.den), (num, den), "{s}");
            assert_eq!(d.to_string(), back, "{s}");
        }
        for s in ["0", "0.0", "", ".", "-1", "1e2", "0.0000001", "1000.5", "x", "1.2.3"] {
            assert!(Damp::parse(s).is_err(), "{s:?} accepted");
        }
        assert_eq!(Damp::GPTQ.to_string(), "0.01");
        // Version 1's constant, bit for bit: 1/100 in f64 is the literal 0.01.
        assert_eq!(Damp::GPTQ.value().to_bits(), 0.01f64.to_bits());
    }
    use crate::fixed::quant::QuantParams;

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        // H = X Xᵀ / m + diag, X with correlated columns.
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let m = 3 * n;
        let x: Vec<f64> = (0..n * m).map(|_| next()).collect();
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let mut acc = 0.0;
                for k in 0..m {
                    acc += (x[i * m + k] + x[((i + 1) % n) * m + k]) * (x[j * m + k] + x[((j + 1) % n) * m + k]);
                }
                h[i * n + j] = acc;
            }
        }
        h
    }

    /// The textbook algorithms the blocked ones must equal bit for bit.
    fn cholesky_ref(a: &[f64], n: usize) -> Option<Vec<f64>> {
        let mut l = a.to_vec();
        for k in 0..n {
            let d = l[k * n + k];
            if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return None;
            }
            let d = d.sqrt();
            l[k * n + k] = d;
            for i in k + 1..n {
                l[i * n + k] /= d;
            }
            for i in k + 1..n {
                for j in k + 1..=i {
                    l[i * n + j] -= l[i * n + k] * l[j * n + k];
                }
            }
        }
        for i in 0..n {
            for j in i + 1..n {
                l[i * n + j] = 0.0;
            }
        }
        Some(l)
    }

    fn lower_inverse_ref(l: &[f64], n: usize) -> Vec<f64> {
        let mut x = vec![0f64; n * n];
        for i in 0..n {
            let mut row = vec![0f64; n];
            row[i] = 1.0;
            for k in 0..i {
                let lik = l[i * n + k];
                if lik != 0.0 {
                    for j in 0..=k {
                        row[j] -= lik * x[k * n + j];
                    }
                }
            }
            for j in 0..=i {
                x[i * n + j] = row[j] / l[i * n + i];
            }
        }
        x
    }

    fn pack_lower(a: &[f64], n: usize) -> Vec<f64> {
        (0..n).flat_map(|i| (0..=i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j]).collect()
    }

    fn same_bits(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn blocked_factorisations_equal_the_textbook_ones_bit_for_bit() {
        // Sizes around and between the blocks (64, 128), tile (4 × 8), task (32 rows, 128
        // columns), cache-chunk (128 columns, 128 rows) and sub-block (32) sizes, with both
        // kernel variants.
        let small = [(37, 8), (64, 64), (100, 16), (130, 64), (5, 3), (70, 1), (1, 64)];
        let cases = small.into_iter().chain([(300, 64), (517, 64), (283, 40), (517, 128)]);
        for (n, block) in cases {
            let mut h = spd(n, n as u64);
            for i in 0..n {
                h[i * n + i] += 0.5; // the generator's matrix is singular for even n
            }
            let want = cholesky_ref(&h, n).unwrap();
            let wp = pack_lower(&want, n);
            let wi = pack_lower(&lower_inverse_ref(&want, n), n);
            for kern in [Kernels::PORTABLE, Kernels::detect()] {
                let mut got = pack_lower(&h, n);
                assert!(cholesky_with(&mut got, n, block, kern));
                assert!(same_bits(&wp, &got), "cholesky n={n} block={block}");
                lower_inverse_with(&mut got, n, block, kern);
                assert!(same_bits(&wi, &got), "inverse n={n} block={block}");
            }
        }
        // Not positive definite: refused by both.
        let mut h = spd(20, 1);
        h[5 * 20 + 5] = -1.0;
        assert!(cholesky_ref(&h, 20).is_none() && !cholesky_packed(&mut pack_lower(&h, 20), 20, 8));
    }

    #[test]
    fn blocked_inverse_skips_the_same_zero_terms() {
        // A lower triangle with many +0 and −0 entries (whole tiles dense, others not) and,
        // in the second case, rows of X that overflow to ±inf, where a skipped 0 · inf
        // would otherwise make NaN: every term is skipped or applied exactly as in the
        // textbook loop.
        let mut rng = crate::test_rng::XorShift64(0x1234_5678_u64);
        let mut next = move || rng.next();
        for (n, block, huge) in [(300, 64, false), (211, 64, true), (97, 16, true), (300, 128, true)] {
            let mut l = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..i {
                    let v = next();
                    // Rows in stretches: some all nonzero, some with a third zeros.
                    l[i * n + j] = match (i / 8 % 3 == 0, v % 3) {
                        (false, 0) => 0.0,
                        (false, 1) if v % 2 == 0 => -0.0,
                        _ => ((v >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.1,
                    };
                }
                l[i * n + i] = 1.0 + (next() % 7) as f64 / 8.0;
            }
            if huge {
                for i in [5, 6, 40] {
                    l[i * n + i] = 1e-300;
                }
            }
            let want = pack_lower(&lower_inverse_ref(&l, n), n);
            if huge {
                assert!(want.iter().any(|v| v.is_infinite()) && want.iter().any(|v| v.is_nan()));
            }
            for kern in [Kernels::PORTABLE, Kernels::detect()] {
                let mut got = pack_lower(&l, n);
                lower_inverse_with(&mut got, n, block, kern);
                assert!(same_bits(&want, &got), "inverse n={n} block={block} huge={huge}");
            }
        }
    }

    /// The unblocked error feedback (one update of every later column per step), which the
    /// blocked `refine` must equal bit for bit: codes and loss.
    fn refine_unblocked(f: &Feedback, q: &mut QuantTensor, w: &[f64]) -> f64 {
        let n = f.n;
        let (perm, u) = (&f.perm, &f.u);
        let qmax = (1i32 << q.params.bits) - 1;
        let g = q.params.group_size as usize;
        let gpr = q.groups_per_row();
        let mut total = 0.0;
        for r in 0..q.rows {
            let mut loss = 0.0;
            let mut wp: Vec<f64> = perm.iter().map(|&p| w[r * n + p]).collect();
            for (a, &col) in perm.iter().enumerate() {
                let urow = &u[upper_offset(n, a)..upper_offset(n, a) + n - a];
                let gi = r * gpr + col / g;
                let (m, e) = step(q.scales[gi], q.base_exp);
                let z = q.zeros[gi] as i32;
                let x = wp[a];
                let code =
                    ((libm::ldexp(x, -e) / m as f64).round_ties_even() as i64 + z as i64).clamp(0, qmax as i64) as i32;
                q.codes[r * n + col] = code as u8;
                let err = (x - libm::ldexp((m as i64 * (code - z) as i64) as f64, e)) / urow[0];
                if err != 0.0 {
                    loss += err * err;
                    for (wv, &uv) in wp[a + 1..].iter_mut().zip(&urow[1..]) {
                        *wv -= err * uv;
                    }
                }
            }
            total += loss;
        }
        total
    }

    #[test]
    fn blocked_feedback_equals_the_unblocked_loop_bit_for_bit() {
        // Widths around the block (32) and tile (8) sizes, rows around the task (64) and
        // tile (4) sizes; weights partly on the grid (zero errors) and partly clamped.
        let mut rng = crate::test_rng::XorShift64(0x5eed_u64);
        let mut next = move || rng.next();
        for (rows, n, bits) in [(1, 1, 4), (3, 7, 2), (5, 33, 5), (67, 40, 4), (130, 71, 3), (9, 100, 8), (64, 64, 6)] {
            let mut h = spd(n, n as u64 + 7);
            for i in 0..n {
                h[i * n + i] += 0.25;
            }
            let f = Feedback::new(&h, n, Damp::GPTQ).unwrap();
            let params = QuantParams { bits, group_size: 16 };
            let gpr = n.div_ceil(16);
            let base_exp = -12;
            let scales: Vec<u8> = (0..rows * gpr).map(|_| (next() % 64) as u8).collect();
            let zeros: Vec<u8> = (0..rows * gpr).map(|_| (next() % (1 << bits)) as u8).collect();
            let w: Vec<f64> = (0..rows * n)
                .map(|i| {
                    let gi = (i / n) * gpr + (i % n) / 16;
                    let (m, e) = step(scales[gi], base_exp);
                    let v = next();
                    let code = (v % (1 << (bits + 1))) as i64 - zeros[gi] as i64;
                    let on_grid = libm::ldexp((m as i64 * code) as f64, e);
                    // Every third weight exactly on a grid point (possibly beyond the codes).
                    if v % 3 == 0 { on_grid } else { on_grid + libm::ldexp(((v >> 20) % 4096) as f64 - 2048.0, e - 9) }
                })
                .collect();
            let blank =
                QuantTensor { rows, cols: n, params, base_exp, codes: vec![0; rows * n], scales, zeros, overlay: None };
            let (mut want, mut got) = (blank.clone(), blank);
            let lw = refine_unblocked(&f, &mut want, &w);
            let lg = f.refine(&mut got, &w);
            assert_eq!(want.codes, got.codes, "codes rows={rows} n={n} bits={bits}");
            assert_eq!(lw.to_bits(), lg.to_bits(), "loss rows={rows} n={n} bits={bits}: {lw} vs {lg}");
            // The portable tail gives the same bits as the one this CPU selects.
            let mut wp: Vec<f64> = (0..rows * n).map(|i| w[i] * 0.5).collect();
            let errs: Vec<f64> = (0..rows * FEEDBACK_BLOCK).map(|i| (i % 5) as f64 - 2.0).collect();
            let bw = FEEDBACK_BLOCK.min(n);
            let uoff: Vec<usize> = (0..bw).map(|a| upper_offset(n, a) - a).collect();
            let mut wp2 = wp.clone();
            tail_portable(&mut wp, n, rows, &errs, &uoff, &f.u, bw);
            tail_kernel()(&mut wp2, n, rows, &errs, &uoff, &f.u, bw);
            assert!(wp.iter().zip(&wp2).all(|(a, b)| a.to_bits() == b.to_bits()), "tail variants n={n}");
        }
    }

    #[test]
    fn inverse_upper_factor_gives_the_inverse() {
        let n = 23;
        let h = spd(n, 3);
        let up = inverse_upper_factor(|i, j| h[i * n + j], 0.0, n).unwrap();
        let mut u = vec![0f64; n * n];
        for a in 0..n {
            for b in a..n {
                u[a * n + b] = up[upper_offset(n, a) + b - a];
            }
        }
        // U upper triangular, and H · UᵀU = I.
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let mut inv = 0.0;
                    for l in 0..n {
                        inv += u[l * n + k] * u[l * n + j];
                    }
                    s += h[i * n + k] * inv;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-8, "({i},{j}) {s}");
            }
        }
    }
}
