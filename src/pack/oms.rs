//! OpenSSF Model Signing (OMS, the `model-signing` package) signatures over a pack,
//! checked without Python: a Sigstore bundle (JSON) holding a DSSE envelope over an in-toto
//! statement whose predicate lists every signed file with its SHA-256. This module checks
//! the key method of OMS (ECDSA P-256 with SHA-256, as `model_signing sign key` writes it)
//! with the RustCrypto `p256` crate, and that the signed file list is exactly the pack.
//!
//! Formats, from model-signing 1.1.1 (`_signing/sign_ec_key.py`, `sign_sigstore_pb.py`,
//! `_signing/signing.py`): bundle `{"mediaType", "verificationMaterial": {"publicKey":
//! {"hint": hex SHA-256 of the signer's public key PEM}}, "dsseEnvelope": {"payload":
//! base64, "payloadType", "signatures": [{"sig": base64 DER ECDSA}]}}`; the statement's
//! `subject[0].digest.sha256` is the SHA-256 of the concatenated raw resource digests in
//! the order listed. docs/SIGNING.md describes what is checked and what differs from OMS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use serde_json::Value;

use super::{FileProblem, MANIFEST_FILE, Pack};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};

/// Where `model_signing sign` writes its bundle unless told otherwise. OMS leaves the
/// signature file out of what it signs, and ucw accepts it in a pack beside the manifest.
pub const SIGNATURE_FILE: &str = "model.sig";

const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// An ECDSA P-256 public key as `model_signing verify key --public_key` takes it (PEM
/// SubjectPublicKeyInfo).
pub struct PublicKey {
    key: VerifyingKey,
    /// SHA-256 of the key's PEM: what OMS writes as the bundle's key hint.
    pem_sha256: String,
    /// The signer fingerprint ucw reports: SHA-256 of the DER SubjectPublicKeyInfo, the
    /// same bytes `openssl pkey -pubin -outform DER | sha256sum` hashes.
    pub fingerprint: String,
}

impl PublicKey {
    pub fn from_pem(pem: &str, what: &str) -> Result<PublicKey> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| bad_input!("{what}: not an ECDSA P-256 public key in PEM (SubjectPublicKeyInfo): {e}"))?;
        // Encoding a valid P-256 point cannot fail.
        let der = key.to_public_key_der().map_err(|e| bad_input!("{what}: cannot encode the key: {e}"))?;
        let pem =
            key.to_public_key_pem(LineEnding::LF).map_err(|e| bad_input!("{what}: cannot encode the key: {e}"))?;
        Ok(PublicKey { key, pem_sha256: sha256_hex(pem.as_bytes()), fingerprint: sha256_hex(der.as_bytes()) })
    }

    pub fn from_file(path: &Path) -> Result<PublicKey> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read", e))?;
        PublicKey::from_pem(&text, &path.display().to_string())
    }
}

/// The outcome of a signature check that could be carried out: no problem means the
/// bundle was signed by the key and signs exactly the pack's files.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    pub signer_fingerprint: String,
    pub problems: Vec<String>,
}

impl SignatureCheck {
    pub fn pass(&self) -> bool {
        self.problems.is_empty()
    }

    /// The statement is compared with the manifest's list; a pack file that then fails its
    /// file check (changed, missing, or present but unlisted) is not what was signed
    /// either, and OMS, which hashes the files on disk, refuses it too. The manifest's
    /// own consistency problems are no such file: its digest was compared directly.
    pub fn add_file_problems(&mut self, what: &str, files: &[FileProblem]) {
        for p in files.iter().filter(|p| p.file != MANIFEST_FILE) {
            self.problems.push(format!("{what}: {} on disk is not the signed file ({})", p.file, p.problem));
        }
    }
}

/// What a signature over the pack must list: every file the manifest lists, and the
/// manifest itself (its digest is the pack digest), by name with lowercase hex SHA-256.
/// Together with the file checks of `ucw verify` this ties the signature to the files on
/// disk: the files equal the manifest's list, the list equals the signed statement.
pub fn pack_resources(pack: &Pack) -> BTreeMap<String, String> {
    let mut r: BTreeMap<String, String> =
        pack.manifest.files.iter().map(|f| (f.name.clone(), f.sha256.clone())).collect();
    r.insert(MANIFEST_FILE.to_string(), pack.digest());
    r
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn string<'a>(v: &'a Value, path: &[&str], what: &str) -> Result<&'a str> {
    field(v, path).and_then(Value::as_str).ok_or_else(|| bad_input!("{what}: no string at {}", path.join(".")))
}

