//! Host constant tables the kernels read, named by the `Backend` trait and built once per
//! model: exp (`ExpConsts`: swiglu, attention, nll), log (`LogConsts`: nll), RMSNorm
//! (`RmsConsts`) and RoPE (`RopeTables`). Each is computed from f64 with IEEE operations
//! and `libm`, so the tables are identical on every machine; the algorithms that read them
//! are in `backend/cpu/{act,nll,norm,rope}.rs` and their shaders.

use super::round::shr_round_any;

/// ln(2) and log2(e) in Q30, and the table 2^(-j/256) in Q30, all from f64 with IEEE
/// operations and `libm` (identical on every machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpConsts {
    pub ln2_q30: u32,
    pub log2e_q30: u32,
    pub table: [u32; 256],
}

impl ExpConsts {
    pub fn new() -> ExpConsts {
        let q30 = 1073741824.0f64;
        ExpConsts {
            ln2_q30: (core::f64::consts::LN_2 * q30).round_ties_even() as u32,
            log2e_q30: (core::f64::consts::LOG2_E * q30).round_ties_even() as u32,
            table: std::array::from_fn(|j| (libm::exp2(-(j as f64) / 256.0) * q30).round_ties_even() as u32),
        }
    }
}

impl Default for ExpConsts {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConsts {
    /// log2(1 + j/256) in Q30, j < 256
    pub log2_table: Vec<u32>,
    /// 256/(256 + j) in Q30, j < 256
    pub recip_table: Vec<u32>,
    /// 1/ln 2 in Q30 and ln 2 in Q28
    pub inv_ln2_q30: u32,
    pub ln2_q28: u32,
}

impl LogConsts {
    pub fn new() -> LogConsts {
        let q30 = 1073741824.0f64;
        LogConsts {
            log2_table: (0..256).map(|j| (libm::log2(1.0 + j as f64 / 256.0) * q30).round_ties_even() as u32).collect(),
            recip_table: (0..256).map(|j| (256.0 / (256.0 + j as f64) * q30).round_ties_even() as u32).collect(),
            inv_ln2_q30: (core::f64::consts::LOG2_E * q30).round_ties_even() as u32,
            ln2_q28: (core::f64::consts::LN_2 * 268435456.0).round_ties_even() as u32,
        }
    }
}

impl Default for LogConsts {
    fn default() -> Self {
        Self::new()
    }
}

/// Host constants of one RMSNorm (width and ε); exact, from f64 with IEEE operations only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RmsConsts {
    pub he_m: u64,
    pub he_e: i32,
    pub sh_m: u32,
    pub sh_e: i32,
    pub seed: Vec<u32>,
}

/// f64 (positive, normal) → (53-bit integer mantissa, exponent), exactly.
fn split(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    ((bits & ((1u64 << 52) - 1)) | (1u64 << 52), e - 1075)
}

impl RmsConsts {
    pub fn new(width: usize, eps: f64) -> RmsConsts {
        let (he_m, he_e) = split(width as f64 * eps);
        // sqrt is correctly rounded in IEEE 754: the same f64 everywhere.
        let (m, e) = split((width as f64).sqrt());
        let sh_m = shr_round_any(m as i64, 23) as u32; // 30 significant bits
        let (sh_m, sh_e) = if sh_m >> 30 != 0 { (sh_m >> 1, e + 24) } else { (sh_m, e + 23) };
        // Seed for M/2^30 in [1, 4) by its top 8 bits: 2^30 / sqrt(midpoint of the bucket).
        let seed = (64..256u32)
            .map(|i| {
                let mid = (i as f64 + 0.5) / 64.0;
                (1073741824.0 / mid.sqrt()).round_ties_even() as u32
            })
            .collect();
        RmsConsts { he_m, he_e, sh_m, sh_e, seed }
    }
}

/// RoPE's cos and sin per position and pair. `new` and `from_inv_freq` build them from
/// inverse frequencies; `RopeTables::for_config` (`backend/cpu/rope.rs`, beside the scaled
/// rope types' frequencies, which need `model`: this module must not import it) from a
/// model's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeTables {
    pub head_dim: usize,
    pub positions: usize,
    /// `[positions, head_dim / 2]` cos and sin in Q20
    pub cos: Vec<i32>,
    pub sin: Vec<i32>,
}

impl RopeTables {
    /// Plain RoPE (rope_type "default"): inv_freq_f = θ^(−2f/d), scale 1.
    pub fn new(head_dim: usize, positions: usize, theta: f64) -> RopeTables {
        let inv: Vec<f64> = (0..head_dim / 2).map(|f| libm::pow(theta, -((2 * f) as f64) / head_dim as f64)).collect();
        RopeTables::from_inv_freq(head_dim, positions, &inv, 1.0)
    }

    /// angle = p · inv_freq_f; cos and sin × `scale` (transformers' attention_scaling),
    /// rounded half even to Q20. With scale 1 the product is exact, so `new` is unchanged.
    pub fn from_inv_freq(head_dim: usize, positions: usize, inv_freq: &[f64], scale: f64) -> RopeTables {
        let half = head_dim / 2;
        assert_eq!(inv_freq.len(), half, "one inverse frequency per pair");
        let q20 = 1048576.0f64;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &inv in inv_freq {
                let a = p as f64 * inv;
                cos.push((libm::cos(a) * scale * q20).round_ties_even() as i32);
                sin.push((libm::sin(a) * scale * q20).round_ties_even() as i32);
            }
        }
        RopeTables { head_dim, positions, cos, sin }
    }
}
