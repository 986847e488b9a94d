//! CPU twins of shaders/quantize.wgsl and shaders/dequantize.wgsl.
//!
//! The search (codec version 1), per group of ingested mantissas X (|X| <= 2^15, units
//! 2^e_g), bits b, qmax = 2^b - 1, importance h_j in [0, 2^12]:
//!   range = max(0, max X) - min(0, min X); all-zero group → c = 0, z = 0, q = 0.
//!   t*    = floor(range * 2^8 / qmax)            ideal step, 8 fractional bits
//!   for each scale code c = 0..=255 (ascending step), its step in the same units
//!     t(c)  = (16 + c & 15) * 2^(E + c >> 4 - e_g + 8), rounded half-even when the shift
//!             is negative; candidates are those with t*/2 <= t(c) <= 2 t*
//!             (none: c = 0, the smallest step, with t saturated at 2^30)
//!     z0 = clamp(round(-min(0, min X) * 2^8 / t), 0, qmax); z in {z0-1, z0, z0+1} ∩ [0, qmax]
//!     r_j = round(X_j * 2^8 / t); d_j = clamp(r_j, -z, qmax - z); q_j = d_j + z
//!     err_j = round((X_j * 2^8 - t * d_j) / 2^8); cost = Σ h_j err_j^2 (exact, 64-bit)
//!   keep the first (c, z) of least cost. All roundings are half to even.
//! Bounds: |X * 2^8| <= 2^23; |t d_j| <= |X 2^8| + t/2 when d_j != 0, and t <= 2|X 2^8| then,
//! so |err| < 2^25 before and <= 2^17 after the shift; h err <= 2^29 fits an i32, h err^2
//! <= 2^46, and a sum over <= 2^12 elements < 2^58.

use crate::fixed::quant::{Overlay, QuantParams, QuantTensor, group_range, step};
use crate::fixed::round::shr_round;

// Implementation (the definition above, bit for bit; the tests below compare it with the
// plain per-z, integer-division version it replaced): each candidate step t makes one pass
// over the group that computes r_j once and the costs of all three z (`costs`), in f64
// arithmetic that is exact (proofs at `div_round` and `costs`), with no branch on the
// element, so the pass vectorises; octaves of codes without a candidate are skipped whole;
// no allocation.

/// 1.5 · 2^52 = 2^52 + 2^51.
const RNE_MAGIC: f64 = 6_755_399_441_055_744.0;

/// v rounded to an integer k half to even, for −2^31 <= v < 2^31 − 1/2 (so k fits an i32).
///
/// v + RNE_MAGIC lies in [2^52, 2^53), where consecutive f64 are 1 apart, so the addition
/// rounds v half to even (IEEE round to nearest even, the only rounding Rust uses; RNE_MAGIC
/// is even, so the tie rule picks the same k as for v alone): the sum is exactly
/// 2^52 + (2^51 + k), whose 52-bit mantissa field is 2^51 + k, and its low 32 bits are k in
/// two's complement. Reading the bits (not `as i32`, whose NaN and saturation handling does
/// not vectorise) keeps the loops branch-free.
#[inline(always)]
fn rne_i32(v: f64) -> i32 {
    (v + RNE_MAGIC).to_bits() as i32
}

/// Signed n / d rounded half to even, d > 0.
///
/// Exact for every i32 n and d > 0, with no integer division (which does not vectorise):
/// n and d are exact in f64, and f = n / d is rounded once, so |f − n/d| <= 2^−53 |n/d|
/// < 2^−22 / d. Rounding to an integer can only change across a half-integer k + 1/2. If
/// n/d is one, it is exact in f64 (|n/d| <= 2^31 with one fractional bit), so f = n/d.
/// Otherwise |n/d − (k + 1/2)| = |2n − (2k + 1) d| / 2d >= 1 / 2d > |f − n/d| for every k:
/// f lies on the same side of each half-integer as n/d and is none itself. Either way
/// rne(f) = rne(n/d); `rne_i32` computes it exactly, since −2^31 <= n/d <= 2^31 − 1 and
/// rounding to f64 is monotone and keeps both (representable) bounds.
#[inline(always)]
pub fn div_round(n: i32, d: i32) -> i32 {
    debug_assert!(d > 0);
    rne_i32(n as f64 / d as f64)
}

