// 64-bit integer arithmetic on vec2<u32>(lo, hi), two's complement, wrapping modulo 2^64.
// WGSL core has no 64-bit integers (DESIGN §3 rule 3); every later kernel accumulates in these.
// CPU twin: src/backend/cpu/wide.rs (native i64/u64, identical results).

fn w_from_i32(x: i32) -> vec2<u32> {
    return vec2<u32>(bitcast<u32>(x), select(0u, 0xffffffffu, x < 0));
}

fn w_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    let carry = select(0u, 1u, lo < a.x);
    return vec2<u32>(lo, a.y + b.y + carry);
}

fn w_neg(a: vec2<u32>) -> vec2<u32> {
    return w_add(vec2<u32>(~a.x, ~a.y), vec2<u32>(1u, 0u));
}

fn w_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return w_add(a, w_neg(b));
}

// Unsigned 32x32 -> 64 from 16-bit pieces: each partial product is below 2^32.
fn w_mul_u32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = p01 + p10;
    // A carry out of `mid` is worth 2^32 at bit 16, i.e. 2^16 in the high word.
    let mid_carry = select(0u, 0x10000u, mid < p01);
    let lo = p00 + (mid << 16u);
    let lo_carry = select(0u, 1u, lo < p00);
    return vec2<u32>(lo, p11 + (mid >> 16u) + mid_carry + lo_carry);
}

// Signed 32x32 -> 64. With ua = a mod 2^32: ua*ub = a*b + 2^32*(a[b<0] + b[a<0]) mod 2^64,
// so the signed product is the unsigned one with those terms taken off the high word.
fn w_mul_i32(a: i32, b: i32) -> vec2<u32> {
    var p = w_mul_u32(bitcast<u32>(a), bitcast<u32>(b));
    if (a < 0) {
        p.y = p.y - bitcast<u32>(b);
    }
    if (b < 0) {
        p.y = p.y - bitcast<u32>(a);
    }
    return p;
}

// 64-bit times u32, wrapping modulo 2^64 (exact whenever the product fits; correct for
// negative a in two's complement too).
fn w_mul_wu(a: vec2<u32>, b: u32) -> vec2<u32> {
    let lo = w_mul_u32(a.x, b);
    return vec2<u32>(lo.x, lo.y + a.y * b);
}

// Shift left by s & 63.
fn w_shl(a: vec2<u32>, s: u32) -> vec2<u32> {
    let k = s & 63u;
    if (k == 0u) {
        return a;
    }
    if (k < 32u) {
        return vec2<u32>(a.x << k, (a.y << k) | (a.x >> ((32u - k) & 31u)));
    }
    return vec2<u32>(0u, a.x << ((k - 32u) & 31u));
}

// Arithmetic (floor) shift right by s & 63.
fn w_sar(a: vec2<u32>, s: u32) -> vec2<u32> {
    let k = s & 63u;
    if (k == 0u) {
        return a;
    }
    let hi = bitcast<i32>(a.y);
    if (k < 32u) {
        return vec2<u32>((a.x >> k) | (a.y << ((32u - k) & 31u)), bitcast<u32>(hi >> k));
    }
    return vec2<u32>(bitcast<u32>(hi >> ((k - 32u) & 31u)), bitcast<u32>(hi >> 31u));
}

// |a| of a signed 64-bit value (a > -2^63).
fn w_abs(a: vec2<u32>) -> vec2<u32> {
    return select(a, w_neg(a), (a.y >> 31u) == 1u);
}

// Number of significant bits of an unsigned 64-bit value (0 for 0).
fn bitlen64(a: vec2<u32>) -> u32 {
    if (a.y != 0u) {
        return 64u - countLeadingZeros(a.y);
    }
    return 32u - countLeadingZeros(a.x);
}

// Unsigned a < b.
fn w_lt_u(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// Signed a < b.
fn w_lt(a: vec2<u32>, b: vec2<u32>) -> bool {
    let ah = bitcast<i32>(a.y);
    let bh = bitcast<i32>(b.y);
    return ah < bh || (ah == bh && a.x < b.x);
}

// a / 2^(s & 63), rounded half to even: the one rounding step of every fixed-point kernel.
fn w_shr_round(a: vec2<u32>, s: u32) -> vec2<u32> {
    let k = s & 63u;
    if (k == 0u) {
        return a;
    }
    let q = w_sar(a, k);
    // Remainder a - q * 2^k, in [0, 2^k): the low k bits of a.
    var rem: vec2<u32>;
    if (k < 32u) {
        rem = vec2<u32>(a.x & ((1u << k) - 1u), 0u);
    } else {
        rem = vec2<u32>(a.x, a.y & ((1u << ((k - 32u) & 31u)) - 1u));
    }
    let half = w_shl(vec2<u32>(1u, 0u), k - 1u);
    let above = w_lt_u(half, rem);
    let tie_odd = rem.x == half.x && rem.y == half.y && (q.x & 1u) == 1u;
    if (above || tie_odd) {
        return w_add(q, vec2<u32>(1u, 0u));
    }
    return q;
}

// The one rounding of the per-token kernels: v · 2^-shift rounded half to even (0 once
// shift >= 63), or v · 2^-shift exactly when shift < 0 (the caller bounds it); returns the
// low word, which the caller's bit width guarantees holds the result.
fn w_round_to_i32(v: vec2<u32>, shift: i32) -> i32 {
    if (shift >= 63i) {
        return 0i;
    }
    if (shift >= 0i) {
        return bitcast<i32>(w_shr_round(v, u32(shift)).x);
    }
    return bitcast<i32>(w_shl(v, u32(-shift)).x);
}
