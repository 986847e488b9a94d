//! OpenSSF Model Signing interoperability with the real tool: the unmodified
//! `model_signing` CLI of the `model-signing` package signs a pack, and `model_signing
//! verify key` and `ucw verify --signature --public-key` agree on every case: a good
//! signature passes both; a tampered file, an added file, a wrong key, a consistently
//! re-made pack and a statement that lists a file the pack lacks are refused by both.
//!
//! UCW_VENV names a virtual environment with model-signing installed (.ci/run makes
//! one). Without it the test prints SKIPPED, unless UCW_REQUIRE_PYTHON is set (CI), which
//! makes it a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURE: &str = "tests/fixtures/packs/qwen3-calibrated-codec-v1.ucw";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn venv(test: &str) -> Option<PathBuf> {
    let Some(v) = std::env::var_os("UCW_VENV").filter(|v| !v.is_empty()) else {
        assert!(
            std::env::var("UCW_REQUIRE_PYTHON").is_err(),
            "UCW_REQUIRE_PYTHON is set but UCW_VENV (a venv with model-signing) is not"
        );
        common::report_skip(
            test,
            "UCW_VENV is not set (a venv with model-signing; UCW_REQUIRE_PYTHON makes this a failure)",
        );
        return None;
    };
    let v = PathBuf::from(v);
    assert!(v.join("bin/model_signing").is_file(), "UCW_VENV={}: no bin/model_signing", v.display());
    Some(v)
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

struct Oms {
    venv: PathBuf,
    dir: tempfile::TempDir,
}

impl Oms {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tool(&self, args: &[&str]) -> Output {
        run(Command::new(self.venv.join("bin/python")).arg(root().join("tests/oms_tool.py")).args(args))
    }

    fn sign(&self, pack: &Path, key: &str) -> Output {
        let (sig, key) = (pack.join("model.sig"), self.path(key));
        run(Command::new(self.venv.join("bin/model_signing"))
            .args(["sign", "key"])
            .arg(pack)
            .arg("--private_key")
            .arg(key)
            .arg("--signature")
            .arg(sig))
    }

    /// `model_signing verify key`: true when it accepts.
    fn oms_accepts(&self, pack: &Path, sig: &Path, public: &str) -> bool {
        let o = run(Command::new(self.venv.join("bin/model_signing"))
            .args(["verify", "key"])
            .arg(pack)
            .arg("--signature")
            .arg(sig)
            .arg("--public_key")
            .arg(self.path(public)));
        println!("model_signing verify key {} {}: {}", pack.display(), public, text(&o).trim());
        o.status.success()
    }

    fn ucw_verify(&self, pack: &Path, sig: &Path, public: &str) -> Output {
        self.ucw_verify_with(pack, sig, public, &[])
    }

    fn ucw_verify_with(&self, pack: &Path, sig: &Path, public: &str, extra: &[&str]) -> Output {
        let o = run(Command::new(env!("CARGO_BIN_EXE_ucw"))
            .args(["verify", "--device", "cpu"])
            .arg(pack)
            .arg("--signature")
            .arg(sig)
            .arg("--public-key")
            .arg(self.path(public))
            .args(extra));
        println!("ucw verify {} --public-key {}: {}", pack.display(), public, text(&o).trim());
        o
    }

    fn copy_pack(&self, name: &str) -> PathBuf {
        let dest = self.path(name);
        std::fs::create_dir(&dest).unwrap();
        for e in std::fs::read_dir(root().join(FIXTURE)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
        dest
    }
}

fn setup(test: &str) -> Option<Oms> {
    let oms = Oms { venv: venv(test)?, dir: tempfile::tempdir().unwrap() };
    for (private, public) in [("k1.pem", "k1.pub"), ("k2.pem", "k2.pub")] {
        let o = oms.tool(&["keygen", oms.path(private).to_str().unwrap(), oms.path(public).to_str().unwrap()]);
        assert!(o.status.success(), "keygen: {}", text(&o));
    }
    Some(oms)
}

#[test]
fn signed_pack_passes_both_tools_and_names_the_signer() {
    let Some(oms) = setup("signed_pack_passes_both_tools_and_names_the_signer") else { return };
    let pack = oms.copy_pack("p");
    let digest_before = ucw::digest::sha256_hex(&std::fs::read(pack.join("ucw-manifest.json")).unwrap());
    let o = oms.sign(&pack, "k1.pem");
    assert!(o.status.success(), "model_signing sign key: {}", text(&o));
    let sig = pack.join("model.sig");
    assert!(oms.oms_accepts(&pack, &sig, "k1.pub"));

    // The signature file is no part of the pack: plain verify passes (and says it was not
    // checked), and the pack digest is the one from before signing.
    let expect = format!("sha256:{digest_before}");
    let o = run(Command::new(env!("CARGO_BIN_EXE_ucw"))
        .args(["verify", "--device", "cpu", "--expect", &expect])
        .arg(&pack));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("model.sig is not part of the pack and was not checked"), "{}", text(&o));

