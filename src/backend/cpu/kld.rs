//! How far a model's next-token distribution is from a reference model's, per token, in
//! fixed point: KL(P‖Q) in Q30 nats and whether the two most likely tokens agree (the
//! measures llama.cpp's `llama-perplexity --kl-divergence` reports), from the two logit rows
//! `ucw eval --baseline` produces for the same position (P: the baseline, Q: the model).
//!
//! Per token, with each row's logits l_j = m_j·2^e (|m| <= 2^23, e <= 8, V <= 2^20):
//! 1. d_j = (mmax − m_j)·2^e in Q20 and w_j = e^(−min(d_j, 32)) in Q30: the gaps and weights
//!    of `nll::nll_token`, so p_j = w_j / S_P with S_P = Σ w_j is the distribution whose NLL
//!    `ucw eval` reports (likewise q_j from Q's row). The weights stop at 32 nats (e^-32 is
//!    below Q30's last bit); the gaps themselves are kept up to 1024 nats, because the
//!    log-ratio of a token the model all but excludes is what KL is about.
//! 2. ln p_j − ln q_j = (d^Q_j − d^P_j) + (L_Q − L_P), where L = ln S − 30·ln 2 is the same
//!    Q30 log-sum as in the NLL. Hence
//!    KL = Σ_j p_j (ln p_j − ln q_j) = A / S_P + L_Q − L_P,  A = Σ_j w^P_j (d^Q_j − d^P_j).
//! 3. Each term of A is rounded once from Q50 to Q30 (half even): |w·Δd| <= 2^30·2^30, so a
//!    term is below 2^40 and A below 2^60 for V <= 2^20 (i64). The total rounding error is at
//!    most V·2^-31 weight-nats, divided by S_P >= 1: below 2^-11 nats even if every term
//!    rounded the same way, and in practice about sqrt(V)·2^-32.
//! 4. A·2^30 / S_P (< 2^90: i128) is rounded half even to Q30.
//!
//! Identical rows give exactly 0 (Δd = 0, L_Q = L_P). Everything is integer and per token,
//! so the values are the same on every machine; they are computed on the host from the
//! logits every device produces bit for bit (a device kernel is for later: issue 16).
//! Top-1: the first index of the largest mantissa in each row (the exponent is shared by
//! the row), so ties go to the lowest token id on both sides.

use rayon::prelude::*;

use super::act::exp_neg_q30_lane;
use super::nll::log2_q30;
use crate::error::Error;
use crate::fixed::round::{shr_round_any, shr_round_lane};
use crate::fixed::tables::{ExpConsts, LogConsts};
use crate::fixed::tensor::TokenFixed;

/// One position's comparison of the two distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Divergence {
    /// KL(P‖Q) in Q30 nats (P the reference).
    pub kl_q30: i64,
    /// Whether the most likely token is the same under both.
    pub top1_same: bool,
}

/// Gap cap in Q20 (1024 nats): a weight times a gap stays below 2^60.
const GAP_CAP: i64 = 1 << 30;

/// Gaps below the row's maximum in Q20 (capped at 1024 nats; below 32 nats the same values
/// as `nll::nll_token`'s); returns the first index of the maximum.
fn gaps(m: &[i32], e: i32, out: &mut [u32]) -> usize {
    let (mut arg, mut mmax) = (0usize, i32::MIN);
    for (j, &v) in m.iter().enumerate() {
        if v > mmax {
            (arg, mmax) = (j, v);
        }
    }
    // e <= 8: g < 2^25 and g << (e + 20) < 2^53.
    let (mmax, sh) = (mmax as i64, e + 20);
    for (o, &mj) in out.iter_mut().zip(m) {
        let g = mmax - mj as i64;
        *o = if sh >= 0 { (g << sh).min(GAP_CAP) } else { shr_round_lane(g, (-sh) as u32).min(GAP_CAP) } as u32;
    }
    arg
}