/// DSSE v1 pre-authentication encoding: what the signature covers.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut m = format!("DSSEv1 {} {PAYLOAD_TYPE} {} ", PAYLOAD_TYPE.len(), payload.len()).into_bytes();
    m.extend_from_slice(payload);
    m
}

/// Check the OMS bundle `bundle` (named `what` in messages) against `key` and the files
/// `expected` (name → SHA-256). Errors (exit 2) for a bundle that cannot be checked at all:
/// not JSON, not a DSSE bundle, an encoding or statement form OMS key signing does not
/// write. A bundle that was checked and does not hold up is a `SignatureCheck` with
/// problems (exit 1).
pub fn check(
    bundle: &[u8],
    what: &str,
    key: &PublicKey,
    expected: &BTreeMap<String, String>,
) -> Result<SignatureCheck> {
    let fail = |problem: String| {
        Ok(SignatureCheck { signer_fingerprint: key.fingerprint.clone(), problems: vec![format!("{what}: {problem}")] })
    };
    let b: Value =
        serde_json::from_slice(bundle).map_err(|e| bad_input!("{what}: not a signature bundle (JSON): {e}"))?;
    let media = b
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_input!("{what}: not a Sigstore signature bundle (no mediaType)"))?;
    if media != BUNDLE_MEDIA_TYPE {
        return Err(bad_input!("{what}: bundle media type {media}, expected {BUNDLE_MEDIA_TYPE}"));
    }
    let payload_b64 = string(&b, &["dsseEnvelope", "payload"], what)?;
    let payload = STANDARD.decode(payload_b64).map_err(|e| bad_input!("{what}: DSSE payload is not base64: {e}"))?;
    let sig_b64 = field(&b, &["dsseEnvelope", "signatures"])
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .and_then(|s| s.get("sig"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad_input!("{what}: the DSSE envelope has no signature"))?;
    let sig_der = STANDARD.decode(sig_b64).map_err(|e| bad_input!("{what}: DSSE signature is not base64: {e}"))?;

    // OMS refuses a bundle whose key hint names another key before it checks anything
    // else; a bundle without a hint (older OMS) is checked by the signature alone.
    if let Some(hint) = field(&b, &["verificationMaterial", "publicKey", "hint"]).and_then(Value::as_str)
        && !hint.is_empty()
        && !hint.eq_ignore_ascii_case(&key.pem_sha256)
    {
        return fail(format!(
            "signed by another key: its key hint {hint} is not this public key's (fingerprint {})",
            key.fingerprint
        ));
    }
    // OMS signs only the first signature's key; so do we.
    let verified = Signature::from_der(&sig_der).ok().is_some_and(|s| key.key.verify(&pae(&payload), &s).is_ok());
    if !verified {
        return fail(format!("the DSSE signature does not verify with public key {}", key.fingerprint));
    }
    let payload_type = string(&b, &["dsseEnvelope", "payloadType"], what)?;
    if payload_type != PAYLOAD_TYPE {
        return fail(format!("payload type {payload_type}, expected {PAYLOAD_TYPE}"));
    }

    // From here on the statement is the signer's own.
    let s: Value =
        serde_json::from_slice(&payload).map_err(|e| bad_input!("{what}: signed statement is not JSON: {e}"))?;
    for (path, want) in [(&["_type"][..], STATEMENT_TYPE), (&["predicateType"][..], PREDICATE_TYPE)] {
        let got = string(&s, path, what)?;
        if got != want {
            return Err(bad_input!("{what}: statement {} is {got}; this build checks {want}", path[0]));
        }
    }
    let ser = field(&s, &["predicate", "serialization"]).ok_or_else(|| bad_input!("{what}: no serialization"))?;
    let (method, hash) = (string(ser, &["method"], what)?, string(ser, &["hash_type"], what)?);
    if method != "files" || hash != "sha256" {
        return Err(bad_input!(
            "{what}: serialization {method}/{hash}; ucw checks the default per-file SHA-256 (sign without shards or other hashes)"
        ));
    }
    let subjects = field(&s, &["subject"]).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let [subject] = subjects else {
        return Err(bad_input!("{what}: statement has {} subjects, OMS writes one", subjects.len()));
    };
    let root = string(subject, &["digest", "sha256"], what)?;
    let resources = field(&s, &["predicate", "resources"])
        .and_then(Value::as_array)
        .ok_or_else(|| bad_input!("{what}: statement has no resources list"))?;

    let mut problems = Vec::new();
    let mut signed = BTreeMap::new();
    let mut concat = Vec::with_capacity(32 * resources.len());
    for r in resources {
        let name = string(r, &["name"], what)?;
        let algorithm = string(r, &["algorithm"], what)?;
        let digest = string(r, &["digest"], what)?;
        if algorithm != "sha256" {
            return Err(bad_input!("{what}: resource {name} is hashed with {algorithm}, not sha256"));
        }
        let raw = hex::decode(digest)
            .ok()
            .filter(|d| d.len() == 32)
            .ok_or_else(|| bad_input!("{what}: resource {name}: digest {digest} is not a SHA-256"))?;
        concat.extend_from_slice(&raw);
        if signed.insert(name.to_string(), hex::encode(raw)).is_some() {
            problems.push(format!("{what}: the statement lists {name} twice"));
        }
    }
    if !root.eq_ignore_ascii_case(&sha256_hex(&concat)) {
        problems.push(format!("{what}: statement subject digest {root} is not the digest of its resources"));
    }
    let names: BTreeSet<&String> = signed.keys().chain(expected.keys()).collect();
    for name in names {
        match (signed.get(name), expected.get(name)) {
            (Some(_), None) => problems.push(format!("{what}: signs {name}, which is not a file of the pack")),
            (None, Some(_)) => problems.push(format!("{what}: pack file {name} is not signed")),
            (Some(s), Some(e)) if s != e => {
                problems.push(format!("{what}: {name}: signed SHA-256 {s}, the pack's is {e}"))
            }
            _ => {}
        }
    }
    Ok(SignatureCheck { signer_fingerprint: key.fingerprint.clone(), problems })
}

