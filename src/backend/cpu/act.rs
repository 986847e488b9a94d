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

use super::linear::shr_round_any;

/// ln(2) and log2(e) in Q30, and the table 2^(-j/256) in Q30, all from f64 with IEEE
/// operations and `libm` (identical on every machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpConsts {
    pub ln2_q30: u32,
    pub log2e_q30: u32,
    pub table: Vec<u32>,
}

impl ExpConsts {
    pub fn new() -> ExpConsts {
        let q30 = 1073741824.0f64;
        ExpConsts {
            ln2_q30: (core::f64::consts::LN_2 * q30).round_ties_even() as u32,
            log2e_q30: (core::f64::consts::LOG2_E * q30).round_ties_even() as u32,
            table: (0..256).map(|j| (libm::exp2(-(j as f64) / 256.0) * q30).round_ties_even() as u32).collect(),
        }
    }
}

impl Default for ExpConsts {
    fn default() -> Self {
        Self::new()
    }
}

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
    let m = round_u64(c.table[j as usize] as u64 * poly, 30);
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

/// SwiGLU of one token; returns the output exponent.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_token(g: &[i32], ge: i32, u: &[i32], ue: i32, c: &ExpConsts, bits: u32, out: &mut [i32]) -> i32 {
    let z: Vec<i64> = (0..g.len())
        .map(|i| {
            let s = sigmoid_q30(g[i], ge, c) as i64;
            shr_round_any(g[i] as i64 * s, 22) * u[i] as i64
        })
        .collect();
    super::linear::renorm_row(&z, bits, out).map_or(0, |shift| ge + ue - 8 + shift)
}
