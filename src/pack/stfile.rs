//! Deterministic safetensors writing.
//!
//! Pack files must be byte-identical for identical contents on every machine and every
//! version of our dependencies, so the layout is fixed here rather than left to a library
//! (docs/FORMAT.md): the header is the RFC 8785 canonical JSON of
//! `{"__metadata__": {...}, name: {"data_offsets", "dtype", "shape"}, ...}`, padded with
//! spaces to a multiple of 8 bytes; tensor data follows in bytewise name order, unpadded.
//! Any safetensors reader opens these files.

use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::digest::canonical_json;
use crate::error::{Error, Result};

pub struct OutTensor<'a> {
    pub name: String,
    /// safetensors dtype spelling: "U8", "I8", "BF16", ...
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum HeaderEntry<'a> {
    Meta(&'a BTreeMap<String, String>),
    Tensor { data_offsets: [u64; 2], dtype: &'a str, shape: &'a [u64] },
}

/// A tensor's header entry, its bytes produced later by the writer's callback.
pub struct TensorSpec {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub len: u64,
}

/// Header bytes (length prefix, canonical JSON, space padding) for specs sorted by name.
fn header(specs: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map: BTreeMap<&str, HeaderEntry> = BTreeMap::new();
    if !metadata.is_empty() {
        map.insert("__metadata__", HeaderEntry::Meta(metadata));
    }
    let mut offset = 0u64;
    for t in specs {
        let end = offset + t.len;
        map.insert(&t.name, HeaderEntry::Tensor { data_offsets: [offset, end], dtype: t.dtype, shape: &t.shape });
        offset = end;
    }
    let mut json = canonical_json(&map);
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out
}

/// Write a safetensors file whose tensor bytes are produced one at a time by `fill`, so
/// only one tensor is in memory. Returns the file's size and SHA-256.
pub fn write_streaming<'a>(
    path: &Path,
    mut specs: Vec<TensorSpec>,
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(&TensorSpec) -> Result<Cow<'a, [u8]>>,
) -> Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    specs.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let head = header(&specs, metadata);
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, "cannot create", e))?;
    let mut w = std::io::BufWriter::new(file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut put = |chunk: &[u8], w: &mut std::io::BufWriter<std::fs::File>| -> Result<()> {
        w.write_all(chunk).map_err(|e| Error::io(path, "cannot write", e))?;
        hasher.update(chunk);
        size += chunk.len() as u64;
        Ok(())
    };
    put(&head, &mut w)?;
    for spec in &specs {
        let data = fill(spec)?;
        if data.len() as u64 != spec.len {
            return Err(bad_input!(
                "{}: tensor \"{}\" has {} bytes, expected {}",
                path.display(),
                spec.name,
                data.len(),
                spec.len
            ));
        }
        put(&data, &mut w)?;
    }
    let file = w.into_inner().map_err(|e| Error::io(path, "cannot write", e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, "cannot sync", e))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Write a safetensors file from tensors already in memory.
pub fn write(path: &Path, tensors: Vec<OutTensor>, metadata: &BTreeMap<String, String>) -> Result<(u64, String)> {
    let specs = tensors
        .iter()
        .map(|t| TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), len: t.data.len() as u64 })
        .collect();
    let by_name: BTreeMap<&str, &[u8]> = tensors.iter().map(|t| (t.name.as_str(), &t.data[..])).collect();
    write_streaming(path, specs, metadata, |s| Ok(Cow::Borrowed(by_name[s.name.as_str()])))
}
