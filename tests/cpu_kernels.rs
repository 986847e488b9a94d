//! Every CPU kernel variant this machine can run gives the same bits (DESIGN §3 rule 7: the
//! CPU twin is a real backend, and its SIMD builds are only allowed to be faster).
//!
//! `UCW_CPU_KERNELS` (src/backend/cpu/isa.rs) caps the variants, read once per process, so
//! the test runs this binary again once per variant the CPU supports (portable always; AVX2,
//! AVX-512/VNNI and AMX where present) and compares what each computed: the matrix products
//! against the plain reference loop (`linear::matmul_rows`) inside each run, and every
//! kernel's output digest, and a whole forward pass's NLL, against the portable run.

mod common;

use std::path::Path;
use std::process::Command;

use common::Rng;
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::cpu::attention::AttnShape;
use ucw::backend::cpu::isa::{self, Isa};
use ucw::backend::cpu::linear::{matmul_rows, row_exps};
use ucw::digest::sha256_hex;
use ucw::fixed::tables::{ExpConsts, LogConsts};
use ucw::fixed::tensor::{GroupFixed, IngestParams, TokenFixed};

fn acts(rng: &mut Rng, tokens: usize, width: usize, shift: u32) -> TokenFixed {
    let mants = (0..tokens * width).map(|_| (rng.next_u32() as i32) >> (shift + rng.below(6) as u32)).collect();
    let exps = (0..tokens).map(|_| rng.below(20) as i32 - 30).collect();
    TokenFixed { tokens, width, exps, mants }
}

/// Weights with the extremes the packed kernels treat specially: ±2^15 (outside i16) and
/// group exponents up to 16 apart within a row (AMX's fourth byte plane).
fn weights(rng: &mut Rng, rows: usize, cols: usize) -> GroupFixed {
    let gpr = cols.div_ceil(64);
    let mut mantissas: Vec<i32> =
        (0..rows * cols).map(|_| (rng.next_u32() as i32) >> (16 + rng.below(4) as u32)).collect();
    mantissas[0] = 1 << 15;
    mantissas[cols.min(rows * cols - 1)] = -(1 << 15);
    let exponents = (0..rows * gpr).map(|_| -20 + rng.below(17) as i32).collect();
    GroupFixed { rows, cols, params: IngestParams { group_size: 64, mantissa_bits: 16 }, exponents, mantissas }
}

fn reference(x: &TokenFixed, w: &GroupFixed) -> Vec<i64> {
    let re = row_exps(w);
    let mut out = vec![0i64; x.tokens * w.rows];
    for (t, row) in out.chunks_mut(w.rows).enumerate() {
        matmul_rows(x, w, &re, t, row);
    }
    out
}

