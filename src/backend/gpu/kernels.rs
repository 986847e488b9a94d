//! `Backend` for the wgpu device: host slices in, kernels dispatched, host results out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::params::{self as up, Split};
use super::resident::{DevTokens, RopeBufs};
use super::{Buf, GpuBackend, Rec, WORKGROUP, i64_at, words_le};
use crate::backend::{
    Backend, KernelError, Prepared, WideCase, WideResult, check_ingest_args, check_matmul_acts, check_matmul_args,
    check_matmul_weights, check_quantize_args, check_renorm_args,
};
use crate::dtype::DType;
use crate::error::Error;
use crate::fixed::quant::{QuantParams, QuantTensor};
use crate::fixed::tables::{ExpConsts, LogConsts, RmsConsts, RopeTables};
use crate::fixed::tensor::{ExactSums, GroupFixed, IngestParams, TokenFixed};

/// A weight matrix on the device for all its products (`prepare_matmul`): mantissas, group
/// exponents and row exponents as `matmul` would upload them for the whole matrix.
pub(crate) struct Resident {
    w: Buf,
    we: Buf,
    re: Buf,
    rows: usize,
    cols: usize,
    row_exps: Vec<i32>,
    /// What this adds to the backend's resident count, given back when dropped.
    bytes: u64,
    count: Arc<AtomicU64>,
}

