//! Calibration statistics: the exact input Gram matrix H = Σ_t x_t x_tᵀ of one linear input
//! over every calibration token, in integers (DESIGN §4).
//!
//! Tokens carry their own exponents (`TokenFixed`), so one window's tokens are first put on
//! one grid: the window's largest token exponent E, two bits below it, each mantissa shifted
//! with one round-half-even (tokens within two binary orders of the window's largest are
//! exact; much smaller ones keep fewer bits, in proportion to their weight in H). The
//! window's Gram matrix is then an exact integer product; windows are added exactly in i128
//! after aligning their grids. Every rounding point depends only on the window's own tokens,
//! so neither the order of windows, nor tiling, nor the device can change a bit.
//!
//! Magnitudes (the bound the code relies on):
//! - tap mantissas |m| ≤ 2^17 (`MATMUL_MAX_ACT`, checked), so grid values |x| ≤ 2^19 and
//!   one product ≤ 2^38;
//! - a window of at most 2^14 tokens (`MAX_WINDOW_TOKENS`) sums to ≤ 2^52 < 2^53: the f64
//!   product X̂ᵀX̂ is exact integer arithmetic whatever order the GEMM kernel adds in, FMA
//!   or not (every partial sum is an integer below 2^53);
//! - the i128 accumulator holds ≤ windows · 2^52 · 2^(top − grid); `add_window` refuses,
//!   with a clear error, anything that could pass 2^126 (windows whose largest exponents lie
//!   more than about 35 binary orders apart), so overflow is impossible.

use rayon::prelude::*;

use crate::backend::cpu::linear::shr_round_any;
use crate::backend::{MATMUL_MAX_ACT, TokenFixed};
use crate::error::Result;

/// Largest input width that keeps the full matrix (i128 lower triangle: 8192 inputs take
/// 537 MB); wider inputs keep the diagonal only (a documented reduction, DESIGN §4). Fixed,
/// not derived from a memory budget, so the pack cannot depend on `--max-memory`.
pub const FULL_GRAM_MAX_COLS: usize = 8192;
/// Largest window (tokens) one exact product may cover.
pub const MAX_WINDOW_TOKENS: usize = 1 << 14;
/// Bits kept above the window's largest token exponent's mantissa grid.
const GRID_EXTRA_BITS: i32 = 2;
/// Output columns of H per parallel task (exact sums: the partition cannot change a bit).
const COLS_PER_TASK: usize = 64;

#[derive(Debug, Clone)]
pub struct Gram {
    pub cols: usize,
    pub full: bool,
    /// Full: the lower triangle, column-major packed ((i, j), i ≥ j, at `offset(j) + i − j`);
    /// diagonal: `cols` entries. Value = acc · 2^grid.
    acc: Vec<i128>,
    grid: i32,
    /// Largest window unit added so far (for the overflow bound).
    top: i32,
    windows: u64,
    pub tokens: u64,
}

impl Gram {
    pub fn new(cols: usize) -> Gram {
        let full = cols <= FULL_GRAM_MAX_COLS;
        let n = if full { cols * (cols + 1) / 2 } else { cols };
        Gram { cols, full, acc: vec![0; n], grid: 0, top: 0, windows: 0, tokens: 0 }
    }

    fn offset(&self, j: usize) -> usize {
        j * self.cols - j * j.saturating_sub(1) / 2
    }

