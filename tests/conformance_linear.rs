//! Exact integer matmul (shaders/matmul.wgsl) and the per-token renormalisation
//! (shaders/renorm.wgsl): identical bits on every device, and the CPU twins checked against
//! i128 arithmetic. These are the first forward-pass kernels.

mod common;

use common::Rng;
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::gpu::ChunkSizes;
use ucw::dtype::DType;
use ucw::fixed::tensor::{
    ExactSums, GroupFixed, IngestParams, MATMUL_MAX_COLS, MATMUL_MAX_SPREAD, TokenFixed, align_row_exponents,
    matmul_max_spread,
};

fn activations(tokens: usize, width: usize, seed: u64) -> TokenFixed {
    let mut rng = Rng(seed);
    let mut mants: Vec<i32> =
        (0..tokens * width).map(|_| (rng.next_u32() as i32) >> (14 + rng.below(12) as u32)).collect();
    // The extremes of the accepted range.
    mants[0] = 1 << 17;
    mants[1] = -(1 << 17);
    let exps = (0..tokens).map(|_| rng.below(60) as i32 - 40).collect();
    TokenFixed { tokens, width, exps, mants }
}

/// Ingested bf16 weights whose groups span a wide range (some rows 2^-30 smaller in places),
/// aligned to the matmul's exponent spread for their width (`matmul_max_spread`).
fn weights(rows: usize, cols: usize, seed: u64) -> GroupFixed {
    let mut rng = Rng(seed);
    let bits: Vec<u8> = (0..rows * cols)
        .flat_map(|i| {
            let exp = if (i / 64) % 3 == 2 { 90 + rng.below(10) } else { 118 + rng.below(8) } as u32;
            let b = ((rng.next_u32() & 1) << 15) | (exp << 7) | (rng.next_u32() & 0x7f);
            (b as u16).to_le_bytes()
        })
        .collect();
    let mut w = CpuBackend::new()
        .ingest(&bits, DType::BF16, rows, cols, IngestParams { group_size: 64, mantissa_bits: 16 })
        .unwrap();
    align_row_exponents(&mut w, matmul_max_spread(cols));
    w
}

// (tokens, K, rows): fewer than 32 tokens or rows (matmul.wgsl's matmul_rows), whole and
// partial 32 × 32 output tiles (its tiled matmul), a short last group, one column.
const SHAPES: &[(usize, usize, usize)] =
    &[(16, 300, 120), (3, 64, 7), (5, 1, 3), (9, 1536, 4), (37, 130, 45), (64, 200, 96), (32, 1, 32)];

fn add_sums(out: &mut common::Outputs, case: &str, s: &ExactSums) {
    out.add(format!("{case} sums"), &s.sums);
    out.add(format!("{case} row_exps"), &s.row_exps);
}

/// Both ways the tiled matmul multiplies (`UCW_GPU_DOT`): packed 4×8-bit dot products of
/// byte digits (matmul_dot4) and two exact i32 products per multiply-add (matmul).
const DOT_KNOBS: &[common::Knob] = &[
    ("packed 4x8-bit dot products", |g| g.with_packed_dot(true)),
    ("split i32 products", |g| g.with_packed_dot(false)),
];

conformance_with_knobs!(matmul_same_bits_everywhere, DOT_KNOBS, |b| {
    let mut out = common::Outputs::new();
    for (i, &(t, k, n)) in SHAPES.iter().enumerate() {
        let x = activations(t, k, 10 + i as u64);
        let w = weights(n, k, 20 + i as u64);
        add_sums(&mut out, &format!("{t}x{k}x{n}"), &b.matmul(&x, &w).unwrap());
    }
    out
});

