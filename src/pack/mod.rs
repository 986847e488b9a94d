//! Packs: a flat directory of a canonical manifest, copied config/tokenizer files, a
//! scaffold of raw tensors and one safetensors file per decoder layer (DESIGN §5).

pub mod bits;
pub mod coded;
pub mod export;
pub mod layer;
pub mod manifest;
pub mod oms;
pub mod output;
pub mod rans;
pub mod receipt;
pub mod stfile;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::model::weights::SafetensorsFile;
pub use manifest::{Kind, MANIFEST_FILE, Manifest, TensorEntry};

pub const SCAFFOLD_FILE: &str = "scaffold.safetensors";

/// Files copied verbatim from the model directory when present.
pub const COPIED_FILES: &[&str] =
    &["config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"];

pub fn layer_file_name(layer: usize) -> String {
    format!("layer-{layer:05}.safetensors")
}

/// An opened pack: its manifest bytes and parsed manifest.
pub struct Pack {
    pub dir: PathBuf,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    /// Files the file checks accept beside the manifest's list: a signature over the pack
    /// cannot be inside what it signs (OMS's `model.sig`, or the file `--signature` names).
    pub signature_files: BTreeSet<String>,
}

/// One problem found by the file checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub file: String,
    pub problem: String,
}

impl Pack {
    /// Read and parse the manifest (exit 2 when it cannot be).
    pub fn open(dir: &Path) -> Result<Pack> {
        if !dir.is_dir() {
            return Err(bad_input!("{}: not a directory", dir.display()));
        }
        let path = dir.join(MANIFEST_FILE);
        let manifest_bytes = std::fs::read(&path).map_err(|e| Error::io(&path, "cannot read", e))?;
        let manifest = Manifest::parse(&manifest_bytes).map_err(|e| bad_input!("{}: {}", dir.display(), e.message))?;
        let signature_files = BTreeSet::from([oms::SIGNATURE_FILE.to_string()]);
        Ok(Pack { dir: dir.to_path_buf(), manifest_bytes, manifest, signature_files })
    }

    /// Accept `path` as a signature file when it lies in the pack directory (OMS signs a
    /// directory with the signature written anywhere, the pack included).
    pub fn accept_signature_file(&mut self, path: &Path) {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let same_dir = match (parent.canonicalize(), self.dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if let (true, Some(name)) = (same_dir, path.file_name()) {
            self.signature_files.insert(name.to_string_lossy().to_string());
        }
    }

    /// The pack digest: SHA-256 of the manifest bytes.
    pub fn digest(&self) -> String {
        sha256_hex(&self.manifest_bytes)
    }

    /// Everything that can be checked without rebuilding a tensor: `check_files`, then what
    /// the manifest claims about the pack's own content (`verify::manifest_problems`, read
    /// only from files that passed), reported against the manifest. Every command that
    /// reads a pack refuses one with a problem (DESIGN §6); `verify` reports them all.
    pub fn check(&self) -> Result<Vec<FileProblem>> {
        let mut problems = self.check_files()?;
        let bad: std::collections::BTreeSet<String> = problems.iter().map(|p| p.file.clone()).collect();
        problems.extend(
            verify::manifest_problems(self, &bad)
                .into_iter()
                .map(|problem| FileProblem { file: MANIFEST_FILE.into(), problem }),
        );
        Ok(problems)
    }

    /// Size and SHA-256 of every listed file, and no file missing or extra. Runs before any
    /// file is parsed.
    pub fn check_files(&self) -> Result<Vec<FileProblem>> {
        let mut problems = Vec::new();
        let listed: BTreeMap<&str, &manifest::FileEntry> =
            self.manifest.files.iter().map(|f| (f.name.as_str(), f)).collect();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, "cannot list", e))?;
        let mut present = Vec::new();
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.dir, "cannot list", e))?;
            present.push(e.file_name().to_string_lossy().to_string());
        }
        present.sort();
        for name in &present {
            if name != MANIFEST_FILE && !listed.contains_key(name.as_str()) && !self.signature_files.contains(name) {
                problems
                    .push(FileProblem { file: name.clone(), problem: "unexpected file (not in the manifest)".into() });
            }
        }
        for (name, f) in &listed {
            let path = self.dir.join(name);
            if !present.iter().any(|p| p == name) {
                problems.push(FileProblem { file: name.to_string(), problem: "missing".into() });
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, "cannot stat", e))?;
            if !meta.is_file() {
                problems.push(FileProblem { file: name.to_string(), problem: "not a regular file".into() });
                continue;
            }
            if meta.len() != f.size {
                problems.push(FileProblem {
                    file: name.to_string(),
                    problem: format!("size {} bytes, manifest says {}", meta.len(), f.size),
                });
                continue;
            }
            let sha = sha256_file(&path)?;
            if sha != f.sha256 {
                problems.push(FileProblem {
                    file: name.to_string(),
                    problem: format!("SHA-256 {sha}, manifest says {}", f.sha256),
                });
            }
        }
        Ok(problems)
    }

    /// The bytes of a tensor as deployed: reconstructed on `backend` for quantized tensors,
    /// as stored for raw ones.
    pub fn tensor_bytes(&self, backend: &dyn Backend, t: &TensorEntry, files: &mut OpenFiles) -> Result<Vec<u8>> {
        let (f, meta) = files.get(&self.dir, &t.file, t.kind == Kind::Quantized)?;
        match t.kind {
            Kind::Raw => {
                let v = f.tensor(&t.name).ok_or_else(|| bad_input!("{}: missing tensor \"{}\"", t.file, t.name))?;
                Ok(v.bytes.to_vec())
            }
            Kind::Quantized => {
                let meta = meta.as_ref().expect("loaded for quantized tensors");
                if meta.codec_version != self.manifest.codec.version {
                    return Err(bad_input!(
                        "{}: codec version {}, the manifest says {}",
                        t.file,
                        meta.codec_version,
                        self.manifest.codec.version
                    ));
                }
                let (q, dtype) = layer::decode(f, meta, &t.name)?;
                backend.dequantize(&q, dtype).map_err(|e| e.for_tensor(&t.name, dtype))
            }
        }
    }
}

/// Pack files opened (memory-mapped) once, with their parsed codec metadata.
#[derive(Default)]
pub struct OpenFiles {
    map: BTreeMap<String, (SafetensorsFile, Option<layer::LayerMeta>)>,
}

impl OpenFiles {
    fn get(&mut self, dir: &Path, name: &str, need_meta: bool) -> Result<&(SafetensorsFile, Option<layer::LayerMeta>)> {
        if !self.map.contains_key(name) {
            self.map.insert(name.to_string(), (SafetensorsFile::open(&dir.join(name))?, None));
        }
        let entry = self.map.get_mut(name).expect("inserted above");
        if need_meta && entry.1.is_none() {
            entry.1 = Some(layer::LayerMeta::from_file(&entry.0)?);
        }
        Ok(entry)
    }
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
