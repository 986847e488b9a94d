//! The CPU backend's matmul: the same sums as `linear::matmul_rows` (the readable twin of
//! shaders/matmul.wgsl), bit for bit, computed in f64 lanes.
//!
//! Why f64 is exact: |a| <= 2^17 and |m| <= 2^15, so every product has |a·m| <= 2^32, and a
//! group holds <= 64 products, so every partial sum of a group, in any order and any split
//! into lanes, is an integer of magnitude <= 2^38 < 2^53: each multiply and add is exact and
//! a group's sum comes out as the same integer as the reference's i64 sum. From there on the
//! arithmetic is the reference's own: the group sum goes to i64 (exactly), is shifted by the
//! group's exponent above the row's smallest (<= `matmul_max_spread(K)`: 16 up to K = 8192,
//! 13 at K = 65,536) and summed in i64 (< K·2^(32+S) <= 2^61, no overflow, whatever K).
//! Integer sums do not depend on order, so the tiling and lane layout cannot change a bit.
//!
//! Layout: the output is split into fixed blocks of `TOKENS_PER_BLOCK` tokens ×
//! `ROWS_PER_BLOCK` weight rows (independent of the thread count; blocks never overlap, and
//! each is one rayon task). Each token block widens its activations to f64 once, and each
//! block its weight rows, so widening costs about 1/TOKENS_PER_BLOCK + 1/n conversions per
//! multiply-add and its buffers stay in cache. Every group is padded with zeros to a
//! multiple of `LANES` columns (a zero adds nothing). A micro-kernel then runs over tiles
//! of `TOK_TILE` tokens × `ROW_TILE` rows: AVX2 + FMA where the CPU has them (detected at
//! run time), else the same arithmetic in plain Rust. A single token (decoding) takes the
//! reference loop itself.
//!
//! Where the CPU has AVX2, `matmul` runs `matmul_avx2` instead (exact i16-pair integer dot
//! products, `vpmaddwd`), and where it has AVX-512 VNNI (with F, BW and VL), `matmul_vnni`
//! (the same with `vpdpwssd`, about 2.5x the f64 AVX2 kernel). `Kernel` picks, or lets tests
//! and benches force, one kernel; the f64 kernels remain for CPUs without AVX2 (portable)
//! and as a second, independent implementation every test compares.

use rayon::prelude::*;

use crate::fixed::tensor::{GroupFixed, TokenFixed};

/// Tokens per block (a multiple of `TOK_TILE`; forward-pass chunks of up to 128 tokens take
/// one block, so their weights are widened once).
const TOKENS_PER_BLOCK: usize = 144;
/// Weight rows per block (a multiple of `ROW_TILE`).
const ROWS_PER_BLOCK: usize = 32;
/// Tokens per micro-kernel tile.
const TOK_TILE: usize = 6;
/// Weight rows per micro-kernel tile: TOK_TILE × ROW_TILE accumulators plus ROW_TILE + 1
/// operands fit AVX2's 16 registers, so the accumulation chains never spill.
const ROW_TILE: usize = 2;
/// Columns per f64 vector; groups are padded to a multiple of it.
const LANES: usize = 4;
// A tile's accumulators, in (token, row) order, reduce LANES at a time into one vector of
// sums; lane l's row is then l % ROW_TILE.
const _: () = assert!(LANES.is_multiple_of(ROW_TILE) && (TOK_TILE * ROW_TILE).is_multiple_of(LANES));
const _: () = assert!(TOKENS_PER_BLOCK.is_multiple_of(TOK_TILE) && ROWS_PER_BLOCK.is_multiple_of(ROW_TILE));

/// Exact sums `[x.tokens, w.rows]` (row-major), identical to `linear::matmul_rows` over all
/// tokens. Expects arguments that passed `check_matmul_args` and `re = linear::row_exps(w)`.
/// Runs the fastest kernel this CPU has (`Kernel::best`); one token takes the reference loop.
pub fn matmul(x: &TokenFixed, w: &GroupFixed, re: &[i32]) -> Vec<i64> {
    if x.tokens == 1 {
        // Decoding: packing or widening the weights would cost as much as the products (the
        // reference measured faster).
        let mut sums = vec![0i64; w.rows];
        super::linear::matmul_rows(x, w, re, 0, &mut sums);
        return sums;
    }
    matmul_with(x, w, re, Kernel::best())
}

