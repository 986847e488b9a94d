//! RMSNorm in integers (shaders/rmsnorm.wgsl): identical bits on every device, and the CPU
//! twin within its derived error bound of an f64 RMSNorm. The bound, fixed before
//! measuring: half a unit of the output plus 2^-21 relative (the roundings of step 2 (2^-32),
//! step 3 (2^-31), the Newton rsqrt (about 2^-28) and the 24-bit factor (2^-24) sum to less
//! than 2^-22).

mod common;

use common::Rng;
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::dtype::DType;
use ucw::fixed::tables::RmsConsts;
use ucw::fixed::tensor::{GroupFixed, IngestParams, TokenFixed};

/// Residual-stream-like tokens: most channels small, one token with a massive outlier
/// channel (DESIGN §4: ~25,000 against values below 10), one all-zero token.
fn tokens(t: usize, w: usize, seed: u64) -> TokenFixed {
    let mut rng = Rng(seed);
    let mut mants: Vec<i32> = (0..t * w).map(|_| (rng.next_u32() as i32) >> (12 + rng.below(8) as u32)).collect();
    mants[5 % w] = 1 << 23;
    if t > 2 {
        mants[2 * w + 6 % w] = -(1 << 23);
    }
    for m in &mut mants[w..2 * w] {
        *m = 0;
    }
    let exps = (0..t).map(|_| rng.below(40) as i32 - 30).collect();
    TokenFixed { tokens: t, width: w, exps, mants }
}

fn gamma(w: usize, seed: u64) -> GroupFixed {
    let mut rng = Rng(seed);
    let bits: Vec<u8> = (0..w)
        .flat_map(|i| {
            let v = if i % 17 == 3 { 0.0 } else { 1.0 + ((rng.next_u32() as f64 / u32::MAX as f64) - 0.5) * 0.4 };
            half::bf16::from_f64(v).to_bits().to_le_bytes()
        })
        .collect();
    CpuBackend::new()
        .ingest(&bits, DType::BF16, 1, w, IngestParams { group_size: w as u32, mantissa_bits: 16 })
        .unwrap()
}

const CASES: &[(usize, usize, f64)] = &[(6, 64, 1e-6), (4, 576, 1e-5), (3, 70, 1e-6), (2, 1, 1e-6)];

conformance!(rmsnorm_same_bits_everywhere, |b| {
    let mut out = common::Outputs::new();
    for (k, &(t, w, eps)) in CASES.iter().enumerate() {
        let x = tokens(t.max(2), w, 10 + k as u64);
        let c = RmsConsts::new(w, eps);
        let g = gamma(w, 20 + k as u64);
        for bits in [16, 18, 20, 30] {
            out.tokens(&format!("{t}x{w} eps {eps} bits {bits}"), &b.rms_norm(&x, &g, &c, bits).unwrap());
        }
    }
    out
});

#[test]
fn rmsnorm_twin_is_within_its_error_bound_of_f64() {
    let cpu = CpuBackend::new();
    let mut worst: f64 = 0.0;
    for (k, &(t, w, eps)) in CASES.iter().enumerate() {
        let x = tokens(t.max(2), w, 30 + k as u64);
        let c = RmsConsts::new(w, eps);
        let g = gamma(w, 40 + k as u64);
        let gv: Vec<f64> = g.mantissas.iter().map(|&m| m as f64 * 2f64.powi(g.exponents[0])).collect();
        for bits in [18u32, 24] {
            let y = cpu.rms_norm(&x, &g, &c, bits).unwrap();
            for tt in 0..x.tokens {
                let xv: Vec<f64> = (0..w).map(|i| x.mants[tt * w + i] as f64 * 2f64.powi(x.exps[tt])).collect();
                let ms = xv.iter().map(|v| v * v).sum::<f64>() / w as f64;
                let r = 1.0 / (ms + eps).sqrt();
                let unit = 2f64.powi(y.exps[tt]);
                for i in 0..w {
                    let want = xv[i] * r * gv[i];
                    let got = y.mants[tt * w + i] as f64 * unit;
                    let bound = 0.5 * unit + want.abs() * 2f64.powi(-21);
                    assert!((got - want).abs() <= bound, "w {w} bits {bits} token {tt} ch {i}: {got} vs {want}");
                    if want != 0.0 {
                        worst = worst.max(((got - want).abs() - 0.5 * unit).max(0.0) / want.abs());
                    }
                }
            }
        }
    }
    println!("largest relative error beyond output rounding: {worst:.3e} (bound 2^-21 = {:.3e})", 2f64.powi(-21));
}

#[test]
fn rmsnorm_splits_over_small_bindings() {
    let x = tokens(7, 70, 3);
    let c = RmsConsts::new(70, 1e-6);
    let g = gamma(70, 4);
    let want = CpuBackend::new().rms_norm(&x, &g, &c, 18).unwrap();
    for (label, gpu) in common::gpu_backends() {
        let gpu = gpu.with_work_limits(2 * 70 * 4, 2);
        assert_eq!(gpu.rms_norm(&x, &g, &c, 18).unwrap(), want, "{label}");
    }
}
