//! Low-rank overlay fit: a rank-r correction of the quantization residual.
//!
//! Host f64 under DESIGN §3 rule 6: only `+ - * / sqrt` and `round_ties_even`, each sum in
//! a fixed order (ascending index), no `mul_add` (Rust never contracts to FMA on its own),
//! parallel work split so each output element is computed by one task in that order. The
//! result is therefore identical on every machine, whatever the thread count or device.
//! The error is measured under a metric H over the input channels (DESIGN §4: minimise
//! ‖(R − UV)·L‖ with H = L Lᵀ): the identity when uncalibrated, diag(H) or the full Gram
//! matrix once calibration provides it.
//!
//! Method: alternating least squares from a fixed ±1 start, `rounds` rounds of
//! U = R (VH)ᵀ (V H Vᵀ + λI)⁻¹ and V = (UᵀU + λI)⁻¹ Uᵀ R (the V step does not depend on H);
//! then U is quantized (int8 rows with a 16-bit scale mantissa per row over one exponent),
//! V is refitted to the quantized U and quantized the same way per rank row. The overlay is
//! kept only if it lowers tr(E H Eᵀ), E the error, which for a low-rank correction needs
//! only r×R and r×r products: 2 tr(U·(VH)Rᵀ) > tr(UᵀU·V H Vᵀ).
//!
//! The matrix products (`product`) keep each element's sum exactly as the plain dot product
//! `s = 0.0; for j ascending { s += a_j * b_j }` computes it, but advance a register tile of
//! independent elements together so the work vectorises (an AVX2 build where the CPU has
//! it, same bits); the tests hold them to the plain dot products bit for bit.

use std::ops::Range;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};

use super::gram::SymPacked;
use crate::fixed::quant::{MAX_RANK, OVERLAY_EXP_RANGE, Overlay};

/// The metric H over the input channels (symmetric positive semi-definite).
#[derive(Debug, Clone, Copy)]
pub enum Metric<'a> {
    Identity,
    /// diag(H), one weight per input channel
    Diagonal(&'a [f64]),
    /// H, `[cols × cols]` row-major
    Full(&'a [f64]),
    /// H as its packed lower triangle: the same products as `Full` bit for bit
    /// (`packed_right_apply`) in half the memory (Llama-3.1-70B's down_proj: 3.3 GB
    /// instead of 6.6 GB).
    Packed(&'a SymPacked),
}

impl Metric<'_> {
    /// X·H for X `[n × cols]` (fixed order: ascending inner index).
    fn right_apply(&self, kern: Kernel, x: &[f64], n: usize, cols: usize) -> Vec<f64> {
        match self {
            Metric::Identity => x.to_vec(),
            Metric::Diagonal(h) => x.iter().enumerate().map(|(i, v)| v * h[i % cols]).collect(),
            // out_ij = Σ_l x_il h_lj, l ascending for every element (`product`).
            Metric::Full(h) => mul_wide(kern, x, cols, h, cols, n, cols, cols),
            Metric::Packed(h) => packed_right_apply(kern, h, x, n),
        }
    }
}

/// Which build of the product kernel runs: portable Rust, or AVX2 intrinsics (AVX2 alone,
/// never FMA) whose every lane performs the same IEEE multiply and add, in the same order,
/// as the portable build: the bits are identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest build this CPU runs (capped by `UCW_CPU_KERNELS`, `backend::cpu::isa`).
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if crate::backend::cpu::isa::allows(crate::backend::cpu::isa::Isa::Avx2) && is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }
}

/// One argument list for the product kernel: out[m×n] (row stride `ldo`) += A·B for A[m×l]
/// (row stride `lda`) and B[l×n] (row stride `ldb`).
#[derive(Clone, Copy)]
struct Dims {
    ldo: usize,
    lda: usize,
    ldb: usize,
    m: usize,
    n: usize,
    l: usize,
}

