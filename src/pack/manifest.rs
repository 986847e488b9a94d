//! `ucw-manifest.json`: what a pack holds, with every digest (DESIGN §5, docs/FORMAT.md).
//!
//! Canonical JSON (RFC 8785), integers and strings only, nothing that varies between runs.

use serde::{Deserialize, Serialize};

use crate::digest::{TensorDigest, canonical_json};
use crate::error::{Error, Result};
use crate::model::weights::is_plain_file_name;

pub const FORMAT: &str = "ucw-pack";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "ucw-manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub codec_version: u32,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTensor {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub files: Vec<FileEntry>,
    pub model_type: String,
    pub tensors: Vec<SourceTensor>,
    pub weights_digest: String,
}

/// A ratio of integers (no floats in the manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitsPerWeight {
    pub bits: u64,
    pub weights: u64,
}

impl BitsPerWeight {
    /// For printing only.
    pub fn value(&self) -> f64 {
        if self.weights == 0 { 0.0 } else { self.bits as f64 / self.weights as f64 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackBits {
    pub linears: BitsPerWeight,
    pub pack: BitsPerWeight,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodecParams {
    pub bits: u32,
    /// "mixed" when code widths were allocated per linear (each tensor entry holds its
    /// own); absent for one width everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bit_alloc: Option<String>,
    /// Error feedback's damping as a decimal fraction of H's mean diagonal (calibrated
    /// packs of codec version 2 on; version 1 used 0.01 and did not record it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damp: Option<String>,
    pub group_size: u32,
    /// "source" or a dtype spelling
    pub out_dtype: String,
    /// "auto" or a decimal rank
    pub rank: String,
    /// The bits-per-weight budget of `rank: "auto"` (absent for a fixed rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bpw: Option<BitsPerWeight>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Codec {
    pub calibration: Option<serde_json::Value>,
    pub name: String,
    pub parameters: CodecParams,
    pub version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Quantized,
    Raw,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    pub dtype: String,
    pub file: String,
    pub kind: Kind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    pub sha256: String,
    pub shape: Vec<u64>,
}

impl TensorEntry {
    pub fn digest(&self) -> TensorDigest {
        TensorDigest {
            dtype: self.dtype.clone(),
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            shape: self.shape.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub bits_per_weight: PackBits,
    pub codec: Codec,
    pub files: Vec<FileEntry>,
    pub format: String,
    pub format_version: u32,
    pub source: Source,
    pub tensors: Vec<TensorEntry>,
    pub tool: Tool,
    pub weights_digest: String,
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        canonical_json(self)
    }

    /// Parse manifest bytes: JSON, canonical form, known format and version, plain file
    /// names. Every failure here means the pack cannot be checked at all (exit 2).
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let what = MANIFEST_FILE;
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad_input!("{what}: not valid JSON: {e}"))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => return Err(bad_input!("{what}: format is {other:?}, not \"{FORMAT}\"")),
        }
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v > FORMAT_VERSION as u64 => {
                return Err(bad_input!(
                    "{what}: format_version {v} is newer than this ucw understands ({FORMAT_VERSION}); upgrade ucw"
                ));
            }
            Some(v) if v == FORMAT_VERSION as u64 => {}
            _ => return Err(bad_input!("{what}: missing or invalid format_version")),
        }
        if canonical_json(&value) != bytes {
            return Err(bad_input!("{what}: not in canonical form (RFC 8785)"));
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| bad_input!("{what}: invalid manifest: {e}"))?;
        for name in m.files.iter().map(|f| &f.name).chain(m.tensors.iter().map(|t| &t.file)) {
            if !is_plain_file_name(name) || name == MANIFEST_FILE {
                return Err(bad_input!("{what}: file name \"{name}\" is not a plain file inside the pack"));
            }
        }
        Ok(m)
    }
}

/// Parse `sha256:`-prefixed or bare, any-case hex digests for comparison.
pub fn normalize_digest(d: &str) -> Result<String> {
    let s = d.trim();
    let s = s.strip_prefix("sha256:").or_else(|| s.strip_prefix("SHA256:")).unwrap_or(s).to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::bad_input(format!(
            "\"{d}\" is not a SHA-256 digest (64 hex digits, optional sha256: prefix)"
        )));
    }
    Ok(s)
}