    // The fingerprint printed is the SHA-256 of the DER key, computed here by Python.
    let fp = oms.tool(&["fingerprint", oms.path("k1.pub").to_str().unwrap()]);
    let fp = String::from_utf8(fp.stdout).unwrap().trim().to_string();
    assert_eq!(fp.len(), 64);
    let receipt = oms.path("receipt.json");
    let o = oms.ucw_verify_with(&pack, &sig, "k1.pub", &["--receipt", receipt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("signed by key sha256:{fp}")), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    assert_eq!(r["signature"]["result"], "PASS");
    assert_eq!(r["signature"]["signer_fingerprint"], fp.as_str());

    // A signature written outside the pack is read from there; one written into the pack
    // under another name is accepted under that name when --signature names it.
    let outside = oms.path("elsewhere.sig");
    std::fs::rename(&sig, &outside).unwrap();
    assert!(oms.ucw_verify(&pack, &outside, "k1.pub").status.success());
    let renamed = pack.join("pack.sig");
    std::fs::rename(&outside, &renamed).unwrap();
    assert!(oms.ucw_verify(&pack, &renamed, "k1.pub").status.success());
}

#[test]
fn both_tools_refuse_the_same_faults() {
    let Some(oms) = setup("both_tools_refuse_the_same_faults") else { return };
    let pack = oms.copy_pack("p");
    assert!(oms.sign(&pack, "k1.pem").status.success());
    let sig = pack.join("model.sig");

    // A wrong public key.
    assert!(!oms.oms_accepts(&pack, &sig, "k2.pub"));
    let receipt = oms.path("receipt.json");
    let o = oms.ucw_verify_with(&pack, &sig, "k2.pub", &["--receipt", receipt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    assert_eq!((r["result"].as_str(), r["signature"]["result"].as_str()), (Some("FAIL"), Some("FAIL")));
    assert!(r["signature"]["problems"][0].as_str().unwrap().contains("signed by another key"), "{r}");
    assert!(text(&o).contains("FAIL  signature") && text(&o).contains("signed by another key"), "{}", text(&o));

    // A statement that lists a file the pack does not have, signed by the right key.
    let (forged, k1) = (oms.path("forged.sig"), oms.path("k1.pem"));
    let args = ["resign", sig.to_str().unwrap(), k1.to_str().unwrap(), forged.to_str().unwrap(), "extra.safetensors"];
    let r = oms.tool(&args);
    assert!(r.status.success(), "resign: {}", text(&r));
    assert!(!oms.oms_accepts(&pack, &forged, "k1.pub"));
    let o = oms.ucw_verify(&pack, &forged, "k1.pub");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("signs extra.safetensors, which is not a file of the pack"), "{}", text(&o));

    // One changed byte in a layer file.
    let tampered = oms.copy_pack("tampered");
    std::fs::copy(&sig, tampered.join("model.sig")).unwrap();
    let layer = tampered.join("layer-00001.safetensors");
    let mut bytes = std::fs::read(&layer).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    assert!(!oms.oms_accepts(&tampered, &tampered.join("model.sig"), "k1.pub"));
    let o = oms.ucw_verify(&tampered, &tampered.join("model.sig"), "k1.pub");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL  file layer-00001.safetensors"), "{}", text(&o));
    // The signature holds for the manifest but not for the bytes on disk: it fails too.
    assert!(text(&o).contains("layer-00001.safetensors on disk is not the signed file"), "{}", text(&o));

    // A file added beside the signed ones.
    let added = oms.copy_pack("added");
    std::fs::copy(&sig, added.join("model.sig")).unwrap();
    std::fs::write(added.join("notes.txt"), b"not signed").unwrap();
    assert!(!oms.oms_accepts(&added, &added.join("model.sig"), "k1.pub"));
    let o = oms.ucw_verify(&added, &added.join("model.sig"), "k1.pub");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("notes.txt on disk is not the signed file"), "{}", text(&o));

    // A file changed and the manifest rewritten to match: a self-consistent pack that
    // plain `ucw verify` accepts; only the signature shows it is not the signed one.
    let resealed = oms.copy_pack("resealed");
    std::fs::copy(&sig, resealed.join("model.sig")).unwrap();
    let r = oms.tool(&["reseal", resealed.to_str().unwrap(), "generation_config.json"]);
    assert!(r.status.success(), "reseal: {}", text(&r));
    let plain = run(Command::new(env!("CARGO_BIN_EXE_ucw")).args(["verify", "--device", "cpu"]).arg(&resealed));
    assert!(plain.status.success(), "the resealed pack should pass on its own: {}", text(&plain));
    assert!(!oms.oms_accepts(&resealed, &resealed.join("model.sig"), "k1.pub"));
    let o = oms.ucw_verify(&resealed, &resealed.join("model.sig"), "k1.pub");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for name in ["generation_config.json: signed SHA-256", "ucw-manifest.json: signed SHA-256"] {
        assert!(text(&o).contains(name), "{name}: {}", text(&o));
    }
}
