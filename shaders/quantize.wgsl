// requires: wide.wgsl
// Quantize (codec version 1): per group of ingested mantissas, the integer search for the
// scale code and zero point of least importance-weighted squared error, then the codes.
// The search is specified, with its bounds, in src/backend/cpu/quant.rs (the CPU twin).

struct Params {
    rows: u32,
    cols: u32,
    group_size: u32,
    bits: u32,
    base_exp: i32,
    groups_per_row: u32,
    total_groups: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mants: array<i32>;       // |m| <= 2^15
@group(0) @binding(2) var<storage, read> exps: array<i32>;        // per group
@group(0) @binding(3) var<storage, read> importance: array<u32>;  // per column, <= 2^12
@group(0) @binding(4) var<storage, read_write> codes: array<u32>; // per element
@group(0) @binding(5) var<storage, read_write> gmeta: array<u32>;  // per group: c | z << 8

// Signed n / d rounded half to even, d > 0.
fn div_round(n: i32, d: i32) -> i32 {
    var q = n / d;
    var r = n - q * d;
    if (r < 0i) {
        q = q - 1i;
        r = r + d;
    }
    let twice = u32(r) * 2u;
    if (twice > u32(d) || (twice == u32(d) && (q & 1i) == 1i)) {
        return q + 1i;
    }
    return q;
}

fn shr_round_i32(a: i32, s: u32) -> i32 {
    let q = a >> s;
    let rem = u32(a) & ((1u << s) - 1u);
    let half = 1u << ((s - 1u) & 31u);
    if (rem > half || (rem == half && (q & 1i) == 1i)) {
        return q + 1i;
    }
    return q;
}

fn step_fx(c: u32, e_g: i32) -> u32 {
    let mant = 16u + (c & 15u);
    let sh = p.base_exp + i32(c >> 4u) - e_g + 8i;
    if (sh >= 26i) {
        return 1u << 30u;
    }
    if (sh >= 0i) {
        return mant << u32(sh);
    }
    if (sh > -32i) {
        return u32(shr_round_i32(i32(mant), u32(-sh)));
    }
    return 0u;
}

fn cost(base: u32, n: u32, t: i32, z: i32, qmax: i32, col0: u32) -> vec2<u32> {
    var acc = vec2<u32>(0u, 0u);
    for (var j = 0u; j < n; j++) {
        let x = mants[base + j];
        let d = clamp(div_round(x << 8u, t), -z, qmax - z);
        let e = shr_round_i32((x << 8u) - t * d, 8u);
        acc = w_add(acc, w_mul_i32(e, e * i32(importance[col0 + j])));
    }
    return acc;
}

@compute @workgroup_size(64)
fn quantize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * 64u;
    if (g >= p.total_groups) {
        return;
    }
    let row = g / p.groups_per_row;
    let col0 = (g % p.groups_per_row) * p.group_size;
    let n = min(col0 + p.group_size, p.cols) - col0;
    let base = row * p.cols + col0;
    let e_g = exps[g];
    let qmax = i32((1u << p.bits) - 1u);
    var hi = 0i;
    var lo = 0i;
    for (var j = 0u; j < n; j++) {
        hi = max(hi, mants[base + j]);
        lo = min(lo, mants[base + j]);
    }
    let range = hi - lo;
    if (range == 0i) {
        gmeta[g] = 0u;
        for (var j = 0u; j < n; j++) {
            codes[base + j] = 0u;
        }
        return;
    }
    let tstar = u32((range << 8u) / qmax);
    var best_cost = vec2<u32>(0xffffffffu, 0xffffffffu);
    var have = false;
    var best_c = 0u;
    var best_z = 0i;
    var best_t = 0i;
    var any = false;
    for (var k = 0u; k < 257u; k++) {
        var c = k;
        var t = 0u;
        if (k < 256u) {
            t = step_fx(c, e_g);
            if (t == 0u || 2u * t < tstar || t > 2u * tstar) {
                continue;
            }
            any = true;
        } else {
            // No code within [t*/2, 2t*]: the smallest step.
            if (any) {
                break;
            }
            c = 0u;
            t = max(step_fx(0u, e_g), 1u);
        }
        let ti = i32(t);
        let z0 = clamp(div_round((-lo) << 8u, ti), 0i, qmax);
        for (var dz = -1i; dz <= 1i; dz++) {
            let z = z0 + dz;
            if (z < 0i || z > qmax) {
                continue;
            }
            let cst = cost(base, n, ti, z, qmax, col0);
            if (!have || w_lt_u(cst, best_cost)) {
                have = true;
                best_cost = cst;
                best_c = c;
                best_z = z;
                best_t = ti;
            }
        }
    }
    gmeta[g] = best_c | (u32(best_z) << 8u);
    for (var j = 0u; j < n; j++) {
        let d = clamp(div_round(mants[base + j] << 8u, best_t), -best_z, qmax - best_z);
        codes[base + j] = u32(d + best_z);
    }
}