/// Step of code `c` for a group with exponent `e_g`, in units of 2^(e_g - 8), saturated to
/// [0, 2^30].
#[inline]
pub fn step_fx(c: u32, base_exp: i32, e_g: i32) -> u32 {
    let mant = 16 + (c & 15);
    let sh = base_exp + (c >> 4) as i32 - e_g + 8;
    if sh >= 26 {
        1 << 30
    } else if sh >= 0 {
        mant << sh
    } else if sh > -32 {
        shr_round(mant as i64, (-sh) as u32) as u32
    } else {
        0
    }
}

/// 2^52: for an integer 0 <= v < 2^52, v + P is exact and its bits are P's bits + v (the
/// exponent field stays that of 2^52; the 52-bit mantissa field holds v).
const P: f64 = 4_503_599_627_370_496.0;

/// v rounded to an integer half to even, as an f64, for |v| <= 2^51 (see `RNE_MAGIC`; the
/// subtraction is exact).
#[inline(always)]
fn rne_f64(v: f64) -> f64 {
    (v + RNE_MAGIC) - RNE_MAGIC
}

/// Costs Σ h_j err_j^2 of the zero points zs[0..3] (each in [0, qmax]) at step t
/// (1 <= t <= 2^30), in one pass that computes each r_j once and then its three errors.
/// Everything is done in f64, where every value is an integer or an integer / 2^8 small
/// enough to be exact, and every rounding is the definition's:
///   t8 = t / 2^8, lo = −z t8, hi = (qmax − z) t8: exact (|t z| < 2^38).
///   X_j / t8 has the real value X_j 2^8 / t, so it is the same correctly rounded quotient
///     as `div_round`'s, and r_j = rne(X_j / t8) exactly (proof at `div_round`).
///   a = r_j t8 = t r_j / 2^8 exactly (|t r_j| <= |X_j 2^8| + t/2 < 2^31).
///   clamp(a, lo, hi) = t clamp(r_j, −z, qmax − z) / 2^8 = t d_j / 2^8 (t > 0 keeps order;
///     a selection, no rounding).
///   X_j − t d_j / 2^8 = err_j / 2^8 exactly: |err_j| < 2^25 (shown below), so it needs at
///     most 25 significant bits; e = rne(err_j / 2^8) is the definition's round(err_j / 2^8).
///   e^2 h_j <= 2^46 is an exact integer (both products < 2^53), and the bits of
///     e^2 h_j + 2^52 are bits(2^52) + e^2 h_j (`P`): summed as u64 with wrapping adds,
///     which are associative, so any vectorised order gives Σ h e^2 + len · bits(2^52)
///     mod 2^64, and the true sum is < 2^64 (the header's bound).
/// Only the division and the additions in `rne_f64` round; every product is exact, so even
/// a fused multiply-add (which Rust never makes on its own) could not change a result.
/// The err bound: since −z <= 0 <= qmax − z the clamp only moves d_j towards 0, so
/// |t d_j| <= |t r_j| <= |X_j 2^8| + t/2 and, when r_j != 0, t <= 2 |X_j 2^8|; so
/// |t d_j| <= 2^24 and |err_j| < 2^25 for every t. No branch depends on the element, so the
/// loop vectorises (plain SSE2 too: f64 min/max/mul/add are all there, unlike i32 min and
/// multiply).
#[inline(always)]
fn costs(x: &[i32], h: &[u32], t: i32, zs: [i32; 3], qmax: i32) -> [u64; 3] {
    let h = &h[..x.len()];
    let t8 = t as f64 / 256.0;
    let lo = zs.map(|z| -z as f64 * t8);
    let hi = zs.map(|z| (qmax - z) as f64 * t8);
    let (mut c0, mut c1, mut c2) = (0u64, 0u64, 0u64);
    // A plain indexed loop (no iterator adaptor whose code may be built without the
    // dispatching function's target features).
    for j in 0..x.len() {
        let xf = x[j] as f64;
        let hf = h[j] as i32 as f64; // h <= 2^12
        let a = rne_f64(xf / t8) * t8;
        let term = |lo: f64, hi: f64| {
            let d = if a < lo { lo } else { a };
            let d = if d > hi { hi } else { d };
            let e = rne_f64(xf - d);
            (e * e * hf + P).to_bits()
        };
        c0 = c0.wrapping_add(term(lo[0], hi[0]));
        c1 = c1.wrapping_add(term(lo[1], hi[1]));
        c2 = c2.wrapping_add(term(lo[2], hi[2]));
    }
    let bias = (x.len() as u64).wrapping_mul(P.to_bits());
    [c0.wrapping_sub(bias), c1.wrapping_sub(bias), c2.wrapping_sub(bias)]
}

