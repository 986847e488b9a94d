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

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/DIGESTS.md; expected values computed with Python's
    /// hashlib and json (the commands are in that document).
    #[test]
    fn worked_example_matches_python() {
        let a = [0x80u8, 0x3f, 0x00, 0xc0]; // BF16 [1.0, -2.0]
        let b = [0x00u8, 0x00, 0xc0, 0x3f]; // F32 [1.5]
        let entries = vec![
            TensorDigest {
                dtype: "BF16".into(),
                name: "model.norm.weight".into(),
                sha256: sha256_hex(&a),
                shape: vec![2],
            },
            TensorDigest { dtype: "F32".into(), name: "lm_head.bias".into(), sha256: sha256_hex(&b), shape: vec![1] },
        ];
        assert_eq!(entries[0].sha256, "7b429b1e3fd37fd03505ae4982471ea2c830392213b48a4e69976b5ebebce8e4");
        assert_eq!(entries[1].sha256, "c0e336a5f371ef22cd534e094269f2c1a9635cd080b71ffa671086832d3b60b7");
        let mut sorted = entries.clone();
        sorted.sort_by(|x, y| x.name.as_bytes().cmp(y.name.as_bytes()));
        assert_eq!(
            String::from_utf8(canonical_json(&sorted)).unwrap(),
            r#"[{"dtype":"F32","name":"lm_head.bias","sha256":"c0e336a5f371ef22cd534e094269f2c1a9635cd080b71ffa671086832d3b60b7","shape":[1]},{"dtype":"BF16","name":"model.norm.weight","sha256":"7b429b1e3fd37fd03505ae4982471ea2c830392213b48a4e69976b5ebebce8e4","shape":[2]}]"#
        );
        assert_eq!(weights_digest(&entries), "6b5d71fd11cee39c9c24af26497e086c97addb8297e255bde8c025235caf5b25");
    }
}
