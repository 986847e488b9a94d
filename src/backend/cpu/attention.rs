//! CPU twin of shaders/attention.wgsl: causal grouped-query attention over one window, in
//! integers, without a seq×seq buffer (the GPU recomputes scores per pass; the CPU holds one
//! block of queries' scores at a time).
//!
//! For query t, head h (kv head g = h / (Hq/Hkv)), keys j <= t; |q|, |k|, |v| <= 2^17,
//! head_dim d <= 256, T <= 2^14:
//! 1. dot = Σ_i q·k exactly (< 2^42); dot32 = dot rounded to 31 bits (shift sh = max(0,
//!    bitlen − 31)); score s = dot32 · c · 2^(eq + ek + sh − 10) in Q20, c = round(2^30/√d),
//!    rounded half even (saturated to ±2^61, far beyond any softmax-relevant score).
//! 2. m = max_j s (exact); w_j = e^-(m − s_j) in Q30 (`act::exp_neg_q30`, difference capped
//!    at 32); Z = Σ w_j (< 2^44; >= 2^30, the maximum's own weight).
//! 3. Ev = max_{j<=t} ev_j; each key's weight is put on that V grid once (forward v2):
//!    u_j = round(w_j · 2^-(Ev − ev_j + U_SHIFT)) <= 2^21, and A_i = Σ_j u_j · v_ji exactly
//!    (|A| <= 2^17 · 2^14 · (2^21 + 1/2) < 2^53) at exponent Ev + U_SHIFT. (Forward v1 rounded
//!    every product w_j·v_ji instead, which no matrix product can do.)
//! 4. o_i = round(A_i · 2^U_SHIFT / Z) (exact division, half even) at exponent Ev; |o| < 2^18
//!    since Σ u_j·2^U_SHIFT <= Z + T·2^8 and Z >= 2^30.
//! 5. Per token, the heads' outputs (exponent Ev, shared by the heads) are renormalised to
//!    `bits` (largest top bit first, half even).
//!
//! Because every dot product and every A_i is an integer below 2^53, the CPU computes both
//! as f64 matrix products (`matrixmultiply`): every product and partial sum is exact in any
//! order or blocking, so the results are the integers above, bit for bit.

use super::act::{div_round_lane, exp_neg_q30_lane};
use super::linear::bitlen;
use crate::fixed::round::{shr_round_any, shr_round_lane};
use crate::fixed::tables::ExpConsts;
use crate::fixed::tensor::TokenFixed;

/// Shape of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// round(2^30 / sqrt(head_dim))
    pub scale_q30: u32,
}

impl AttnShape {
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize) -> AttnShape {
        let scale_q30 = (1073741824.0 / (head_dim as f64).sqrt()).round_ties_even() as u32;
        AttnShape { heads, kv_heads, head_dim, scale_q30 }
    }
}

/// Step 1 after the exact dot product: round to 31 bits, scale, shift to Q20 (saturated);
/// `e_base` = eq + ek − 10.
pub fn score_from_dot(dot: i64, e_base: i32, scale_q30: u32) -> i64 {
    let sh = (bitlen(dot.unsigned_abs()) - 31).max(0);
    let dot32 = shr_round_any(dot, sh as u32);
    let prod = dot32 * scale_q30 as i64; // < 2^61
    let e = e_base + sh;
    let lim = 1i64 << 61;
    if e >= 0 {
        if e >= 62 || prod.unsigned_abs() > (lim as u64) >> e {
            if prod < 0 {
                -lim
            } else if prod > 0 {
                lim
            } else {
                0
            }
        } else {
            prod << e
        }
    } else {
        shr_round_any(prod, (-e) as u32)
    }
}

