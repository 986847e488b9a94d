// requires: wide.wgsl
// Fixed-point e^(-x) in Q30 for x in Q20 (0 <= x <= 32·2^20), split around the table
// lookup so kernels keep the table in their own binding. CPU twin: exp_neg_q30 in
// src/backend/cpu/act.rs (x·log2 e in Q28, 2^(-j/256) table, second-order polynomial).

struct ExpIdx {
    j: u32,   // table index: top 8 fraction bits
    r: u32,   // remaining 20 fraction bits
    n: u32,   // integer part of x·log2 e
}

fn exp_shift_round(x: vec2<u32>, s: u32) -> vec2<u32> {
    if (s >= 63u) {
        return vec2<u32>(0u, 0u);
    }
    return w_shr_round(x, s);
}

fn exp_index(x: u32, log2e_q30: u32) -> ExpIdx {
    let t = exp_shift_round(w_mul_u32(x, log2e_q30), 22u);   // Q28, < 2^34
    let f = t.x & 0xfffffffu;
    return ExpIdx(f >> 20u, f & 0xfffffu, w_sar(t, 28u).x);
}

fn exp_finish(tj: u32, idx: ExpIdx, ln2_q30: u32) -> u32 {
    let a = exp_shift_round(w_mul_u32(idx.r, ln2_q30), 28u).x;    // < 2^22
    let poly = w_add(w_sub(vec2<u32>(1u << 30u, 0u), vec2<u32>(a, 0u)), exp_shift_round(w_mul_u32(a, a), 31u));
    let m = exp_shift_round(w_mul_u32(tj, poly.x), 30u);
    if (idx.n >= 40u) {
        return 0u;
    }
    return exp_shift_round(m, idx.n).x;
}
