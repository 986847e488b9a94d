//! Where the forward pass reads weights: a Hugging Face model directory (memory-mapped,
//! zero-copy) or a pack (raw tensors from the scaffold, quantized ones reconstructed on the
//! backend exactly as `ucw verify` and `ucw export` rebuild them: the evaluated model is the
//! deployed one).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::model::{Model, ModelConfig};
use crate::pack::{OpenFiles, Pack, TensorEntry};

pub enum Source {
    Model(Model),
    Pack { pack: Box<Pack>, config: ModelConfig, files: OpenFiles },
}

impl Source {
    /// Open a model directory or, when it holds a `ucw-manifest.json`, a pack. A pack's files
    /// are checked against its manifest first (exit 1 naming the file when one fails).
    pub fn open(dir: &Path) -> Result<Source> {
        if dir.join(crate::pack::MANIFEST_FILE).is_file() {
            let pack = Pack::open(dir)?;
            let problems = pack.check()?;
            if let Some(p) = problems.first() {
                return Err(crate::error::Error::verify_fail(format!(
                    "{}: pack file {} fails its check: {} ({} problem(s); run `ucw verify`)",
                    dir.display(),
                    p.file,
                    p.problem,
                    problems.len()
                )));
            }
            let config = ModelConfig::load(dir)?;
            return Ok(Source::Pack { pack: Box::new(pack), config, files: OpenFiles::default() });
        }
        Ok(Source::Model(Model::open(dir)?))
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            Source::Model(m) => &m.config,
            Source::Pack { config, .. } => config,
        }
    }

    /// The directory's tokenizer lives here (copied verbatim into packs).
    pub fn dir(&self) -> &Path {
        match self {
            Source::Model(m) => &m.checkpoint.dir,
            Source::Pack { pack, .. } => &pack.dir,
        }
    }

    /// The weights digest of the evaluated tensors (DESIGN §5).
    pub fn weights_digest(&self) -> Result<String> {
        match self {
            Source::Model(m) => Ok(crate::model::hash_model_dir(&m.checkpoint.dir)?.weights_digest),
            Source::Pack { pack, .. } => Ok(pack.manifest.weights_digest.clone()),
        }
    }

    pub fn pack_digest(&self) -> Option<String> {
        match self {
            Source::Model(_) => None,
            Source::Pack { pack, .. } => Some(pack.digest()),
        }
    }

    /// The deployed bytes and dtype of tensor `name`. A tied lm_head is read as the
    /// embedding by the caller, never here.
    pub fn tensor_bytes(&mut self, backend: &dyn Backend, name: &str) -> Result<(Cow<'_, [u8]>, DType)> {
        match self {
            Source::Model(m) => {
                let v = m.checkpoint.get(name).ok_or_else(|| bad_input!("model has no tensor \"{name}\""))?;
                Ok((Cow::Borrowed(v.bytes), m.dtype_of(name)))
            }
            Source::Pack { pack, files, .. } => {
                let t: &TensorEntry = pack
                    .manifest
                    .tensors
                    .iter()
                    .find(|t| t.name == name)
                    .ok_or_else(|| bad_input!("{}: the manifest has no tensor \"{name}\"", pack.dir.display()))?;
                let dtype = DType::from_safetensors_name(&t.dtype)
                    .ok_or_else(|| bad_input!("tensor \"{name}\": unsupported dtype {}", t.dtype))?;
                let expected = t.shape.iter().product::<u64>() as usize * dtype.size_bytes();
                let bytes = pack.tensor_bytes(backend, t, files)?;
                if bytes.len() != expected {
                    return Err(bad_input!("tensor \"{name}\": {} bytes for shape {:?}", bytes.len(), t.shape));
                }
                Ok((Cow::Owned(bytes), dtype))
            }
        }
    }
}

/// Where a decoder layer's weights come from: a `Source`, or a model with some tensors
/// replaced (the compressor's reconstructed layer, for propagating calibration states).
pub trait Tensors {
    fn config(&self) -> &ModelConfig;
    fn tensor(&mut self, backend: &dyn Backend, name: &str) -> Result<(Cow<'_, [u8]>, DType)>;
}

impl Tensors for Source {
    fn config(&self) -> &ModelConfig {
        Source::config(self)
    }
    fn tensor(&mut self, backend: &dyn Backend, name: &str) -> Result<(Cow<'_, [u8]>, DType)> {
        self.tensor_bytes(backend, name)
    }
}

/// A model directory read in place, with `patches` (name → bytes, dtype) read instead of
/// the model's own tensors of those names.
pub struct Patched<'a> {
    pub model: &'a Model,
    pub patches: &'a BTreeMap<String, (Vec<u8>, DType)>,
}

impl Tensors for Patched<'_> {
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }
    fn tensor(&mut self, _backend: &dyn Backend, name: &str) -> Result<(Cow<'_, [u8]>, DType)> {
        if let Some((b, d)) = self.patches.get(name) {
            return Ok((Cow::Borrowed(b), *d));
        }
        let v = self.model.checkpoint.get(name).ok_or_else(|| bad_input!("model has no tensor \"{name}\""))?;
        Ok((Cow::Borrowed(v.bytes), self.model.dtype_of(name)))
    }
}
