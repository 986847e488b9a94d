//! Token tensors kept on the device and the per-token kernels that take and return them
//! (`*_dev`), recorded into a `Rec`. The host methods of `Backend` upload, call these and
//! read back (kernels.rs); `decoder_layer` chains them for a whole layer (layer.rs). One
//! dispatch sequence per kernel either way.

use super::params as up;
use super::{Buf, GpuBackend, Rec, WORKGROUP, words_le};
use crate::backend::cpu::attention::AttnShape;
use crate::error::Error;
use crate::fixed::tables::{ExpConsts, RmsConsts};
use crate::fixed::tensor::TokenFixed;

/// Queries per workgroup of attn_max.wgsl and attn_sum.wgsl (attn_lib.wgsl's QB).
pub(crate) const ATTN_QB: usize = 8;
/// Key lanes of those workgroups (attn_lib.wgsl's KB); QB × KB = WORKGROUP.
pub(crate) const ATTN_KB: usize = 8;

/// Keys those workgroups stage per step at head_dim `d` (attn_lib.wgsl's attn_step_keys).
pub(crate) fn attn_step_keys(d: usize) -> usize {
    (2048 / d.max(1) / ATTN_KB * ATTN_KB).clamp(ATTN_KB, 64)
}

/// `[tokens, width]` i32 mantissas and one i32 exponent per token, on the device.
pub(crate) struct DevTokens {
    pub mants: Buf,
    pub exps: Buf,
    pub tokens: usize,
    pub width: usize,
}

impl DevTokens {
    /// Give both buffers to `rec` (kept until it is submitted).
    pub fn keep_in(self, rec: &mut Rec) {
        rec.keep(self.mants);
        rec.keep(self.exps);
    }
}

/// RoPE's cos and sin tables on the device.
pub(crate) struct RopeBufs {
    pub cos: Buf,
    pub sin: Buf,
}

/// How attention splits one window's keys (`GpuBackend::attention_plan`).
pub(crate) struct AttnPlan {
    keys_per_chunk: usize,
    pub chunks: usize,
}

impl GpuBackend {
    /// Tokens `t0..t1` of `x` uploaded.
    pub(crate) fn upload_tokens(&self, label: &str, x: &TokenFixed, t0: usize, t1: usize) -> DevTokens {
        let w = x.width;
        DevTokens {
            mants: self.upload_i32(label, &x.mants[t0 * w..t1 * w]),
            exps: self.upload_i32(label, &x.exps[t0..t1]),
            tokens: t1 - t0,
            width: w,
        }
    }

    /// Zero-filled outputs for `tokens × width`.
    fn new_tokens(&self, label: &str, tokens: usize, width: usize) -> DevTokens {
        DevTokens {
            mants: self.zeroed(label, (tokens * width * 4) as u64),
            exps: self.zeroed(label, (tokens * 4) as u64),
            tokens,
            width,
        }
    }

    /// Submit `rec` and read `y` back (one submission), with `extra` token tensors read in
    /// the same submission (returned after `y`, in order).
    pub(crate) fn read_tokens(&self, rec: Rec, y: &DevTokens, extra: &[&DevTokens]) -> Result<Vec<TokenFixed>, Error> {
        let all: Vec<&DevTokens> = std::iter::once(y).chain(extra.iter().copied()).collect();
        let srcs: Vec<&Buf> = all.iter().flat_map(|d| [&d.mants, &d.exps]).collect();
        let bytes = self.read_after(rec, &srcs)?;
        Ok(all
            .iter()
            .zip(bytes.chunks_exact(2))
            .map(|(d, b)| TokenFixed {
                tokens: d.tokens,
                width: d.width,
                mants: words_le(&b[0]).into_iter().take(d.tokens * d.width).map(|v| v as i32).collect(),
                exps: words_le(&b[1]).into_iter().take(d.tokens).map(|v| v as i32).collect(),
            })
            .collect())
    }

    /// Submit `rec` and read `y` back (one submission).
    pub(crate) fn read_token_tensor(&self, rec: Rec, y: &DevTokens) -> Result<TokenFixed, Error> {
        Ok(self.read_tokens(rec, y, &[])?.swap_remove(0))
    }

