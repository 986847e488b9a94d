// requires: wide.wgsl
// Exact integer matrix product y = x · wᵀ (CPU twin: src/backend/cpu/linear.rs).
// x: [T, K] activation mantissas (|a| <= 2^17, exponent per token, applied later; checked
// by check_matmul_acts); w: [N, K] weight mantissas (|m| <= 2^15, GroupFixed's 16-bit
// bound) in groups of <= 64 (check_matmul_weights) with exponents within
// S = matmul_max_spread(K) of the row's smallest (16 for K <= 8192, one less per doubling:
// 13 at K = 65,536, the most accepted). Each product |a·m| <= 2^32, shifted to the row's
// smallest exponent <= 2^(32+S), so any sum over a subset of a row's K columns (a group, a
// slice, the whole row) is below K·2^(32+S) <= 2^61: every 64-bit value here is exact.
//
// Products in 32-bit integers, not emulated 64-bit ones: a = h·2^9 + l with h = a >> 9
// (|h| <= 2^8) and l = a & 511 (0 <= l < 2^9), so within one group of <= 64 columns
// Σ h·m <= 64·2^8·2^15 = 2^29 and Σ l·m < 64·2^9·2^15 = 2^30: both i32 sums are exact, and
// the group's sum is (Σh·m)·2^9 + Σl·m, formed once per group in 64 bits: the split the
// CPU's VNNI kernel makes (src/backend/cpu/matmul_vnni.rs). Integer sums in any order give
// the same bits, so the tiling below cannot change a result.
//
// matmul_rows, for products with fewer than 32 tokens or rows (where a tile would be mostly
// padding): one invocation per output and slice, the same split products.
//
// Tiling (matmul): a workgroup of 64 invocations computes a 32-token × 32-row tile of outputs, each
// invocation 4 × 4 of them. Per group, the tile's activations and weights (32 × group_size
// each) are staged in workgroup memory once and each value is read by 8 invocations and
// used for 4 outputs, instead of every output re-reading its whole row and column.
//
// Split-K: the workgroup's tile index carries a slice: it walks `slice_groups` groups from
// slice · slice_groups and writes out[(t·n + o)·slices + slice] (so [tokens, n, slices];
// with one slice, the [tokens, n] sums themselves). matmul_reduce.wgsl adds the slices of
// each output in wrapping 64-bit arithmetic: exact, since the total and every partial sum
// are below 2^61. One invocation's loops run slice_groups · (1 + 32 + group_size + 4) + 20
// times at most (`check_matmul_loops`), within Mesa llvmpipe's 65,535 whatever K.

