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

use rayon::prelude::*;

use super::quant::{OVERLAY_EXP_RANGE, Overlay};

/// The metric H over the input channels (symmetric positive semi-definite).
#[derive(Debug, Clone, Copy)]
pub enum Metric<'a> {
    Identity,
    /// diag(H), one weight per input channel
    Diagonal(&'a [f64]),
    /// H, `[cols × cols]` row-major
    Full(&'a [f64]),
}

impl Metric<'_> {
    /// X·H for X `[n × cols]` (fixed order: ascending inner index).
    fn right_apply(&self, x: &[f64], n: usize, cols: usize) -> Vec<f64> {
        match self {
            Metric::Identity => x.to_vec(),
            Metric::Diagonal(h) => x.iter().enumerate().map(|(i, v)| v * h[i % cols]).collect(),
            Metric::Full(h) => {
                // out_ij = Σ_l x_il h_lj, l ascending for every element: the loop over l is
                // outside so that each step updates a whole row of independent sums (which
                // vectorise) instead of one dot product at a time; the additions into each
                // element happen in the same order either way. Rows in parallel.
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
        }
    }
}

/// Rows per parallel task (fixed partition).
const ROWS_PER_TASK: usize = 32;

/// Y[R×r] = A[R×C] · Bᵀ, B[r×C]: Y_ik = Σ_j A_ij B_kj, j ascending.
fn mul_abt(a: &[f64], b: &[f64], rows: usize, cols: usize, r: usize) -> Vec<f64> {
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

/// Z[r×C] = Uᵀ[r×R] · A[R×C]: Z_kj = Σ_i U_ik A_ij, i ascending. Split by column blocks.
fn mul_uta(u: &[f64], a: &[f64], rows: usize, cols: usize, r: usize) -> Vec<f64> {
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

/// G[r×r] = X Xᵀ for X[r×n] (rows of X as vectors).
fn gram_rows(x: &[f64], r: usize, n: usize) -> Vec<f64> {
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

/// G[r×r] = XᵀX for X[n×r] (columns of X as vectors): the same sums, in the same order,
/// as `gram_rows` of the transpose.
fn gram_cols(x: &[f64], r: usize, n: usize) -> Vec<f64> {
    gram_rows(&transpose(x, n, r), r, n)
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
    if r == 0 || rows == 0 || cols == 0 {
        return None;
    }
    let bad_len = match metric {
        Metric::Identity => false,
        Metric::Diagonal(h) => h.len() != cols,
        Metric::Full(h) => h.len() != cols * cols,
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
        let vh = metric.right_apply(&v, r, cols);
        u = mul_abt(residual, &vh, rows, cols, r);
        solve_rows(&mul_abt(&v, &vh, r, cols, r), &mut u)?;
        v = solve_cols(&gram_cols(&u, r, rows), &mul_uta(&u, residual, rows, cols, r))?;
    }
    // Quantize U, refit V to the quantized U, quantize V.
    let (uq, mu, eu, udeq) = quantize_rows(&u, rows, r);
    let v = solve_cols(&gram_cols(&udeq, r, rows), &mul_uta(&udeq, residual, rows, cols, r))?;
    let (vq, mv, ev, vdeq) = quantize_rows(&v, r, cols);
    let exp = eu + ev;
    if !OVERLAY_EXP_RANGE.contains(&(exp - base_exp)) {
        return None;
    }
    // Keep the overlay only if it lowers tr(E H Eᵀ): 2 tr(U (VH)Rᵀ) > tr(UᵀU · V H Vᵀ).
    let vh = metric.right_apply(&vdeq, r, cols);
    let vhr = mul_abt(&vh, residual, r, cols, rows); // [r × rows]
    let mut gain = 0.0;
    for i in 0..rows {
        for k in 0..r {
            gain += udeq[i * r + k] * vhr[k * rows + i];
        }
    }
    let uu = gram_cols(&udeq, r, rows);
    let vhv = mul_abt(&vdeq, &vh, r, cols, r);
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
            if k > super::quant::MAX_RANK || k > items[t].rows.min(items[t].cols) {
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
