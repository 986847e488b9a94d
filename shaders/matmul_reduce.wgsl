// requires: wide.wgsl
// Split-K matmul, second pass: out[i] = Σ_s part[i · slices + s] for each of `total`
// outputs, in 64-bit pairs of u32 with carry. Every partial and every running total is a sum
// over a subset of one row's K products, each shifted to the row's smallest exponent, so
// below K·2^(32+S) <= 2^61 (matmul.wgsl header, `matmul_max_spread`): exact, and the sum does
// not depend on how K was sliced. Loops `slices` times (at most 2^16 / slice columns).

struct Params {
    total: u32,      // outputs
    slices: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<u32>;      // [total, slices] × (lo, hi)
@group(0) @binding(2) var<storage, read_write> out: array<u32>; // [total] × (lo, hi)

@compute @workgroup_size(64)
fn matmul_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.total) {
        return;
    }
    var acc = vec2<u32>(0u, 0u);
    for (var s = 0u; s < p.slices; s++) {
        let j = idx * p.slices + s;
        acc = w_add(acc, vec2<u32>(part[2u * j], part[2u * j + 1u]));
    }
    out[2u * idx] = acc.x;
    out[2u * idx + 1u] = acc.y;
}