impl Drop for Resident {
    fn drop(&mut self) {
        self.count.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The NLL kernels' lookup tables on the device.
struct NllTables {
    exp: Buf,
    log2: Buf,
    recip: Buf,
}

impl NllTables {
    fn upload(b: &GpuBackend, ec: &ExpConsts, lc: &LogConsts) -> Self {
        NllTables {
            exp: b.upload_words("nll.exp", &ec.table),
            log2: b.upload_words("nll.log2", &lc.log2_table),
            recip: b.upload_words("nll.recip", &lc.recip_table),
        }
    }
}

/// Tokens and weight rows of one matmul.wgsl workgroup's output tile (`TILE` there).
const MATMUL_TILE: usize = 32;
/// Staging iterations per group in matmul.wgsl: a 32 × 64 tile over 64 invocations.
const MATMUL_STAGE_STEPS: usize = MATMUL_TILE * 64 / WORKGROUP as usize;

impl GpuBackend {
    /// One matmul dispatch: `tokens` activations in `xb` times `rows` rows of `w`'s shape
    /// (mantissas, group exponents, row exponents in `wbufs`): the `[tokens, rows]` i64 sums,
    /// left on the device.
    pub(crate) fn matmul_on_device(
        &self,
        rec: &mut Rec,
        xb: &Buf,
        tokens: usize,
        w: &GroupFixed,
        rows: usize,
        wbufs: [&Buf; 3],
    ) -> Result<Buf, Error> {
        let outputs = tokens * rows;
        let gpr = w.groups_per_row();
        let (slice_groups, slices) = self.matmul_slices(w);
        let total = outputs * slices;
        // Tiled (one workgroup per 32 × 32 output tile and slice) where tiles are mostly
        // filled; otherwise one invocation per output and slice (tiles would be padding).
        let tiled = tokens >= MATMUL_TILE && rows >= MATMUL_TILE;
        let (entry, units, invocations) = if tiled {
            let tiles = tokens.div_ceil(MATMUL_TILE) * rows.div_ceil(MATMUL_TILE) * slices;
            let entry = if self.packed_dot() { "matmul_dot4" } else { "matmul" };
            (entry, tiles, tiles as u64 * WORKGROUP as u64)
        } else {
            ("matmul_rows", total, total as u64)
        };
        let params = self.params(&up::Matmul {
            tokens: tokens as u32,
            n: rows as u32,
            k: w.cols as u32,
            group_size: w.params.group_size,
            groups_per_row: gpr as u32,
            units: units as u32,
            slice_groups: slice_groups as u32,
            slices: slices as u32,
        });
        // One slice: the sums themselves. Several: [outputs, slices] partial sums, each a
        // sum over a subset of the row's products (< 2^61), added by matmul_reduce.
        let pb = self.zeroed(if slices == 1 { "matmul.out" } else { "matmul.part" }, total as u64 * 8);
        let [wb, we, rb] = wbufs;
        self.record(rec, "matmul.wgsl", entry, &[&params, xb, wb, we, rb, &pb], invocations)?;
        rec.keep(params);
        if slices == 1 {
            return Ok(pb);
        }
        let rp = self.params(&up::MatmulReduce { total: outputs as u32, slices: slices as u32, ..Default::default() });
        let ob = self.zeroed("matmul.out", outputs as u64 * 8);
        self.record(rec, "matmul_reduce.wgsl", "matmul_reduce", &[&rp, &pb, &ob], outputs as u64)?;
        rec.keep(rp);
        rec.keep(pb);
        Ok(ob)
    }

    /// One matmul invocation walks a slice's groups, staging 32 tile elements and then
    /// walking the group's columns in each; a reduce invocation walks the slices.
    pub(crate) fn check_matmul_loops(&self, w: &GroupFixed) -> Result<(), Error> {
        let (per, slices) = self.matmul_slices(w);
        let cols = (per * w.params.group_size as usize).min(w.cols);
        let groups = per.min(w.groups_per_row());
        // Per group: itself, the staging steps and 4 rows' shifts; then 4 + 16 stores.
        // matmul_dot4 runs fewer (a quarter of the staging steps and of the columns).
        self.check_loops("matmul", (cols + groups * (1 + MATMUL_STAGE_STEPS + 4) + 20) as u64)?;
        self.check_loops("matmul_reduce", slices as u64)
    }

    /// renorm_top then renorm over the `nt` tokens whose exact sums (`[tokens, n]` i64) are
    /// in `sb` and whose exponents are in `xb` on the device (row exponents `rb`): the
    /// mantissa and exponent buffers, left there.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn renorm_on_device(
        &self,
        rec: &mut Rec,
        sb: &Buf,
        xb: &Buf,
        rb: &Buf,
        nt: usize,
        n: usize,
        bits: u32,
    ) -> Result<(Buf, Buf), Error> {
        let chunks = n.div_ceil(self.chunks.renorm).max(1);
        let top = self.upload_i32("renorm.top", &vec![i32::MIN; nt]);
        let tp = up::RenormTop {
            tokens: nt as u32,
            n: n as u32,
            bits,
            chunks: chunks as u32,
            chunk: self.chunks.renorm as u32,
            ..Default::default()
        };
        self.record_split(rec, ("renorm_top.wgsl", "renorm_top"), tp, &[sb, xb, rb, &top], nt * chunks)?;
        let mb = self.zeroed("renorm.mants", (nt * n * 4) as u64);
        let eb = self.zeroed("renorm.exps", (nt * 4) as u64);
        let rp = up::Renorm { tokens: nt as u32, n: n as u32, bits, offset: 0 };
        self.record_split(rec, ("renorm.wgsl", "renorm"), rp, &[sb, xb, rb, &top, &mb, &eb], nt * n)?;
        rec.keep(top);
        Ok((mb, eb))
    }

    /// renorm's loop bound: renorm_top walks at most `chunks.renorm` outputs per
    /// invocation; renorm none.
    pub(crate) fn check_renorm_loops(&self) -> Result<(), Error> {
        self.check_loops("renorm", self.chunks.renorm as u64)
    }

    /// swiglu's loop bound: one element per invocation, the sigmoid's 32-step division the
    /// only loop.
    pub(crate) fn check_swiglu_loops(&self) -> Result<(), Error> {
        self.check_loops("swiglu", 64)
    }

    /// rope's loop bound per invocation (one token).
    pub(crate) fn check_rope_loops(&self, width: usize) -> Result<(), Error> {
        self.check_loops("rope", 3 * width as u64)
    }

    /// add's loop bound per invocation (one token).
    pub(crate) fn check_add_loops(&self, width: usize) -> Result<(), Error> {
        self.check_loops("add", 3 * width as u64)
    }

    /// RoPE's tables uploaded.
    pub(crate) fn upload_rope(&self, t: &RopeTables) -> RopeBufs {
        RopeBufs { cos: self.upload_i32("rope.cos", &t.cos), sin: self.upload_i32("rope.sin", &t.sin) }
    }

    /// `x · wᵀ` by resident weights `r` (of shape `w`), rounded once per token to `bits`
    /// (`matmul_prepared` then `renorm`), on the device.
    pub(crate) fn linear_dev(
        &self,
        rec: &mut Rec,
        x: &DevTokens,
        w: &GroupFixed,
        r: &Resident,
        bits: u32,
    ) -> Result<DevTokens, Error> {
        let (t, n) = (x.tokens, r.rows);
        let sb = self.matmul_on_device(rec, &x.mants, t, w, n, [&r.w, &r.we, &r.re])?;
        let (mants, exps) = self.renorm_on_device(rec, &sb, &x.exps, &r.re, t, n, bits)?;
        rec.keep(sb);
        Ok(DevTokens { mants, exps, tokens: t, width: n })
    }

    /// The resident form of `p` when it holds the whole of its weights (`prepare_matmul`
    /// keeps only weights that fit one binding).
    pub(crate) fn resident_of<'p>(&self, p: &'p Prepared) -> Option<(&'p GroupFixed, &'p Resident)> {
        let w = p.weights()?;
        p.form::<Resident>().filter(|r| r.rows == w.rows && r.cols == w.cols).map(|r| (w, r))
    }

    /// nll_max and nll_sum walk one chunk of the vocabulary (plus the chunk maxima); nll the
    /// chunks.
    fn check_nll_loops(&self, v: usize) -> Result<(), Error> {
        self.check_loops("nll", (self.chunks.nll + v.div_ceil(self.chunks.nll).max(1)) as u64)
    }

