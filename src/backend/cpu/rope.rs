//! CPU twin of shaders/rope.wgsl: rotary position embedding in integers.
//!
//! Tables (host, f64 with `libm`, identical on every machine): for position p and pair
//! f < d/2, angle = p · theta^(−2f/d); cos and sin rounded half even to Q20 (DESIGN §4:
//! 20 fractional bits). HF's "rotate half" pairing: channel i with i + d/2 of each head.
//! Per token (mantissas |m| <= 2^17 at the token's exponent):
//!   y_i = m_i·cos − m_{i+d/2}·sin,  y_{i+d/2} = m_{i+d/2}·cos + m_i·sin   (< 2^38, exact)
//! then one renormalisation of the token to `bits` (largest |y| first, half even).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeTables {
    pub head_dim: usize,
    pub positions: usize,
    /// `[positions, head_dim / 2]` cos and sin in Q20
    pub cos: Vec<i32>,
    pub sin: Vec<i32>,
}

impl RopeTables {
    pub fn new(head_dim: usize, positions: usize, theta: f64) -> RopeTables {
        let half = head_dim / 2;
        let q20 = 1048576.0f64;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in 0..half {
                let inv = libm::pow(theta, -((2 * f) as f64) / head_dim as f64);
                let a = p as f64 * inv;
                cos.push((libm::cos(a) * q20).round_ties_even() as i32);
                sin.push((libm::sin(a) * q20).round_ties_even() as i32);
            }
        }
        RopeTables { head_dim, positions, cos, sin }
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
