// requires: wide.wgsl
// Residual add of two per-token fixed-point vectors, one invocation per token; the
// alignment, its bound (38) and the one rounding are specified in src/backend/cpu/add.rs.

struct Params {
    tokens: u32,
    width: u32,
    bits: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<i32>;
@group(0) @binding(2) var<storage, read> b: array<i32>;
@group(0) @binding(3) var<storage, read> aexp: array<i32>;
@group(0) @binding(4) var<storage, read> bexp: array<i32>;
@group(0) @binding(5) var<storage, read_write> out: array<i32>;
@group(0) @binding(6) var<storage, read_write> oexp: array<i32>;

fn to_exp(v: i32, e: i32, target_exp: i32) -> vec2<u32> {
    if (e >= target_exp) {
        return w_shl(w_from_i32(v), u32(e - target_exp));
    }
    let s = u32(target_exp - e);
    if (s >= 63u) {
        return vec2<u32>(0u, 0u);
    }
    return w_shr_round(w_from_i32(v), s);
}

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.tokens) {
        return;
    }
    let base = t * p.width;
    let ex = aexp[t];
    let ey = bexp[t];
    let emax = max(ex, ey);
    let emin = max(min(ex, ey), emax - 38i);
    var top = 0u;
    for (var i = 0u; i < p.width; i++) {
        let s = w_add(to_exp(a[base + i], ex, emin), to_exp(b[base + i], ey, emin));
        top = max(top, bitlen64(w_abs(s)));
    }
    if (top == 0u) {
        oexp[t] = 0i;
        for (var i = 0u; i < p.width; i++) {
            out[base + i] = 0i;
        }
        return;
    }
    let shift = i32(top) - (i32(p.bits) - 1i);
    for (var i = 0u; i < p.width; i++) {
        let s = w_add(to_exp(a[base + i], ex, emin), to_exp(b[base + i], ey, emin));
        out[base + i] = w_round_to_i32(s, shift);
    }
    oexp[t] = emin + shift;
}