    /// Add one window's tokens (`name` names the tap in errors).
    pub fn add_window(&mut self, x: &TokenFixed, name: &str) -> Result<()> {
        if x.width != self.cols {
            return Err(bad_input!("{name}: statistics of width {} fed {} inputs", self.cols, x.width));
        }
        if x.tokens > MAX_WINDOW_TOKENS {
            return Err(bad_input!("{name}: calibration window of {} tokens (at most {MAX_WINDOW_TOKENS})", x.tokens));
        }
        self.tokens += x.tokens as u64;
        let c = self.cols;
        let live = |t: usize| x.mants[t * c..(t + 1) * c].iter().any(|&m| m != 0);
        let Some(e_max) = (0..x.tokens).filter(|&t| live(t)).map(|t| x.exps[t]).max() else {
            return Ok(()); // an all-zero window adds nothing
        };
        let g = e_max - GRID_EXTRA_BITS;
        let mut xs = vec![0f64; x.tokens * c];
        for t in 0..x.tokens {
            let shift = g - x.exps[t]; // ≥ −GRID_EXTRA_BITS
            for (o, &m) in xs[t * c..(t + 1) * c].iter_mut().zip(&x.mants[t * c..(t + 1) * c]) {
                if m.unsigned_abs() > MATMUL_MAX_ACT as u32 {
                    return Err(bad_input!("{name}: activation mantissa {m} beyond 2^17"));
                }
                let v = if shift <= 0 { (m as i64) << (-shift) } else { shr_round_any(m as i64, shift as u32) };
                *o = v as f64;
            }
        }
        let unit = 2 * g; // value of one unit of this window's sums
        // Align the accumulator to the finer of the two grids (exact shifts), checking the
        // bound first: windows · 2^52 · 2^(top − grid) must stay below 2^126.
        let (new_grid, new_top) =
            if self.windows == 0 { (unit, unit) } else { (self.grid.min(unit), self.top.max(unit)) };
        let need = 64 - (self.windows + 1).leading_zeros() as i32 + 52 + (new_top - new_grid);
        if need > 126 {
            return Err(bad_input!(
                "{name}: calibration activations span more than 2^{} between windows; exact statistics cannot hold them",
                (new_top - new_grid) / 2
            ));
        }
        if self.windows > 0 && new_grid < self.grid {
            let s = (self.grid - new_grid) as u32;
            self.acc.par_iter_mut().for_each(|a| *a <<= s);
        }
        self.grid = new_grid;
        self.top = new_top;
        self.windows += 1;
        let s = (unit - new_grid) as u32;
        let t = x.tokens;
        if self.full {
            // Lower triangle, one task per block of columns; each task's slice of `acc` is
            // the contiguous column-major range of its columns.
            let mut slices: Vec<(usize, &mut [i128])> = Vec::new();
            let mut rest: &mut [i128] = &mut self.acc;
            let mut j0 = 0;
            while j0 < c {
                let j1 = (j0 + COLS_PER_TASK).min(c);
                let len: usize = (j0..j1).map(|j| c - j).sum();
                let (a, b) = std::mem::take(&mut rest).split_at_mut(len);
                slices.push((j0, a));
                rest = b;
                j0 = j1;
            }
            slices.into_par_iter().for_each(|(j0, out)| {
                let j1 = (j0 + COLS_PER_TASK).min(c);
                let (m, n) = (c - j0, j1 - j0);
                // G[i − j0, j − j0] = Σ_t xs[t, i] xs[t, j] for i in j0..c, j in j0..j1.
                let mut gblk = vec![0f64; m * n];
                // SAFETY: the slices and strides describe in-bounds row-major matrices:
                // A = xs[:, j0..]ᵀ (m × t), B = xs[:, j0..j1] (t × n), C = gblk (m × n).
                unsafe {
                    matrixmultiply::dgemm(
                        m,
                        t,
                        n,
                        1.0,
                        xs.as_ptr().add(j0),
                        1,
                        c as isize,
                        xs.as_ptr().add(j0),
                        c as isize,
                        1,
                        0.0,
                        gblk.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                let mut k = 0;
                for j in j0..j1 {
                    for i in j..c {
                        out[k] += (gblk[(i - j0) * n + (j - j0)] as i64 as i128) << s;
                        k += 1;
                    }
                }
            });
        } else {
            self.acc.par_iter_mut().enumerate().for_each(|(i, a)| {
                let mut sum = 0i64;
                for tt in 0..t {
                    let v = xs[tt * c + i] as i64;
                    sum += v * v;
                }
                *a += (sum as i128) << s;
            });
        }
        Ok(())
    }

    /// H_ii exactly (units of 2^grid).
    pub fn diag_exact(&self) -> Vec<i128> {
        if !self.full {
            return self.acc.clone();
        }
        (0..self.cols).map(|j| self.acc[self.offset(j)]).collect()
    }

    /// Per-input importance for the quantizer's search: diag(H) scaled so the largest is
    /// `max`, rounded down, at least 1 (an input unseen in calibration still counts a little).
    pub fn importance(&self, max: u32) -> Vec<u32> {
        let d = self.diag_exact();
        let top = d.iter().copied().max().unwrap_or(0);
        if top <= 0 {
            return vec![1; self.cols];
        }
        // d ≤ top < 2^127; scale top down to < 2^100 first so d · max cannot overflow.
        let sh = (128 - top.leading_zeros()).saturating_sub(100);
        let top_s = top >> sh;
        d.iter().map(|&v| (((v >> sh) * max as i128 / top_s.max(1)) as u32).max(1)).collect()
    }

    /// H in f64 at its true scale: the full `cols × cols` matrix (row-major, symmetric) or
    /// None when only the diagonal is kept. Each entry is one IEEE rounding of the exact
    /// integer (then an exact power-of-two scaling), the same everywhere.
    pub fn to_f64_full(&self) -> Option<Vec<f64>> {
        if !self.full {
            return None;
        }
        let c = self.cols;
        let scale = self.f64_scale();
        let mut h = vec![0f64; c * c];
        for j in 0..c {
            let o = self.offset(j);
            for i in j..c {
                let v = libm::ldexp(self.acc[o + i - j] as f64, scale);
                h[i * c + j] = v;
                h[j * c + i] = v;
            }
        }
        Some(h)
    }

    /// diag(H) in f64, as `to_f64_full`.
    pub fn to_f64_diag(&self) -> Vec<f64> {
        let scale = self.f64_scale();
        self.diag_exact().iter().map(|&v| libm::ldexp(v as f64, scale)).collect()
    }

    fn f64_scale(&self) -> i32 {
        self.grid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tokens: usize, width: usize, seed: u64, exp_spread: i32) -> TokenFixed {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as i64
        };
        let mut exps = Vec::new();
        let mut mants = Vec::new();
        for _ in 0..tokens {
            exps.push((next() % (exp_spread as i64 + 1)) as i32 - 20);
            for _ in 0..width {
                mants.push((next() % (1 << 18)) as i32 - (1 << 17));
            }
        }
        TokenFixed { tokens, width, exps, mants }
    }

    /// Independent reference: the same per-window grid rule written with i128 and the
    /// definition of H, compared with the GEMM path for every entry.
    #[test]
    fn gram_equals_i128_definition_and_ignores_window_order() {
        let (c, t) = (70, 33);
        let ws: Vec<TokenFixed> = (0..3).map(|i| window(t, c, i, 6 + i as i32)).collect();
        let mut g = Gram::new(c);
        for w in &ws {
            g.add_window(w, "x").unwrap();
        }
        let mut g2 = Gram::new(c);
        for w in ws.iter().rev() {
            g2.add_window(w, "x").unwrap();
        }
        assert_eq!(g.to_f64_full(), g2.to_f64_full());
        // Reference: exact values as rationals over 2^min_grid.
        let grids: Vec<i32> = ws.iter().map(|w| 2 * (w.exps.iter().max().unwrap() - GRID_EXTRA_BITS)).collect();
        let gmin = *grids.iter().min().unwrap();
        let mut h = vec![0i128; c * c];
        for (w, &u) in ws.iter().zip(&grids) {
            let g = u / 2;
            for tt in 0..t {
                let sh = g - w.exps[tt];
                let xv: Vec<i128> = (0..c)
                    .map(|i| {
                        let m = w.mants[tt * c + i] as i128;
                        if sh <= 0 {
                            m << -sh
                        } else {
                            // round half to even, written out
                            let q = m >> sh;
                            let r = m - (q << sh);
                            let half = 1i128 << (sh - 1);
                            if r > half || (r == half && q & 1 == 1) { q + 1 } else { q }
                        }
                    })
                    .collect();
                for i in 0..c {
                    for j in 0..c {
                        h[i * c + j] += (xv[i] * xv[j]) << (u - gmin);
                    }
                }
            }
        }
        let d = g.diag_exact();
        assert_eq!(g.grid, gmin);
        for i in 0..c {
            assert_eq!(d[i], h[i * c + i], "diag {i}");
            for j in 0..=i {
                assert_eq!(g.acc[g.offset(j) + i - j], h[i * c + j], "({i},{j})");
            }
        }
        // The diagonal-only reduction keeps the same diagonal.
        let mut gd = Gram { full: false, acc: vec![0; c], ..Gram::new(c) };
        for w in &ws {
            gd.add_window(w, "x").unwrap();
        }
        assert_eq!(gd.diag_exact(), d);
    }

    #[test]
    fn importance_is_scaled_diagonal() {
        let mut g = Gram::new(3);
        let w = TokenFixed { tokens: 2, width: 3, exps: vec![0, 0], mants: vec![4, 2, 0, 4, 0, 0] };
        g.add_window(&w, "x").unwrap();
        // diag = (32, 4, 0) · 2^4
        assert_eq!(g.importance(4096), vec![4096, 512, 1]);
    }

    #[test]
    fn span_beyond_the_bound_is_refused() {
        let mut g = Gram::new(2);
        let a = TokenFixed { tokens: 1, width: 2, exps: vec![0], mants: vec![1, 1] };
        let b = TokenFixed { tokens: 1, width: 2, exps: vec![40], mants: vec![1, 1] };
        g.add_window(&a, "x").unwrap();
        let e = g.add_window(&b, "t").unwrap_err().to_string();
        assert!(e.contains("t: calibration activations span"), "{e}");
    }
}
