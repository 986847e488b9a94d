// requires: wide.wgsl attn_lib.wgsl
// Attention, pass 1 of 3: per (query t, head h, chunk c of `kc` keys) the largest score of
// the chunk's keys j <= t and the largest V exponent among them; chunks wholly beyond t
// write the minimum. Integer maxima: the chunking cannot change a bit, and no invocation
// walks the whole prefix (Mesa llvmpipe stops an invocation after 65535 loop iterations).

// Binding 0, the parameters `p`, is declared in attn_lib.wgsl.
@group(0) @binding(1) var<storage, read> q: array<i32>;     // [T, heads·d]
@group(0) @binding(2) var<storage, read> k: array<i32>;     // [T, kv_heads·d]
@group(0) @binding(3) var<storage, read> exps: array<i32>;  // q exps [T], k exps [T], v exps [T]
@group(0) @binding(4) var<storage, read_write> smax: array<u32>;  // [T, heads, chunks] × (lo, hi)
@group(0) @binding(5) var<storage, read_write> cev: array<i32>;   // [T, heads, chunks]

@compute @workgroup_size(64)
fn attn_max(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = p.offset + gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.tokens * p.heads * p.chunks) {
        return;
    }
    let c = idx % p.chunks;
    let th = idx / p.chunks;
    let t = th / p.heads;
    let h = th % p.heads;
    let d = p.head_dim;
    let g = h / (p.heads / p.kv_heads);
    let j0 = c * p.kc;
    var m = vec2<u32>(0u, 0x80000000u);   // i64 min: an empty chunk
    var ev = -2147483647i - 1i;
    if (j0 <= t) {
        let j1 = min(j0 + p.kc - 1u, t);
        for (var j = j0; j <= j1; j++) {
            var acc = vec4<i32>(0i);
            for (var i = 0u; i < d; i++) {
                acc = attn_dot_step(acc, q[t * p.heads * d + h * d + i], k[j * p.kv_heads * d + g * d + i]);
            }
            let s = attn_score(attn_dot_value(acc), exps[t] + exps[p.tokens + j] - 10i, p.scale_q30);
            if (j == j0 || w_lt(m, s)) {
                m = s;
            }
            ev = max(ev, exps[2u * p.tokens + j]);
        }
    }
    smax[2u * idx] = m.x;
    smax[2u * idx + 1u] = m.y;
    cev[idx] = ev;
}
