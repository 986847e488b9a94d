//! CPU twins of shaders/quantize.wgsl and shaders/dequantize.wgsl.
//!
//! The search (codec version 1), per group of ingested mantissas X (|X| <= 2^15, units
//! 2^e_g), bits b, qmax = 2^b - 1, importance h_j in [0, 2^12]:
//!   range = max(0, max X) - min(0, min X); all-zero group → c = 0, z = 0, q = 0.
//!   t*    = floor(range * 2^8 / qmax)            ideal step, 8 fractional bits
//!   for each scale code c = 0..=255 (ascending step), its step in the same units
//!     t(c)  = (16 + c & 15) * 2^(E + c >> 4 - e_g + 8), rounded half-even when the shift
//!             is negative; candidates are those with t*/2 <= t(c) <= 2 t*
//!             (none: c = 0, the smallest step, with t saturated at 2^30)
//!     z0 = clamp(round(-min(0, min X) * 2^8 / t), 0, qmax); z in {z0-1, z0, z0+1} ∩ [0, qmax]
//!     r_j = round(X_j * 2^8 / t); d_j = clamp(r_j, -z, qmax - z); q_j = d_j + z
//!     err_j = round((X_j * 2^8 - t * d_j) / 2^8); cost = Σ h_j err_j^2 (exact, 64-bit)
//!   keep the first (c, z) of least cost. All roundings are half to even.
//! Bounds: |X * 2^8| <= 2^23; |t d_j| <= |X 2^8| + t/2 when d_j != 0, and t <= 2|X 2^8| then,
//! so |err| < 2^25 before and <= 2^17 after the shift; h err <= 2^29 fits an i32, h err^2
//! <= 2^46, and a sum over <= 2^12 elements < 2^58.

use crate::codec::quant::{QuantParams, group_range};

/// Signed n / d rounded half to even, d > 0.
#[inline]
pub fn div_round(n: i32, d: i32) -> i32 {
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d);
    if 2 * (r as i64) > d as i64 || (2 * r as i64 == d as i64 && q & 1 == 1) { q + 1 } else { q }
}

/// Step of code `c` for a group with exponent `e_g`, in units of 2^(e_g - 8), saturated to
/// [0, 2^30].
#[inline]
pub fn step_fx(c: u32, base_exp: i32, e_g: i32) -> u32 {
    let mant = 16 + (c & 15);
    let sh = base_exp + (c >> 4) as i32 - e_g + 8;
    if sh >= 26 {
        1 << 30
    } else if sh >= 0 {
        mant << sh
    } else if sh > -32 {
        super::wide::shr_round(mant as i64, (-sh) as u32) as u32
    } else {
        0
    }
}

/// Cost of (t, z) and, when `codes` is given, the codes it produces.
fn evaluate(x: &[i32], h: &[u32], r: &[i32], t: i32, z: i32, qmax: i32, codes: Option<&mut [u8]>) -> u64 {
    let mut cost = 0u64;
    let mut out = codes;
    for j in 0..x.len() {
        let d = r[j].clamp(-z, qmax - z);
        let err = (x[j] << 8) - t * d;
        let e = super::wide::shr_round(err as i64, 8) as i32;
        cost += (e as i64 * (e * h[j] as i32) as i64) as u64;
        if let Some(c) = out.as_deref_mut() {
            c[j] = (d + z) as u8;
        }
    }
    cost
}

/// Quantize one group: returns (scale code, zero point) and writes its codes.
pub fn quantize_group(x: &[i32], e_g: i32, h: &[u32], p: QuantParams, base_exp: i32, codes: &mut [u8]) -> (u8, u8) {
    let qmax = (1i32 << p.bits) - 1;
    let range = group_range(x) as i32;
    if range == 0 {
        codes.fill(0);
        return (0, 0);
    }
    let tstar = (range << 8) / qmax;
    let xmin = x.iter().copied().min().unwrap().min(0);
    let mut r = vec![0i32; x.len()];
    let mut best: Option<(u64, u32, i32, i32)> = None; // (cost, c, z, t)
    let mut consider = |c: u32, t: u32, r: &mut Vec<i32>| {
        let t = t as i32;
        for (rj, &xj) in r.iter_mut().zip(x) {
            *rj = div_round(xj << 8, t);
        }
        let z0 = div_round(-xmin << 8, t).clamp(0, qmax);
        for z in [z0 - 1, z0, z0 + 1] {
            if z < 0 || z > qmax {
                continue;
            }
            let cost = evaluate(x, h, r, t, z, qmax, None);
            if best.is_none_or(|b| cost < b.0) {
                best = Some((cost, c, z, t));
            }
        }
    };
    let mut any = false;
    for c in 0..256u32 {
        let t = step_fx(c, base_exp, e_g);
        if t == 0 || 2 * t < tstar as u32 || t > 2 * tstar as u32 {
            continue;
        }
        any = true;
        consider(c, t, &mut r);
    }
    if !any {
        let t = step_fx(0, base_exp, e_g).max(1);
        consider(0, t, &mut r);
    }
    let (_, c, z, t) = best.expect("at least one candidate");
    for (rj, &xj) in r.iter_mut().zip(x) {
        *rj = div_round(xj << 8, t);
    }
    evaluate(x, h, &r, t, z, qmax, Some(codes));
    (c as u8, z as u8)
}

/// Marks a table entry whose value overflows the output dtype (no encoding is all ones:
/// that would be a NaN, which `encode` never produces).
const OVERFLOW: u32 = u32::MAX;

