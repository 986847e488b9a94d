//! CPU twins of shaders/matmul.wgsl (exact integer matrix product) and
//! shaders/renorm.wgsl (one rounding to a per-token exponent).

use crate::fixed::round::shr_round_lane;
use crate::fixed::tensor::{ExactSums, GroupFixed, TokenFixed};

/// Smallest group exponent of each weight row.
pub fn row_exps(w: &GroupFixed) -> Vec<i32> {
    let gpr = w.groups_per_row();
    (0..w.rows).map(|r| w.exponents[r * gpr..(r + 1) * gpr].iter().copied().min().unwrap_or(0)).collect()
}

/// Sums for tokens `t0..` into `out` (`[tokens, n]` row-major slice). Exact in i64: a group
/// sum is <= 64·2^32 = 2^38, shifted by <= S = `matmul_max_spread(K)`, and the row's sum
/// over K columns < K·2^(32+S) <= 2^61 (`check_matmul_weights`), for K up to 2^16.
pub fn matmul_rows(x: &TokenFixed, w: &GroupFixed, re: &[i32], t0: usize, out: &mut [i64]) {
    let (k, n) = (w.cols, w.rows);
    let g = w.params.group_size as usize;
    let gpr = w.groups_per_row();
    for (lt, row) in out.chunks_mut(n).enumerate() {
        let a = &x.mants[(t0 + lt) * k..(t0 + lt + 1) * k];
        for (o, dst) in row.iter_mut().enumerate() {
            let m = &w.mantissas[o * k..(o + 1) * k];
            let mut acc = 0i64;
            for gi in 0..gpr {
                let (c0, c1) = (gi * g, ((gi + 1) * g).min(k));
                let mut s = 0i64;
                for c in c0..c1 {
                    s += a[c] as i64 * m[c] as i64;
                }
                acc += s << (w.exponents[o * gpr + gi] - re[o]);
            }
            *dst = acc;
        }
    }
}

/// Number of significant bits of `x` (0 for 0).
#[inline]
pub fn bitlen(x: u64) -> i32 {
    64 - x.leading_zeros() as i32
}

simd_dispatch! {
    /// Round a token's exact values (all at one exponent, |z| < 2^62) to `bits`-bit
    /// mantissas: the shift comes from the largest |z|, rounding half to even. Returns the
    /// shift (output exponent = input exponent + shift), or None when every value is zero
    /// (`out` is then zeroed).
    pub fn renorm_row(z: &[i64], bits: u32, out: &mut [i32]) -> Option<i32> {
        let top = z.iter().map(|v| 64 - v.unsigned_abs().leading_zeros()).max().unwrap_or(0);
        if top == 0 {
            out.fill(0);
            return None;
        }
        let shift = top as i32 - (bits as i32 - 1);
        if shift >= 0 {
            // |v| < 2^62: `shr_round_lane` equals `shr_round_any` there.
            for (o, &v) in out.iter_mut().zip(z) {
                *o = shr_round_lane(v, shift as u32) as i32;
            }
        } else {
            // Every |z| < 2^(bits-1+shift): the left shift is exact.
            for (o, &v) in out.iter_mut().zip(z) {
                *o = (v << (-shift) as u32) as i32;
            }
        }
        Some(shift)
    }
}

simd_dispatch! {
    /// Renormalise token `t`: shared exponent from the largest output, then `bits`-bit mantissas.
    pub fn renorm_token(sums: &[i64], x_exp: i32, re: &[i32], bits: u32, mants: &mut [i32]) -> i32 {
        let mut top = i32::MIN;
        for (&s, &r) in sums.iter().zip(re) {
            let t = r + (64 - s.unsigned_abs().leading_zeros()) as i32;
            top = top.max(if s != 0 { t } else { i32::MIN });
        }
        if top == i32::MIN {
            mants.fill(0);
            return 0;
        }
        let e = x_exp + top - (bits as i32 - 1);
        for ((&s, &r), m) in sums.iter().zip(re).zip(mants.iter_mut()) {
            let d = x_exp + r - e;
            // d > 0 only for values with bitlen(s) <= bits - 1 - d (or s = 0): the shift cannot
            // overflow. |s| < 2^61, inside `shr_round_lane`'s domain.
            let up = (s << d.clamp(0, 63)) as i32;
            let down = shr_round_lane(s, (-d).max(0) as u32) as i32;
            *m = if d >= 0 { up } else { down };
        }
        e
    }
}

pub fn renorm(s: &ExactSums, x_exps: &[i32], bits: u32) -> TokenFixed {
    use rayon::prelude::*;
    let mut mants = vec![0i32; s.tokens * s.n];
    let mut exps = vec![0i32; s.tokens];
    mants.par_chunks_mut(s.n.max(1)).zip(exps.par_iter_mut()).enumerate().for_each(|(t, (m, e))| {
        *e = renorm_token(&s.sums[t * s.n..(t + 1) * s.n], x_exps[t], &s.row_exps, bits, m);
    });
    TokenFixed { tokens: s.tokens, width: s.n, exps, mants }
}
