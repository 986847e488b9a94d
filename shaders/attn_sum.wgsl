// requires: wide.wgsl expq.wgsl attn_lib.wgsl
// Attention, pass 2 of 3: per (query t, head h, chunk c) with the exact score maximum m and
// V exponent Ev of the whole prefix (the largest of pass 1's chunk values): the chunk's
// Σ w_j (w_j = e^-(m − s_j) in Q30) and, per output dimension, Σ u_j · v_ji with the key's
// weight on the V grid u_j = round(w_j · 2^-(Ev − ev_j + 9)) (<= 2^21), each exactly in 64
// bits. Pass 3 adds the chunks: integer sums, so the chunking cannot change a bit.

// Binding 0, the parameters `p`, is declared in attn_lib.wgsl.
@group(0) @binding(1) var<storage, read> q: array<i32>;     // [T, heads·d]
@group(0) @binding(2) var<storage, read> k: array<i32>;     // [T, kv_heads·d]
@group(0) @binding(3) var<storage, read> v: array<i32>;     // [T, kv_heads·d]
@group(0) @binding(4) var<storage, read> exps: array<i32>;  // q exps [T], k exps [T], v exps [T]
@group(0) @binding(5) var<storage, read> table: array<u32>; // 2^(-j/256), Q30
@group(0) @binding(6) var<storage, read> smax: array<u32>;  // [T, heads, chunks] × (lo, hi)
@group(0) @binding(7) var<storage, read> cev: array<i32>;   // [T, heads, chunks]
@group(0) @binding(8) var<storage, read_write> pz: array<u32>;  // [T, heads, chunks] × (lo, hi)
@group(0) @binding(9) var<storage, read_write> pa: array<u32>;  // [T, heads, chunks, d] × (lo, hi)

@compute @workgroup_size(64)
fn attn_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
    if (j0 > t) {
        return;   // pz and pa stay zero
    }
    // Chunk 0 always holds key 0 <= t, so its values are real.
    var m = vec2<u32>(smax[2u * th * p.chunks], smax[2u * th * p.chunks + 1u]);
    var ev = cev[th * p.chunks];
    for (var cc = 1u; cc < p.chunks; cc++) {
        if (cc * p.kc <= t) {
            let s = vec2<u32>(smax[2u * (th * p.chunks + cc)], smax[2u * (th * p.chunks + cc) + 1u]);
            if (w_lt(m, s)) {
                m = s;
            }
            ev = max(ev, cev[th * p.chunks + cc]);
        }
    }
    let j1 = min(j0 + p.kc - 1u, t);
    var z = vec2<u32>(0u, 0u);
    for (var i = 0u; i < d; i++) {
        pa[2u * (idx * d + i)] = 0u;
        pa[2u * (idx * d + i) + 1u] = 0u;
    }
    for (var j = j0; j <= j1; j++) {
        var acc = vec4<i32>(0i);
        for (var i = 0u; i < d; i++) {
            acc = attn_dot_step(acc, q[t * p.heads * d + h * d + i], k[j * p.kv_heads * d + g * d + i]);
        }
        let s = attn_score(attn_dot_value(acc), exps[t] + exps[p.tokens + j] - 10i, p.scale_q30);
        let ei = exp_index(attn_diff(m, s), p.log2e_q30);
        let wj = exp_finish(table[ei.j], ei, p.ln2_q30);
        z = w_add(z, vec2<u32>(wj, 0u));
        // Ev >= ev_j; beyond 32 bits of shift every weight (<= 2^30) rounds to 0.
        let sh = min(u32(ev - exps[2u * p.tokens + j]), 32u) + 9u;
        let uj = w_shr_round(vec2<u32>(wj, 0u), sh).x;
        if (uj != 0u) {
            for (var i = 0u; i < d; i++) {
                let r = w_mul_i32(i32(uj), v[j * p.kv_heads * d + g * d + i]);
                let a = vec2<u32>(pa[2u * (idx * d + i)], pa[2u * (idx * d + i) + 1u]);
                let b = w_add(a, r);
                pa[2u * (idx * d + i)] = b.x;
                pa[2u * (idx * d + i) + 1u] = b.y;
            }
        }
    }
    pz[2u * idx] = z.x;
    pz[2u * idx + 1u] = z.y;
}
