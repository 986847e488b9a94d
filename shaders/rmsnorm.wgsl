// requires: wide.wgsl
// RMSNorm in integers, one invocation per token. The algorithm, its rounding points and
// bounds are specified in the CPU twin, src/backend/cpu/norm.rs; this follows it step by step.

struct Params {
    tokens: u32,
    width: u32,
    bits: u32,
    gamma_exp: i32,
    he_lo: u32,      // H·ε mantissa (53 bits) low and high words
    he_hi: u32,
    he_e: i32,
    sh_m: u32,       // sqrt(H) mantissa, 30 bits
    sh_e: i32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<i32>;      // [tokens, width]
@group(0) @binding(2) var<storage, read> xexp: array<i32>;   // [tokens]
@group(0) @binding(3) var<storage, read> gamma: array<i32>;  // [width]
@group(0) @binding(4) var<storage, read> seed: array<u32>;   // [192]
@group(0) @binding(5) var<storage, read_write> out: array<i32>;
@group(0) @binding(6) var<storage, read_write> oexp: array<i32>;

// x · 2^-s rounded half to even (0 once s >= 63), or exactly x · 2^-s for s < 0.
fn shift_round(x: vec2<u32>, s: i32) -> vec2<u32> {
    if (s >= 63i) {
        return vec2<u32>(0u, 0u);
    }
    if (s >= 0i) {
        return w_shr_round(x, u32(s));
    }
    return w_shl(x, u32(-s));
}

fn rsqrt_q30(m: vec2<u32>) -> vec2<u32> {
    // m < 2^32: m.y == 0
    var y = vec2<u32>(seed[(m.x >> 24u) - 64u], 0u);
    for (var it = 0u; it < 2u; it++) {
        let y2 = shift_round(w_mul_u32(y.x, y.x), 30i);
        let my2 = shift_round(w_mul_u32(m.x, y2.x), 30i);
        let t = w_sub(vec2<u32>(3u << 30u, 0u), my2);
        y = shift_round(w_mul_u32(y.x, t.x), 31i);
    }
    return y;
}

@compute @workgroup_size(64)
fn rmsnorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.tokens) {
        return;
    }
    let base = t * p.width;
    let ex = xexp[t];
    var ss = vec2<u32>(0u, 0u);
    for (var i = 0u; i < p.width; i++) {
        ss = w_add(ss, w_mul_i32(a[base + i], a[base + i]));
    }
    let he = vec2<u32>(p.he_lo, p.he_hi);
    let top2 = p.he_e + i32(bitlen64(he));
    var top = top2;
    if (ss.x != 0u || ss.y != 0u) {
        top = max(top2, 2i * ex + i32(bitlen64(ss)));
    }
    let ve = top - 33i;
    let vm = w_add(shift_round(ss, ve - 2i * ex), shift_round(he, ve - p.he_e));
    var s0 = i32(bitlen64(vm)) - 32i;
    if (((ve + s0) & 1i) != 0i) {
        s0 = s0 + 1i;
    }
    var m = shift_round(vm, s0);
    var e = ve + s0;
    if (m.y != 0u) {
        m = w_sar(m, 2u);
        e = e + 2i;
    }
    let y = rsqrt_q30(m);
    let prod = w_mul_u32(p.sh_m, y.x);
    let pf = shift_round(prod, 36i).x;
    let pe = p.sh_e + 36i - 30i - 15i - e / 2i;
    var top_z = 0u;
    for (var i = 0u; i < p.width; i++) {
        // |a g| <= 2^38 does not fit 32 bits: a·g in 64 bits, then times P (< 2^24).
        let ag = w_mul_i32(a[base + i], gamma[i]);
        let neg = (ag.y >> 31u) == 1u;
        let z = w_mul_wu(select(ag, w_neg(ag), neg), pf);
        top_z = max(top_z, bitlen64(z));
    }
    if (top_z == 0u) {
        oexp[t] = 0i;
        for (var i = 0u; i < p.width; i++) {
            out[base + i] = 0i;
        }
        return;
    }
    let shift = i32(top_z) - (i32(p.bits) - 1i);
    for (var i = 0u; i < p.width; i++) {
        let ag = w_mul_i32(a[base + i], gamma[i]);
        let neg = (ag.y >> 31u) == 1u;
        var z = w_mul_wu(select(ag, w_neg(ag), neg), pf);
        z = select(z, w_neg(z), neg);
        out[base + i] = bitcast<i32>(shift_round(z, shift).x);
    }
    oexp[t] = ex + p.gamma_exp + pe + shift;
}
