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
// matmul_dot4: the tiled kernel with packed 4×8-bit integer dot products (WGSL's
// dot4I8Packed; naga emits the hardware instruction (SPIR-V OpSDot, HLSL dot4add_i8packed)
// where the device has it and exact shifts and multiplies elsewhere). Each value is split
// into signed byte digits once, while the tile is staged: a = d2·2^16 + d1·2^8 + d0 with
// d0, d1 in [-128, 127] and d2 in [-2, 2] (|a| <= 2^17), m = (e1 + f)·2^8 + e0 with e0, e1
// in [-128, 127] and f in {0, 1}: m spans 2^16 + 1 values, one more than two bytes hold, so
// the top (m >= 32,640, where e1 would be 128) takes f = 1 and the f plane is only walked
// where an invocation's rows have one (the CPU's VNNI kernel adds the same correction). Per
// output and group, by weight: lo = Σd0e0 + (Σd0e1 + Σd1e0 + Σd0f)·2^8 and hi = Σd1e1 + Σd2e0
// + Σd1f + (Σd2e1 + Σd2f)·2^8. Over a group of <= 64 columns Σ|d0e0| <= 64·2^14 = 2^20, each
// of the three 2^8-weighted sums <= 2^20, so |lo| <= 2^20 + 3·2^28 < 2^31; |hi| <= 64·(2^14
// + 2·2^7 + 2^7) + 2^8·64·(2·2^7 + 2) < 2^23: both exact in i32, and the group's sum is
// hi·2^16 + lo in 64 bits: a·m exactly, as in the other kernels. Workgroup memory: three
// digit planes of each operand, 16 quads × 32 rows each (12 KiB in xs and ws).
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

// A group's sum from its two exact i32 parts, hi·2^s + lo, as one 64-bit value (s = 9:
// Σ h·m and Σ l·m; s = 16: matmul_dot4's digit sums).
fn split_sum(hi: i32, lo: i32, s: u32) -> vec2<u32> {
    return w_add(w_shl(w_from_i32(hi), s), w_from_i32(lo));
}

// Where a tiled workgroup works: its tile's first token and row, its split-K slice and
// that slice's groups [g0, g1).
struct TileAt {
    t0: u32,
    n0: u32,
    sl: u32,
    g0: u32,
    g1: u32,
}

fn tile_at(tile: u32) -> TileAt {
    let row_tiles = (p.n + TILE - 1u) / TILE;
    let sl = tile % p.slices;
    let tn = tile / p.slices;
    let g0 = sl * p.slice_groups;
    return TileAt((tn / row_tiles) * TILE, (tn % row_tiles) * TILE, sl, g0, min(g0 + p.slice_groups, p.groups_per_row));
}

// Adds group g's sums hi·2^s + lo (token i in hi[i], lo[i], row j in lane j) to the
// invocation's outputs, each shifted to its row's smallest exponent (rows past n add
// nothing and read nothing).
fn add_group(acc: ptr<function, array<vec2<u32>, 16>>, n0: u32, ln: u32, g: u32, s: u32, hi: array<vec4<i32>, 4>, lo: array<vec4<i32>, 4>) {
    for (var j = 0u; j < 4u; j++) {
        let o = n0 + ln + STEP * j;
        if (o < p.n) {
            let sh = u32(wexp[o * p.groups_per_row + g] - rexp[o]);
            // Tokens unrolled: llvmpipe counts every loop iteration (check_matmul_loops).
            (*acc)[j] = w_add((*acc)[j], w_shl(split_sum(hi[0][j], lo[0][j], s), sh));
            (*acc)[4u + j] = w_add((*acc)[4u + j], w_shl(split_sum(hi[1][j], lo[1][j], s), sh));
            (*acc)[8u + j] = w_add((*acc)[8u + j], w_shl(split_sum(hi[2][j], lo[2][j], s), sh));
            (*acc)[12u + j] = w_add((*acc)[12u + j], w_shl(split_sum(hi[3][j], lo[3][j], s), sh));
        }
    }
}

