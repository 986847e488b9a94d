//! One decoder layer in fixed point: its weights ingested for `matmul`, and the layer
//! applied to one window of hidden states.
//!
//! Widths (DESIGN §4, the "within 0.01%" set measured by simulation on SmolLM2-135M):
//! residual stream 20 bits, matrix-product inputs 18, q/k/v 16 (after RoPE), SwiGLU output
//! 18 (it is down_proj's input), weights 16-bit mantissas per group of 64. Branch outputs
//! (o_proj, down_proj, biased projections) are rounded once to 22 bits before the add that
//! rounds them into the stream, so the add, not the branch, is the rounding that counts.

use super::source::Tensors;
use crate::backend::cpu::attention::AttnShape;
use crate::backend::{Backend, Prepared};
use crate::error::Result;
use crate::fixed::round::shr_round_any;
use crate::fixed::tables::{ExpConsts, LogConsts, RmsConsts, RopeTables};
use crate::fixed::tensor::{ExactSums, GroupFixed, IngestParams, TokenFixed, align_row_exponents, matmul_max_spread};
use crate::model::ModelConfig;

pub const RESIDUAL_BITS: u32 = 20;
pub const ACT_BITS: u32 = 18;
pub const QKV_BITS: u32 = 16;
pub const BRANCH_BITS: u32 = 22;
pub const LOGIT_BITS: u32 = 24;
pub const WEIGHT_BITS: u32 = 16;
pub const WEIGHT_GROUP: u32 = 64;

/// Host constants shared by every layer of a model.
pub struct Consts {
    pub rms_hidden: RmsConsts,
    pub rms_head: RmsConsts,
    pub rope: RopeTables,
    pub attn: AttnShape,
    pub exp: ExpConsts,
    pub log: LogConsts,
}

impl Consts {
    pub fn new(c: &ModelConfig, seq_len: usize) -> Consts {
        Consts {
            rms_hidden: RmsConsts::new(c.hidden_size, c.rms_norm_eps),
            rms_head: RmsConsts::new(c.head_dim, c.rms_norm_eps),
            rope: RopeTables::for_config(c, seq_len),
            attn: AttnShape::new(c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            exp: ExpConsts::new(),
            log: LogConsts::new(),
        }
    }
}

/// A bias vector in fixed point (one exponent), added to every token.
pub struct Bias {
    pub exp: i32,
    pub mants: Vec<i32>,
}

/// A linear layer ready for `matmul`.
pub struct Linear {
    pub name: String,
    rows: usize,
    cols: usize,
    /// The weight's rows in slices, each in the backend's form (`Backend::prepare_matmul`):
    /// one, unless the whole weight beside one token would not fit a call's budget
    /// (`new_within`; e.g. a 128k-vocabulary lm_head, 2.1 GB at hidden 4096, under the
    /// default 1 GiB). Each output row's exact sum involves its weight row only, so the
    /// slices' sums side by side are the whole product's: slicing changes no bit.
    parts: Vec<Prepared>,
    pub bias: Option<Bias>,
}

impl Linear {
    pub fn new(backend: &dyn Backend, name: String, w: GroupFixed, bias: Option<Bias>) -> Result<Linear> {
        Linear::new_within(backend, name, w, bias, u64::MAX)
    }