/// The kernels behind `matmul`, all giving the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// f64 lanes in plain Rust (any CPU).
    Portable,
    /// f64 lanes with AVX2 + FMA.
    Avx2F64,
    /// i16 pairs into i32 lanes with AVX2 (`matmul_avx2`).
    Avx2,
    /// i16 pairs into i32 lanes with AVX-512 VNNI (`matmul_vnni`).
    Vnni,
}

impl Kernel {
    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx2F64 => simd_available(),
            Kernel::Avx2 => super::matmul_avx2::available(),
            Kernel::Vnni => super::matmul_vnni::available(),
        }
    }

    /// The fastest kernel this CPU can run: VNNI, else AVX2 (integer), else portable.
    pub fn best() -> Kernel {
        [Kernel::Vnni, Kernel::Avx2].into_iter().find(|k| k.available()).unwrap_or(Kernel::Portable)
    }
}

/// Whether the AVX2 + FMA kernel can run on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::isa::allows(super::isa::Isa::Avx2) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `matmul` with the kernel chosen by the caller (tests and benches), for any number of
/// tokens; a kernel this CPU cannot run (`Kernel::available`) falls back to the next one
/// (VNNI, then AVX2 integer, then AVX2 f64, then portable).
pub fn matmul_with(x: &TokenFixed, w: &GroupFixed, re: &[i32], kernel: Kernel) -> Vec<i64> {
    if kernel == Kernel::Vnni
        && let Some(sums) = super::matmul_vnni::matmul(x, w, re)
    {
        return sums;
    }
    if matches!(kernel, Kernel::Vnni | Kernel::Avx2)
        && let Some(sums) = super::matmul_avx2::matmul(x, w, re)
    {
        return sums;
    }
    blocked(x, w, re, kernel != Kernel::Portable && simd_available())
}

/// The f64 path for any number of tokens (`simd` only where `simd_available()`).
fn blocked(x: &TokenFixed, w: &GroupFixed, re: &[i32], simd: bool) -> Vec<i64> {
    let (tokens, n) = (x.tokens, w.rows);
    let shape = Shape::new(w);
    // Zeros: the kernels add into it.
    let mut sums = vec![0i64; tokens * n];
    if n == 0 || shape.kp == 0 {
        return sums; // no rows, or no columns: every sum is empty
    }
    sums.par_chunks_mut(TOKENS_PER_BLOCK * n).enumerate().for_each(|(tb, chunk)| {
        let t0 = tb * TOKENS_PER_BLOCK;
        let nt = chunk.len() / n;
        let a = shape.widen_tiles(&x.mants[t0 * shape.k..(t0 + nt) * shape.k], TOK_TILE);
        // Each block's rectangle of the output, as one slice per token.
        let mut blocks: Vec<Vec<&mut [i64]>> = (0..n.div_ceil(ROWS_PER_BLOCK)).map(|_| Vec::new()).collect();
        for row in chunk.chunks_mut(n) {
            for (b, part) in blocks.iter_mut().zip(row.chunks_mut(ROWS_PER_BLOCK)) {
                b.push(part);
            }
        }
        blocks.into_par_iter().enumerate().for_each(|(rb, mut out)| {
            let r0 = rb * ROWS_PER_BLOCK;
            let nr = out[0].len();
            let wb = shape.widen_rows(&w.mantissas[r0 * shape.k..(r0 + nr) * shape.k], ROW_TILE);
            let shifts = shape.shifts(w, re, r0..r0 + nr);
            let op = Operands { shape: &shape, a: &a, w: &wb, shifts: &shifts };
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `simd` is only set when the CPU has AVX2 and FMA.
                unsafe { avx2::kernel(&op, &mut out) };
                return;
            }
            let _ = simd;
            op.kernel_portable(&mut out);
        });
    });
    sums
}

/// Column layout of the widened operands: groups of `g` values padded to `gp` columns.
struct Shape {
    k: usize,
    g: usize,
    gpr: usize,
    gp: usize,
    /// Padded row width, `gpr * gp`.
    kp: usize,
}

impl Shape {
    fn new(w: &GroupFixed) -> Shape {
        let (k, g, gpr) = (w.cols, w.params.group_size as usize, w.groups_per_row());
        let gp = g.next_multiple_of(LANES);
        Shape { k, g, gpr, gp, kp: gpr * gp }
    }

