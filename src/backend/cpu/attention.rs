//! CPU twin of shaders/attention.wgsl: causal grouped-query attention over one window, in
//! integers, without a seq×seq buffer (scores are recomputed in each pass).
//!
//! For query t, head h (kv head g = h / (Hq/Hkv)), keys j <= t; |q|, |k|, |v| <= 2^17,
//! head_dim d <= 256, T <= 2^14:
//! 1. dot = Σ_i q·k exactly (< 2^42); dot32 = dot rounded to 31 bits (shift sh = max(0,
//!    bitlen − 31)); score s = dot32 · c · 2^(eq + ek + sh − 10) in Q20, c = round(2^30/√d),
//!    rounded half even (saturated to ±2^61, far beyond any softmax-relevant score).
//! 2. m = max_j s (exact); w_j = e^-(m − s_j) in Q30 (`act::exp_neg_q30`, difference capped
//!    at 32); Z = Σ w_j (< 2^44).
//! 3. Ev = max_j ev_j; A_i = Σ_j round(w_j · v_ji · 2^(ev_j − Ev)) (< 2^47 each, < 2^61).
//! 4. o_i = round(A_i / Z) (exact division, half even), |o| <= 2^17, at exponent Ev.
//! 5. Per token, the heads' outputs (exponent Ev per head) are renormalised to `bits`
//!    (largest top bit first, half even).

use super::act::ExpConsts;
use super::linear::{bitlen, shr_round_any};
use crate::backend::TokenFixed;

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

/// Score of key j for query t, head h (Q20).
#[inline(always)]
pub fn score(q: &TokenFixed, k: &TokenFixed, s: &AttnShape, t: usize, h: usize, j: usize) -> i64 {
    let d = s.head_dim;
    let g = h / (s.heads / s.kv_heads);
    let qa = &q.mants[t * q.width + h * d..][..d];
    let ka = &k.mants[j * k.width + g * d..][..d];
    let dot: i64 = qa.iter().zip(ka).map(|(&a, &b)| a as i64 * b as i64).sum();
    score_from_dot(dot, q.exps[t] + k.exps[j] - 10, s.scale_q30)
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

/// `shr_round_any` for |a| < 2^62 written without branches (selects only), so that loops
/// over keys vectorise. Equal to it on that domain (tested).
#[inline(always)]
pub fn shr_round_lane(a: i64, s: u32) -> i64 {
    let k = s.min(62);
    let nz = (k != 0) as i64;
    let half = (1i64 << k) >> 1;
    // a + 2^(k-1) − 1 + (quotient odd) < 2^63 for |a| < 2^62: rounds half to even.
    let r = (a + half - nz + (((a >> k) & 1) & nz)) >> k;
    if s >= 63 { 0 } else { r }
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
    let up = if fits { prod << ec } else { prod.signum() * lim };
    let down = shr_round_lane(prod, (-e).max(0) as u32);
    if e >= 0 { up } else { down }
}

/// `act::exp_neg_q30` without branches (tested equal for every input it accepts).
#[inline(always)]
pub fn exp_neg_q30_lane(x_q20: u32, c: &ExpConsts) -> u32 {
    let t = shr_round_lane((x_q20 as u64 * c.log2e_q30 as u64) as i64, 22) as u64;
    let n = (t >> 28) as u32;
    let f = (t & 0xfff_ffff) as u32;
    let (j, r) = (f >> 20, f & 0xf_ffff);
    let a = shr_round_lane((r as u64 * c.ln2_q30 as u64) as i64, 28) as u64;
    let poly = (1u64 << 30) - a + shr_round_lane((a * a) as i64, 31) as u64;
    let m = shr_round_lane((c.table[j as usize] as u64 * poly) as i64, 30);
    if n >= 40 { 0 } else { shr_round_lane(m, n) as u32 }
}

/// round_half_even(a / z) for z > 0.
fn div_round(a: i64, z: i64) -> i64 {
    let (qq, r) = (a.div_euclid(z), a.rem_euclid(z));
    if 2 * r > z || (2 * r == z && qq & 1 == 1) { qq + 1 } else { qq }
}

/// Outputs of head h for query t: (o_i for i < d, exponent Ev).
#[inline(always)]
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
    // Each score and weight is computed once and kept for this query (t + 1 values, not a
    // seq×seq buffer); the WGSL kernel recomputes them per pass instead. Same values: the
    // lane versions below are tested equal to `score_from_dot` and `act::exp_neg_q30`.
    let qa = &q.mants[t * q.width + h * d..][..d];
    let mut scores = vec![0i64; t + 1];
    // Exact dot products first (the inner loop vectorises), then the scores from them and
    // the weights, each a branch-free loop over keys.
    for (j, sj) in scores.iter_mut().enumerate() {
        let ka = &k.mants[j * k.width + g * d..][..d];
        let mut dot = 0i64;
        for i in 0..d {
            dot += qa[i] as i64 * ka[i] as i64;
        }
        *sj = dot;
    }
    let e_q = q.exps[t] - 10;
    let mut m = i64::MIN;
    let mut ev = i32::MIN;
    for (sj, &ek) in scores.iter_mut().zip(&k.exps[..=t]) {
        *sj = score_lane(*sj, e_q + ek, s.scale_q30);
        m = m.max(*sj);
    }
    for &e in &v.exps[..=t] {
        ev = ev.max(e);
    }
    let cap = 32i64 << 20;
    let mut w = vec![0i64; t + 1];
    let mut z = 0i64;
    for (wj, &sj) in w.iter_mut().zip(&scores) {
        *wj = exp_neg_q30_lane((m - sj).min(cap) as u32, ec) as i64;
        z += *wj;
    }
    let mut acc = vec![0i64; d];
    for (j, &wj) in w.iter().enumerate() {
        // Terms 2^48 or more below the largest exponent round to 0 (|w·v| <= 2^47).
        let sh = ((ev - v.exps[j]) as u32).min(62);
        let vj = &v.mants[j * v.width + g * d..][..d];
        let wj = wj as i32 as i64; // w <= 2^30: an i32 × i32 product, which vectorises
        if sh == 0 {
            for (a, &x) in acc.iter_mut().zip(vj) {
                *a += wj * x as i64;
            }
        } else {
            // round_half_even(p / 2^sh) without branches, = wide::shr_round for |p| < 2^62.
            let half_m1 = (1i64 << (sh - 1)) - 1;
            for (a, &x) in acc.iter_mut().zip(vj) {
                let p = wj * x as i64;
                *a += (p + half_m1 + ((p >> sh) & 1)) >> sh;
            }
        }
    }
    (acc.iter().map(|&a| div_round(a, z)).collect(), ev)
}