/// Output bits for every code q of one (scale code, zero point) pair: a group holds
/// 2^bits distinct values at most, so reconstruction is a table lookup per weight. The
/// tables are built with `DType::encode`, the twin of `encode_float`, so the bits are the
/// kernel's.
pub struct DequantTables {
    /// (scale | zero << 8) → index into `tables`, or u32::MAX when unused
    slot: Vec<u32>,
    tables: Vec<u32>,
    width: usize,
}

impl DequantTables {
    pub fn new(scales: &[u8], zeros: &[u8], bits: u32, base_exp: i32, dtype: crate::dtype::DType) -> Self {
        let width = 1usize << bits;
        let mut slot = vec![u32::MAX; 1 << 16];
        let mut tables = Vec::new();
        for (&s, &z) in scales.iter().zip(zeros) {
            let key = s as usize | (z as usize) << 8;
            if slot[key] != u32::MAX {
                continue;
            }
            slot[key] = (tables.len() / width) as u32;
            let (mant, exp) = crate::codec::quant::step(s, base_exp);
            for q in 0..width as i64 {
                let v = mant as i64 * (q - z as i64);
                tables.push(dtype.encode(v < 0, v.unsigned_abs(), exp).unwrap_or(OVERFLOW));
            }
        }
        DequantTables { slot, tables, width }
    }

    #[inline]
    fn table(&self, s: u8, z: u8) -> &[u32] {
        let i = self.slot[s as usize | (z as usize) << 8] as usize * self.width;
        &self.tables[i..i + self.width]
    }
}

/// Reconstruct rows `[r0, ..)` of a quantized tensor into `out` (little-endian `dtype`
/// bytes). Returns the first element index whose value overflows the dtype.
#[allow(clippy::too_many_arguments)]
pub fn dequantize_rows(
    codes: &[u8],
    scales: &[u8],
    zeros: &[u8],
    cols: usize,
    group_size: usize,
    tables: &DequantTables,
    dtype: crate::dtype::DType,
    r0: usize,
    out: &mut [u8],
) -> Option<usize> {
    let gpr = cols.div_ceil(group_size);
    let esize = dtype.size_bytes();
    let rows = out.len() / (cols * esize).max(1);
    let mut bad = None;
    for lr in 0..rows {
        let row = r0 + lr;
        for g in 0..gpr {
            let c0 = g * group_size;
            let c1 = (c0 + group_size).min(cols);
            let t = tables.table(scales[row * gpr + g], zeros[row * gpr + g]);
            let src = &codes[row * cols + c0..row * cols + c1];
            let dst = &mut out[(lr * cols + c0) * esize..(lr * cols + c1) * esize];
            for (j, &q) in src.iter().enumerate() {
                let bits = t[q as usize];
                if bits == OVERFLOW {
                    bad = bad.or(Some(row * cols + c0 + j));
                    continue;
                }
                if esize == 2 {
                    dst[2 * j..2 * j + 2].copy_from_slice(&(bits as u16).to_le_bytes());
                } else {
                    dst[4 * j..4 * j + 4].copy_from_slice(&bits.to_le_bytes());
                }
            }
        }
    }
    bad
}

/// Reconstruct rows `[r0, ..)` of a quantized tensor with a low-rank overlay into `out`.
/// Per element, exactly (bounds: |D| < 2^13 at exponent eD = E + (c >> 4); |O| < 2^51 at
/// exponent Eo, since |mu U mv| < 2^39, |V| < 2^7 and rank <= 32; with
/// E - 34 <= Eo <= E + 11 the aligned sum below stays under 2^63):
///   D = (16 + c & 15) (q - z),  O = Σ_k (mu_i U_ik mv_k) V_kj,
///   T = D 2^(eD - m) + O 2^(Eo - m) with m = min(eD, Eo), rounded once to `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn dequantize_rows_overlay(
    q: &crate::codec::quant::QuantTensor,
    o: &crate::codec::quant::Overlay,
    dtype: crate::dtype::DType,
    r0: usize,
    out: &mut [u8],
) -> Option<usize> {
    let (cols, g) = (q.cols, q.params.group_size as usize);
    let gpr = q.groups_per_row();
    let esize = dtype.size_bytes();
    let rows = out.len() / (cols * esize).max(1);
    let r = o.rank;
    let mut bad = None;
    let mut a = vec![0i64; r];
    for lr in 0..rows {
        let row = r0 + lr;
        for (k, ak) in a.iter_mut().enumerate() {
            *ak = o.mu[row] as i64 * o.u[row * r + k] as i64 * o.mv[k] as i64;
        }
        for c in 0..cols {
            let gi = row * gpr + c / g;
            let (m, ed) = crate::codec::quant::step(q.scales[gi], q.base_exp);
            let d = m as i64 * (q.codes[row * cols + c] as i64 - q.zeros[gi] as i64);
            let mut ov = 0i64;
            for (k, &ak) in a.iter().enumerate() {
                ov += ak * o.v[k * cols + c] as i64;
            }
            let (t, exp) = if ed >= o.exp { ((d << (ed - o.exp)) + ov, o.exp) } else { (d + (ov << (o.exp - ed)), ed) };
            match dtype.encode(t < 0, t.unsigned_abs(), exp) {
                Some(bits) => {
                    let dst = &mut out[(lr * cols + c) * esize..(lr * cols + c + 1) * esize];
                    if esize == 2 {
                        dst.copy_from_slice(&(bits as u16).to_le_bytes());
                    } else {
                        dst.copy_from_slice(&bits.to_le_bytes());
                    }
                }
                None => bad = bad.or(Some(row * cols + c)),
            }
        }
    }
    bad
}
