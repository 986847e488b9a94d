// Ingest: bf16/f16/f32 bits -> fixed-point groups, by bit manipulation only.
// Per group of `group_size` consecutive elements of a row (the last group of a row may be
// shorter): a shared exponent e = top - (mant_bits - 1), where top is the largest
// "value < 2^top" bound over the group's nonzero elements, and per element the integer
// m = round_half_even(v / 2^e), so |m| <= 2^(mant_bits-1). An all-zero group has e = 0.
// NaN/Inf are never encoded: the smallest offending element index goes to bad[0].
// CPU twin: src/backend/cpu/ingest.rs.

struct Params {
    rows: u32,
    cols: u32,
    group_size: u32,
    mant_bits: u32,
    dtype: u32,           // 0 = bf16, 1 = f16, 2 = f32 (DType::shader_code)
    groups_per_row: u32,
    total_groups: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Raw little-endian storage; 16-bit elements are packed two per word, even index low.
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> exps: array<i32>;
@group(0) @binding(3) var<storage, read_write> mants: array<i32>;
@group(0) @binding(4) var<storage, read_write> bad: array<atomic<u32>>;

struct Decoded {
    neg: bool,
    special: bool,  // NaN or Inf
    sig: u32,       // value = (-1)^neg * sig * 2^exp exactly
    exp: i32,
}

fn load_bits(i: u32) -> u32 {
    if (p.dtype == 2u) {
        return src[i];
    }
    return (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
}

fn decode(bits: u32) -> Decoded {
    var eb = 8u;
    var fb = 7u;
    var bias = 127i;
    if (p.dtype == 1u) {
        eb = 5u;
        fb = 10u;
        bias = 15i;
    } else if (p.dtype == 2u) {
        fb = 23u;
    }
    var d: Decoded;
    d.neg = ((bits >> ((eb + fb) & 31u)) & 1u) == 1u;
    let emask = (1u << eb) - 1u;
    let ef = (bits >> fb) & emask;
    let frac = bits & ((1u << fb) - 1u);
    d.special = ef == emask;
    if (ef == 0u) {
        d.sig = frac;
        d.exp = 1i - bias - i32(fb);
    } else {
        d.sig = frac | (1u << fb);
        d.exp = i32(ef) - bias - i32(fb);
    }
    return d;
}

// round_half_even(sig * 2^(exp - e)); the caller guarantees exp - e <= mant_bits - 2.
fn to_mantissa(d: Decoded, e: i32) -> i32 {
    if (d.special || d.sig == 0u) {
        return 0i;
    }
    let k = d.exp - e;
    var m: u32;
    if (k >= 0i) {
        m = d.sig << (u32(k) & 31u);
    } else {
        let r = u32(-k);
        if (r >= 32u) {
            // sig < 2^24 <= 2^(r-1): below half a unit.
            m = 0u;
        } else {
            let q = d.sig >> r;
            let rem = d.sig & ((1u << r) - 1u);
            let half = 1u << ((r - 1u) & 31u);
            m = q + select(0u, 1u, rem > half || (rem == half && (q & 1u) == 1u));
        }
    }
    return select(i32(m), -i32(m), d.neg);
}

@compute @workgroup_size(64)
fn ingest(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * 64u;
    if (g >= p.total_groups) {
        return;
    }
    let row = g / p.groups_per_row;
    let c0 = (g % p.groups_per_row) * p.group_size;
    let c1 = min(c0 + p.group_size, p.cols);
    let base = row * p.cols;
    var top = -2147483647i;
    var any = false;
    var first_bad = 0xffffffffu;
    for (var c = c0; c < c1; c++) {
        let d = decode(load_bits(base + c));
        if (d.special) {
            first_bad = min(first_bad, base + c);
        } else if (d.sig != 0u) {
            top = max(top, d.exp + i32(32u - countLeadingZeros(d.sig)));
            any = true;
        }
    }
    if (first_bad != 0xffffffffu) {
        atomicMin(&bad[0], first_bad);
    }
    let e = select(0i, top - i32(p.mant_bits) + 1i, any);
    exps[g] = e;
    for (var c = c0; c < c1; c++) {
        mants[base + c] = to_mantissa(decode(load_bits(base + c)), e);
    }
}
