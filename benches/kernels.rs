//! Kernel throughput: ingest of a SmolLM2-sized linear (1536×576 bf16) on the CPU backend,
//! against a baseline in the same run (a plain widening copy of the same bytes, the least
//! any ingest must do). Adapters are benchmarked too with UCW_BENCH_GPU=1 (software
//! adapters are slow). Report the ratio ingest/baseline, not absolute times.
//!
//! The exact matmul (512 tokens through SmolLM2's 576→1536 and 1536→576 shapes, and
//! Llama-3.1-8B's down_proj inputs, 14,336 wide, into 256 rows: many passes over long rows)
//! runs the scalar reference `linear::matmul_rows` (parallel over tokens, as the CPU backend
//! did before) beside every kernel this CPU can run (`matmul_fast::Kernel`: the f64 path's
//! portable and AVX2 kernels, the AVX2 and AVX-512 VNNI integer ones) and
//! `matmul_fast::matmul` (what the backend runs: the best of them); criterion's "elem/s"
//! there is multiply-adds per second; "prepared" is the backend with the weights packed once
//! (`prepare_matmul`, the forward pass's path). The error feedback of 256 rows over 4096
//! inputs (`gptq::Feedback::refine`, calibrated compression's largest f64 phase) is timed
//! in updates per second.
//!
//!     cargo bench --bench kernels
//!     UCW_BENCH_GPU=1 cargo bench --bench kernels -- matmul_device

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use rayon::prelude::*;
use ucw::backend::Backend;
use ucw::backend::cpu::matmul_fast::Kernel;
use ucw::backend::cpu::{CpuBackend, linear, matmul_fast};
use ucw::backend::device::Devices;
use ucw::codec::DEFAULT_INGEST;
use ucw::dtype::DType;
use ucw::fixed::tensor::{GroupFixed, MATMUL_MAX_SPREAD, TokenFixed, align_row_exponents};

const ROWS: usize = 1536;
const COLS: usize = 576;

fn input() -> Vec<u8> {
    bf16_weights(ROWS, COLS)
}

fn bf16_weights(rows: usize, cols: usize) -> Vec<u8> {
    // Deterministic weight-like bf16 values (|x| around 2^-7 .. 2^-3).
    let mut x: u32 = 0x1234_5678;
    (0..rows * cols)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let exp = 120 + (x >> 28) % 5;
            let bits = ((x & 1) << 15) | (exp << 7) | ((x >> 8) & 0x7f);
            (bits as u16).to_le_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let src = input();
    let mut g = c.benchmark_group("ingest_1536x576_bf16");
    g.throughput(Throughput::Elements((ROWS * COLS) as u64));
    g.bench_function("baseline_widen_copy", |b| {
        b.iter(|| {
            let out: Vec<i32> = src.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i32).collect();
            black_box(out)
        })
    });
    let cpu = CpuBackend::new();
    g.bench_function("cpu", |b| {
        b.iter(|| black_box(cpu.ingest(black_box(&src), DType::BF16, ROWS, COLS, DEFAULT_INGEST).unwrap()))
    });
    if std::env::var("UCW_BENCH_GPU").is_ok() {
        let devices = Devices::discover();
        for i in 1..devices.infos.len() {
            let backend = devices.open(i).unwrap();
            let label = format!("{}#{}", devices.infos[i].api, i);
            g.bench_function(label, |b| {
                b.iter(|| black_box(backend.ingest(&src, DType::BF16, ROWS, COLS, DEFAULT_INGEST).unwrap()))
            });
        }
    }
    g.finish();

    // Reconstruction: codes → bf16 bytes, against a copy of the same output size (memory
    // bandwidth) as the baseline.
    let q = ucw::codec::quant::quantize_tensor(
        &cpu,
        "bench",
        &src,
        DType::BF16,
        ROWS,
        COLS,
        ucw::fixed::quant::QuantParams { bits: 5, group_size: 64 },
        None,
    )
    .unwrap();
    let mut g = c.benchmark_group("dequantize_1536x576_to_bf16");
    g.throughput(Throughput::Bytes((ROWS * COLS * 2) as u64));
    g.bench_function("baseline_copy_output_bytes", |b| b.iter(|| black_box(src.clone())));
    g.bench_function("cpu", |b| b.iter(|| black_box(cpu.dequantize(black_box(&q), DType::BF16).unwrap())));
    g.finish();
}

/// Activation-like mantissas (mixed magnitudes up to 2^17), deterministic.
fn activations(tokens: usize, width: usize) -> TokenFixed {
    let mut x: u32 = 0x9e37_79b9;
    let mants = (0..tokens * width)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as i32) >> (14 + x % 8)
        })
        .collect();
    TokenFixed { tokens, width, exps: vec![0; tokens], mants }
}