    /// Rows of `k` mantissas (`src`) as f64 rows of `kp`, plus zero rows up to a multiple of
    /// `pad_to`: the weights' layout (row-major, read sequentially).
    fn widen_rows(&self, src: &[i32], pad_to: usize) -> Vec<f64> {
        let Shape { k, g, gp, kp, .. } = *self;
        let rows = src.len().checked_div(k).unwrap_or(0);
        let mut out = Vec::with_capacity(rows.next_multiple_of(pad_to) * kp);
        for row in src.chunks_exact(k.max(1)) {
            if gp == g {
                // Only the last group can be short: its padding ends the row.
                out.extend(row.iter().map(|&v| v as f64));
                out.resize(out.len() + kp - k, 0.0);
            } else {
                for group in row.chunks(g) {
                    out.extend(group.iter().map(|&v| v as f64));
                    out.resize(out.len() + gp - group.len(), 0.0);
                }
            }
        }
        out.resize(rows.next_multiple_of(pad_to) * kp, 0.0);
        out
    }

    /// Rows of `k` mantissas (`src`) as f64, padded with zero rows to whole tiles of `tile`
    /// rows, each tile stored column-chunk-major (`[kp / LANES, tile, LANES]`): the
    /// activations' layout, so that the micro-kernel reads a token tile as one sequential
    /// stream (`tile` rows `kp` apart would share cache sets when kp·8 is a multiple of 4 KiB).
    fn widen_tiles(&self, src: &[i32], tile: usize) -> Vec<f64> {
        let Shape { k, g, gp, kp, .. } = *self;
        let rows = src.len().checked_div(k).unwrap_or(0);
        let mut out = vec![0f64; rows.next_multiple_of(tile) * kp];
        // Tiles are independent: widen them in parallel (a block's tokens are widened once
        // for all its weight rows, and this would otherwise be serial).
        out.par_chunks_mut(tile * kp.max(1)).enumerate().for_each(|(ti, dst)| {
            for (r, row) in src.chunks_exact(k.max(1)).skip(ti * tile).take(tile).enumerate() {
                for (gi, group) in row.chunks(g).enumerate() {
                    for (j, chunk) in group.chunks(LANES).enumerate() {
                        let at = ((gi * gp / LANES + j) * tile + r) * LANES;
                        for (d, &v) in dst[at..at + chunk.len()].iter_mut().zip(chunk) {
                            *d = v as f64;
                        }
                    }
                }
            }
        });
        out
    }

    /// `[row tiles, gpr, LANES]`: each group's exponent above its row's smallest (0..=16), lane
    /// l holding row l % ROW_TILE of the tile; padding rows get 0.
    fn shifts(&self, w: &GroupFixed, re: &[i32], rows: std::ops::Range<usize>) -> Vec<i64> {
        let gpr = self.gpr;
        let mut out = vec![0i64; rows.len().div_ceil(ROW_TILE) * gpr * LANES];
        for (lr, r) in rows.enumerate() {
            for gi in 0..gpr {
                let s = w.exponents[r * gpr + gi] - re[r];
                debug_assert!((0..=crate::fixed::tensor::MATMUL_MAX_SPREAD).contains(&s));
                for l in (lr % ROW_TILE..LANES).step_by(ROW_TILE) {
                    out[((lr / ROW_TILE) * gpr + gi) * LANES + l] = s as i64;
                }
            }
        }
        out
    }
}

/// One block's widened operands: `a` in tiles of TOK_TILE tokens (`Shape::widen_tiles`),
/// `w` in rows padded to whole tiles of ROW_TILE (`Shape::widen_rows`), and its `shifts`.
struct Operands<'a> {
    shape: &'a Shape,
    a: &'a [f64],
    w: &'a [f64],
    shifts: &'a [i64],
}