    /// A per-token kernel over `tokens` host tokens of `width` in chunks of at most
    /// `per_chunk`: each chunk uploaded by `op`, run and read back in one submission.
    pub(crate) fn host_token_chunks(
        &self,
        tokens: usize,
        width: usize,
        per_chunk: usize,
        op: impl Fn(&mut Rec, usize, usize) -> Result<DevTokens, Error>,
    ) -> Result<TokenFixed, Error> {
        let mut out = TokenFixed { tokens, width, exps: Vec::with_capacity(tokens), mants: Vec::new() };
        if tokens * width == 0 {
            out.exps = vec![0; tokens];
            out.mants = vec![0; tokens * width];
            return Ok(out);
        }
        out.mants.reserve(tokens * width);
        let mut t0 = 0;
        while t0 < tokens {
            let t1 = (t0 + per_chunk.max(1)).min(tokens);
            let mut rec = self.rec();
            let y = op(&mut rec, t0, t1)?;
            let y = self.read_token_tensor(rec, &y)?;
            out.mants.extend_from_slice(&y.mants);
            out.exps.extend_from_slice(&y.exps);
            t0 = t1;
        }
        Ok(out)
    }

    /// rms_norm's loop bound: the sum of squares, rsqrt's two Newton steps, the largest
    /// |z|, then either the zero fill or the output loop (exclusive): 3·width + 2
    /// iterations (hidden 16,384 runs on llvmpipe; up to 21,844).
    pub(crate) fn check_rms_loops(&self, width: usize) -> Result<(), Error> {
        self.check_loops("rms_norm", 3 * width as u64 + 2)
    }