/// `score_from_dot` without branches (tested equal).
#[inline(always)]
pub fn score_lane(dot: i64, e_base: i32, scale_q30: u32) -> i64 {
    let bl = 64 - dot.unsigned_abs().leading_zeros() as i32;
    let sh = (bl - 31).max(0);
    let prod = shr_round_lane(dot, sh as u32) * scale_q30 as i64;
    let e = e_base + sh;
    let lim = 1i64 << 61;
    let ec = e.clamp(0, 62) as u32;
    let fits = e < 62 && prod.unsigned_abs() <= (lim as u64) >> ec;
    // prod's sign (−1, 0, 1) in arithmetic; |prod| < 2^61.
    let sign = (prod >> 63) | ((prod.wrapping_neg() as u64) >> 63) as i64;
    let up = if fits { prod << ec } else { sign * lim };
    let down = shr_round_lane(prod, (-e).max(0) as u32);
    if e >= 0 { up } else { down }
}

/// round_half_even(a / z) for z > 0.
fn div_round(a: i64, z: i64) -> i64 {
    let (qq, r) = (a.div_euclid(z), a.rem_euclid(z));
    if 2 * r > z || (2 * r == z && qq & 1 == 1) { qq + 1 } else { qq }
}

/// Extra right shift of a key's weight onto the V grid (step 3): u_j <= 2^21 keeps every
/// A_i below 2^53, so the weighted sums are exact in f64.
pub const U_SHIFT: u32 = 9;

/// Step 3 for one key: u_j = round(w_j · 2^-(Ev − ev_j + U_SHIFT)), ev_j <= Ev.
#[inline(always)]
pub fn key_weight(w: i64, ev: i32, ev_j: i32) -> i64 {
    shr_round_lane(w, ((ev - ev_j) as u32).saturating_add(U_SHIFT))
}

/// Step 4: round(A · 2^U_SHIFT / Z), half even (|A| < 2^53, 2^30 <= Z < 2^44; half even is
/// symmetric, so the magnitude is rounded), without a division instruction.
#[inline(always)]
fn head_value(a: i64, z: i64) -> i64 {
    let q = div_round_lane(a.unsigned_abs() << U_SHIFT, z as u64) as i64;
    if a < 0 { -q } else { q }
}

/// The softmax weights of query t over keys 0..=t from its exact dot products `dots`
/// (steps 1–3): writes u_j into `u` (as `f(u_j)`) and returns Z.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn key_weights<T>(
    dots: impl Fn(usize) -> i64,
    k: &TokenFixed,
    v_exps: &[i32],
    e_q: i32,
    ev: i32,
    s: &AttnShape,
    ec: &ExpConsts,
    scores: &mut [i64],
    u: &mut [T],
    f: impl Fn(i64) -> T,
) -> i64 {
    let n = scores.len();
    let mut m = i64::MIN;
    for (j, (sj, &ek)) in scores.iter_mut().zip(&k.exps[..n]).enumerate() {
        *sj = score_lane(dots(j), e_q + ek, s.scale_q30);
        m = m.max(*sj);
    }
    let cap = 32i64 << 20;
    let mut z = 0i64;
    for ((uj, &sj), &evj) in u.iter_mut().zip(scores.iter()).zip(&v_exps[..n]) {
        let w = exp_neg_q30_lane((m - sj).min(cap) as u32, ec) as i64;
        z += w;
        *uj = f(key_weight(w, ev, evj));
    }
    z
}

/// Outputs of head h for query t: (o_i for i < d, exponent Ev). The readable twin of the
/// algorithm above, one query at a time in i64; `attention` computes the same integers in
/// blocks (tested equal).
pub fn head_output(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &AttnShape,
    ec: &ExpConsts,
    t: usize,
    h: usize,
) -> (Vec<i64>, i32) {
    let d = s.head_dim;
    let g = h / (s.heads / s.kv_heads);
    let ev = v.exps[..=t].iter().copied().max().unwrap_or(0);
    let mut scores = vec![0i64; t + 1];
    let mut u = vec![0i64; t + 1];
    let e_q = q.exps[t] - 10;
    let qa = &q.mants[t * q.width + h * d..][..d];
    let dots = |j: usize| -> i64 {
        let ka = &k.mants[j * k.width + g * d..][..d];
        qa.iter().zip(ka).map(|(&a, &b)| a as i64 * b as i64).sum()
    };
    let z = key_weights(dots, k, &v.exps, e_q, ev, s, ec, &mut scores, &mut u, |x| x);
    let mut acc = vec![0i64; d];
    for (j, &uj) in u.iter().enumerate() {
        let vj = &v.mants[j * v.width + g * d..][..d];
        for (a, &x) in acc.iter_mut().zip(vj) {
            *a += uj * x as i64;
        }
    }
    // The exact division here; `attention` uses the division-free `head_value` (tested equal).
    (acc.iter().map(|&a| div_round(a << U_SHIFT, z)).collect(), ev)
}

