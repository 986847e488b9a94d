// requires: wide.wgsl
// Exact integer matrix product y = x · wᵀ (CPU twin: src/backend/cpu/linear.rs).
// x: [T, K] activation mantissas (|a| <= 2^17, exponent per token, applied later);
// w: [N, K] weight mantissas (|m| <= 2^15) in groups of <= 64 with exponents within
// S = matmul_max_spread(K) of the row's smallest (16 for K <= 8192, one less per doubling:
// 13 at K = 65,536, the most accepted). Each product |a·m| <= 2^32, shifted to the row's
// smallest exponent <= 2^(32+S), so any sum over a subset of a row's K columns (a group, a
// slice, the whole row) is below K·2^(32+S) <= 2^61: every 64-bit value here is exact.
//
// Split-K: invocation idx computes one slice of `slice_groups` groups of output
// (t, o) = idx / slices, slice idx % slices, and writes it to out[idx] (so [tokens, n,
// slices]; with one slice, the [tokens, n] sums themselves). matmul_reduce.wgsl adds the
// slices of each output in wrapping 64-bit arithmetic: exact, since the total and every
// partial sum are below 2^61 (and wrapping addition is associative anyway). One slice walks
// at most slice_groups·group_size columns and slice_groups groups, so an invocation's loops
// stay within Mesa llvmpipe's 65,535 iterations (`check_loops`) whatever K.

struct Params {
    tokens: u32,
    n: u32,          // weight rows in this chunk
    k: u32,
    group_size: u32,
    groups_per_row: u32,
    total: u32,      // tokens * n * slices (invocations)
    slice_groups: u32,
    slices: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<i32>;
@group(0) @binding(2) var<storage, read> w: array<i32>;
@group(0) @binding(3) var<storage, read> wexp: array<i32>;   // [n, groups_per_row]
@group(0) @binding(4) var<storage, read> rexp: array<i32>;   // [n]: min group exponent
@group(0) @binding(5) var<storage, read_write> out: array<u32>; // [tokens, n, slices] × (lo, hi)

@compute @workgroup_size(64)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.total) {
        return;
    }
    let to = idx / p.slices;
    let sl = idx % p.slices;
    let t = to / p.n;
    let o = to % p.n;
    let g0 = sl * p.slice_groups;
    let g1 = min(g0 + p.slice_groups, p.groups_per_row);
    var acc = vec2<u32>(0u, 0u);
    for (var g = g0; g < g1; g++) {
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
