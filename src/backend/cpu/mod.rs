//! The reference backend: pure Rust, the twin of every WGSL kernel, and a real backend for
//! machines without a usable GPU.
//!
//! Parallel work is split into fixed partitions (a constant number of rows per task) that do
//! not depend on the thread count; outputs of different tasks never overlap, and the only
//! cross-task reduction (the first bad index) is a minimum, so results are identical on any
//! number of threads (DESIGN §3 rule 6).

/// `fn NAME(args) -> R { BODY }` with BODY compiled three times, with AVX-512 (F, VL, DQ,
/// CD), with AVX2 and as is, the first this CPU has (and `isa::allows`) chosen at run time,
/// so each build vectorises its loops with those features; integer results cannot depend on
/// which build runs.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,avx512f,avx512vl,avx512dq,avx512cd")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) -> $ret $body
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) -> $ret $body
                if $crate::backend::cpu::isa::allows($crate::backend::cpu::isa::Isa::Avx512)
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512cd")
                {
                    // SAFETY: the CPU has these features (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::backend::cpu::isa::allows($crate::backend::cpu::isa::Isa::Avx2)
                    && std::is_x86_feature_detected!("avx2")
                {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}

pub mod act;
pub mod add;
pub mod attention;
pub mod ingest;
pub mod isa;
pub mod kld;
pub mod linear;
pub mod matmul_amx;
pub mod matmul_avx2;
pub mod matmul_blocks;
pub mod matmul_fast;
pub mod matmul_pairs;
pub mod matmul_vnni;
pub mod nll;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod wide;

use rayon::prelude::*;

use crate::backend::{
    Backend, KernelError, Prepared, WideCase, WideResult, check_ingest_args, check_matmul_args, check_quantize_args,
    check_renorm_args,
};
use crate::dtype::DType;
use crate::error::Error;
use crate::fixed::quant::{QuantParams, QuantTensor};
use crate::fixed::tables::{ExpConsts, LogConsts, RmsConsts, RopeTables};
use crate::fixed::tensor::{ExactSums, GroupFixed, IngestParams, TokenFixed};

/// Rows per parallel task for row-wise kernels.
const ROWS_PER_TASK: usize = 16;

#[derive(Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn api(&self) -> &'static str {
        "cpu"
    }

    fn concurrent_windows(&self) -> usize {
        2
    }

    fn ingest(
        &self,
        src: &[u8],
        dtype: DType,
        rows: usize,
        cols: usize,
        params: IngestParams,
    ) -> Result<GroupFixed, KernelError> {
        check_ingest_args(src, dtype, rows, cols, params)?;
        let gpr = cols.div_ceil(params.group_size as usize);
        let mut exponents = vec![0i32; rows * gpr];
        let mut mantissas = vec![0i32; rows * cols];
        let first_bad = exponents
            .par_chunks_mut(ROWS_PER_TASK * gpr.max(1))
            .zip(mantissas.par_chunks_mut(ROWS_PER_TASK * cols.max(1)))
            .enumerate()
            .filter_map(|(task, (e, m))| ingest::ingest_rows(src, dtype, cols, params, task * ROWS_PER_TASK, e, m))
            .min();
        if let Some(index) = first_bad {
            return Err(KernelError::NonFinite { index });
        }
        Ok(GroupFixed { rows, cols, params, exponents, mantissas })
    }

    fn quantize(
        &self,
        x: &GroupFixed,
        importance: &[u32],
        p: QuantParams,
        base_exp: i32,
    ) -> Result<QuantTensor, Error> {
        check_quantize_args(x, importance, p)?;
        let (rows, cols, g) = (x.rows, x.cols, p.group_size as usize);
        let gpr = x.groups_per_row();
        let mut codes = vec![0u8; rows * cols];
        let mut meta = vec![(0u8, 0u8); rows * gpr];
        codes
            .par_chunks_mut(ROWS_PER_TASK * cols.max(1))
            .zip(meta.par_chunks_mut(ROWS_PER_TASK * gpr.max(1)))
            .enumerate()
            .for_each(|(task, (codes, meta))| {
                for (lg, m) in meta.iter_mut().enumerate() {
                    let row = task * ROWS_PER_TASK + lg / gpr;
                    let c0 = (lg % gpr) * g;
                    let c1 = (c0 + g).min(cols);
                    let lbase = (lg / gpr) * cols;
                    *m = quant::quantize_group(
                        &x.mantissas[row * cols + c0..row * cols + c1],
                        x.exponents[row * gpr + lg % gpr],
                        &importance[c0..c1],
                        p,
                        base_exp,
                        &mut codes[lbase + c0..lbase + c1],
                    );
                }
            });
        Ok(QuantTensor {
            rows,
            cols,
            params: p,
            base_exp,
            codes,
            scales: meta.iter().map(|m| m.0).collect(),
            zeros: meta.iter().map(|m| m.1).collect(),
            overlay: None,
        })
    }

    fn dequantize(&self, q: &QuantTensor, dtype: DType) -> Result<Vec<u8>, KernelError> {
        let cols = q.cols;
        let esize = dtype.size_bytes();
        let mut out = vec![0u8; q.rows * cols * esize];
        if let Some(o) = &q.overlay {
            let bad = out
                .par_chunks_mut(ROWS_PER_TASK * (cols * esize).max(1))
                .enumerate()
                .filter_map(|(task, out)| quant::dequantize_rows_overlay(q, o, dtype, task * ROWS_PER_TASK, out))
                .min();
            return match bad {
                Some(index) => Err(KernelError::Overflow { index }),
                None => Ok(out),
            };
        }
        let tables = quant::DequantTables::new(&q.scales, &q.zeros, q.params.bits, q.base_exp, dtype);
        let bad = out
            .par_chunks_mut(ROWS_PER_TASK * (cols * esize).max(1))
            .enumerate()
            .filter_map(|(task, out)| {
                quant::dequantize_rows(
                    &q.codes,
                    &q.scales,
                    &q.zeros,
                    cols,
                    q.params.group_size as usize,
                    &tables,
                    dtype,
                    task * ROWS_PER_TASK,
                    out,
                )
            })
            .min();
        match bad {
            Some(index) => Err(KernelError::Overflow { index }),
            None => Ok(out),
        }
    }

    fn matmul(&self, x: &TokenFixed, w: &GroupFixed) -> Result<ExactSums, Error> {
        check_matmul_args(x, w)?;
        let re = linear::row_exps(w);
        // Same bits as `linear::matmul_rows` (the readable twin of shaders/matmul.wgsl).
        let sums = matmul_fast::matmul(x, w, &re);
        Ok(ExactSums { tokens: x.tokens, n: w.rows, sums, row_exps: re })
    }

    fn prepare_matmul(&self, w: GroupFixed) -> Result<Prepared, Error> {
        super::check_matmul_weights(&w)?;
        let re = linear::row_exps(&w);
        // AMX and VNNI keep the ingested weights beside their layout (their products read
        // them for the fixes, and one token takes the reference loop); AVX2's layout holds
        // everything, so it replaces them.
        if matmul_amx::available() {
            let p = matmul_amx::Packed::new(&w, &re);
            let bytes = p.bytes();
            return Ok(Prepared::with_form(w, Box::new(p), bytes));
        }
        if matmul_vnni::available() {
            let p = matmul_vnni::Packed::new(&w, &re);
            let bytes = p.bytes();
            return Ok(Prepared::with_form(w, Box::new(p), bytes));
        }
        match matmul_avx2::Packed::new(&w, &re) {
            Some(p) => {
                let (rows, cols, bytes) = (p.rows(), p.cols(), p.bytes());
                drop(w);
                Ok(Prepared::form_only(rows, cols, Box::new(p), bytes))
            }
            None => Ok(Prepared::plain(w)),
        }
    }

    fn prepared_bytes(&self, w: &GroupFixed) -> u64 {
        // AMX and VNNI keep the ingested weights and a packing no larger than them (AMX: 3
        // or 4 bytes per weight; VNNI: 2 per weight, 8 per group); the AVX2 packing alone
        // is about half the ingested size, bounded by it (`matmul_avx2::Packed::bytes`).
        let ingested = crate::backend::ingested_bytes(w);
        if matmul_amx::available() || matmul_vnni::available() { 2 * ingested } else { ingested }
    }

    fn matmul_prepared(&self, x: &TokenFixed, p: &Prepared) -> Result<ExactSums, Error> {
        super::check_matmul_acts(x, p.rows(), p.cols())?;
        let done =
            |sums: Vec<i64>, re: &[i32]| ExactSums { tokens: x.tokens, n: p.rows(), sums, row_exps: re.to_vec() };
        if let Some(packed) = p.form::<matmul_avx2::Packed>() {
            return Ok(done(matmul_avx2::matmul_packed(x, packed), packed.row_exps()));
        }
        let w = p.weights().ok_or_else(|| bad_input!("matmul: weights prepared by another backend"))?;
        // One token takes the reference loop (as `matmul` does).
        if x.tokens > 1 {
            if let Some(packed) = p.form::<matmul_amx::Packed>()
                && packed.fits(w)
            {
                return Ok(done(matmul_amx::matmul_packed(x, w, packed), &packed.re));
            }
            if let Some(packed) = p.form::<matmul_vnni::Packed>()
                && packed.fits(w)
                && let Some(sums) = matmul_vnni::matmul_packed(x, w, packed)
            {
                return Ok(done(sums, packed.row_exps()));
            }
        }
        self.matmul(x, w)
    }

    fn renorm(&self, s: &ExactSums, x_exps: &[i32], bits: u32) -> Result<TokenFixed, Error> {
        check_renorm_args(s, x_exps, bits)?;
        Ok(linear::renorm(s, x_exps, bits))
    }

    fn rms_norm(&self, x: &TokenFixed, gamma: &GroupFixed, c: &RmsConsts, bits: u32) -> Result<TokenFixed, Error> {
        super::check_rms_args(x, gamma, c, bits)?;
        let w = x.width;
        let mut mants = vec![0i32; x.tokens * w];
        let mut exps = vec![0i32; x.tokens];
        mants.par_chunks_mut(w).zip(exps.par_iter_mut()).enumerate().for_each(|(t, (out, e))| {
            *e = norm::rms_token(
                &x.mants[t * w..(t + 1) * w],
                x.exps[t],
                &gamma.mantissas,
                gamma.exponents[0],
                c,
                bits,
                out,
            );
        });
        Ok(TokenFixed { tokens: x.tokens, width: w, exps, mants })
    }

    fn swiglu(&self, g: &TokenFixed, u: &TokenFixed, c: &ExpConsts, bits: u32) -> Result<TokenFixed, Error> {
        super::check_swiglu_args(g, u, bits)?;
        let w = g.width;
        let mut mants = vec![0i32; g.tokens * w];
        let mut exps = vec![0i32; g.tokens];
        mants.par_chunks_mut(w.max(1)).zip(exps.par_iter_mut()).enumerate().for_each(|(t, (out, e))| {
            *e = act::swiglu_token(
                &g.mants[t * w..(t + 1) * w],
                g.exps[t],
                &u.mants[t * w..(t + 1) * w],
                u.exps[t],
                c,
                bits,
                out,
            );
        });
        Ok(TokenFixed { tokens: g.tokens, width: w, exps, mants })
    }

    fn rope(&self, x: &TokenFixed, positions: &[u32], t: &RopeTables, bits: u32) -> Result<TokenFixed, Error> {
        super::check_rope_args(x, positions, t, bits)?;
        let w = x.width;
        let mut mants = vec![0i32; x.tokens * w];
        let mut exps = vec![0i32; x.tokens];
        mants.par_chunks_mut(w.max(1)).zip(exps.par_iter_mut()).enumerate().for_each(|(i, (out, e))| {
            *e = rope::rope_token(&x.mants[i * w..(i + 1) * w], x.exps[i], positions[i] as usize, t, bits, out);
        });
        Ok(TokenFixed { tokens: x.tokens, width: w, exps, mants })
    }

    fn add(&self, x: &TokenFixed, y: &TokenFixed, bits: u32) -> Result<TokenFixed, Error> {
        super::check_add_args(x, y, bits)?;
        let w = x.width;
        let mut mants = vec![0i32; x.tokens * w];
        let mut exps = vec![0i32; x.tokens];
        mants.par_chunks_mut(w.max(1)).zip(exps.par_iter_mut()).enumerate().for_each(|(t, (out, e))| {
            *e = add::add_token(
                &x.mants[t * w..(t + 1) * w],
                x.exps[t],
                &y.mants[t * w..(t + 1) * w],
                y.exps[t],
                bits,
                out,
            );
        });
        Ok(TokenFixed { tokens: x.tokens, width: w, exps, mants })
    }

    fn nll(&self, l: &TokenFixed, targets: &[u32], ec: &ExpConsts, lc: &LogConsts) -> Result<Vec<i64>, Error> {
        super::check_nll_args(l, targets)?;
        let w = l.width;
        Ok((0..l.tokens)
            .into_par_iter()
            .map(|t| nll::nll_token(&l.mants[t * w..(t + 1) * w], l.exps[t], targets[t] as usize, ec, lc))
            .collect())
    }

    fn renorm_nll(
        &self,
        s: &ExactSums,
        x_exps: &[i32],
        bits: u32,
        targets: &[u32],
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>, Error> {
        check_renorm_args(s, x_exps, bits)?;
        let n = s.n;
        // Outside nll's contract (|m| <= 2^23, vocabulary <= 2^20): the two steps, which
        // report it.
        if bits > 24 || n == 0 || n > 1 << 20 || targets.len() != s.tokens || targets.iter().any(|&t| t as usize >= n) {
            let logits = self.renorm(s, x_exps, bits)?;
            return self.nll(&logits, targets, ec, lc);
        }
        // Each token's logits live only in a per-task buffer (L2-sized for a 49k vocabulary).
        (0..s.tokens)
            .into_par_iter()
            .map_init(
                || vec![0i32; n],
                |buf, t| {
                    let e = linear::renorm_token(&s.sums[t * n..(t + 1) * n], x_exps[t], &s.row_exps, bits, buf);
                    if e > 8 {
                        return Err(bad_input!("nll: logits mantissas exceed 2^23 or exponents exceed 8"));
                    }
                    Ok(nll::nll_token(buf, e, targets[t] as usize, ec, lc))
                },
            )
            .collect()
    }

    fn attention(
        &self,
        q: &TokenFixed,
        k: &TokenFixed,
        v: &TokenFixed,
        s: &attention::AttnShape,
        ec: &ExpConsts,
        bits: u32,
    ) -> Result<TokenFixed, Error> {
        super::check_attention_args(q, k, v, s, bits)?;
        Ok(attention::attention(q, k, v, s, ec, bits))
    }

    fn wide_ops(&self, cases: &[WideCase]) -> Result<Vec<WideResult>, Error> {
        Ok(cases.par_iter().map(wide::eval).collect())
    }
}
