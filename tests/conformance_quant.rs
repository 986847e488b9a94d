//! Quantize and dequantize (codec version 1): identical bits on every device, the float
//! encoder checked against Rust's own IEEE conversions, and the search checked for quality.

mod common;

use common::Rng;
use half::{bf16, f16};
use ucw::backend::cpu::CpuBackend;
use ucw::backend::{Backend, KernelError};
use ucw::codec::quant::quantize_tensor;
use ucw::dtype::DType;
use ucw::fixed::quant::{QuantParams, QuantTensor, step};

/// Gaussian-ish weights (sum of uniforms) with a few outlier columns, as float bits.
fn weights(dtype: DType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f64>) {
    let mut rng = Rng(seed);
    let mut vals = Vec::with_capacity(rows * cols);
    for i in 0..rows * cols {
        let s: f64 = (0..4).map(|_| (rng.next_u32() as f64 / u32::MAX as f64) - 0.5).sum();
        let outlier = if (i % cols) % 37 == 5 { 8.0 } else { 1.0 };
        vals.push(s * 0.05 * outlier * (1.0 + (i / cols) as f64 / rows as f64));
    }
    let mut bytes = Vec::new();
    let mut exact = Vec::new();
    for &v in &vals {
        match dtype {
            DType::BF16 => {
                let b = bf16::from_f64(v);
                bytes.extend(b.to_bits().to_le_bytes());
                exact.push(b.to_f64());
            }
            DType::F16 => {
                let b = f16::from_f64(v);
                bytes.extend(b.to_bits().to_le_bytes());
                exact.push(b.to_f64());
            }
            DType::F32 => {
                bytes.extend((v as f32).to_bits().to_le_bytes());
                exact.push(v as f32 as f64);
            }
        }
    }
    (bytes, exact)
}

const SHAPES: &[(usize, usize)] = &[(24, 160), (5, 70), (3, 1000)];
const PARAMS: &[QuantParams] = &[
    QuantParams { bits: 5, group_size: 64 },
    QuantParams { bits: 3, group_size: 64 },
    QuantParams { bits: 8, group_size: 7 },
    QuantParams { bits: 2, group_size: 128 },
    QuantParams { bits: 4, group_size: 1 },
];

conformance!(quantize_same_bits_everywhere, |b| {
    let mut out = common::Outputs::new();
    for (k, &(rows, cols)) in SHAPES.iter().enumerate() {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let (src, _) = weights(dtype, rows, cols, 11 + k as u64);
            let mut rng = Rng(3 + k as u64);
            let imp: Vec<u32> = (0..cols).map(|_| rng.below(4097) as u32).collect();
            for &p in PARAMS {
                for h in [None, Some(&imp[..])] {
                    let q = quantize_tensor(b, "t", &src, dtype, rows, cols, p, h).unwrap();
                    let case = format!("{dtype} {rows}x{cols} {p:?} importance {}", h.is_some());
                    out.add(format!("{case} base_exp"), &[q.base_exp]);
                    out.add(format!("{case} codes"), &q.codes);
                    out.add(format!("{case} scales"), &q.scales);
                    out.add(format!("{case} zeros"), &q.zeros);
                }
            }
        }
    }
    out
});

conformance!(dequantize_same_bits_everywhere, |b| {
    let cpu = CpuBackend::new();
    let mut out = common::Outputs::new();
    for (k, &(rows, cols)) in SHAPES.iter().enumerate() {
        let (src, _) = weights(DType::BF16, rows, cols, 21 + k as u64);
        for &p in PARAMS {
            let mut q = quantize_tensor(&cpu, "t", &src, DType::BF16, rows, cols, p, None).unwrap();
            for dtype in [DType::BF16, DType::F16, DType::F32] {
                out.add(format!("{rows}x{cols} {p:?} to {dtype}"), &b.dequantize(&q, dtype).unwrap());
            }
            // Tiny outputs: subnormals and flushes to zero in every format.
            q.base_exp = -150;
            for dtype in [DType::BF16, DType::F16, DType::F32] {
                out.add(format!("{rows}x{cols} {p:?} base_exp -150 to {dtype}"), &b.dequantize(&q, dtype).unwrap());
            }
        }
    }
    out
});

