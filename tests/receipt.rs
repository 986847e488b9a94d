//! `ucw verify --receipt`: the record names what the manifest says (digests, tensor count),
//! the device, the tool and the host; a failing pack gets a FAIL receipt and exit 1; a
//! receipt inside the pack is refused; `ucw eval -o` names the same digests under the same
//! field names, so reports and receipts join.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURE: &str = "tests/fixtures/packs/qwen3-calibrated-codec-v1.ucw";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn ucw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucw")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn copy_pack(dest: &Path) {
    std::fs::create_dir(dest).unwrap();
    for e in std::fs::read_dir(root().join(FIXTURE)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
}

/// "YYYY-MM-DDTHH:MM:SSZ"
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn pass_receipt_names_the_manifest_and_joins_the_eval_report() {
    let t = tempfile::tempdir().unwrap();
    let pack = root().join(FIXTURE);
    let manifest_bytes = std::fs::read(pack.join("ucw-manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let path = t.path().join("r.json");
    let o = ucw(&["verify", pack.to_str().unwrap(), "--device", "cpu", "--receipt", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&path);
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r["schema"], "ucw-verify-receipt");
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["result"], "PASS");
    assert_eq!(r["pack_digest"], ucw::digest::sha256_hex(&manifest_bytes));
    assert_eq!(r["weights_digest"], manifest["weights_digest"]);
    assert_eq!(r["weights_digest_ok"], true);
    assert_eq!(r["file_problems"], serde_json::json!([]));
    assert_eq!(r["signature"], serde_json::Value::Null);
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(
        (d["label"].as_str(), d["api"].as_str(), d["result"].as_str()),
        (Some("cpu#0"), Some("cpu"), Some("PASS"))
    );
    assert_eq!(d["tensors_checked"], manifest["tensors"].as_array().unwrap().len());
    assert_eq!(d["tensors_failed"], 0);
    assert!(!d["driver"].as_str().unwrap().is_empty());
    assert_eq!(r["tool"]["name"], "ucw");
    assert_eq!(r["tool"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["host"]["os"], std::env::consts::OS);
    assert!(r["host"]["threads"].as_u64().unwrap() >= 1);
    assert!(!r["host"]["cpu"].as_str().unwrap().is_empty());
    assert!(is_rfc3339_utc(r["time_utc"].as_str().unwrap()), "{}", r["time_utc"]);
    // Only the receipt is left: no temporary file beside it.
    let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["r.json"]);

    // The evaluation report names the pack by the same fields with the same values.
    let report = t.path().join("eval.json");
    let sample = root().join("tests/fixtures/text/sample.txt");
    let args = ["eval", pack.to_str().unwrap(), "--text", sample.to_str().unwrap(), "--seq-len", "16"];
    let o = ucw(&[&args[..], &["--windows", "1", "--device", "cpu", "-o", report.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let e = json(&report);
    for field in ["pack_digest", "weights_digest"] {
        assert_eq!(e[field], r[field], "{field}");
    }
}

#[test]
fn fail_receipt_says_fail_and_exit_is_1() {
    let t = tempfile::tempdir().unwrap();
    let pack = t.path().join("p");
    copy_pack(&pack);
    let layer = pack.join("layer-00000.safetensors");
    let mut bytes = std::fs::read(&layer).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x10;
    std::fs::write(&layer, bytes).unwrap();
    let path = t.path().join("r.json");
    let o = ucw(&["verify", pack.to_str().unwrap(), "--device", "cpu", "--receipt", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = json(&path);
    assert_eq!(r["result"], "FAIL");
    assert_eq!(r["file_problems"][0]["file"], "layer-00000.safetensors");
    let d = &r["devices"][0];
    assert_eq!(d["result"], "FAIL");
    assert!(d["tensors_failed"].as_u64().unwrap() > 0, "{d}");
    assert!(d["failures"][0].as_str().unwrap().contains("layer-00000.safetensors"), "{d}");
}

#[test]
fn receipt_inside_the_pack_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let pack = t.path().join("p");
    copy_pack(&pack);
    let inside = pack.join("receipt.json");
    let o = ucw(&["verify", pack.to_str().unwrap(), "--device", "cpu", "--receipt", inside.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("outside the pack"), "{}", text(&o));
    assert!(!inside.exists());
    // The pack is untouched and still verifies.
    assert!(ucw(&["verify", pack.to_str().unwrap(), "--device", "cpu"]).status.success());
}
