//! Ingest (shaders/ingest.wgsl): float bits → fixed-point groups, identical on every device,
//! and the CPU twin checked against the definition with exact f64 arithmetic.

mod common;

use common::Rng;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::{Backend, KernelError};
use ucw::dtype::{DType, Decoded};
use ucw::fixed::tensor::IngestParams;

const DTYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];

fn bits_to_bytes(dtype: DType, bits: &[u32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        _ => bits.iter().flat_map(|b| (*b as u16).to_le_bytes()).collect(),
    }
}

/// Interesting finite bit patterns of a format: ±0, subnormals, normals around 1, the
/// largest finite value, and values that produce rounding ties at small mantissa widths.
fn special_bits(dtype: DType) -> Vec<u32> {
    let (eb, fb, bias) = dtype.fields();
    let sign = 1u32 << (eb + fb);
    let enc = |e: u32, f: u32| (e << fb) | f;
    let max_e = (1 << eb) - 2;
    let mut v = vec![
        0,
        sign,                                   // -0
        1,                                      // smallest subnormal
        (1 << fb) - 1,                          // largest subnormal
        enc(1, 0),                              // smallest normal
        enc(bias as u32, 0),                    // 1.0
        enc(bias as u32, 1),                    // 1 + ulp
        enc(bias as u32, 1 << (fb - 1)),        // 1.5
        enc(bias as u32 + 1, 0b11 << (fb - 2)), // 3.5: a tie at 2 bits
        enc(max_e, (1 << fb) - 1),              // largest finite
        enc(max_e, 0),
        enc(bias as u32 - 1, (1 << fb) - 1), // just below 1: rounds up to the group top
    ];
    let neg: Vec<u32> = v.iter().map(|b| b | sign).collect();
    v.extend(neg);
    v
}

fn random_finite_bits(dtype: DType, rng: &mut Rng, narrow: bool) -> u32 {
    let (eb, fb, bias) = dtype.fields();
    let width = 1 + eb + fb;
    loop {
        let mut b = rng.next_u32() & ((1u64 << width) - 1) as u32;
        if narrow {
            // Typical weights: exponents within 2^-12 .. 2^2 of 1.
            let e = (bias as u32 - 12 + rng.below(14) as u32) << fb;
            b = (b & !(((1 << eb) - 1) << fb)) | e;
        }
        if (b >> fb) & ((1 << eb) - 1) != (1 << eb) - 1 {
            return b;
        }
    }
}

/// (dtype, rows, cols, bits) cases covering ragged groups, whole-range groups and specials.
fn inputs() -> Vec<(DType, usize, usize, Vec<u32>)> {
    let mut out = Vec::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for dtype in DTYPES {
        // Specials repeated and shuffled into 3 rows of 70 (not a multiple of 64 or of 7).
        let sp = special_bits(dtype);
        let bits: Vec<u32> = (0..3 * 70).map(|i| sp[(i * 7 + i / 5) % sp.len()]).collect();
        out.push((dtype, 3, 70, bits));
        // Whole exponent range in one group, and realistic narrow-range rows.
        let wide: Vec<u32> = (0..5 * 131).map(|_| random_finite_bits(dtype, &mut rng, false)).collect();
        out.push((dtype, 5, 131, wide));
        let narrow: Vec<u32> = (0..37 * 100).map(|_| random_finite_bits(dtype, &mut rng, true)).collect();
        out.push((dtype, 37, 100, narrow));
        // All-zero rows (+0 and -0) and a single element.
        let sign = 1u32 << (dtype.fields().0 + dtype.fields().1);
        out.push((dtype, 2, 65, (0..130).map(|i| if i % 2 == 0 { 0 } else { sign }).collect()));
        out.push((dtype, 1, 1, vec![special_bits(dtype)[5]]));
    }
    out
}

const PARAMS: &[IngestParams] = &[
    IngestParams { group_size: 64, mantissa_bits: 16 },
    IngestParams { group_size: 64, mantissa_bits: 2 },
    IngestParams { group_size: 7, mantissa_bits: 8 },
    IngestParams { group_size: 1, mantissa_bits: 20 },
    IngestParams { group_size: 1000, mantissa_bits: 24 },
    IngestParams { group_size: 32, mantissa_bits: 30 },
];

