// requires: wide.wgsl expq.wgsl
// Causal grouped-query attention over one window, one invocation per (query, head), scores
// recomputed in each pass (no seq×seq buffer). Then `attn_renorm` per token across heads.
// Algorithm, rounding points and bounds: src/backend/cpu/attention.rs (the CPU twin).

struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale_q30: u32,
    log2e_q30: u32,
    ln2_q30: u32,
    bits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<i32>;     // [T, heads·d]
@group(0) @binding(2) var<storage, read> k: array<i32>;     // [T, kv_heads·d]
@group(0) @binding(3) var<storage, read> v: array<i32>;     // [T, kv_heads·d]
@group(0) @binding(4) var<storage, read> exps: array<i32>;  // q exps [T], k exps [T], v exps [T]
@group(0) @binding(5) var<storage, read> table: array<u32>; // 2^(-j/256), Q30
@group(0) @binding(6) var<storage, read_write> ho: array<i32>;   // [T, heads, d] head outputs
@group(0) @binding(7) var<storage, read_write> he: array<i32>;   // [T, heads] their exponents

fn score(t: u32, h: u32, j: u32) -> vec2<u32> {
    let d = p.head_dim;
    let g = h / (p.heads / p.kv_heads);
    var dot = vec2<u32>(0u, 0u);
    for (var i = 0u; i < d; i++) {
        dot = w_add(dot, w_mul_i32(q[t * p.heads * d + h * d + i], k[j * p.kv_heads * d + g * d + i]));
    }
    let neg = (dot.y >> 31u) == 1u;
    let mag0 = select(dot, w_neg(dot), neg);
    let sh = max(i32(bitlen64(mag0)) - 31i, 0i);
    // Round the magnitude (symmetric half-even, as the twin's signed rounding): <= 2^31.
    let mag32 = w_shr_round(mag0, u32(sh)).x;
    let pm = w_mul_u32(mag32, p.scale_q30);   // < 2^61
    let prod = select(pm, w_neg(pm), neg);
    let e = exps[t] + exps[p.tokens + j] + sh - 10i;
    if (e >= 0i) {
        // Saturate at ±2^61 (|prod| << e must stay below 2^61).
        let lim = vec2<u32>(0u, 1u << 29u);
        let mag = w_abs(prod);
        if (e >= 62i || w_lt_u(w_sar(lim, u32(e)), mag)) {
            if (mag.x == 0u && mag.y == 0u) {
                return vec2<u32>(0u, 0u);
            }
            return select(lim, w_neg(lim), (prod.y >> 31u) == 1u);
        }
        return w_shl(prod, u32(e));
    }
    if (-e >= 63i) {
        return vec2<u32>(0u, 0u);
    }
    return w_shr_round(prod, u32(-e));
}

fn weight(m: vec2<u32>, s: vec2<u32>) -> u32 {
    let diff = w_sub(m, s);   // >= 0
    let cap = 32u << 20u;
    var x = cap;
    if (diff.y == 0u && diff.x < cap) {
        x = diff.x;
    }
    let idx = exp_index(x, p.log2e_q30);
    return exp_finish(table[idx.j], idx, p.ln2_q30);
}

@compute @workgroup_size(64)
fn attention(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.tokens * p.heads) {
        return;
    }
    let t = idx / p.heads;
    let h = idx % p.heads;
    let d = p.head_dim;
    let g = h / (p.heads / p.kv_heads);
    var m = score(t, h, 0u);
    for (var j = 1u; j <= t; j++) {
        let s = score(t, h, j);
        if (w_lt(m, s)) {
            m = s;
        }
    }
    var z = vec2<u32>(0u, 0u);
    var ev = exps[2u * p.tokens];
    for (var j = 0u; j <= t; j++) {
        z = w_add(z, vec2<u32>(weight(m, score(t, h, j)), 0u));
        ev = max(ev, exps[2u * p.tokens + j]);
    }
    var acc: array<vec2<u32>, 256>;
    for (var i = 0u; i < d; i++) {
        acc[i] = vec2<u32>(0u, 0u);
    }
    for (var j = 0u; j <= t; j++) {
        let wj = i32(weight(m, score(t, h, j)));
        let sh = u32(ev - exps[2u * p.tokens + j]);
        for (var i = 0u; i < d; i++) {
            let term = w_mul_i32(wj, v[j * p.kv_heads * d + g * d + i]);
            var r = vec2<u32>(0u, 0u);
            if (sh < 63u) {
                r = w_shr_round(term, sh);
            }
            acc[i] = w_add(acc[i], r);
        }
    }
    for (var i = 0u; i < d; i++) {
        // round_half_even(acc / z) on the magnitude (symmetric), by long division: the
        // quotient is below 2^18 and z < 2^44.
        let a = acc[i];
        let neg = (a.y >> 31u) == 1u;
        var n = select(a, w_neg(a), neg);
        var qq = 0u;
        for (var b = 18i; b >= 0i; b--) {
            let zz = w_shl(z, u32(b));
            if (!w_lt_u(n, zz)) {
                n = w_sub(n, zz);
                qq = qq | (1u << u32(b));
            }
        }
        let twice = w_shl(n, 1u);
        if (w_lt_u(z, twice) || (twice.x == z.x && twice.y == z.y && (qq & 1u) == 1u)) {
            qq = qq + 1u;
        }
        ho[idx * d + i] = select(i32(qq), -i32(qq), neg);
    }
    he[idx] = ev;
}