struct Params {
    tokens: u32,
    n: u32,          // weight rows in this chunk
    k: u32,
    group_size: u32,
    groups_per_row: u32,
    units: u32,      // matmul: tiles · slices (workgroups); matmul_rows: outputs · slices (invocations)
    slice_groups: u32,
    slices: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<i32>;
@group(0) @binding(2) var<storage, read> w: array<i32>;
@group(0) @binding(3) var<storage, read> wexp: array<i32>;   // [n, groups_per_row]
@group(0) @binding(4) var<storage, read> rexp: array<i32>;   // [n]: min group exponent
@group(0) @binding(5) var<storage, read_write> out: array<u32>; // [tokens, n, slices] × (lo, hi)

const TILE: u32 = 32u;   // tokens and rows of a workgroup's output tile
const STEP: u32 = 8u;    // invocation (lt, ln) owns tokens lt + 8i and rows ln + 8j, i, j < 4
const GMAX: u32 = 64u;

// The tile's activations and weights of one group, column-major ([GMAX, TILE]) so that the
// invocations next to each other (consecutive ln) read consecutive words. 16 KiB in all,
// WebGPU's guaranteed minimum of workgroup storage.
var<workgroup> xs: array<i32, 2048>;
var<workgroup> ws: array<i32, 2048>;

// Σ h·m and Σ l·m of one group, as one 64-bit value.
fn group_sum(hs: i32, ls: i32) -> vec2<u32> {
    return w_add(w_shl(w_from_i32(hs), 9u), w_from_i32(ls));
}

@compute @workgroup_size(64)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // Uniform per workgroup, so every invocation of a working workgroup reaches the
    // barriers.
    let tile = wg.x + wg.y * nwg.x;
    if (tile >= p.units) {
        return;
    }
    let row_tiles = (p.n + TILE - 1u) / TILE;
    let sl = tile % p.slices;
    let tn = tile / p.slices;
    let t0 = (tn / row_tiles) * TILE;
    let n0 = (tn % row_tiles) * TILE;
    let lt = li / STEP;
    let ln = li % STEP;
    let g0 = sl * p.slice_groups;
    let g1 = min(g0 + p.slice_groups, p.groups_per_row);
    var acc: array<vec2<u32>, 16>;   // [4i + j]: token lt + 8i, row ln + 8j
    for (var g = g0; g < g1; g++) {
        let c0 = g * p.group_size;
        let width = min(p.group_size, p.k - c0);
        // Stage: element e is column e / TILE, tile row e % TILE; outside the matrices (or
        // past the group) it is 0 and adds nothing.
        for (var e = li; e < TILE * GMAX; e += 64u) {
            let c = e / TILE;
            let r = e % TILE;
            var xv = 0i;
            var wv = 0i;
            if (c < width) {
                if (t0 + r < p.tokens) {
                    xv = x[(t0 + r) * p.k + c0 + c];
                }
                if (n0 + r < p.n) {
                    wv = w[(n0 + r) * p.k + c0 + c];
                }
            }
            xs[e] = xv;
            ws[e] = wv;
        }
        workgroupBarrier();
        // Row j of each token's sums in lane j of a vec4 (no inner loops: llvmpipe counts
        // every loop iteration against its limit).
        var h0 = vec4<i32>(0i); var l0 = vec4<i32>(0i);
        var h1 = vec4<i32>(0i); var l1 = vec4<i32>(0i);
        var h2 = vec4<i32>(0i); var l2 = vec4<i32>(0i);
        var h3 = vec4<i32>(0i); var l3 = vec4<i32>(0i);
        for (var c = 0u; c < width; c++) {
            let col = c * TILE;
            let m = vec4<i32>(ws[col + ln], ws[col + ln + STEP], ws[col + ln + 2u * STEP], ws[col + ln + 3u * STEP]);
            let a = vec4<i32>(xs[col + lt], xs[col + lt + STEP], xs[col + lt + 2u * STEP], xs[col + lt + 3u * STEP]);
            let ah = a >> vec4<u32>(9u);
            let al = a & vec4<i32>(511i);
            h0 += ah.x * m; l0 += al.x * m;
            h1 += ah.y * m; l1 += al.y * m;
            h2 += ah.z * m; l2 += al.z * m;
            h3 += ah.w * m; l3 += al.w * m;
        }
        // Each row's group sums, shifted to the row's smallest exponent (rows past n add
        // nothing and read nothing).
        for (var j = 0u; j < 4u; j++) {
            let o = n0 + ln + STEP * j;
            if (o < p.n) {
                let sh = u32(wexp[o * p.groups_per_row + g] - rexp[o]);
                acc[j] = w_add(acc[j], w_shl(group_sum(h0[j], l0[j]), sh));
                acc[4u + j] = w_add(acc[4u + j], w_shl(group_sum(h1[j], l1[j]), sh));
                acc[8u + j] = w_add(acc[8u + j], w_shl(group_sum(h2[j], l2[j]), sh));
                acc[12u + j] = w_add(acc[12u + j], w_shl(group_sum(h3[j], l3[j]), sh));
            }
        }
        // The next group overwrites the tile only after every invocation has read it.
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + lt + STEP * i;
        for (var j = 0u; j < 4u; j++) {
            let o = n0 + ln + STEP * j;
            if (t < p.tokens && o < p.n) {
                let idx = (t * p.n + o) * p.slices + sl;
                out[2u * idx] = acc[4u * i + j].x;
                out[2u * idx + 1u] = acc[4u * i + j].y;
            }
        }
    }
}

@compute @workgroup_size(64)
fn matmul_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.units) {
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
        var hs = 0i;
        var ls = 0i;
        for (var c = c0; c < c1; c++) {
            let a = x[t * p.k + c];
            let m = w[o * p.k + c];
            hs += (a >> 9u) * m;
            ls += (a & 511i) * m;
        }
        acc = w_add(acc, w_shl(group_sum(hs, ls), u32(wexp[o * p.groups_per_row + g] - rexp[o])));
    }
    out[2u * idx] = acc.x;
    out[2u * idx + 1u] = acc.y;
}
