//! Calibration statistics: the exact input Gram matrix H = Σ_t x_t x_tᵀ of one linear input
//! over every calibration token, in integers (DESIGN §4).
//!
//! Tokens carry their own exponents (`TokenFixed`), so one window's tokens are first put on
//! one grid: the window's largest token exponent E, two bits below it, each mantissa shifted
//! with one round-half-even (tokens within two binary orders of the window's largest are
//! exact; much smaller ones keep fewer bits, in proportion to their weight in H). The
//! window's Gram matrix is then an exact integer product; windows are added exactly after
//! aligning their grids. Every rounding point depends only on the window's own tokens, so
//! neither the order of windows, nor tiling, nor the device can change a bit.
//!
//! Magnitudes (the bounds the code relies on):
//! - tap mantissas |m| ≤ 2^17 (`MATMUL_MAX_ACT`, checked), so grid values |x| ≤ 2^19 and
//!   one product ≤ 2^38;
//! - a window of at most 2^14 tokens (`MAX_WINDOW_TOKENS`) sums to ≤ 2^52 < 2^53: the f64
//!   product X̂ᵀX̂ is exact integer arithmetic whatever order the GEMM kernel adds in, FMA
//!   or not (every partial sum is an integer below 2^53);
//! - the diagonal is kept exactly in i128 (`cols` entries) and holds ≤ windows · 2^52 ·
//!   2^(top − grid); `add_window` refuses, with a clear error, anything that could pass
//!   2^126 (windows whose largest exponents lie more than about 35 binary orders apart);
//! - the lower triangle is kept in **i64** while the largest diagonal entry stays ≤ i64::MAX
//!   and is widened once to i128 when a window would pass that (`I64_LIMIT`). H is a sum of
//!   outer products x xᵀ of integer vectors, so every partial sum is positive semi-definite
//!   and Cauchy–Schwarz bounds each entry exactly: |H_ij| ≤ √(H_ii H_jj) ≤ max_k H_kk. The
//!   check is made on the exact i128 diagonal *after* the window (and after re-aligning the
//!   grid), so the aligned old value, the window's term and their sum all fit in i64: no
//!   entry can overflow. The diagonal only grows (in the finest grid's units too), so the
//!   triangle is widened iff the whole calibration set needs it — a property of the data,
//!   never of the order, tiling, thread count or `--max-memory`; and the values are exact
//!   integers either way, so the representation never changes a bit of the result.
//!   Headroom of i64: 2^63 ≥ tokens · 2^38 · 2^(2·Δ), Δ the spread (binary orders) between
//!   the windows' largest exponents for the hottest input: e.g. 2^18 tokens with Δ ≤ 3.
//!
//! Where (`Gram::on`): a GPU backend may keep the i64 triangle in device memory
//! (`Backend::gram_add`, shaders/gram.wgsl) while this module keeps the grid, the exact
//! diagonal and every decision above; the triangle comes to the host once (`settle`) or at
//! a widening. This module's host path is that kernel's CPU twin: the same integers.
//!
//! Memory (bytes; n = `cols`, N = n(n+1)/2 entries of the triangle, T = window tokens):
//! - accumulation: 8·N (i64 triangle) + 16·n (diagonal) + 8·T·n (one window on its grid),
//!   plus 8·64·n per parallel task (one block of the window's product); 16·N after a widening
//!   and 24·N during it (both triangles for one copy);
//! - `into_f64_packed`: converts in place from i64 (8·N, no second copy); from i128 the f64
//!   triangle is a new buffer (peak 24·N).
//!
//! n = 14,336 (Llama-3.1-8B down_proj): N = 102.8 M, 0.82 GB; n = 32,768: N = 536.9 M,
//! 4.3 GB (8.6 GB if widened). Error feedback's own working set is in `codec/gptq.rs`.

use rayon::prelude::*;

use crate::backend::{Backend, DeviceGram};
use crate::error::Result;
use crate::fixed::round::shr_round_any;
use crate::fixed::tensor::{MATMUL_MAX_ACT, TokenFixed, tri_offset};

