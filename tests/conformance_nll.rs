//! Log-softmax NLL (shaders/nll.wgsl): identical Q30 results on every device, and the CPU
//! twin against f64 within the bound its rounding points give (fixed before measuring):
//! 2^-20 for the Q20 differences (slope <= 1 in the log-sum-exp) and the log2 steps, plus
//! V · 2^-27 from the per-term exp error.

mod common;

use common::Rng;
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::gpu::ChunkSizes as GpuChunks;
use ucw::fixed::tables::{ExpConsts, LogConsts};
use ucw::fixed::tensor::{ExactSums, TokenFixed};

fn logits(t: usize, v: usize, seed: u64) -> (TokenFixed, Vec<u32>) {
    let mut rng = Rng(seed);
    let mants: Vec<i32> = (0..t * v).map(|_| (rng.next_u32() as i32) >> (8 + rng.below(6) as u32)).collect();
    let exps = (0..t).map(|i| [-20, -21, -18, -30, -10, 0, 8][i % 7]).collect();
    let targets = (0..t).map(|_| rng.below(v as u64) as u32).collect();
    (TokenFixed { tokens: t, width: v, exps, mants }, targets)
}

conformance!(nll_same_bits_everywhere, |b| {
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = common::Outputs::new();
    for (k, &(t, v)) in [(7usize, 512usize), (3, 70), (2, 1)].iter().enumerate() {
        let (l, y) = logits(t, v, 10 + k as u64);
        out.add(format!("{t}x{v}"), &b.nll(&l, &y, &ec, &lc).unwrap());
    }
    out
});

// The lm_head's exact sums straight to NLL (`renorm_nll`, the CPU keeps no logits) equal
// renorm then nll on every device; sums of many magnitudes, and token 1 of each shape has
// a zero sum (its whole row when the vocabulary is 1).
conformance!(renorm_nll_same_bits_everywhere, |b| {
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = common::Outputs::new();
    for (k, &(t, v)) in [(6usize, 512usize), (3, 70), (2, 1)].iter().enumerate() {
        let mut rng = Rng(40 + k as u64);
        let sums: Vec<i64> = (0..t * v)
            .map(|i| if i % v == 0 && i / v == 1 { 0 } else { (rng.next_u64() as i64) >> (4 + rng.below(40)) })
            .collect();
        let row_exps = (0..v).map(|_| rng.below(8) as i32 - 4).collect();
        let s = ExactSums { tokens: t, n: v, sums, row_exps };
        let x_exps: Vec<i32> = (0..t).map(|i| [-60, -40, -33, -50, -45, -38][i % 6]).collect();
        let y: Vec<u32> = (0..t).map(|_| rng.below(v as u64) as u32).collect();
        let want = b.nll(&b.renorm(&s, &x_exps, 24).unwrap(), &y, &ec, &lc).unwrap();
        let got = b.renorm_nll(&s, &x_exps, 24, &y, &ec, &lc).unwrap();
        assert_eq!(got, want, "{t}x{v}: renorm_nll differs from renorm + nll");
        out.add(format!("{t}x{v}"), &got);
    }
    out
});

#[test]
fn nll_twin_is_within_its_bound_of_f64() {
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let (t, v) = (7, 512);
    let (l, y) = logits(t, v, 3);
    let got = CpuBackend::new().nll(&l, &y, &ec, &lc).unwrap();
    let mut worst: f64 = 0.0;
    for i in 0..t {
        let vals: Vec<f64> = (0..v).map(|j| l.mants[i * v + j] as f64 * 2f64.powi(l.exps[i])).collect();
        let max = vals.iter().cloned().fold(f64::MIN, f64::max);
        let lse = vals.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        let want = lse + max - vals[y[i] as usize];
        let g = got[i] as f64 / 2f64.powi(30);
        worst = worst.max((g - want).abs());
        assert!((g - want).abs() <= 2f64.powi(-20) + v as f64 * 2f64.powi(-27), "token {i}: {g} vs {want}");
    }
    println!("largest NLL error {worst:.2e} nats");
}

