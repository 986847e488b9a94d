// requires: wide.wgsl
// Exact calibration statistics on the device: acc ← (acc << align) + (Σ_t x_t x_tᵀ) << shift
// over the lower triangle of the Gram matrix of one window's tokens (CPU twin: the host
// path of src/codec/gram.rs, `Gram::add_window`, which also fixes the grid, `align` and
// `shift`, and guarantees that every result fits in i64: Cauchy–Schwarz on the exact
// diagonal it keeps itself).
//
// x: [tokens, cols] values on the window's grid, |x| <= 2^19 (GRAM_MAX_X: 18-bit
// mantissas shifted up by at most two bits). Products in 32-bit integers: x = h·2^10 + l
// with h = x >> 10 (|h| <= 2^9) and l = x & 1023 (0 <= l < 2^10), so
//   x_i·x_j = h_i h_j·2^20 + (h_i l_j + l_i h_j)·2^10 + l_i l_j,
// and over one stage of <= 64 tokens |Σ h h| <= 64·2^18 = 2^24, |Σ (h l + l h)| < 64·2^20
// = 2^26 and Σ l l < 64·2^20 = 2^26: exact i32 sums, joined in 64 bits once per stage.
// Integer sums in any order give the same bits, so neither the tiling nor the stages nor
// how the host splits tokens or columns can change a result.
//
// acc: the chunk of the packed triangle this dispatch owns: columns [j0, j0 + 32·jtiles)
// ∩ [0, cols), entry (i, j), i >= j, at tri_offset(cols, j) − base + i − j (column-major
// packed, codec/gram.rs's layout; `base` = tri_offset(cols, j0)), two words (lo, hi) each.
// Every entry is read and written by exactly one invocation of a dispatch.
//
// Tiling: a workgroup of 64 invocations owns a 32 × 32 tile of entries (rows i0.., columns
// j0..), each invocation 4 × 4 of them; per stage the tile's 64 tokens of both column
// ranges are staged in 16 KiB of workgroup memory. Tiles wholly above the diagonal return
// before any barrier (the test is uniform per workgroup). One invocation's loops run
// stages · (1 + 32 + 64 + 4) + 16 times at most (`check_gram_loops`).

