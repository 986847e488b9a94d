// requires: wide.wgsl float_bits.wgsl
// Reconstruct a quantized linear (codec version 1): w = (16 + c&15) * (q - z) * 2^(E + c>>4)
// plus, when rank > 0, the low-rank overlay O = Σ_k (mu_i U_ik mv_k) V_kj * 2^Eo, summed
// exactly in 64 bits and rounded once to the output dtype (bounds in
// src/backend/cpu/quant.rs, dequantize_rows_overlay). One invocation per output word (two 16-bit values or
// one f32), so the output buffer is exactly the safetensors bytes.
// CPU twin: dequantize_rows in src/backend/cpu/quant.rs.

struct Params {
    rows: u32,
    cols: u32,
    group_size: u32,
    dtype: u32,
    base_exp: i32,
    groups_per_row: u32,
    count: u32,         // elements in this chunk
    words: u32,         // output words in this chunk
    rank: u32,          // 0 = no overlay
    overlay_exp: i32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;   // 4 codes per word, low byte first
@group(0) @binding(2) var<storage, read> gmeta: array<u32>;    // per group: c | z << 8
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@group(0) @binding(4) var<storage, read_write> bad: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read> ov_u: array<u32>;     // chunk rows × rank, i8, 4 per word
@group(0) @binding(6) var<storage, read> ov_v: array<u32>;     // rank × cols, i8, 4 per word
@group(0) @binding(7) var<storage, read> ov_s: array<u32>;     // mu for the chunk rows, then mv

fn load_i8(w: u32, i: u32) -> i32 {
    return bitcast<i32>(((w >> ((i & 3u) * 8u)) & 0xffu) << 24u) >> 24u;
}

fn element(i: u32) -> u32 {
    let row = i / p.cols;
    let g = row * p.groups_per_row + (i % p.cols) / p.group_size;
    let m = gmeta[g];
    let c = m & 0xffu;
    let z = i32((m >> 8u) & 0xffu);
    let q = i32((codes[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu);
    let v = i32(16u + (c & 15u)) * (q - z);
    let ed = p.base_exp + i32(c >> 4u);
    var enc: Encoded;
    if (p.rank == 0u) {
        enc = encode_float(v < 0i, vec2<u32>(u32(abs(v)), 0u), ed, p.dtype);
    } else {
        let col = i % p.cols;
        var s = vec2<u32>(0u, 0u);
        for (var k = 0u; k < p.rank; k++) {
            let ui = row * p.rank + k;
            let vi = k * p.cols + col;
            // |U V mv| <= 127 * 127 * 65535 < 2^31
            let uv = load_i8(ov_u[ui >> 2u], ui) * load_i8(ov_v[vi >> 2u], vi);
            s = w_add(s, w_from_i32(uv * i32(ov_s[p.rows + k])));
        }
        let o = w_mul_wu(s, ov_s[row]);
        var t: vec2<u32>;
        var e: i32;
        if (ed >= p.overlay_exp) {
            t = w_add(w_shl(w_from_i32(v), u32(ed - p.overlay_exp)), o);
            e = p.overlay_exp;
        } else {
            t = w_add(w_from_i32(v), w_shl(o, u32(p.overlay_exp - ed)));
            e = ed;
        }
        let neg = (t.y >> 31u) == 1u;
        enc = encode_float(neg, select(t, w_neg(t), neg), e, p.dtype);
    }
    if (!enc.ok) {
        atomicMin(&bad[0], i);
    }
    return select(0u, enc.bits, enc.ok);
}

@compute @workgroup_size(64)
fn dequantize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = gid.x + gid.y * nwg.x * 64u;
    if (w >= p.words) {
        return;
    }
    if (p.dtype == 2u) {
        out[w] = element(w);
        return;
    }
    let i = 2u * w;
    var word = element(i);
    if (i + 1u < p.count) {
        word = word | (element(i + 1u) << 16u);
    }
    out[w] = word;
}
