// requires: wide.wgsl expq.wgsl
// SwiGLU silu(g)·u in integers: the exact product z = round(g·sigmoid(g) / 2^22) · u of
// every element (one invocation each), at exponent ge + ue − 8; the one rounding of each
// token to `bits` is renorm.wgsl's (the same per-token rule as the CPU twin's renorm_row).
// Algorithm, rounding points and bounds: src/backend/cpu/act.rs.

struct Params {
    tokens: u32,
    width: u32,
    bits: u32,
    ln2_q30: u32,
    log2e_q30: u32,
    offset: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<i32>;
@group(0) @binding(2) var<storage, read> u: array<i32>;
@group(0) @binding(3) var<storage, read> gexp: array<i32>;
@group(0) @binding(4) var<storage, read> table: array<u32>;   // 2^(-j/256) in Q30
@group(0) @binding(5) var<storage, read_write> z: array<u32>; // [tokens, width] × (lo, hi)

fn exp_neg_q30(x: u32) -> u32 {
    let idx = exp_index(x, p.log2e_q30);
    return exp_finish(table[idx.j], idx, p.ln2_q30);
}

// round_half_even(n / d) for 0 < d <= 2^31 and a quotient below 2^31.
fn div_round(n_in: vec2<u32>, d: u32) -> u32 {
    var n = n_in;
    var q = 0u;
    for (var b = 31i; b >= 0i; b--) {
        let dd = w_shl(vec2<u32>(d, 0u), u32(b));
        if (!w_lt_u(n, dd)) {
            n = w_sub(n, dd);
            q = q | (1u << u32(b));
        }
    }
    // n is now the remainder (< d <= 2^31): compare 2n with d.
    let twice = w_shl(n, 1u);
    let dv = vec2<u32>(d, 0u);
    if (w_lt_u(dv, twice) || (twice.x == dv.x && twice.y == dv.y && (q & 1u) == 1u)) {
        q = q + 1u;
    }
    return q;
}

fn sigmoid_q30(gm: i32, ge: i32) -> u32 {
    let sh = ge + 20i;
    let mag = u32(abs(gm));
    var x: u32;
    if (sh >= 0i) {
        if (sh >= 40i) {
            x = 32u << 20u;
        } else {
            let big = w_shl(vec2<u32>(mag, 0u), u32(sh));
            x = select(big.x, 32u << 20u, big.y != 0u || big.x > (32u << 20u));
        }
    } else {
        x = min(exp_shift_round(vec2<u32>(mag, 0u), u32(-sh)).x, 32u << 20u);
    }
    let e = exp_neg_q30(x);
    let d = (1u << 30u) + e;
    if (gm >= 0i) {
        return div_round(vec2<u32>(0u, 1u << 28u), d);   // 2^60
    }
    return div_round(w_shl(vec2<u32>(e, 0u), 30u), d);
}

@compute @workgroup_size(64)
fn swiglu_z(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.offset + gid.x + gid.y * nwg.x * 64u;
    if (i >= p.tokens * p.width) {
        return;
    }
    let s = sigmoid_q30(g[i], gexp[i / p.width]);
    let pz = w_shr_round(w_mul_i32(g[i], bitcast<i32>(s)), 22u);   // |p| < 2^26
    let v = w_mul_i32(bitcast<i32>(pz.x), u[i]);                   // < 2^43
    z[2u * i] = v.x;
    z[2u * i + 1u] = v.y;
}