simd_dispatch! {
    /// (S_P, S_Q, A) of step 1–3 from the two rows' gaps (plain loops so they vectorise
    /// with this function's target features).
    fn sums(dp: &[u32], dq: &[u32], ec: &ExpConsts) -> (u64, u64, i64) {
        let cap = 32u32 << 20;
        let (mut sp, mut sq, mut a) = (0u64, 0u64, 0i64);
        for (&p, &q) in dp.iter().zip(dq) {
            let w = exp_neg_q30_lane(p.min(cap), ec) as i64;
            sp += w as u64;
            sq += exp_neg_q30_lane(q.min(cap), ec) as u64;
            a += shr_round_lane(w * (q as i64 - p as i64), 20);
        }
        (sp, sq, a)
    }
}

/// `a / b` rounded half to even (b > 0).
fn div_round_half_even(a: i128, b: i128) -> i128 {
    let (q, r) = (a.div_euclid(b), a.rem_euclid(b));
    match (2 * r).cmp(&b) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    }
}

/// One token: P's row `p` at exponent `ep` (the reference), Q's row `q` at `eq`.
pub fn divergence_token(p: &[i32], ep: i32, q: &[i32], eq: i32, ec: &ExpConsts, lc: &LogConsts) -> Divergence {
    let mut dp = vec![0u32; p.len()];
    let mut dq = vec![0u32; q.len()];
    let top_p = gaps(p, ep, &mut dp);
    let top_q = gaps(q, eq, &mut dq);
    let (sp, sq, a) = sums(&dp, &dq, ec);
    // ln S − 30 ln 2 in Q30, as nll_token.
    let lse = |s: u64| shr_round_any(log2_q30(s, lc) * lc.ln2_q28 as i64, 28);
    let first = div_round_half_even((a as i128) << 30, sp as i128) as i64;
    Divergence { kl_q30: first + lse(sq) - lse(sp), top1_same: top_p == top_q }
}

