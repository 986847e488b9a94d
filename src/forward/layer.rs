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
pub use crate::backend::layer::{BRANCH_BITS, Bias, Tap, slice_tokens};
use crate::backend::layer::{LayerBits, LayerConsts, LayerWeights, LinearRef};
use crate::backend::{Backend, Prepared};
use crate::error::Result;
use crate::fixed::tables::{ExpConsts, LogConsts, RmsConsts, RopeTables};
use crate::fixed::tensor::{ExactSums, GroupFixed, IngestParams, TokenFixed, align_row_exponents, matmul_max_spread};
use crate::model::ModelConfig;

pub const RESIDUAL_BITS: u32 = 20;
pub const ACT_BITS: u32 = 18;
pub const QKV_BITS: u32 = 16;
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

    /// The exact sums `x · wᵀ` (bias not added), all slices side by side.
    pub fn sums(&self, b: &dyn Backend, x: &TokenFixed) -> Result<ExactSums> {
        self.view().sums(b, x)
    }

    /// This linear as the backend's layer call takes it.
    pub fn view(&self) -> LinearRef<'_> {
        LinearRef { name: &self.name, rows: self.rows, parts: &self.parts, bias: self.bias.as_ref() }
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
    /// each added into the residual stream (`Backend::decoder_layer`).
    pub fn forward(&self, b: &dyn Backend, x: &TokenFixed, k: &Consts, chunk: usize) -> Result<TokenFixed> {
        b.decoder_layer(x, &self.weights(k), chunk, None)
    }

    /// `forward`, handing each of the four distinct linear inputs to `tap` (calibration
    /// statistics read the exact activations the layer multiplies).
    pub fn forward_tapped(
        &self,
        b: &dyn Backend,
        x: &TokenFixed,
        k: &Consts,
        chunk: usize,
        tap: &mut dyn FnMut(Tap, &TokenFixed) -> Result<()>,
    ) -> Result<TokenFixed> {
        b.decoder_layer(x, &self.weights(k), chunk, Some(tap))
    }

    /// The layer as `Backend::decoder_layer` takes it, at this module's widths.
    fn weights<'a>(&'a self, k: &'a Consts) -> LayerWeights<'a> {
        LayerWeights {
            input_norm: &self.input_norm,
            post_norm: &self.post_norm,
            q: self.q.view(),
            k: self.k.view(),
            v: self.v.view(),
            o: self.o.view(),
            qk_norm: self.qk_norm.as_ref().map(|(q, k)| (q, k)),
            gate: self.gate.view(),
            up: self.up.view(),
            down: self.down.view(),
            consts: LayerConsts {
                rms_hidden: &k.rms_hidden,
                rms_head: &k.rms_head,
                rope: &k.rope,
                attn: &k.attn,
                exp: &k.exp,
            },
            bits: LayerBits { residual: RESIDUAL_BITS, act: ACT_BITS, qkv: QKV_BITS, branch: BRANCH_BITS },
        }
    }
}

/// `x · wᵀ (+ bias)` rounded once per token to `bits`, tokens in chunks of `chunk`
/// (`backend::layer::linear`).
pub fn linear(b: &dyn Backend, x: &TokenFixed, l: &Linear, bits: u32, chunk: usize) -> Result<TokenFixed> {
    crate::backend::layer::linear(b, x, &l.view(), bits, chunk)
}
