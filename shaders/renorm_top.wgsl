// requires: wide.wgsl
// First half of the rounding after a matmul (see renorm.wgsl): each token's largest top bit
// xexp[t] + rexp[o] + bitlen(|S[o]|) over its nonzero sums, the exact integer maximum.
// One invocation per (token, chunk of `p.chunk` outputs: 1024 unless a test asks for less),
// combined with atomicMax (an integer maximum: order-independent), so no invocation walks
// a whole vocabulary (Mesa llvmpipe stops an invocation after 65535 loop iterations). `top` starts at i32 min ("no nonzero").
// CPU twin: renorm_token in src/backend/cpu/linear.rs.

struct Params {
    tokens: u32,
    n: u32,
    bits: u32,
    chunks: u32,
    offset: u32,
    chunk: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> sums: array<u32>;   // [tokens, n] × (lo, hi)
@group(0) @binding(2) var<storage, read> xexp: array<i32>;   // [tokens]
@group(0) @binding(3) var<storage, read> rexp: array<i32>;   // [n]
@group(0) @binding(4) var<storage, read_write> top: array<atomic<i32>>;   // [tokens]

@compute @workgroup_size(64)
fn renorm_top(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.offset + gid.x + gid.y * nwg.x * 64u;
    if (i >= p.tokens * p.chunks) {
        return;
    }
    let t = i / p.chunks;
    let o0 = (i % p.chunks) * p.chunk;
    let o1 = min(o0 + p.chunk, p.n);
    var best = -2147483647i - 1i;
    for (var o = o0; o < o1; o++) {
        let v = vec2<u32>(sums[2u * (t * p.n + o)], sums[2u * (t * p.n + o) + 1u]);
        if (v.x != 0u || v.y != 0u) {
            best = max(best, xexp[t] + rexp[o] + i32(bitlen64(w_abs(v))));
        }
    }
    atomicMax(&top[t], best);
}
