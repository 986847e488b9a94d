// requires: wide.wgsl expq.wgsl
// Negative log-likelihood of each token's target under its row of logits, in Q30; one
// invocation per token, from the chunk maxima (nll_max.wgsl) and the chunk sums of
// e^-(max − logit) (nll_sum.wgsl), so no invocation walks the vocabulary. Algorithm and
// bounds in the CPU twin, src/backend/cpu/nll.rs.

struct Params {
    tokens: u32,
    vocab: u32,
    chunks: u32,
    _pad0: u32,
    inv_ln2_q30: u32,
    ln2_q28: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<i32>;    // [tokens, vocab]
@group(0) @binding(2) var<storage, read> lexp: array<i32>;      // [tokens]
@group(0) @binding(3) var<storage, read> targets: array<u32>;   // [tokens]
@group(0) @binding(4) var<storage, read> cmax: array<i32>;       // [tokens, chunks]
@group(0) @binding(5) var<storage, read> psum: array<u32>;       // [tokens, chunks] × (lo, hi)
@group(0) @binding(6) var<storage, read> log2_table: array<u32>;  // log2(1 + j/256), Q30
@group(0) @binding(7) var<storage, read> recip_table: array<u32>; // 256/(256 + j), Q30
@group(0) @binding(8) var<storage, read_write> out: array<u32>;   // [tokens] × (lo, hi)

// log2(S) − 30 in Q30 for S >= 2^30 (non-negative).
fn log2_q30(s: vec2<u32>) -> vec2<u32> {
    var k = i32(bitlen64(s)) - 1i;
    var z: vec2<u32>;
    if (k >= 30i) {
        z = exp_shift_round(s, u32(k - 30i));
    } else {
        z = w_shl(s, u32(30i - k));
    }
    if ((z.x >> 31u) != 0u || z.y != 0u) {
        z = w_sar(z, 1u);
        k = k + 1i;
    }
    let f = z.x - (1u << 30u);
    let j = f >> 22u;
    let r = f & ((1u << 22u) - 1u);
    let delta = exp_shift_round(w_mul_u32(r, recip_table[j]), 30u).x;
    let poly = delta - exp_shift_round(w_mul_u32(delta, delta), 31u).x;
    let frac = log2_table[j] + exp_shift_round(w_mul_u32(poly, p.inv_ln2_q30), 30u).x;
    return w_add(w_shl(vec2<u32>(u32(k - 30i), 0u), 30u), vec2<u32>(frac, 0u));
}

@compute @workgroup_size(64)
fn nll(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.tokens) {
        return;
    }
    let base = t * p.vocab;
    let e = lexp[t];
    var mmax = cmax[t * p.chunks];
    var s = vec2<u32>(0u, 0u);
    for (var c = 0u; c < p.chunks; c++) {
        mmax = max(mmax, cmax[t * p.chunks + c]);
        let k = t * p.chunks + c;
        s = w_add(s, vec2<u32>(psum[2u * k], psum[2u * k + 1u]));
    }
    let lse = exp_shift_round(w_mul_wu(log2_q30(s), p.ln2_q28), 28u);
    let dy = u32(mmax - logits[base + targets[t]]);
    let sy = e + 30i;
    var term: vec2<u32>;
    if (sy >= 0i) {
        term = w_shl(vec2<u32>(dy, 0u), u32(sy));
    } else {
        term = exp_shift_round(vec2<u32>(dy, 0u), u32(-sy));
    }
    let v = w_add(lse, term);
    out[2u * t] = v.x;
    out[2u * t + 1u] = v.y;
}
