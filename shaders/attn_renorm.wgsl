// requires: wide.wgsl
// Second step of attention (shaders/attention.wgsl): per token, the heads' outputs (one
// exponent per head) rounded to `bits` under one exponent, largest top bit first.
// CPU twin: attention_token in src/backend/cpu/attention.rs.

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    bits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ho: array<i32>;   // [T, heads, d]
@group(0) @binding(2) var<storage, read> he: array<i32>;   // [T, heads]
@group(0) @binding(3) var<storage, read_write> out: array<i32>;
@group(0) @binding(4) var<storage, read_write> oexp: array<i32>;

@compute @workgroup_size(64)
fn attn_renorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.tokens) {
        return;
    }
    let w = p.heads * p.head_dim;
    var top = 0i;
    var any = false;
    for (var i = 0u; i < w; i++) {
        let o = ho[t * w + i];
        if (o != 0i) {
            let b = he[t * p.heads + i / p.head_dim] + i32(32u - countLeadingZeros(u32(abs(o))));
            top = select(b, max(top, b), any);
            any = true;
        }
    }
    if (!any) {
        oexp[t] = 0i;
        for (var i = 0u; i < w; i++) {
            out[t * w + i] = 0i;
        }
        return;
    }
    let e = top - (i32(p.bits) - 1i);
    for (var i = 0u; i < w; i++) {
        let dsh = he[t * p.heads + i / p.head_dim] - e;
        let o = w_from_i32(ho[t * w + i]);
        if (dsh >= 0i) {
            out[t * w + i] = bitcast<i32>(w_shl(o, u32(dsh)).x);
        } else {
            out[t * w + i] = w_round_to_i32(o, -dsh);
        }
    }
    oexp[t] = e;
}
