// requires: wide.wgsl
// One rounding after a matmul: token t's exact sums S[o] · 2^(xexp[t] + rexp[o]) become
// `bits`-bit mantissas under one exponent per token, chosen from the largest |S| (exact
// integer maximum first, DESIGN §3 rule 5, computed by renorm_top.wgsl), rounded half to
// even. One invocation per output element.
// CPU twin: renorm_token in src/backend/cpu/linear.rs.

struct Params {
    tokens: u32,
    n: u32,
    bits: u32,
    offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> sums: array<u32>;   // [tokens, n] × (lo, hi)
@group(0) @binding(2) var<storage, read> xexp: array<i32>;   // [tokens]
@group(0) @binding(3) var<storage, read> rexp: array<i32>;   // [n]
@group(0) @binding(4) var<storage, read> top: array<i32>;    // [tokens], i32 min: all zero
@group(0) @binding(5) var<storage, read_write> mants: array<i32>;
@group(0) @binding(6) var<storage, read_write> exps: array<i32>;

@compute @workgroup_size(64)
fn renorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.offset + gid.x + gid.y * nwg.x * 64u;
    if (i >= p.tokens * p.n) {
        return;
    }
    let t = i / p.n;
    let o = i % p.n;
    let tp = top[t];
    if (tp == -2147483647i - 1i) {
        // Every sum of the token is zero: zero mantissas (already), exponent 0.
        if (o == 0u) {
            exps[t] = 0i;
        }
        mants[i] = 0i;
        return;
    }
    let e = tp - i32(p.bits) + 1i;
    if (o == 0u) {
        exps[t] = e;
    }
    let v = vec2<u32>(sums[2u * i], sums[2u * i + 1u]);
    let d = xexp[t] + rexp[o] - e;
    var m = 0i;
    if (d >= 0i) {
        // Only values with bitlen <= bits - 1 - d (or zero) get here: exact.
        m = bitcast<i32>(w_shl(v, u32(min(d, 63i))).x);
    } else if (d > -63i) {
        m = bitcast<i32>(w_shr_round(v, u32(-d)).x);
    }
    mants[i] = m;
}