#[test]
fn dequantize_overflow_is_an_error_everywhere() {
    let cpu = CpuBackend::new();
    let (src, _) = weights(DType::F32, 4, 70, 5);
    let mut q = quantize_tensor(&cpu, "t", &src, DType::F32, 4, 70, PARAMS[0], None).unwrap();
    q.base_exp = 10; // steps of 16·2^10 and up: beyond f16's 65504 somewhere
    let want = (0..q.codes.len())
        .find(|&i| {
            let g = (i / 70) * q.groups_per_row() + (i % 70) / 64;
            let (m, e) = step(q.scales[g], q.base_exp);
            (m as f64 * (q.codes[i] as f64 - q.zeros[g] as f64) * 2f64.powi(e)).abs() >= 65520.0
        })
        .expect("some element overflows f16");
    for d in common::devices() {
        match d.backend.dequantize(&q, DType::F16) {
            Err(KernelError::Overflow { index }) => assert_eq!(index, want, "{}", d.label),
            other => panic!("{}: expected overflow, got {:?}", d.label, other.map(|_| ())),
        }
    }
}

/// DType::encode (the twin of encode_float) against IEEE conversions: Rust's f64→f32 cast
/// (correctly rounded), and for bf16/f16 the half crate's f32→bf16/f16 on values an f32
/// holds exactly (its f64 path rounds twice, so it is not used).
#[test]
fn encode_matches_ieee_conversions() {
    let mut rng = Rng(77);
    let mut n = 0;
    for _ in 0..300_000 {
        let bits = 1 + rng.below(52) as u32;
        let mag = rng.next_u64() >> (64 - bits);
        let exp = rng.below(360) as i32 - 200;
        let neg = rng.next_u32() & 1 == 1;
        if mag == 0 {
            assert!([DType::BF16, DType::F16, DType::F32].iter().all(|d| d.encode(neg, 0, exp) == Some(0)));
            continue;
        }
        let v = mag as f64 * 2f64.powi(exp) * if neg { -1.0 } else { 1.0 };
        let f = v as f32;
        assert_eq!(DType::F32.encode(neg, mag, exp), f.is_finite().then(|| f.to_bits()), "F32 {neg} {mag} * 2^{exp}");
        n += 1;
        if f.is_finite() && f as f64 == v {
            let b = bf16::from_f32(f);
            assert_eq!(DType::BF16.encode(neg, mag, exp), b.is_finite().then(|| b.to_bits() as u32), "BF16 {v}");
            let h = f16::from_f32(f);
            assert_eq!(DType::F16.encode(neg, mag, exp), h.is_finite().then(|| h.to_bits() as u32), "F16 {v}");
            n += 2;
        }
    }
    assert!(n > 400_000);
    println!("{n} encodings identical to IEEE conversions");
}

fn reconstruct(q: &QuantTensor) -> Vec<f64> {
    let gpr = q.groups_per_row();
    (0..q.codes.len())
        .map(|i| {
            let g = (i / q.cols) * gpr + (i % q.cols) / q.params.group_size as usize;
            let (m, e) = step(q.scales[g], q.base_exp);
            m as f64 * (q.codes[i] as f64 - q.zeros[g] as f64) * 2f64.powi(e)
        })
        .collect()
}

/// Float min-max round-to-nearest with an exact (unquantized) per-group scale and zero:
/// the plain baseline the search must beat.
fn rtn_error(w: &[f64], cols: usize, p: QuantParams) -> f64 {
    let qmax = ((1u32 << p.bits) - 1) as f64;
    let g = p.group_size as usize;
    let mut err = 0.0;
    for row in w.chunks(cols) {
        for grp in row.chunks(g) {
            let hi = grp.iter().cloned().fold(0.0, f64::max);
            let lo = grp.iter().cloned().fold(0.0, f64::min);
            let s = (hi - lo) / qmax;
            if s == 0.0 {
                continue;
            }
            let z = (-lo / s).round();
            for &x in grp {
                let q = ((x / s).round() + z).clamp(0.0, qmax);
                err += (x - s * (q - z)).powi(2);
            }
        }
    }
    err
}