struct Params {
    tokens: u32,
    cols: u32,
    j0: u32,        // first column of this chunk (a multiple of TILE)
    jtiles: u32,    // column tiles in the chunk
    it0: u32,       // first row tile (the chunk's first column tile: rows above it are empty)
    base: u32,      // tri_offset(cols, j0): the packed index of acc's first entry
    align: u32,     // acc << align first (<= 63; 0 after the first dispatch of a window)
    shift: u32,     // the window's sums << shift (<= 63)
    units: u32,     // workgroups: row tiles from it0 × jtiles
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<i32>;         // [tokens, cols]
@group(0) @binding(2) var<storage, read_write> acc: array<u32>; // the chunk's entries × (lo, hi)

const TILE: u32 = 32u;    // rows and columns of a workgroup's tile
const STEP: u32 = 8u;     // invocation (li / 8, li % 8) owns rows a + 8r and columns b + 8c
const STAGE: u32 = 64u;   // tokens staged at once

// One stage's tokens of the tile's rows (xi) and columns (xj), token-major ([STAGE, TILE])
// so that neighbouring invocations read neighbouring words.
var<workgroup> xi: array<i32, 2048>;
var<workgroup> xj: array<i32, 2048>;

// Packed index of (j, j): column j starts after columns 0..j, of cols − c entries each.
fn tri_offset(n: u32, j: u32) -> u32 {
    return j * n - j * (max(j, 1u) - 1u) / 2u;
}

// One stage's Σ h h, Σ (h l + l h) and Σ l l of an entry, as one 64-bit value.
fn stage_sum(hh: i32, hl: i32, ll: i32) -> vec2<u32> {
    return w_add(w_add(w_shl(w_from_i32(hh), 20u), w_shl(w_from_i32(hl), 10u)), w_from_i32(ll));
}

@compute @workgroup_size(64)
fn gram(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let unit = wg.x + wg.y * nwg.x;
    if (unit >= p.units) {
        return;
    }
    let bj = unit % p.jtiles;
    let i0 = (p.it0 + unit / p.jtiles) * TILE;
    let j0 = p.j0 + bj * TILE;
    if (i0 + TILE <= j0 || i0 >= p.cols) {
        return;   // above the diagonal (or past the last row): no entry of the triangle
    }
    let a = li / STEP;
    let b = li % STEP;
    var sums: array<vec2<u32>, 16>;   // [4r + c]: row i0 + a + 8r, column j0 + b + 8c
    for (var t0 = 0u; t0 < p.tokens; t0 += STAGE) {
        let width = min(STAGE, p.tokens - t0);
        for (var e = li; e < TILE * STAGE; e += 64u) {
            let c = e / TILE;
            let r = e % TILE;
            var vi = 0i;
            var vj = 0i;
            if (c < width) {
                let row = (t0 + c) * p.cols;
                if (i0 + r < p.cols) {
                    vi = x[row + i0 + r];
                }
                if (j0 + r < p.cols) {
                    vj = x[row + j0 + r];
                }
            }
            xi[e] = vi;
            xj[e] = vj;
        }
        workgroupBarrier();
        // Column c of each row's sums in lane c of a vec4 (no inner loops: llvmpipe counts
        // every loop iteration against its limit).
        var hh0 = vec4<i32>(0i); var hl0 = vec4<i32>(0i); var ll0 = vec4<i32>(0i);
        var hh1 = vec4<i32>(0i); var hl1 = vec4<i32>(0i); var ll1 = vec4<i32>(0i);
        var hh2 = vec4<i32>(0i); var hl2 = vec4<i32>(0i); var ll2 = vec4<i32>(0i);
        var hh3 = vec4<i32>(0i); var hl3 = vec4<i32>(0i); var ll3 = vec4<i32>(0i);
        for (var c = 0u; c < width; c++) {
            let at = c * TILE;
            let u = vec4<i32>(xi[at + a], xi[at + a + STEP], xi[at + a + 2u * STEP], xi[at + a + 3u * STEP]);
            let v = vec4<i32>(xj[at + b], xj[at + b + STEP], xj[at + b + 2u * STEP], xj[at + b + 3u * STEP]);
            let uh = u >> vec4<u32>(10u);
            let ul = u & vec4<i32>(1023i);
            let vh = v >> vec4<u32>(10u);
            let vl = v & vec4<i32>(1023i);
            hh0 += uh.x * vh; hl0 += uh.x * vl + ul.x * vh; ll0 += ul.x * vl;
            hh1 += uh.y * vh; hl1 += uh.y * vl + ul.y * vh; ll1 += ul.y * vl;
            hh2 += uh.z * vh; hl2 += uh.z * vl + ul.z * vh; ll2 += ul.z * vl;
            hh3 += uh.w * vh; hl3 += uh.w * vl + ul.w * vh; ll3 += ul.w * vl;
        }
        for (var c = 0u; c < 4u; c++) {
            sums[c] = w_add(sums[c], stage_sum(hh0[c], hl0[c], ll0[c]));
            sums[4u + c] = w_add(sums[4u + c], stage_sum(hh1[c], hl1[c], ll1[c]));
            sums[8u + c] = w_add(sums[8u + c], stage_sum(hh2[c], hl2[c], ll2[c]));
            sums[12u + c] = w_add(sums[12u + c], stage_sum(hh3[c], hl3[c], ll3[c]));
        }
        // The next stage overwrites the tiles only after every invocation has read them.
        workgroupBarrier();
    }
    for (var k = 0u; k < 16u; k++) {
        let i = i0 + a + STEP * (k / 4u);
        let j = j0 + b + STEP * (k % 4u);
        if (i < p.cols && j <= i) {
            let at = 2u * (tri_offset(p.cols, j) - p.base + i - j);
            let old = vec2<u32>(acc[at], acc[at + 1u]);
            let v = w_add(w_shl(old, p.align), w_shl(sums[k], p.shift));
            acc[at] = v.x;
            acc[at + 1u] = v.y;
        }
    }
}
