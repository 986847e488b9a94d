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
pub fn score(q: &TokenFixed, k: &TokenFixed, s: &AttnShape, t: usize, h: usize, j: usize) -> i64 {
    let d = s.head_dim;
    let g = h / (s.heads / s.kv_heads);
    let qa = &q.mants[t * q.width + h * d..][..d];
    let ka = &k.mants[j * k.width + g * d..][..d];
    let dot: i64 = qa.iter().zip(ka).map(|(&a, &b)| a as i64 * b as i64).sum();
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
    let scores: Vec<i64> = (0..=t).map(|j| score(q, k, s, t, h, j)).collect();
    let m = *scores.iter().max().expect("t >= 0");
    let cap = 32i64 << 20;
    let w: Vec<i64> = scores.iter().map(|&sj| exp_neg_q30((m - sj).min(cap) as u32, ec) as i64).collect();
    let z: i64 = w.iter().sum();
    let ev = (0..=t).map(|j| v.exps[j]).max().expect("t >= 0");
    let mut acc = vec![0i64; d];
    for (j, &wj) in w.iter().enumerate() {
        let sh = (ev - v.exps[j]) as u32;
        let vj = &v.mants[j * v.width + g * d..][..d];
        if sh == 0 {
            // No rounding at the prefix's largest exponent: a plain exact sum.
            for (a, &x) in acc.iter_mut().zip(vj) {
                *a += wj * x as i64;
            }
        } else {
            for (a, &x) in acc.iter_mut().zip(vj) {
                *a += shr_round_any(wj * x as i64, sh);
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
    let d = s.head_dim;
    let heads: Vec<(Vec<i64>, i32)> = (0..s.heads).map(|h| head_output(q, k, v, s, ec, t, h)).collect();
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
