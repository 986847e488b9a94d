//! `ucw verify`: file checks first, then every tensor rebuilt on each device and compared
//! with the manifest's digest (DESIGN §5, §7).

use std::collections::BTreeSet;

use super::{FileProblem, OpenFiles, Pack};
use crate::backend::Backend;
use crate::digest::{sha256_hex, weights_digest};
use crate::dtype::DType;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct TensorCheck {
    pub name: String,
    pub device: String,
    pub ok: bool,
    /// "reconstructed digest matches", or what went wrong.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub pack_digest: String,
    pub expect_ok: Option<bool>,
    pub files: Vec<FileProblem>,
    pub weights_digest_ok: bool,
    pub tensors: Vec<TensorCheck>,
}

impl Report {
    pub fn pass(&self) -> bool {
        self.expect_ok != Some(false)
            && self.files.is_empty()
            && self.weights_digest_ok
            && self.tensors.iter().all(|t| t.ok)
    }
}

fn expected_len(dtype: &str, shape: &[u64]) -> Option<u64> {
    let size = match dtype {
        "BF16" | "F16" => 2,
        "F32" => 4,
        _ => return None,
    };
    shape.iter().try_fold(size, |acc: u64, &d| acc.checked_mul(d))
}

/// Verify `pack` on every backend given. Errors only for what cannot be checked at all.
pub fn verify(pack: &Pack, backends: &[(String, &dyn Backend)], expect: Option<&str>) -> Result<Report> {
    let pack_digest = pack.digest();
    let expect_ok = match expect {
        Some(d) => Some(super::manifest::normalize_digest(d)? == pack_digest),
        None => None,
    };
    let files = pack.check_files()?;
    let bad_files: BTreeSet<&str> = files.iter().map(|p| p.file.as_str()).collect();
    let m = &pack.manifest;
    let digests: Vec<_> = m.tensors.iter().map(|t| t.digest()).collect();
    let weights_digest_ok = weights_digest(&digests) == m.weights_digest;
    let listed: BTreeSet<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    let mut tensors = Vec::new();
    for (label, backend) in backends {
        let mut open = OpenFiles::default();
        for t in &m.tensors {
            let check =
                |ok: bool, detail: String| TensorCheck { name: t.name.clone(), device: label.clone(), ok, detail };
            if !listed.contains(t.file.as_str()) {
                tensors.push(check(false, format!("its file {} is not listed in the manifest", t.file)));
                continue;
            }
            // A file that failed its check is still read (bounded, after the check) so the
            // report can name the damaged tensors, but none of its tensors can pass.
            let file_failed = bad_files.contains(t.file.as_str());
            if DType::from_safetensors_name(&t.dtype).is_none() {
                tensors.push(check(false, format!("unsupported dtype {}", t.dtype)));
                continue;
            }
            match pack.tensor_bytes(*backend, t, &mut open) {
                Err(e) => tensors.push(check(false, e.message)),
                Ok(bytes) if file_failed => {
                    let same = sha256_hex(&bytes) == t.sha256;
                    let detail = if same {
                        format!("digest matches, but {} failed its file check", t.file)
                    } else {
                        format!("damaged: {} failed its file check and this tensor's digest differs", t.file)
                    };
                    tensors.push(check(false, detail));
                }
                Ok(bytes) => {
                    let len_ok = expected_len(&t.dtype, &t.shape) == Some(bytes.len() as u64);
                    let sha = sha256_hex(&bytes);
                    if !len_ok {
                        tensors.push(check(
                            false,
                            format!("{} bytes do not match {} {:?}", bytes.len(), t.dtype, t.shape),
                        ));
                    } else if sha != t.sha256 {
                        tensors.push(check(false, format!("reconstructed SHA-256 {sha}, manifest says {}", t.sha256)));
                    } else {
                        tensors.push(check(true, "digest matches".into()));
                    }
                }
            }
        }
    }
    Ok(Report { pack_digest, expect_ok, files, weights_digest_ok, tensors })
}
