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

use super::act::{ExpConsts, exp_neg_q30};
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
    // A plain loop rather than iterator closures: closures do not inherit the caller's
    // target features, and this is the hot loop of the AVX2 build.
    let mut dot = 0i64;
    for i in 0..d {
        dot += qa[i] as i64 * ka[i] as i64;
    }
    let sh = (bitlen(dot.unsigned_abs()) - 31).max(0);
    let dot32 = shr_round_any(dot, sh as u32);
    let prod = dot32 * s.scale_q30 as i64; // < 2^61
    let e = q.exps[t] + k.exps[j] + sh - 10;
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
    // seq×seq buffer); the WGSL kernel recomputes them per pass instead. Same values.
    let mut scores = vec![0i64; t + 1];
    let mut m = i64::MIN;
    let mut ev = i32::MIN;
    for (j, sj) in scores.iter_mut().enumerate() {
        *sj = score(q, k, s, t, h, j);
        m = m.max(*sj);
        ev = ev.max(v.exps[j]);
    }
    let cap = 32i64 << 20;
    let mut w = vec![0i64; t + 1];
    let mut z = 0i64;
    for j in 0..=t {
        w[j] = exp_neg_q30((m - scores[j]).min(cap) as u32, ec) as i64;
        z += w[j];
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