    /// Σ NLL of each of `targets.len()` tokens whose logits (`[tokens, v]` mantissas `lb`,
    /// exponents `eb`) are on the device; only the per-token results come back.
    #[allow(clippy::too_many_arguments)]
    fn nll_on_device(
        &self,
        lb: &Buf,
        eb: &Buf,
        targets: &[u32],
        v: usize,
        t: &NllTables,
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>, Error> {
        let nt = targets.len();
        let chunks = v.div_ceil(self.chunks.nll).max(1);
        let mut rec = self.rec();
        let tb = self.upload_words("nll.targets", targets);
        let cmax = self.zeroed("nll.cmax", (nt * chunks * 4) as u64);
        let psum = self.zeroed("nll.psum", (nt * chunks * 8) as u64);
        let (tokens, vocab, nchunks, chunk) = (nt as u32, v as u32, chunks as u32, self.chunks.nll as u32);
        let pm = up::NllMax { tokens, vocab, chunks: nchunks, chunk, ..Default::default() };
        self.record_split(&mut rec, ("nll_max.wgsl", "nll_max"), pm, &[lb, &cmax], nt * chunks)?;
        let ps = up::NllSum {
            tokens,
            vocab,
            chunks: nchunks,
            log2e_q30: ec.log2e_q30,
            ln2_q30: ec.ln2_q30,
            chunk,
            ..Default::default()
        };
        self.record_split(&mut rec, ("nll_sum.wgsl", "nll_sum"), ps, &[lb, eb, &cmax, &t.exp, &psum], nt * chunks)?;
        let params = self.params(&up::Nll {
            tokens,
            vocab,
            chunks: nchunks,
            inv_ln2_q30: lc.inv_ln2_q30,
            ln2_q28: lc.ln2_q28,
            ..Default::default()
        });
        let o = self.zeroed("nll.out", (nt * 8) as u64);
        let bind = [&params, lb, eb, &tb, &cmax, &psum, &t.log2, &t.recip, &o];
        self.record(&mut rec, "nll.wgsl", "nll", &bind, nt as u64)?;
        let w = words_le(&self.read_after(rec, &[&o])?[0]);
        Ok((0..nt).map(|i| i64_at(&w, i)).collect())
    }

    /// `matmul` of checked arguments, with `w` already on the device where `resident` is
    /// given (used for every row chunk that is the whole matrix).
    fn matmul_with(&self, x: &TokenFixed, w: &GroupFixed, resident: Option<&Resident>) -> Result<ExactSums, Error> {
        self.check_matmul_loops(w)?;
        let (t, n, k) = (x.tokens, w.rows, w.cols);
        let slices = self.matmul_slices(w).1;
        let gpr = w.groups_per_row();
        let re = match resident {
            Some(r) => r.row_exps.clone(),
            None => crate::backend::cpu::linear::row_exps(w),
        };
        let mut sums = vec![0i64; t * n];
        if t * n == 0 {
            return Ok(ExactSums { tokens: t, n, sums, row_exps: re });
        }
        // Split tokens and weight rows so that x, w and the 8-byte outputs (per slice) fit a
        // binding.
        let sums_per_binding = (self.max_binding / 8) as usize / slices;
        if sums_per_binding == 0 {
            return Err(bad_input!(
                "{}: the {slices} partial sums of one output exceed the device's {} byte storage binding",
                self.info.name,
                self.max_binding
            ));
        }
        let tokens_per_chunk = self.rows_per_chunk(k, 4)?.min(sums_per_binding);
        let rows_per_chunk = self.rows_per_chunk(k, 4)?;
        let mut t0 = 0;
        while t0 < t {
            let t1 = (t0 + tokens_per_chunk).min(t);
            let xb = self.upload_i32("matmul.x", &x.mants[t0 * k..t1 * k]);
            let out_rows = (sums_per_binding / (t1 - t0)).clamp(1, rows_per_chunk);
            let mut o0 = 0;
            while o0 < n {
                let o1 = (o0 + out_rows).min(n);
                let mut rec = self.rec();
                let ob = match resident {
                    Some(r) if o0 == 0 && o1 == n => {
                        self.matmul_on_device(&mut rec, &xb, t1 - t0, w, n, [&r.w, &r.we, &r.re])?
                    }
                    _ => {
                        let wb = self.upload_i32("matmul.w", &w.mantissas[o0 * k..o1 * k]);
                        let we = self.upload_i32("matmul.wexp", &w.exponents[o0 * gpr..o1 * gpr]);
                        let rb = self.upload_i32("matmul.rexp", &re[o0..o1]);
                        let ob = self.matmul_on_device(&mut rec, &xb, t1 - t0, w, o1 - o0, [&wb, &we, &rb])?;
                        for b in [wb, we, rb] {
                            rec.keep(b);
                        }
                        ob
                    }
                };
                let words = words_le(&self.read_after(rec, &[&ob])?[0]);
                for lt in 0..t1 - t0 {
                    for lo in 0..o1 - o0 {
                        let i = lt * (o1 - o0) + lo;
                        sums[(t0 + lt) * n + o0 + lo] = i64_at(&words, i);
                    }
                }
                o0 = o1;
            }
            t0 = t1;
        }
        Ok(ExactSums { tokens: t, n, sums, row_exps: re })
    }
}

impl GpuBackend {
    /// Record `total` invocations of a kernel whose first binding is `params`, in as many
    /// dispatches as the device grid needs, each with its first element in the parameters'
    /// offset (the kernel indexes from it).
    pub(crate) fn record_split<P: Split>(
        &self,
        rec: &mut Rec,
        (file, entry): (&'static str, &'static str),
        params: P,
        others: &[&super::Buf],
        total: usize,
    ) -> Result<(), Error> {
        let cap = ((self.max_groups_per_dim as u64).pow(2) * 64).min(1 << 31) as usize;
        let mut off = 0;
        while off < total {
            let mut p = params;
            p.set_offset(off as u32);
            let pb = self.params(&p);
            let mut bind: Vec<&super::Buf> = vec![&pb];
            bind.extend(others.iter().copied());
            self.record(rec, file, entry, &bind, (total - off).min(cap) as u64)?;
            rec.keep(pb);
            off += cap;
        }
        Ok(())
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!("{}: {} ({})", super::backend_label(self.info.backend), self.info.name, self.info.driver_info)
    }

