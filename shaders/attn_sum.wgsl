// requires: wide.wgsl expq.wgsl attn_lib.wgsl attn_block.wgsl
// Attention, pass 2 of 3: per (query t, head h, chunk c) with the exact score maximum m and
// V exponent Ev of the whole prefix (the largest of pass 1's chunk values): the chunk's
// Σ w_j (w_j = e^-(m − s_j) in Q30) and, per output dimension, Σ u_j · v_ji with the key's
// weight on the V grid u_j = round(w_j · 2^-(Ev − ev_j + 9)) (<= 2^21), each exactly in 64
// bits. Pass 3 adds the chunks: integer sums, so the chunking cannot change a bit.
//
// Over a workgroup (attn_lib.wgsl), as attn_max: per step of sk = attn_step_keys(d) <= 64
// keys, invocation (qi, kl) weighs keys kl, kl + KB, ... of the step for query qi; the
// step's weights of each query are shared through workgroup memory and invocation (qi, kl)
// then adds Σ_keys u · v for the dimensions kl, kl + KB, ... of query qi into registers, in
// 32-bit partial sums (u = uh·2^9 + ul with uh <= 2^12, ul < 2^9, and v split likewise,
// |vh| <= 2^8: over 64 keys Σ uh·vh <= 2^26, Σ uh·vl < 2^27, Σ ul·vh <= 2^23, Σ ul·vl <
// 2^24), joined in 64 bits once per step. The lanes' Σ w are added by one invocation at
// the end. Integer sums: the same bits in any order.

// Binding 0, the parameters `p`, is declared in attn_lib.wgsl; q and k (1, 2) and the
// workgroup memory in attn_block.wgsl. After a step's scores `ks` holds its weights [QB,
// sk]; after the last step, the lanes' Σ w.
@group(0) @binding(3) var<storage, read> v: array<i32>;     // [T, kv_heads·d]
@group(0) @binding(4) var<storage, read> exps: array<i32>;  // q exps [T], k exps [T], v exps [T]
@group(0) @binding(5) var<storage, read> table: array<u32>; // 2^(-j/256), Q30
@group(0) @binding(6) var<storage, read> smax: array<u32>;  // [T, heads, chunks] × (lo, hi)
@group(0) @binding(7) var<storage, read> cev: array<i32>;   // [T, heads, chunks]
@group(0) @binding(8) var<storage, read_write> pz: array<u32>;  // [T, heads, chunks] × (lo, hi)
@group(0) @binding(9) var<storage, read_write> pa: array<u32>;  // [T, heads, chunks, d] × (lo, hi)

// The whole prefix's exact score maximum m and largest V exponent ev for query t, head
// (t·heads + h = th): the largest of pass 1's values over the chunks that hold a key <= t
// (chunk 0 always does, so its values are real).
struct PrefixMax {
    m: vec2<u32>,
    ev: i32,
}

fn prefix_max(th: u32, t: u32) -> PrefixMax {
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
    return PrefixMax(m, ev);
}

@compute @workgroup_size(64)
fn attn_sum(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let unit = (p.offset + (wg.x + wg.y * nwg.x) * 64u) / 64u;
    if (unit >= attn_block_units()) {
        return;
    }
    let b = attn_block(unit);
    let d = p.head_dim;
    if (b.j0 > b.tlast) {
        return;   // pz and pa stay zero
    }
    let j1 = min(b.j0 + p.kc, b.tlast + 1u);
    let qi = li / KB;
    let kl = li % KB;
    let t = b.t0 + qi;
    let live = t < p.tokens && b.j0 <= t;   // this query sees a key of the chunk
    let th = t * p.heads + b.h;
    var pm = PrefixMax(vec2<u32>(0u, 0u), 0i);
    if (live) {
        pm = prefix_max(th, t);
    }
    let m = pm.m;
    let ev = pm.ev;
    stage_queries(b, li);
    var z = vec2<u32>(0u, 0u);
    var acc: array<vec2<u32>, 32>;   // dimensions kl + KB·r of query qi (d <= 256)
    var us: array<u32, 8>;           // this lane's weights of a step (sk / KB <= 8)
    let sk = attn_step_keys(d);
    for (var jb = b.j0; jb < j1; jb += sk) {
        workgroupBarrier();
        stage_keys(b, jb, j1, sk, li);
        workgroupBarrier();
        for (var r = kl; r < sk; r += KB) {
            let j = jb + r;
            var uj = 0u;
            if (live && j < j1 && j <= t) {
                var dot = vec4<i32>(0i);
                for (var i = 0u; i < d; i++) {
                    dot = attn_dot_step(dot, qs[qi * d + i], ks[r * d + i]);
                }
                let s = attn_score(attn_dot_value(dot), exps[t] + exps[p.tokens + j] - 10i, p.scale_q30);
                let ei = exp_index(attn_diff(m, s), p.log2e_q30);
                let wj = exp_finish(table[ei.j], ei, p.ln2_q30);
                z = w_add(z, vec2<u32>(wj, 0u));
                // Ev >= ev_j; beyond 32 bits of shift every weight (<= 2^30) rounds to 0.
                let sh = min(u32(ev - exps[2u * p.tokens + j]), 32u) + 9u;
                uj = w_shr_round(vec2<u32>(wj, 0u), sh).x;
            }
            us[r / KB] = uj;
        }
        // Every score is computed (the keys are read) before the weights take their place.
        workgroupBarrier();
        for (var r = kl; r < sk; r += KB) {
            ks[qi * sk + r] = i32(us[r / KB]);
        }
        workgroupBarrier();
        for (var r = 0u; r * KB + kl < d; r++) {
            let i = r * KB + kl;
            var part = vec4<i32>(0i);
            for (var kk = 0u; kk < sk; kk++) {
                let u = ks[qi * sk + kk];
                if (u != 0i) {
                    part = attn_dot_step(part, u, v[(jb + kk) * p.kv_heads * d + b.g * d + i]);
                }
            }
            acc[r] = w_add(acc[r], attn_dot_value(part));
        }
    }
    workgroupBarrier();
    ks[2u * li] = bitcast<i32>(z.x);
    ks[2u * li + 1u] = bitcast<i32>(z.y);
    workgroupBarrier();
    if (!live) {
        return;   // pz and pa stay zero (no barrier follows)
    }
    let idx = th * p.chunks + b.c;
    for (var r = 0u; r * KB + kl < d; r++) {
        let i = r * KB + kl;
        pa[2u * (idx * d + i)] = acc[r].x;
        pa[2u * (idx * d + i) + 1u] = acc[r].y;
    }
    if (kl == 0u) {
        var zz = vec2<u32>(0u, 0u);
        for (var l = 0u; l < KB; l++) {
            zz = w_add(zz, vec2<u32>(bitcast<u32>(ks[2u * (qi * KB + l)]), bitcast<u32>(ks[2u * (qi * KB + l) + 1u])));
        }
        pz[2u * idx] = zz.x;
        pz[2u * idx + 1u] = zz.y;
    }
}

// One invocation per (query, head, chunk), walking the chunk's keys itself: what software
// adapters run (`GpuBackend::attn_workgroups`), same bits.
@compute @workgroup_size(64)
fn attn_sum_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
    let pm = prefix_max(th, t);
    let m = pm.m;
    let ev = pm.ev;
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