// Prepared weights (packed once, as the forward pass uses them) give `matmul`'s bits on
// every device: including a weight of +2^15 (outside i16: the CPU packs it as a correction),
// one token (the reference loop), and a product repeated on one preparation.
conformance_with_knobs!(matmul_prepared_same_bits_everywhere, DOT_KNOBS, |b| {
    let mut out = common::Outputs::new();
    for (i, &(t, k, n)) in SHAPES.iter().chain(&[(1, 300, 120)]).enumerate() {
        let x = activations(t, k, 10 + i as u64);
        let mut w = weights(n, k, 20 + i as u64);
        w.mantissas[k.min(5)] = 1 << 15;
        let p = b.prepare_matmul(w.clone()).unwrap();
        let first = b.matmul_prepared(&x, &p).unwrap();
        assert_eq!(first, b.matmul(&x, &w).unwrap(), "shape {t}x{k}x{n}: prepared differs from matmul");
        assert_eq!(first, b.matmul_prepared(&x, &p).unwrap(), "shape {t}x{k}x{n}: second use differs");
        add_sums(&mut out, &format!("{t}x{k}x{n}"), &first);
    }
    out
});

// The lm_head's activations straight to NLL (`head_nll`; a GPU keeps the weights, sums and
// logits on the device when allowed to keep weights) equal matmul, then renorm + nll, on
// every device, kept or not; logits beyond nll's exponent contract are refused either way.
conformance!(head_nll_same_bits_everywhere, |b| {
    use ucw::fixed::tables::{ExpConsts, LogConsts};
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = common::Outputs::new();
    for (i, &(t, k, n)) in [(16usize, 300usize, 120usize), (1, 64, 70), (7, 130, 513)].iter().enumerate() {
        let mut x = activations(t, k, 80 + i as u64);
        x.exps.iter_mut().for_each(|e| *e = -30 - (*e).rem_euclid(7));
        let w = weights(n, k, 90 + i as u64);
        let mut rng = Rng(100 + i as u64);
        let y: Vec<u32> = (0..t).map(|_| rng.below(n as u64) as u32).collect();
        let s = b.matmul(&x, &w).unwrap();
        let want = b.nll(&b.renorm(&s, &x.exps, 24).unwrap(), &y, &ec, &lc).unwrap();
        for keep in [0, 1u64 << 30] {
            b.allow_resident_weights(keep);
            let p = b.prepare_matmul(w.clone()).unwrap();
            let got = b.head_nll(&x, &p, 24, &y, &ec, &lc);
            b.allow_resident_weights(0);
            assert_eq!(got.unwrap(), want, "{t}x{k}x{n}, allowance {keep}: head_nll differs");
            let mut big = x.clone();
            big.exps.iter_mut().for_each(|e| *e = 40);
            assert!(b.head_nll(&big, &p, 24, &y, &ec, &lc).is_err(), "{t}x{k}x{n}: exponents beyond 8 accepted");
        }
        out.add(format!("{t}x{k}x{n} nll"), &want);
    }
    out
});

conformance!(renorm_same_bits_everywhere, |b| {
    let cpu = CpuBackend::new();
    let mut out = common::Outputs::new();
    for (i, &(t, k, n)) in SHAPES.iter().enumerate() {
        let x = activations(t, k, 30 + i as u64);
        let s = cpu.matmul(&x, &weights(n, k, 40 + i as u64)).unwrap();
        for bits in [2, 16, 18, 20, 30] {
            out.tokens(&format!("{t}x{k}x{n} bits {bits}"), &b.renorm(&s, &x.exps, bits).unwrap());
        }
    }
    out
});

/// The twin against a direct i128 sum over all K products, shifted per element: no
/// grouping, no 64-bit arithmetic.
#[test]
fn matmul_twin_matches_i128() {
    let cpu = CpuBackend::new();
    for (i, &(t, k, n)) in SHAPES.iter().enumerate() {
        let x = activations(t, k, 50 + i as u64);
        let w = weights(n, k, 60 + i as u64);
        assert_sums_are_i128_sums(&x, &w, &cpu.matmul(&x, &w).unwrap(), &format!("{t}x{k}x{n}"));
    }
}