/// Every token of two logit rows of the same positions: `p` the reference's, `q` the
/// model's (the shapes and bounds `nll` accepts).
pub fn divergence(p: &TokenFixed, q: &TokenFixed, ec: &ExpConsts, lc: &LogConsts) -> Result<Vec<Divergence>, Error> {
    crate::backend::check_logits(p, "divergence, reference")?;
    crate::backend::check_logits(q, "divergence, model")?;
    if p.tokens != q.tokens || p.width != q.width {
        return Err(bad_input!(
            "divergence: {}×{} reference logits against {}×{} model logits",
            p.tokens,
            p.width,
            q.tokens,
            q.width
        ));
    }
    let w = p.width;
    Ok((0..p.tokens)
        .into_par_iter()
        .map(|t| {
            let r = t * w..(t + 1) * w;
            divergence_token(&p.mants[r.clone()], p.exps[t], &q.mants[r], q.exps[t], ec, lc)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::SplitMix64;

    /// Uniform in [lo, hi).
    fn range(rng: &mut SplitMix64, lo: i64, hi: i64) -> i64 {
        lo + (rng.next() % (hi - lo) as u64) as i64
    }

    /// KL(P‖Q) and the argmaxes in f64 from the same logits (softmax by libm's exp and log),
    /// an independent computation of what the fixed-point one approximates.
    fn reference(p: &[i32], ep: i32, q: &[i32], eq: i32) -> (f64, usize, usize) {
        let soft = |m: &[i32], e: i32| {
            let x: Vec<f64> = m.iter().map(|&v| v as f64 * libm::exp2(e as f64)).collect();
            let mx = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = x.iter().map(|v| libm::exp(v - mx)).sum();
            let lp: Vec<f64> = x.iter().map(|v| v - mx - libm::log(s)).collect();
            let arg = x.iter().position(|&v| v == mx).unwrap();
            (lp, arg)
        };
        let (lp, ap) = soft(p, ep);
        let (lq, aq) = soft(q, eq);
        let kl = lp.iter().zip(&lq).map(|(a, b)| libm::exp(*a) * (a - b)).sum();
        (kl, ap, aq)
    }

    fn q30(x: i64) -> f64 {
        x as f64 / (1u64 << 30) as f64
    }

    #[test]
    fn identical_rows_diverge_by_exactly_zero() {
        let (ec, lc) = (ExpConsts::new(), LogConsts::new());
        let mut rng = SplitMix64(3);
        for &(v, e) in &[(1usize, 0i32), (7, -20), (1000, -18), (49152, -17), (300, 8)] {
            let m: Vec<i32> = (0..v).map(|_| range(&mut rng, -(1 << 23), 1 << 23) as i32).collect();
            let d = divergence_token(&m, e, &m, e, &ec, &lc);
            assert_eq!(d, Divergence { kl_q30: 0, top1_same: true }, "V {v} e {e}");
        }
    }

    #[test]
    fn matches_the_f64_reference() {
        let (ec, lc) = (ExpConsts::new(), LogConsts::new());
        let mut rng = SplitMix64(11);
        let mut worst = 0f64;
        for case in 0..300 {
            let v = [2usize, 17, 256, 4099][case % 4];
            // Logit spreads from a fraction of a nat to tens of nats, the model's row a
            // perturbation of the reference's (small, as a good pack's) or unrelated.
            let e = -(range(&mut rng, 16, 22) as i32);
            let p: Vec<i32> = (0..v).map(|_| range(&mut rng, -(1 << 23), 1 << 23) as i32).collect();
            let noise = [0i64, 1 << 12, 1 << 17, 1 << 21, 1 << 23][case % 5];
            let q: Vec<i32> = p
                .iter()
                .map(|&x| (x as i64 + range(&mut rng, -noise, noise + 1)).clamp(-(1 << 23), 1 << 23) as i32)
                .collect();
            // The model's row at another exponent half the time (mantissas halved).
            let (q, eq) = if case % 2 == 0 { (q, e) } else { (q.iter().map(|&x| x >> 1).collect(), e + 1) };
            let d = divergence_token(&p, e, &q, eq, &ec, &lc);
            let (kl, ap, aq) = reference(&p, e, &q, eq);
            let tol = 2e-8 + 1e-6 * kl;
            let err = (q30(d.kl_q30) - kl).abs();
            assert!(err <= tol, "case {case}: V {v} e {e} eq {eq} noise {noise}: KL {} vs f64 {kl}", q30(d.kl_q30));
            // Halving the mantissas can only merge two maxima, never reorder them.
            if case % 2 == 0 {
                assert_eq!(d.top1_same, ap == aq, "case {case}");
            }
            worst = worst.max(err);
        }
        println!("largest |KL − f64 KL| over 300 cases: {worst:.3e} nats");
    }

    #[test]
    fn top1_ties_go_to_the_lowest_id_on_both_sides() {
        let (ec, lc) = (ExpConsts::new(), LogConsts::new());
        // P's maximum is tied at ids 1 and 3; Q prefers 3 strictly, then 1.
        let p = [0, 5 << 20, 0, 5 << 20];
        let q_same = [0, 5 << 20, 0, 5 << 20];
        let q_other = [0, 5 << 20, 0, (5 << 20) + 1];
        assert!(divergence_token(&p, -20, &q_same, -20, &ec, &lc).top1_same);
        assert!(!divergence_token(&p, -20, &q_other, -20, &ec, &lc).top1_same);
    }

    #[test]
    fn refuses_mismatched_or_out_of_bound_rows() {
        let (ec, lc) = (ExpConsts::new(), LogConsts::new());
        let row = |tokens: usize, width: usize, m: i32, e: i32| TokenFixed {
            tokens,
            width,
            exps: vec![e; tokens],
            mants: vec![m; tokens * width],
        };
        assert!(divergence(&row(2, 8, 1, 0), &row(2, 8, 1, 0), &ec, &lc).is_ok());
        assert!(divergence(&row(2, 8, 1, 0), &row(3, 8, 1, 0), &ec, &lc).is_err());
        assert!(divergence(&row(2, 8, 1, 0), &row(2, 9, 1, 0), &ec, &lc).is_err());
        assert!(divergence(&row(2, 8, 1 << 24, 0), &row(2, 8, 1, 0), &ec, &lc).is_err());
        assert!(divergence(&row(2, 8, 1, 9), &row(2, 8, 1, 0), &ec, &lc).is_err());
    }
}