// The invocation's 4 × 4 outputs (token lt + 8i, row ln + 8j in acc[4i + j]) of slice sl.
fn store_tile(at: TileAt, lt: u32, ln: u32, acc: array<vec2<u32>, 16>) {
    for (var i = 0u; i < 4u; i++) {
        let t = at.t0 + lt + STEP * i;
        for (var j = 0u; j < 4u; j++) {
            let o = at.n0 + ln + STEP * j;
            if (t < p.tokens && o < p.n) {
                let idx = (t * p.n + o) * p.slices + at.sl;
                out[2u * idx] = acc[4u * i + j].x;
                out[2u * idx + 1u] = acc[4u * i + j].y;
            }
        }
    }
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
    let at = tile_at(tile);
    let t0 = at.t0;
    let n0 = at.n0;
    let lt = li / STEP;
    let ln = li % STEP;
    var acc: array<vec2<u32>, 16>;   // [4i + j]: token lt + 8i, row ln + 8j
    for (var g = at.g0; g < at.g1; g++) {
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
        add_group(&acc, n0, ln, g, 9u, array(h0, h1, h2, h3), array(l0, l1, l2, l3));
        // The next group overwrites the tile only after every invocation has read it.
        workgroupBarrier();
    }
    store_tile(at, lt, ln, acc);
}

// dot4I8Packed of one token's digit word with four rows' digit words.
fn dots(a: u32, m: vec4<u32>) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(a, m.x), dot4I8Packed(a, m.y), dot4I8Packed(a, m.z), dot4I8Packed(a, m.w));
}

// Four columns of one row as byte digits: a = d2·2^16 + d1·2^8 + d0 (x), balanced so every
// digit is a signed byte.
fn low_digit(v: vec4<i32>) -> vec4<i32> {
    return ((v + vec4<i32>(128i)) & vec4<i32>(255i)) - vec4<i32>(128i);
}

const QUADS: u32 = GMAX / 4u;     // column quads of a group: one packed word each
const PLANE: u32 = QUADS * TILE;  // words of one digit plane of the tile

