//! CPU twin of shaders/wide.wgsl: the same operations on native 64-bit integers.

use crate::backend::{WideCase, WideResult};
use crate::fixed::round::shr_round;

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
