// requires: wide.wgsl
// Rotary position embedding in integers, one invocation per token; algorithm, tables and
// bounds in the CPU twin, src/backend/cpu/rope.rs.

struct Params {
    tokens: u32,
    width: u32,
    head_dim: u32,
    bits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> m: array<i32>;        // [tokens, width]
@group(0) @binding(2) var<storage, read> mexp: array<i32>;     // [tokens]
@group(0) @binding(3) var<storage, read> pos: array<u32>;      // [tokens]
@group(0) @binding(4) var<storage, read> cosq: array<i32>;     // [positions, head_dim/2] Q20
@group(0) @binding(5) var<storage, read> sinq: array<i32>;
@group(0) @binding(6) var<storage, read_write> out: array<i32>;
@group(0) @binding(7) var<storage, read_write> oexp: array<i32>;

// y for channel i of the token (x·cos ∓ partner·sin, exact in 64 bits).
fn rotated(base: u32, i: u32, row: u32) -> vec2<u32> {
    let half = p.head_dim / 2u;
    let h = i / p.head_dim;
    let f = i % p.head_dim;
    let c = cosq[row + f % half];
    let s = sinq[row + f % half];
    if (f < half) {
        let x1 = m[base + h * p.head_dim + f];
        let x2 = m[base + h * p.head_dim + f + half];
        return w_sub(w_mul_i32(x1, c), w_mul_i32(x2, s));
    }
    let x1 = m[base + h * p.head_dim + f - half];
    let x2 = m[base + h * p.head_dim + f];
    return w_add(w_mul_i32(x2, c), w_mul_i32(x1, s));
}

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if (t >= p.tokens) {
        return;
    }
    let base = t * p.width;
    let row = pos[t] * (p.head_dim / 2u);
    var top = 0u;
    for (var i = 0u; i < p.width; i++) {
        let y = rotated(base, i, row);
        top = max(top, bitlen64(w_abs(y)));
    }
    if (top == 0u) {
        oexp[t] = 0i;
        for (var i = 0u; i < p.width; i++) {
            out[base + i] = 0i;
        }
        return;
    }
    let shift = i32(top) - (i32(p.bits) - 1i);
    for (var i = 0u; i < p.width; i++) {
        let y = rotated(base, i, row);
        out[base + i] = w_round_to_i32(y, shift);
    }
    oexp[t] = mexp[t] - 20i + shift;
}
