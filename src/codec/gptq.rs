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

use super::quant::{QuantTensor, step};

/// Damping added to H's diagonal, as a fraction of its mean (the usual 1%).
const DAMP: f64 = 0.01;
/// Rows per parallel task (fixed partition).
const ROWS_PER_TASK: usize = 64;

/// Columns (Cholesky) or rows (inverse) per block: a block's updates reach each element
/// while its tile is in cache, instead of one pass over the whole matrix per column.
const BLOCK: usize = 64;

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

/// Cholesky factor L of a symmetric matrix given as its packed lower triangle (row-major,
/// row i at `row_offset(i)`), in place; false if not positive definite. Every element
/// (i, j) receives its updates a_ij −= l_ik·l_jk in ascending k and then its division (or
/// square root), exactly as the textbook right-looking algorithm: the blocking only changes
/// when, not in which order, each element is updated, so the bits are those of
/// `tests::cholesky_ref`. Working memory beyond the triangle: one panel, 8·BLOCK·n bytes.
fn cholesky_packed(l: &mut [f64], n: usize, block: usize) -> bool {
    let mut rows = packed_rows(l, n);
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + block).min(n);
        // Panel: columns k0..k1 are finished one by one; each step also updates the later
        // panel columns of every row below it.
        for k in k0..k1 {
            let d = rows[k][k];
            if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return false;
            }
            let d = d.sqrt();
            rows[k][k] = d;
            // l_jk of the later panel rows (the same division each row makes below).
            let col: Vec<f64> = (k + 1..k1).map(|j| rows[j][k] / d).collect();
            rows[k + 1..].par_iter_mut().with_min_len(64).enumerate().for_each(|(ii, row)| {
                let i = k + 1 + ii;
                row[k] /= d;
                let lik = row[k];
                // Panel columns j in k+1..k1 that row i has (j ≤ i).
                let jmax = (k1 - 1).min(i);
                for (r, &ljk) in row[k + 1..=jmax.max(k)].iter_mut().zip(&col) {
                    *r -= lik * ljk;
                }
            });
        }
        // Trailing matrix: columns j ≥ k1, rows i ≥ j, the block's k in ascending order.
        if k1 < n {
            let w = k1 - k0;
            let mut panel_t = vec![0f64; w * n]; // panel_t[k − k0][j] = l_jk
            for j in k1..n {
                for k in k0..k1 {
                    panel_t[(k - k0) * n + j] = rows[j][k];
                }
            }
            rows[k1..].par_iter_mut().enumerate().for_each(|(ii, row)| {
                let i = k1 + ii;
                for k in k0..k1 {
                    let lik = row[k];
                    let p = &panel_t[(k - k0) * n..(k - k0 + 1) * n];
                    for (r, &v) in row[k1..=i].iter_mut().zip(&p[k1..=i]) {
                        *r -= lik * v;
                    }
                }
            });
        }
        k0 = k1;
    }
    true
}