simd_dispatch! {
    /// Quantize one group: returns (scale code, zero point) and writes its codes.
    pub fn quantize_group(x: &[i32], e_g: i32, h: &[u32], p: QuantParams, base_exp: i32, codes: &mut [u8]) -> (u8, u8) {
        search(x, e_g, h, p, base_exp, codes)
    }
}

/// Candidate code c with step t: its three zero points, in order, against `best`
/// ((cost, c, z, t) of the first least cost so far). A function, not a closure, so that it
/// is inlined into each build of `quantize_group` with that build's target features.
#[inline(always)]
fn consider(best: &mut Option<(u64, u32, i32, i32)>, x: &[i32], h: &[u32], qmax: i32, xmin: i32, c: u32, t: u32) {
    let t = t as i32;
    let z0 = div_round(-xmin << 8, t).clamp(0, qmax);
    // z0 − 1 < 0 or z0 + 1 > qmax is replaced by z0 itself: that repeats z0's cost right
    // before or after z0's own, which cannot win the strict comparison — the same as
    // skipping it. The order (z0 − 1, z0, z0 + 1) is kept.
    let zs = [(z0 - 1).max(0), z0, (z0 + 1).min(qmax)];
    let cost = costs(x, h, t, zs, qmax);
    for (&cost, &z) in cost.iter().zip(&zs) {
        if best.is_none_or(|b| cost < b.0) {
            *best = Some((cost, c, z, t));
        }
    }
}

/// The search of the header (the body of `quantize_group`, built once per instruction set).
#[inline(always)]
fn search(x: &[i32], e_g: i32, h: &[u32], p: QuantParams, base_exp: i32, codes: &mut [u8]) -> (u8, u8) {
    let qmax = (1i32 << p.bits) - 1;
    let range = group_range(x) as i32;
    if range == 0 {
        codes.fill(0);
        return (0, 0);
    }
    let tstar = (range << 8) / qmax;
    let xmin = x.iter().copied().min().unwrap().min(0);
    let mut best: Option<(u64, u32, i32, i32)> = None; // (cost, c, z, t)
    let mut any = false;
    for oct in 0..16u32 {
        // Within an octave the shift is fixed and step_fx is non-decreasing in the mantissa
        // (16..=31; a rounding shift is monotone; saturation and 0 are constant), so an octave
        // whose largest step is below t*/2, or whose smallest is above 2 t*, has no candidate.
        if 2 * step_fx((oct << 4) | 15, base_exp, e_g) < tstar as u32
            || step_fx(oct << 4, base_exp, e_g) > 2 * tstar as u32
        {
            continue;
        }
        for c in oct << 4..(oct + 1) << 4 {
            let t = step_fx(c, base_exp, e_g);
            if t == 0 || 2 * t < tstar as u32 || t > 2 * tstar as u32 {
                continue;
            }
            any = true;
            consider(&mut best, x, h, qmax, xmin, c, t);
        }
    }
    if !any {
        let t = step_fx(0, base_exp, e_g).max(1);
        consider(&mut best, x, h, qmax, xmin, 0, t);
    }
    let (_, c, z, t) = best.expect("at least one candidate");
    let codes = &mut codes[..x.len()];
    for j in 0..x.len() {
        codes[j] = (div_round(x[j] << 8, t).clamp(-z, qmax - z) + z) as u8;
    }
    (c as u8, z as u8)
}

/// Marks a table entry whose value overflows the output dtype (no encoding is all ones:
/// that would be a NaN, which `encode` never produces).
const OVERFLOW: u32 = u32::MAX;

/// Output bits for every code q of one (scale code, zero point) pair: a group holds
/// 2^bits distinct values at most, so reconstruction is a table lookup per weight. The
/// tables are built with `DType::encode`, the twin of `encode_float`, so the bits are the
/// kernel's.
pub struct DequantTables {
    /// (scale | zero << 8) → index into `tables`, or u32::MAX when unused
    slot: Vec<u32>,
    tables: Vec<u32>,
    width: usize,
}