    /// A linear whose calls fit `budget` bytes: the weight whole when it fits beside one
    /// token's buffers, else in slices of rows of at most half the budget each (the other
    /// half for the tokens of a chunk).
    pub fn new_within(
        backend: &dyn Backend,
        name: String,
        w: GroupFixed,
        bias: Option<Bias>,
        budget: u64,
    ) -> Result<Linear> {
        let (rows, cols) = (w.rows, w.cols);
        let per_token = super::eval::per_token_bytes(cols, rows);
        // What the backend will hold for the whole weight (at most; the AVX2 packing is
        // about half of this bound).
        let whole = backend.prepared_bytes(&w);
        let slice_rows = if whole.saturating_add(per_token) <= budget || rows == 0 {
            rows.max(1)
        } else {
            let row_bytes = (whole / rows as u64).max(1);
            ((budget / 2 / row_bytes) as usize).clamp(1, rows)
        };
        let mut parts = Vec::with_capacity(rows.div_ceil(slice_rows).max(1));
        if slice_rows >= rows {
            parts.push(backend.prepare_matmul(w).map_err(|e| bad_input!("{name}: {e}"))?);
        } else {
            // Slices cut from the end, each tail moved out and the rest shrunk in place
            // (large allocations shrink without a copy), so the peak is the weight plus one
            // slice, not two weights.
            let gpr = w.exponents.len() / rows;
            let (params, mut mants, mut exps) = (w.params, w.mantissas, w.exponents);
            let mut r1 = rows;
            while r1 > 0 {
                let r0 = (r1 - 1) / slice_rows * slice_rows;
                let part = GroupFixed {
                    rows: r1 - r0,
                    cols,
                    params,
                    exponents: exps.split_off(r0 * gpr),
                    mantissas: mants.split_off(r0 * cols),
                };
                mants.shrink_to_fit();
                exps.shrink_to_fit();
                parts.push(backend.prepare_matmul(part).map_err(|e| bad_input!("{name}: {e}"))?);
                r1 = r0;
            }
            parts.reverse();
        }
        Ok(Linear { name, rows, cols, parts, bias })
    }

    /// Output width (the weight's rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Host bytes of the weight as the backend holds it, all slices.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(Prepared::bytes).sum()
    }

    /// Bytes of the largest slice: what one call holds.
    fn call_bytes(&self) -> u64 {
        self.parts.iter().map(Prepared::bytes).max().unwrap_or(0)
    }

    /// The exact sums `x · wᵀ` (bias not added): one matrix product per slice, their sums
    /// placed side by side per token.
    pub fn sums(&self, b: &dyn Backend, x: &TokenFixed) -> Result<ExactSums> {
        let part_sums = |p: &Prepared| b.matmul_prepared(x, p).map_err(|e| bad_input!("{}: {e}", self.name));
        if let [p] = self.parts.as_slice() {
            return part_sums(p);
        }
        let mut out =
            ExactSums { tokens: x.tokens, n: self.rows, sums: vec![0; x.tokens * self.rows], row_exps: Vec::new() };
        let mut r0 = 0;
        for p in &self.parts {
            let s = part_sums(p)?;
            for t in 0..x.tokens {
                out.sums[t * self.rows + r0..t * self.rows + r0 + s.n].copy_from_slice(&s.sums[t * s.n..(t + 1) * s.n]);
            }
            out.row_exps.extend_from_slice(&s.row_exps);
            r0 += s.n;
        }
        Ok(out)
    }

