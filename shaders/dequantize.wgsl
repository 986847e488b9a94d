// requires: wide.wgsl float_bits.wgsl
// Reconstruct a quantized linear (codec version 1): w = (16 + c&15) * (q - z) * 2^(E + c>>4),
// rounded once to the output dtype. One invocation per output word (two 16-bit values or
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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;   // 4 codes per word, low byte first
@group(0) @binding(2) var<storage, read> gmeta: array<u32>;    // per group: c | z << 8
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@group(0) @binding(4) var<storage, read_write> bad: array<atomic<u32>>;

fn element(i: u32) -> u32 {
    let row = i / p.cols;
    let g = row * p.groups_per_row + (i % p.cols) / p.group_size;
    let m = gmeta[g];
    let c = m & 0xffu;
    let z = i32((m >> 8u) & 0xffu);
    let q = i32((codes[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu);
    let v = i32(16u + (c & 15u)) * (q - z);
    let enc = encode_float(v < 0i, vec2<u32>(u32(abs(v)), 0u), p.base_exp + i32(c >> 4u), p.dtype);
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