impl DequantTables {
    pub fn new(scales: &[u8], zeros: &[u8], bits: u32, base_exp: i32, dtype: crate::dtype::DType) -> Self {
        let width = 1usize << bits;
        let mut slot = vec![u32::MAX; 1 << 16];
        let mut tables = Vec::new();
        for (&s, &z) in scales.iter().zip(zeros) {
            let key = s as usize | (z as usize) << 8;
            if slot[key] != u32::MAX {
                continue;
            }
            slot[key] = (tables.len() / width) as u32;
            let (mant, exp) = step(s, base_exp);
            for q in 0..width as i64 {
                let v = mant as i64 * (q - z as i64);
                tables.push(dtype.encode(v < 0, v.unsigned_abs(), exp).unwrap_or(OVERFLOW));
            }
        }
        DequantTables { slot, tables, width }
    }

    #[inline]
    fn table(&self, s: u8, z: u8) -> &[u32] {
        let i = self.slot[s as usize | (z as usize) << 8] as usize * self.width;
        &self.tables[i..i + self.width]
    }
}

/// Reconstruct rows `[r0, ..)` of a quantized tensor into `out` (little-endian `dtype`
/// bytes). Returns the first element index whose value overflows the dtype.
#[allow(clippy::too_many_arguments)]
pub fn dequantize_rows(
    codes: &[u8],
    scales: &[u8],
    zeros: &[u8],
    cols: usize,
    group_size: usize,
    tables: &DequantTables,
    dtype: crate::dtype::DType,
    r0: usize,
    out: &mut [u8],
) -> Option<usize> {
    let gpr = cols.div_ceil(group_size);
    let esize = dtype.size_bytes();
    let rows = out.len() / (cols * esize).max(1);
    let mut bad = None;
    for lr in 0..rows {
        let row = r0 + lr;
        for g in 0..gpr {
            let c0 = g * group_size;
            let c1 = (c0 + group_size).min(cols);
            let t = tables.table(scales[row * gpr + g], zeros[row * gpr + g]);
            let src = &codes[row * cols + c0..row * cols + c1];
            let dst = &mut out[(lr * cols + c0) * esize..(lr * cols + c1) * esize];
            for (j, &q) in src.iter().enumerate() {
                let bits = t[q as usize];
                if bits == OVERFLOW {
                    bad = bad.or(Some(row * cols + c0 + j));
                    continue;
                }
                if esize == 2 {
                    dst[2 * j..2 * j + 2].copy_from_slice(&(bits as u16).to_le_bytes());
                } else {
                    dst[4 * j..4 * j + 4].copy_from_slice(&bits.to_le_bytes());
                }
            }
        }
    }
    bad
}

