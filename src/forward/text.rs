//! Evaluation text: tokenization with the model's own tokenizer.json, token files, and the
//! choice of non-overlapping windows (issue: `ucw eval`).
//!
//! No BOS is added and no special tokens are inserted: windows are cut from the plain
//! token stream of the text, from its start, as `hf_ppl.py` and llama-perplexity do.

use std::path::Path;

use crate::error::{Error, Result};

/// Token ids of the text file `text_path` under `tokenizer.json` in `model_dir`.
pub fn tokenize_file(model_dir: &Path, text_path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(text_path).map_err(|e| Error::io(text_path, "cannot read", e))?;
    tokenize_bytes(model_dir, text_path, bytes)
}

/// `tokenize_file` on the file's bytes, already read (`text_path` names it in errors).
pub fn tokenize_bytes(model_dir: &Path, text_path: &Path, bytes: Vec<u8>) -> Result<Vec<u32>> {
    let tok_path = model_dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(bad_input!(
            "{}: no tokenizer.json (pass pre-tokenized ids with --tokens FILE: little-endian u32)",
            model_dir.display()
        ));
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| bad_input!("{}: cannot load tokenizer: {e}", tok_path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| bad_input!("{}: not UTF-8: {e}", text_path.display()))?;
    let enc = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| bad_input!("{}: tokenization failed: {e}", text_path.display()))?;
    Ok(enc.get_ids().to_vec())
}

/// Token ids from a file of little-endian u32.
pub fn read_token_file(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
    parse_token_bytes(path, &bytes)
}

/// `read_token_file` on the file's bytes, already read (`path` names it in errors).
pub fn parse_token_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(bad_input!(
            "{}: {} bytes is not a whole number of little-endian u32 ids",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// What to score: the first `windows` non-overlapping windows of `seq_len` tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    pub seq_len: usize,
    pub count: usize,
    /// True when fewer windows than asked for fit the text.
    pub truncated: bool,
}

/// Check ids and lengths and choose the windows. Fewer tokens than one window is an error;
/// fewer than `windows` windows evaluates what fits and says so (`truncated`).
pub fn choose_windows(
    ids: &[u32],
    vocab: usize,
    seq_len: usize,
    windows: usize,
    max_positions: usize,
    force: bool,
) -> Result<Windows> {
    if seq_len < 2 {
        return Err(bad_input!("--seq-len {seq_len}: at least 2 tokens are needed to score a prediction"));
    }
    if windows == 0 {
        return Err(bad_input!("--windows 0: nothing to evaluate"));
    }
    if seq_len > max_positions && !force {
        return Err(bad_input!(
            "--seq-len {seq_len} exceeds the model's max_position_embeddings {max_positions} (use --force to evaluate anyway)"
        ));
    }
    if let Some((i, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
        return Err(bad_input!("token {i} has id {id}, outside the vocabulary of {vocab}"));
    }
    let fit = ids.len() / seq_len;
    if fit == 0 {
        return Err(bad_input!("the text has {} tokens, fewer than one window of {seq_len}", ids.len()));
    }
    Ok(Windows { seq_len, count: fit.min(windows), truncated: fit < windows })
}
