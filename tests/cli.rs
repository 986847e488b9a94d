//! The `ucw` binary end to end: devices, hash (checked against an independent Python
//! computation), info, and exit codes for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn ucw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucw")).args(args).output().expect("run ucw")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

const FIXTURES: &[&str] = &["llama-bf16", "mistral-f16", "qwen2-f32", "qwen3-bf16-sharded"];

fn python() -> Option<&'static str> {
    ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// `ucw hash --json` equals scripts/ucw_digest.py, which parses the safetensors headers
/// itself and hashes with Python's hashlib.
#[test]
fn hash_matches_independent_python() {
    let Some(py) = python() else {
        assert!(std::env::var("UCW_REQUIRE_PYTHON").is_err(), "UCW_REQUIRE_PYTHON set but no python3 found");
        common::report_skip("hash_matches_independent_python", "no python3 (UCW_REQUIRE_PYTHON makes this a failure)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ucw_digest.py");
    for f in FIXTURES {
        let dir = fixture(f);
        let o = ucw(&["hash", "--json", dir.to_str().unwrap()]);
        assert!(o.status.success(), "{f}: {}", stderr(&o));
        let ours: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let p = Command::new(py).arg(&script).arg(&dir).output().unwrap();
        assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
        let theirs: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
        assert_eq!(ours["weights_digest"], theirs["weights_digest"], "{f}");
        let ours_tensors = ours["tensors"].as_array().unwrap();
        assert_eq!(ours_tensors.len(), theirs["tensors"].as_object().unwrap().len(), "{f}");
        for t in ours_tensors {
            assert_eq!(t["sha256"], theirs["tensors"][t["name"].as_str().unwrap()], "{f} {}", t["name"]);
        }
        println!("{f}: weights digest {} (matches Python hashlib)", ours["weights_digest"]);
    }
}

/// One tensor digest recomputed from the raw file bytes with no safetensors library at all:
/// header length, JSON offsets, SHA-256 of the byte range.
#[test]
fn tensor_digest_is_sha256_of_the_stored_byte_range() {
    use sha2::{Digest, Sha256};
    let path = fixture("mistral-f16").join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    let off = &header[name]["data_offsets"];
    let (b, e) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
    let want = hex::encode(Sha256::digest(&bytes[8 + n + b..8 + n + e]));
    let o = ucw(&["hash", fixture("mistral-f16").to_str().unwrap()]);
    let line = stdout(&o).lines().find(|l| l.ends_with(name)).unwrap().to_string();
    assert!(line.starts_with(&want), "{line} vs {want}");
}

#[test]
fn tied_lm_head_is_left_out_of_the_weights_digest() {
    // llama-bf16 is tied and stores no lm_head; store one anyway: the digest must not change.
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("llama-bf16")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let before = ucw(&["hash", "--json", dir.path().to_str().unwrap()]);
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let embed = st.tensor("model.embed_tokens.weight").unwrap();
    all.push(("lm_head.weight".into(), embed));
    let out = safetensors::serialize(all, None).unwrap();
    std::fs::write(&p, out).unwrap();
    let after = ucw(&["hash", "--json", dir.path().to_str().unwrap()]);
    let b: serde_json::Value = serde_json::from_slice(&before.stdout).unwrap();
    let a: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(a["weights_digest"], b["weights_digest"]);
    assert_eq!(a["tensors"].as_array().unwrap().len(), b["tensors"].as_array().unwrap().len());
}

#[test]
fn devices_lists_cpu_first_and_rejects_absent_devices() {
    let o = ucw(&["devices", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs[0]["api"], "cpu");
    // auto never picks a software adapter.
    let sel = v["selected"].as_u64().unwrap() as usize;
    assert!(sel == 0 || devs[sel]["software"] == false);
    // hardware before software
    let sw: Vec<bool> = devs[1..].iter().map(|d| d["software"].as_bool().unwrap()).collect();
    assert!(sw.windows(2).all(|w| !w[0] || w[1]), "{sw:?}");
    for (i, d) in devs.iter().enumerate() {
        assert_eq!(d["index"].as_u64().unwrap() as usize, i);
    }
    let absent = devs.len().to_string();
    for dev in ["metal", "dx12", absent.as_str(), "tpu"] {
        if devs.iter().any(|d| d["api"] == dev) {
            continue;
        }
        let o = ucw(&["devices", "--device", dev]);
        assert_eq!(o.status.code(), Some(2), "--device {dev}");
        let err = stderr(&o);
        assert!(err.contains("cpu"), "--device {dev}: {err}");
    }
}

/// An adapter that claims compute shaders but cannot build a compute pipeline is left out
/// of the list (and so of `auto` and `--device gl`), with its reason. NVIDIA's EGL driver
/// does this (an OpenGL 3.3 context advertising GL_ARB_compute_shader); Mesa reproduces it
/// when told to offer OpenGL 3.3 / GLSL 3.30.
#[test]
fn adapters_that_cannot_build_pipelines_are_skipped_with_a_reason() {
    let o = ucw(&["devices", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mesa_gl = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["api"] == "gl" && d["driver_info"].as_str().is_some_and(|s| s.contains("Mesa")));
    if !mesa_gl {
        let required = std::env::var("UCW_REQUIRE_DEVICES").unwrap_or_default();
        assert!(
            !required.split(',').any(|a| a.trim() == "gl"),
            "UCW_REQUIRE_DEVICES names gl but no Mesa GL adapter is here"
        );
        common::report_skip(
            "adapters_that_cannot_build_pipelines_are_skipped_with_a_reason",
            "no Mesa GL adapter to downgrade (UCW_REQUIRE_DEVICES naming gl makes this a failure)",
        );
        return;
    }
    let downgraded = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ucw"))
            .args(args)
            .env("MESA_GL_VERSION_OVERRIDE", "3.3")
            .env("MESA_GLSL_VERSION_OVERRIDE", "330")
            .output()
            .expect("run ucw")
    };
    let o = downgraded(&["devices", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["devices"].as_array().unwrap().iter().all(|d| d["api"] != "gl"), "{v}");
    let skipped = v["skipped"].as_array().unwrap();
    assert!(
        skipped.iter().any(|s| s["api"] == "gl" && s["reason"].as_str().unwrap().contains("COMPUTE_SHADER")),
        "{skipped:?}"
    );
    let o = downgraded(&["devices"]);
    assert!(stdout(&o).contains("skipped") && stdout(&o).contains("not usable"), "{}", stdout(&o));
    let o = downgraded(&["devices", "--device", "gl"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("gl is not present"), "{}", stderr(&o));
}
#[test]
fn info_describes_a_model_and_bad_models_exit_2() {
    let o = ucw(&["info", "--json", fixture("qwen3-bf16-sharded").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model_type"], "qwen3");
    assert_eq!(v["head_dim"], 32);
    assert_eq!(v["files"].as_array().unwrap().len(), 3);

    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("config.json"), r#"{"model_type": "gpt_neox", "hidden_size": 8}"#).unwrap();
    let o = ucw(&["info", t.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unsupported model_type \"gpt_neox\" (supported: llama, mistral, qwen2, qwen3)"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("ucw:")).count(), 1, "one-line error: {err}");

    let o = ucw(&["hash", "/nonexistent/model"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/model: not a directory"));

    let o = ucw(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}
