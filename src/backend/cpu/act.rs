//! CPU twin of shaders/swiglu.wgsl: SwiGLU `silu(g) · u` in integers, and the fixed-point
//! exp and sigmoid it is built from (the attention softmax will reuse `exp_neg_q30`).
//!
//! Per element (g = gm·2^ge, u = um·2^ue, token exponents, |gm|, |um| <= 2^17):
//! 1. x = |g| in Q20, rounded half even and capped at 32 (beyond it e^-x < 2^-46).
//! 2. E = e^-x in Q30 by `exp_neg_q30`: x·log2(e) in Q28, 2^-frac from a 256-entry table
//!    times a second-order polynomial for the last 20 bits, shifted by the integer part.
//! 3. sigmoid in Q30: round(2^60 / (2^30 + E)) for g >= 0, round(E·2^30 / (2^30 + E)) for
//!    g < 0 (exact integer division, half even).
//! 4. p = round(gm · s / 2^22) (|p| < 2^26), z = p · um (< 2^43) at exponent ge + ue − 8.
//! 5. One renormalisation of the token to `bits` (largest |z| first, half even).

use crate::fixed::round::{shr_round_any, shr_round_lane};
use crate::fixed::tables::ExpConsts;

fn round_u64(x: u64, s: u32) -> u64 {
    shr_round_any(x as i64, s) as u64
}

/// e^(-x) in Q30 for x in Q20, 0 <= x <= 32·2^20.
pub fn exp_neg_q30(x_q20: u32, c: &ExpConsts) -> u32 {
    // x·log2(e): Q20·Q30 = Q50 (< 2^25·2^31 = 2^56) → Q28 (< 2^34). Q28 keeps the
    // exponent's rounding error (2^-29, i.e. 1.3e-9 relative) below the polynomial's.
    let t = round_u64(x_q20 as u64 * c.log2e_q30 as u64, 22);
    let n = (t >> 28) as u32;
    let f = (t & 0xfff_ffff) as u32;
    let (j, r) = (f >> 20, f & 0xf_ffff);
    // 2^(-r/2^28) ≈ 1 − a + a²/2 with a = r·ln2/2^28 in Q30 (a < 2^22; the cubic term
    // left out is below 3.5e-9).
    let a = round_u64(r as u64 * c.ln2_q30 as u64, 28);
    let poly = (1u64 << 30) - a + round_u64(a * a, 31);
    let m = round_u64(c.table[(j & 255) as usize] as u64 * poly, 30);
    if n >= 40 { 0 } else { round_u64(m, n) as u32 }
}

/// round_half_even(n / d) for d > 0, n < 2^62.
pub fn div_round_u64(n: u64, d: u64) -> u64 {
    let (q, r) = (n / d, n % d);
    if 2 * r > d || (2 * r == d && q & 1 == 1) { q + 1 } else { q }
}

/// sigmoid(g) in Q30 for g = gm · 2^ge.
pub fn sigmoid_q30(gm: i32, ge: i32, c: &ExpConsts) -> u64 {
    // |g| in Q20, capped at 32.
    let sh = ge + 20;
    let mag = gm.unsigned_abs() as u64;
    let x = if sh >= 0 {
        if sh >= 40 || (mag << sh as u32) > 32 << 20 { 32 << 20 } else { mag << sh as u32 }
    } else {
        round_u64(mag, (-sh) as u32).min(32 << 20)
    } as u32;
    let e = exp_neg_q30(x, c) as u64;
    let d = (1u64 << 30) + e;
    if gm >= 0 { div_round_u64(1 << 60, d) } else { div_round_u64(e << 30, d) }
}

/// `exp_neg_q30` without branches (tested equal for every input it accepts), so that loops
/// over keys or logits vectorise.
#[inline(always)]
pub fn exp_neg_q30_lane(x_q20: u32, c: &ExpConsts) -> u32 {
    let t = shr_round_lane((x_q20 as u64 * c.log2e_q30 as u64) as i64, 22) as u64;
    let n = (t >> 28) as u32;
    let f = (t & 0xfff_ffff) as u32;
    let (j, r) = (f >> 20, f & 0xf_ffff);
    let a = shr_round_lane((r as u64 * c.ln2_q30 as u64) as i64, 28) as u64;
    let poly = (1u64 << 30) - a + shr_round_lane((a * a) as i64, 31) as u64;
    let m = shr_round_lane((c.table[(j & 255) as usize] as u64 * poly) as i64, 30);
    if n >= 40 { 0 } else { shr_round_lane(m, n) as u32 }
}

/// `div_round_u64` without a division instruction, for n < 2^62 and 0 < d < 2^62 with a
/// quotient below 2^31: the f64 quotient is within 2^-21 of n/d, so its truncation is off by
/// at most one, which the exact remainder (|q·d| < n + d < 2^63) corrects; then the same
/// half-even rule.
#[inline(always)]
pub fn div_round_lane(n: u64, d: u64) -> u64 {
    let (n, d) = (n as i64, d as i64);
    let mut q = (n as f64 / d as f64) as i64;
    let mut r = n - q * d;
    let lo = r < 0;
    q -= lo as i64;
    r += if lo { d } else { 0 };
    let hi = r >= d;
    q += hi as i64;
    r -= if hi { d } else { 0 };
    let up = 2 * r > d || (2 * r == d && q & 1 == 1);
    (q + up as i64) as u64
}

/// `sigmoid_q30` without branches on the element, for a token whose exponent gives
/// sh = ge + 20 (tested equal for every mantissa at every shift).
#[inline(always)]
pub fn sigmoid_q30_lane(gm: i32, sh: i32, c: &ExpConsts) -> u64 {
    let cap = 32u64 << 20;
    let mag = gm.unsigned_abs() as u64;
    // Both branches are computed and one is selected; with |gm| <= 2^17 (swiglu's bound)
    // mag << 39 < 2^57 cannot overflow.
    let up = if sh >= 40 { cap } else { (mag << sh.clamp(0, 39)).min(cap) };
    let down = (shr_round_lane(mag as i64, (-sh).max(0) as u32) as u64).min(cap);
    let x = if sh >= 0 { up } else { down } as u32;
    let e = exp_neg_q30_lane(x, c) as u64;
    let d = (1u64 << 30) + e;
    div_round_lane(if gm >= 0 { 1 << 60 } else { e << 30 }, d)
}

simd_dispatch! {
    /// SwiGLU of one token; returns the output exponent.
    pub fn swiglu_token(g: &[i32], ge: i32, u: &[i32], ue: i32, c: &ExpConsts, bits: u32, out: &mut [i32]) -> i32 {
        // |g·s| < 2^48: inside shr_round_lane's domain. A plain loop (not an iterator chain,
        // whose generic fold may be compiled without this function's target features).
        let mut z = vec![0i64; g.len()];
        for ((zi, &gi), &ui) in z.iter_mut().zip(g).zip(u) {
            *zi = shr_round_lane(gi as i64 * sigmoid_q30_lane(gi, ge + 20, c) as i64, 22) * ui as i64;
        }
        super::linear::renorm_row(&z, bits, out).map_or(0, |shift| ge + ue - 8 + shift)
    }
}