/// Largest input width that keeps the full matrix (Llama-3.1-70B's down_proj, 28,672, fits;
/// 405B's 53,248 does not); wider inputs keep the diagonal only (a documented reduction,
/// DESIGN §4; its quality cost, measured by forcing SmolLM2-135M's down_proj to the
/// diagonal, is in docs/ARCHITECTURE.md). Fixed, not derived from a memory budget, so the
/// pack cannot depend on `--max-memory`.
pub const FULL_GRAM_MAX_COLS: usize = 32768;
// The device kernel's operand bound (GRAM_MAX_X) is the grid's: 2^17 shifted up by at most
// GRID_EXTRA_BITS.
const _: () = assert!(MATMUL_MAX_ACT << GRID_EXTRA_BITS == crate::fixed::tensor::GRAM_MAX_X);

/// Largest window (tokens) one exact product may cover.
pub const MAX_WINDOW_TOKENS: usize = 1 << 14;
/// Bits kept above the window's largest token exponent's mantissa grid.
const GRID_EXTRA_BITS: i32 = 2;
/// Output columns of H per parallel task (exact sums: the partition cannot change a bit).
const COLS_PER_TASK: usize = 64;
/// The i64 triangle is kept while every diagonal entry (in accumulator units) is at most
/// this (see the module comment).
const I64_LIMIT: i128 = i64::MAX as i128;

/// A symmetric matrix kept as its lower triangle, column-major packed: (i, j), i ≥ j, at
/// `offset(j) + i − j` (column j holds rows j..n, i.e. row j of H from its diagonal on).
#[derive(Debug, Clone)]
pub struct SymPacked {
    pub n: usize,
    pub data: Vec<f64>,
}

impl SymPacked {
    pub fn offset(&self, j: usize) -> usize {
        tri_offset(self.n, j)
    }

    /// H_ij (either triangle).
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (i, j) = if i >= j { (i, j) } else { (j, i) };
        self.data[self.offset(j) + i - j]
    }

    pub fn diag(&self) -> Vec<f64> {
        (0..self.n).map(|j| self.data[self.offset(j)]).collect()
    }

    /// The full `n × n` matrix, row-major (8·n² bytes).
    pub fn to_full(&self) -> Vec<f64> {
        let n = self.n;
        let mut h = vec![0f64; n * n];
        h.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.get(i, j);
            }
        });
        h
    }
}

/// The integer triangle: i64 while the bound holds (on the host, or in a backend's memory
/// as `Device`), i128 after a widening (always on the host).
#[derive(Debug)]
enum Tri {
    Diagonal,
    I64(Vec<i64>),
    Device(DeviceGram),
    I128(Vec<i128>),
}

#[derive(Debug)]
pub struct Gram {
    pub cols: usize,
    pub full: bool,
    /// Full: the lower triangle, column-major packed ((i, j), i ≥ j, at `offset(j) + i − j`).
    /// Value = acc · 2^grid.
    tri: Tri,
    /// H_ii exactly, in the same units.
    diag: Vec<i128>,
    grid: i32,
    /// Largest window unit added so far (for the overflow bound).
    top: i32,
    windows: u64,
    pub tokens: u64,
}

/// Add the window's product to the triangle's columns j0..j1 (`out`, their packed range).
fn add_block<T>(out: &mut [T], xs: &[f64], c: usize, t: usize, j0: usize, s: u32)
where
    T: Copy + std::ops::AddAssign + std::ops::Shl<u32, Output = T> + From<i64>,
{
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
            out[k] += T::from(gblk[(i - j0) * n + (j - j0)] as i64) << s;
            k += 1;
        }
    }
}

/// The triangle's columns split in blocks of `COLS_PER_TASK`, each with its packed range.
fn column_blocks<T>(acc: &mut [T], c: usize) -> Vec<(usize, &mut [T])> {
    let mut slices: Vec<(usize, &mut [T])> = Vec::new();
    let mut rest: &mut [T] = acc;
    let mut j0 = 0;
    while j0 < c {
        let j1 = (j0 + COLS_PER_TASK).min(c);
        let len: usize = (j0..j1).map(|j| c - j).sum();
        let (a, b) = std::mem::take(&mut rest).split_at_mut(len);
        slices.push((j0, a));
        rest = b;
        j0 = j1;
    }
    slices
}

