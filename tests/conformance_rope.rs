//! RoPE in integers (shaders/rope.wgsl): identical bits on every device, and the CPU twin
//! against an f64 rotation within the bound its rounding points give (fixed before
//! measuring): half an output unit plus (|x1| + |x2|) · 2^-21 from the Q20 tables.

mod common;

use common::Rng;
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::fixed::tables::RopeTables;
use ucw::fixed::tensor::TokenFixed;

fn tokens(n: usize, w: usize, seed: u64) -> (TokenFixed, Vec<u32>) {
    let mut rng = Rng(seed);
    let mut mants: Vec<i32> = (0..n * w).map(|_| (rng.next_u32() as i32) >> (14 + rng.below(10) as u32)).collect();
    mants[0] = 1 << 17;
    let exps = (0..n).map(|_| rng.below(20) as i32 - 25).collect();
    let mut pos: Vec<u32> = (0..n).map(|_| rng.below(256) as u32).collect();
    pos[0] = 0;
    pos[n - 1] = 255;
    (TokenFixed { tokens: n, width: w, exps, mants }, pos)
}

const CASES: &[(usize, usize, usize, f64)] = &[(5, 64, 16, 1e4), (4, 128, 32, 1e6), (3, 64, 64, 1e5)];

conformance!(rope_same_bits_everywhere, |b| {
    let mut out = common::Outputs::new();
    for (k, &(n, w, d, theta)) in CASES.iter().enumerate() {
        let (x, pos) = tokens(n, w, 10 + k as u64);
        let t = RopeTables::new(d, 256, theta);
        for bits in [12, 16, 20] {
            out.tokens(&format!("{n}x{w} head {d} theta {theta} bits {bits}"), &b.rope(&x, &pos, &t, bits).unwrap());
        }
        // Scaled types' tables (yarn, longrope): cos and sin times an attention factor, up
        // to the largest the config accepts (16: |cos|, |sin| up to 2^24, products 2^41).
        for scale in [1.3465735902799727, 16.0] {
            let inv: Vec<f64> = (0..d / 2).map(|f| libm::pow(theta, -((2 * f) as f64) / d as f64) / 3.0).collect();
            let t = RopeTables::from_inv_freq(d, 256, &inv, scale);
            out.tokens(&format!("{n}x{w} head {d} scaled tables x{scale}"), &b.rope(&x, &pos, &t, 20).unwrap());
        }
    }
    out
});

#[test]
#[allow(clippy::needless_range_loop)] // tt indexes four parallel arrays
fn rope_twin_is_within_its_bound_of_f64() {
    let cpu = CpuBackend::new();
    for (k, &(n, w, d, theta)) in CASES.iter().enumerate() {
        let (x, pos) = tokens(n, w, 20 + k as u64);
        let t = RopeTables::new(d, 256, theta);
        let y = cpu.rope(&x, &pos, &t, 20).unwrap();
        let half = d / 2;
        for tt in 0..n {
            let s = 2f64.powi(x.exps[tt]);
            let unit = 2f64.powi(y.exps[tt]);
            for h in 0..w / d {
                for f in 0..half {
                    let a = pos[tt] as f64 * theta.powf(-((2 * f) as f64) / d as f64);
                    let (x1, x2) =
                        (x.mants[tt * w + h * d + f] as f64 * s, x.mants[tt * w + h * d + f + half] as f64 * s);
                    let want = [x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()];
                    let got =
                        [y.mants[tt * w + h * d + f] as f64 * unit, y.mants[tt * w + h * d + f + half] as f64 * unit];
                    // 1% on the table term for the reference's own f64 rounding.
                    let bound = 0.5 * unit + (x1.abs() + x2.abs()) * 2f64.powi(-21) * 1.01;
                    for q in 0..2 {
                        assert!(
                            (got[q] - want[q]).abs() <= bound,
                            "case {k} token {tt} head {h} pair {f}: {} vs {}",
                            got[q],
                            want[q]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rope_rejects_positions_beyond_the_table_and_splits() {
    let (x, mut pos) = tokens(4, 64, 3);
    let t = RopeTables::new(16, 256, 1e4);
    let want = CpuBackend::new().rope(&x, &pos, &t, 16).unwrap();
    for (label, gpu) in common::gpu_backends() {
        let gpu = gpu.with_work_limits(64 * 4, 2);
        assert_eq!(gpu.rope(&x, &pos, &t, 16).unwrap(), want, "{label}");
    }
    pos[1] = 256;
    for d in common::devices() {
        assert!(d.backend.rope(&x, &pos, &t, 16).is_err(), "{}", d.label);
    }
}
