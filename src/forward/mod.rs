//! The integer forward pass and perplexity: evaluation text, the weight source (model
//! directory or pack), one decoder layer in fixed point, and the streaming driver.

pub mod eval;
pub mod job;
pub mod layer;
pub mod source;
pub mod text;

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::fixed::tensor::{IngestParams, TokenFixed};
use crate::model::Model;

/// Version of the forward pass numerics (widths, rounding points, kernels' algorithms).
/// Evaluation golden files are tied to it: bump it whenever any reported bit can change.
/// 2: attention rounds each key's softmax weight onto the V grid once (u_j) instead of every
/// weighted V term, so the weighted sums are exact matrix products (backend/cpu/attention.rs).
pub const FORWARD_VERSION: u32 = 2;

pub use eval::{EvalOptions, EvalResult, LayerTraffic, PairResult, Score, evaluate, evaluate_pair};
pub use source::Source;

/// Embedding lookup: the ids' rows of `model.embed_tokens.weight`, gathered on the host
/// (bounded: one row per token) and ingested with one exponent per token at `bits`-bit
/// mantissas, the residual stream's format.
pub fn embed(backend: &dyn Backend, model: &Model, ids: &[u32], bits: u32) -> Result<TokenFixed> {
    let name = "model.embed_tokens.weight";
    let v = model.tensor(name);
    let (vocab, hidden) = (v.shape[0], v.shape[1]);
    embed_rows(backend, name, v.bytes, model.dtype_of(name), vocab, hidden, ids, bits)
}

/// `embed` over the raw bytes of an embedding `[vocab, hidden]` of `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn embed_rows(
    backend: &dyn Backend,
    name: &str,
    table: &[u8],
    dtype: DType,
    vocab: usize,
    hidden: usize,
    ids: &[u32],
    bits: u32,
) -> Result<TokenFixed> {
    let row = hidden * dtype.size_bytes();
    let mut gathered = Vec::with_capacity(ids.len() * row);
    for (i, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            return Err(bad_input!("token {i} has id {id}, outside the vocabulary of {vocab}"));
        }
        gathered.extend_from_slice(&table[id as usize * row..(id as usize + 1) * row]);
    }
    let params = IngestParams { group_size: hidden as u32, mantissa_bits: bits };
    let g = crate::codec::ingest::ingest_tensor(backend, name, &gathered, dtype, ids.len(), hidden, params)?;
    Ok(TokenFixed { tokens: ids.len(), width: hidden, exps: g.exponents, mants: g.mantissas })
}