impl Gram {
    /// Whether an input of `cols` keeps the full matrix (else its diagonal).
    pub fn keeps_full(cols: usize) -> bool {
        cols <= FULL_GRAM_MAX_COLS
    }

    /// A statistic kept on the host.
    pub fn new(cols: usize) -> Gram {
        let mut g = Gram::new_diagonal(cols);
        if Gram::keeps_full(cols) {
            g.full = true;
            g.tri = Tri::I64(vec![0; cols * (cols + 1) / 2]);
        }
        g
    }

    /// A statistic whose i64 triangle `backend` keeps in its own memory when it can
    /// (`Backend::gram_open`; a GPU), else on the host as `new`. Windows then go through
    /// `add_window_on` with the same backend, and `settle` brings the triangle to the host.
    /// The same integers either way: only where the products are summed changes.
    pub fn on(backend: &dyn Backend, cols: usize) -> Result<Gram> {
        if !Gram::keeps_full(cols) {
            return Ok(Gram::new_diagonal(cols));
        }
        match backend.gram_open(cols)? {
            Some(d) => {
                let mut g = Gram::new_diagonal(cols);
                g.full = true;
                g.tri = Tri::Device(d);
                Ok(g)
            }
            None => Ok(Gram::new(cols)),
        }
    }

    /// Whether the triangle is in a backend's memory now.
    pub fn on_device(&self) -> bool {
        matches!(self.tri, Tri::Device(_))
    }

    /// Bring a triangle kept by `backend` to the host (no-op otherwise).
    pub fn settle(&mut self, backend: &dyn Backend) -> Result<()> {
        if let Tri::Device(d) = &self.tri {
            self.tri = Tri::I64(backend.gram_read(d)?);
        }
        Ok(())
    }

    /// A statistic that keeps only the diagonal whatever its width (tests, comparisons).
    pub fn new_diagonal(cols: usize) -> Gram {
        Gram { cols, full: false, tri: Tri::Diagonal, diag: vec![0; cols], grid: 0, top: 0, windows: 0, tokens: 0 }
    }

    fn offset(&self, j: usize) -> usize {
        tri_offset(self.cols, j)
    }

    /// Whether the triangle had to be widened to i128 (module comment).
    pub fn widened(&self) -> bool {
        matches!(self.tri, Tri::I128(_))
    }

    /// H_ij exactly in units of 2^`grid()` (full statistics only).
    pub fn entry_exact(&self, i: usize, j: usize) -> i128 {
        let (i, j) = if i >= j { (i, j) } else { (j, i) };
        let k = self.offset(j) + i - j;
        match &self.tri {
            Tri::I64(a) => a[k] as i128,
            Tri::I128(a) => a[k],
            Tri::Diagonal => panic!("entry_exact on a diagonal-only statistic"),
            Tri::Device(_) => panic!("entry_exact before settle"),
        }
    }

    /// The exponent of one accumulator unit.
    pub fn grid(&self) -> i32 {
        self.grid
    }

    /// Add one window's tokens (`name` names the tap in errors) to a host statistic.
    pub fn add_window(&mut self, x: &TokenFixed, name: &str) -> Result<()> {
        self.add(None, x, name)
    }

    /// Add one window's tokens to a statistic opened with `Gram::on(backend, ..)`.
    pub fn add_window_on(&mut self, backend: &dyn Backend, x: &TokenFixed, name: &str) -> Result<()> {
        self.add(Some(backend), x, name)
    }

