//! One decoder layer as a single backend call (`Backend::decoder_layer`): the references a
//! layer's computation needs, in neutral types (`forward` builds them from its `Layer`;
//! the backend never imports `forward`), and the composition of per-op kernel calls that
//! defines the layer's bits. A backend may run the same composition another way (the GPU
//! backend records it on the device, buffers to buffers) but never with other bits.

use super::cpu::attention::AttnShape;
use super::{Backend, Prepared};
use crate::error::Result;
use crate::fixed::round::shr_round_any;
use crate::fixed::tables::{ExpConsts, RmsConsts, RopeTables};
use crate::fixed::tensor::{ExactSums, GroupFixed, TokenFixed};

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

/// Called with each tap's activations (calibration statistics read the exact activations
/// the layer multiplies).
pub type TapFn<'t> = dyn FnMut(Tap, &TokenFixed) -> Result<()> + 't;

/// A bias vector in fixed point (one exponent), added to every token.
pub struct Bias {
    pub exp: i32,
    pub mants: Vec<i32>,
}

/// A linear layer as the backend multiplies it: the weight's rows in one or more prepared
/// slices (`Backend::prepare_matmul`; several only when the whole weight would not fit a
/// call's budget), and an optional bias.
#[derive(Clone, Copy)]
pub struct LinearRef<'a> {
    /// The weight's name, for errors.
    pub name: &'a str,
    /// Output width: the weight's rows, all slices.
    pub rows: usize,
    pub parts: &'a [Prepared],
    pub bias: Option<&'a Bias>,
}

impl LinearRef<'_> {
    /// Input width (every slice's columns).
    pub fn cols(&self) -> usize {
        self.parts.first().map_or(0, Prepared::cols)
    }

    /// The exact sums `x · wᵀ` (bias not added): one matrix product per slice, their sums
    /// placed side by side per token. Each output row's exact sum involves its weight row
    /// only, so slicing changes no bit.
    pub fn sums<B: Backend + ?Sized>(&self, b: &B, x: &TokenFixed) -> Result<ExactSums> {
        let part_sums = |p: &Prepared| b.matmul_prepared(x, p).map_err(|e| bad_input!("{}: {e}", self.name));
        if let [p] = self.parts {
            return part_sums(p);
        }
        let mut out =
            ExactSums { tokens: x.tokens, n: self.rows, sums: vec![0; x.tokens * self.rows], row_exps: Vec::new() };
        let mut r0 = 0;
        for p in self.parts {
            let s = part_sums(p)?;
            for t in 0..x.tokens {
                out.sums[t * self.rows + r0..t * self.rows + r0 + s.n].copy_from_slice(&s.sums[t * s.n..(t + 1) * s.n]);
            }
            out.row_exps.extend_from_slice(&s.row_exps);
            r0 += s.n;
        }
        Ok(out)
    }
}

/// Host constants shared by every layer of a model, borrowed.
#[derive(Clone, Copy)]
pub struct LayerConsts<'a> {
    pub rms_hidden: &'a RmsConsts,
    pub rms_head: &'a RmsConsts,
    pub rope: &'a RopeTables,
    pub attn: &'a AttnShape,
    pub exp: &'a ExpConsts,
}

/// Mantissa widths of a layer's rounding points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerBits {
    /// The residual stream (both adds).
    pub residual: u32,
    /// Matrix-product inputs: norm outputs, attention output, SwiGLU output; q and k
    /// before RoPE; gate and up.
    pub act: u32,
    /// q and k after RoPE, v.
    pub qkv: u32,
    /// Branch outputs before their add (o, down, biased projections, qk-norm inputs).
    pub branch: u32,
}

/// Device bytes per token of a product with `k` inputs and `n` outputs: inputs (4k), exact
/// sums (8n) and outputs (4n). A caller's memory budget grants each product `chunk` tokens
/// of these (`forward::eval::chunk_tokens`).
pub fn per_token_bytes(k: usize, n: usize) -> u64 {
    (4 * k + 12 * n + 8) as u64
}

/// Every weight of one decoder layer, with the constants and widths it runs at.
pub struct LayerWeights<'a> {
    pub input_norm: &'a GroupFixed,
    pub post_norm: &'a GroupFixed,
    pub q: LinearRef<'a>,
    pub k: LinearRef<'a>,
    pub v: LinearRef<'a>,
    pub o: LinearRef<'a>,
    /// qwen3's per-head RMSNorm of q and k before RoPE.
    pub qk_norm: Option<(&'a GroupFixed, &'a GroupFixed)>,
    pub gate: LinearRef<'a>,
    pub up: LinearRef<'a>,
    pub down: LinearRef<'a>,
    pub consts: LayerConsts<'a>,
    pub bits: LayerBits,
}