#[test]
fn nll_rejects_bad_targets_and_splits() {
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let (l, mut y) = logits(5, 70, 4);
    let want = CpuBackend::new().nll(&l, &y, &ec, &lc).unwrap();
    for (label, gpu) in common::gpu_backends() {
        let gpu = gpu.with_work_limits(2 * 70 * 4, 2);
        assert_eq!(gpu.nll(&l, &y, &ec, &lc).unwrap(), want, "{label}");
    }
    y[2] = 70;
    for d in common::devices() {
        assert!(d.backend.nll(&l, &y, &ec, &lc).is_err(), "{}", d.label);
    }
}

// The chunked paths of nll, renorm and renorm_nll: vocabularies across several NLL and
// renorm_top chunks (the largest logit, and each token's top bit, land in different chunks
// for different tokens: row exponents from -5 to +5 and sums of many magnitudes), tokens
// split over small bindings, and dispatches split over a small grid.
const CHUNKED: &[(usize, usize)] = &[(10, 13_289), (9, 1_000), (4, 3_333), (2, 1)];
// As opened: 13,289 crosses 3 NLL chunk boundaries (4096, 8192, 12288) and 12 renorm_top
// ones; 3,333 crosses 3 renorm_top boundaries (1024, 2048, 3072).
const _: () = assert!(CHUNKED[0].1 / GpuChunks::DEFAULT.nll >= 3 && CHUNKED[2].1 / GpuChunks::DEFAULT.renorm >= 3);

const NLL_KNOBS: &[common::Knob] = &[
    common::AS_OPENED,
    // 1,000 logits in chunks of 307: boundaries at 307, 614 and 921; 13,289 in 44 chunks.
    ("nll chunk 307, renorm chunk 211", |g| {
        g.with_chunk_sizes(GpuChunks { nll: 307, renorm: 211, ..GpuChunks::DEFAULT })
    }),
    // Chunks of 7 logits: 9 x 143 = 1287 nll_max invocations over a grid of 2 x 2
    // workgroups (256 invocations) split into 6 dispatches.
    ("nll chunk 7, renorm chunk 5, grid 2", |g| {
        g.with_chunk_sizes(GpuChunks { nll: 7, renorm: 5, ..GpuChunks::DEFAULT }).with_work_limits(u64::MAX, 2)
    }),
    // A binding of 3 tokens of 13,289 i32 logits (and 1 token of i64 sums): 10 tokens in
    // chunks of 3 (boundaries after tokens 3, 6 and 9) for nll, of 1 for renorm.
    ("binding of 3 x 13,289 logits", |g| g.with_work_limits(3 * 13_289 * 4 + 4, 65535)),
];

conformance_with_knobs!(chunked_nll_and_renorm_same_bits_everywhere, NLL_KNOBS, |b| {
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = common::Outputs::new();
    for (k, &(t, v)) in CHUNKED.iter().enumerate() {
        let mut rng = Rng(70 + k as u64);
        let sums: Vec<i64> =
            (0..t * v).map(|i| if i % 97 == 5 { 0 } else { (rng.next_u64() as i64) >> (20 + rng.below(30)) }).collect();
        let row_exps = (0..v).map(|_| rng.below(11) as i32 - 5).collect();
        let s = ExactSums { tokens: t, n: v, sums, row_exps };
        let x_exps: Vec<i32> = (0..t).map(|i| [-48, -45, -50, -47][i % 4]).collect();
        let y: Vec<u32> = (0..t).map(|_| rng.below(v as u64) as u32).collect();
        let logits = b.renorm(&s, &x_exps, 24).unwrap();
        out.tokens(&format!("{t}x{v} renorm"), &logits);
        let nll = b.nll(&logits, &y, &ec, &lc).unwrap();
        assert_eq!(b.renorm_nll(&s, &x_exps, 24, &y, &ec, &lc).unwrap(), nll, "{t}x{v}: renorm_nll differs");
        out.add(format!("{t}x{v} nll"), &nll);
    }
    out
});
