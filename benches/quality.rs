//! Weight-space quality of the codec on a real model, against plain round-to-nearest.
//!
//!     UCW_MODEL=/path/to/smollm2-135m UCW_BITS=5 cargo bench --bench quality
//!
//! For every decoder linear: relative error ‖W − Ŵ‖/‖W‖ of ucw's quantizer (uniform
//! importance) and of float min-max round-to-nearest with the same bits and groups of 64
//! (exact float scale and zero per group, i.e. more metadata than ucw stores), plus their
//! ratio. A report, not a test: nothing here asserts a figure.

use std::path::PathBuf;
use std::time::Instant;

use ucw::backend::cpu::CpuBackend;
use ucw::codec::quant::quantize_tensor;
use ucw::dtype::{DType, Decoded};
use ucw::fixed::quant::{QuantParams, step};
use ucw::model::{Model, Role};

fn values(bytes: &[u8], dtype: DType) -> Vec<f64> {
    (0..bytes.len() / dtype.size_bytes())
        .map(|i| match dtype.decode(dtype.load_bits(bytes, i)) {
            Decoded::Finite { neg, sig, exp } => sig as f64 * 2f64.powi(exp) * if neg { -1.0 } else { 1.0 },
            _ => f64::NAN,
        })
        .collect()
}

fn rtn(w: &[f64], cols: usize, bits: u32, g: usize) -> Vec<f64> {
    let qmax = ((1u32 << bits) - 1) as f64;
    let mut out = Vec::with_capacity(w.len());
    for row in w.chunks(cols) {
        for grp in row.chunks(g) {
            let hi = grp.iter().cloned().fold(0.0, f64::max);
            let lo = grp.iter().cloned().fold(0.0, f64::min);
            let s = (hi - lo) / qmax;
            let z = if s > 0.0 { (-lo / s).round() } else { 0.0 };
            out.extend(
                grp.iter().map(|&x| if s > 0.0 { s * (((x / s).round() + z).clamp(0.0, qmax) - z) } else { 0.0 }),
            );
        }
    }
    out
}

fn main() {
    let dir = std::env::var("UCW_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-bf16")));
    let bits: u32 = std::env::var("UCW_BITS").ok().and_then(|b| b.parse().ok()).unwrap_or(5);
    // UCW_RANK=r adds the low-rank overlay (identity metric) to ucw's figures.
    let rank: usize = std::env::var("UCW_RANK").ok().and_then(|b| b.parse().ok()).unwrap_or(0);
    let p = QuantParams { bits, group_size: 64 };
    let model = Model::open(&dir).expect("model");
    let cpu = CpuBackend::new();
    let (mut e_ours, mut e_rtn, mut norm) = (0.0, 0.0, 0.0);
    let mut by_kind: std::collections::BTreeMap<String, (f64, f64, f64)> = Default::default();
    let start = Instant::now();
    println!("{:<48} {:>10} {:>10} {:>7}", "linear", "ucw", "RTN", "ratio");
    for t in model.tensors.iter().filter(|t| t.role == Role::Linear) {
        let v = model.tensor(&t.name);
        let dtype = model.dtype_of(&t.name);
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let w = values(v.bytes, dtype);
        let q = quantize_tensor(&cpu, &t.name, v.bytes, dtype, rows, cols, p, None).expect("quantize");
        let gpr = q.groups_per_row();
        let deq: Vec<f64> = (0..w.len())
            .map(|i| {
                let g = (i / cols) * gpr + (i % cols) / 64;
                let (m, e) = step(q.scales[g], q.base_exp);
                m as f64 * (q.codes[i] as f64 - q.zeros[g] as f64) * 2f64.powi(e)
            })
            .collect();
        let res: Vec<f64> = w.iter().zip(&deq).map(|(a, b)| a - b).collect();
        let correction = ucw::codec::lowrank::fit(
            &res,
            rows,
            cols,
            rank,
            q.base_exp,
            ucw::compress::FIT_ROUNDS,
            ucw::codec::lowrank::Metric::Identity,
        )
        .map(|o| {
            let (su, sv) = (2f64.powi(0), 2f64.powi(o.exp));
            (0..w.len())
                .map(|i| {
                    let (r_, c_) = (i / cols, i % cols);
                    let mut acc = 0.0;
                    for k in 0..o.rank {
                        acc +=
                            o.mu[r_] as f64 * o.u[r_ * o.rank + k] as f64 * o.mv[k] as f64 * o.v[k * cols + c_] as f64;
                    }
                    acc * su * sv
                })
                .collect::<Vec<f64>>()
        })
        .unwrap_or_else(|| vec![0.0; w.len()]);
        let ours: f64 = res.iter().zip(&correction).map(|(r, c)| (r - c).powi(2)).sum();
        let r: f64 = rtn(&w, cols, bits, 64).iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum();
        let n: f64 = w.iter().map(|x| x * x).sum();
        println!("{:<48} {:>10.6} {:>10.6} {:>7.4}", t.name, (ours / n).sqrt(), (r / n).sqrt(), (ours / r).sqrt());
        e_ours += ours;
        e_rtn += r;
        norm += n;
        let kind = t.name.rsplit('.').nth(1).unwrap_or("?").to_string();
        let k = by_kind.entry(kind).or_default();
        k.0 += ours;
        k.1 += r;
        k.2 += n;
    }
    println!();
    for (k, (o, r, n)) in &by_kind {
        println!("{k:<10} ucw {:.6}  RTN {:.6}  ratio {:.4}", (o / n).sqrt(), (r / n).sqrt(), (o / r).sqrt());
    }
    println!(
        "all linears ({bits} bits, groups of 64, overlay rank {rank}): relative error ucw {:.6}, RTN {:.6}, ratio {:.4}; {:.1} s",
        (e_ours / norm).sqrt(),
        (e_rtn / norm).sqrt(),
        (e_ours / e_rtn).sqrt(),
        start.elapsed().as_secs_f64()
    );
}
