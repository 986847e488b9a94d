//! The pack as `compress` writes it: the source's provenance, the copied side files, one
//! safetensors file per layer as each layer finishes, the scaffold, and the manifest last,
//! all in a staging directory renamed into place at the end (nothing half-written).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use super::{Options, Rank};
use crate::backend::Backend;
use crate::codec::CODEC_VERSION;
use crate::digest::{sha256_hex, weights_digest};
use crate::dtype::{DType, first_non_finite};
use crate::error::{Error, Result};
use crate::fixed::quant::QuantTensor;
use crate::model::arch::ExpectedTensor;
use crate::model::{Model, ModelDigests, Role, hash_model_dir};
use crate::pack::layer::{self, LayerMeta, QuantMeta};
use crate::pack::manifest::*;
use crate::pack::output::Staging;
use crate::pack::stfile::{self, OutTensor};
use crate::pack::{COPIED_FILES, SCAFFOLD_FILE, layer_file_name, sha256_file};

fn file_entry(dir: &Path, name: &str) -> Result<FileEntry> {
    let path = dir.join(name);
    let size = std::fs::metadata(&path).map_err(|e| Error::io(&path, "cannot stat", e))?.len();
    Ok(FileEntry { name: name.into(), sha256: sha256_file(&path)?, size })
}

/// What the manifest records of the source: its tensors' digests and its files.
pub(super) struct SourceFacts {
    digests: ModelDigests,
    files: Vec<FileEntry>,
}