    fn api(&self) -> &'static str {
        super::backend_label(self.info.backend)
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
        self.check_loops("ingest", 2 * params.group_size as u64)?;
        let gpr = cols.div_ceil(params.group_size as usize);
        let mut exponents = vec![0i32; rows * gpr];
        let mut mantissas = vec![0i32; rows * cols];
        if rows * cols == 0 {
            return Ok(GroupFixed { rows, cols, params, exponents, mantissas });
        }
        // Mantissas (4 bytes per element) are the largest binding; split by rows so each
        // chunk's bindings fit. Rows are independent, so the split never changes results.
        let rows_per_chunk = self.rows_per_chunk(cols, 4)?;
        let esize = dtype.size_bytes();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rows_per_chunk).min(rows);
            let n = (r1 - r0) * cols;
            let groups = (r1 - r0) * gpr;
            let params_buf = self.params(&up::Ingest {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                group_size: params.group_size,
                mant_bits: params.mantissa_bits,
                dtype: dtype.shader_code(),
                groups_per_row: gpr as u32,
                total_groups: groups as u32,
                _pad: 0,
            });
            let input = self.upload("ingest.src", &src[r0 * cols * esize..r1 * cols * esize]);
            let exps = self.zeroed("ingest.exps", groups as u64 * 4);
            let mants = self.zeroed("ingest.mants", n as u64 * 4);
            let bad = self.upload_words("ingest.bad", &[u32::MAX]);
            self.dispatch("ingest.wgsl", "ingest", &[&params_buf, &input, &exps, &mants, &bad], groups as u64)?;
            let bad_index = words_le(&self.read(&bad)?)[0];
            if bad_index != u32::MAX {
                return Err(KernelError::NonFinite { index: r0 * cols + bad_index as usize });
            }
            let e = self.read(&exps)?;
            let m = self.read(&mants)?;
            for (dst, w) in exponents[r0 * gpr..r1 * gpr].iter_mut().zip(e.chunks_exact(4)) {
                *dst = i32::from_le_bytes(w.try_into().unwrap());
            }
            for (dst, w) in mantissas[r0 * cols..r1 * cols].iter_mut().zip(m.chunks_exact(4)) {
                *dst = i32::from_le_bytes(w.try_into().unwrap());
            }
            r0 = r1;
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
        // 257 scale codes scanned, of which at most 33 (steps within [t*/2, 2t*]: two
        // octaves of 16 E4M4 codes) × 3 zero points evaluate the group; plus three passes.
        self.check_loops("quantize", 300 + 102 * (p.group_size as u64 + 1))?;
        let (rows, cols) = (x.rows, x.cols);
        let gpr = x.groups_per_row();
        let mut codes = vec![0u8; rows * cols];
        let mut scales = vec![0u8; rows * gpr];
        let mut zeros = vec![0u8; rows * gpr];
        let rows_per_chunk = self.rows_per_chunk(cols, 4)?;
        let h = self.upload_words("quantize.importance", importance);
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rows_per_chunk).min(rows);
            let groups = (r1 - r0) * gpr;
            let params = self.params(&up::Quantize {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                group_size: p.group_size,
                bits: p.bits,
                base_exp,
                groups_per_row: gpr as u32,
                total_groups: groups as u32,
                _pad: 0,
            });
            let m = self.upload_i32("quantize.mants", &x.mantissas[r0 * cols..r1 * cols]);
            let e = self.upload_i32("quantize.exps", &x.exponents[r0 * gpr..r1 * gpr]);
            let c = self.zeroed("quantize.codes", ((r1 - r0) * cols * 4) as u64);
            let meta = self.zeroed("quantize.meta", groups as u64 * 4);
            self.dispatch("quantize.wgsl", "quantize", &[&params, &m, &e, &h, &c, &meta], groups as u64)?;
            for (dst, w) in codes[r0 * cols..r1 * cols].iter_mut().zip(words_le(&self.read(&c)?)) {
                *dst = w as u8;
            }
            for (i, w) in words_le(&self.read(&meta)?).into_iter().take(groups).enumerate() {
                scales[r0 * gpr + i] = w as u8;
                zeros[r0 * gpr + i] = (w >> 8) as u8;
            }
            r0 = r1;
        }
        Ok(QuantTensor { rows, cols, params: p, base_exp, codes, scales, zeros, overlay: None })
    }

    fn dequantize(&self, q: &QuantTensor, dtype: DType) -> Result<Vec<u8>, KernelError> {
        let (rows, cols) = (q.rows, q.cols);
        let esize = dtype.size_bytes();
        let mut out = vec![0u8; rows * cols * esize];
        if out.is_empty() {
            return Ok(out);
        }
        let gpr = q.groups_per_row();
        let rows_per_chunk = self.rows_per_chunk(cols, 4)?;
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + rows_per_chunk).min(rows);
            let count = (r1 - r0) * cols;
            let words = (count * esize).div_ceil(4);
            let params = self.params(&up::Dequantize {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                group_size: q.params.group_size,
                dtype: dtype.shader_code(),
                base_exp: q.base_exp,
                groups_per_row: gpr as u32,
                count: count as u32,
                words: words as u32,
                rank: q.overlay.as_ref().map_or(0, |o| o.rank as u32),
                overlay_exp: q.overlay.as_ref().map_or(0, |o| o.exp),
                ..Default::default()
            });
            let codes = self.upload("dequantize.codes", &q.codes[r0 * cols..r1 * cols]);
            let (ov_u, ov_v, ov_s) = match &q.overlay {
                None => (self.zeroed("ov.u", 4), self.zeroed("ov.v", 4), self.zeroed("ov.s", 4)),
                Some(o) => {
                    let r = o.rank;
                    let as_bytes = |v: &[i8]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
                    let s: Vec<u32> = o.mu[r0..r1].iter().chain(&o.mv).map(|&m| m as u32).collect();
                    (
                        self.upload("ov.u", &as_bytes(&o.u[r0 * r..r1 * r])),
                        self.upload("ov.v", &as_bytes(&o.v)),
                        self.upload_words("ov.s", &s),
                    )
                }
            };
            let meta: Vec<u32> = (r0 * gpr..r1 * gpr).map(|g| q.scales[g] as u32 | (q.zeros[g] as u32) << 8).collect();
            let meta = self.upload_words("dequantize.meta", &meta);
            let o = self.zeroed("dequantize.out", words as u64 * 4);
            let bad = self.upload_words("dequantize.bad", &[u32::MAX]);
            self.dispatch(
                "dequantize.wgsl",
                "dequantize",
                &[&params, &codes, &meta, &o, &bad, &ov_u, &ov_v, &ov_s],
                words as u64,
            )?;
            let bad_index = words_le(&self.read(&bad)?)[0];
            if bad_index != u32::MAX {
                return Err(KernelError::Overflow { index: r0 * cols + bad_index as usize });
            }
            out[r0 * cols * esize..r1 * cols * esize].copy_from_slice(&self.read(&o)?[..count * esize]);
            r0 = r1;
        }
        Ok(out)
    }

    fn matmul(&self, x: &TokenFixed, w: &GroupFixed) -> Result<ExactSums, Error> {
        check_matmul_args(x, w)?;
        self.matmul_with(x, w, None)
    }

    fn prepare_matmul(&self, w: GroupFixed) -> Result<Prepared, Error> {
        check_matmul_weights(&w)?;
        // Kept on the device when the whole matrix fits one binding (every SmolLM2 linear
        // and its lm_head do) and the caller's allowance: the forward pass multiplies every
        // window, and every lm_head chunk, by the same weights, which were otherwise
        // uploaded again each time. The host keeps its copy either way (products beyond the
        // device's bindings, and the CPU's checks, read it).
        let bytes = ((w.mantissas.len() + w.exponents.len() + w.rows) * 4) as u64;
        let limit = self.resident_limit.load(Ordering::Relaxed);
        if (w.rows * w.cols * 4) as u64 > self.max_binding() || w.rows * w.cols == 0 {
            return Ok(Prepared::plain(w));
        }
        // Reserve the bytes, or give them back when over the allowance.
        if self.resident.fetch_add(bytes, Ordering::Relaxed) + bytes > limit {
            self.resident.fetch_sub(bytes, Ordering::Relaxed);
            return Ok(Prepared::plain(w));
        }
        let re = crate::backend::cpu::linear::row_exps(&w);
        let resident = Resident {
            w: self.upload_i32("matmul.w", &w.mantissas),
            we: self.upload_i32("matmul.wexp", &w.exponents),
            re: self.upload_i32("matmul.rexp", &re),
            rows: w.rows,
            cols: w.cols,
            row_exps: re,
            bytes,
            count: self.resident.clone(),
        };
        // Device bytes: counted by `resident_weight_bytes`, not as host bytes.
        Ok(Prepared::with_form(w, Box::new(resident), 0))
    }

    fn head_nll(
        &self,
        x: &TokenFixed,
        p: &Prepared,
        bits: u32,
        targets: &[u32],
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>, Error> {
        let w = p.weights().ok_or_else(|| bad_input!("matmul: weights prepared by another backend"))?;
        let (t, n, k) = (x.tokens, w.rows, w.cols);
        let fused = match p.form::<Resident>() {
            // On the device from end to end when the weights are kept there, every binding
            // holds the whole chunk (x, the i64 sums, the logits) and the arguments are
            // inside nll's contract; otherwise the steps one by one, which report errors.
            Some(r)
                if r.rows == n
                    && r.cols == k
                    && t > 0
                    && (t * k * 4) as u64 <= self.max_binding()
                    && (t * n * 8 * self.matmul_slices(w).1) as u64 <= self.max_binding()
                    && bits <= 24
                    && n <= 1 << 20
                    && targets.len() == t
                    && targets.iter().all(|&id| (id as usize) < n) =>
            {
                Some(r)
            }
            _ => None,
        };
        let Some(r) = fused else {
            let s = self.matmul_prepared(x, p)?;
            return self.renorm_nll(&s, &x.exps, bits, targets, ec, lc);
        };
        check_matmul_acts(x, n, k)?;
        self.check_matmul_loops(w)?;
        self.check_renorm_loops()?;
        self.check_nll_loops(n)?;
        let mut rec = self.rec();
        let xd = self.upload_tokens("head.x", x, 0, t);
        let logits = self.linear_dev(&mut rec, &xd, w, r, bits)?;
        xd.keep_in(&mut rec);
        // nll's contract on exponents (mantissas are within 2^23 at bits <= 24).
        if words_le(&self.read_after(rec, &[&logits.exps])?[0]).iter().any(|&e| e as i32 > 8) {
            return Err(bad_input!("nll: logits mantissas exceed 2^23 or exponents exceed 8"));
        }
        self.nll_on_device(&logits.mants, &logits.exps, targets, n, &NllTables::upload(self, ec, lc), ec, lc)
    }

    fn allow_resident_weights(&self, bytes: u64) {
        self.resident_limit.store(bytes, Ordering::Relaxed);
    }

    fn resident_weight_bytes(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    fn matmul_prepared(&self, x: &TokenFixed, p: &Prepared) -> Result<ExactSums, Error> {
        let w = p.weights().ok_or_else(|| bad_input!("matmul: weights prepared by another backend"))?;
        match self.resident_of(p) {
            Some((_, r)) => {
                check_matmul_acts(x, w.rows, w.cols)?;
                self.matmul_with(x, w, Some(r))
            }
            None => self.matmul(x, w),
        }
    }

    fn renorm(&self, s: &ExactSums, x_exps: &[i32], bits: u32) -> Result<TokenFixed, Error> {
        check_renorm_args(s, x_exps, bits)?;
        self.check_renorm_loops()?;
        let (t, n) = (s.tokens, s.n);
        let rb = self.upload_i32("renorm.rexp", &s.row_exps);
        self.host_token_chunks(t, n, self.rows_per_chunk(n, 8)?, |rec, t0, t1| {
            let sb = match super::le_bytes(&s.sums[t0 * n..t1 * n]) {
                Some(bytes) => self.upload("renorm.sums", bytes),
                None => self.upload_words(
                    "renorm.sums",
                    &s.sums[t0 * n..t1 * n]
                        .iter()
                        .flat_map(|&v| [v as u32, (v as u64 >> 32) as u32])
                        .collect::<Vec<_>>(),
                ),
            };
            let xb = self.upload_i32("renorm.xexp", &x_exps[t0..t1]);
            let (mants, exps) = self.renorm_on_device(rec, &sb, &xb, &rb, t1 - t0, n, bits)?;
            rec.keep(sb);
            rec.keep(xb);
            Ok(DevTokens { mants, exps, tokens: t1 - t0, width: n })
        })
    }

    fn rms_norm(&self, x: &TokenFixed, gamma: &GroupFixed, c: &RmsConsts, bits: u32) -> Result<TokenFixed, Error> {
        crate::backend::check_rms_args(x, gamma, c, bits)?;
        self.check_rms_loops(x.width)?;
        let g = self.upload_i32("rms.gamma", &gamma.mantissas);
        let seed = self.upload_words("rms.seed", &c.seed);
        self.host_token_chunks(x.tokens, x.width, self.rows_per_chunk(x.width, 4)?, |rec, t0, t1| {
            let xd = self.upload_tokens("rms.x", x, t0, t1);
            let y = self.rms_norm_dev(rec, &xd, &g, gamma.exponents[0], &seed, c, bits)?;
            xd.keep_in(rec);
            Ok(y)
        })
    }

    fn swiglu(&self, gate: &TokenFixed, up: &TokenFixed, c: &ExpConsts, bits: u32) -> Result<TokenFixed, Error> {
        crate::backend::check_swiglu_args(gate, up, bits)?;
        self.check_swiglu_loops()?;
        self.check_renorm_loops()?;
        let table = self.upload_words("swiglu.table", &c.table);
        // z is 8 bytes per element: split tokens so it fits a binding.
        self.host_token_chunks(gate.tokens, gate.width, self.rows_per_chunk(gate.width, 8)?, |rec, t0, t1| {
            let g = self.upload_tokens("swiglu.g", gate, t0, t1);
            let u = self.upload_tokens("swiglu.u", up, t0, t1);
            let y = self.swiglu_dev(rec, &g, &u, &table, c, bits)?;
            g.keep_in(rec);
            u.keep_in(rec);
            Ok(y)
        })
    }

    fn rope(&self, x: &TokenFixed, positions: &[u32], t: &RopeTables, bits: u32) -> Result<TokenFixed, Error> {
        crate::backend::check_rope_args(x, positions, t, bits)?;
        self.check_rope_loops(x.width)?;
        let tables = self.upload_rope(t);
        self.host_token_chunks(x.tokens, x.width, self.rows_per_chunk(x.width, 4)?, |rec, t0, t1| {
            let xd = self.upload_tokens("rope.x", x, t0, t1);
            let pos = self.upload_words("rope.pos", &positions[t0..t1]);
            let y = self.rope_dev(rec, &xd, &pos, &tables, t.head_dim, bits)?;
            xd.keep_in(rec);
            rec.keep(pos);
            Ok(y)
        })
    }

    fn add(&self, x: &TokenFixed, y: &TokenFixed, bits: u32) -> Result<TokenFixed, Error> {
        crate::backend::check_add_args(x, y, bits)?;
        self.check_add_loops(x.width)?;
        self.host_token_chunks(x.tokens, x.width, self.rows_per_chunk(x.width, 4)?, |rec, t0, t1| {
            let a = self.upload_tokens("add.a", x, t0, t1);
            let b = self.upload_tokens("add.b", y, t0, t1);
            let out = self.add_dev(rec, &a, &b, bits)?;
            a.keep_in(rec);
            b.keep_in(rec);
            Ok(out)
        })
    }

    fn nll(&self, l: &TokenFixed, targets: &[u32], ec: &ExpConsts, lc: &LogConsts) -> Result<Vec<i64>, Error> {
        crate::backend::check_nll_args(l, targets)?;
        self.check_nll_loops(l.width)?;
        let (n, v) = (l.tokens, l.width);
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return Ok(out);
        }
        let tokens_per_chunk = self.rows_per_chunk(v, 4)?;
        let tables = NllTables::upload(self, ec, lc);
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + tokens_per_chunk).min(n);
            let lb = self.upload_i32("nll.logits", &l.mants[t0 * v..t1 * v]);
            let eb = self.upload_i32("nll.lexp", &l.exps[t0..t1]);
            out.extend(self.nll_on_device(&lb, &eb, &targets[t0..t1], v, &tables, ec, lc)?);
            t0 = t1;
        }
        Ok(out)
    }

    fn attention(
        &self,
        q: &TokenFixed,
        k: &TokenFixed,
        v: &TokenFixed,
        s: &crate::backend::cpu::attention::AttnShape,
        ec: &ExpConsts,
        bits: u32,
    ) -> Result<TokenFixed, Error> {
        crate::backend::check_attention_args(q, k, v, s, bits)?;
        let plan = self.attention_plan(q.tokens, s)?;
        let t = q.tokens;
        let mut rec = self.rec();
        let (qd, kd, vd) = (
            self.upload_tokens("attn.q", q, 0, t),
            self.upload_tokens("attn.k", k, 0, t),
            self.upload_tokens("attn.v", v, 0, t),
        );
        let table = self.upload_words("attn.table", &ec.table);
        let y = self.attention_dev(&mut rec, &qd, &kd, &vd, &table, &plan, s, ec, bits)?;
        self.read_token_tensor(rec, &y)
    }

    fn decoder_layer(
        &self,
        x: &TokenFixed,
        w: &crate::backend::layer::LayerWeights,
        chunk: usize,
        tap: Option<&mut crate::backend::layer::TapFn>,
    ) -> Result<TokenFixed, Error> {
        self.decoder_layer_on_device(x, w, chunk, tap)
    }

    fn gram_open(&self, cols: usize) -> Result<Option<crate::backend::DeviceGram>, Error> {
        self.gram_open_dev(cols)
    }

    fn gram_add(
        &self,
        acc: &mut crate::backend::DeviceGram,
        x: &[i32],
        tokens: usize,
        align: u32,
        shift: u32,
    ) -> Result<(), Error> {
        self.gram_add_dev(acc, x, tokens, align, shift)
    }

    fn gram_read(&self, acc: &crate::backend::DeviceGram) -> Result<Vec<i64>, Error> {
        self.gram_read_dev(acc)
    }

    fn peak_device_bytes(&self) -> Option<u64> {
        Some(self.mem.peak())
    }

    fn traffic(&self) -> Option<crate::backend::Traffic> {
        Some(self.traffic.snapshot())
    }

    fn wide_ops(&self, cases: &[WideCase]) -> Result<Vec<WideResult>, Error> {
        if cases.is_empty() {
            return Ok(Vec::new());
        }
        // Result words per case bound the chunk.
        let per_chunk = ((self.max_binding / (4 * WideResult::WORDS as u64)) as usize).max(1);
        let mut out = Vec::with_capacity(cases.len());
        for chunk in cases.chunks(per_chunk) {
            let words: Vec<u32> = chunk
                .iter()
                .flat_map(|c| {
                    [c.a as u32, (c.a >> 32) as u32, c.b as u32, (c.b >> 32) as u32, c.x as u32, c.y as u32, c.s, 0]
                })
                .collect();
            let params_buf = self.params(&up::WideOps { count: chunk.len() as u32, ..Default::default() });
            let input = self.upload_words("wide.cases", &words);
            let results = self.zeroed("wide.results", (chunk.len() * 4 * WideResult::WORDS) as u64);
            self.dispatch("wide_ops.wgsl", "wide_ops", &[&params_buf, &input, &results], chunk.len() as u64)?;
            let r = words_le(&self.read(&results)?);
            out.extend(r.chunks_exact(WideResult::WORDS).map(WideResult::from_words));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `const NAME: u32` of a composed kernel, from naga.
    fn wgsl_const(file: &str, name: &str) -> u32 {
        let src = super::super::shaders::compose(file).unwrap().source;
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let (_, c) = module.constants.iter().find(|(_, c)| c.name.as_deref() == Some(name)).unwrap();
        match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v,
            ref e => panic!("{file}: {name} is {e:?}"),
        }
    }

    /// The dispatch's tile and the loop bound's staging steps are matmul.wgsl's: a tile
    /// changed on one side only would leave outputs unwritten or the loop check short.
    #[test]
    fn matmul_tile_constants_match_the_shader() {
        let (tile, step, gmax) =
            (wgsl_const("matmul.wgsl", "TILE"), wgsl_const("matmul.wgsl", "STEP"), wgsl_const("matmul.wgsl", "GMAX"));
        assert_eq!(tile as usize, MATMUL_TILE);
        assert_eq!(step * step, WORKGROUP, "one invocation per (token, row) offset within a step");
        assert_eq!(4 * step, tile, "4 × 4 outputs per invocation");
        assert_eq!((tile * gmax / WORKGROUP) as usize, MATMUL_STAGE_STEPS);
    }

    /// attn_lib.wgsl's query block and key step are the dispatch's and the loop bound's.
    #[test]
    fn attention_block_constants_match_the_shader() {
        use super::super::resident::{ATTN_KB, ATTN_QB};
        let (qb, kb) = (wgsl_const("attn_max.wgsl", "QB"), wgsl_const("attn_max.wgsl", "KB"));
        assert_eq!((qb as usize, kb as usize), (ATTN_QB, ATTN_KB));
        assert_eq!(qb * kb, WORKGROUP, "one invocation per (query, key lane)");
    }

    /// The same for gram.wgsl: chunks of the triangle are whole tiles of its TILE columns
    /// and the loop bound counts its STAGE tokens per stage.
    #[test]
    fn gram_tile_constants_match_the_shader() {
        use super::super::gram::{GRAM_STAGE, GRAM_TILE};
        let (tile, step, stage) =
            (wgsl_const("gram.wgsl", "TILE"), wgsl_const("gram.wgsl", "STEP"), wgsl_const("gram.wgsl", "STAGE"));
        assert_eq!(tile as usize, GRAM_TILE);
        assert_eq!(stage as usize, GRAM_STAGE);
        assert_eq!(step * step, WORKGROUP, "one invocation per (row, column) offset within a step");
        assert_eq!(4 * step, tile, "4 × 4 entries per invocation");
    }
}