    fn add(&mut self, backend: Option<&dyn Backend>, x: &TokenFixed, name: &str) -> Result<()> {
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
        // The window on its grid: |value| <= 2^17 · 2^GRID_EXTRA_BITS = GRAM_MAX_X.
        let mut xs = vec![0i32; x.tokens * c];
        for t in 0..x.tokens {
            let shift = g - x.exps[t]; // ≥ −GRID_EXTRA_BITS
            for (o, &m) in xs[t * c..(t + 1) * c].iter_mut().zip(&x.mants[t * c..(t + 1) * c]) {
                if m.unsigned_abs() > MATMUL_MAX_ACT as u32 {
                    return Err(bad_input!("{name}: activation mantissa {m} beyond 2^17"));
                }
                let v = if shift <= 0 { (m as i64) << (-shift) } else { shr_round_any(m as i64, shift as u32) };
                *o = v as i32;
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
        let align = if self.windows > 0 { (self.grid - new_grid) as u32 } else { 0 };
        let s = (unit - new_grid) as u32;
        let t = x.tokens;
        // The exact diagonal after this window (each window sum ≤ 2^52: exact in i64).
        let wdiag: Vec<i64> = (0..c)
            .into_par_iter()
            .map(|i| {
                let mut sum = 0i64;
                for tt in 0..t {
                    let v = xs[tt * c + i] as i64;
                    sum += v * v;
                }
                sum
            })
            .collect();
        let new_diag: Vec<i128> =
            self.diag.iter().zip(&wdiag).map(|(&d, &w)| (d << align) + ((w as i128) << s)).collect();
        let top_diag = new_diag.iter().copied().max().unwrap_or(0);
        if top_diag > I64_LIMIT {
            // Widen once (exact): the bound of the i64 triangle would not hold. A triangle
            // in a backend's memory comes to the host first and stays there.
            match &self.tri {
                Tri::I64(a) => self.tri = Tri::I128(a.par_iter().map(|&v| v as i128).collect()),
                Tri::Device(d) => {
                    let backend = backend.ok_or_else(|| bad_input!("internal error: {name}: no backend given"))?;
                    self.tri = Tri::I128(backend.gram_read(d)?.into_par_iter().map(|v| v as i128).collect());
                }
                Tri::I128(_) | Tri::Diagonal => {}
            }
        }
        self.grid = new_grid;
        self.top = new_top;
        self.windows += 1;
        self.diag = new_diag;
        if let Tri::Device(d) = &mut self.tri {
            // Below the i64 bound every aligned entry and sum fits (module comment), so a
            // shift past 62 only ever moves zeros: 63 stands for any larger one.
            let backend = backend.ok_or_else(|| bad_input!("internal error: {name}: no backend given"))?;
            return backend.gram_add(d, &xs, t, align.min(63), s.min(63));
        }
        if align > 0 {
            match &mut self.tri {
                Tri::I64(a) => a.par_iter_mut().for_each(|v| *v <<= align),
                Tri::I128(a) => a.par_iter_mut().for_each(|v| *v <<= align),
                Tri::Diagonal | Tri::Device(_) => {}
            }
        }
        if matches!(self.tri, Tri::Diagonal) {
            return Ok(());
        }
        let xs: Vec<f64> = xs.into_par_iter().map(|v| v as f64).collect();
        // Lower triangle, one task per block of columns; each task's slice of the triangle
        // is the contiguous column-major range of its columns.
        match &mut self.tri {
            Tri::I64(a) => column_blocks(a, c).into_par_iter().for_each(|(j0, out)| add_block(out, &xs, c, t, j0, s)),
            Tri::I128(a) => column_blocks(a, c).into_par_iter().for_each(|(j0, out)| add_block(out, &xs, c, t, j0, s)),
            Tri::Diagonal | Tri::Device(_) => {}
        }
        Ok(())
    }

    /// H_ii exactly (units of 2^grid).
    pub fn diag_exact(&self) -> Vec<i128> {
        self.diag.clone()
    }

    /// Per-input importance for the quantizer's search: diag(H) scaled so the largest is
    /// `max`, rounded down, at least 1 (an input unseen in calibration still counts a little).
    pub fn importance(&self, max: u32) -> Vec<u32> {
        let d = &self.diag;
        let top = d.iter().copied().max().unwrap_or(0);
        if top <= 0 {
            return vec![1; self.cols];
        }
        // d ≤ top < 2^127; scale top down to < 2^100 first so d · max cannot overflow.
        let sh = (128 - top.leading_zeros()).saturating_sub(100);
        let top_s = top >> sh;
        d.iter().map(|&v| (((v >> sh) * max as i128 / top_s.max(1)) as u32).max(1)).collect()
    }

    /// One entry at its true scale: one IEEE rounding of the exact integer, then an exact
    /// power-of-two scaling — the same value whatever the integer representation.
    fn f64_of(v: i128, scale: i32) -> f64 {
        libm::ldexp(v as f64, scale)
    }

    /// H in f64 at its true scale: the full `cols × cols` matrix (row-major, symmetric) or
    /// None when only the diagonal is kept (8·n² bytes: for narrow inputs and tests;
    /// compression uses `into_f64_packed`).
    pub fn to_f64_full(&self) -> Option<Vec<f64>> {
        if !self.full {
            return None;
        }
        let c = self.cols;
        let scale = self.grid;
        let mut h = vec![0f64; c * c];
        for j in 0..c {
            for i in j..c {
                let v = Gram::f64_of(self.entry_exact(i, j), scale);
                h[i * c + j] = v;
                h[j * c + i] = v;
            }
        }
        Some(h)
    }

    /// H in f64 at its true scale as a packed triangle (same values as `to_f64_full`), or
    /// None when only the diagonal is kept. Consumes the statistic: the i64 triangle is
    /// converted in place (8·N bytes in all); an i128 one into a new buffer.
    pub fn into_f64_packed(self) -> Option<SymPacked> {
        let scale = self.grid;
        let n = self.cols;
        let data = match self.tri {
            Tri::Diagonal => return None,
            Tri::Device(_) => panic!("into_f64_packed before settle"),
            Tri::I64(mut a) => {
                a.par_iter_mut().for_each(|v| *v = Gram::f64_of(*v as i128, scale).to_bits() as i64);
                let mut a = std::mem::ManuallyDrop::new(a);
                let (ptr, len, cap) = (a.as_mut_ptr(), a.len(), a.capacity());
                // SAFETY: i64 and f64 have the same size and alignment, so the allocation
                // is valid for a Vec<f64> of the same length and capacity, and every
                // element now holds the bits of an f64.
                unsafe { Vec::from_raw_parts(ptr as *mut f64, len, cap) }
            }
            Tri::I128(a) => a.par_iter().map(|&v| Gram::f64_of(v, scale)).collect(),
        };
        Some(SymPacked { n, data })
    }

    /// diag(H) in f64, as `to_f64_full`.
    pub fn to_f64_diag(&self) -> Vec<f64> {
        self.diag.iter().map(|&v| Gram::f64_of(v, self.grid)).collect()
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
                assert_eq!(g.entry_exact(i, j), h[i * c + j], "({i},{j})");
            }
        }
        // The diagonal-only reduction keeps the same diagonal.
        let mut gd = Gram::new_diagonal(c);
        for w in &ws {
            gd.add_window(w, "x").unwrap();
        }
        assert_eq!(gd.diag_exact(), d);
        assert!(!g.widened());
        // The packed f64 triangle holds the same values as the full f64 matrix.
        let full = g.to_f64_full().unwrap();
        let p = g.into_f64_packed().unwrap();
        for i in 0..c {
            for j in 0..c {
                assert_eq!(p.get(i, j).to_bits(), full[i * c + j].to_bits());
            }
        }
        assert_eq!(p.to_full(), full);
    }