/// Reconstruct rows `[r0, ..)` of a quantized tensor with a low-rank overlay into `out`.
/// Per element, exactly (bounds: |D| < 2^13 at exponent eD = E + (c >> 4); |O| < 2^51 at
/// exponent Eo, since |mu U mv| < 2^39, |V| < 2^7 and rank <= 32; with
/// E - 34 <= Eo <= E + 11 the aligned sum below stays under 2^63):
///   D = (16 + c & 15) (q - z),  O = Σ_k (mu_i U_ik mv_k) V_kj,
///   T = D 2^(eD - m) + O 2^(Eo - m) with m = min(eD, Eo), rounded once to `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn dequantize_rows_overlay(
    q: &QuantTensor,
    o: &Overlay,
    dtype: crate::dtype::DType,
    r0: usize,
    out: &mut [u8],
) -> Option<usize> {
    let (cols, g) = (q.cols, q.params.group_size as usize);
    let gpr = q.groups_per_row();
    let esize = dtype.size_bytes();
    let rows = out.len() / (cols * esize).max(1);
    let r = o.rank;
    let mut bad = None;
    let mut a = vec![0i64; r];
    for lr in 0..rows {
        let row = r0 + lr;
        for (k, ak) in a.iter_mut().enumerate() {
            *ak = o.mu[row] as i64 * o.u[row * r + k] as i64 * o.mv[k] as i64;
        }
        for c in 0..cols {
            let gi = row * gpr + c / g;
            let (m, ed) = step(q.scales[gi], q.base_exp);
            let d = m as i64 * (q.codes[row * cols + c] as i64 - q.zeros[gi] as i64);
            let mut ov = 0i64;
            for (k, &ak) in a.iter().enumerate() {
                ov += ak * o.v[k * cols + c] as i64;
            }
            let (t, exp) = if ed >= o.exp { ((d << (ed - o.exp)) + ov, o.exp) } else { (d + (ov << (o.exp - ed)), ed) };
            match dtype.encode(t < 0, t.unsigned_abs(), exp) {
                Some(bits) => {
                    let dst = &mut out[(lr * cols + c) * esize..(lr * cols + c + 1) * esize];
                    if esize == 2 {
                        dst.copy_from_slice(&(bits as u16).to_le_bytes());
                    } else {
                        dst.copy_from_slice(&bits.to_le_bytes());
                    }
                }
                None => bad = bad.or(Some(row * cols + c)),
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- The implementation this file had before the vectorised search, kept verbatim as
    // the reference the new one must equal bit for bit. ----

    /// Signed n / d rounded half to even, d > 0.
    fn div_round_reference(n: i32, d: i32) -> i32 {
        let q = n.div_euclid(d);
        let r = n.rem_euclid(d);
        if 2 * (r as i64) > d as i64 || (2 * r as i64 == d as i64 && q & 1 == 1) { q + 1 } else { q }
    }

    /// Cost of (t, z) and, when `codes` is given, the codes it produces.
    fn evaluate_reference(x: &[i32], h: &[u32], r: &[i32], t: i32, z: i32, qmax: i32, codes: Option<&mut [u8]>) -> u64 {
        let mut cost = 0u64;
        let mut out = codes;
        for j in 0..x.len() {
            let d = r[j].clamp(-z, qmax - z);
            let err = (x[j] << 8) - t * d;
            let e = shr_round(err as i64, 8) as i32;
            cost += (e as i64 * (e * h[j] as i32) as i64) as u64;
            if let Some(c) = out.as_deref_mut() {
                c[j] = (d + z) as u8;
            }
        }
        cost
    }

    /// Quantize one group: returns (scale code, zero point) and writes its codes.
    fn quantize_group_reference(
        x: &[i32],
        e_g: i32,
        h: &[u32],
        p: QuantParams,
        base_exp: i32,
        codes: &mut [u8],
    ) -> (u8, u8) {
        let qmax = (1i32 << p.bits) - 1;
        let range = group_range(x) as i32;
        if range == 0 {
            codes.fill(0);
            return (0, 0);
        }
        let tstar = (range << 8) / qmax;
        let xmin = x.iter().copied().min().unwrap().min(0);
        let mut r = vec![0i32; x.len()];
        let mut best: Option<(u64, u32, i32, i32)> = None; // (cost, c, z, t)
        let mut consider = |c: u32, t: u32, r: &mut Vec<i32>| {
            let t = t as i32;
            for (rj, &xj) in r.iter_mut().zip(x) {
                *rj = div_round_reference(xj << 8, t);
            }
            let z0 = div_round_reference(-xmin << 8, t).clamp(0, qmax);
            for z in [z0 - 1, z0, z0 + 1] {
                if z < 0 || z > qmax {
                    continue;
                }
                let cost = evaluate_reference(x, h, r, t, z, qmax, None);
                if best.is_none_or(|b| cost < b.0) {
                    best = Some((cost, c, z, t));
                }
            }
        };
        let mut any = false;
        for c in 0..256u32 {
            let t = step_fx(c, base_exp, e_g);
            if t == 0 || 2 * t < tstar as u32 || t > 2 * tstar as u32 {
                continue;
            }
            any = true;
            consider(c, t, &mut r);
        }
        if !any {
            let t = step_fx(0, base_exp, e_g).max(1);
            consider(0, t, &mut r);
        }
        let (_, c, z, t) = best.expect("at least one candidate");
        for (rj, &xj) in r.iter_mut().zip(x) {
            *rj = div_round_reference(xj << 8, t);
        }
        evaluate_reference(x, h, &r, t, z, qmax, Some(codes));
        (c as u8, z as u8)
    }

    // ---- Comparisons. ----

    use crate::test_rng::SplitMix64 as Rng;

    impl Rng {
        /// Uniform in lo..=hi.
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next() % (hi - lo + 1) as u64) as i64
        }
    }

    fn check_div(n: i32, d: i32) {
        assert_eq!(div_round(n, d), div_round_reference(n, d), "div_round({n}, {d})");
    }

    #[test]
    fn div_round_dense_grid() {
        for d in 1..=520 {
            for n in -(1 << 12)..=(1 << 12) {
                check_div(n, d);
            }
        }
        // Every n near the search's bounds (|X 2^8| <= 2^23) and around 0, for steps of
        // every size the search can use.
        for d in [1, 2, 3, 4, 5, 6, 7, 8, 255, 256, 257, 4096, 65535, 1 << 16, 1 << 23, (1 << 24) + 1, 1 << 29] {
            for base in [-(1 << 23), 1 << 23, 0, 1 << 22, -(1 << 22)] {
                for n in base - 3000..=base + 3000 {
                    check_div(n, d);
                }
            }
        }
    }

    #[test]
    fn div_round_edges_and_ties() {
        let ns = [
            0,
            1,
            -1,
            2,
            -2,
            1 << 23,
            -(1 << 23),
            (1 << 23) - 1,
            -(1 << 23) + 1,
            (1 << 23) + 1,
            -(1 << 23) - 1,
            1 << 24,
            -(1 << 24),
            i32::MAX,
            i32::MIN,
            i32::MAX - 1,
            i32::MIN + 1,
            1 << 30,
            -(1 << 30),
        ];
        let ds = [1, 2, 3, 4, 7, 8, 255, 256, (1 << 23) - 1, 1 << 23, (1 << 29) + 1, (1 << 30) - 1, 1 << 30, i32::MAX];
        for &n in &ns {
            for &d in &ds {
                check_div(n, d);
            }
        }
        // Exact ties n = (k + 1/2) d, both signs, both parities of k, and their neighbours.
        let mut rng = Rng(0x7e5);
        for _ in 0..200_000 {
            let d = 2 * rng.range(1, 1 << 14) as i32;
            let k = rng.range(-(1 << 9), 1 << 9) as i32;
            let n = k * d + d / 2;
            for m in [n - 1, n, n + 1, -n - 1, -n, -n + 1] {
                check_div(m, d);
            }
        }
        for d in [2, 4, 6, 1 << 20, 1 << 30] {
            for k in [-3i64, -2, -1, 0, 1, 2, 3] {
                let n = k * d as i64 + d as i64 / 2;
                if let Ok(n) = i32::try_from(n) {
                    check_div(n, d);
                }
            }
        }
        // Random pairs: within the search's domain (|n| <= 2^23, d <= 2^30, d log-uniform)
        // and over all of i32.
        for _ in 0..1_000_000 {
            let n = rng.range(-(1 << 23), 1 << 23) as i32;
            let d = (rng.next() as u32 >> rng.range(1, 31)).clamp(1, 1 << 30) as i32;
            check_div(n, d);
            check_div(rng.next() as i32, (rng.next() as u32 >> 1).max(1) as i32);
        }
    }

    /// One random group: sizes 1..=128 (64 often), mantissas of several shapes up to ±2^15,
    /// importances up to 2^12 (sometimes all zero), and base_exp − e_g over a span that
    /// takes every code's step from 0 (rounded away) through the candidate window to
    /// saturation at 2^30.
    fn random_case(rng: &mut Rng) -> (Vec<i32>, i32, Vec<u32>, QuantParams, i32) {
        let n = match rng.range(0, 3) {
            0 => 64,
            1 => rng.range(1, 8) as usize,
            _ => rng.range(1, 128) as usize,
        };
        let bits = rng.range(2, 8) as u32;
        let top = rng.range(0, 15) as i32; // |X| < 2^(top + 1), capped at 2^15
        let lim = 1i64 << top;
        let mut x: Vec<i32> = match rng.range(0, 9) {
            // uniform
            0 | 1 => (0..n).map(|_| rng.range(-lim, lim) as i32).collect(),
            // sum of uniforms (weight-like)
            2 | 3 => (0..n).map(|_| ((0..4).map(|_| rng.range(-lim, lim)).sum::<i64>() / 4) as i32).collect(),
            // only positives / only negatives
            4 => (0..n).map(|_| rng.range(0, lim) as i32).collect(),
            5 => (0..n).map(|_| -rng.range(0, lim) as i32).collect(),
            // all zero, or zero but one element
            6 => {
                let mut v = vec![0; n];
                if rng.range(0, 1) == 1 {
                    let j = rng.range(0, n as i64 - 1) as usize;
                    v[j] = rng.range(-lim, lim) as i32;
                }
                v
            }
            // a grid: multiples of a step, so that X 2^8 / t hits ties often
            7 | 8 => {
                let g = rng.range(1, 64);
                let k = (lim / g).max(1);
                (0..n).map(|_| (g * rng.range(-k, k)) as i32).collect()
            }
            // extremes
            _ => (0..n)
                .map(|_| [-(1 << 15), 1 << 15, 0, (1 << 15) - 1, -(1 << 15) + 1][rng.range(0, 4) as usize])
                .collect(),
        };
        for v in &mut x {
            *v = (*v).clamp(-(1 << 15), 1 << 15);
        }
        let h: Vec<u32> = match rng.range(0, 5) {
            0 => vec![0; n],
            1 => vec![1 << 12; n],
            2 => (0..n).map(|_| if rng.range(0, 7) == 0 { rng.range(0, 1 << 12) as u32 } else { 0 }).collect(),
            _ => (0..n).map(|_| rng.range(0, 1 << 12) as u32).collect(),
        };
        // base_exp − e_g: two times in three where the candidate window t*/2..=2 t* falls on
        // some octave of codes (t(c) ≈ 2^(base_exp − e_g + (c >> 4) + 12)), at its ends too;
        // otherwise anywhere from "every step rounds to 0" to "every step saturates".
        let range = group_range(&x) as i64;
        let delta = if range > 0 && rng.range(0, 2) > 0 {
            let tstar = ((range << 8) / ((1 << bits) - 1)).max(1);
            (63 - tstar.leading_zeros() as i64) - 12 - rng.range(0, 15) + rng.range(-1, 1)
        } else {
            rng.range(-45, 35)
        };
        let base_exp = rng.range(-40, 40) as i32;
        let e_g = base_exp - delta as i32;
        (x, e_g, h, QuantParams { bits, group_size: n as u32 }, base_exp)
    }

    fn check_group(x: &[i32], e_g: i32, h: &[u32], p: QuantParams, base_exp: i32) {
        let mut want = vec![0xa5u8; x.len()];
        let want_sz = quantize_group_reference(x, e_g, h, p, base_exp, &mut want);
        // The dispatched build (AVX2 / AVX-512 where this CPU has them) and the plain one.
        let mut got = vec![0x5au8; x.len()];
        let got_sz = quantize_group(x, e_g, h, p, base_exp, &mut got);
        let mut plain = vec![0x3cu8; x.len()];
        let plain_sz = search(x, e_g, h, p, base_exp, &mut plain);
        let case = format!("x {x:?} e_g {e_g} h {h:?} bits {} base_exp {base_exp}", p.bits);
        assert_eq!((got_sz, &got), (want_sz, &want), "dispatched: {case}");
        assert_eq!((plain_sz, &plain), (want_sz, &want), "plain: {case}");
    }

    #[test]
    fn costs_equal_reference() {
        // Any step 1..=2^30 (log-uniform, and the saturated 2^30) and any three zero points,
        // not just the search's: each cost must be `evaluate_reference`'s exactly.
        let mut rng = Rng(0xc057);
        for i in 0..20_000 {
            let (x, _, h, p, _) = random_case(&mut rng);
            let qmax = (1i32 << p.bits) - 1;
            let t = if i % 16 == 0 { 1 << 30 } else { ((rng.next() as u32) >> rng.range(2, 31)).max(1) as i32 };
            let zs = [0, 1, 2].map(|_| rng.range(0, qmax as i64) as i32);
            let r: Vec<i32> = x.iter().map(|&xj| div_round_reference(xj << 8, t)).collect();
            let want = zs.map(|z| evaluate_reference(&x, &h, &r, t, z, qmax, None));
            assert_eq!(costs(&x, &h, t, zs, qmax), want, "x {x:?} h {h:?} t {t} zs {zs:?} qmax {qmax}");
        }
    }

    #[test]
    fn quantize_group_equals_reference_random() {
        let mut rng = Rng(0x0c0d_e5ea);
        for _ in 0..6000 {
            let (x, e_g, h, p, base_exp) = random_case(&mut rng);
            check_group(&x, e_g, &h, p, base_exp);
        }
    }

    #[test]
    fn quantize_group_equals_reference_every_step_relation() {
        // For a few groups, every base_exp − e_g from "every step rounds to 0" to "every step
        // saturates", at every bit width.
        let mut rng = Rng(0x5eed);
        for _ in 0..12 {
            let (x, _, h, p, _) = random_case(&mut rng);
            for bits in 2..=8 {
                for delta in -48..=40 {
                    check_group(&x, 3 - delta, &h, QuantParams { bits, ..p }, 3);
                }
            }
        }
    }
}
