// requires: wide.wgsl
// One rounding after a matmul: token t's exact sums S[o] · 2^(xexp[t] + rexp[o]) become
// `bits`-bit mantissas under one exponent per token, chosen from the largest |S| (exact
// integer maximum first, DESIGN §3 rule 5), rounded half to even.
// CPU twin: renorm_token in src/backend/cpu/linear.rs.

struct Params {
    tokens: u32,
    n: u32,
    bits: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> sums: array<u32>;   // [tokens, n] × (lo, hi)
@group(0) @binding(2) var<storage, read> xexp: array<i32>;   // [tokens]
@group(0) @binding(3) var<storage, read> rexp: array<i32>;   // [n]
@group(0) @binding(4) var<storage, read_write> mants: array<i32>;
@group(0) @binding(5) var<storage, read_write> exps: array<i32>;

fn load(i: u32) -> vec2<u32> {
    return vec2<u32>(sums[2u * i], sums[2u * i + 1u]);
}

@compute @workgroup_size(64)
fn renorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.tokens) {
        return;
    }
    var top = 0i;
    var any = false;
    for (var o = 0u; o < p.n; o++) {
        let v = load(t * p.n + o);
        if (v.x != 0u || v.y != 0u) {
            let b = xexp[t] + rexp[o] + i32(bitlen64(w_abs(v)));
            top = select(b, max(top, b), any);
            any = true;
        }
    }
    if (!any) {
        exps[t] = 0i;
        for (var o = 0u; o < p.n; o++) {
            mants[t * p.n + o] = 0i;
        }
        return;
    }
    let e = top - i32(p.bits) + 1i;
    exps[t] = e;
    for (var o = 0u; o < p.n; o++) {
        let v = load(t * p.n + o);
        let d = xexp[t] + rexp[o] - e;
        var m = 0i;
        if (d >= 0i) {
            m = bitcast<i32>(w_shl(v, u32(d)).x);
        } else if (d > -63i) {
            m = bitcast<i32>(w_shr_round(v, u32(-d)).x);
        }
        mants[t * p.n + o] = m;
    }
}
