// requires: wide.wgsl attn_lib.wgsl attn_block.wgsl
// Attention, pass 1 of 3: per (query t, head h, chunk c of `kc` keys) the largest score of
// the chunk's keys j <= t and the largest V exponent among them; chunks wholly beyond t
// write the minimum. Integer maxima: the chunking cannot change a bit, and no invocation
// walks the whole prefix (Mesa llvmpipe stops an invocation after 65535 loop iterations).
//
// Over a workgroup (attn_lib.wgsl): one per (block of QB queries, head, chunk); the
// block's queries are staged once, the chunk's keys a step at a time, and invocation (qi,
// kl) scores query qi against keys kl, kl + KB, ...; the KB lanes of a query are then reduced
// by one invocation in lane order (a maximum: any order gives the same value, and nothing
// depends on subgroups). Each key row is read once per workgroup instead of once per query.

// Binding 0, the parameters `p`, is declared in attn_lib.wgsl; q and k (1, 2) and the
// workgroup memory in attn_block.wgsl. After the last step `ks` holds the lanes' results.
@group(0) @binding(3) var<storage, read> exps: array<i32>;  // q exps [T], k exps [T], v exps [T]
@group(0) @binding(4) var<storage, read_write> smax: array<u32>;  // [T, heads, chunks] × (lo, hi)
@group(0) @binding(5) var<storage, read_write> cev: array<i32>;   // [T, heads, chunks]

@compute @workgroup_size(64)
fn attn_max(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // Uniform per workgroup (every branch before a barrier below is).
    let unit = (p.offset + (wg.x + wg.y * nwg.x) * 64u) / 64u;
    if (unit >= attn_block_units()) {
        return;
    }
    let b = attn_block(unit);
    let d = p.head_dim;
    let qi = li / KB;
    let kl = li % KB;
    let t = b.t0 + qi;
    let idx = (t * p.heads + b.h) * p.chunks + b.c;
    if (b.j0 > b.tlast) {
        // No query of the block sees a key of this chunk.
        if (kl == 0u && t < p.tokens) {
            smax[2u * idx] = 0u;
            smax[2u * idx + 1u] = 0x80000000u;
            cev[idx] = -2147483647i - 1i;
        }
        return;
    }
    let j1 = min(b.j0 + p.kc, b.tlast + 1u);   // the keys any query of the block sees
    stage_queries(b, li);
    var m = vec2<u32>(0u, 0x80000000u);   // i64 min: no key seen
    var ev = -2147483647i - 1i;
    var any = false;
    let sk = attn_step_keys(d);
    for (var jb = b.j0; jb < j1; jb += sk) {
        // The previous step's keys are read (and the queries staged) before new keys land.
        workgroupBarrier();
        stage_keys(b, jb, j1, sk, li);
        workgroupBarrier();
        for (var r = kl; r < sk; r += KB) {
            let j = jb + r;
            if (j < j1 && j <= t) {
                var acc = vec4<i32>(0i);
                for (var i = 0u; i < d; i++) {
                    acc = attn_dot_step(acc, qs[qi * d + i], ks[r * d + i]);
                }
                let s = attn_score(attn_dot_value(acc), exps[t] + exps[p.tokens + j] - 10i, p.scale_q30);
                if (!any || w_lt(m, s)) {
                    m = s;
                }
                ev = max(ev, exps[2u * p.tokens + j]);
                any = true;
            }
        }
    }
    workgroupBarrier();
    ks[4u * li] = bitcast<i32>(m.x);
    ks[4u * li + 1u] = bitcast<i32>(m.y);
    ks[4u * li + 2u] = ev;
    ks[4u * li + 3u] = select(0i, 1i, any);
    workgroupBarrier();
    if (kl == 0u && t < p.tokens) {
        var mm = vec2<u32>(0u, 0x80000000u);
        var ee = -2147483647i - 1i;
        var seen = false;
        for (var l = 0u; l < KB; l++) {
            let b = 4u * (qi * KB + l);
            if (ks[b + 3u] == 1i) {
                let s = vec2<u32>(bitcast<u32>(ks[b]), bitcast<u32>(ks[b + 1u]));
                if (!seen || w_lt(mm, s)) {
                    mm = s;
                }
                ee = max(ee, ks[b + 2u]);
                seen = true;
            }
        }
        smax[2u * idx] = mm.x;
        smax[2u * idx + 1u] = mm.y;
        cev[idx] = ee;
    }
}

// One invocation per (query, head, chunk), walking the chunk's keys itself: what software
// adapters run (`GpuBackend::attn_workgroups`), same bits.
@compute @workgroup_size(64)
fn attn_max_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