    /// Windows 30 binary orders apart pass the i64 bound: the triangle is widened, and every
    /// entry still equals the i128 definition (the same whatever the window order).
    #[test]
    fn widening_keeps_every_entry_exact() {
        let c = 9;
        let a = window(5, c, 1, 0);
        let mut b = window(5, c, 2, 0);
        for e in b.exps.iter_mut() {
            *e += 30;
        }
        let mut g = Gram::new(c);
        g.add_window(&a, "x").unwrap();
        assert!(!g.widened());
        g.add_window(&b, "x").unwrap();
        assert!(g.widened());
        let mut g2 = Gram::new(c);
        g2.add_window(&b, "x").unwrap();
        g2.add_window(&a, "x").unwrap();
        let mut narrow = Gram::new(c);
        narrow.add_window(&a, "x").unwrap();
        for i in 0..c {
            for j in 0..c {
                assert_eq!(g.entry_exact(i, j), g2.entry_exact(i, j));
            }
        }
        assert_eq!(g.to_f64_full(), g2.to_f64_full());
        assert_eq!(g.diag_exact(), (0..c).map(|i| g.entry_exact(i, i)).collect::<Vec<_>>());
        let full = g.to_f64_full().unwrap();
        assert_eq!(g.into_f64_packed().unwrap().to_full(), full);
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
