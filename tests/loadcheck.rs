//! The load-time check (python/ucw_loadcheck.py): the weights digest of tensors as a runtime
//! holds them equals the pack manifest's and `ucw hash` of the exported directory, for
//! every dtype a pack exports (BF16, F16, F32) and with tied embeddings; one changed bit in
//! memory fails the check naming the tensor.
//!
//! The loading runs in UCW_VENV (a venv .ci/run makes): once with safetensors' numpy
//! loader, and once with transformers and torch, as a serving process loads a model
//! (docs/LOADCHECK.md). The stdlib-only part runs with any python3. Missing Python or
//! packages print SKIPPED, or fail under UCW_REQUIRE_PYTHON (CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ucw::digest::{TensorDigest, sha256_hex, weights_digest};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn ucw(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ucw"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "ucw {}: {text}", args.join(" "));
    String::from_utf8(o.stdout).unwrap()
}

fn json_out(cmd: &mut Command) -> serde_json::Value {
    let o = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?}: {text}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{cmd:?}: {e}: {text}"))
}

fn skip_or_fail(test: &str, what: &str) {
    assert!(std::env::var("UCW_REQUIRE_PYTHON").is_err(), "UCW_REQUIRE_PYTHON is set but {what}");
    common::report_skip(test, &format!("{what} (UCW_REQUIRE_PYTHON makes this a failure)"));
}

/// The module against ucw's own weights digest on random tensors given as raw
/// (dtype, shape, bytes) triples: standard library only.
#[test]
fn stdlib_digest_equals_ucw() {
    let python = "python3";
    if Command::new(python).arg("--version").output().is_err() {
        return skip_or_fail("stdlib_digest_equals_ucw", "no python3");
    }
    let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15);
    let mut entries = Vec::new();
    let mut triples = Vec::new();
    for (name, dtype, shape) in [
        ("model.norm.weight", "BF16", vec![5u64]),
        ("lm_head.bias", "F32", vec![3]),
        ("model.layers.0.mlp.up_proj.weight", "F16", vec![4, 6]),
        ("model.layers.10.self_attn.q_proj.weight", "BF16", vec![2, 3]),
    ] {
        let size = if dtype == "F32" { 4 } else { 2 };
        let bytes: Vec<u8> = (0..shape.iter().product::<u64>() * size).map(|_| rng.next_u32() as u8).collect();
        entries.push(TensorDigest {
            dtype: dtype.into(),
            name: name.into(),
            sha256: sha256_hex(&bytes),
            shape: shape.clone(),
        });
        triples.push(serde_json::json!([name, dtype, shape, hex::encode(&bytes)]));
    }
    let script = "import json, sys; sys.path.insert(0, sys.argv[1]); import ucw_loadcheck as u; \
        t = json.loads(sys.argv[2]); \
        print(json.dumps({'digest': u.weights_digest([(n, (d, s, bytes.fromhex(b))) for n, d, s, b in t])}))";
    let v = json_out(
        Command::new(python)
            .args(["-c", script])
            .arg(root().join("python"))
            .arg(serde_json::to_string(&triples).unwrap()),
    );
    assert_eq!(v["digest"], weights_digest(&entries));
}

/// Packs of each export dtype: the committed calibrated qwen3 (BF16), and uncalibrated
/// packs of the mistral (F16) and tied-embedding qwen2 (F32) fixtures.
#[test]
fn loaded_weights_match_the_manifest_and_one_changed_bit_is_named() {
    let test = "loaded_weights_match_the_manifest_and_one_changed_bit_is_named";
    let Some(venv) = std::env::var_os("UCW_VENV").filter(|v| !v.is_empty()) else {
        return skip_or_fail(test, "UCW_VENV (a venv with safetensors, numpy, ml_dtypes) is not set");
    };
    let python = PathBuf::from(venv).join("bin/python");
    check_loaded(&python, &[], test);
}