conformance!(ingest_same_bits_everywhere, |b| {
    let mut out = common::Outputs::new();
    for (dtype, rows, cols, bits) in inputs() {
        let bytes = bits_to_bytes(dtype, &bits);
        for &p in PARAMS {
            let g =
                b.ingest(&bytes, dtype, rows, cols, p).unwrap_or_else(|e| panic!("{dtype} {rows}x{cols} {p:?}: {e:?}"));
            let case = format!("{dtype} {rows}x{cols} group {} bits {}", p.group_size, p.mantissa_bits);
            out.add(format!("{case} exponents"), &g.exponents);
            out.add(format!("{case} mantissas"), &g.mantissas);
        }
    }
    out
});

/// Exact value of float bits as f64 (every bf16/f16/f32 value is an f64).
fn value(dtype: DType, bits: u32) -> f64 {
    match dtype.decode(bits) {
        Decoded::Finite { neg, sig, exp } => {
            let v = sig as f64 * 2f64.powi(exp);
            if neg { -v } else { v }
        }
        _ => unreachable!("finite inputs only"),
    }
}

/// The definition, checked independently of how the twin computes it: every mantissa is
/// the nearest (ties to even) multiple of 2^e, within the width, and the group's largest
/// element uses the top of the range.
#[test]
fn cpu_twin_meets_the_definition() {
    let cpu = CpuBackend::new();
    let mut checked = 0usize;
    for (dtype, rows, cols, bits) in inputs() {
        let bytes = bits_to_bytes(dtype, &bits);
        for &p in PARAMS {
            let g = cpu.ingest(&bytes, dtype, rows, cols, p).unwrap();
            let gs = p.group_size as usize;
            let gpr = cols.div_ceil(gs);
            let limit = (1i64 << (p.mantissa_bits - 1)) as f64;
            for r in 0..rows {
                for gi in 0..gpr {
                    let e = g.exponents[r * gpr + gi];
                    let scale = 2f64.powi(e);
                    let range = gi * gs..((gi + 1) * gs).min(cols);
                    let mut max_abs_m = 0f64;
                    let mut any_nonzero = false;
                    for c in range {
                        let v = value(dtype, bits[r * cols + c]);
                        let m = g.mantissas[r * cols + c] as f64;
                        assert!(m.abs() <= limit, "{dtype} {p:?} [{r},{c}]: |m| {m} over 2^{}", p.mantissa_bits - 1);
                        // v / scale is exact (power-of-two scaling within f64 range).
                        let exact = v / scale;
                        let err = (exact - m).abs();
                        assert!(err <= 0.5, "{dtype} {p:?} [{r},{c}]: {v} -> {m}*2^{e}, error {err} units");
                        if err == 0.5 {
                            assert_eq!(m % 2.0, 0.0, "{dtype} {p:?} [{r},{c}]: tie not rounded to even");
                        }
                        max_abs_m = max_abs_m.max(m.abs());
                        any_nonzero |= v != 0.0;
                        checked += 1;
                    }
                    if any_nonzero {
                        assert!(max_abs_m >= limit / 2.0, "{dtype} {p:?} row {r} group {gi}: range not used");
                    } else {
                        assert_eq!(e, 0, "all-zero group exponent");
                    }
                }
            }
        }
    }
    println!("checked {checked} elements against the definition");
}

#[test]
fn bf16_within_range_is_exact() {
    // bf16 has 8 significant bits, so with 16-bit mantissas every value within 2^7 of the
    // group maximum is represented exactly (DESIGN §4).
    let cpu = CpuBackend::new();
    let mut rng = Rng(7);
    let bits: Vec<u32> = (0..64 * 50).map(|_| random_finite_bits(DType::BF16, &mut rng, true)).collect();
    let bytes = bits_to_bytes(DType::BF16, &bits);
    let g = cpu.ingest(&bytes, DType::BF16, 50, 64, IngestParams { group_size: 64, mantissa_bits: 16 }).unwrap();
    let mut exact = 0;
    for r in 0..50 {
        let e = g.exponents[r];
        let top = (0..64).map(|c| value(DType::BF16, bits[r * 64 + c]).abs()).fold(0f64, f64::max);
        for c in 0..64 {
            let v = value(DType::BF16, bits[r * 64 + c]);
            if v.abs() * 128.0 >= top {
                assert_eq!(g.mantissas[r * 64 + c] as f64 * 2f64.powi(e), v, "row {r} col {c}");
                exact += 1;
            }
        }
    }
    assert!(exact > 1000);
}