/// Queries per block of the CPU path: one block's scores (rows × keys f64) stay in cache.
const QUERY_BLOCK: usize = 64;

/// One head's operands as f64 rows of head_dim (exact: every mantissa is below 2^53).
fn head_rows(x: &TokenFixed, head: usize, d: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.tokens * d);
    for t in 0..x.tokens {
        out.extend(x.mants[t * x.width + head * d..][..d].iter().map(|&m| m as f64));
    }
    out
}

/// Attention of one window, every token and head: outputs renormalised per token to
/// `bits` (mantissas `[T, heads·d]`, one exponent per token). Work is split into fixed
/// (head, block of queries) tasks; each computes its exact dot products and weighted sums
/// as f64 matrix products (see the module header for why they are exact).
pub fn attention(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &AttnShape,
    ec: &ExpConsts,
    bits: u32,
) -> TokenFixed {
    use rayon::prelude::*;
    let (t_len, d, hq) = (q.tokens, s.head_dim, s.heads);
    let grp = s.heads / s.kv_heads;
    // Ev of each query: the largest V exponent of its prefix.
    let ev: Vec<i32> = v
        .exps
        .iter()
        .scan(i32::MIN, |m, &e| {
            *m = (*m).max(e);
            Some(*m)
        })
        .collect();
    let qf: Vec<Vec<f64>> = (0..hq).into_par_iter().map(|h| head_rows(q, h, d)).collect();
    let kf: Vec<Vec<f64>> = (0..s.kv_heads).into_par_iter().map(|g| head_rows(k, g, d)).collect();
    let vf: Vec<Vec<f64>> = (0..s.kv_heads).into_par_iter().map(|g| head_rows(v, g, d)).collect();
    let blocks = t_len.div_ceil(QUERY_BLOCK);
    // Head outputs [block][head][row][d] at exponent ev[t].
    let outs: Vec<Vec<i64>> = (0..blocks * hq)
        .into_par_iter()
        .map(|task| {
            let (b, h) = (task / hq, task % hq);
            let g = h / grp;
            block(q, k, v, s, ec, &ev, &qf[h], &kf[g], &vf[g], b * QUERY_BLOCK, ((b + 1) * QUERY_BLOCK).min(t_len))
        })
        .collect();
    let w = q.width;
    let mut mants = vec![0i32; t_len * w];
    let mut exps = vec![0i32; t_len];
    mants.par_chunks_mut(w).zip(exps.par_iter_mut()).enumerate().for_each(|(t, (out, e))| {
        let (b, r) = (t / QUERY_BLOCK, t % QUERY_BLOCK);
        let head = |h: usize| &outs[b * hq + h][r * d..(r + 1) * d];
        *e = renorm_heads(hq, d, ev[t], head, bits, out);
    });
    TokenFixed { tokens: t_len, width: w, exps, mants }
}

