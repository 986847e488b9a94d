//! CPU twin of shaders/rmsnorm.wgsl: RMSNorm in integers.
//!
//! Per token (a_i · 2^ex, |a| <= 2^23, H <= 2^16 channels), with host constants
//! H·ε = he_m · 2^he_e and sqrt(H) = sh_m · 2^sh_e (sh_m in [2^29, 2^30)):
//! 1. ss = Σ a_i² exactly (< 2^62).
//! 2. V = ss·2^(2ex) + H·ε to 33 significant bits: both terms rounded (half even) to units
//!    of 2^(T−33), T the larger top bit, then added (Vm < 2^34, exponent Ve).
//! 3. M·2^E = V with E even and M in [2^30, 2^32) (one more rounding; 2^32 renormalises).
//! 4. y ≈ 2^30/sqrt(M/2^30) in Q30: seed from a 192-entry table, two Newton steps
//!    y ← y(3 − m y²)/2 with every product < 2^62 and each shift rounded half even.
//! 5. P = sh_m · y rounded to 24 bits: the token's factor sqrt(H)/sqrt(V).
//! 6. z_i = a_i · g_i · P (< 2^23 · 2^15 · 2^24 = 2^62), then one renormalisation of the
//!    token to `bits` bits (largest |z| first, half even).

use super::linear::bitlen;
use crate::fixed::round::shr_round_any;
use crate::fixed::tables::RmsConsts;

/// x · 2^-s rounded half to even, or x · 2^-s exactly when s < 0 (caller bounds it).
fn shift_round(x: u64, s: i32) -> u64 {
    if s >= 0 { shr_round_any(x as i64, s as u32) as u64 } else { x << (-s) as u32 }
}

/// rsqrt of M in [2^30, 2^32) as Q30: y ≈ 2^30 / sqrt(M / 2^30).
pub fn rsqrt_q30(m: u64, seed: &[u32]) -> u64 {
    let mut y = seed[(m >> 24) as usize - 64] as u64;
    for _ in 0..2 {
        let y2 = shift_round(y * y, 30);
        let my2 = shift_round(m * y2, 30);
        let t = (3u64 << 30) - my2;
        y = shift_round(y * t, 31);
    }
    y
}

/// Normalise one token; returns the output exponent.
pub fn rms_token(a: &[i32], ex: i32, g: &[i32], eg: i32, c: &RmsConsts, bits: u32, out: &mut [i32]) -> i32 {
    let ss: u64 = a.iter().map(|&v| (v as i64 * v as i64) as u64).sum();
    // 2. V to 33 bits.
    let top2 = c.he_e + bitlen(c.he_m);
    let top = if ss == 0 { top2 } else { top2.max(2 * ex + bitlen(ss)) };
    let ve = top - 33;
    let vm = shift_round(ss, ve - 2 * ex) + shift_round(c.he_m, ve - c.he_e);
    // 3. M in [2^30, 2^32), even exponent.
    let mut s0 = bitlen(vm) - 32;
    if (ve + s0) % 2 != 0 {
        s0 += 1;
    }
    let mut m = shift_round(vm, s0);
    let mut e = ve + s0;
    if m >> 32 != 0 {
        m >>= 2;
        e += 2;
    }
    // 4-5. sqrt(H)/sqrt(M 2^e) = sh_m 2^sh_e · y 2^-30 · 2^-15 · 2^(-e/2) = P 2^pe.
    let y = rsqrt_q30(m, &c.seed);
    let prod = c.sh_m as u64 * y; // < 2^60
    let p = shift_round(prod, 36); // < 2^24
    let pe = c.sh_e + 36 - 30 - 15 - e / 2;
    // 6. z = a g P, then one renormalisation.
    let z: Vec<i64> = (0..a.len()).map(|i| a[i] as i64 * g[i] as i64 * p as i64).collect();
    super::linear::renorm_row(&z, bits, out).map_or(0, |shift| ex + eg + pe + shift)
}