#[test]
fn ingest_splits_over_small_bindings_and_2d_grids() {
    let cpu = CpuBackend::new();
    let mut rng = Rng(99);
    let (rows, cols) = (300, 77);
    for dtype in DTYPES {
        let bits: Vec<u32> = (0..rows * cols).map(|_| random_finite_bits(dtype, &mut rng, false)).collect();
        let bytes = bits_to_bytes(dtype, &bits);
        let p = IngestParams { group_size: 8, mantissa_bits: 12 };
        let want = cpu.ingest(&bytes, dtype, rows, cols, p).unwrap();
        for (label, gpu) in common::gpu_backends() {
            // 21 rows of mantissas per binding → 15 chunks starting at odd element offsets
            // (16-bit sources straddle words); 210 groups = 4 workgroups per chunk, with at
            // most 2 per grid dimension → 2×2 grids.
            let gpu = gpu.with_work_limits(21 * 77 * 4, 2);
            let got = gpu.ingest(&bytes, dtype, rows, cols, p).unwrap();
            assert_eq!(got, want, "{label} {dtype}");
            println!("split ingest identical on {label} ({dtype})");
        }
    }
}

#[test]
fn cpu_result_does_not_depend_on_thread_count() {
    let mut rng = Rng(5);
    let (rows, cols) = (203, 150);
    let bits: Vec<u32> = (0..rows * cols).map(|_| random_finite_bits(DType::F32, &mut rng, false)).collect();
    let bytes = bits_to_bytes(DType::F32, &bits);
    let p = IngestParams { group_size: 64, mantissa_bits: 16 };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| CpuBackend::new().ingest(&bytes, DType::F32, rows, cols, p).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(3));
    assert_eq!(one, run(8));
}

/// NaN and ±Inf are rejected with the smallest offending index, on every device, and the
/// codec names the tensor, row and column.
#[test]
fn non_finite_values_are_rejected_everywhere() {
    for dtype in DTYPES {
        let (eb, fb, _) = dtype.fields();
        let inf = ((1u32 << eb) - 1) << fb;
        let nan = inf | 1;
        let neg_inf = inf | (1 << (eb + fb));
        for (bad, what) in [(nan, "NaN"), (inf, "+Inf"), (neg_inf, "-Inf")] {
            let (rows, cols) = (4, 70);
            let mut bits = vec![special_bits(dtype)[5]; rows * cols];
            // Two bad elements in different groups; the smaller index must be reported.
            bits[2 * cols + 66] = bad;
            bits[3 * cols + 5] = nan;
            let bytes = bits_to_bytes(dtype, &bits);
            for d in common::devices() {
                let p = IngestParams { group_size: 64, mantissa_bits: 16 };
                match d.backend.ingest(&bytes, dtype, rows, cols, p) {
                    Err(KernelError::NonFinite { index }) => assert_eq!(index, 2 * cols + 66, "{} {dtype}", d.label),
                    other => panic!("{} {dtype}: expected NonFinite, got {:?}", d.label, other.map(|_| ())),
                }
                let err = ucw::codec::ingest::ingest_tensor(
                    d.backend.as_ref(),
                    "model.layers.0.mlp.up_proj.weight",
                    &bytes,
                    dtype,
                    rows,
                    cols,
                    p,
                )
                .unwrap_err();
                assert_eq!(
                    err.to_string(),
                    format!("tensor \"model.layers.0.mlp.up_proj.weight\": element 206 (row 2, column 66) is {what}")
                );
                assert_eq!(err.exit_code(), 2);
            }
        }
    }
    let labels: Vec<&str> = common::devices().iter().map(|d| d.label.as_str()).collect();
    println!("non-finite inputs rejected identically on {}", labels.join(", "));
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let cpu = CpuBackend::new();
    let bytes = vec![0u8; 8];
    for p in [
        IngestParams { group_size: 0, mantissa_bits: 16 },
        IngestParams { group_size: 64, mantissa_bits: 1 },
        IngestParams { group_size: 64, mantissa_bits: 31 },
    ] {
        assert!(matches!(cpu.ingest(&bytes, DType::F32, 1, 2, p), Err(KernelError::Device(_))), "{p:?}");
    }
    // Byte length that does not match the shape.
    let p = IngestParams { group_size: 64, mantissa_bits: 16 };
    assert!(matches!(cpu.ingest(&bytes, DType::F32, 1, 3, p), Err(KernelError::Device(_))));
    for d in common::devices() {
        assert!(matches!(d.backend.ingest(&bytes, DType::BF16, 3, 3, p), Err(KernelError::Device(_))), "{}", d.label);
    }
}