#[test]
fn search_beats_round_to_nearest_and_honours_importance() {
    let cpu = CpuBackend::new();
    let (rows, cols) = (64, 576);
    let (src, w) = weights(DType::BF16, rows, cols, 9);
    for bits in [3, 4, 5] {
        let p = QuantParams { bits, group_size: 64 };
        let q = quantize_tensor(&cpu, "t", &src, DType::BF16, rows, cols, p, None).unwrap();
        let ours: f64 = reconstruct(&q).iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum();
        let rtn = rtn_error(&w, cols, p);
        println!("bits {bits}: search/RTN squared error {:.4}", ours / rtn);
        assert!(ours < rtn, "bits {bits}: search {ours} not below RTN {rtn}");
    }
    // Importance on the first 8 columns of each group lowers their error.
    let p = QuantParams { bits: 4, group_size: 64 };
    let imp: Vec<u32> = (0..cols).map(|c| if c % 64 < 8 { 4096 } else { 1 }).collect();
    let err_on = |q: &QuantTensor| -> f64 {
        reconstruct(q)
            .iter()
            .zip(&w)
            .enumerate()
            .filter(|(i, _)| (i % cols) % 64 < 8)
            .map(|(_, (a, b))| (a - b).powi(2))
            .sum()
    };
    let flat = quantize_tensor(&cpu, "t", &src, DType::BF16, rows, cols, p, None).unwrap();
    let weighted = quantize_tensor(&cpu, "t", &src, DType::BF16, rows, cols, p, Some(&imp)).unwrap();
    println!("important columns: weighted/uniform error {:.3}", err_on(&weighted) / err_on(&flat));
    assert!(err_on(&weighted) < 0.8 * err_on(&flat));
}

#[test]
fn quantize_splits_over_small_bindings() {
    let cpu = CpuBackend::new();
    let (rows, cols) = (40, 70);
    let (src, _) = weights(DType::F16, rows, cols, 4);
    let p = QuantParams { bits: 5, group_size: 64 };
    let want = quantize_tensor(&cpu, "t", &src, DType::F16, rows, cols, p, None).unwrap();
    let want_bits = cpu.dequantize(&want, DType::F16).unwrap();
    for (label, gpu) in common::gpu_backends() {
        let gpu = gpu.with_work_limits(3 * 70 * 4, 2);
        assert_eq!(quantize_tensor(&gpu, "t", &src, DType::F16, rows, cols, p, None).unwrap(), want, "{label}");
        assert_eq!(gpu.dequantize(&want, DType::F16).unwrap(), want_bits, "{label}");
        println!("split quantize/dequantize identical on {label}");
    }
}

/// A quantized tensor with a fitted overlay (the real fit, on a residual with low-rank
/// structure plus noise), for the overlay tests.
fn with_overlay(rows: usize, cols: usize, rank: usize, seed: u64) -> QuantTensor {
    let cpu = CpuBackend::new();
    let (src, w) = weights(DType::F32, rows, cols, seed);
    let p = QuantParams { bits: 4, group_size: 64 };
    let mut q = quantize_tensor(&cpu, "t", &src, DType::F32, rows, cols, p, None).unwrap();
    let rec = reconstruct(&q);
    let res: Vec<f64> = w.iter().zip(&rec).map(|(a, b)| a - b).collect();
    q.overlay = ucw::codec::lowrank::fit(&res, rows, cols, rank, q.base_exp, 4, ucw::codec::lowrank::Metric::Identity);
    assert!(q.overlay.is_some(), "fit kept no overlay");
    q
}

conformance!(dequantize_with_overlay_same_bits_everywhere, |b| {
    let mut out = common::Outputs::new();
    for (k, &(rows, cols, rank)) in [(24usize, 160usize, 4usize), (5, 70, 1), (40, 33, 32)].iter().enumerate() {
        let mut q = with_overlay(rows, cols, rank, 100 + k as u64);
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            out.add(format!("{rows}x{cols} rank {rank} to {dtype}"), &b.dequantize(&q, dtype).unwrap());
        }
        // Both ends of the exponent window (overlay far below and above the groups' steps).
        for shift in [-34, 11] {
            let o = q.overlay.as_mut().unwrap();
            o.exp = q.base_exp + shift;
            out.add(format!("{rows}x{cols} rank {rank} overlay shift {shift}"), &b.dequantize(&q, DType::F32).unwrap());
        }
    }
    out
});