impl Operands<'_> {
    /// Adds `v` to sum (t, r) of the block, `out[t][r]`; tiles' padding (t or r outside
    /// `out`) is dropped.
    fn add(out: &mut [&mut [i64]], t: usize, r: usize, v: i64) {
        if let Some(dst) = out.get_mut(t).and_then(|row| row.get_mut(r)) {
            *dst += v;
        }
    }

    /// The micro-kernel in plain Rust, one token of the tile at a time (few enough
    /// accumulators for any target's registers); multiply then add, both exact.
    fn kernel_portable(&self, out: &mut [&mut [i64]]) {
        let Shape { gpr, gp, kp, .. } = *self.shape;
        let (ntp, nrp) = (self.a.len() / kp.max(1), self.w.len() / kp.max(1));
        for t in 0..ntp.min(out.len()) {
            let (a, at) = (&self.a[(t / TOK_TILE) * TOK_TILE * kp..][..TOK_TILE * kp], (t % TOK_TILE) * LANES);
            for q in 0..nrp / ROW_TILE {
                let w = &self.w[q * ROW_TILE * kp..][..ROW_TILE * kp];
                let mut iacc = [0i64; ROW_TILE];
                for gi in 0..gpr {
                    let mut acc = [[0f64; LANES]; ROW_TILE];
                    for cc in gi * gp / LANES..(gi + 1) * gp / LANES {
                        let av = &a[cc * TOK_TILE * LANES + at..][..LANES];
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let wv = &w[r * kp + cc * LANES..][..LANES];
                            for l in 0..LANES {
                                acc_r[l] += av[l] * wv[l];
                            }
                        }
                    }
                    let sh = &self.shifts[(q * gpr + gi) * LANES..][..ROW_TILE];
                    for ((iacc_r, acc_r), &s) in iacc.iter_mut().zip(&acc).zip(sh) {
                        // An integer of magnitude <= 2^38: `as` converts it exactly.
                        *iacc_r += (acc_r.iter().sum::<f64>() as i64) << s;
                    }
                }
                for (r, &v) in iacc.iter().enumerate() {
                    Self::add(out, t, q * ROW_TILE + r, v);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, Operands, ROW_TILE, Shape, TOK_TILE};
    use std::arch::x86_64::*;

    /// Padded columns per pass of the AVX2 kernel over a block: a token tile's share
    /// (TOK_TILE × 640 f64, 30 KiB) stays in L1 while the block's row tiles stream past it.
    const COLS_PER_PASS: usize = 640;

    /// [Σ x0, Σ x1, Σ x2, Σ x3] (lane sums; exact, as every value is an integer <= 2^38).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum4(x: &[__m256d; 4]) -> __m256d {
        let t0 = _mm256_hadd_pd(x[0], x[1]); // [x0 01, x1 01, x0 23, x1 23]
        let t1 = _mm256_hadd_pd(x[2], x[3]); // [x2 01, x3 01, x2 23, x3 23]
        _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20), _mm256_permute2f128_pd(t0, t1, 0x31))
    }

    /// Integer-valued f64 lanes with |v| < 2^51 to i64: adding 1.5·2^52 puts v + 2^51 in the
    /// low mantissa bits (the sum lies in [2^52, 2^53), where the ulp is 1, so it is exact);
    /// subtracting the magic's bit pattern leaves v.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn to_i64(v: __m256d) -> __m256i {
        let magic = _mm256_set1_pd(6755399441055744.0); // 2^52 + 2^51
        _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(v, magic)), _mm256_castpd_si256(magic))
    }

    /// `Operands::kernel_portable`, a tile of TOK_TILE × ROW_TILE at a time, in passes over
    /// COLS_PER_PASS columns (whole groups), each adding its i64 sums into `out` (zeroed).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel(op: &Operands, out: &mut [&mut [i64]]) {
        const SUMS: usize = TOK_TILE * ROW_TILE / LANES;
        let Shape { gpr, gp, kp, .. } = *op.shape;
        let (ntp, nrp) = (op.a.len() / kp.max(1), op.w.len() / kp.max(1));
        // Every access below stays inside these bounds (tiles are whole by construction).
        assert!(ntp.is_multiple_of(TOK_TILE) && nrp.is_multiple_of(ROW_TILE) && gp.is_multiple_of(LANES));
        assert!(op.a.len() == ntp * kp && op.w.len() == nrp * kp && op.shifts.len() == nrp / ROW_TILE * gpr * LANES);
        let sh = op.shifts.as_ptr();
        // Passes of (nearly) equal size: few groups in a pass would spend more on tile set-up.
        let passes = kp.div_ceil(COLS_PER_PASS).max(1);
        let groups_per_pass = gpr.div_ceil(passes).max(1);
        for g0 in (0..gpr).step_by(groups_per_pass) {
            for tt in (0..ntp).step_by(TOK_TILE) {
                // SAFETY: tile starts, within `a` and `w`.
                let a = unsafe { op.a.as_ptr().add(tt * kp) };
                for q in 0..nrp / ROW_TILE {
                    let w = unsafe { op.w.as_ptr().add(q * ROW_TILE * kp) };
                    let mut iacc = [_mm256_setzero_si256(); SUMS];
                    for gi in g0..(g0 + groups_per_pass).min(gpr) {
                        let mut acc = [[_mm256_setzero_pd(); ROW_TILE]; TOK_TILE];
                        for cc in gi * gp / LANES..(gi + 1) * gp / LANES {
                            // SAFETY: cc < kp / LANES: inside the tiles (TOK_TILE·kp and ROW_TILE·kp).
                            unsafe {
                                let wv: [__m256d; ROW_TILE] =
                                    std::array::from_fn(|r| _mm256_loadu_pd(w.add(r * kp + cc * LANES)));
                                for (t, acc_t) in acc.iter_mut().enumerate() {
                                    let av = _mm256_loadu_pd(a.add((cc * TOK_TILE + t) * LANES));
                                    for (acc_tr, &wr) in acc_t.iter_mut().zip(&wv) {
                                        // Exact: products <= 2^32, partial sums <= 2^38.
                                        *acc_tr = _mm256_fmadd_pd(av, wr, *acc_tr);
                                    }
                                }
                            }
                        }
                        // SAFETY: (q*gpr + gi + 1) * LANES <= shifts.len().
                        let s = unsafe { _mm256_loadu_si256(sh.add((q * gpr + gi) * LANES) as *const __m256i) };
                        for (j, iacc_j) in iacc.iter_mut().enumerate() {
                            let v =
                                std::array::from_fn(|l| acc[(j * LANES + l) / ROW_TILE][(j * LANES + l) % ROW_TILE]);
                            // Group sums (<= 2^38) shifted by <= 16, summed in i64 as the reference.
                            *iacc_j = _mm256_add_epi64(*iacc_j, _mm256_sllv_epi64(to_i64(hsum4(&v)), s));
                        }
                    }
                    for (j, v) in iacc.iter().enumerate() {
                        let mut lanes = [0i64; LANES];
                        // SAFETY: `lanes` holds LANES i64.
                        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *v) };
                        for (l, &s) in lanes.iter().enumerate() {
                            let i = j * LANES + l;
                            Operands::add(out, tt + i / ROW_TILE, q * ROW_TILE + i % ROW_TILE, s);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::linear::{matmul_rows, row_exps};
    use crate::fixed::tensor::{IngestParams, MATMUL_MAX_ACT, MATMUL_MAX_COLS, matmul_max_spread};

    use crate::test_rng::SplitMix64 as Rng;

    impl Rng {
        /// Uniform in -lim..=lim.
        fn sym(&mut self, lim: i64) -> i32 {
            ((self.next() % (2 * lim as u64 + 1)) as i64 - lim) as i32
        }
    }

    #[derive(Clone, Copy)]
    enum Fill {
        Random,
        /// ±(largest magnitude) with random signs.
        Extreme,
        /// +largest everywhere (every product +2^32).
        Max,
    }

    fn fill(rng: &mut Rng, f: Fill, lim: i32, len: usize) -> Vec<i32> {
        (0..len)
            .map(|_| match f {
                Fill::Random => {
                    let bits = 1 + rng.next() % 31; // mixed magnitudes, all within `lim`
                    rng.sym(lim as i64 >> (31 - bits).min(30))
                }
                Fill::Extreme => {
                    if rng.next() & 1 == 0 {
                        lim
                    } else {
                        -lim
                    }
                }
                Fill::Max => lim,
            })
            .collect()
    }

    /// Weights with per-group exponents spanning exactly `matmul_max_spread(cols)` in every
    /// row (when the row has 2+ groups); `zero_groups` blanks some groups.
    fn weights(rng: &mut Rng, rows: usize, cols: usize, g: u32, f: Fill, zero_groups: bool) -> GroupFixed {
        let params = IngestParams { group_size: g, mantissa_bits: 16 };
        let spread = matmul_max_spread(cols);
        let gpr = cols.div_ceil(g as usize);
        let mut mantissas = fill(rng, f, 1 << 15, rows * cols);
        let mut exponents = Vec::with_capacity(rows * gpr);
        for r in 0..rows {
            let base = rng.sym(40);
            for gi in 0..gpr {
                let e = match gi {
                    0 => base,
                    1 => base + spread,
                    _ => base + (rng.next() % (spread as u64 + 1)) as i32,
                };
                exponents.push(e);
                if zero_groups && rng.next().is_multiple_of(3) {
                    let c0 = r * cols + gi * g as usize;
                    mantissas[c0..(c0 + g as usize).min((r + 1) * cols)].fill(0);
                }
            }
        }
        GroupFixed { rows, cols, params, exponents, mantissas }
    }

    fn acts(rng: &mut Rng, tokens: usize, width: usize, f: Fill) -> TokenFixed {
        let mants = fill(rng, f, MATMUL_MAX_ACT, tokens * width);
        TokenFixed { tokens, width, exps: vec![0; tokens], mants }
    }

    fn reference(x: &TokenFixed, w: &GroupFixed, re: &[i32]) -> Vec<i64> {
        let mut out = vec![0i64; x.tokens * w.rows];
        for (t, row) in out.chunks_mut(w.rows.max(1)).enumerate() {
            matmul_rows(x, w, re, t, row);
        }
        out
    }

    /// Both kernels and the public entries against the reference, exactly.
    fn check(x: &TokenFixed, w: &GroupFixed) {
        crate::backend::check_matmul_args(x, w).unwrap();
        let re = row_exps(w);
        let want = reference(x, w, &re);
        let what = format!("tokens {} k {} n {} g {}", x.tokens, w.cols, w.rows, w.params.group_size);
        assert_eq!(blocked(x, w, &re, false), want, "portable kernel: {what}");
        if simd_available() {
            assert_eq!(blocked(x, w, &re, true), want, "avx2 kernel: {what}");
        }
        if let Some(sums) = crate::backend::cpu::matmul_vnni::matmul(x, w, &re) {
            assert_eq!(sums, want, "vnni kernel: {what}");
        }
        use crate::backend::cpu::matmul_amx;
        let p = matmul_amx::Packed::new(w, &re);
        // The AMX kernel's packing, slices and combination with the tiles emulated (any CPU).
        assert_eq!(matmul_amx::matmul_packed_emulated(x, w, &p), want, "amx kernel (emulated tiles): {what}");
        if matmul_amx::available() {
            assert_eq!(matmul_amx::matmul_packed(x, w, &p), want, "amx kernel: {what}");
        }
        for kernel in [Kernel::Portable, Kernel::Avx2F64, Kernel::Avx2, Kernel::Vnni] {
            assert_eq!(matmul_with(x, w, &re, kernel), want, "matmul_with({kernel:?}): {what}");
        }
        assert_eq!(matmul(x, w, &re), want, "matmul: {what}");
    }

    #[test]
    fn kernel_choice_follows_the_cpu() {
        assert!(Kernel::Portable.available());
        let best = Kernel::best();
        assert!(best.available());
        if crate::backend::cpu::matmul_vnni::available() {
            assert_eq!(best, Kernel::Vnni);
        } else if crate::backend::cpu::matmul_avx2::available() {
            assert_eq!(best, Kernel::Avx2);
        } else {
            assert!(
                crate::backend::cpu::matmul_vnni::matmul(
                    &TokenFixed { tokens: 0, width: 0, exps: vec![], mants: vec![] },
                    &GroupFixed {
                        rows: 0,
                        cols: 0,
                        params: IngestParams { group_size: 1, mantissa_bits: 16 },
                        exponents: vec![],
                        mantissas: vec![]
                    },
                    &[]
                )
                .is_none()
            );
        }
    }

    #[test]
    fn matches_reference_with_weights_at_plus_and_minus_2_15() {
        // +2^15 does not fit i16 (the VNNI kernel adds its products apart), -2^15 does; both
        // in many places (first and last columns of groups, short last groups, odd group
        // sizes, row and token blocks past the first), against activations at ±2^17 and at
        // the edges of the 9-bit split (511, 512, -1, -512, -513).
        let mut rng = Rng(4);
        let edges = [MATMUL_MAX_ACT, -MATMUL_MAX_ACT, 511, 512, -1, -512, -513, MATMUL_MAX_ACT - 1, 0];
        let shapes: &[(usize, usize, usize, u32)] = &[
            // (tokens, k, n, group size)
            (1, 1, 1, 1),
            (1, 64, 1, 64),
            (2, 1, 3, 1),
            (3, 7, 2, 7),
            (5, 65, 33, 64),
            (9, 131, 17, 7),
            (13, 333, 97, 64),
            (97, 129, 200, 64),
            (130, 64, 110, 64),
            (4, 128 * 64, 3, 64),
            (7, 1000, 1, 63),
        ];
        for &(tokens, k, n, g) in shapes {
            for density in [2, 5, 50] {
                let mut w = weights(&mut rng, n, k, g, Fill::Random, false);
                for m in w.mantissas.iter_mut() {
                    match rng.next() % density {
                        0 => *m = 1 << 15,
                        1 => *m = -(1 << 15),
                        _ => {}
                    }
                }
                let mut x = acts(&mut rng, tokens, k, Fill::Random);
                for a in x.mants.iter_mut() {
                    if rng.next().is_multiple_of(3) {
                        *a = edges[(rng.next() % edges.len() as u64) as usize];
                    }
                }
                check(&x, &w);
            }
        }
        // Every weight +2^15 against every activation ±2^17: each product is a correction.
        for (tokens, k, n, g) in [(3, 70, 5, 64), (1, 9, 2, 4), (8, 64 * 3, 40, 64)] {
            let mut w = weights(&mut rng, n, k, g, Fill::Max, false);
            w.mantissas.fill(1 << 15);
            check(&acts(&mut rng, tokens, k, Fill::Extreme), &w);
            check(&acts(&mut rng, tokens, k, Fill::Max), &w);
        }
    }

    #[test]
    fn matches_reference_on_random_shapes() {
        let mut rng = Rng(1);
        let shapes: &[(usize, usize, usize, u32)] = &[
            // (tokens, k, n, group size)
            (1, 1, 1, 1),
            (1, 64, 1, 64),
            (1, 577, 3, 64),
            (2, 7, 5, 7),
            (3, 50, 4, 7),
            (4, 13, 9, 1),
            (5, 130, 66, 64),
            (97, 66, 65, 64),
            (100, 201, 130, 32),
            (7, 127, 17, 3),
            (2, 128 * 64, 2, 64),
            (193, 576, 70, 64),
        ];
        for &(tokens, k, n, g) in shapes {
            for f in [Fill::Random, Fill::Extreme] {
                for zero_groups in [false, true] {
                    let w = weights(&mut rng, n, k, g, f, zero_groups);
                    check(&acts(&mut rng, tokens, k, f), &w);
                }
            }
        }
    }

    #[test]
    fn matches_reference_at_the_bounds() {
        // Every product +2^32 (or ±2^32), full groups of 64, spread exactly 16 with the
        // largest exponent on every group but the first: sums near the 2^61 limit.
        let mut rng = Rng(2);
        for (k, g) in [(128 * 64, 64), (64 * 64 + 5, 64), (7 * 9 + 3, 7), (11, 1)] {
            for f in [Fill::Max, Fill::Extreme] {
                let mut w = weights(&mut rng, 9, k, g, f, false);
                let gpr = w.groups_per_row();
                for r in 0..w.rows {
                    for gi in 0..gpr {
                        w.exponents[r * gpr + gi] = if gi == 0 { -3 } else { 13 };
                    }
                }
                let x = acts(&mut rng, 5, k, f);
                check(&x, &w);
                let neg = TokenFixed { mants: x.mants.iter().map(|m| -m).collect(), ..x };
                check(&neg, &w);
            }
        }
    }

    #[test]
    fn matches_reference_where_amx_tile_sums_are_largest() {
        // The AMX kernel's i32 tile sums peak with every operand byte large and one sign:
        // activations 2^17 - 1 (bytes 255, 255, 1), 2^17 and -2^17; weights 2^15 - 1 and
        // -2^15 shifted by up to 7 (three weight bytes), 8 or 16 (four) in every row; 8192
        // columns (its limit); a partial row tile and a partial token tile.
        let mut rng = Rng(5);
        let k = 128 * 64;
        for top in [7usize, 8, 16] {
            let mut w = weights(&mut rng, 20, k, 64, Fill::Random, false);
            let gpr = w.groups_per_row();
            for r in 0..w.rows {
                for gi in 0..gpr {
                    w.exponents[r * gpr + gi] = (gi % (top + 1)) as i32 - 5;
                }
            }
            for (i, m) in w.mantissas.iter_mut().enumerate() {
                *m = if i % 3 == 0 { -(1 << 15) } else { (1 << 15) - 1 };
            }
            for a in [MATMUL_MAX_ACT - 1, MATMUL_MAX_ACT, -MATMUL_MAX_ACT] {
                check(&TokenFixed { tokens: 17, width: k, exps: vec![0; 17], mants: vec![a; 17 * k] }, &w);
            }
            check(&acts(&mut rng, 33, k, Fill::Extreme), &w);
        }
    }

    #[test]
    fn matches_reference_on_wide_rows() {
        // Inner dimensions past 8192 up to MATMUL_MAX_COLS (the AMX kernel's slices of 8192
        // columns: one more slice at 8193, a short last slice at 14336 and 65531, eight full
        // ones at 65536), at the widest spread each width allows: every product +2^32 with
        // every group but the first at the top exponent (sums just below 2^61), ±2^17 against
        // ±2^15 / -2^15, and random values. Few tokens and rows: ~10^7 products per case.
        let mut rng = Rng(6);
        for &(k, tokens, n) in
            &[(8193usize, 3usize, 5usize), (14336, 17, 3), (28672, 2, 3), (65531, 2, 2), (65536, 3, 17)]
        {
            assert!(k <= MATMUL_MAX_COLS);
            let spread = matmul_max_spread(k);
            for f in [Fill::Max, Fill::Extreme, Fill::Random] {
                let mut w = weights(&mut rng, n, k, 64, f, false);
                let gpr = w.groups_per_row();
                if !matches!(f, Fill::Random) {
                    for r in 0..n {
                        for gi in 0..gpr {
                            w.exponents[r * gpr + gi] = if gi == 0 { -3 } else { spread - 3 };
                        }
                    }
                }
                if matches!(f, Fill::Extreme) {
                    for (i, m) in w.mantissas.iter_mut().enumerate() {
                        if i % 5 == 0 {
                            *m = -(1 << 15);
                        }
                    }
                }
                crate::backend::check_matmul_weights(&w).unwrap();
                let x = acts(&mut rng, tokens, k, f);
                check(&x, &w);
                if matches!(f, Fill::Max) {
                    // The largest sums the bound allows: within a factor 2^-(S) of 2^61.
                    let re = row_exps(&w);
                    let top = reference(&x, &w, &re).iter().map(|v| v.unsigned_abs()).max().unwrap();
                    assert!(top < 1 << 61 && top >= 1 << (60 - (16 - spread)), "k {k}: largest sum {top}");
                    let neg = TokenFixed { mants: x.mants.iter().map(|m| -m).collect(), ..x };
                    check(&neg, &w);
                }
            }
        }
        // One more than the spread is refused, as is one column beyond the limit.
        let mut w = weights(&mut rng, 2, 16384 + 1, 64, Fill::Random, false);
        w.exponents[1] = w.exponents[0] + matmul_max_spread(16384 + 1) + 1;
        assert!(crate::backend::check_matmul_weights(&w).is_err());
        let w = weights(&mut rng, 1, MATMUL_MAX_COLS + 1, 64, Fill::Random, false);
        assert!(crate::backend::check_matmul_weights(&w).is_err());
    }

    #[test]
    fn matches_reference_where_wide_amx_slices_are_largest() {
        // As `matches_reference_where_amx_tile_sums_are_largest`, over eight slices of 8192
        // columns (65536): each slice's C_s at its largest, the slices' i64 sums combined.
        let mut rng = Rng(7);
        let k = MATMUL_MAX_COLS;
        let spread = matmul_max_spread(k) as usize;
        for top in [7usize, spread] {
            let mut w = weights(&mut rng, 17, k, 64, Fill::Random, false);
            let gpr = w.groups_per_row();
            for r in 0..w.rows {
                for gi in 0..gpr {
                    w.exponents[r * gpr + gi] = (gi % (top + 1)) as i32 - 5;
                }
            }
            for (i, m) in w.mantissas.iter_mut().enumerate() {
                *m = if i % 3 == 0 { -(1 << 15) } else { (1 << 15) - 1 };
            }
            for a in [MATMUL_MAX_ACT - 1, -MATMUL_MAX_ACT] {
                check(&TokenFixed { tokens: 2, width: k, exps: vec![0; 2], mants: vec![a; 2 * k] }, &w);
            }
        }
    }

    #[test]
    fn handles_empty_and_zero_inputs() {
        let mut rng = Rng(3);
        for (tokens, k, n) in [(0, 8, 4), (3, 8, 0), (2, 0, 3), (0, 0, 0)] {
            check(&acts(&mut rng, tokens, k, Fill::Random), &weights(&mut rng, n, k, 4, Fill::Random, false));
        }
        let w = weights(&mut rng, 6, 70, 64, Fill::Random, false);
        let x = TokenFixed { tokens: 4, width: 70, exps: vec![0; 4], mants: vec![0; 280] };
        check(&x, &w);
        let z = GroupFixed { mantissas: vec![0; 6 * 70], ..w };
        check(&acts(&mut rng, 4, 70, Fill::Extreme), &z);
    }
}