/// X = L⁻¹ in place for lower-triangular L, packed as in `cholesky_packed`: row i of X is
/// (e_i − Σ_{k<i} L_ik X_k) / L_ii, every element's sum over ascending k (terms with
/// L_ik = 0 skipped). Row i of X needs only row i of L and the finished rows k < i of X, so
/// it replaces row i of L. Rows go in blocks: the block's rows of L are copied out, the
/// contributions of all finished rows reach them in one pass that reads each finished row
/// once per task, then the block's rows are finished in order and written back. Working
/// memory beyond the triangle: 16·BLOCK·n bytes.
fn lower_inverse_packed(l: &mut [f64], n: usize, block: usize) {
    let mut i0 = 0;
    while i0 < n {
        let i1 = (i0 + block).min(n);
        let b = i1 - i0;
        // The block's rows of L (width i1; row i has columns 0..=i).
        let mut lrows = vec![0f64; b * i1];
        for i in i0..i1 {
            lrows[(i - i0) * i1..(i - i0) * i1 + i + 1].copy_from_slice(&l[row_offset(i)..row_offset(i) + i + 1]);
        }
        let mut rows = vec![0f64; b * i1];
        for i in i0..i1 {
            rows[(i - i0) * i1 + i] = 1.0;
        }
        // Finished rows k < i0, ascending, into every row of the block (rows in parallel
        // groups; inside a group k is the outer loop so X_k is read once per group).
        let xs = &l[..row_offset(i0)];
        let lr = &lrows;
        rows.par_chunks_mut(i1 * 8).enumerate().for_each(|(g, grp)| {
            let first = g * 8;
            for k in 0..i0 {
                let xk = &xs[row_offset(k)..row_offset(k) + k + 1];
                for (r, row) in grp.chunks_mut(i1).enumerate() {
                    let lik = lr[(first + r) * i1 + k];
                    if lik != 0.0 {
                        for (v, &xv) in row[..=k].iter_mut().zip(xk) {
                            *v -= lik * xv;
                        }
                    }
                }
            }
        });
        // Then the block's own rows in order, each written back over its row of L.
        for i in i0..i1 {
            let r = i - i0;
            let row = &mut rows[r * i1..(r + 1) * i1];
            for k in i0..i {
                let lik = lrows[r * i1 + k];
                if lik != 0.0 {
                    let xk = &l[row_offset(k)..row_offset(k) + k + 1];
                    for (v, &xv) in row[..=k].iter_mut().zip(xk) {
                        *v -= lik * xv;
                    }
                }
            }
            let d = lrows[r * i1 + i];
            for (o, &v) in l[row_offset(i)..row_offset(i) + i + 1].iter_mut().zip(row.iter()) {
                *o = v / d;
            }
        }
        i0 = i1;
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
    lower_inverse_packed(&mut rev, n, BLOCK);
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
    pub fn new(h: &[f64], n: usize) -> Option<Feedback> {
        let d: Vec<f64> = (0..n).map(|j| h[j * n + j]).collect();
        Feedback::with(&d, |a, b| h[a * n + b], n)
    }

    /// From H as a packed triangle (the same values give the same bits as `new`).
    pub fn from_packed(h: &super::gram::SymPacked) -> Option<Feedback> {
        Feedback::with(&h.diag(), |a, b| h.get(a, b), h.n)
    }

    fn with(d: &[f64], h: impl Fn(usize, usize) -> f64 + Sync, n: usize) -> Option<Feedback> {
        let mut trace = 0.0;
        for &v in d {
            trace += v;
        }
        if trace.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
        let perm = act_order_diag(d);
        let hp = |a: usize, b: usize| h(perm[a], perm[b]);
        // Damping: λ = 1% of the mean diagonal; a matrix that still fails (rounding on a
        // nearly singular H) gets ten times more, a fixed sequence, so the result is the
        // same everywhere.
        let mut lambda = DAMP * (trace / n as f64);
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
        let (perm, u) = (&self.perm, &self.u);
        let qmax = (1i32 << q.params.bits) - 1;
        let g = q.params.group_size as usize;
        let gpr = q.groups_per_row();
        let (scales, zeros, base_exp) = (&q.scales, &q.zeros, q.base_exp);
        let losses: Vec<Vec<f64>> = q
            .codes
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .map(|(blk, codes)| {
                let r0 = blk * ROWS_PER_TASK;
                let nr = codes.len() / n;
                let mut loss = vec![0f64; nr];
                // This block's rows in act order.
                let mut wp: Vec<f64> = Vec::with_capacity(nr * n);
                for r in 0..nr {
                    wp.extend(perm.iter().map(|&p| w[(r0 + r) * n + p]));
                }
                for (a, &col) in perm.iter().enumerate() {
                    // Row a of U from its diagonal on: U_aa, U_a,a+1, …
                    let urow = &u[upper_offset(n, a)..upper_offset(n, a) + n - a];
                    let d = urow[0];
                    for r in 0..nr {
                        let gi = (r0 + r) * gpr + col / g;
                        let (m, e) = step(scales[gi], base_exp);
                        let z = zeros[gi] as i32;
                        let x = wp[r * n + a];
                        let code = ((libm::ldexp(x, -e) / m as f64).round_ties_even() as i64 + z as i64)
                            .clamp(0, qmax as i64) as i32;
                        codes[r * n + col] = code as u8;
                        let err = (x - libm::ldexp((m as i64 * (code - z) as i64) as f64, e)) / d;
                        if err != 0.0 {
                            loss[r] += err * err;
                            let wr = &mut wp[r * n + a + 1..(r + 1) * n];
                            for (wv, &uv) in wr.iter_mut().zip(&urow[1..]) {
                                *wv -= err * uv;
                            }
                        }
                    }
                }
                loss
            })
            .collect();
        let mut total = 0.0;
        for l in losses.iter().flatten() {
            total += l;
        }
        total
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

    #[test]
    fn blocked_factorisations_equal_the_textbook_ones_bit_for_bit() {
        for (n, block) in [(37, 8), (64, 64), (100, 16), (130, 64), (5, 3), (70, 1)] {
            let mut h = spd(n, n as u64);
            for i in 0..n {
                h[i * n + i] += 0.5; // the generator's matrix is singular for even n
            }
            let want = cholesky_ref(&h, n).unwrap();
            let mut got = pack_lower(&h, n);
            assert!(cholesky_packed(&mut got, n, block));
            let wp = pack_lower(&want, n);
            assert!(wp.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "cholesky n={n} block={block}");
            let wi = pack_lower(&lower_inverse_ref(&want, n), n);
            lower_inverse_packed(&mut got, n, block);
            assert!(wi.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "inverse n={n} block={block}");
        }
        // Not positive definite: refused by both.
        let mut h = spd(20, 1);
        h[5 * 20 + 5] = -1.0;
        assert!(cholesky_ref(&h, 20).is_none() && !cholesky_packed(&mut pack_lower(&h, 20), 20, 8));
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