/// The same with the model loaded by transformers (`AutoModelForCausalLM`, its exported
/// dtype) and checked through its `state_dict()`, as docs/LOADCHECK.md tells a serving
/// process to. The python is UCW_TORCH_PYTHON, else UCW_VENV's (.ci/run installs torch and
/// transformers there from .ci/requirements-torch.txt); one without both prints SKIPPED, a
/// failure under UCW_REQUIRE_PYTHON (CI).
#[test]
fn transformers_model_matches_the_manifest_and_one_changed_bit_is_named() {
    let test = "transformers_model_matches_the_manifest_and_one_changed_bit_is_named";
    let python = match (std::env::var_os("UCW_TORCH_PYTHON"), std::env::var_os("UCW_VENV")) {
        (Some(p), _) if !p.is_empty() => PathBuf::from(p),
        (_, Some(v)) if !v.is_empty() => PathBuf::from(v).join("bin/python"),
        _ => return skip_or_fail(test, "neither UCW_TORCH_PYTHON nor UCW_VENV is set"),
    };
    let has = Command::new(&python).args(["-c", "import torch, transformers"]).output();
    if !has.as_ref().is_ok_and(|o| o.status.success()) {
        let why = has
            .map(|o| String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or_default().to_string())
            .unwrap_or_else(|e| e.to_string());
        return skip_or_fail(test, &format!("{} cannot import torch and transformers: {why}", python.display()));
    }
    check_loaded(&python, &["--transformers"], test);
}

/// Packs of each export dtype, exported, loaded by tests/loadcheck.py (`mode`) and checked:
/// the digest equals the manifest's and `ucw hash`'s, and one bit changed in memory fails
/// naming the tensor.
fn check_loaded(python: &Path, mode: &[&str], test: &str) {
    let t = tempfile::tempdir().unwrap();
    let mut packs = vec![("qwen3-bf16", root().join("tests/fixtures/packs/qwen3-calibrated-codec-v1.ucw"))];
    for (name, fixture) in [("mistral-f16", "mistral-f16"), ("qwen2-f32", "qwen2-f32")] {
        let out = t.path().join(name);
        let src = root().join("tests/fixtures").join(fixture);
        ucw(&["compress", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--device", "cpu"]);
        packs.push((name, out));
    }
    let mut dtypes_seen = std::collections::BTreeSet::new();
    for (name, pack) in &packs {
        let export = t.path().join(format!("{name}.export"));
        ucw(&["export", pack.to_str().unwrap(), "-o", export.to_str().unwrap(), "--device", "cpu"]);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pack.join("ucw-manifest.json")).unwrap()).unwrap();
        let hash: serde_json::Value =
            serde_json::from_str(&ucw(&["hash", export.to_str().unwrap(), "--json"])).unwrap();
        let driver = |extra: &[&str]| {
            json_out(
                Command::new(python)
                    .arg(root().join("tests/loadcheck.py"))
                    .args(mode)
                    .arg(&export)
                    .arg(pack)
                    .args(extra),
            )
        };
        let v = driver(&[]);
        println!("{test}: {name}: {v}");
        assert_eq!(v["check"], "PASS", "{name}: {v}");
        assert_eq!(v["digest"], manifest["weights_digest"], "{name}");
        assert_eq!(v["digest"], hash["weights_digest"], "{name}");
        dtypes_seen.extend(v["dtypes"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()));

        // One bit of one quantized tensor, changed in memory after loading.
        let victim = manifest["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|t| t["kind"] == "quantized")
            .map(|t| t["name"].as_str().unwrap())
            .unwrap();
        let v = driver(&[victim]);
        println!("{name} with {victim} changed: {v}");
        assert_eq!(v["check"], "FAIL", "{name}: {v}");
        assert_eq!(v["tensor"], victim, "{name}: {v}");
        assert!(v["message"].as_str().unwrap().contains("sha256"), "{v}");
        assert_ne!(v["digest"], manifest["weights_digest"]);
        if *name == "qwen2-f32" {
            assert_eq!(v["tied"], true, "the qwen2 fixture ties its embeddings");
        }
    }
    let want: std::collections::BTreeSet<String> = ["bfloat16", "float16", "float32"].map(String::from).into();
    assert_eq!(dtypes_seen, want);
}
