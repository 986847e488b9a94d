//! Digests as DESIGN §5 defines them: tensor digest, weights digest, canonical JSON.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// RFC 8785 (JCS) bytes of any serialisable value.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain structs (strings, integers, arrays) cannot fail.
    serde_json_canonicalizer::to_vec(value).expect("canonical JSON of a plain value")
}

/// One entry of the weights-digest list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TensorDigest {
    /// safetensors spelling, e.g. "BF16"
    pub dtype: String,
    pub name: String,
    /// lowercase hex SHA-256 of the stored bytes
    pub sha256: String,
    pub shape: Vec<u64>,
}

/// SHA-256 of the canonical JSON array of `entries`, sorted bytewise by name.
/// Identifies a deployed model independent of how its tensors are split into files.
pub fn weights_digest(entries: &[TensorDigest]) -> String {
    let mut sorted: Vec<&TensorDigest> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    sha256_hex(&canonical_json(&sorted))
}
