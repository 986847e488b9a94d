//! Residual add (shaders/add.wgsl): identical bits on every device, and the CPU twin against
//! exact i128 sums: within half an output unit, plus half a unit at emax − 38 where an
//! operand had to be pre-rounded (bound fixed before measuring).

mod common;

use common::Rng;
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::fixed::tensor::TokenFixed;

/// Pairs of token batches whose per-token exponent gaps cover 0, small, 38, 39 and 60, both signs.
fn pair(w: usize, seed: u64) -> (TokenFixed, TokenFixed) {
    let mut rng = Rng(seed);
    let gaps = [0i32, 3, -7, 38, -38, 39, -39, 60, -60];
    let n = gaps.len();
    let mut mk = |sh: u32| -> Vec<i32> {
        let mut v: Vec<i32> = (0..n * w).map(|_| (rng.next_u32() as i32) >> (sh + rng.below(10) as u32)).collect();
        v[0] = 1 << 23;
        v[w] = -(1 << 23);
        v
    };
    let (a, b) = (mk(8), mk(8));
    let ex: Vec<i32> = (0..n).map(|i| -20 - i as i32).collect();
    let ey: Vec<i32> = ex.iter().zip(gaps).map(|(e, g)| e + g).collect();
    (TokenFixed { tokens: n, width: w, exps: ex, mants: a }, TokenFixed { tokens: n, width: w, exps: ey, mants: b })
}

conformance!(add_same_bits_everywhere, |b| {
    let mut out = common::Outputs::new();
    for (k, w) in [64usize, 70, 2].into_iter().enumerate() {
        let (x, y) = pair(w, 10 + k as u64);
        for bits in [16, 20, 24, 30] {
            out.tokens(&format!("width {w} bits {bits}"), &b.add(&x, &y, bits).unwrap());
        }
    }
    out
});

#[test]
fn add_twin_is_within_its_bound_of_the_exact_sum() {
    let cpu = CpuBackend::new();
    let (x, y) = pair(70, 3);
    for bits in [16u32, 20, 30] {
        let s = cpu.add(&x, &y, bits).unwrap();
        for t in 0..x.tokens {
            // Exact sum and result in units of 2^lo (the smallest exponent involved), i128.
            let lo = x.exps[t].min(y.exps[t]).min(s.exps[t]);
            let emax = x.exps[t].max(y.exps[t]);
            for i in 0..70 {
                let exact = ((x.mants[t * 70 + i] as i128) << (x.exps[t] - lo))
                    + ((y.mants[t * 70 + i] as i128) << (y.exps[t] - lo));
                let got = (s.mants[t * 70 + i] as i128) << (s.exps[t] - lo);
                let half_unit = if s.exps[t] > lo { 1i128 << (s.exps[t] - lo - 1) } else { 0 };
                let pre = if emax - x.exps[t].min(y.exps[t]) > 38 { 1i128 << (emax - 38 - lo - 1) } else { 0 };
                let bound = half_unit + pre;
                assert!((got - exact).abs() <= bound, "bits {bits} token {t} ch {i}: {got} vs {exact} (bound {bound})");
            }
        }
    }
}

#[test]
fn add_splits_over_small_bindings() {
    let (x, y) = pair(70, 4);
    let want = CpuBackend::new().add(&x, &y, 20).unwrap();
    for (label, gpu) in common::gpu_backends() {
        let gpu = gpu.with_work_limits(2 * 70 * 4, 2);
        assert_eq!(gpu.add(&x, &y, 20).unwrap(), want, "{label}");
    }
}