/// Attention outputs of token t (all heads), renormalised to `bits`; returns the exponent.
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
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512dq")
    {
        // SAFETY: the CPU has these features (checked just above).
        return unsafe { attention_token_avx512(q, k, v, s, ec, bits, t, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { attention_token_avx2(q, k, v, s, ec, bits, t, out) };
    }
    attention_token_body(q, k, v, s, ec, bits, t, out)
}

/// The same integer code compiled with AVX2 enabled, so the exact i64 dot products and
/// weighted sums vectorise; integer results cannot depend on that.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_token_avx2(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &AttnShape,
    ec: &ExpConsts,
    bits: u32,
    t: usize,
    out: &mut [i32],
) -> i32 {
    attention_token_body(q, k, v, s, ec, bits, t, out)
}

/// With AVX-512 the 64-bit arithmetic shifts and products of the weighted sums are native.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512dq")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_token_avx512(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &AttnShape,
    ec: &ExpConsts,
    bits: u32,
    t: usize,
    out: &mut [i32],
) -> i32 {
    attention_token_body(q, k, v, s, ec, bits, t, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attention_token_body(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &AttnShape,
    ec: &ExpConsts,
    bits: u32,
    t: usize,
    out: &mut [i32],
) -> i32 {
    let d = s.head_dim;
    let mut heads: Vec<(Vec<i64>, i32)> = Vec::with_capacity(s.heads);
    for h in 0..s.heads {
        heads.push(head_output(q, k, v, s, ec, t, h));
    }
    let top =
        heads.iter().flat_map(|(o, e)| o.iter().filter(|x| **x != 0).map(move |x| e + bitlen(x.unsigned_abs()))).max();
    let Some(top) = top else {
        out.fill(0);
        return 0;
    };
    let e_out = top - (bits as i32 - 1);
    for (h, (o, e)) in heads.iter().enumerate() {
        let dsh = e - e_out;
        for i in 0..d {
            out[h * d + i] = if dsh >= 0 { (o[i] << dsh) as i32 } else { shr_round_any(o[i], (-dsh) as u32) as i32 };
        }
    }
    e_out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::act::exp_neg_q30;

    #[test]
    fn lane_versions_equal_the_reference() {
        let ec = ExpConsts::new();
        // Every input exp_neg_q30 accepts.
        for x in 0..=(32u32 << 20) {
            assert_eq!(exp_neg_q30_lane(x, &ec), exp_neg_q30(x, &ec), "x = {x}");
        }
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
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
        }
    }
}
