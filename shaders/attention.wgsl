// requires: wide.wgsl attn_lib.wgsl
// Attention, pass 3 of 3: per (query t, head h) the chunks' Σ w and Σ u·v (attn_sum.wgsl)
// are added (exact integer sums) and each output is round_half_even(A_i · 2^9 / Z) at the
// prefix's largest V exponent. Then `attn_renorm` per token across heads. No seq×seq
// buffer: scores are recomputed in passes 1 and 2. Algorithm, rounding points and bounds:
// src/backend/cpu/attention.rs (the CPU twin).

// Binding 0, the parameters `p`, is declared in attn_lib.wgsl.
@group(0) @binding(1) var<storage, read> pz: array<u32>;   // [T, heads, chunks] × (lo, hi)
@group(0) @binding(2) var<storage, read> pa: array<u32>;   // [T, heads, chunks, d] × (lo, hi)
@group(0) @binding(3) var<storage, read> cev: array<i32>;  // [T, heads, chunks]
@group(0) @binding(4) var<storage, read_write> ho: array<i32>;   // [T, heads, d] head outputs
@group(0) @binding(5) var<storage, read_write> he: array<i32>;   // [T, heads] their exponents

@compute @workgroup_size(64)
fn attention(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = p.offset + gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.tokens * p.heads) {
        return;
    }
    let t = idx / p.heads;
    let d = p.head_dim;
    var z = vec2<u32>(0u, 0u);
    var ev = cev[idx * p.chunks];
    for (var c = 0u; c < p.chunks; c++) {
        if (c * p.kc <= t) {
            z = w_add(z, vec2<u32>(pz[2u * (idx * p.chunks + c)], pz[2u * (idx * p.chunks + c) + 1u]));
            ev = max(ev, cev[idx * p.chunks + c]);
        }
    }
    for (var i = 0u; i < d; i++) {
        var a = vec2<u32>(0u, 0u);
        for (var c = 0u; c < p.chunks; c++) {
            let k = (idx * p.chunks + c) * d + i;
            a = w_add(a, vec2<u32>(pa[2u * k], pa[2u * k + 1u]));
        }
        // round_half_even(a · 2^9 / z) on the magnitude (symmetric), by long division:
        // |a| < 2^53, the quotient is below 2^18 and 2^30 <= z < 2^44.
        let neg = (a.y >> 31u) == 1u;
        var n = w_shl(select(a, w_neg(a), neg), 9u);
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