fn digest_i64(v: &[i64]) -> String {
    sha256_hex(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

fn digest_tokens(y: &TokenFixed) -> String {
    let mut b: Vec<u8> = y.exps.iter().flat_map(|x| x.to_le_bytes()).collect();
    b.extend(y.mants.iter().flat_map(|x| x.to_le_bytes()));
    sha256_hex(&b)
}

/// (kernel, digest of its outputs) for every CPU kernel with ISA variants, computed by
/// whatever variant this process runs; the matrix products are also checked against the
/// reference loop here.
fn kernel_digests() -> Vec<(String, String)> {
    let b = CpuBackend::new();
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let mut out = Vec::new();
    let mut rng = Rng(2026);
    // Shapes: partial tiles and blocks of every kernel, K up to 2 AMX k-steps + a remainder,
    // and one token (decoding: the reference loop, or the packed weights where prepared).
    for &(t, k, n) in &[(7usize, 300usize, 37usize), (40, 130, 100), (2, 64, 3), (150, 1000, 20), (1, 300, 40)] {
        let x = acts(&mut rng, t, k, 14);
        let w = weights(&mut rng, n, k);
        let want = reference(&x, &w);
        let s = b.matmul(&x, &w).unwrap();
        assert_eq!(s.sums, want, "matmul {t}x{k}x{n} differs from the reference loop ({:?})", isa::in_use());
        let p = b.prepare_matmul(w.clone()).unwrap();
        let sp = b.matmul_prepared(&x, &p).unwrap();
        assert_eq!(sp.sums, want, "matmul_prepared {t}x{k}x{n} differs from the reference loop ({:?})", isa::in_use());
        out.push((format!("matmul {t}x{k}x{n}"), digest_i64(&s.sums)));
        for bits in [16, 24] {
            out.push((format!("renorm {t}x{k}x{n} bits {bits}"), digest_tokens(&b.renorm(&s, &x.exps, bits).unwrap())));
        }
        let mut xh = x.clone();
        xh.exps.iter_mut().for_each(|e| *e = -36 - (*e).rem_euclid(5));
        let sh = b.matmul(&xh, &w).unwrap();
        let y: Vec<u32> = (0..t).map(|_| rng.below(n as u64) as u32).collect();
        let nll = b.renorm_nll(&sh, &xh.exps, 24, &y, &ec, &lc).unwrap();
        assert_eq!(nll, b.head_nll(&xh, &p, 24, &y, &ec, &lc).unwrap(), "head_nll {t}x{k}x{n}");
        out.push((format!("renorm_nll {t}x{k}x{n}"), digest_i64(&nll)));
        let l = b.renorm(&sh, &xh.exps, 24).unwrap();
        out.push((format!("nll {t}x{k}x{n}"), digest_i64(&b.nll(&l, &y, &ec, &lc).unwrap())));
    }
    for &(t, w) in &[(5usize, 160usize), (3, 1000), (2, 1)] {
        let (mut g, u) = (acts(&mut rng, t, w, 14), acts(&mut rng, t, w, 14));
        g.exps.iter_mut().for_each(|e| *e = -16 + (*e).rem_euclid(14));
        for bits in [14, 20] {
            out.push((format!("swiglu {t}x{w} bits {bits}"), digest_tokens(&b.swiglu(&g, &u, &ec, bits).unwrap())));
        }
    }
    for &(t, h, kv, d) in &[(70usize, 4usize, 2usize, 16usize), (9, 3, 1, 64), (1, 2, 2, 8)] {
        let mut q = acts(&mut rng, t, h * d, 15);
        let mut k = acts(&mut rng, t, kv * d, 15);
        let v = acts(&mut rng, t, kv * d, 15);
        q.exps.iter_mut().for_each(|e| *e = -14 + (*e).rem_euclid(4));
        k.exps.iter_mut().for_each(|e| *e = -14 + (*e).rem_euclid(4));
        let y = b.attention(&q, &k, &v, &AttnShape::new(h, kv, d), &ec, 20).unwrap();
        out.push((format!("attention {t} tokens {h}/{kv} heads of {d}"), digest_tokens(&y)));
    }
    // A whole forward pass (norms, RoPE, every kernel above in the model's own shapes).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3-bf16-sharded");
    let mut src = ucw::forward::Source::open(&dir).unwrap();
    let ids: Vec<u32> = (0..2 * 48).map(|i| (i * 37 % 500) as u32).collect();
    let windows: Vec<&[u32]> = ids.chunks(48).collect();
    let opts = ucw::forward::EvalOptions {
        score: ucw::forward::Score::All,
        max_memory: ucw::forward::eval::DEFAULT_MAX_MEMORY,
    };
    let r = ucw::forward::evaluate(&b, &mut src, &windows, &opts, None, &mut |_, _| {}).unwrap();
    out.push(("forward pass qwen3 2x48".into(), digest_i64(&r.window_nll_q30)));
    // A row wider than 8192 columns (issue 14 item 2: AMX's second and third slices, spread
    // 14, the largest this width allows), plain and prepared: 6·10^6 products.
    let (t, k, n) = (17usize, 20000usize, 17usize);
    let x = acts(&mut rng, t, k, 14);
    let mut w = weights(&mut rng, n, k);
    let spread = ucw::fixed::tensor::matmul_max_spread(k);
    w.exponents.iter_mut().enumerate().for_each(|(i, e)| *e = -20 + (i % (spread as usize + 1)) as i32);
    let want = reference(&x, &w);
    let s = b.matmul(&x, &w).unwrap();
    assert_eq!(s.sums, want, "matmul {t}x{k}x{n} differs from the reference loop ({:?})", isa::in_use());
    let p = b.prepare_matmul(w.clone()).unwrap();
    assert_eq!(b.matmul_prepared(&x, &p).unwrap().sums, want, "matmul_prepared {t}x{k}x{n} ({:?})", isa::in_use());
    out.push((format!("matmul {t}x{k}x{n}"), digest_i64(&s.sums)));
    out
}

/// What one variant computes, printed for the test below (which runs this one per variant);
/// run plainly it checks the products of the default variant against the reference.
#[test]
fn kernel_outputs_of_this_process() {
    println!("ISA {}", isa::in_use().name());
    for (k, d) in kernel_digests() {
        println!("DIGEST {d} {k}");
    }
}

fn run_variant(isa: Isa) -> Vec<(String, String)> {
    let o = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kernel_outputs_of_this_process", "--nocapture", "--test-threads", "1"])
        .env("UCW_CPU_KERNELS", isa.name())
        .env_remove("UCW_CPU_AMX")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "UCW_CPU_KERNELS={}: the run failed:\n{text}", isa.name());
    // The variant asked for is the one that ran (a CPU that has it never falls back).
    assert!(
        text.contains(&format!("ISA {}\n", isa.name())),
        "UCW_CPU_KERNELS={} ran another variant:\n{text}",
        isa.name()
    );
    text.lines()
        .filter_map(|l| l.strip_prefix("DIGEST "))
        .map(|l| {
            let (d, k) = l.split_once(' ').unwrap();
            (k.to_string(), d.to_string())
        })
        .collect()
}

#[test]
fn every_cpu_variant_here_gives_the_portable_bits() {
    let portable = run_variant(Isa::Portable);
    assert!(portable.len() > 20, "too few kernels compared: {portable:?}");
    let mut ran = vec!["portable"];
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Amx] {
        if !isa.supported() {
            common::report_skip(
                "every_cpu_variant_here_gives_the_portable_bits",
                &format!("variant {} is not supported by this CPU: not run", isa.name()),
            );
            continue;
        }
        let got = run_variant(isa);
        assert_eq!(got.len(), portable.len(), "{}: a different set of kernels ran", isa.name());
        for ((k, want), (k2, d)) in portable.iter().zip(&got) {
            assert_eq!(k, k2);
            assert_eq!(d, want, "{k}: variant {} differs from the portable kernels", isa.name());
        }
        ran.push(isa.name());
    }
    println!("{} kernel outputs identical on the CPU variants {}", portable.len(), ran.join(", "));
}

#[test]
fn the_variant_names_parse() {
    for isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
    assert_eq!(Isa::parse(" AVX512 "), Some(Isa::Avx512));
    assert_eq!(Isa::parse("sse2"), None);
    assert!(Isa::Portable.supported());
}