    /// Each token's NLL (Q30) of `targets` under the logits `x · wᵀ` at `bits`
    /// (`Backend::head_nll`: the lm_head without keeping its logits; a sliced weight gives
    /// the backend the slices' sums side by side, `Backend::renorm_nll`, the same values).
    pub fn nll(
        &self,
        b: &dyn Backend,
        x: &TokenFixed,
        bits: u32,
        targets: &[u32],
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>> {
        let r = match self.parts.as_slice() {
            [p] => b.head_nll(x, p, bits, targets, ec, lc),
            _ => b.renorm_nll(&self.sums(b, x)?, &x.exps, bits, targets, ec, lc),
        };
        r.map_err(|e| bad_input!("{}: {e}", self.name))
    }

    /// Token chunk of this linear's products within `budget` bytes (`eval::chunk_tokens`).
    pub fn chunk(&self, budget: u64) -> Result<usize> {
        super::eval::chunk_tokens(budget, self.cols, self.rows, self.call_bytes())
    }
}

/// Ingest a `[rows, cols]` weight at the matmul format (16-bit mantissas, groups of 64,
/// exponent spread bounded by `align_row_exponents` to `matmul_max_spread(cols)`: 16 up to
/// 8192 columns, so every narrower layer keeps its bits, one less per doubling beyond).
pub fn load_weight(
    backend: &dyn Backend,
    src: &mut dyn Tensors,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<GroupFixed> {
    let (bytes, dtype) = src.tensor(backend, name)?;
    let p = IngestParams { group_size: WEIGHT_GROUP, mantissa_bits: WEIGHT_BITS };
    let mut w = crate::codec::ingest::ingest_tensor(backend, name, &bytes, dtype, rows, cols, p)?;
    align_row_exponents(&mut w, matmul_max_spread(cols));
    Ok(w)
}

/// A one-row tensor (norm weight or bias) as one group at `bits`.
fn load_vector(backend: &dyn Backend, src: &mut dyn Tensors, name: &str, len: usize, bits: u32) -> Result<GroupFixed> {
    let (bytes, dtype) = src.tensor(backend, name)?;
    let p = IngestParams { group_size: len as u32, mantissa_bits: bits };
    crate::codec::ingest::ingest_tensor(backend, name, &bytes, dtype, 1, len, p)
}

fn load_linear(
    backend: &dyn Backend,
    src: &mut dyn Tensors,
    prefix: &str,
    (rows, cols): (usize, usize),
    biased: bool,
    budget: u64,
) -> Result<Linear> {
    let name = format!("{prefix}.weight");
    let w = load_weight(backend, src, &name, rows, cols)?;
    let bias = if biased {
        let b = load_vector(backend, src, &format!("{prefix}.bias"), rows, BRANCH_BITS)?;
        Some(Bias { exp: b.exponents[0], mants: b.mantissas })
    } else {
        None
    };
    Linear::new_within(backend, name, w, bias, budget)
}

/// Norm weights: one group, 16-bit mantissas (`rms_norm`'s contract).
pub fn load_norm(backend: &dyn Backend, src: &mut dyn Tensors, name: &str, len: usize) -> Result<GroupFixed> {
    load_vector(backend, src, name, len, WEIGHT_BITS)
}

/// The four distinct inputs of a decoder layer's linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tap {
    /// input-norm output: q, k and v projections
    Attn,
    /// attention output: o projection
    O,
    /// post-attention-norm output: gate and up projections
    Mlp,
    /// SwiGLU output: down projection
    Down,
}

impl Tap {
    pub const ALL: [Tap; 4] = [Tap::Attn, Tap::O, Tap::Mlp, Tap::Down];

    /// The tap feeding the linear whose weight is `name` (`...q_proj.weight` → Attn).
    pub fn of_linear(name: &str) -> Option<Tap> {
        let proj = name.strip_suffix(".weight")?.rsplit('.').next()?;
        Some(match proj {
            "q_proj" | "k_proj" | "v_proj" => Tap::Attn,
            "o_proj" => Tap::O,
            "gate_proj" | "up_proj" => Tap::Mlp,
            "down_proj" => Tap::Down,
            _ => return None,
        })
    }
}

/// Every weight of one decoder layer, ingested.
pub struct Layer {
    pub input_norm: GroupFixed,
    pub post_norm: GroupFixed,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub qk_norm: Option<(GroupFixed, GroupFixed)>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Layer {
    /// Layer `l`, each linear sliced where it would not fit a call of `budget` bytes.
    pub fn load(backend: &dyn Backend, src: &mut dyn Tensors, l: usize, budget: u64) -> Result<Layer> {
        let c = src.config().clone();
        let h = c.hidden_size;
        let [q, k, v, o, gate, up, down] = Self::linear_shapes(&c);
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let qk_norm = if c.qk_norm {
            Some((
                load_norm(backend, src, &format!("{a}.q_norm.weight"), c.head_dim)?,
                load_norm(backend, src, &format!("{a}.k_norm.weight"), c.head_dim)?,
            ))
        } else {
            None
        };
        Ok(Layer {
            input_norm: load_norm(backend, src, &format!("{p}.input_layernorm.weight"), h)?,
            post_norm: load_norm(backend, src, &format!("{p}.post_attention_layernorm.weight"), h)?,
            q: load_linear(backend, src, &format!("{a}.q_proj"), q, c.qkv_bias, budget)?,
            k: load_linear(backend, src, &format!("{a}.k_proj"), k, c.qkv_bias, budget)?,
            v: load_linear(backend, src, &format!("{a}.v_proj"), v, c.qkv_bias, budget)?,
            o: load_linear(backend, src, &format!("{a}.o_proj"), o, c.o_bias, budget)?,
            qk_norm,
            gate: load_linear(backend, src, &format!("{p}.mlp.gate_proj"), gate, c.mlp_bias, budget)?,
            up: load_linear(backend, src, &format!("{p}.mlp.up_proj"), up, c.mlp_bias, budget)?,
            down: load_linear(backend, src, &format!("{p}.mlp.down_proj"), down, c.mlp_bias, budget)?,
        })
    }

    /// (rows, cols) of the seven linears: q, k, v, o, gate, up, down.
    pub fn linear_shapes(c: &ModelConfig) -> [(usize, usize); 7] {
        let (h, ff) = (c.hidden_size, c.intermediate_size);
        let (qw, kvw) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        [(qw, h), (kvw, h), (kvw, h), (h, qw), (ff, h), (ff, h), (h, ff)]
    }

    /// Token chunk that every linear of the layer can take within `budget` bytes.
    pub fn chunk(&self, budget: u64) -> Result<usize> {
        let lins = [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down];
        lins.iter().map(|l| l.chunk(budget)).try_fold(usize::MAX, |m, c| Ok(m.min(c?)))
    }

    /// Bytes of the ingested weights (what one layer costs wherever it is held).
    pub fn bytes(&self) -> u64 {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down].iter().map(|l| l.bytes()).sum()
    }