#[cfg(test)]
mod tests {
    //! Bundles built here the way model-signing 1.1.1 builds them (key hint, base64 DSSE,
    //! in-toto statement), signed with a fixed key, so each check is shown catching its
    //! fault without Python (tests/oms.rs runs the real tool).
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use serde_json::json;

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn public(k: &SigningKey) -> PublicKey {
        let pem = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        PublicKey::from_pem(&pem, "key.pem").unwrap()
    }

    fn files() -> BTreeMap<String, String> {
        [("a.safetensors", sha256_hex(b"a")), (MANIFEST_FILE, sha256_hex(b"m"))]
            .into_iter()
            .map(|(n, d)| (n.to_string(), d))
            .collect()
    }

    fn statement(resources: &BTreeMap<String, String>) -> Value {
        let concat: Vec<u8> = resources.values().flat_map(|d| hex::decode(d).unwrap()).collect();
        json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "p", "digest": {"sha256": sha256_hex(&concat)}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false,
                                  "ignore_paths": [SIGNATURE_FILE]},
                "resources": resources.iter().map(|(n, d)| json!({"name": n, "algorithm": "sha256", "digest": d}))
                    .collect::<Vec<_>>(),
            }
        })
    }

    fn bundle(k: &SigningKey, statement: &Value) -> Vec<u8> {
        let payload = serde_json::to_vec_pretty(statement).unwrap();
        let sig: Signature = k.sign(&pae(&payload));
        serde_json::to_vec(&json!({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": public(k).pem_sha256}, "tlogEntries": []},
            "dsseEnvelope": {
                "payload": STANDARD.encode(&payload),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": STANDARD.encode(sig.to_der().as_bytes()), "keyid": ""}],
            }
        }))
        .unwrap()
    }

    fn problems(bundle: &[u8], key: &PublicKey) -> Vec<String> {
        check(bundle, "model.sig", key, &files()).unwrap().problems
    }

    #[test]
    fn signed_pack_passes_and_names_the_signer() {
        let k = signing_key(7);
        let c = check(&bundle(&k, &statement(&files())), "model.sig", &public(&k), &files()).unwrap();
        assert!(c.pass(), "{:?}", c.problems);
        // The fingerprint is the SHA-256 of the DER SubjectPublicKeyInfo.
        let der = k.verifying_key().to_public_key_der().unwrap();
        assert_eq!(c.signer_fingerprint, sha256_hex(der.as_bytes()));
    }

    #[test]
    fn wrong_key_fails_by_hint_and_by_signature() {
        let (k, other) = (signing_key(7), signing_key(8));
        let b = bundle(&k, &statement(&files()));
        assert!(problems(&b, &public(&other))[0].contains("signed by another key"));
        // Without the (unsigned) hint the signature itself must still fail.
        let mut v: Value = serde_json::from_slice(&b).unwrap();
        v["verificationMaterial"]["publicKey"]["hint"] = json!("");
        let b = serde_json::to_vec(&v).unwrap();
        assert!(problems(&b, &public(&other))[0].contains("does not verify"));
        assert!(problems(&b, &public(&k)).is_empty());
    }

    #[test]
    fn edited_statement_fails_the_signature() {
        let k = signing_key(7);
        let mut v: Value = serde_json::from_slice(&bundle(&k, &statement(&files()))).unwrap();
        let mut payload = STANDARD.decode(v["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
        let at = payload.iter().position(|&c| c == b'a').unwrap();
        payload[at] = b'b';
        v["dsseEnvelope"]["payload"] = json!(STANDARD.encode(&payload));
        let p = problems(&serde_json::to_vec(&v).unwrap(), &public(&k));
        assert!(p[0].contains("does not verify"), "{p:?}");
    }

    #[test]
    fn statement_must_list_exactly_the_pack() {
        let k = signing_key(7);
        let key = public(&k);
        let mut extra = files();
        extra.insert("b.safetensors".into(), sha256_hex(b"b"));
        assert_eq!(
            problems(&bundle(&k, &statement(&extra)), &key),
            ["model.sig: signs b.safetensors, which is not a file of the pack"]
        );
        let mut missing = files();
        missing.remove("a.safetensors");
        assert_eq!(
            problems(&bundle(&k, &statement(&missing)), &key),
            ["model.sig: pack file a.safetensors is not signed"]
        );
        let mut changed = files();
        changed.insert(MANIFEST_FILE.into(), sha256_hex(b"other"));
        let p = problems(&bundle(&k, &statement(&changed)), &key);
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("model.sig: ucw-manifest.json: signed SHA-256"), "{p:?}");
    }

    #[test]
    fn subject_digest_must_cover_the_resources() {
        let k = signing_key(7);
        let mut s = statement(&files());
        s["subject"][0]["digest"]["sha256"] = json!(sha256_hex(b"x"));
        let p = problems(&bundle(&k, &s), &public(&k));
        assert!(p[0].contains("subject digest"), "{p:?}");
    }

    #[test]
    fn unreadable_bundles_and_keys_are_bad_input() {
        let k = signing_key(7);
        let key = public(&k);
        let good: Value = serde_json::from_slice(&bundle(&k, &statement(&files()))).unwrap();
        let mut cases = vec![b"not json".to_vec()];
        for edit in [
            |v: &mut Value| v["mediaType"] = json!("application/json"),
            |v: &mut Value| v["dsseEnvelope"]["payload"] = json!("***"),
            |v: &mut Value| v["dsseEnvelope"]["signatures"] = json!([]),
        ] {
            let mut v = good.clone();
            edit(&mut v);
            cases.push(serde_json::to_vec(&v).unwrap());
        }
        let mut shards = statement(&files());
        shards["predicate"]["serialization"]["method"] = json!("shards");
        cases.push(bundle(&k, &shards));
        for c in cases {
            let e = check(&c, "model.sig", &key, &files()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.message.starts_with("model.sig: "), "{e}");
        }
        // A P-384 key (what `openssl ecparam -name secp384r1` makes) is refused by name.
        let p384 = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEuQluZ68yvO1AhIXmaHq7dEco1bTcCcdA\nyXVQjqvG0H/cUjhwJ1/sdbwT6vPm/C/BC72wNHV6MmYowLR97AboCmVPD17+PphB\ne+eFNqxZ6kuRWHsDq88I4fms4ZogO+18\n-----END PUBLIC KEY-----\n";
        let e = PublicKey::from_pem(p384, "k.pem").err().unwrap();
        assert!(e.message.contains("k.pem: not an ECDSA P-256"), "{e}");
    }
}