    /// RMSNorm of `x` with weights `gamma` (mantissas on the device, one exponent) and
    /// rsqrt seeds `seed` (`Backend::rms_norm`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rms_norm_dev(
        &self,
        rec: &mut Rec,
        x: &DevTokens,
        gamma: &Buf,
        gamma_exp: i32,
        seed: &Buf,
        c: &RmsConsts,
        bits: u32,
    ) -> Result<DevTokens, Error> {
        let (t, w) = (x.tokens, x.width);
        let params = self.params(&up::RmsNorm {
            tokens: t as u32,
            width: w as u32,
            bits,
            gamma_exp,
            he_lo: c.he_m as u32,
            he_hi: (c.he_m >> 32) as u32,
            he_e: c.he_e,
            sh_m: c.sh_m,
            sh_e: c.sh_e,
            ..Default::default()
        });
        let y = self.new_tokens("rms.out", t, w);
        self.record(
            rec,
            "rmsnorm.wgsl",
            "rmsnorm",
            &[&params, &x.mants, &x.exps, gamma, seed, &y.mants, &y.exps],
            t as u64,
        )?;
        rec.keep(params);
        Ok(y)
    }

    /// RoPE of `x` (positions in `pos`, one per token) with `head_dim`-wide heads.
    pub(crate) fn rope_dev(
        &self,
        rec: &mut Rec,
        x: &DevTokens,
        pos: &Buf,
        tables: &RopeBufs,
        head_dim: usize,
        bits: u32,
    ) -> Result<DevTokens, Error> {
        let (t, w) = (x.tokens, x.width);
        let params = self.params(&up::Rope { tokens: t as u32, width: w as u32, head_dim: head_dim as u32, bits });
        let y = self.new_tokens("rope.out", t, w);
        let bind = [&params, &x.mants, &x.exps, pos, &tables.cos, &tables.sin, &y.mants, &y.exps];
        self.record(rec, "rope.wgsl", "rope", &bind, t as u64)?;
        rec.keep(params);
        Ok(y)
    }

    /// Residual add `a + b` per token.
    pub(crate) fn add_dev(&self, rec: &mut Rec, a: &DevTokens, b: &DevTokens, bits: u32) -> Result<DevTokens, Error> {
        let (t, w) = (a.tokens, a.width);
        let params = self.params(&up::Add { tokens: t as u32, width: w as u32, bits, _pad: 0 });
        let y = self.new_tokens("add.out", t, w);
        self.record(
            rec,
            "add.wgsl",
            "add",
            &[&params, &a.mants, &b.mants, &a.exps, &b.exps, &y.mants, &y.exps],
            t as u64,
        )?;
        rec.keep(params);
        Ok(y)
    }

    /// SwiGLU `silu(g) · u` per token: the exact products z (swiglu_z), their exponent
    /// ge + ue − 8 per token (exp_add), and one renorm with zero row exponents, which is
    /// exactly the twin's renorm_row.
    pub(crate) fn swiglu_dev(
        &self,
        rec: &mut Rec,
        g: &DevTokens,
        u: &DevTokens,
        table: &Buf,
        c: &ExpConsts,
        bits: u32,
    ) -> Result<DevTokens, Error> {
        let (t, w) = (g.tokens, g.width);
        let params = up::Swiglu {
            tokens: t as u32,
            width: w as u32,
            bits,
            ln2_q30: c.ln2_q30,
            log2e_q30: c.log2e_q30,
            ..Default::default()
        };
        let z = self.zeroed("swiglu.z", (t * w * 8) as u64);
        self.record_split(rec, ("swiglu.wgsl", "swiglu_z"), params, &[&g.mants, &u.mants, &g.exps, table, &z], t * w)?;
        let ep = self.params(&up::ExpAdd { tokens: t as u32, bias: -8, ..Default::default() });
        let zexp = self.zeroed("swiglu.zexp", (t * 4) as u64);
        self.record(rec, "exp_add.wgsl", "exp_add", &[&ep, &g.exps, &u.exps, &zexp], t as u64)?;
        let zero_rows = self.zeroed("swiglu.rexp", (w * 4) as u64);
        let (mants, exps) = self.renorm_on_device(rec, &z, &zexp, &zero_rows, t, w, bits)?;
        for b in [ep, z, zexp, zero_rows] {
            rec.keep(b);
        }
        Ok(DevTokens { mants, exps, tokens: t, width: w })
    }

    /// How attention over a window of `t` tokens splits its keys: at least
    /// `chunks.attn_keys` per chunk, more when the partial sums of V ([T, heads, chunks, d]
    /// × 8 bytes) would not fit one binding (integer maxima and sums over chunks: the
    /// choice cannot change a bit); errors where the window exceeds the device's bindings
    /// or loop limit.
    pub(crate) fn attention_plan(&self, t: usize, s: &AttnShape) -> Result<AttnPlan, Error> {
        let (w, h, d) = (s.heads * s.head_dim, s.heads, s.head_dim);
        let too_big = || bad_input!("attention: a window of {t} tokens exceeds the device binding");
        // One window at a time: its q, k, v and head outputs must fit a binding.
        if self.rows_per_chunk(w, 4)? < t {
            return Err(too_big());
        }
        let per_chunk_bytes = (t * h * d * 8) as u64;
        let max_chunks = (self.max_binding / per_chunk_bytes.max(1)) as usize;
        if max_chunks == 0 {
            return Err(too_big());
        }
        let kc = self.chunks.attn_keys.max(t.div_ceil(max_chunks));
        let chunks = t.div_ceil(kc);
        let (kc64, d64, c64) = (kc as u64, d as u64, chunks as u64);
        if self.attn_workgroups() {
            // attn_max and attn_sum (a workgroup per block of ATTN_QB queries, `sk` keys per
            // step): the queries' staging, the steps (staging, a lane's dots, its weights,
            // the weighted values' dimensions over the step's keys), the lanes' reduction.
            let (qb, kb, sk) = (ATTN_QB as u64, ATTN_KB as u64, attn_step_keys(d) as u64);
            let (steps, dims, lane_keys) = (kc64.div_ceil(sk), d64.div_ceil(kb), sk.div_ceil(kb));
            let (q_stage, k_stage) = ((qb * d64).div_ceil(64), (sk * d64).div_ceil(64));
            let step_max = 1 + k_stage + lane_keys * (1 + d64);
            self.check_loops("attention (chunk maxima)", q_stage + steps * step_max + kb)?;
            let step_sum = step_max + lane_keys + dims * (1 + sk);
            self.check_loops("attention (chunk sums)", c64 + q_stage + steps * step_sum + dims + kb)?;
        } else {
            // attn_max_rows and attn_sum_rows: one invocation walks its chunk's keys.
            self.check_loops("attention (chunk maxima)", kc64 * (d64 + 2))?;
            self.check_loops("attention (chunk sums)", 2 * c64 + d64 + kc64 * (2 * d64 + 3))?;
        }
        self.check_loops("attention (division)", c64 + d64 * (c64 + 40))?;
        self.check_loops("attention renorm", 3 * w as u64)?;
        Ok(AttnPlan { keys_per_chunk: kc, chunks })
    }

    /// Causal grouped-query attention over one window (`Backend::attention`), keys split
    /// as `plan` says; `table` is the exp table.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_dev(
        &self,
        rec: &mut Rec,
        q: &DevTokens,
        k: &DevTokens,
        v: &DevTokens,
        table: &Buf,
        plan: &AttnPlan,
        s: &AttnShape,
        ec: &ExpConsts,
        bits: u32,
    ) -> Result<DevTokens, Error> {
        let (t, w, h, d) = (q.tokens, q.width, s.heads, s.head_dim);
        let chunks = plan.chunks;
        let params = up::Attn {
            tokens: t as u32,
            heads: h as u32,
            kv_heads: s.kv_heads as u32,
            head_dim: d as u32,
            scale_q30: s.scale_q30,
            log2e_q30: ec.log2e_q30,
            ln2_q30: ec.ln2_q30,
            bits,
            kc: plan.keys_per_chunk as u32,
            chunks: chunks as u32,
            ..Default::default()
        };
        // The kernels read q's, k's and v's token exponents from one buffer, in that order.
        let eb = self.zeroed("attn.exps", (3 * t * 4) as u64);
        for (i, x) in [q, k, v].into_iter().enumerate() {
            rec.copy(&x.exps, &eb, (i * t * 4) as u64, (t * 4) as u64);
        }
        let n = t * h * chunks;
        // One workgroup per (block of ATTN_QB queries, head, chunk), or one invocation per
        // (query, head, chunk).
        let (max_entry, sum_entry, invocations) = if self.attn_workgroups() {
            ("attn_max", "attn_sum", t.div_ceil(ATTN_QB) * h * chunks * WORKGROUP as usize)
        } else {
            ("attn_max_rows", "attn_sum_rows", n)
        };
        let smax = self.zeroed("attn.smax", (n * 8) as u64);
        let cev = self.zeroed("attn.cev", (n * 4) as u64);
        let bind = [&q.mants, &k.mants, &eb, &smax, &cev];
        self.record_split(rec, ("attn_max.wgsl", max_entry), params, &bind, invocations)?;
        let pz = self.zeroed("attn.pz", (n * 8) as u64);
        let pa = self.zeroed("attn.pa", (n * d * 8) as u64);
        let bind = [&q.mants, &k.mants, &v.mants, &eb, table, &smax, &cev, &pz, &pa];
        self.record_split(rec, ("attn_sum.wgsl", sum_entry), params, &bind, invocations)?;
        let ho = self.zeroed("attn.ho", (t * w * 4) as u64);
        let he = self.zeroed("attn.he", (t * h * 4) as u64);
        self.record_split(rec, ("attention.wgsl", "attention"), params, &[&pz, &pa, &cev, &ho, &he], t * h)?;
        let p2 =
            self.params(&up::AttnRenorm { tokens: t as u32, heads: s.heads as u32, head_dim: s.head_dim as u32, bits });
        let y = self.new_tokens("attn.out", t, w);
        self.record(rec, "attn_renorm.wgsl", "attn_renorm", &[&p2, &ho, &he, &y.mants, &y.exps], t as u64)?;
        for b in [eb, smax, cev, pz, pa, ho, he, p2] {
            rec.keep(b);
        }
        Ok(y)
    }
}