/// Head outputs of queries t0..t1 for one head: `[rows, d]`.
#[allow(clippy::too_many_arguments)]
fn block(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &AttnShape,
    ec: &ExpConsts,
    ev: &[i32],
    qf: &[f64],
    kf: &[f64],
    vf: &[f64],
    t0: usize,
    t1: usize,
) -> Vec<i64> {
    let (rows, nk) = (t1 - t0, t1);
    // The block's score and weight matrices (up to 64 × T f64 each) live in per-thread
    // buffers reused across blocks: zeroing fresh ones cost more than the exp.
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Vec<f64>, Vec<f64>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with_borrow_mut(|(sc, u)| {
        for buf in [&mut *sc, &mut *u] {
            if buf.len() < rows * nk {
                buf.resize(rows * nk, 0.0);
            }
        }
        // Any contents: every element used below is written first.
        let (sc, u) = (&mut sc[..rows * nk], &mut u[..rows * nk]);
        let d = s.head_dim;
        // dots[r][j] = q_{t0+r} · k_j for every key of the block's longest prefix (beta = 0:
        // dgemm overwrites `sc` without reading it).
        // SAFETY: the slices hold rows×d, nk×d and rows×nk elements at the given strides.
        unsafe {
            matrixmultiply::dgemm(
                rows,
                d,
                nk,
                1.0,
                qf[t0 * d..].as_ptr(),
                d as isize,
                1,
                kf.as_ptr(),
                1,
                d as isize,
                0.0,
                sc.as_mut_ptr(),
                nk as isize,
                1,
            );
        }
        let mut z = vec![0i64; rows];
        let mut scores = vec![0i64; nk];
        // u[r][j] = u_j of query t0 + r, zero beyond its prefix.
        for r in 0..rows {
            let t = t0 + r;
            let (dots, ur) = (&sc[r * nk..][..=t], &mut u[r * nk..(r + 1) * nk]);
            z[r] = weights_row(dots, k, &v.exps, q.exps[t] - 10, ev[t], s, ec, &mut scores[..=t], &mut ur[..=t]);
            ur[t + 1..].fill(0.0);
        }
        // a[r][i] = Σ_j u_j · v_ji.
        let mut a = vec![0f64; rows * d];
        // SAFETY: as above, with the weights rows×nk and V nk×d.
        unsafe {
            matrixmultiply::dgemm(
                rows,
                nk,
                d,
                1.0,
                u.as_ptr(),
                nk as isize,
                1,
                vf.as_ptr(),
                d as isize,
                1,
                0.0,
                a.as_mut_ptr(),
                d as isize,
                1,
            );
        }
        head_values(&a, &z, d)
    })
}

simd_dispatch! {
    /// Step 4 over a block's sums `a` ([rows, d]) with each row's Z.
    fn head_values(a: &[f64], z: &[i64], d: usize) -> Vec<i64> {
        let mut out = vec![0i64; a.len()];
        for ((o, ar), &zr) in out.chunks_mut(d).zip(a.chunks(d)).zip(z) {
            for (oi, &x) in o.iter_mut().zip(ar) {
                *oi = head_value(exact_i64(x), zr);
            }
        }
        out
    }
}

/// An f64 holding an integer below 2^53 (every value the matrix products give) as i64,
/// without the NaN and range checks of `as`, so that loops over them vectorise.
#[inline(always)]
fn exact_i64(x: f64) -> i64 {
    debug_assert!(x.abs() < 9007199254740992.0 && x.fract() == 0.0);
    // SAFETY: x is finite and below 2^53 in magnitude (module header bounds).
    unsafe { x.to_int_unchecked::<i64>() }
}

simd_dispatch! {
    /// `key_weights` over a row of exact dot products, writing u_j as f64 (AVX-512 gives
    /// the 64-bit shifts, products, leading-zero counts and conversions natively).
    fn weights_row(
        dots: &[f64],
        k: &TokenFixed,
        v_exps: &[i32],
        e_q: i32,
        ev: i32,
        s: &AttnShape,
        ec: &ExpConsts,
        scores: &mut [i64],
        u: &mut [f64],
    ) -> i64 {
        key_weights(|j| exact_i64(dots[j]), k, v_exps, e_q, ev, s, ec, scores, u, |x| x as f64)
    }
}

/// Step 5: a token's head outputs (all at exponent `ev`) renormalised to `bits`; returns
/// the output exponent (0 when every output is 0).
fn renorm_heads<'a>(
    heads: usize,
    d: usize,
    ev: i32,
    head: impl Fn(usize) -> &'a [i64],
    bits: u32,
    out: &mut [i32],
) -> i32 {
    let top = (0..heads).flat_map(|h| head(h).iter()).map(|x| bitlen(x.unsigned_abs())).max().unwrap_or(0);
    if top == 0 {
        out.fill(0);
        return 0;
    }
    let e_out = ev + top - (bits as i32 - 1);
    let dsh = ev - e_out;
    for h in 0..heads {
        for (o, &x) in out[h * d..(h + 1) * d].iter_mut().zip(head(h)) {
            *o = if dsh >= 0 { (x << dsh) as i32 } else { shr_round_any(x, (-dsh) as u32) as i32 };
        }
    }
    e_out
}

