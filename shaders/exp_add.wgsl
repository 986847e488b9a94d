// Per-token exponent sums on the device: out[t] = a[t] + b[t] + p.bias. SwiGLU's exact
// products z of token t sit at exponent gexp[t] + uexp[t] − 8 (swiglu.wgsl), the exponent
// its renorm takes (the CPU twin: the same i32 sum in act.rs / the host's swiglu). Token
// exponents of bounded activations are small integers, far from wrapping an i32.

struct Params {
    tokens: u32,
    bias: i32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<i32>;
@group(0) @binding(2) var<storage, read> b: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<i32>;

@compute @workgroup_size(64)
fn exp_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.tokens) {
        return;
    }
    out[t] = a[t] + b[t] + p.bias;
}