    /// Apply the layer to one window (positions 0..T): pre-norm attention and MLP blocks,
    /// each added into the residual stream.
    pub fn forward(&self, b: &dyn Backend, x: &TokenFixed, k: &Consts, chunk: usize) -> Result<TokenFixed> {
        self.forward_tapped(b, x, k, chunk, &mut |_, _| Ok(()))
    }

    /// `forward`, handing each of the four distinct linear inputs to `tap` as it is made
    /// (calibration statistics read the exact activations the layer multiplies).
    pub fn forward_tapped(
        &self,
        b: &dyn Backend,
        x: &TokenFixed,
        k: &Consts,
        chunk: usize,
        tap: &mut dyn FnMut(Tap, &TokenFixed) -> Result<()>,
    ) -> Result<TokenFixed> {
        let t = x.tokens;
        let a = b.rms_norm(x, &self.input_norm, &k.rms_hidden, ACT_BITS)?;
        tap(Tap::Attn, &a)?;
        let positions: Vec<u32> = (0..t as u32).collect();
        let (q, kk) = match &self.qk_norm {
            // qwen3: per-head RMSNorm of q and k before RoPE.
            Some((qn, kn)) => {
                let q = linear(b, &a, &self.q, BRANCH_BITS, chunk)?;
                let kk = linear(b, &a, &self.k, BRANCH_BITS, chunk)?;
                let q = head_norm(b, q, qn, &k.rms_head)?;
                let kk = head_norm(b, kk, kn, &k.rms_head)?;
                (q, kk)
            }
            None => (linear(b, &a, &self.q, ACT_BITS, chunk)?, linear(b, &a, &self.k, ACT_BITS, chunk)?),
        };
        let q = b.rope(&q, &positions, &k.rope, QKV_BITS)?;
        let kk = b.rope(&kk, &positions, &k.rope, QKV_BITS)?;
        let v = linear(b, &a, &self.v, QKV_BITS, chunk)?;
        let att = b.attention(&q, &kk, &v, &k.attn, &k.exp, ACT_BITS)?;
        drop((q, kk, v));
        tap(Tap::O, &att)?;
        let o = linear(b, &att, &self.o, BRANCH_BITS, chunk)?;
        let x = b.add(x, &o, RESIDUAL_BITS)?;
        let a = b.rms_norm(&x, &self.post_norm, &k.rms_hidden, ACT_BITS)?;
        tap(Tap::Mlp, &a)?;
        let g = linear(b, &a, &self.gate, ACT_BITS, chunk)?;
        let u = linear(b, &a, &self.up, ACT_BITS, chunk)?;
        let s = b.swiglu(&g, &u, &k.exp, ACT_BITS)?;
        drop((g, u));
        tap(Tap::Down, &s)?;
        let d = linear(b, &s, &self.down, BRANCH_BITS, chunk)?;
        b.add(&x, &d, RESIDUAL_BITS)
    }
}

/// Tokens `t0..t1` of `x`.
pub fn slice_tokens(x: &TokenFixed, t0: usize, t1: usize) -> TokenFixed {
    TokenFixed {
        tokens: t1 - t0,
        width: x.width,
        exps: x.exps[t0..t1].to_vec(),
        mants: x.mants[t0 * x.width..t1 * x.width].to_vec(),
    }
}

/// `x · wᵀ (+ bias)` rounded once per token to `bits` (twice with a bias: to 22 bits, then
/// the add). Tokens go through in chunks of `chunk` (a per-token computation: the chunking
/// cannot change a bit, it only bounds the buffers).
pub fn linear(b: &dyn Backend, x: &TokenFixed, l: &Linear, bits: u32, chunk: usize) -> Result<TokenFixed> {
    let n = l.rows;
    let mut out = TokenFixed { tokens: x.tokens, width: n, exps: Vec::new(), mants: Vec::new() };
    let mut t0 = 0;
    while t0 < x.tokens {
        let t1 = (t0 + chunk.max(1)).min(x.tokens);
        let xc = if t0 == 0 && t1 == x.tokens { None } else { Some(slice_tokens(x, t0, t1)) };
        let xc = xc.as_ref().unwrap_or(x);
        let sums = l.sums(b, xc)?;
        let y = match &l.bias {
            None => b.renorm(&sums, &xc.exps, bits)?,
            Some(bias) => {
                let y = b.renorm(&sums, &xc.exps, BRANCH_BITS)?;
                let bb = TokenFixed {
                    tokens: y.tokens,
                    width: n,
                    exps: vec![bias.exp; y.tokens],
                    mants: bias.mants.repeat(y.tokens),
                };
                b.add(&y, &bb, bits)?
            }
        };
        if t0 == 0 && t1 == x.tokens {
            return Ok(y); // one chunk: no copy
        }
        out.exps.extend_from_slice(&y.exps);
        out.mants.extend_from_slice(&y.mants);
        t0 = t1;
    }
    Ok(out)
}

/// Per-head RMSNorm (qwen3 q_norm/k_norm): each (token, head) is normalised as its own row
/// to `ACT_BITS`, then the heads of a token are brought back to one exponent, the largest
/// among its heads, with one round-half-even shift of the others (host integers).
fn head_norm(b: &dyn Backend, x: TokenFixed, gamma: &GroupFixed, c: &RmsConsts) -> Result<TokenFixed> {
    let d = gamma.cols;
    let heads = x.width / d;
    // The same mantissas viewed as rows of one head each (moved, not copied).
    let rows = TokenFixed {
        tokens: x.tokens * heads,
        width: d,
        exps: x.exps.iter().flat_map(|&e| std::iter::repeat_n(e, heads)).collect(),
        mants: x.mants,
    };
    let y = b.rms_norm(&rows, gamma, c, ACT_BITS)?;
    Ok(merge_heads(&y, heads))
}

/// Rows of `heads` consecutive (token, head) vectors → one exponent per token.
pub fn merge_heads(y: &TokenFixed, heads: usize) -> TokenFixed {
    let d = y.width;
    let tokens = y.tokens / heads;
    let mut exps = Vec::with_capacity(tokens);
    let mut mants = vec![0i32; y.mants.len()];
    for t in 0..tokens {
        let live = |h: usize| y.mants[(t * heads + h) * d..(t * heads + h + 1) * d].iter().any(|&m| m != 0);
        let e = (0..heads).filter(|&h| live(h)).map(|h| y.exps[t * heads + h]).max().unwrap_or(0);
        for h in 0..heads {
            let shift = (e - y.exps[t * heads + h]).max(0) as u32;
            let r = (t * heads + h) * d..(t * heads + h + 1) * d;
            for (o, &m) in mants[r.clone()].iter_mut().zip(&y.mants[r]) {
                *o = shr_round_any(m as i64, shift) as i32;
            }
        }
        exps.push(e);
    }
    TokenFixed { tokens, width: heads * d, exps, mants }
}