/// Overlay reconstruction against exact f64 arithmetic: with f32 output and values that
/// are exact in f64, the bits must equal Rust's correctly rounded f64→f32 conversion.
#[test]
fn overlay_reconstruction_matches_f64() {
    let cpu = CpuBackend::new();
    let q = with_overlay(24, 160, 4, 7);
    let o = q.overlay.as_ref().unwrap();
    let got = cpu.dequantize(&q, DType::F32).unwrap();
    let gpr = q.groups_per_row();
    let mut checked = 0;
    for i in 0..q.rows * q.cols {
        let (r, c) = (i / q.cols, i % q.cols);
        let mut acc = 0i128;
        for k in 0..o.rank {
            acc += o.mu[r] as i128 * o.u[r * o.rank + k] as i128 * o.mv[k] as i128 * o.v[k * q.cols + c] as i128;
        }
        let g = r * gpr + c / 64;
        let (m, ed) = step(q.scales[g], q.base_exp);
        let d = m as i128 * (q.codes[i] as i128 - q.zeros[g] as i128);
        // The exact sum as an integer at the smaller exponent, in i128.
        let lo = ed.min(o.exp);
        let t = (d << (ed - lo)) + (acc << (o.exp - lo));
        if t.unsigned_abs() >= 1 << 53 {
            continue; // not exact in f64: covered by the encoder test instead
        }
        checked += 1;
        let exact = t as f64 * 2f64.powi(lo);
        let want = (exact as f32).to_bits();
        assert_eq!(u32::from_le_bytes(got[4 * i..4 * i + 4].try_into().unwrap()), want, "element {i}");
    }
    assert!(checked > q.rows * q.cols / 2, "only {checked} elements were exact in f64");
}

#[test]
fn overlay_splits_over_small_bindings() {
    let q = with_overlay(40, 70, 8, 3);
    let want = CpuBackend::new().dequantize(&q, DType::BF16).unwrap();
    for (label, gpu) in common::gpu_backends() {
        let gpu = gpu.with_work_limits(3 * 70 * 4, 2);
        assert_eq!(gpu.dequantize(&q, DType::BF16).unwrap(), want, "{label}");
    }
}

/// The fit lowers the error of a residual with low-rank structure, and its result does not
/// depend on the thread count.
#[test]
fn overlay_fit_is_useful_and_thread_independent() {
    let (rows, cols, rank) = (96, 200, 4);
    let mut rng = Rng(5);
    let mut g = || (rng.next_u32() as f64 / u32::MAX as f64) - 0.5;
    let a: Vec<f64> = (0..rows * rank).map(|_| g()).collect();
    let bm: Vec<f64> = (0..rank * cols).map(|_| g()).collect();
    let res: Vec<f64> = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let lr: f64 = (0..rank).map(|k| a[r * rank + k] * bm[k * cols + c]).sum();
            (lr + 0.05 * g()) * 1e-3
        })
        .collect();
    let base_exp = -30; // steps of 2^-26 and up: the overlay exponent lands inside the window
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            ucw::codec::lowrank::fit(&res, rows, cols, rank, base_exp, 4, ucw::codec::lowrank::Metric::Identity)
        })
        .unwrap()
    };
    let o = run(1);
    assert_eq!(o, run(3));
    let before: f64 = res.iter().map(|x| x * x).sum();
    let after: f64 = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let approx: f64 = (0..rank)
                .map(|k| o.mu[r] as f64 * o.u[r * rank + k] as f64 * o.mv[k] as f64 * o.v[k * cols + c] as f64)
                .sum::<f64>()
                * 2f64.powi(o.exp);
            (res[i] - approx).powi(2)
        })
        .sum();
    println!("rank-{rank} overlay leaves {:.4} of the squared residual", after / before);
    assert!(after < 0.05 * before, "{after} vs {before}");
}

