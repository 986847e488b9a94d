// requires: wide.wgsl
// Shared pieces of the attention kernels (attn_max, attn_sum, attention): their parameters
// (one uniform layout for all three passes, binding 0 of each), the score of an exact q·k
// dot product and the capped difference fed to the exp. Algorithm, rounding points and
// bounds: src/backend/cpu/attention.rs (the CPU twin).

// `kc` keys per chunk, `chunks` chunks per (query, head); `offset` is the first
// invocation of a dispatch split over the device grid.
struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale_q30: u32,
    log2e_q30: u32,
    ln2_q30: u32,
    bits: u32,
    kc: u32,
    chunks: u32,
    offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// attn_max and attn_sum run a workgroup of 64 = QB × KB invocations per (block of QB
// queries, head, chunk of keys), the chunk's keys attn_step_keys(d) at a time, key lane
// kl taking keys kl, kl + KB, ... of each step (`attention_plan` in
// src/backend/gpu/resident.rs counts the loops with the same values).
const QB: u32 = 8u;
const KB: u32 = 8u;

// Keys staged per step: as many as 2048 words hold at head_dim d (the 8 KiB of `ks`), a
// multiple of KB, at most 64: fewer steps, so fewer barriers, for small heads.
fn attn_step_keys(d: u32) -> u32 {
    return clamp(2048u / d / KB * KB, KB, 64u);
}

// The dot rounded to 31 bits, times round(2^30/√d), to Q20 at exponent e + sh (e = eq + ek
// − 10), saturated at ±2^61.
fn attn_score(dot: vec2<u32>, e0: i32, scale_q30: u32) -> vec2<u32> {
    let neg = (dot.y >> 31u) == 1u;
    let mag0 = select(dot, w_neg(dot), neg);
    let sh = max(i32(bitlen64(mag0)) - 31i, 0i);
    // Round the magnitude (symmetric half-even, as the twin's signed rounding): <= 2^31.
    let mag32 = w_shr_round(mag0, u32(sh)).x;
    let pm = w_mul_u32(mag32, scale_q30);   // < 2^61
    let prod = select(pm, w_neg(pm), neg);
    let e = e0 + sh;
    if (e >= 0i) {
        // Saturate at ±2^61 (|prod| << e must stay below 2^61).
        let lim = vec2<u32>(0u, 1u << 29u);
        let mag = w_abs(prod);
        if (e >= 62i || w_lt_u(w_sar(lim, u32(e)), mag)) {
            if (mag.x == 0u && mag.y == 0u) {
                return vec2<u32>(0u, 0u);
            }
            return select(lim, w_neg(lim), (prod.y >> 31u) == 1u);
        }
        return w_shl(prod, u32(e));
    }
    if (-e >= 63i) {
        return vec2<u32>(0u, 0u);
    }
    return w_shr_round(prod, u32(-e));
}

// max − s in Q20 (>= 0), capped at 32: the exp's argument.
fn attn_diff(m: vec2<u32>, s: vec2<u32>) -> u32 {
    let diff = w_sub(m, s);
    let cap = 32u << 20u;
    if (diff.y == 0u && diff.x < cap) {
        return diff.x;
    }
    return cap;
}

// Σ_i a_i · b_i exactly (|a|, |b| <= 2^17, checked by check_attention_args; d <= 256), in
// 32-bit products: each operand split as x = xh·2^9 + xl (xh = x >> 9, |xh| <= 2^8;
// xl = x & 511, 0 <= xl < 2^9), the four partial sums Σah·bh (<= 2^24), Σah·bl and Σal·bh
// (each < 2^25) and Σal·bl (< 2^26) kept in the lanes of one vec4<i32>, exact, and joined
// once per dot in 64 bits by attn_dot_value (|dot| <= 2^42). Integer sums: the same bits
// as one 64-bit product per term.
fn attn_dot_step(acc: vec4<i32>, a: i32, b: i32) -> vec4<i32> {
    let ah = a >> 9u;
    let al = a & 511i;
    let bh = b >> 9u;
    let bl = b & 511i;
    return acc + vec4<i32>(ah, ah, al, al) * vec4<i32>(bh, bl, bh, bl);
}

fn attn_dot_value(acc: vec4<i32>) -> vec2<u32> {
    let cross = w_add(w_from_i32(acc.y), w_from_i32(acc.z));
    return w_add(w_add(w_shl(w_from_i32(acc.x), 18u), w_shl(cross, 9u)), w_from_i32(acc.w));
}