/// The reference for one token (all heads, `head_output` per head, then step 5): the
/// readable twin `attention` is tested against.
#[allow(clippy::too_many_arguments)]
pub fn attention_token(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &AttnShape,
    ec: &ExpConsts,
    bits: u32,
    t: usize,
    out: &mut [i32],
) -> i32 {
    let heads: Vec<(Vec<i64>, i32)> = (0..s.heads).map(|h| head_output(q, k, v, s, ec, t, h)).collect();
    renorm_heads(s.heads, s.head_dim, heads[0].1, |h| &heads[h].0, bits, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::act::{div_round_u64, exp_neg_q30, sigmoid_q30, sigmoid_q30_lane};

    fn tokens(
        t: usize,
        w: usize,
        next: &mut impl FnMut() -> u64,
        mant: impl Fn(u64) -> i32,
        exp: impl Fn(u64) -> i32,
    ) -> TokenFixed {
        TokenFixed {
            tokens: t,
            width: w,
            mants: (0..t * w).map(|_| mant(next())).collect(),
            exps: (0..t).map(|_| exp(next())).collect(),
        }
    }

    /// The blocked f64 path gives the reference's integers: several query blocks, keys
    /// whose V exponents lie up to 40 below the prefix's (weights rounding to 0), mantissas
    /// at ±2^17, saturated and equal scores.
    #[test]
    fn blocked_attention_equals_the_reference() {
        let ec = ExpConsts::new();
        let mut rng = crate::test_rng::XorShift64(0x2545f4914f6cdd1du64);
        let mut next = move || rng.next();
        let full = |r: u64| ((r >> 32) as i32 >> (14 + (r % 5) as u32)).clamp(-(1 << 17), 1 << 17);
        let cases: [(usize, usize, usize, usize, i32, i32); 4] =
            [(150, 4, 2, 32, -14, 40), (70, 3, 1, 64, -12, 6), (9, 2, 2, 8, 20, 3), (130, 2, 1, 16, -30, 1)];
        for (ci, &(t, h, kv, d, eqk, evs)) in cases.iter().enumerate() {
            let q = tokens(t, h * d, &mut next, full, |r| eqk + (r % 4) as i32);
            let k = tokens(t, kv * d, &mut next, full, |r| eqk + (r % 4) as i32);
            let v = tokens(t, kv * d, &mut next, full, |r| -20 - (r % evs as u64) as i32);
            let s = AttnShape::new(h, kv, d);
            for bits in [16, 20] {
                let y = attention(&q, &k, &v, &s, &ec, bits);
                let mut out = vec![0i32; h * d];
                for tt in 0..t {
                    let e = attention_token(&q, &k, &v, &s, &ec, bits, tt, &mut out);
                    assert_eq!(
                        (y.exps[tt], &y.mants[tt * h * d..(tt + 1) * h * d]),
                        (e, &out[..]),
                        "case {ci} token {tt}"
                    );
                }
            }
        }
        // Every weight 2^30 (all scores 0) and |v| = 2^17: the largest sums A_i.
        let (t, d) = (300, 4);
        let zero = TokenFixed { tokens: t, width: d, mants: vec![0; t * d], exps: vec![0; t] };
        let v = TokenFixed {
            tokens: t,
            width: d,
            mants: (0..t * d).map(|i| if i % 3 == 0 { -(1 << 17) } else { 1 << 17 }).collect(),
            exps: vec![-3; t],
        };
        let s = AttnShape::new(1, 1, d);
        let y = attention(&zero, &zero, &v, &s, &ec, 18);
        let mut out = vec![0i32; d];
        for tt in 0..t {
            let e = attention_token(&zero, &zero, &v, &s, &ec, 18, tt, &mut out);
            assert_eq!((y.exps[tt], &y.mants[tt * d..(tt + 1) * d]), (e, &out[..]), "token {tt}");
        }
    }

    #[test]
    fn lane_versions_equal_the_reference() {
        let ec = ExpConsts::new();
        // Every input exp_neg_q30 accepts.
        for x in 0..=(32u32 << 20) {
            assert_eq!(exp_neg_q30_lane(x, &ec), exp_neg_q30(x, &ec), "x = {x}");
        }
        let mut rng = crate::test_rng::XorShift64(0x9e3779b97f4a7c15u64);
        let mut next = move || rng.next();
        // sigmoid at every mantissa bit length, sign and shift (both shift branches, the cap).
        for sh in -40..=45 {
            for b in 0..=17u32 {
                for gm in
                    [(1i32 << b) - 1, 1 << b, (1 << b) + 1, -(1 << b), -((1 << b) - 1), 0x15555 >> (17 - b.min(17))]
                {
                    let gm = gm.clamp(-(1 << 17), 1 << 17);
                    assert_eq!(sigmoid_q30_lane(gm, sh, &ec), sigmoid_q30(gm, sh - 20, &ec), "{gm} {sh}");
                }
            }
        }
        // The division-free quotients: exact halves, near-integers, the extremes of both uses.
        for (n, d) in
            [(1u64 << 60, 1u64 << 30), (1 << 60, (1 << 31) - 1), (3, 2), (5, 2), (7, 2), ((1 << 61) - 1, 1 << 30)]
        {
            assert_eq!(div_round_lane(n, d), div_round_u64(n, d), "{n} / {d}");
        }
        for i in 0..2_000_000u64 {
            let r = next();
            // dots up to 2^42 in magnitude at every bit length, exponents across saturation.
            let bits = (r % 43) as u32;
            let mag = (next() >> (64 - bits.max(1))) as i64;
            let dot = if r & (1 << 40) != 0 { -mag } else { mag };
            let dot = if i % 97 == 0 { 0 } else { dot };
            let e_base = (next() % 140) as i32 - 90;
            let scale = 1 + (next() % (1 << 30)) as u32;
            assert_eq!(score_lane(dot, e_base, scale), score_from_dot(dot, e_base, scale), "{dot} {e_base} {scale}");
            let a = (next() >> 2) as i64 * if r & 2 != 0 { -1 } else { 1 };
            let a = a >> (next() % 62);
            let sh = (next() % 80) as u32;
            assert_eq!(shr_round_lane(a, sh), shr_round_any(a, sh), "{a} {sh}");
            // head_value's division: |A| < 2^53, 2^30 <= Z < 2^44 (quotient < 2^31), with
            // exact halves forced every few cases.
            let z = (1i64 << 30) + (next() >> (20 + next() % 31)) as i64;
            let q = (next() % (1 << 18)) as i64; // head outputs are below 2^18
            let (a, z) = match i % 3 {
                0 => ((next() >> 11) as i64 >> (next() % 40), z),
                // a·2^9 / z = q + 1/2 exactly (z a multiple of 2^10)
                1 => (((2 * q + 1) * (z >> 10 << 9)) >> U_SHIFT, z >> 10 << 10),
                _ => ((q * z) >> U_SHIFT, z),
            };
            let a = if r & 4 != 0 { -a } else { a };
            if ((a.unsigned_abs() << U_SHIFT) / z as u64) < 1 << 31 {
                assert_eq!(head_value(a, z), div_round(a << U_SHIFT, z), "{a} / {z}");
            }
            let (n, d) = (next() >> 3, (next() >> (1 + next() % 62)).max(1));
            let (n, d) =
                if i % 2 == 0 { (n, d) } else { ((2 * (n % (1 << 20)) + 1) * (d >> 32).max(1), (d >> 32).max(1) << 1) };
            if n / d < 1 << 31 {
                assert_eq!(div_round_lane(n, d), div_round_u64(n, d), "{n} / {d}");
            }
        }
    }
}