/// Every sum of `s` against a direct i128 sum over all K products, shifted per element (no
/// grouping, no 64-bit arithmetic); returns the largest |sum|.
fn assert_sums_are_i128_sums(x: &TokenFixed, w: &GroupFixed, s: &ExactSums, what: &str) -> u64 {
    let (t, k, n, gpr) = (x.tokens, w.cols, w.rows, w.groups_per_row());
    let mut top = 0u64;
    for tt in 0..t {
        for o in 0..n {
            let mut want = 0i128;
            for c in 0..k {
                let e = w.exponents[o * gpr + c / 64] - s.row_exps[o];
                want += (x.mants[tt * k + c] as i128 * w.mantissas[o * k + c] as i128) << e;
            }
            assert_eq!(s.sums[tt * n + o] as i128, want, "{what}: t {tt} o {o}");
            top = top.max(want.unsigned_abs() as u64);
        }
    }
    top
}

/// Renormalisation against its definition, in i128: nearest (ties to even) multiple of the
/// token's unit, within `bits`, with the largest output using the top of the range.
#[test]
fn renorm_twin_meets_the_definition() {
    let cpu = CpuBackend::new();
    let x = activations(16, 300, 70);
    let s = cpu.matmul(&x, &weights(120, 300, 80)).unwrap();
    for bits in [2u32, 8, 16, 20, 30] {
        let y = cpu.renorm(&s, &x.exps, bits).unwrap();
        for t in 0..16 {
            let e = y.exps[t];
            let mut max_abs = 0i128;
            for o in 0..120 {
                let d = x.exps[t] + s.row_exps[o] - e; // value = sum · 2^d units of 2^e
                let v = s.sums[t * 120 + o] as i128;
                let m = y.mants[t * 120 + o] as i128;
                assert!(m.abs() <= 1 << (bits - 1));
                // |m − v·2^d| <= 1/2, ties to even: compare 2·m·2^-d with 2v exactly.
                if d >= 0 {
                    assert_eq!(m, v << d);
                } else {
                    let sh = -d as u32;
                    if sh < 120 {
                        let diff = (m << sh) - v; // in units of 2^(e − sh)
                        let half = 1i128 << (sh - 1);
                        assert!(diff.abs() <= half, "bits {bits} t {t} o {o}");
                        if diff.abs() == half {
                            assert_eq!(m % 2, 0, "tie not to even");
                        }
                    } else {
                        assert_eq!(m, 0);
                    }
                }
                max_abs = max_abs.max(m.abs());
            }
            assert!(max_abs >= 1 << (bits - 2), "bits {bits} token {t}: range not used");
        }
    }
}

#[test]
fn matmul_splits_over_small_bindings() {
    let cpu = CpuBackend::new();
    let x = activations(16, 300, 90);
    let w = weights(120, 300, 91);
    let want = cpu.matmul(&x, &w).unwrap();
    let want_y = cpu.renorm(&want, &x.exps, 18).unwrap();
    for (label, gpu) in common::gpu_backends() {
        // 3 tokens or rows of 300 per binding; 40 outputs (8 bytes each) per chunk.
        let small = gpu.with_work_limits(3 * 300 * 4, 2);
        assert_eq!(small.matmul(&x, &w).unwrap(), want, "{label}");
        assert_eq!(small.renorm(&want, &x.exps, 18).unwrap(), want_y, "{label}");
        // Weights too large for one binding are not kept on the device: uploaded per call.
        let p = small.prepare_matmul(w.clone()).unwrap();
        assert!(!p.has_form(), "{label}: weights beyond a binding were kept");
        assert_eq!(small.matmul_prepared(&x, &p).unwrap(), want, "{label}");
        println!("split matmul/renorm identical on {label}");
    }
    // Weights within one binding stay on the device, and products whose outputs need
    // several row chunks mix them with uploaded row slices.
    let w2 = weights(200, 300, 93);
    let many = activations(210, 300, 92);
    let (want2, want_many) = (cpu.matmul(&x, &w2).unwrap(), cpu.matmul(&many, &w2).unwrap());
    for (label, gpu) in common::gpu_backends() {
        // The 240000 bytes of weights just fit a binding. 210 tokens go in chunks of 200 and
        // 10; the binding holds 30000 sums, so the 200-token chunk takes 150 rows at a time
        // (150 + 50, uploaded slices) and the 10-token chunk all 200 (the device copy).
        let gpu = gpu.with_work_limits(200 * 300 * 4, 65535);
        // Nothing is kept without an allowance, nor beyond it.
        assert!(!gpu.prepare_matmul(w2.clone()).unwrap().has_form(), "{label}: kept without an allowance");
        gpu.allow_resident_weights(200 * 300 * 4);
        assert!(!gpu.prepare_matmul(w2.clone()).unwrap().has_form(), "{label}: kept beyond the allowance");
        gpu.allow_resident_weights(1 << 30);
        let p = gpu.prepare_matmul(w2.clone()).unwrap();
        assert!(p.has_form(), "{label}: weights within a binding were not kept");
        assert_eq!(gpu.matmul_prepared(&x, &p).unwrap(), want2, "{label}: whole matrix resident");
        assert_eq!(gpu.matmul_prepared(&many, &p).unwrap(), want_many, "{label}: row chunks and resident");
        println!("resident matmul identical on {label}");
    }
}

