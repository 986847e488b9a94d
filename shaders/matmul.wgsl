// requires: wide.wgsl
// Exact integer matrix product y = x · wᵀ (CPU twin: src/backend/cpu/linear.rs).
// x: [T, K] activation mantissas (|a| <= 2^17, exponent per token, applied later);
// w: [N, K] weight mantissas (|m| <= 2^15) in groups with exponents within 16 of the row's
// smallest, so each group sum (< 2^38) shifted to the row's smallest exponent (< 2^54) and
// summed over <= 128 groups stays below 2^61: the 64-bit result is exact, no rounding.

struct Params {
    tokens: u32,
    n: u32,          // weight rows in this chunk
    k: u32,
    group_size: u32,
    groups_per_row: u32,
    total: u32,      // tokens * n
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<i32>;
@group(0) @binding(2) var<storage, read> w: array<i32>;
@group(0) @binding(3) var<storage, read> wexp: array<i32>;   // [n, groups_per_row]
@group(0) @binding(4) var<storage, read> rexp: array<i32>;   // [n]: min group exponent
@group(0) @binding(5) var<storage, read_write> out: array<u32>; // [tokens, n] × (lo, hi)

@compute @workgroup_size(64)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.total) {
        return;
    }
    let t = idx / p.n;
    let o = idx % p.n;
    var acc = vec2<u32>(0u, 0u);
    for (var g = 0u; g < p.groups_per_row; g++) {
        let c0 = g * p.group_size;
        let c1 = min(c0 + p.group_size, p.k);
        var s = vec2<u32>(0u, 0u);
        for (var c = c0; c < c1; c++) {
            s = w_add(s, w_mul_i32(x[t * p.k + c], w[o * p.k + c]));
        }
        acc = w_add(acc, w_shl(s, u32(wexp[o * p.groups_per_row + g] - rexp[o])));
    }
    out[2u * idx] = acc.x;
    out[2u * idx + 1u] = acc.y;
}
