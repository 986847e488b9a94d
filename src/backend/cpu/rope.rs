//! CPU twin of shaders/rope.wgsl: rotary position embedding in integers.
//!
//! Tables (host, f64 with `libm`, identical on every machine): for position p and pair
//! f < d/2, angle = p · inv_freq_f, inv_freq_f = theta^(−2f/d) for plain RoPE or as the
//! config's rope_type scales it (`inv_freq`, transformers' modeling_rope_utils); cos and sin
//! times the type's attention factor (1 but for yarn and longrope, ≤ 16), rounded half even
//! to Q20 (DESIGN §4: 20 fractional bits). HF's "rotate half" pairing: channel i with
//! i + d/2 of each head.
//! Per token (mantissas |m| <= 2^17 at the token's exponent):
//!   y_i = m_i·cos − m_{i+d/2}·sin,  y_{i+d/2} = m_{i+d/2}·cos + m_i·sin
//!   (≤ 2^38 when |cos|, |sin| ≤ 2^20; ≤ 2^42 with an attention factor ≤ 16; exact in i64)
//! then one renormalisation of the token to `bits` (largest |y| first, half even).

use crate::fixed::tables::RopeTables;
use crate::model::ModelConfig;
use crate::model::config::RopeScaling;

// The type and its config-free constructors are in `fixed::tables`; this one reads a model
// config, which `fixed` must not import, so it lives beside `inv_freq`.
impl RopeTables {
    /// The tables of a model's config for a window of `positions` tokens (the length that
    /// `dynamic` and `longrope` depend on: see `RopeScaling`).
    pub fn for_config(c: &ModelConfig, positions: usize) -> RopeTables {
        match c.rope_scaling {
            // Bit for bit the tables before scaled types existed (golden files).
            RopeScaling::Default => RopeTables::new(c.head_dim, positions, c.rope_theta),
            _ => {
                let (inv, scale) = inv_freq(c.head_dim, c.rope_theta, &c.rope_scaling, positions);
                RopeTables::from_inv_freq(c.head_dim, positions, &inv, scale)
            }
        }
    }
}

/// Inverse frequencies (one per pair f < d/2) and the cos/sin scale, for a window of
/// `seq_len` tokens: transformers' `modeling_rope_utils.py` (5.24) `_compute_*_parameters`
/// step by step, in f64 (transformers: float32 tensors, Python-float scalars) with `libm`
/// for pow/log/cos/sin. The config parser has resolved every default.
pub fn inv_freq(head_dim: usize, theta: f64, s: &RopeScaling, seq_len: usize) -> (Vec<f64>, f64) {
    let d = head_dim as f64;
    // transformers: 1 / base ** (arange(0, dim, 2) / dim)
    let plain =
        |base: f64| -> Vec<f64> { (0..head_dim / 2).map(|f| 1.0 / libm::pow(base, (2 * f) as f64 / d)).collect() };
    match s {
        RopeScaling::Default => ((0..head_dim / 2).map(|f| libm::pow(theta, -((2 * f) as f64) / d)).collect(), 1.0),
        RopeScaling::Linear { factor } => (plain(theta).into_iter().map(|x| x / factor).collect(), 1.0),
        RopeScaling::Dynamic { factor, max_position_embeddings: m } => {
            let l = (seq_len as f64).max(*m);
            let base = theta * libm::pow(factor * l / m - (factor - 1.0), d / (d - 2.0));
            (plain(base), 1.0)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: old,
        } => {
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            let inv = plain(theta)
                .into_iter()
                .map(|x| {
                    let wavelen = 2.0 * core::f64::consts::PI / x;
                    // wavelen > low_freq_wavelen: divide by factor; < high_freq_wavelen: keep
                    let y = if wavelen > low_wavelen { x / factor } else { x };
                    // transformers' is_medium_freq: ~(wavelen < high) * ~(wavelen > low);
                    // every wavelen here is finite, so this is the same comparison.
                    if wavelen >= high_wavelen && wavelen <= low_wavelen {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * y / factor + smooth * y
                    } else {
                        y
                    }
                })
                .collect();
            (inv, 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: orig,
            beta_fast,
            beta_slow,
            truncate,
            attention_factor,
        } => {
            let two_pi = 2.0 * core::f64::consts::PI;
            let correction_dim = |rot: f64| (d * libm::log(orig / (rot * two_pi))) / (2.0 * libm::log(theta));
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                (low, high) = (libm::floor(low), libm::ceil(high));
            }
            let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
            if low == high {
                high += 0.001; // transformers: "prevent singularity"
            }
            let inv = (0..head_dim / 2)
                .map(|f| {
                    let pos_freq = libm::pow(theta, (2 * f) as f64 / d);
                    let (extrapolation, interpolation) = (1.0 / pos_freq, 1.0 / (factor * pos_freq));
                    let ramp = ((f as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
                })
                .collect();
            (inv, *attention_factor)
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings: orig,
            attention_factor,
        } => {
            let ext = if seq_len > *orig { long_factor } else { short_factor };
            let inv = (0..head_dim / 2).map(|f| 1.0 / (ext[f] * libm::pow(theta, (2 * f) as f64 / d))).collect();
            (inv, *attention_factor)
        }
    }
}

/// Rotate one token (all heads) at position `pos`; returns the output exponent.
pub fn rope_token(m: &[i32], e: i32, pos: usize, t: &RopeTables, bits: u32, out: &mut [i32]) -> i32 {
    let (d, half) = (t.head_dim, t.head_dim / 2);
    let mut y = vec![0i64; m.len()];
    for h in 0..m.len() / d {
        for f in 0..half {
            let (c, s) = (t.cos[pos * half + f] as i64, t.sin[pos * half + f] as i64);
            let (x1, x2) = (m[h * d + f] as i64, m[h * d + f + half] as i64);
            y[h * d + f] = x1 * c - x2 * s;
            y[h * d + f + half] = x2 * c + x1 * s;
        }
    }
    super::linear::renorm_row(&y, bits, out).map_or(0, |shift| e - 20 + shift)
}
