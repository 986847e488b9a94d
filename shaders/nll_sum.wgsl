// requires: wide.wgsl expq.wgsl
// Second pass of the NLL (see nll.wgsl): with the token's exact logit maximum (the largest
// of nll_max.wgsl's chunk maxima), Σ e^-(max − logit) in Q30 over one chunk of `p.chunk`
// logits (<= 4096), exactly in 64 bits (< 2^30 · 2^12 per chunk); the chunks' sums are
// added by nll.wgsl, an integer sum, so the split cannot change a bit.

struct Params {
    tokens: u32,
    vocab: u32,
    chunks: u32,
    log2e_q30: u32,
    ln2_q30: u32,
    offset: u32,
    chunk: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<i32>;    // [tokens, vocab]
@group(0) @binding(2) var<storage, read> lexp: array<i32>;      // [tokens]
@group(0) @binding(3) var<storage, read> cmax: array<i32>;      // [tokens, chunks]
@group(0) @binding(4) var<storage, read> exp_table: array<u32>; // 2^(-j/256), Q30
@group(0) @binding(5) var<storage, read_write> psum: array<u32>; // [tokens, chunks] × (lo, hi)

// |d| · 2^e in Q20, capped at 32 (the twin's to_q20).
fn to_q20(d: u32, e: i32) -> u32 {
    let cap = 32u << 20u;
    let sh = e + 20i;
    if (sh >= 0i) {
        if (sh >= 40i) {
            return cap;
        }
        let v = w_shl(vec2<u32>(d, 0u), u32(sh));
        return select(v.x, cap, v.y != 0u || v.x > cap);
    }
    return min(exp_shift_round(vec2<u32>(d, 0u), u32(-sh)).x, cap);
}

@compute @workgroup_size(64)
fn nll_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.offset + gid.x + gid.y * nwg.x * 64u;
    if (i >= p.tokens * p.chunks) {
        return;
    }
    let t = i / p.chunks;
    var mmax = cmax[t * p.chunks];
    for (var c = 1u; c < p.chunks; c++) {
        mmax = max(mmax, cmax[t * p.chunks + c]);
    }
    let e = lexp[t];
    let j0 = (i % p.chunks) * p.chunk;
    let j1 = min(j0 + p.chunk, p.vocab);
    var s = vec2<u32>(0u, 0u);
    for (var j = j0; j < j1; j++) {
        let x = to_q20(u32(mmax - logits[t * p.vocab + j]), e);
        let idx = exp_index(x, p.log2e_q30);
        s = w_add(s, vec2<u32>(exp_finish(exp_table[idx.j], idx, p.ln2_q30), 0u));
    }
    psum[2u * i] = s.x;
    psum[2u * i + 1u] = s.y;
}