#[test]
fn matmul_rejects_inputs_outside_its_bounds() {
    let cpu = CpuBackend::new();
    let mut x = activations(2, 64, 1);
    let w = weights(4, 64, 2);
    x.mants[3] = (1 << 17) + 1;
    assert!(cpu.matmul(&x, &w).is_err());
    let wide = weights(4, 128, 3);
    let mut w3 = wide.clone();
    w3.exponents[0] = w3.exponents[1] - MATMUL_MAX_SPREAD - 1;
    assert!(cpu.matmul(&activations(2, 128, 4), &w3).is_err());
    for d in common::devices() {
        assert!(d.backend.matmul(&activations(2, 65, 5), &w).is_err(), "{}", d.label);
    }
}

// head_nll's splits: the fused path with many NLL and renorm_top chunks; weights kept on
// the device but the chunk's sums beyond one binding (the steps one by one); weights beyond
// one binding (uploaded per call). (No grid knob: the matmul's dispatch is bounded by its
// binding, not split over the grid, so a grid of 1 or 2 workgroups refuses it.)
const HEAD_KNOBS: &[common::Knob] = &[
    common::AS_OPENED,
    // 300 outputs: nll chunks of 73 (boundaries 73, 146, 219, 292), renorm_top chunks of 97
    // (97, 194, 291).
    ("nll chunk 73, renorm chunk 97", |g| {
        g.with_chunk_sizes(ChunkSizes { nll: 73, renorm: 97, ..ChunkSizes::DEFAULT })
    }),
    // The 76,800 bytes of weights (300 x 64 i32) fit and are kept; 100 tokens' i64 sums
    // (240,000 bytes) do not, so the steps run one by one: the matmul in row slices of 96
    // (boundaries 96, 192, 288), renorm in chunks of 32 tokens (32, 64, 96), nll of 64.
    ("binding of the weights, not the sums", |g| g.with_work_limits(300 * 64 * 4, 65535)),
    // 3 tokens of 300 i64 sums per binding: weights uploaded per call, the matmul over 4
    // chunks of 28 tokens, renorm in chunks of 3 tokens, nll of 6.
    ("binding of 3 tokens of sums", |g| g.with_work_limits(3 * 300 * 8 + 8, 65535)),
];

conformance_with_knobs!(head_nll_split_same_bits_everywhere, HEAD_KNOBS, |b| {
    use ucw::fixed::tables::{ExpConsts, LogConsts};
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = common::Outputs::new();
    for (i, &(t, k, n)) in [(100usize, 64usize, 300usize), (3, 64, 70)].iter().enumerate() {
        let mut x = activations(t, k, 180 + i as u64);
        x.exps.iter_mut().for_each(|e| *e = -30 - (*e).rem_euclid(7));
        let w = weights(n, k, 190 + i as u64);
        let mut rng = Rng(200 + i as u64);
        let y: Vec<u32> = (0..t).map(|_| rng.below(n as u64) as u32).collect();
        b.allow_resident_weights(1 << 30);
        let p = b.prepare_matmul(w.clone()).unwrap();
        let got = b.head_nll(&x, &p, 24, &y, &ec, &lc).unwrap();
        drop(p);
        b.allow_resident_weights(0);
        out.add(format!("{t}x{k}x{n} head_nll"), &got);
    }
    out
});

