//! Log-softmax NLL (shaders/nll.wgsl): identical Q30 results on every device, and the CPU
//! twin against f64 within the bound its rounding points give (fixed before measuring):
//! 2^-20 for the Q20 differences (slope <= 1 in the log-sum-exp) and the log2 steps, plus
//! V · 2^-27 from the per-term exp error.

mod common;

use common::Rng;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::cpu::act::ExpConsts;
use ucw::backend::cpu::nll::LogConsts;
use ucw::backend::{Backend, ExactSums, TokenFixed};

fn logits(t: usize, v: usize, seed: u64) -> (TokenFixed, Vec<u32>) {
    let mut rng = Rng(seed);
    let mants: Vec<i32> = (0..t * v).map(|_| (rng.next_u32() as i32) >> (8 + rng.below(6) as u32)).collect();
    let exps = (0..t).map(|i| [-20, -21, -18, -30, -10, 0, 8][i % 7]).collect();
    let targets = (0..t).map(|_| rng.below(v as u64) as u32).collect();
    (TokenFixed { tokens: t, width: v, exps, mants }, targets)
}

conformance!(nll_same_bits_everywhere, |b| {
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = Vec::new();
    for (k, &(t, v)) in [(7usize, 512usize), (3, 70), (2, 1)].iter().enumerate() {
        let (l, y) = logits(t, v, 10 + k as u64);
        for x in b.nll(&l, &y, &ec, &lc).unwrap() {
            out.extend(x.to_le_bytes());
        }
    }
    out
});

// The lm_head's exact sums straight to NLL (`renorm_nll`, the CPU keeps no logits) equal
// renorm then nll on every device; sums of many magnitudes, and token 1 of each shape has
// a zero sum (its whole row when the vocabulary is 1).
conformance!(renorm_nll_same_bits_everywhere, |b| {
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = Vec::new();
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
        for x in got {
            out.extend(x.to_le_bytes());
        }
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
