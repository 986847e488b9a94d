//! The integer forward pass and perplexity (issue 5, in progress): evaluation text,
//! embedding lookup; the layer kernels are on `Backend` (matmul, renorm, rms_norm, rope,
//! swiglu, add, nll, attention). The streaming driver and `ucw eval` are still to come.

pub mod text;

use crate::backend::{Backend, IngestParams, TokenFixed};
use crate::error::Result;
use crate::model::Model;

/// Embedding lookup: the ids' rows of `model.embed_tokens.weight`, gathered on the host
/// (bounded: one row per token) and ingested with one exponent per token at `bits`-bit
/// mantissas, the residual stream's format.
pub fn embed(backend: &dyn Backend, model: &Model, ids: &[u32], bits: u32) -> Result<TokenFixed> {
    let name = "model.embed_tokens.weight";
    let v = model.tensor(name);
    let dtype = model.dtype_of(name);
    let (vocab, hidden) = (v.shape[0], v.shape[1]);
    let row = hidden * dtype.size_bytes();
    let mut gathered = Vec::with_capacity(ids.len() * row);
    for (i, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            return Err(bad_input!("token {i} has id {id}, outside the vocabulary of {vocab}"));
        }
        gathered.extend_from_slice(&v.bytes[id as usize * row..(id as usize + 1) * row]);
    }
    let params = IngestParams { group_size: hidden as u32, mantissa_bits: bits };
    let g = crate::codec::ingest::ingest_tensor(backend, name, &gathered, dtype, ids.len(), hidden, params)?;
    Ok(TokenFixed { tokens: ids.len(), width: hidden, exps: g.exponents, mants: g.mantissas })
}