/// out_ik += a_i0 b_0k, then += a_i1 b_1k, … for l ascending, each step a separate
/// multiply and add: started from out = 0.0 this is exactly the scalar dot product
/// `s = 0.0; for l { s += a_il * b_lk }` of every element. Only which independent elements
/// advance together changes: a tile of MR×NR of them stays in registers while l runs (the
/// inner loop over the NR columns vectorises, and each loaded piece of a row of B serves MR
/// rows). Callers may split l into consecutive blocks: between calls the partial sums wait
/// in `out`, which changes nothing.
fn product(kern: Kernel, out: &mut [f64], a: &[f64], b: &[f64], d: Dims) {
    match kern {
        Kernel::Portable => product_body(out, a, b, d),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Kernel::Avx2` is only chosen (by `Kernel::detect`, or by the tests after
        // the same check) when the CPU has AVX2.
        Kernel::Avx2 => unsafe { avx2::product_body(out, a, b, d) },
    }
}

fn product_body(out: &mut [f64], a: &[f64], b: &[f64], d: Dims) {
    // Four rows at a time; the one to three rows left get wider tiles, so that about as
    // many sums are in flight.
    let m4 = d.m - d.m % 4;
    panels::<4, 4>(out, a, b, d, 0..m4);
    match d.m - m4 {
        3 => panels::<3, 4>(out, a, b, d, m4..d.m),
        2 => panels::<2, 8>(out, a, b, d, m4..d.m),
        1 => panels::<1, 16>(out, a, b, d, m4..d.m),
        _ => {}
    }
}

/// The rows `rows` (MR at a time) of out, all n columns: tiles NB wide, then 4, then 1.
/// Column panels outside, rows inside: a panel of B stays in L1 while the row groups pass.
#[inline(always)]
fn panels<const MR: usize, const NB: usize>(out: &mut [f64], a: &[f64], b: &[f64], d: Dims, rows: Range<usize>) {
    let mut run = |k: usize, f: fn(&mut [f64], &[f64], &[f64], Dims)| {
        for i in rows.clone().step_by(MR) {
            f(&mut out[i * d.ldo + k..], &a[i * d.lda..], &b[k..], d);
        }
    };
    let mut k = 0;
    while k + NB <= d.n {
        run(k, tile::<MR, NB>);
        k += NB;
    }
    while k + 4 <= d.n {
        run(k, tile::<MR, 4>);
        k += 4;
    }
    while k < d.n {
        run(k, tile::<MR, 1>);
        k += 1;
    }
}

/// out[i, k] for i < MR, k < NR (out, a, b start at the tile's first row and column).
#[inline(always)]
fn tile<const MR: usize, const NR: usize>(out: &mut [f64], a: &[f64], b: &[f64], d: Dims) {
    let mut acc = [[0.0f64; NR]; MR];
    for (i, row) in acc.iter_mut().enumerate() {
        row.copy_from_slice(&out[i * d.ldo..i * d.ldo + NR]);
    }
    let arows: [&[f64]; MR] = std::array::from_fn(|i| &a[i * d.lda..i * d.lda + d.l]);
    for l in 0..d.l {
        let bl: &[f64; NR] = b[l * d.ldb..l * d.ldb + NR].try_into().expect("tile row");
        for (row, ar) in acc.iter_mut().zip(&arows) {
            let av = ar[l];
            for (s, &bv) in row.iter_mut().zip(bl) {
                *s += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        out[i * d.ldo..i * d.ldo + NR].copy_from_slice(row);
    }
}

/// The AVX2 build of `product_body`: the same order of tiles, with each tile's columns held
/// as 4-lane vectors (`vmulpd` then `vaddpd`: per lane the IEEE multiply and add of the
/// scalar code, two roundings; FMA is not enabled). Columns left after the last full vector
/// take the portable scalar tile.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Dims, tile};
    use std::arch::x86_64::*;
    use std::ops::Range;

    #[target_feature(enable = "avx2")]
    pub(super) fn product_body(out: &mut [f64], a: &[f64], b: &[f64], d: Dims) {
        let m4 = d.m - d.m % 4;
        panels::<4, 2>(out, a, b, d, 0..m4);
        match d.m - m4 {
            3 => panels::<3, 2>(out, a, b, d, m4..d.m),
            2 => panels::<2, 4>(out, a, b, d, m4..d.m),
            1 => panels::<1, 8>(out, a, b, d, m4..d.m),
            _ => {}
        }
    }

    /// `super::panels` with tiles of NV vectors, then of one, then scalar columns.
    #[target_feature(enable = "avx2")]
    fn panels<const MR: usize, const NV: usize>(out: &mut [f64], a: &[f64], b: &[f64], d: Dims, rows: Range<usize>) {
        let mut k = 0;
        while k + 4 * NV <= d.n {
            for i in rows.clone().step_by(MR) {
                vtile::<MR, NV>(&mut out[i * d.ldo + k..], &a[i * d.lda..], &b[k..], d);
            }
            k += 4 * NV;
        }
        while k + 4 <= d.n {
            for i in rows.clone().step_by(MR) {
                vtile::<MR, 1>(&mut out[i * d.ldo + k..], &a[i * d.lda..], &b[k..], d);
            }
            k += 4;
        }
        while k < d.n {
            for i in rows.clone().step_by(MR) {
                tile::<MR, 1>(&mut out[i * d.ldo + k..], &a[i * d.lda..], &b[k..], d);
            }
            k += 1;
        }
    }

    /// `super::tile` with NR = 4·NV columns as vectors.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn vtile<const MR: usize, const NV: usize>(out: &mut [f64], a: &[f64], b: &[f64], d: Dims) {
        if d.l == 0 {
            return;
        }
        // Every access below is within these bounds.
        assert!((MR - 1) * d.ldo + 4 * NV <= out.len(), "product tile: out");
        assert!((MR - 1) * d.lda + d.l <= a.len(), "product tile: a");
        assert!((d.l - 1) * d.ldb + 4 * NV <= b.len(), "product tile: b");
        let (op, ap, bp) = (out.as_mut_ptr(), a.as_ptr(), b.as_ptr());
        // SAFETY: the offsets are those `super::tile` indexes, in bounds by the asserts above.
        unsafe {
            let mut acc = [[_mm256_setzero_pd(); NV]; MR];
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, s) in row.iter_mut().enumerate() {
                    *s = _mm256_loadu_pd(op.add(i * d.ldo + 4 * v));
                }
            }
            let mut bv = [_mm256_setzero_pd(); NV];
            for l in 0..d.l {
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_pd(bp.add(l * d.ldb + 4 * v));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_pd(*ap.add(i * d.lda + l));
                    for (s, &x) in row.iter_mut().zip(&bv) {
                        *s = _mm256_add_pd(*s, _mm256_mul_pd(av, x));
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (v, &s) in row.iter().enumerate() {
                    _mm256_storeu_pd(op.add(i * d.ldo + 4 * v), s);
                }
            }
        }
    }
}

/// A hint to bring `x` towards the cache before it is read (no effect on any result).
#[inline(always)]
fn prefetch(x: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(8) {
        // SAFETY: a prefetch only hints the cache; the address is that of a live slice.
        unsafe { _mm_prefetch::<{ _MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Rows per parallel task (fixed partition).
const ROWS_PER_TASK: usize = 32;

/// Y[R×r] = A[R×C] · Bᵀ, B[r×C]: Y_ik = Σ_j A_ij B_kj, j ascending (from 0.0, one multiply
/// and one add per step). Bᵀ is laid out once, its columns padded to a multiple of 4 with
/// zeros (whose sums are dropped), so that each step of j updates a row of independent sums.
/// Rows of Y in parallel; within a task j runs in blocks of KC_ABT, for which the rows of A
/// pass four at a time (each piece of A is read from memory once and stays in L1 while the
/// tiles cross Bᵀ's block, which stays in L2).
fn mul_abt(kern: Kernel, a: &[f64], b: &[f64], rows: usize, cols: usize, r: usize) -> Vec<f64> {
    const KC_ABT: usize = 512;
    let rp = r.next_multiple_of(4);
    let mut bt = vec![0.0; cols * rp];
    for k in 0..r {
        for (j, &v) in b[k * cols..(k + 1) * cols].iter().enumerate() {
            bt[j * rp + k] = v;
        }
    }
    let mut y = vec![0.0; rows * rp];
    y.par_chunks_mut(ROWS_PER_TASK * rp).enumerate().for_each(|(t, chunk)| {
        let m = chunk.len() / rp;
        let a = &a[t * ROWS_PER_TASK * cols..];
        for l0 in (0..cols).step_by(KC_ABT) {
            let lc = KC_ABT.min(cols - l0);
            for i in (0..m).step_by(4) {
                let d = Dims { ldo: rp, lda: cols, ldb: rp, m: (m - i).min(4), n: rp, l: lc };
                product(kern, &mut chunk[i * rp..], &a[i * cols + l0..], &bt[l0 * rp..], d);
            }
        }
    });
    if rp == r {
        return y;
    }
    y.chunks(rp).flat_map(|row| &row[..r]).copied().collect()
}

/// out[m×n] = A[m×l] · B[l×n] (row strides `lda`, `ldb`) for small m and large n:
/// out_ij = Σ_t A_it B_tj, t ascending (from 0.0). Split by blocks of columns. Each task
/// copies its block of A and B, KC_WIDE inner indices at a time, into contiguous buffers (B
/// by panels of 8 columns) before the product: B's rows are far apart (often a power-of-two
/// stride, whose lines share a few cache sets), and each panel line serves every row group.
#[allow(clippy::too_many_arguments)]
fn mul_wide(kern: Kernel, a: &[f64], lda: usize, b: &[f64], ldb: usize, m: usize, n: usize, l: usize) -> Vec<f64> {
    const COLS_PER_TASK: usize = 256;
    const PANEL: usize = 8;
    const KC_WIDE: usize = 16;
    let blocks: Vec<Vec<f64>> = (0..n.div_ceil(COLS_PER_TASK))
        .into_par_iter()
        .map(|bi| {
            let (j0, j1) = (bi * COLS_PER_TASK, ((bi + 1) * COLS_PER_TASK).min(n));
            let w = j1 - j0;
            let mut z = vec![0.0; m * w];
            let mut apack = vec![0.0; m * KC_WIDE];
            let mut bpack = vec![0.0; KC_WIDE * w];
            for l0 in (0..l).step_by(KC_WIDE) {
                let lc = KC_WIDE.min(l - l0);
                for i in 0..m {
                    apack[i * lc..(i + 1) * lc].copy_from_slice(&a[i * lda + l0..i * lda + l0 + lc]);
                }
                for k in (0..w).step_by(PANEL) {
                    let pw = PANEL.min(w - k);
                    let panel = &mut bpack[k * lc..(k + pw) * lc];
                    for (t, prow) in panel.chunks_exact_mut(pw).enumerate() {
                        let src = (l0 + t) * ldb + j0 + k;
                        prow.copy_from_slice(&b[src..src + pw]);
                        if l0 + KC_WIDE + t < l {
                            prefetch(&b[src + KC_WIDE * ldb..][..pw]);
                        }
                    }
                    let d = Dims { ldo: w, lda: lc, ldb: pw, m, n: pw, l: lc };
                    product(kern, &mut z[k..], &apack, panel, d);
                }
            }
            z
        })
        .collect();
    join_column_blocks(&blocks, m, n, COLS_PER_TASK)
}

/// The `[m × n]` row-major matrix whose columns `b·block..` are `blocks[b]` (`[m × w]`
/// row-major each): the per-task column blocks of a product put back together.
fn join_column_blocks(blocks: &[Vec<f64>], m: usize, n: usize, block: usize) -> Vec<f64> {
    let mut z = vec![0.0; m * n];
    for (bi, part) in blocks.iter().enumerate() {
        let j0 = bi * block;
        let w = part.len() / m.max(1);
        for k in 0..m {
            z[k * n + j0..k * n + j0 + w].copy_from_slice(&part[k * w..(k + 1) * w]);
        }
    }
    z
}

/// X·H for X `[r × n]` row-major, each output element summed over ascending l from
/// +0.0 exactly as the row-major loop `out_ij += x_il · h_lj` (l = 0, 1, …) does, so the
/// result is bit for bit that of H made full
/// (`tests::packed_right_apply_equals_the_full_product_bit_for_bit`), without the 8·n²
/// bytes of the full matrix. One task per block of `BLOCK` output columns; it gathers H's
/// rows l0..l0 + `ROWS` over its columns from the packed triangle (H_lj is column min(l, j)
/// at |l − j|: a contiguous run when the rows lie above the block, one per column below)
/// into a dense panel and adds X's columns l0.. times the panel with `product`, whose
/// split of l into consecutive runs changes nothing. The panel (128 KiB) stays in cache;
/// the earlier form read X's transpose once per output column (n·r·8 bytes each, 7 MB for
/// a 70B down_proj at rank 32, from memory) and was bound by it.
fn packed_right_apply(kern: Kernel, h: &SymPacked, x: &[f64], r: usize) -> Vec<f64> {
    const BLOCK: usize = 128;
    const ROWS: usize = 128;
    let n = h.n;
    assert_eq!(x.len(), r * n, "right_apply: X is not r × n");
    let blocks: Vec<Vec<f64>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
            let w = j1 - j0;
            let offs: Vec<usize> = (j0..j1).map(|j| h.offset(j)).collect();
            let mut acc = vec![0f64; r * w]; // acc[i·w + j − j0]
            let mut panel = vec![0f64; ROWS * w]; // panel[(l − l0)·w + j − j0] = H_lj
            for l0 in (0..n).step_by(ROWS) {
                let l1 = (l0 + ROWS).min(n);
                for l in l0..l1 {
                    let row = &mut panel[(l - l0) * w..(l - l0 + 1) * w];
                    // Column l of the triangle: row l of H beyond its diagonal.
                    let cl = h.offset(l);
                    if l < j0 {
                        row.copy_from_slice(&h.data[cl + j0 - l..cl + j1 - l]);
                    } else {
                        for (j, (v, &c)) in (j0..j1).zip(row.iter_mut().zip(&offs)) {
                            *v = if l >= j { h.data[c + l - j] } else { h.data[cl + j - l] };
                        }
                    }
                }
                let d = Dims { ldo: w, lda: n, ldb: w, m: r, n: w, l: l1 - l0 };
                product(kern, &mut acc, &x[l0..], &panel, d);
            }
            acc
        })
        .collect();
    join_column_blocks(&blocks, r, n, BLOCK)
}

/// Z[r×C] = Uᵀ[r×R] · A[R×C]: Z_kj = Σ_i U_ik A_ij, i ascending.
fn mul_uta(kern: Kernel, u: &[f64], a: &[f64], rows: usize, cols: usize, r: usize) -> Vec<f64> {
    mul_wide(kern, &transpose(u, rows, r), rows, a, cols, r, cols, rows)
}

/// G[r×r] = X Xᵀ for X[r×n] (rows of X as vectors): G_kl = Σ_j X_kj X_lj, j ascending, for
/// k ≥ l (the product as written for the lower triangle), mirrored to the upper.
fn gram_rows(kern: Kernel, x: &[f64], r: usize, n: usize) -> Vec<f64> {
    let mut g = mul_abt(kern, x, x, r, n, r);
    for k in 0..r {
        for l in 0..k {
            g[l * r + k] = g[k * r + l];
        }
    }
    g
}

/// G[r×r] = XᵀX for X[n×r] (columns of X as vectors): the same sums, in the same order,
/// as `gram_rows` of the transpose.
fn gram_cols(kern: Kernel, x: &[f64], r: usize, n: usize) -> Vec<f64> {
    gram_rows(kern, &transpose(x, n, r), r, n)
}

/// Cholesky factor L (lower) of G + λI with λ = 1e-10 · (trace / r + tiny); None if not SPD.
fn cholesky(g: &[f64], r: usize) -> Option<Vec<f64>> {
    let mut trace = 0.0;
    for k in 0..r {
        trace += g[k * r + k];
    }
    let lambda = 1e-10 * (trace / r as f64) + 1e-300;
    let mut l = vec![0.0; r * r];
    for i in 0..r {
        for j in 0..=i {
            let mut s = g[i * r + j] + if i == j { lambda } else { 0.0 };
            for k in 0..j {
                s -= l[i * r + k] * l[j * r + k];
            }
            if i == j {
                // Not positive (or NaN): not positive definite.
                if s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    return None;
                }
                l[i * r + i] = s.sqrt();
            } else {
                l[i * r + j] = s / l[j * r + j];
            }
        }
    }
    Some(l)
}

/// Solve (L Lᵀ) x = b in place.
fn chol_solve(l: &[f64], r: usize, b: &mut [f64]) {
    for i in 0..r {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * r + k] * b[k];
        }
        b[i] = s / l[i * r + i];
    }
    for i in (0..r).rev() {
        let mut s = b[i];
        for k in i + 1..r {
            s -= l[k * r + i] * b[k];
        }
        b[i] = s / l[i * r + i];
    }
}

/// Exponent e with |x| / 2^e <= 65535 for the largest |x|: frexp of max/65535.
fn scale_exponent(max: f64) -> i32 {
    libm::frexp(max / 65535.0).1
}

/// Quantize rows of X[n×r] (row-major, `n` rows of length `w`) to int8 with a 16-bit
/// mantissa per row over one exponent. Returns (q, mantissas, exponent, dequantized).
fn quantize_rows(x: &[f64], n: usize, w: usize) -> (Vec<i8>, Vec<u16>, i32, Vec<f64>) {
    let row_max: Vec<f64> = (0..n).map(|i| x[i * w..(i + 1) * w].iter().fold(0.0f64, |m, v| m.max(v.abs()))).collect();
    let scale_max = row_max.iter().fold(0.0f64, |m, &v| m.max(v)) / 127.0;
    let e = if scale_max > 0.0 { scale_exponent(scale_max) } else { 0 };
    let unit = libm::ldexp(1.0, e);
    let mut q = vec![0i8; n * w];
    let mut mant = vec![0u16; n];
    let mut deq = vec![0.0; n * w];
    for i in 0..n {
        let m = (row_max[i] / 127.0 / unit).round_ties_even().clamp(0.0, 65535.0);
        mant[i] = m as u16;
        if m == 0.0 {
            continue;
        }
        let s = m * unit;
        for j in 0..w {
            let v = (x[i * w + j] / s).round_ties_even().clamp(-127.0, 127.0);
            q[i * w + j] = v as i8;
            deq[i * w + j] = v * s;
        }
    }
    (q, mant, e, deq)
}

/// Fit a rank-`r` overlay to `residual` ([rows×cols], exact f64). Returns None when the
/// fit does not lower the squared error or its exponent cannot meet the exactness bound.
pub fn fit(
    residual: &[f64],
    rows: usize,
    cols: usize,
    r: usize,
    base_exp: i32,
    rounds: usize,
    metric: Metric,
) -> Option<Overlay> {
    fit_scored(residual, rows, cols, r, base_exp, rounds, metric).map(|(o, _)| o)
}

/// `fit`, also returning how much the overlay lowers tr(E H Eᵀ) (positive when kept).
#[allow(clippy::too_many_arguments)]
pub fn fit_scored(
    residual: &[f64],
    rows: usize,
    cols: usize,
    r: usize,
    base_exp: i32,
    rounds: usize,
    metric: Metric,
) -> Option<(Overlay, f64)> {
    fit_scored_with(Kernel::detect(), residual, rows, cols, r, base_exp, rounds, metric)
}

/// `fit_scored` with the product kernel build chosen by the caller (the tests run each).
#[allow(clippy::too_many_arguments)]
fn fit_scored_with(
    kern: Kernel,
    residual: &[f64],
    rows: usize,
    cols: usize,
    r: usize,
    base_exp: i32,
    rounds: usize,
    metric: Metric,
) -> Option<(Overlay, f64)> {
    if r == 0 || rows == 0 || cols == 0 {
        return None;
    }
    let bad_len = match metric {
        Metric::Identity => false,
        Metric::Diagonal(h) => h.len() != cols,
        Metric::Full(h) => h.len() != cols * cols,
        Metric::Packed(h) => h.n != cols,
    };
    if bad_len {
        return None;
    }
    // Fixed ±1 start (xorshift, constant seed): the same for every tensor and machine.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut v: Vec<f64> = (0..r * cols)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state >> 63 == 1 { 1.0 } else { -1.0 }
        })
        .collect();
    let mut u = vec![0.0; rows * r];
    let solve_rows = |g: &[f64], x: &mut [f64]| -> Option<()> {
        let l = cholesky(g, r)?;
        for row in x.chunks_mut(r) {
            chol_solve(&l, r, row);
        }
        Some(())
    };
    // Z[r×C] → V: each column of Z solved against G.
    let solve_cols = |g: &[f64], z: &[f64]| -> Option<Vec<f64>> {
        let l = cholesky(g, r)?;
        let mut v = vec![0.0; r * cols];
        let mut col = vec![0.0; r];
        for j in 0..cols {
            for k in 0..r {
                col[k] = z[k * cols + j];
            }
            chol_solve(&l, r, &mut col);
            for k in 0..r {
                v[k * cols + j] = col[k];
            }
        }
        Some(v)
    };
    for _ in 0..rounds {
        let vh = metric.right_apply(kern, &v, r, cols);
        u = mul_abt(kern, residual, &vh, rows, cols, r);
        solve_rows(&mul_abt(kern, &v, &vh, r, cols, r), &mut u)?;
        v = solve_cols(&gram_cols(kern, &u, r, rows), &mul_uta(kern, &u, residual, rows, cols, r))?;
    }
    // Quantize U, refit V to the quantized U, quantize V.
    let (uq, mu, eu, udeq) = quantize_rows(&u, rows, r);
    let v = solve_cols(&gram_cols(kern, &udeq, r, rows), &mul_uta(kern, &udeq, residual, rows, cols, r))?;
    let (vq, mv, ev, vdeq) = quantize_rows(&v, r, cols);
    let exp = eu + ev;
    if !OVERLAY_EXP_RANGE.contains(&(exp - base_exp)) {
        return None;
    }
    // Keep the overlay only if it lowers tr(E H Eᵀ): 2 tr(U (VH)Rᵀ) > tr(UᵀU · V H Vᵀ).
    // R (VH)ᵀ [rows × r]: (R (VH)ᵀ)_ik = Σ_j R_ij (VH)_kj, the same sum as (VH) Rᵀ's element
    // ki with each product's factors swapped, which changes no bit of a product (at most a
    // NaN's payload, and a NaN gain refuses the overlay either way).
    let vh = metric.right_apply(kern, &vdeq, r, cols);
    let rvh = mul_abt(kern, residual, &vh, rows, cols, r);
    let mut gain = 0.0;
    for i in 0..rows {
        for k in 0..r {
            gain += udeq[i * r + k] * rvh[i * r + k];
        }
    }
    let uu = gram_cols(kern, &udeq, r, rows);
    let vhv = mul_abt(kern, &vdeq, &vh, r, cols, r);
    let mut cost = 0.0;
    for k in 0..r * r {
        cost += uu[k] * vhv[k];
    }
    (2.0 * gain > cost).then_some((Overlay { rank: r, exp, u: uq, mu, v: vq, mv }, 2.0 * gain - cost))
}

fn transpose(x: &[f64], n: usize, m: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            t[j * n + i] = x[i * m + j];
        }
    }
    t
}

/// Stored bytes of a rank-r overlay on a [rows×cols] linear: U and V as int8, one u16
/// mantissa per row of U and per rank.
pub fn overlay_bytes(rows: usize, cols: usize, r: usize) -> u64 {
    if r == 0 { 0 } else { (rows * r + r * cols + 2 * rows + 2 * r) as u64 }
}

/// One quantized linear of a layer, as the rank allocator sees it.
pub struct LayerItem<'a> {
    pub residual: &'a [f64],
    pub rows: usize,
    pub cols: usize,
    pub base_exp: i32,
    /// This linear's error metric (its input's statistic, at its true scale, so gains of
    /// linears with different inputs compare as output error).
    pub metric: Metric<'a>,
}

/// Spend `budget_bits` of overlay storage over a layer's linears where it lowers the
/// (H-weighted) error most: greedily raise by one the rank of the linear whose next rank
/// buys the largest error reduction per stored bit, while the cost fits the budget; ties go
/// to the earlier linear. Deterministic (fixed-order f64, fixed tie-break).
pub fn allocate_layer(items: &[LayerItem], budget_bits: i128, rounds: usize) -> Vec<Option<Overlay>> {
    let n = items.len();
    let bits_at = |t: usize, k: usize| 8 * overlay_bytes(items[t].rows, items[t].cols, k) as i128;
    let mut rank = vec![0usize; n];
    let mut chosen: Vec<Option<(Overlay, f64)>> = (0..n).map(|_| None).collect();
    let mut next: Vec<Option<Option<(Overlay, f64)>>> = (0..n).map(|_| None).collect();
    let mut remaining = budget_bits;
    loop {
        let mut best: Option<(f64, usize)> = None;
        for t in 0..n {
            let k = rank[t] + 1;
            if k > MAX_RANK || k > items[t].rows.min(items[t].cols) {
                continue;
            }
            let dcost = bits_at(t, k) - bits_at(t, rank[t]);
            if dcost > remaining {
                continue;
            }
            let it = &items[t];
            let cand = next[t]
                .get_or_insert_with(|| fit_scored(it.residual, it.rows, it.cols, k, it.base_exp, rounds, it.metric));
            let gain = cand.as_ref().map_or(0.0, |c| c.1) - chosen[t].as_ref().map_or(0.0, |c| c.1);
            let ratio = gain / dcost as f64;
            if ratio > 0.0 && best.is_none_or(|(b, _)| ratio > b) {
                best = Some((ratio, t));
            }
        }
        let Some((_, t)) = best else { break };
        remaining -= bits_at(t, rank[t] + 1) - bits_at(t, rank[t]);
        rank[t] += 1;
        chosen[t] = next[t].take().expect("candidate fitted above");
    }
    chosen.into_iter().map(|c| c.map(|(o, _)| o)).collect()
}

#[cfg(test)]
mod tests {
    //! The products above against the plain scalar dot products they replaced (kept here
    //! verbatim as references), bit for bit, on every kernel build this CPU runs; and the
    //! whole fit against the previous `fit_scored` built on those references.

    use super::*;

    fn kernels() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut k = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            k.push(Kernel::Avx2);
        }
        k
    }

    // ---- references: the implementations before the tiled product, unchanged ----

    fn right_apply_reference(metric: &Metric, x: &[f64], n: usize, cols: usize) -> Vec<f64> {
        match metric {
            Metric::Identity => x.to_vec(),
            Metric::Diagonal(h) => x.iter().enumerate().map(|(i, v)| v * h[i % cols]).collect(),
            Metric::Full(h) => {
                let mut out = vec![0.0; n * cols];
                out.par_chunks_mut(cols).enumerate().for_each(|(i, orow)| {
                    for l in 0..cols {
                        let xv = x[i * cols + l];
                        for (o, &hv) in orow.iter_mut().zip(&h[l * cols..(l + 1) * cols]) {
                            *o += xv * hv;
                        }
                    }
                });
                out
            }
            Metric::Packed(_) => unreachable!("the reference takes H full"),
        }
    }

    fn mul_abt_reference(a: &[f64], b: &[f64], rows: usize, cols: usize, r: usize) -> Vec<f64> {
        let mut y = vec![0.0; rows * r];
        y.par_chunks_mut(ROWS_PER_TASK * r).enumerate().for_each(|(t, chunk)| {
            for (li, yrow) in chunk.chunks_mut(r).enumerate() {
                let arow = &a[(t * ROWS_PER_TASK + li) * cols..][..cols];
                for (k, yk) in yrow.iter_mut().enumerate() {
                    let brow = &b[k * cols..][..cols];
                    let mut s = 0.0;
                    for j in 0..cols {
                        s += arow[j] * brow[j];
                    }
                    *yk = s;
                }
            }
        });
        y
    }

    fn mul_uta_reference(u: &[f64], a: &[f64], rows: usize, cols: usize, r: usize) -> Vec<f64> {
        const COLS_PER_TASK: usize = 64;
        let blocks: Vec<Vec<f64>> = (0..cols.div_ceil(COLS_PER_TASK))
            .into_par_iter()
            .map(|b| {
                let (j0, j1) = (b * COLS_PER_TASK, ((b + 1) * COLS_PER_TASK).min(cols));
                let mut z = vec![0.0; r * (j1 - j0)];
                for i in 0..rows {
                    let arow = &a[i * cols + j0..i * cols + j1];
                    for k in 0..r {
                        let uik = u[i * r + k];
                        let zk = &mut z[k * (j1 - j0)..(k + 1) * (j1 - j0)];
                        for (zz, &x) in zk.iter_mut().zip(arow) {
                            *zz += uik * x;
                        }
                    }
                }
                z
            })
            .collect();
        let mut z = vec![0.0; r * cols];
        for (b, block) in blocks.iter().enumerate() {
            let j0 = b * COLS_PER_TASK;
            let w = block.len() / r.max(1);
            for k in 0..r {
                z[k * cols + j0..k * cols + j0 + w].copy_from_slice(&block[k * w..(k + 1) * w]);
            }
        }
        z
    }

    fn gram_rows_reference(x: &[f64], r: usize, n: usize) -> Vec<f64> {
        let mut g = vec![0.0; r * r];
        for k in 0..r {
            for l in 0..=k {
                let mut s = 0.0;
                for j in 0..n {
                    s += x[k * n + j] * x[l * n + j];
                }
                g[k * r + l] = s;
                g[l * r + k] = s;
            }
        }
        g
    }

    fn gram_cols_reference(x: &[f64], r: usize, n: usize) -> Vec<f64> {
        gram_rows_reference(&transpose(x, n, r), r, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn fit_scored_reference(
        residual: &[f64],
        rows: usize,
        cols: usize,
        r: usize,
        base_exp: i32,
        rounds: usize,
        metric: Metric,
    ) -> Option<(Overlay, f64)> {
        if r == 0 || rows == 0 || cols == 0 {
            return None;
        }
        let bad_len = match metric {
            Metric::Identity => false,
            Metric::Diagonal(h) => h.len() != cols,
            Metric::Full(h) => h.len() != cols * cols,
            Metric::Packed(_) => unreachable!("the reference takes H full"),
        };
        if bad_len {
            return None;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut v: Vec<f64> = (0..r * cols)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state >> 63 == 1 { 1.0 } else { -1.0 }
            })
            .collect();
        let mut u = vec![0.0; rows * r];
        let solve_rows = |g: &[f64], x: &mut [f64]| -> Option<()> {
            let l = cholesky(g, r)?;
            for row in x.chunks_mut(r) {
                chol_solve(&l, r, row);
            }
            Some(())
        };
        let solve_cols = |g: &[f64], z: &[f64]| -> Option<Vec<f64>> {
            let l = cholesky(g, r)?;
            let mut v = vec![0.0; r * cols];
            let mut col = vec![0.0; r];
            for j in 0..cols {
                for k in 0..r {
                    col[k] = z[k * cols + j];
                }
                chol_solve(&l, r, &mut col);
                for k in 0..r {
                    v[k * cols + j] = col[k];
                }
            }
            Some(v)
        };
        for _ in 0..rounds {
            let vh = right_apply_reference(&metric, &v, r, cols);
            u = mul_abt_reference(residual, &vh, rows, cols, r);
            solve_rows(&mul_abt_reference(&v, &vh, r, cols, r), &mut u)?;
            v = solve_cols(&gram_cols_reference(&u, r, rows), &mul_uta_reference(&u, residual, rows, cols, r))?;
        }
        let (uq, mu, eu, udeq) = quantize_rows(&u, rows, r);
        let v = solve_cols(&gram_cols_reference(&udeq, r, rows), &mul_uta_reference(&udeq, residual, rows, cols, r))?;
        let (vq, mv, ev, vdeq) = quantize_rows(&v, r, cols);
        let exp = eu + ev;
        if !OVERLAY_EXP_RANGE.contains(&(exp - base_exp)) {
            return None;
        }
        let vh = right_apply_reference(&metric, &vdeq, r, cols);
        let vhr = mul_abt_reference(&vh, residual, r, cols, rows);
        let mut gain = 0.0;
        for i in 0..rows {
            for k in 0..r {
                gain += udeq[i * r + k] * vhr[k * rows + i];
            }
        }
        let uu = gram_cols_reference(&udeq, r, rows);
        let vhv = mul_abt_reference(&vdeq, &vh, r, cols, r);
        let mut cost = 0.0;
        for k in 0..r * r {
            cost += uu[k] * vhv[k];
        }
        (2.0 * gain > cost).then_some((Overlay { rank: r, exp, u: uq, mu, v: vq, mv }, 2.0 * gain - cost))
    }

    // ---- inputs ----

    use crate::test_rng::SplitMix64 as Rng;

    impl Rng {
        /// In [-1, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
        /// Awkward values: zeros, -0.0, tiny (products underflow into subnormals or to zero),
        /// huge (no overflow in the sums), and ordinary values over many binades.
        fn awkward(&mut self) -> f64 {
            let x = self.unit();
            match self.next() % 20 {
                0 | 1 => 0.0,
                2 => -0.0,
                3 => x * 1e-160,
                4 => x * 1e-310,
                5 => x * 1e100,
                _ => x * libm::ldexp(1.0, (self.next() % 41) as i32 - 20),
            }
        }
        fn vec(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.awkward()).collect()
        }
    }

    fn assert_bits(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {i}: {g:e} vs reference {w:e}");
        }
    }

    #[test]
    fn mul_abt_matches_reference_bits() {
        let mut rng = Rng(1);
        for rows in [1, 3, 4, 5, 33, 37, 70] {
            for cols in [1, 2, 7, 255, 256, 257, 600] {
                for r in [1, 2, 3, 4, 5, 8, 9, 17, 33, 64] {
                    let a = rng.vec(rows * cols);
                    let mut b = rng.vec(r * cols);
                    // A rank row of -0.0 products only: 0.0 + (-0.0) must stay +0.0.
                    b[..cols].fill(-0.0);
                    let want = mul_abt_reference(&a, &b, rows, cols, r);
                    for kern in kernels() {
                        let got = mul_abt(kern, &a, &b, rows, cols, r);
                        assert_bits(&got, &want, &format!("mul_abt {kern:?} {rows}x{cols} r {r}"));
                    }
                }
            }
        }
    }

    #[test]
    fn mul_uta_matches_reference_bits() {
        let mut rng = Rng(2);
        for rows in [1, 2, 7, 255, 257, 520] {
            for cols in [1, 3, 8, 63, 64, 65, 130, 200] {
                for r in [1, 2, 3, 4, 5, 8, 17, 64] {
                    let u = rng.vec(rows * r);
                    let a = rng.vec(rows * cols);
                    let want = mul_uta_reference(&u, &a, rows, cols, r);
                    for kern in kernels() {
                        let got = mul_uta(kern, &u, &a, rows, cols, r);
                        assert_bits(&got, &want, &format!("mul_uta {kern:?} {rows}x{cols} r {r}"));
                    }
                }
            }
        }
    }

    #[test]
    fn right_apply_matches_reference_bits() {
        let mut rng = Rng(3);
        for n in [1, 2, 3, 4, 5, 9, 17, 64] {
            for cols in [1, 2, 5, 63, 64, 65, 257, 300] {
                let x = rng.vec(n * cols);
                let h = rng.vec(cols * cols);
                for (name, metric) in
                    [("I", Metric::Identity), ("diag", Metric::Diagonal(&h[..cols])), ("H", Metric::Full(&h))]
                {
                    let want = right_apply_reference(&metric, &x, n, cols);
                    for kern in kernels() {
                        let got = metric.right_apply(kern, &x, n, cols);
                        assert_bits(&got, &want, &format!("right_apply {kern:?} {name} {n}x{cols}"));
                    }
                }
            }
        }
    }

    /// The previous `packed_right_apply` (one dot product per output column over X's
    /// transpose), kept as a second reference. X·H, each output element summed over ascending l from
    /// +0.0 exactly as the row-major loop `out_ij += x_il · h_lj` (l = 0, 1, …) does, so the
    /// result is bit for bit that of H made full (`tests::packed_right_apply_equals_the_full_product_bit_for_bit`), without the
    /// 8·n² bytes of the full matrix. The terms l < j of element j come from the packed
    /// columns l (row l of H beyond its diagonal: axpys, in ascending l), the terms l ≥ j
    /// from column j itself (a dot product with every row of X at once). One task per block
    /// of output columns; each element is computed by one task.
    fn packed_right_apply_unblocked(h: &SymPacked, x: &[f64], r: usize) -> Vec<f64> {
        const BLOCK: usize = 128;
        let n = h.n;
        assert_eq!(x.len(), r * n, "right_apply: X is not r × n");
        // Xᵀ [n × r]: the dot products run over l with all r rows side by side.
        let mut xt = vec![0f64; n * r];
        for i in 0..r {
            for l in 0..n {
                xt[l * r + i] = x[i * n + l];
            }
        }
        let blocks: Vec<Vec<f64>> = (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .map(|b| {
                let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
                let w = j1 - j0;
                let mut acc = vec![0f64; r * w]; // acc[i·w + j − j0]
                // l < j: H_lj = column l at j − l, for j in max(j0, l+1)..j1.
                for l in 0..j1 - 1 {
                    let js = j0.max(l + 1);
                    let c = h.offset(l);
                    let seg = &h.data[c + js - l..c + j1 - l];
                    for i in 0..r {
                        let xv = x[i * n + l];
                        for (o, &h) in acc[i * w + js - j0..(i + 1) * w].iter_mut().zip(seg) {
                            *o += xv * h;
                        }
                    }
                }
                // l ≥ j: H_lj = column j at l − j.
                let mut s = vec![0f64; r];
                for j in j0..j1 {
                    for i in 0..r {
                        s[i] = acc[i * w + j - j0];
                    }
                    let c = h.offset(j);
                    for (l, &h) in (j..n).zip(&h.data[c..c + n - j]) {
                        for (sv, &xv) in s.iter_mut().zip(&xt[l * r..(l + 1) * r]) {
                            *sv += xv * h;
                        }
                    }
                    for i in 0..r {
                        acc[i * w + j - j0] = s[i];
                    }
                }
                acc
            })
            .collect();
        join_column_blocks(&blocks, r, n, BLOCK)
    }

    #[test]
    fn packed_right_apply_equals_the_full_product_bit_for_bit() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for (n, r) in [(1, 1), (5, 3), (127, 2), (128, 1), (129, 4), (300, 17), (257, 32), (700, 5)] {
            let mut data = rng.vec(n * (n + 1) / 2);
            data[0] = -0.0;
            let p = SymPacked { n, data };
            let mut x = rng.vec(r * n);
            x[0] = 0.0;
            let full = p.to_full();
            let want = right_apply_reference(&Metric::Full(&full), &x, r, n);
            assert_bits(&packed_right_apply_unblocked(&p, &x, r), &want, &format!("unblocked n={n} r={r}"));
            for kern in kernels() {
                assert_bits(&packed_right_apply(kern, &p, &x, r), &want, &format!("packed {kern:?} n={n} r={r}"));
            }
        }
    }

    #[test]
    fn gram_matches_reference_bits() {
        let mut rng = Rng(4);
        for n in [1, 2, 7, 255, 257, 600] {
            for r in [1, 2, 3, 4, 5, 8, 17, 33, 64] {
                let x = rng.vec(n * r);
                for kern in kernels() {
                    let what = format!("{kern:?} n {n} r {r}");
                    assert_bits(
                        &gram_rows(kern, &x, r, n),
                        &gram_rows_reference(&x, r, n),
                        &format!("gram_rows {what}"),
                    );
                    assert_bits(
                        &gram_cols(kern, &x, r, n),
                        &gram_cols_reference(&x, r, n),
                        &format!("gram_cols {what}"),
                    );
                }
            }
        }
    }

    #[test]
    fn fit_matches_reference_bits() {
        let mut rng = Rng(5);
        let mut kept = 0;
        let mut cases = 0;
        for (rows, cols) in [(37, 1), (37, 29), (70, 300), (100, 65), (3, 257)] {
            // Low-rank structure plus noise (an ordinary residual), a few exact zeros.
            let rank = 5;
            let p: Vec<f64> = (0..rows * rank).map(|_| rng.unit()).collect();
            let q: Vec<f64> = (0..rank * cols).map(|_| rng.unit()).collect();
            let residual: Vec<f64> = (0..rows * cols)
                .map(|t| {
                    let (i, j) = (t / cols, t % cols);
                    let s: f64 = (0..rank).map(|k| p[i * rank + k] * q[k * cols + j]).sum();
                    if rng.next().is_multiple_of(50) { 0.0 } else { 1e-3 * (s + 0.1 * rng.unit()) }
                })
                .collect();
            let diag: Vec<f64> = (0..cols).map(|_| 0.5 + rng.unit().abs()).collect();
            // H = XᵀX / n for random X: symmetric positive (semi-)definite.
            let n = cols + 7;
            let x: Vec<f64> = (0..n * cols).map(|_| rng.unit()).collect();
            let mut full = vec![0.0; cols * cols];
            for a in 0..cols {
                for b in 0..cols {
                    let mut s = 0.0;
                    for t in 0..n {
                        s += x[t * cols + a] * x[t * cols + b];
                    }
                    full[a * cols + b] = s / n as f64;
                }
            }
            // The packed triangle of the same H (column-major lower), fitted through
            // `Metric::Packed`, must give the reference's full-matrix bits.
            let packed = SymPacked {
                n: cols,
                data: (0..cols).flat_map(|j| (j..cols).map(move |i| (i, j))).map(|(i, j)| full[i * cols + j]).collect(),
            };
            for (name, metric) in [
                ("I", Metric::Identity),
                ("diag", Metric::Diagonal(&diag)),
                ("H", Metric::Full(&full)),
                ("H packed", Metric::Packed(&packed)),
            ] {
                let reference_metric = match metric {
                    Metric::Packed(_) => Metric::Full(&full),
                    m => m,
                };
                for r in [1, 3, 8, 17] {
                    for rounds in [1, 4] {
                        let want = fit_scored_reference(&residual, rows, cols, r, -40, rounds, reference_metric);
                        for kern in kernels() {
                            let got = fit_scored_with(kern, &residual, rows, cols, r, -40, rounds, metric);
                            let what = format!("fit {kern:?} {name} {rows}x{cols} r {r} rounds {rounds}");
                            match (&got, &want) {
                                (None, None) => {}
                                (Some((go, gs)), Some((wo, ws))) => {
                                    assert_eq!(go, wo, "{what}: overlay");
                                    assert_eq!(gs.to_bits(), ws.to_bits(), "{what}: score {gs:e} vs {ws:e}");
                                }
                                _ => panic!("{what}: kept {} vs reference {}", got.is_some(), want.is_some()),
                            }
                        }
                        cases += 1;
                        kept += usize::from(want.is_some());
                    }
                }
            }
        }
        // The comparison must be about real overlays, not only refusals.
        assert!(kept * 2 > cases, "only {kept} of {cases} fits kept an overlay");
    }
}