impl LayerWeights<'_> {
    /// The seven linears: q, k, v, o, gate, up, down.
    pub fn linears(&self) -> [&LinearRef<'_>; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }

    /// What the caller's budget grants one product at `chunk` tokens: `chunk` tokens of the
    /// layer's largest per-token product bytes. The per-op composition holds one product's
    /// buffers at a time; a backend holding the whole layer's at once keeps within this.
    pub fn product_grant(&self, chunk: usize) -> u64 {
        let widest = self.linears().iter().map(|l| per_token_bytes(l.cols(), l.rows)).max().unwrap_or(0);
        widest.saturating_mul(chunk as u64)
    }
}

/// The layer applied to one window (positions 0..T) by the backend's per-op kernels:
/// pre-norm attention and MLP blocks, each added into the residual stream, handing each of
/// the four distinct linear inputs to `tap` as it is made. `chunk` bounds the tokens of
/// each matrix product (a per-token computation: it cannot change a bit). This is
/// `Backend::decoder_layer`'s default and the definition of its bits.
pub fn compose<B: Backend + ?Sized>(
    b: &B,
    x: &TokenFixed,
    w: &LayerWeights,
    chunk: usize,
    mut tap: Option<&mut TapFn>,
) -> Result<TokenFixed> {
    let (k, bits) = (&w.consts, &w.bits);
    let mut tap = |which: Tap, y: &TokenFixed| tap.as_mut().map_or(Ok(()), |f| f(which, y));
    let t = x.tokens;
    let a = b.rms_norm(x, w.input_norm, k.rms_hidden, bits.act)?;
    tap(Tap::Attn, &a)?;
    let positions: Vec<u32> = (0..t as u32).collect();
    let (q, kk) = match w.qk_norm {
        Some((qn, kn)) => {
            let q = linear(b, &a, &w.q, bits.branch, chunk)?;
            let kk = linear(b, &a, &w.k, bits.branch, chunk)?;
            let q = head_norm(b, q, qn, k.rms_head, bits.act)?;
            let kk = head_norm(b, kk, kn, k.rms_head, bits.act)?;
            (q, kk)
        }
        None => (linear(b, &a, &w.q, bits.act, chunk)?, linear(b, &a, &w.k, bits.act, chunk)?),
    };
    let q = b.rope(&q, &positions, k.rope, bits.qkv)?;
    let kk = b.rope(&kk, &positions, k.rope, bits.qkv)?;
    let v = linear(b, &a, &w.v, bits.qkv, chunk)?;
    let att = b.attention(&q, &kk, &v, k.attn, k.exp, bits.act)?;
    drop((q, kk, v));
    tap(Tap::O, &att)?;
    let o = linear(b, &att, &w.o, bits.branch, chunk)?;
    let x = b.add(x, &o, bits.residual)?;
    let a = b.rms_norm(&x, w.post_norm, k.rms_hidden, bits.act)?;
    tap(Tap::Mlp, &a)?;
    let g = linear(b, &a, &w.gate, bits.act, chunk)?;
    let u = linear(b, &a, &w.up, bits.act, chunk)?;
    let s = b.swiglu(&g, &u, k.exp, bits.act)?;
    drop((g, u));
    tap(Tap::Down, &s)?;
    let d = linear(b, &s, &w.down, bits.branch, chunk)?;
    b.add(&x, &d, bits.residual)
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

/// Width of a biased projection's sums before its bias is added (the add then rounds to
/// the caller's width); also the width `forward::layer` gives branch outputs.
pub const BRANCH_BITS: u32 = 22;

/// `x · wᵀ (+ bias)` rounded once per token to `bits` (twice with a bias: to 22 bits, then
/// the add). Tokens go through in chunks of `chunk` (a per-token computation: the chunking
/// cannot change a bit, it only bounds the buffers).
pub fn linear<B: Backend + ?Sized>(
    b: &B,
    x: &TokenFixed,
    l: &LinearRef,
    bits: u32,
    chunk: usize,
) -> Result<TokenFixed> {
    let n = l.rows;
    let mut out = TokenFixed { tokens: x.tokens, width: n, exps: Vec::new(), mants: Vec::new() };
    let mut t0 = 0;
    while t0 < x.tokens {
        let t1 = (t0 + chunk.max(1)).min(x.tokens);
        let xc = if t0 == 0 && t1 == x.tokens { None } else { Some(slice_tokens(x, t0, t1)) };
        let xc = xc.as_ref().unwrap_or(x);
        let sums = l.sums(b, xc)?;
        let y = match l.bias {
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
/// to `bits`, then the heads of a token are brought back to one exponent, the largest
/// among its heads, with one round-half-even shift of the others (host integers).
fn head_norm<B: Backend + ?Sized>(
    b: &B,
    x: TokenFixed,
    gamma: &GroupFixed,
    c: &RmsConsts,
    bits: u32,
) -> Result<TokenFixed> {
    let d = gamma.cols;
    let heads = x.width / d;
    // The same mantissas viewed as rows of one head each (moved, not copied).
    let rows = TokenFixed {
        tokens: x.tokens * heads,
        width: d,
        exps: x.exps.iter().flat_map(|&e| std::iter::repeat_n(e, heads)).collect(),
        mants: x.mants,
    };
    let y = b.rms_norm(&rows, gamma, c, bits)?;
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
