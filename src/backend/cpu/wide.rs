//! CPU twin of shaders/wide.wgsl: the same operations on native 64-bit integers.

use crate::backend::{WideCase, WideResult};

/// a / 2^(s & 63) rounded half to even (twin of `w_shr_round`).
#[inline]
pub fn shr_round(a: i64, s: u32) -> i64 {
    let k = s & 63;
    if k == 0 {
        return a;
    }
    let q = a >> k;
    let rem = (a as u64) & ((1u64 << k) - 1);
    let half = 1u64 << (k - 1);
    // q + 1 cannot overflow: q <= (2^63 - 1) >> 1.
    if rem > half || (rem == half && q & 1 == 1) { q + 1 } else { q }
}

pub fn eval(c: &WideCase) -> WideResult {
    let k = c.s & 63;
    WideResult {
        add: c.a.wrapping_add(c.b),
        sub: c.a.wrapping_sub(c.b),
        mul_i32: c.x as i64 * c.y as i64,
        mul_u32: c.x as u32 as u64 * c.y as u32 as u64,
        shl: ((c.a as u64) << k) as i64,
        sar: c.a >> k,
        shr_round: shr_round(c.a, c.s),
        neg: c.a.wrapping_neg(),
        mul_wu: c.a.wrapping_mul(c.s as i64),
    }
}
