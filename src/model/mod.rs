//! Hugging Face model directories: typed config, memory-mapped weights, digests.

pub mod arch;
pub mod config;
pub mod weights;

use std::path::Path;

pub use arch::{ExpectedTensor, Role};
pub use config::{Arch, ModelConfig};
pub use weights::{Checkpoint, TensorView};

use crate::digest::{TensorDigest, sha256_hex, weights_digest};
use crate::dtype::DType;
use crate::error::Result;

/// A supported model: its config and a checkpoint holding exactly the tensors the
/// architecture needs, in a dtype the codec reads.
pub struct Model {
    pub config: ModelConfig,
    pub checkpoint: Checkpoint,
    pub tensors: Vec<ExpectedTensor>,
}

impl Model {
    pub fn open(dir: &Path) -> Result<Model> {
        if !dir.is_dir() {
            return Err(bad_input!("{}: not a directory", dir.display()));
        }
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let tensors = arch::expected_tensors(&config);
        for t in &tensors {
            let Some(v) = checkpoint.get(&t.name) else {
                return Err(bad_input!(
                    "{}: missing tensor \"{}\" (expected shape {:?} for {})",
                    dir.display(),
                    t.name,
                    t.shape,
                    config.arch.model_type()
                ));
            };
            if v.shape != t.shape.as_slice() {
                return Err(bad_input!(
                    "{}: tensor \"{}\" has shape {:?}, expected {:?}",
                    v.file.display(),
                    t.name,
                    v.shape,
                    t.shape
                ));
            }
            if DType::from_safetensors(v.dtype).is_none() {
                return Err(bad_input!(
                    "{}: tensor \"{}\" has unsupported dtype {} (supported: BF16, F16, F32)",
                    v.file.display(),
                    t.name,
                    v.dtype_name()
                ));
            }
        }
        for name in checkpoint.names() {
            let known = tensors.iter().any(|t| t.name == name)
                || arch::is_ignorable(name)
                // Some tied checkpoints store the lm_head copy anyway; it is never used.
                || (config.tie_word_embeddings && name == "lm_head.weight");
            if !known {
                return Err(bad_input!(
                    "{}: unexpected tensor \"{name}\" for model_type {}",
                    dir.display(),
                    config.arch.model_type()
                ));
            }
        }
        Ok(Model { config, checkpoint, tensors })
    }

    pub fn tensor(&self, name: &str) -> TensorView<'_> {
        self.checkpoint.get(name).expect("validated in Model::open")
    }

    pub fn dtype_of(&self, name: &str) -> DType {
        DType::from_safetensors(self.tensor(name).dtype).expect("validated in Model::open")
    }
}

/// Digests of every stored tensor of a safetensors model directory (any architecture,
/// any dtype), as DESIGN §5 defines them.
pub struct ModelDigests {
    pub tensors: Vec<TensorDigest>,
    pub weights_digest: String,
}

/// Hash a model directory. When config.json declares tied embeddings, a stored
/// `lm_head.weight` is left out: the deployed model does not hold it (DESIGN §5).
pub fn hash_model_dir(dir: &Path) -> Result<ModelDigests> {
    let checkpoint = Checkpoint::open(dir)?;
    let tied = tied_embeddings_hint(dir);
    let names: Vec<&str> = checkpoint.names().filter(|n| !(tied && *n == "lm_head.weight")).collect();
    // Hash tensors in parallel; each digest depends only on its own bytes.
    use rayon::prelude::*;
    let tensors: Vec<TensorDigest> = names
        .par_iter()
        .map(|name| {
            let v = checkpoint.get(name).expect("name from the checkpoint");
            let d = TensorDigest {
                dtype: v.dtype_name(),
                name: name.to_string(),
                sha256: sha256_hex(v.bytes),
                shape: v.shape.iter().map(|&d| d as u64).collect(),
            };
            // Hashing touches every page once: drop them so RSS stays near one tensor.
            checkpoint.release(name);
            d
        })
        .collect();
    let weights_digest = weights_digest(&tensors);
    Ok(ModelDigests { tensors, weights_digest })
}

/// `tie_word_embeddings` from config.json when it parses, for any architecture.
fn tied_embeddings_hint(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("tie_word_embeddings").and_then(|b| b.as_bool()))
        .unwrap_or(false)
}