/// Weights at the bounds of a row of `cols` columns: mantissas +2^15 and 2^15 − 1 where
/// `same_sign`, else ±(2^15 − 1), −2^15 and +2^15 (a third each, in a pattern that varies by
/// row); group exponents spanning exactly
/// `matmul_max_spread(cols)` (the first group at the bottom, the rest at the top, or
/// alternating), all in groups of 64.
fn weights_at_bounds(rows: usize, cols: usize, same_sign: bool, seed: u64) -> GroupFixed {
    let mut rng = Rng(seed);
    let params = IngestParams { group_size: 64, mantissa_bits: 16 };
    let gpr = cols.div_ceil(64);
    let spread = matmul_max_spread(cols);
    let mantissas = (0..rows * cols)
        .map(|i| match (i + i / cols) % 3 {
            _ if same_sign => (1 << 15) - (i % 2) as i32,
            0 => 1 << 15,
            1 => -(1 << 15),
            _ => {
                if rng.next_u32() & 1 == 0 {
                    (1 << 15) - 1
                } else {
                    -(1 << 15) + 1
                }
            }
        })
        .collect();
    let exponents = (0..rows * gpr)
        .map(|i| {
            let (r, g) = (i / gpr, i % gpr);
            -20 + if r % 2 == 0 { if g == 0 { 0 } else { spread } } else { (g % 2) as i32 * spread }
        })
        .collect();
    GroupFixed { rows, cols, params, exponents, mantissas }
}

/// Activations at ±2^17 (all one sign for `same_sign`, else mixed), one exponent per token.
fn acts_at_bounds(tokens: usize, width: usize, same_sign: bool, seed: u64) -> TokenFixed {
    let mut rng = Rng(seed);
    let mants =
        (0..tokens * width).map(|_| if same_sign || rng.next_u32() & 1 == 0 { 1 << 17 } else { -(1 << 17) }).collect();
    TokenFixed { tokens, width, exps: (0..tokens).map(|t| t as i32 - 3).collect(), mants }
}

/// (tokens, K, rows): one past the old 8192 limit, Llama-3.1-8B's intermediate size (14,336),
/// a short last group at 65,531, and the widest accepted row (65,536, spread 13); and one
/// past 8192 with 32 × 33 outputs (matmul.wgsl's tiled kernel, the others run matmul_rows).
const WIDE: &[(usize, usize, usize)] = &[(2, 8193, 3), (3, 14336, 4), (2, 65531, 2), (2, 65536, 3), (32, 8193, 33)];

// Split-K: with the default 8192-column slices (8193: two slices, the second a single
// group; 65,536: eight), with one group per slice (1024 slices at 65,536, so the reduce pass
// walks 1024 partials), with 65-group slices (uneven: the last slice short), and with a
// binding that holds only a few outputs' partial sums (the product then runs in token and
// row chunks).
const WIDE_KNOBS: &[common::Knob] = &[
    common::AS_OPENED,
    ("one group per matmul slice", |g| g.with_chunk_sizes(ChunkSizes { matmul_cols: 64, ..ChunkSizes::DEFAULT })),
    ("65 groups per matmul slice", |g| g.with_chunk_sizes(ChunkSizes { matmul_cols: 65 * 64, ..ChunkSizes::DEFAULT })),
    ("binding of 65,536 x 4 bytes", |g| g.with_work_limits(65536 * 4, 65535)),
    ("packed 4x8-bit dot products", |g| g.with_packed_dot(true)),
    ("split i32 products", |g| g.with_packed_dot(false)),
];

