//! Causal GQA attention (shaders/attention.wgsl + attn_renorm.wgsl): identical bits on every
//! device, and the CPU twin against an f64 softmax attention within the bound its rounding
//! points give (fixed before measuring): half an output unit, half a unit of the head
//! output's exponent, 2^-19 of the largest |v| (scores in Q20 and the exp: < 2^-20 relative
//! on each weight), plus each key's weight rounding on the V grid (forward v2: half a unit
//! of 2^(Ev+9) on u_j, times |v_j|'s mantissa, over Z >= 2^30).

mod common;

use common::Rng;
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::cpu::attention::AttnShape;
use ucw::fixed::tables::ExpConsts;
use ucw::fixed::tensor::TokenFixed;

fn acts(t: usize, w: usize, rng: &mut Rng, exp_lo: i32) -> TokenFixed {
    let mants = (0..t * w).map(|_| (rng.next_u32() as i32) >> (15 + rng.below(4) as u32)).collect();
    let exps = (0..t).map(|_| exp_lo + rng.below(4) as i32).collect();
    TokenFixed { tokens: t, width: w, exps, mants }
}

fn case(t: usize, heads: usize, kv: usize, d: usize, seed: u64) -> (TokenFixed, TokenFixed, TokenFixed, AttnShape) {
    let mut rng = Rng(seed);
    let q = acts(t, heads * d, &mut rng, -14);
    let k = acts(t, kv * d, &mut rng, -14);
    let v = acts(t, kv * d, &mut rng, -20);
    (q, k, v, AttnShape::new(heads, kv, d))
}

// (tokens, heads, kv heads, head_dim). The GPU's workgroups stage attn_step_keys(d) keys
// per step (64 up to d = 32, 32 at 64, 24 at 80, 16 at 128, 8 at 256): the last three
// cases walk several steps of a 64-key chunk, and partial blocks of 8 queries.
const CASES: &[(usize, usize, usize, usize)] =
    &[(20, 4, 2, 16), (9, 2, 2, 32), (1, 4, 1, 8), (12, 3, 1, 64), (70, 2, 1, 128), (45, 2, 1, 80), (33, 2, 2, 256)];

/// Both ways the GPU walks keys (`UCW_GPU_ATTN`): a workgroup per block of 8 queries (the
/// hardware default) and one invocation per (query, head, chunk) (software adapters'), each
/// forced whatever the adapter.
const WALKS: &[common::Knob] = &[
    ("workgroups", |g| g.with_attn_workgroups(true)),
    ("one invocation per query, head and chunk", |g| g.with_attn_workgroups(false)),
];

conformance_with_knobs!(attention_same_bits_everywhere, WALKS, |b| {
    let ec = ExpConsts::new();
    let mut out = common::Outputs::new();
    for (i, &(t, h, kv, d)) in CASES.iter().enumerate() {
        let (q, k, v, s) = case(t, h, kv, d, 10 + i as u64);
        for bits in [16, 20] {
            out.tokens(
                &format!("{t} tokens {h}/{kv} heads of {d} bits {bits}"),
                &b.attention(&q, &k, &v, &s, &ec, bits).unwrap(),
            );
        }
    }
    out
});

#[test]
fn attention_twin_is_within_its_bound_of_f64() {
    let ec = ExpConsts::new();
    let cpu = CpuBackend::new();
    let mut worst: f64 = 0.0;
    for (ci, &(t, h, kv, d)) in CASES.iter().enumerate() {
        let (q, k, v, s) = case(t, h, kv, d, 30 + ci as u64);
        let y = cpu.attention(&q, &k, &v, &s, &ec, 20).unwrap();
        let val = |x: &TokenFixed, tok: usize, i: usize| x.mants[tok * x.width + i] as f64 * 2f64.powi(x.exps[tok]);
        for tt in 0..t {
            let unit = 2f64.powi(y.exps[tt]);
            for hh in 0..h {
                let g = hh / (h / kv);
                let scores: Vec<f64> = (0..=tt)
                    .map(|j| {
                        (0..d).map(|i| val(&q, tt, hh * d + i) * val(&k, j, g * d + i)).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = w.iter().sum();
                let ev = (0..=tt).map(|j| v.exps[j]).max().unwrap();
                for i in 0..d {
                    let want: f64 = (0..=tt).map(|j| w[j] * val(&v, j, g * d + i)).sum::<f64>() / z;
                    let got = y.mants[tt * h * d + hh * d + i] as f64 * unit;
                    let vmax = (0..=tt).map(|j| val(&v, j, g * d + i).abs()).fold(0.0, f64::max);
                    let u_round: f64 = (0..=tt).map(|j| (v.mants[j * v.width + g * d + i] as f64).abs()).sum::<f64>()
                        * 2f64.powi(ev + 8 - 30);
                    let bound = 0.5 * unit + 0.5 * 2f64.powi(ev) + vmax * 2f64.powi(-19) + u_round;
                    worst = worst.max((got - want).abs() / (vmax.max(1e-300)));
                    assert!((got - want).abs() <= bound, "case {ci} t {tt} head {hh} ch {i}: {got} vs {want}");
                }
            }
        }
    }
    println!("largest error relative to max|v|: {worst:.2e}");
}

// Attention over several key chunks: 221 tokens cross the 64-key chunk boundaries at 64,
// 128 and 192 as opened; 5-key chunks cross many, with the grid split; and a binding that
// holds only 4 chunks' partial sums makes the host widen the chunks to 56 keys (boundaries
// 56, 112, 168).
const ATTN_KNOBS: &[common::Knob] = &[
    ("workgroups", |g| g.with_attn_workgroups(true)),
    ("one invocation per query, head and chunk", |g| g.with_attn_workgroups(false)),
    ("workgroups, 5 keys per chunk, grid 2", |g| {
        g.with_attn_workgroups(true)
            .with_chunk_sizes(ucw::backend::gpu::ChunkSizes { attn_keys: 5, ..ucw::backend::gpu::ChunkSizes::DEFAULT })
            .with_work_limits(u64::MAX, 2)
    }),
    ("rows, 5 keys per chunk, grid 2", |g| {
        g.with_attn_workgroups(false)
            .with_chunk_sizes(ucw::backend::gpu::ChunkSizes { attn_keys: 5, ..ucw::backend::gpu::ChunkSizes::DEFAULT })
            .with_work_limits(u64::MAX, 2)
    }),
    ("workgroups, binding of 4 chunks' partial sums", |g| {
        g.with_attn_workgroups(true)
            .with_chunk_sizes(ucw::backend::gpu::ChunkSizes { attn_keys: 5, ..ucw::backend::gpu::ChunkSizes::DEFAULT })
            .with_work_limits(4 * 221 * 64 * 8 + 8, 65535)
    }),
];

conformance_with_knobs!(attention_over_key_chunks_same_bits_everywhere, ATTN_KNOBS, |b| {
    let ec = ExpConsts::new();
    let mut out = common::Outputs::new();
    for (i, &(t, h, kv, d)) in [(221usize, 4usize, 2usize, 16usize), (40, 2, 1, 8)].iter().enumerate() {
        let (q, k, v, s) = case(t, h, kv, d, 60 + i as u64);
        out.tokens(&format!("{t} tokens {h}/{kv} heads of {d}"), &b.attention(&q, &k, &v, &s, &ec, 20).unwrap());
    }
    out
});
