//! CPU twin of shaders/nll.wgsl: negative log-likelihood of a target under a row of logits.
//!
//! Per token (logits l_j = m_j·2^e, |m| <= 2^23, target y):
//! 1. mmax = max_j m_j exactly (DESIGN §3 rule 5: exact maximum first).
//! 2. D_j = (mmax − m_j)·2^e in Q20 (half even), capped at 32 (e^-32 < 2^-46).
//! 3. S = Σ_j e^(−D_j) in Q30 (`act::exp_neg_q30`), exact (< 2^50 for V <= 2^20).
//! 4. log2(S) in Q30: integer part from the top bit; fraction from a normalised Q30
//!    mantissa z (one rounding) as log2(1 + j/256) from a table plus (δ − δ²/2)/ln 2,
//!    δ = r·(256/(256 + j)) from a reciprocal table (cubic term < 2^-25).
//! 5. NLL = ln2·(log2 S − 30) + (mmax − m_y)·2^e, in Q30 (target term uncapped, exact
//!    to Q30 when e + 30 >= 0, else rounded half even).

use super::act::exp_neg_q30_lane;
use crate::fixed::round::{shr_round_any, shr_round_lane};
use crate::fixed::tables::{ExpConsts, LogConsts};

fn round_i64(x: i64, s: u32) -> i64 {
    shr_round_any(x, s)
}

/// log2(S) − 30 in Q30 for S >= 2^30 (S < 2^62).
pub fn log2_q30(s: u64, c: &LogConsts) -> i64 {
    let k = 63 - s.leading_zeros() as i32; // S in [2^k, 2^(k+1))
    // z = S / 2^(k−30): Q30 mantissa in [2^30, 2^31], one rounding.
    let mut z = if k >= 30 { round_i64(s as i64, (k - 30) as u32) } else { (s as i64) << (30 - k) };
    let mut k = k;
    if z >> 31 != 0 {
        z >>= 1;
        k += 1;
    }
    let f = z - (1 << 30); // Q30 fraction in [0, 2^30)
    let j = (f >> 22) as usize; // top 8 bits
    let r = f & ((1 << 22) - 1); // remainder, Q30 (< 2^-8)
    let delta = round_i64(r * c.recip_table[j] as i64, 30); // Q30, < 2^22
    let poly = delta - round_i64(delta * delta, 31); // δ − δ²/2
    let frac = c.log2_table[j] as i64 + round_i64(poly * c.inv_ln2_q30 as i64, 30);
    ((k - 30) as i64) * (1 << 30) + frac
}

simd_dispatch! {
    /// NLL of `target` in Q30 for one row of logits (the sum of exponentials vectorises:
    /// `exp_neg_q30_lane` equals `exp_neg_q30`, tested).
    pub fn nll_token(m: &[i32], e: i32, target: usize, ec: &ExpConsts, lc: &LogConsts) -> i64 {
        let mmax = m.iter().copied().max().unwrap_or(0) as i64;
        let cap = 32i64 << 20;
        let sh = e + 20;
        // D_j in Q20: the shift is the token's, so each branch is one vectorisable loop.
        // (Plain loops, not iterator sums, so they get this function's target features.)
        let mut s = 0u64;
        if sh >= 40 {
            // Every D_j, the maximum's too, is the cap (unreachable under nll's e <= 8).
            s = m.len() as u64 * exp_neg_q30_lane(cap as u32, ec) as u64;
        } else if sh >= 0 {
            for &mj in m {
                s += exp_neg_q30_lane(((mmax - mj as i64) << sh).min(cap) as u32, ec) as u64;
            }
        } else {
            let r = (-sh) as u32;
            for &mj in m {
                s += exp_neg_q30_lane(shr_round_lane(mmax - mj as i64, r).min(cap) as u32, ec) as u64;
            }
        }
        // ln S − 30 ln 2 = ln2 · (log2 S − 30): Q30 · Q28 → Q30 (|log2 S − 30| < 2^5.2).
        let lse = round_i64(log2_q30(s, lc) * lc.ln2_q28 as i64, 28);
        let dy = mmax - m[target] as i64; // < 2^24
        let sy = e + 30;
        // The caller bounds e <= 8, so sy <= 38 and dy << sy < 2^62.
        let target_term = if sy >= 0 { dy << sy } else { round_i64(dy, (-sy) as u32) };
        lse + target_term
    }
}
