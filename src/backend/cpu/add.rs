//! CPU twin of shaders/add.wgsl: the residual add of two per-token fixed-point vectors.
//!
//! Per token (x = a·2^ex, y = b·2^ey, |a|, |b| <= 2^23): with emax = max(ex, ey) and
//! emin = max(min(ex, ey), emax − 38), each operand is brought to emin (left shifts are
//! exact: < 2^23·2^38 = 2^61; an operand more than 38 below the other is first rounded half
//! even to emax − 38, where it is far below the output's resolution), summed exactly
//! (< 2^62), and the token is renormalised once to `bits` (largest |s| first, half even).

use crate::fixed::round::shr_round_any;

/// a·2^(e − target) as an integer at exponent `target`, exact for e >= target, rounded half
/// even otherwise.
fn to_exp(a: i32, e: i32, target: i32) -> i64 {
    if e >= target { (a as i64) << (e - target) as u32 } else { shr_round_any(a as i64, (target - e) as u32) }
}

/// Add one token; returns the output exponent.
pub fn add_token(a: &[i32], ex: i32, b: &[i32], ey: i32, bits: u32, out: &mut [i32]) -> i32 {
    let emax = ex.max(ey);
    let emin = ex.min(ey).max(emax - 38);
    let s: Vec<i64> = (0..a.len()).map(|i| to_exp(a[i], ex, emin) + to_exp(b[i], ey, emin)).collect();
    super::linear::renorm_row(&s, bits, out).map_or(0, |shift| emin + shift)
}
