//! Right shifts of exact integers rounded half to even (DESIGN §3 rule 5), as
//! every kernel, its WGSL twin (`shaders/wide.wgsl`) and the host code around them apply it.

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

/// `a · 2^-s` rounded half to even for any s >= 0 (0 once s reaches 63: |a| < 2^62).
#[inline]
pub fn shr_round_any(a: i64, s: u32) -> i64 {
    if s >= 63 { 0 } else { shr_round(a, s) }
}

/// `shr_round_any` for |a| < 2^62 written without branches (selects only), so that loops
/// over keys vectorise. Equal to it on that domain (tested in
/// `backend/cpu/attention.rs`).
#[inline(always)]
pub fn shr_round_lane(a: i64, s: u32) -> i64 {
    let k = s.min(62);
    // 1 for k >= 1, 0 for k = 0, in arithmetic (a bool cast keeps loops from vectorising).
    let nz = (k as i64 + 63) >> 6;
    // a + 2^(k-1) − 1 + (quotient odd) < 2^63 for |a| < 2^62: rounds half to even.
    let r = (a + (((1i64 << k) - 1) >> 1) + ((a >> k) & nz)) >> k;
    if s >= 63 { 0 } else { r }
}
