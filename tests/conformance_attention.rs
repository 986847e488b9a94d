//! Causal GQA attention (shaders/attention.wgsl + attn_renorm.wgsl): identical bits on every
//! device, and the CPU twin against an f64 softmax attention within the bound its rounding
//! points give (fixed before measuring): half an output unit, half a unit of the head
//! output's exponent, 2^-19 of the largest |v| (scores in Q20 and the exp: < 2^-20 relative
//! on each weight), plus each key's weight rounding on the V grid (forward v2: half a unit
//! of 2^(Ev+9) on u_j, times |v_j|'s mantissa, over Z >= 2^30).

mod common;

use common::{Rng, i32s_to_bytes};
use ucw::backend::cpu::CpuBackend;
use ucw::backend::cpu::act::ExpConsts;
use ucw::backend::cpu::attention::AttnShape;
use ucw::backend::{Backend, TokenFixed};

fn acts(t: usize, w: usize, rng: &mut Rng, exp_lo: i32) -> TokenFixed {
    let mants = (0..t * w).map(|_| (rng.next_u32() as i32) >> (15 + rng.below(4) as u32)).collect();
    let exps = (0..t).map(|_| exp_lo + rng.below(4) as i32).collect();
    TokenFixed { tokens: t, width: w, exps, mants }
}

fn case(t: usize, heads: usize, kv: usize, d: usize, seed: u64) -> (TokenFixed, TokenFixed, TokenFixed, AttnShape) {
    let mut rng = Rng(seed);
    let q = acts(t, heads * d, &mut rng, -14);
    let k = acts(t, kv * d, &mut rng, -14);
    let v = acts(t, kv * d, &mut rng, -20);
    (q, k, v, AttnShape::new(heads, kv, d))
}

const CASES: &[(usize, usize, usize, usize)] = &[(20, 4, 2, 16), (9, 2, 2, 32), (1, 4, 1, 8), (12, 3, 1, 64)];

conformance!(attention_same_bits_everywhere, |b| {
    let ec = ExpConsts::new();
    let mut out = Vec::new();
    for (i, &(t, h, kv, d)) in CASES.iter().enumerate() {
        let (q, k, v, s) = case(t, h, kv, d, 10 + i as u64);
        for bits in [16, 20] {
            let y = b.attention(&q, &k, &v, &s, &ec, bits).unwrap();
            out.extend(i32s_to_bytes(&y.exps));
            out.extend(i32s_to_bytes(&y.mants));
        }
    }
    out
});

#[test]
fn attention_twin_is_within_its_bound_of_f64() {
    let ec = ExpConsts::new();
    let cpu = CpuBackend::new();
    let mut worst: f64 = 0.0;
    for (ci, &(t, h, kv, d)) in CASES.iter().enumerate() {
        let (q, k, v, s) = case(t, h, kv, d, 30 + ci as u64);
        let y = cpu.attention(&q, &k, &v, &s, &ec, 20).unwrap();
        let val = |x: &TokenFixed, tok: usize, i: usize| x.mants[tok * x.width + i] as f64 * 2f64.powi(x.exps[tok]);
        for tt in 0..t {
            let unit = 2f64.powi(y.exps[tt]);
            for hh in 0..h {
                let g = hh / (h / kv);
                let scores: Vec<f64> = (0..=tt)
                    .map(|j| {
                        (0..d).map(|i| val(&q, tt, hh * d + i) * val(&k, j, g * d + i)).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = w.iter().sum();
                let ev = (0..=tt).map(|j| v.exps[j]).max().unwrap();
                for i in 0..d {
                    let want: f64 = (0..=tt).map(|j| w[j] * val(&v, j, g * d + i)).sum::<f64>() / z;
                    let got = y.mants[tt * h * d + hh * d + i] as f64 * unit;
                    let vmax = (0..=tt).map(|j| val(&v, j, g * d + i).abs()).fold(0.0, f64::max);
                    let u_round: f64 = (0..=tt).map(|j| (v.mants[j * v.width + g * d + i] as f64).abs()).sum::<f64>()
                        * 2f64.powi(ev + 8 - 30);
                    let bound = 0.5 * unit + 0.5 * 2f64.powi(ev) + vmax * 2f64.powi(-19) + u_round;
                    worst = worst.max((got - want).abs() / (vmax.max(1e-300)));
                    assert!((got - want).abs() <= bound, "case {ci} t {tt} head {hh} ch {i}: {got} vs {want}");
                }
            }
        }
    }
    println!("largest error relative to max|v|: {worst:.2e}");
}