@compute @workgroup_size(64)
fn matmul_dot4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let tile = wg.x + wg.y * nwg.x;
    if (tile >= p.units) {
        return;
    }
    let at = tile_at(tile);
    let t0 = at.t0;
    let n0 = at.n0;
    let lt = li / STEP;
    let ln = li % STEP;
    var acc: array<vec2<u32>, 16>;   // [4i + j]: token lt + 8i, row ln + 8j
    for (var g = at.g0; g < at.g1; g++) {
        let c0 = g * p.group_size;
        let width = min(p.group_size, p.k - c0);
        // Stage: word e is quad e / TILE (columns 4q..4q+3 of the group), tile row e % TILE;
        // columns outside the matrices or past the group are 0 and add nothing.
        for (var e = li; e < PLANE; e += 64u) {
            let c = (e / TILE) * 4u;
            let r = e % TILE;
            var xv = vec4<i32>(0i);
            var wv = vec4<i32>(0i);
            if (t0 + r < p.tokens) {
                let b = (t0 + r) * p.k + c0 + c;
                if (c < width) { xv.x = x[b]; }
                if (c + 1u < width) { xv.y = x[b + 1u]; }
                if (c + 2u < width) { xv.z = x[b + 2u]; }
                if (c + 3u < width) { xv.w = x[b + 3u]; }
            }
            if (n0 + r < p.n) {
                let b = (n0 + r) * p.k + c0 + c;
                if (c < width) { wv.x = w[b]; }
                if (c + 1u < width) { wv.y = w[b + 1u]; }
                if (c + 2u < width) { wv.z = w[b + 2u]; }
                if (c + 3u < width) { wv.w = w[b + 3u]; }
            }
            let d0 = low_digit(xv);
            let r1 = (xv - d0) >> vec4<u32>(8u);
            let d1 = low_digit(r1);
            xs[e] = bitcast<i32>(pack4xI8(d0));
            xs[PLANE + e] = bitcast<i32>(pack4xI8(d1));
            xs[2u * PLANE + e] = bitcast<i32>(pack4xI8((r1 - d1) >> vec4<u32>(8u)));
            let e0 = low_digit(wv);
            let m1 = (wv - e0) >> vec4<u32>(8u);   // in [-128, 128]
            let f = select(vec4<i32>(0i), vec4<i32>(1i), m1 > vec4<i32>(127i));
            ws[e] = bitcast<i32>(pack4xI8(e0));
            ws[PLANE + e] = bitcast<i32>(pack4xI8(m1 - f));
            ws[2u * PLANE + e] = bitcast<i32>(pack4xI8(f));
        }
        workgroupBarrier();
        // Token i's sums in lo[i], hi[i], row j in lane j (no inner loops: llvmpipe counts
        // every loop iteration against its limit).
        var lo0 = vec4<i32>(0i); var hi0 = vec4<i32>(0i);
        var lo1 = vec4<i32>(0i); var hi1 = vec4<i32>(0i);
        var lo2 = vec4<i32>(0i); var hi2 = vec4<i32>(0i);
        var lo3 = vec4<i32>(0i); var hi3 = vec4<i32>(0i);
        let quads = (width + 3u) / 4u;
        for (var q = 0u; q < quads; q++) {
            let col = q * TILE;
            let mr = col + ln;
            let e0 = bitcast<vec4<u32>>(vec4<i32>(ws[mr], ws[mr + STEP], ws[mr + 2u * STEP], ws[mr + 3u * STEP]));
            let e1 = bitcast<vec4<u32>>(vec4<i32>(ws[PLANE + mr], ws[PLANE + mr + STEP], ws[PLANE + mr + 2u * STEP], ws[PLANE + mr + 3u * STEP]));
            let fm = bitcast<vec4<u32>>(vec4<i32>(ws[2u * PLANE + mr], ws[2u * PLANE + mr + STEP], ws[2u * PLANE + mr + 2u * STEP], ws[2u * PLANE + mr + 3u * STEP]));
            let ar = col + lt;
            let a0 = bitcast<vec4<u32>>(vec4<i32>(xs[ar], xs[ar + STEP], xs[ar + 2u * STEP], xs[ar + 3u * STEP]));
            let a1 = bitcast<vec4<u32>>(vec4<i32>(xs[PLANE + ar], xs[PLANE + ar + STEP], xs[PLANE + ar + 2u * STEP], xs[PLANE + ar + 3u * STEP]));
            let a2 = bitcast<vec4<u32>>(vec4<i32>(xs[2u * PLANE + ar], xs[2u * PLANE + ar + STEP], xs[2u * PLANE + ar + 2u * STEP], xs[2u * PLANE + ar + 3u * STEP]));
            lo0 += dots(a0.x, e0) + 256i * (dots(a0.x, e1) + dots(a1.x, e0));
            hi0 += dots(a1.x, e1) + dots(a2.x, e0) + 256i * dots(a2.x, e1);
            lo1 += dots(a0.y, e0) + 256i * (dots(a0.y, e1) + dots(a1.y, e0));
            hi1 += dots(a1.y, e1) + dots(a2.y, e0) + 256i * dots(a2.y, e1);
            lo2 += dots(a0.z, e0) + 256i * (dots(a0.z, e1) + dots(a1.z, e0));
            hi2 += dots(a1.z, e1) + dots(a2.z, e0) + 256i * dots(a2.z, e1);
            lo3 += dots(a0.w, e0) + 256i * (dots(a0.w, e1) + dots(a1.w, e0));
            hi3 += dots(a1.w, e1) + dots(a2.w, e0) + 256i * dots(a2.w, e1);
            if (any(fm != vec4<u32>(0u))) {
                lo0 += 256i * dots(a0.x, fm); hi0 += dots(a1.x, fm) + 256i * dots(a2.x, fm);
                lo1 += 256i * dots(a0.y, fm); hi1 += dots(a1.y, fm) + 256i * dots(a2.y, fm);
                lo2 += 256i * dots(a0.z, fm); hi2 += dots(a1.z, fm) + 256i * dots(a2.z, fm);
                lo3 += 256i * dots(a0.w, fm); hi3 += dots(a1.w, fm) + 256i * dots(a2.w, fm);
            }
        }
        add_group(&acc, n0, ln, g, 16u, array(hi0, hi1, hi2, hi3), array(lo0, lo1, lo2, lo3));
        workgroupBarrier();
    }
    store_tile(at, lt, ln, acc);
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
        acc = w_add(acc, w_shl(split_sum(hs, ls, 9u), u32(wexp[o * p.groups_per_row + g] - rexp[o])));
    }
    out[2u * idx] = acc.x;
    out[2u * idx + 1u] = acc.y;
}