// Inner dimensions past the old limit of 128 groups up to MATMUL_MAX_COLS, at the values'
// bounds (activations ±2^17, weights ±2^15 and −2^15, exponents at the widest spread each
// width allows) and on ingested weights: identical on every device and split; the CPU's
// sums equal a direct i128 sum, and at the bounds reach 2^60 (just below the 2^61 bound).
// About 10^6 multiply-adds per device and knob.
conformance_with_knobs!(matmul_wide_rows_same_bits_everywhere, WIDE_KNOBS, |b| {
    let mut out = common::Outputs::new();
    for (i, &(t, k, n)) in WIDE.iter().enumerate() {
        for case in 0..3 {
            let (x, w) = match case {
                0 => (acts_at_bounds(t, k, true, 300 + i as u64), weights_at_bounds(n, k, true, 310 + i as u64)),
                1 => (acts_at_bounds(t, k, false, 320 + i as u64), weights_at_bounds(n, k, false, 330 + i as u64)),
                _ => (activations(t, k, 340 + i as u64), weights(n, k, 350 + i as u64)),
            };
            let s = b.matmul(&x, &w).unwrap();
            if b.api() == "cpu" {
                let top = assert_sums_are_i128_sums(&x, &w, &s, &format!("{t}x{k}x{n} case {case}"));
                assert!(top < 1 << 61, "{t}x{k}x{n}: a sum beyond the bound");
                if case == 0 {
                    assert!(top >= 1 << 59, "{t}x{k}x{n}: the bound case is not near 2^61 ({top})");
                }
            }
            add_sums(&mut out, &format!("{t}x{k}x{n} case {case}"), &s);
            // Prepared weights (the forward pass's path) give the same sums.
            let p = b.prepare_matmul(w.clone()).unwrap();
            assert_eq!(b.matmul_prepared(&x, &p).unwrap(), s, "{t}x{k}x{n} case {case}: prepared differs");
        }
    }
    out
});

// The lm_head's path at a wide hidden size (16,384: two slices): head_nll with the weights
// kept on the device (fused) and not, against matmul + renorm + nll.
conformance_with_knobs!(head_nll_wide_same_bits_everywhere, WIDE_KNOBS, |b| {
    use ucw::fixed::tables::{ExpConsts, LogConsts};
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = common::Outputs::new();
    let (t, k, n) = (3usize, 16384usize, 70usize);
    let mut x = activations(t, k, 360);
    x.exps.iter_mut().for_each(|e| *e = -34 - (*e).rem_euclid(7));
    let w = weights(n, k, 361);
    let y: Vec<u32> = vec![0, 69, 35];
    let s = b.matmul(&x, &w).unwrap();
    let want = b.nll(&b.renorm(&s, &x.exps, 24).unwrap(), &y, &ec, &lc).unwrap();
    for keep in [0, 1u64 << 30] {
        b.allow_resident_weights(keep);
        let p = b.prepare_matmul(w.clone()).unwrap();
        let got = b.head_nll(&x, &p, 24, &y, &ec, &lc);
        drop(p);
        b.allow_resident_weights(0);
        assert_eq!(got.unwrap(), want, "allowance {keep}: head_nll differs");
    }
    out.add("sums", &s.sums);
    out.add("nll", &want);
    out
});

#[test]
fn matmul_rejects_rows_beyond_the_wide_bounds() {
    // One column past MATMUL_MAX_COLS, or one more than the spread a width allows, is refused
    // on every device with a one-line reason; the spread steps down one per doubling of K.
    assert_eq!(
        [8192, 8193, 16384, 16385, 32768, 32769, 65536].map(matmul_max_spread),
        [MATMUL_MAX_SPREAD, 15, 15, 14, 14, 13, 13]
    );
    let x = acts_at_bounds(1, MATMUL_MAX_COLS + 1, true, 1);
    let too_wide = weights_at_bounds(1, MATMUL_MAX_COLS + 1, false, 2);
    for k in [8193, 65536] {
        let mut w = weights_at_bounds(2, k, false, 3);
        w.exponents[1] += 1; // row 0: spread S + 1
        let xk = acts_at_bounds(1, k, false, 4);
        for d in common::devices() {
            let e = d.backend.matmul(&xk, &w).unwrap_err().to_string();
            assert!(e.contains("spread") && !e.contains('\n'), "{}: {e}", d.label);
            assert!(d.backend.prepare_matmul(w.clone()).is_err(), "{}", d.label);
        }
    }
    for d in common::devices() {
        let e = d.backend.matmul(&x, &too_wide).unwrap_err().to_string();
        assert!(e.contains("65536 columns"), "{}: {e}", d.label);
    }
}
