//! Kernel throughput: ingest of a SmolLM2-sized linear (1536×576 bf16) on the CPU backend,
//! against a baseline in the same run (a plain widening copy of the same bytes, the least
//! any ingest must do). Adapters are benchmarked too with UCW_BENCH_GPU=1 (software
//! adapters are slow). Report the ratio ingest/baseline, not absolute times.
//!
//!     cargo bench --bench kernels

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::device::Devices;
use ucw::codec::DEFAULT_INGEST;
use ucw::dtype::DType;

const ROWS: usize = 1536;
const COLS: usize = 576;

fn input() -> Vec<u8> {
    // Deterministic weight-like bf16 values (|x| around 2^-7 .. 2^-3).
    let mut x: u32 = 0x1234_5678;
    (0..ROWS * COLS)
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
        ucw::codec::quant::QuantParams { bits: 5, group_size: 64 },
        None,
    )
    .unwrap();
    let mut g = c.benchmark_group("dequantize_1536x576_to_bf16");
    g.throughput(Throughput::Bytes((ROWS * COLS * 2) as u64));
    g.bench_function("baseline_copy_output_bytes", |b| b.iter(|| black_box(src.clone())));
    g.bench_function("cpu", |b| b.iter(|| black_box(cpu.dequantize(black_box(&q), DType::BF16).unwrap())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