/// The per-layer allocator gives the overlay budget to the linear whose residual has
/// low-rank structure, never exceeds the budget, and is deterministic.
#[test]
fn auto_allocation_spends_the_budget_where_it_helps() {
    use ucw::codec::lowrank::{LayerItem, Metric, allocate_layer, overlay_bytes};
    let (rows, cols) = (64, 96);
    let mut rng = Rng(11);
    let mut g = || (rng.next_u32() as f64 / u32::MAX as f64) - 0.5;
    let noise: Vec<f64> = (0..rows * cols).map(|_| g() * 1e-3).collect();
    let a: Vec<f64> = (0..rows * 3).map(|_| g()).collect();
    let b: Vec<f64> = (0..3 * cols).map(|_| g()).collect();
    let structured: Vec<f64> = (0..rows * cols)
        .map(|i| (0..3).map(|k| a[(i / cols) * 3 + k] * b[k * cols + i % cols]).sum::<f64>() * 1e-3 + noise[i] * 0.01)
        .collect();
    let items = [
        LayerItem { residual: &noise, rows, cols, base_exp: -30, metric: Metric::Identity },
        LayerItem { residual: &structured, rows, cols, base_exp: -30, metric: Metric::Identity },
    ];
    let cost = |k: usize| 8 * overlay_bytes(rows, cols, k) as i128;
    for budget in [0i128, cost(1) - 1, cost(3), cost(3) + cost(1), 40 * cost(1)] {
        let got = allocate_layer(&items, budget, 4);
        let ranks: Vec<usize> = got.iter().map(|o| o.as_ref().map_or(0, |o| o.rank)).collect();
        let spent: i128 = ranks.iter().map(|&k| cost(k)).sum();
        assert!(spent <= budget, "budget {budget}: spent {spent}");
        if budget <= cost(3) + cost(1) {
            // Until the structure is captured, the budget goes to the structured residual.
            assert!(ranks[1] >= ranks[0], "budget {budget}: ranks {ranks:?}");
        }
        if budget >= cost(3) {
            assert!(ranks[1] >= 3, "budget {budget}: the structured residual got rank {}", ranks[1]);
        }
        assert_eq!(allocate_layer(&items, budget, 4), got);
        println!("budget {budget} bits → ranks {ranks:?}");
    }
}

/// Under a metric H the fit spends its rank where H says errors matter: its H-weighted
/// error beats the identity fit's, and a full H that is diagonal gives the diagonal result.
#[test]
fn overlay_fit_honours_the_metric() {
    use ucw::codec::lowrank::{Metric, fit};
    let (rows, cols, rank) = (64, 96, 2);
    let mut rng = Rng(17);
    let mut g = || (rng.next_u32() as f64 / u32::MAX as f64) - 0.5;
    let res: Vec<f64> = (0..rows * cols).map(|_| g() * 1e-3).collect(); // no low-rank structure
    let h: Vec<f64> = (0..cols).map(|j| if j < 8 { 1000.0 } else { 1.0 }).collect();
    let weighted_err = |o: &ucw::fixed::quant::Overlay| -> f64 {
        (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                let a: f64 = (0..rank)
                    .map(|k| o.mu[r] as f64 * o.u[r * rank + k] as f64 * o.mv[k] as f64 * o.v[k * cols + c] as f64)
                    .sum::<f64>()
                    * 2f64.powi(o.exp);
                h[c] * (res[i] - a).powi(2)
            })
            .sum()
    };
    let plain = fit(&res, rows, cols, rank, -30, 4, Metric::Identity).unwrap();
    let diag = fit(&res, rows, cols, rank, -30, 4, Metric::Diagonal(&h)).unwrap();
    let before: f64 = (0..rows * cols).map(|i| h[i % cols] * res[i] * res[i]).sum();
    println!(
        "H-weighted error left: identity fit {:.3}, H fit {:.3}",
        weighted_err(&plain) / before,
        weighted_err(&diag) / before
    );
    assert!(weighted_err(&diag) < 0.9 * weighted_err(&plain));
    let mut full = vec![0.0; cols * cols];
    for j in 0..cols {
        full[j * cols + j] = h[j];
    }
    assert_eq!(fit(&res, rows, cols, rank, -30, 4, Metric::Full(&full)).unwrap(), diag);
    assert!(fit(&res, rows, cols, rank, -30, 4, Metric::Diagonal(&h[..5])).is_none(), "wrong metric size");
}