fn bench_matmul(c: &mut Criterion) {
    const TOKENS: usize = 512;
    let cpu = CpuBackend::new();
    for (k, n) in [(576, 1536), (1536, 576), (14336, 256)] {
        let mut w: GroupFixed = cpu.ingest(&bf16_weights(n, k), DType::BF16, n, k, DEFAULT_INGEST).unwrap();
        align_row_exponents(&mut w, MATMUL_MAX_SPREAD);
        let x = activations(TOKENS, k);
        let re = linear::row_exps(&w);
        let mut g = c.benchmark_group(format!("matmul_{TOKENS}x{k}_to_{n}"));
        g.throughput(Throughput::Elements((TOKENS * k * n) as u64));
        g.sample_size(10);
        let reference = || {
            let mut sums = vec![0i64; TOKENS * n];
            sums.par_chunks_mut(n).enumerate().for_each(|(t, out)| linear::matmul_rows(&x, &w, &re, t, out));
            sums
        };
        assert_eq!(matmul_fast::matmul(&x, &w, &re), reference(), "the fast path must give the same bits");
        g.bench_function("scalar_reference", |b| b.iter(|| black_box(reference())));
        for kernel in [Kernel::Portable, Kernel::Avx2F64, Kernel::Avx2, Kernel::Vnni] {
            if !kernel.available() {
                continue; // it would time the fallback
            }
            assert_eq!(
                matmul_fast::matmul_with(&x, &w, &re, kernel),
                reference(),
                "{kernel:?} must give the same bits"
            );
            let name = format!("fast_{kernel:?}").to_lowercase();
            g.bench_function(name, |b| b.iter(|| black_box(matmul_fast::matmul_with(&x, &w, &re, kernel))));
        }
        g.bench_function("fast", |b| b.iter(|| black_box(matmul_fast::matmul(&x, &w, &re))));
        // The forward pass's path: weights packed once (`prepare_matmul`), not per call.
        let p = cpu.prepare_matmul(w.clone()).unwrap();
        assert_eq!(cpu.matmul_prepared(&x, &p).unwrap().sums, reference(), "prepared must give the same bits");
        g.bench_function("prepared", |b| b.iter(|| black_box(cpu.matmul_prepared(&x, &p).unwrap())));
        g.finish();
    }
}

/// Error feedback (`gptq::Feedback::refine`) of 256 rows over 4096 inputs: criterion's
/// "elem/s" counts the n²/2 multiply-subtract updates per row that dominate it.
fn bench_feedback(c: &mut Criterion) {
    use ucw::codec::gptq::{Damp, Feedback};
    use ucw::fixed::quant::{QuantParams, QuantTensor};
    const ROWS_FB: usize = 256;
    const N: usize = 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // A symmetric, diagonally dominant (so positive definite) H with a spread of diagonals.
    let mut h = vec![0f64; N * N];
    for i in 0..N {
        for j in 0..i {
            let v = ((next() % 2001) as f64 - 1000.0) / 1000.0;
            h[i * N + j] = v;
            h[j * N + i] = v;
        }
        h[i * N + i] = N as f64 * (1.0 + (next() % 8) as f64);
    }
    let f = Feedback::new(&h, N, Damp::GPTQ).expect("positive definite");
    drop(h);
    let params = QuantParams { bits: 5, group_size: 64 };
    let gpr = N / 64;
    let q = QuantTensor {
        rows: ROWS_FB,
        cols: N,
        params,
        base_exp: -12,
        codes: vec![0; ROWS_FB * N],
        scales: (0..ROWS_FB * gpr).map(|_| 20 + (next() % 8) as u8).collect(),
        zeros: vec![16; ROWS_FB * gpr],
        overlay: None,
    };
    let w: Vec<f64> = (0..ROWS_FB * N).map(|_| ((next() % 4001) as f64 - 2000.0) * 1e-5).collect();
    let mut g = c.benchmark_group(format!("feedback_{ROWS_FB}x{N}"));
    g.throughput(Throughput::Elements((ROWS_FB * N * N / 2) as u64));
    g.sample_size(10);
    g.bench_function("refine", |b| b.iter(|| black_box(f.refine(&mut q.clone(), &w))));
    g.finish();
}

/// The exact matmul on each adapter (UCW_BENCH_GPU=1): 64 tokens through SmolLM2's
/// 576 → 576 (q_proj) and 1536 → 576 (down_proj) shapes, weights resident
/// (`prepare_matmul`, as the forward pass holds them), beside the CPU backend's prepared
/// path in the same run. Small enough for a software adapter (21 M and 57 M multiply-adds);
/// the sums are compared with the CPU's before timing. Each adapter runs both tiled kernels
/// (`_split`: two i32 products per multiply-add; `_packed`: packed 4×8-bit dot products).
fn bench_matmul_gpu(c: &mut Criterion) {
    if std::env::var("UCW_BENCH_GPU").is_err() {
        return;
    }
    const TOKENS: usize = 64;
    let cpu = CpuBackend::new();
    let devices = Devices::discover();
    for (k, n) in [(576, 576), (1536, 576)] {
        let mut w: GroupFixed = cpu.ingest(&bf16_weights(n, k), DType::BF16, n, k, DEFAULT_INGEST).unwrap();
        align_row_exponents(&mut w, MATMUL_MAX_SPREAD);
        let x = activations(TOKENS, k); // |a| <= 2^17
        let mut g = c.benchmark_group(format!("matmul_device_{TOKENS}x{k}_to_{n}"));
        g.throughput(Throughput::Elements((TOKENS * k * n) as u64));
        g.sample_size(10);
        let p = cpu.prepare_matmul(w.clone()).unwrap();
        let want = cpu.matmul_prepared(&x, &p).unwrap().sums;
        g.bench_function("cpu", |b| b.iter(|| black_box(cpu.matmul_prepared(&x, &p).unwrap())));
        // Each adapter with both tiled kernels: split i32 products and packed 4×8-bit dots.
        for i in 1..devices.infos.len() {
            for (kind, packed) in [("split", false), ("packed", true)] {
                let backend = devices.open_gpu(i).unwrap().with_packed_dot(packed);
                backend.allow_resident_weights(u64::MAX);
                let p = backend.prepare_matmul(w.clone()).unwrap();
                assert_eq!(
                    backend.matmul_prepared(&x, &p).unwrap().sums,
                    want,
                    "{} ({kind}) must give the CPU's bits",
                    devices.infos[i].name
                );
                let label = format!("{}#{}_{kind}", devices.infos[i].api, i);
                g.bench_function(label, |b| b.iter(|| black_box(backend.matmul_prepared(&x, &p).unwrap())));
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench, bench_matmul, bench_feedback, bench_matmul_gpu);
criterion_main!(benches);
