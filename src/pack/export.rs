//! `ucw export`: a Hugging Face model directory holding a pack's deployed weights
//! (reconstructed quantized tensors and raw scaffold tensors), so `ucw hash` of it gives
//! the manifest's weights digest.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use super::output::Staging;
use super::stfile::{TensorSpec, write_streaming};
use super::{COPIED_FILES, OpenFiles, Pack};
use crate::backend::Backend;
use crate::digest::sha256_hex;
use crate::error::{Error, Result};

/// Shard above this many bytes per file, as transformers' save_pretrained does.
pub const MAX_SHARD_BYTES: u64 = 2 << 30;

pub struct Exported {
    pub files: Vec<String>,
    pub tensor_bytes: u64,
}

fn dtype_static(d: &str) -> Result<&'static str> {
    crate::dtype::DType::from_safetensors_name(d)
        .map(|d| d.safetensors_name())
        .ok_or_else(|| bad_input!("unsupported dtype {d}"))
}

pub fn export(pack: &Pack, backend: &dyn Backend, out: &Path, force: bool, max_shard: u64) -> Result<Exported> {
    let staging = Staging::new(out, force)?;
    let m = &pack.manifest;
    for name in COPIED_FILES {
        if m.files.iter().any(|f| f.name == *name) {
            let from = pack.dir.join(name);
            std::fs::copy(&from, staging.path.join(name)).map_err(|e| Error::io(&from, "cannot copy", e))?;
        }
    }
    // Shards: tensors in name order, a new shard when the next tensor would pass the limit.
    let mut shards: Vec<Vec<TensorSpec>> = vec![Vec::new()];
    let mut size = 0u64;
    let mut total = 0u64;
    for t in &m.tensors {
        let dtype = dtype_static(&t.dtype)?;
        let esize = if dtype == "F32" { 4u64 } else { 2 };
        let len = t
            .shape
            .iter()
            .try_fold(esize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad_input!("tensor \"{}\": shape {:?} is too large", t.name, t.shape))?;
        if size > 0 && size + len > max_shard {
            shards.push(Vec::new());
            size = 0;
        }
        size += len;
        total += len;
        shards.last_mut().expect("nonempty").push(TensorSpec {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            len,
        });
    }
    let by_name: BTreeMap<&str, &super::TensorEntry> = m.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let n = shards.len();
    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut open = OpenFiles::default();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    for (i, specs) in shards.into_iter().enumerate() {
        let name =
            if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        for s in &specs {
            weight_map.insert(s.name.clone(), name.clone());
        }
        write_streaming(&staging.path.join(&name), specs, &meta, |s| {
            let t = by_name[s.name.as_str()];
            let bytes = pack.tensor_bytes(backend, t, &mut open)?;
            // What is exported is exactly what the manifest vouches for.
            if sha256_hex(&bytes) != t.sha256 {
                return Err(Error::verify_fail(format!(
                    "tensor \"{}\": reconstructed digest differs from the manifest",
                    t.name
                )));
            }
            Ok(Cow::Owned(bytes))
        })?;
        files.push(name);
    }
    if n > 1 {
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let p = staging.path.join(crate::model::weights::INDEX_FILE);
        std::fs::write(&p, serde_json::to_string_pretty(&index).expect("plain JSON"))
            .map_err(|e| Error::io(&p, "cannot write", e))?;
        files.push(crate::model::weights::INDEX_FILE.into());
    }
    staging.install()?;
    Ok(Exported { files, tensor_bytes: total })
}
