// requires: wide.wgsl
// Conformance kernel for the 64-bit library: evaluates every operation on a list of cases
// so each backend's bits can be compared with the CPU twin (src/backend/cpu/wide.rs).

struct Params {
    count: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Per case 8 words: a.lo a.hi b.lo b.hi x y s pad.
@group(0) @binding(1) var<storage, read> cases: array<u32>;
// Per case 18 words: add sub mul_i32 mul_u32 shl sar shr_round neg mul_wu, each (lo, hi).
@group(0) @binding(2) var<storage, read_write> results: array<u32>;

fn put(base: u32, slot: u32, v: vec2<u32>) {
    results[base + 2u * slot] = v.x;
    results[base + 2u * slot + 1u] = v.y;
}

@compute @workgroup_size(64)
fn wide_ops(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.count) {
        return;
    }
    let c = 8u * i;
    let a = vec2<u32>(cases[c], cases[c + 1u]);
    let b = vec2<u32>(cases[c + 2u], cases[c + 3u]);
    let x = bitcast<i32>(cases[c + 4u]);
    let y = bitcast<i32>(cases[c + 5u]);
    let s = cases[c + 6u];
    let o = 18u * i;
    put(o, 0u, w_add(a, b));
    put(o, 1u, w_sub(a, b));
    put(o, 2u, w_mul_i32(x, y));
    put(o, 3u, w_mul_u32(bitcast<u32>(x), bitcast<u32>(y)));
    put(o, 4u, w_shl(a, s));
    put(o, 5u, w_sar(a, s));
    put(o, 6u, w_shr_round(a, s));
    put(o, 7u, w_neg(a));
    put(o, 8u, w_mul_wu(a, s));
}