/// The source's provenance: every tensor's digest (`hash_model_dir`) and the checkpoint
/// files, the shard index and the copied side files with their digests.
pub(super) fn source_facts(model_dir: &Path, model: &Model) -> Result<SourceFacts> {
    let digests = hash_model_dir(model_dir)?;
    let mut files: Vec<FileEntry> = Vec::new();
    for f in &model.checkpoint.files {
        let name = f.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        files.push(file_entry(model_dir, &name)?);
    }
    if model_dir.join(crate::model::weights::INDEX_FILE).exists() {
        files.push(file_entry(model_dir, crate::model::weights::INDEX_FILE)?);
    }
    for name in COPIED_FILES {
        if model_dir.join(name).exists() {
            files.push(file_entry(model_dir, name)?);
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(SourceFacts { digests, files })
}

/// The pack being written: its staging directory, the files and tensors written so far and
/// the stored sizes the manifest's bits per weight count.
pub(super) struct PackWriter {
    tmp: Staging,
    /// Reconstructed dtype (`--out-dtype`; None: each tensor's source dtype).
    out_dtype: Option<DType>,
    group_size: u32,
    files: Vec<FileEntry>,
    entries: Vec<TensorEntry>,
    linear_bits: u64,
    linear_weights: u64,
    data_bytes: u64,
    all_weights: u64,
}

/// What `finish` needs besides the writer: how the pack was made.
pub(super) struct Recipe<'a> {
    pub opts: &'a Options,
    pub calibration: Option<serde_json::Value>,
    pub mixed_target: Option<(u64, u64)>,
}

impl PackWriter {
    /// Refuses a destination that is a file, or a non-empty directory without --force.
    pub fn new(out: &Path, opts: &Options) -> Result<PackWriter> {
        Ok(PackWriter {
            tmp: Staging::new(out, opts.force)?,
            out_dtype: opts.out_dtype,
            group_size: opts.group_size,
            files: Vec::new(),
            entries: Vec::new(),
            linear_bits: 0,
            linear_weights: 0,
            data_bytes: 0,
            all_weights: 0,
        })
    }

    /// The tokenizer and config files a runtime needs, copied as they are.
    pub fn copy_side_files(&mut self, model_dir: &Path) -> Result<()> {
        for name in COPIED_FILES {
            let from = model_dir.join(name);
            if from.exists() {
                std::fs::copy(&from, self.tmp.path.join(name)).map_err(|e| Error::io(&from, "cannot copy", e))?;
                self.files.push(file_entry(&self.tmp.path, name)?);
            }
        }
        Ok(())
    }

    /// Layer `l`'s file: each linear's stored form, and its reconstruction's digest in the
    /// manifest. Returns the reconstructions where `keep` (the compressed layer's forward
    /// pass needs them), else nothing.
    pub fn write_layer(
        &mut self,
        backend: &dyn Backend,
        model: &Model,
        l: usize,
        linears: &[&ExpectedTensor],
        quantized: &[QuantTensor],
        keep: bool,
    ) -> Result<BTreeMap<String, (Vec<u8>, DType)>> {
        let file = layer_file_name(l);
        let mut meta = LayerMeta::new();
        let mut stored: Vec<OutTensor> = Vec::new();
        let mut patches: BTreeMap<String, (Vec<u8>, DType)> = BTreeMap::new();
        for (t, q) in linears.iter().zip(quantized) {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let dtype = model.dtype_of(&t.name);
            let out_dtype = self.out_dtype.unwrap_or(dtype);
            let rec = backend.dequantize(q, out_dtype).map_err(|e| e.for_tensor(&t.name, out_dtype))?;
            let tensors = layer::encode(&t.name, q);
            let sb: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
            self.linear_bits += 8 * sb;
            self.linear_weights += (rows * cols) as u64;
            self.data_bytes += sb;
            self.all_weights += (rows * cols) as u64;
            meta.tensors.insert(
                t.name.clone(),
                QuantMeta {
                    base_exp: q.base_exp,
                    bits: q.params.bits,
                    group_size: self.group_size,
                    out_dtype,
                    overlay_exp: q.overlay.as_ref().map(|o| o.exp),
                    rank: q.overlay.as_ref().map_or(0, |o| o.rank as u32),
                    shape: [rows as u64, cols as u64],
                },
            );
            self.entries.push(TensorEntry {
                bits: Some(q.params.bits),
                dtype: out_dtype.safetensors_name().into(),
                file: file.clone(),
                kind: Kind::Quantized,
                name: t.name.clone(),
                rank: Some(q.overlay.as_ref().map_or(0, |o| o.rank as u32)),
                sha256: sha256_hex(&rec),
                shape: vec![rows as u64, cols as u64],
            });
            stored.extend(tensors);
            if keep {
                patches.insert(t.name.clone(), (rec, out_dtype));
            }
        }
        let (size, sha256) = stfile::write(&self.tmp.path.join(&file), stored, &meta.to_metadata())?;
        self.files.push(FileEntry { name: file, sha256, size });
        Ok(patches)
    }

    /// Everything that is not a decoder linear (embeddings, norms, lm_head), stored as it
    /// is; a non-finite value is refused naming the tensor.
    pub fn write_scaffold(&mut self, model: &Model) -> Result<()> {
        let mut scaffold: Vec<OutTensor> = Vec::new();
        for t in model.tensors.iter().filter(|t| t.role != Role::Linear) {
            let v = model.tensor(&t.name);
            let dtype = model.dtype_of(&t.name);
            if let Some(i) = first_non_finite(v.bytes, dtype) {
                return Err(bad_input!("tensor \"{}\": element {i} is not finite (NaN or Inf)", t.name));
            }
            self.data_bytes += v.bytes.len() as u64;
            self.all_weights += v.numel() as u64;
            let shape: Vec<u64> = v.shape.iter().map(|&d| d as u64).collect();
            self.entries.push(TensorEntry {
                bits: None,
                dtype: dtype.safetensors_name().into(),
                file: SCAFFOLD_FILE.into(),
                kind: Kind::Raw,
                name: t.name.clone(),
                rank: None,
                sha256: sha256_hex(v.bytes),
                shape: shape.clone(),
            });
            scaffold.push(OutTensor {
                name: t.name.clone(),
                dtype: dtype.safetensors_name(),
                shape,
                data: Cow::Borrowed(v.bytes),
            });
        }
        let (size, sha256) = stfile::write(&self.tmp.path.join(SCAFFOLD_FILE), scaffold, &BTreeMap::new())?;
        self.files.push(FileEntry { name: SCAFFOLD_FILE.into(), sha256, size });
        Ok(())
    }

    /// The manifest, written last; then the staging directory becomes the pack. Returns
    /// the manifest and its bytes' digest (the pack digest).
    pub fn finish(mut self, model: &Model, source: SourceFacts, recipe: Recipe) -> Result<(Manifest, String)> {
        let Recipe { opts, calibration, mixed_target } = recipe;
        self.files.sort_by(|a, b| a.name.cmp(&b.name));
        self.entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let digests: Vec<_> = self.entries.iter().map(|t| t.digest()).collect();
        let damp = calibration.is_some().then(|| opts.damp.to_string());
        let manifest = Manifest {
            bits_per_weight: PackBits {
                linears: BitsPerWeight { bits: self.linear_bits, weights: self.linear_weights },
                pack: BitsPerWeight { bits: 8 * self.data_bytes, weights: self.all_weights },
            },
            codec: Codec {
                calibration,
                name: layer::CODEC_NAME.into(),
                parameters: CodecParams {
                    bits: opts.bits,
                    group_size: opts.group_size,
                    out_dtype: opts.out_dtype.map_or("source".into(), |d| d.safetensors_name().into()),
                    rank: match opts.rank {
                        Rank::Fixed(r) => r.to_string(),
                        Rank::Auto { .. } => "auto".into(),
                    },
                    bit_alloc: mixed_target.is_some().then(|| "mixed".to_string()),
                    damp,
                    target_bpw: match (opts.rank, mixed_target) {
                        (Rank::Auto { bits, weights }, _) | (_, Some((bits, weights))) => {
                            Some(BitsPerWeight { bits, weights })
                        }
                        _ => None,
                    },
                },
                version: CODEC_VERSION,
            },
            files: self.files,
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            source: Source {
                files: source.files,
                model_type: model.config.arch.model_type().into(),
                tensors: {
                    let mut v: Vec<SourceTensor> = source
                        .digests
                        .tensors
                        .iter()
                        .map(|t| SourceTensor { name: t.name.clone(), sha256: t.sha256.clone() })
                        .collect();
                    v.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                    v
                },
                weights_digest: source.digests.weights_digest,
            },
            tensors: self.entries,
            // No tool version: it would change the pack digest without any change in content.
            tool: Tool { codec_version: CODEC_VERSION, name: "ucw".into() },
            weights_digest: weights_digest(&digests),
        };
        let bytes = manifest.to_bytes();
        let mpath = self.tmp.path.join(MANIFEST_FILE);
        std::fs::write(&mpath, &bytes).map_err(|e| Error::io(&mpath, "cannot write", e))?;
        self.tmp.install()?;
        Ok((manifest, sha256_hex(&bytes)))
    }
}
