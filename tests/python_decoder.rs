//! The independent decoder (scripts/ucw_decode.py, Python + numpy, written from
//! docs/FORMAT.md alone) reconstructs fixture packs and reproduces every digest.
//! Skipped when python3 with numpy is absent, unless UCW_REQUIRE_PYTHON is set (CI).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ucw::backend::cpu::CpuBackend;
use ucw::compress::calib::{CalibInput, CalibSpec, Propagate};
use ucw::compress::{BitAlloc, Options, Rank, compress};
use ucw::dtype::DType;
use ucw::pack::Pack;

fn python_with_numpy() -> Option<&'static str> {
    let found = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        assert!(
            std::env::var("UCW_REQUIRE_PYTHON").is_err(),
            "UCW_REQUIRE_PYTHON is set but python3 with numpy is missing"
        );
    }
    found
}

#[test]
fn independent_decoder_reproduces_the_manifest_digests() {
    let Some(py) = python_with_numpy() else {
        common::report_skip(
            "independent_decoder_reproduces_the_manifest_digests",
            "no python3 with numpy (UCW_REQUIRE_PYTHON makes this a failure)",
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: &[(&str, Options)] = &[
        ("llama-bf16", Options::default()),
        ("mistral-f16", Options::default()),
        ("qwen2-f32", Options::default()),
        ("qwen3-bf16-sharded", Options::default()),
        ("llama-bf16", Options { out_dtype: Some(DType::F32), ..Options::default() }),
        ("qwen2-f32", Options { out_dtype: Some(DType::F16), bits: 3, ..Options::default() }),
        ("mistral-f16", Options { bits: 8, group_size: 7, out_dtype: Some(DType::BF16), ..Options::default() }),
        ("qwen3-bf16-sharded", Options { bits: 2, group_size: 100, ..Options::default() }),
        ("qwen3-bf16-sharded", Options { rank: Rank::Fixed(4), ..Options::default() }),
        ("qwen2-f32", Options { rank: Rank::Fixed(32), out_dtype: Some(DType::F32), ..Options::default() }),
        ("mistral-f16", Options { rank: Rank::Fixed(1), bits: 3, ..Options::default() }),
    ];
    let t = tempfile::tempdir().unwrap();
    for (i, (fixture, opts)) in cases.iter().enumerate() {
        let out = t.path().join(format!("p{i}"));
        compress(&root.join("tests/fixtures").join(fixture), &out, &CpuBackend::new(), opts, &mut |_| {}).unwrap();
        let pack = Pack::open(&out).unwrap();
        let o = Command::new(py).arg(root.join("scripts/ucw_decode.py")).arg(&out).output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{fixture} {opts:?}: {stdout}{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["ok"], true, "{fixture} {opts:?}: {stdout}");
        assert_eq!(v["pack_digest"], pack.digest());
        assert_eq!(v["weights_digest"], pack.manifest.weights_digest);
        assert_eq!(v["tensors_checked"], pack.manifest.tensors.len());
        println!(
            "{fixture} {} bits g{} {:?}: Python decoder reproduced all {} digests",
            opts.bits,
            opts.group_size,
            opts.out_dtype,
            pack.manifest.tensors.len()
        );
    }
    // A pack written by codec version 1 (tests/fixtures/packs) and one calibrated on the
    // built-in mix (its manifest names it): the independent reader decodes both.
    let mixed = t.path().join("mix");
    let sample = root.join("data/calib/mix-v1.txt");
    let o = Command::new(env!("CARGO_BIN_EXE_ucw"))
        .args(["compress", root.join("tests/fixtures/qwen3-bf16-sharded").to_str().unwrap(), "-o"])
        .arg(&mixed)
        .args(["--calib", "default", "--calib-windows", "2", "--calib-seq-len", "32", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(sample.exists());
    for out in [root.join("tests/fixtures/packs/qwen3-calibrated-codec-v1.ucw"), mixed] {
        let pack = Pack::open(&out).unwrap();
        let o = Command::new(py).arg(root.join("scripts/ucw_decode.py")).arg(&out).output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}: {stdout}{}", out.display(), String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["ok"], true, "{}: {stdout}", out.display());
        assert_eq!(v["pack_digest"], pack.digest());
        assert_eq!(v["weights_digest"], pack.manifest.weights_digest);
        println!("{}: Python decoder reproduced all {} digests", out.display(), pack.manifest.tensors.len());
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Run the decoder on `pack`: (exit status, its JSON report, stdout + stderr for messages).
fn decode(py: &str, pack: &Path) -> (Option<i32>, serde_json::Value, String) {
    let o = Command::new(py).arg(root().join("scripts/ucw_decode.py")).arg(pack).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("decoder printed no JSON report ({e}): {all}"));
    (o.status.code(), v, all)
}

fn manifest_json(pack: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(pack.join("ucw-manifest.json")).unwrap()).unwrap()
}

fn quantized(m: &serde_json::Value) -> Vec<&serde_json::Value> {
    m["tensors"].as_array().unwrap().iter().filter(|t| t["kind"] == "quantized").collect()
}

/// Calibrated settings with per-linear widths and overlays; the tokens file is written into
/// `tmp` for the `--calib-tokens` case.
fn calibrated_cases(tmp: &Path) -> Vec<(&'static str, Options)> {
    let text = |windows, propagate| CalibSpec {
        input: CalibInput::Text(root().join("tests/fixtures/text/sample.txt")),
        windows,
        seq_len: 64,
        skip: 16,
        propagate,
    };
    let toks = tmp.join("calib-tokens.bin");
    let ids: Vec<u8> = (0..300u32).flat_map(|i| (i * 7 % 500).to_le_bytes()).collect();
    std::fs::write(&toks, ids).unwrap();
    let mixed = |bits, weights| BitAlloc::Mixed { bits, weights };
    vec![
        // Mixed widths (4 and 5 under codec version 4), rank 4 on every linear.
        (
            "qwen3-bf16-sharded",
            Options {
                bit_alloc: mixed(550, 100),
                rank: Rank::Fixed(4),
                calib: Some(text(4, Propagate::Compressed)),
                ..Options::default()
            },
        ),
        // The default command's shape (mixed widths, rank auto within the same target).
        (
            "qwen3-bf16-sharded",
            Options {
                bit_alloc: mixed(475, 100),
                rank: Rank::Auto { bits: 475, weights: 100 },
                calib: Some(text(4, Propagate::Compressed)),
                ..Options::default()
            },
        ),
        // Token-id calibration (tokenizer_sha256 null), teacher states, f32 output.
        (
            "llama-bf16",
            Options {
                // 5.25: since codec version 4 the tiny linears' stream tables leave 4.75 only
                // 4-bit widths on this fixture.
                bit_alloc: mixed(525, 100),
                rank: Rank::Fixed(2),
                out_dtype: Some(DType::F32),
                calib: Some(CalibSpec {
                    input: CalibInput::Tokens(toks),
                    windows: 4,
                    seq_len: 64,
                    skip: 0,
                    propagate: Propagate::Teacher,
                }),
                ..Options::default()
            },
        ),
        // Widths around 3 bits (2..4 allowed, none a whole byte), groups of 32, f16 source.
        (
            "mistral-f16",
            Options {
                bits: 3,
                group_size: 32,
                bit_alloc: mixed(350, 100),
                rank: Rank::Fixed(1),
                calib: Some(text(3, Propagate::Compressed)),
                ..Options::default()
            },
        ),
    ]
}

/// Asserts the pack really has what these tests are about (so they cannot silently become
/// uniform-width or overlay-free): calibration provenance, bit_alloc "mixed", at least two
/// code widths, at least one overlay. Returns the widths.
fn assert_mixed_with_overlays(what: &str, m: &serde_json::Value) -> BTreeSet<u64> {
    assert!(m["codec"]["calibration"].is_object(), "{what}: not calibrated");
    assert_eq!(m["codec"]["parameters"]["bit_alloc"], "mixed", "{what}");
    let q = quantized(m);
    let widths: BTreeSet<u64> = q.iter().map(|t| t["bits"].as_u64().unwrap()).collect();
    let overlays = q.iter().filter(|t| t["rank"].as_u64().unwrap() > 0).count();
    assert!(widths.len() >= 2, "{what}: one code width only: {widths:?}");
    assert!(overlays >= 1, "{what}: no tensor has an overlay");
    widths
}

#[test]
fn independent_decoder_reproduces_calibrated_packs_with_mixed_widths_and_overlays() {
    let Some(py) = python_with_numpy() else {
        common::report_skip(
            "independent_decoder_reproduces_calibrated_packs_with_mixed_widths_and_overlays",
            "no python3 with numpy (UCW_REQUIRE_PYTHON makes this a failure)",
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    for (i, (fixture, opts)) in calibrated_cases(t.path()).into_iter().enumerate() {
        let out = t.path().join(format!("c{i}"));
        compress(&root().join("tests/fixtures").join(fixture), &out, &CpuBackend::new(), &opts, &mut |_| {}).unwrap();
        let what = format!("{fixture} {:?} {:?}", opts.bit_alloc, opts.rank);
        let m = manifest_json(&out);
        let widths = assert_mixed_with_overlays(&what, &m);
        let pack = Pack::open(&out).unwrap();
        let (code, v, all) = decode(py, &out);
        assert_eq!(code, Some(0), "{what}: {all}");
        assert_eq!(v["ok"], true, "{what}: {all}");
        assert_eq!(v["mismatches"], serde_json::json!([]), "{what}");
        assert_eq!(v["pack_digest"], pack.digest(), "{what}");
        // The decoder's weights digest is recomputed from the digests of the bytes it
        // reconstructed, so equality means every tensor digest was reproduced.
        assert_eq!(v["weights_digest"], pack.manifest.weights_digest, "{what}");
        assert_eq!(v["tensors_checked"], pack.manifest.tensors.len(), "{what}");
        let ranks: BTreeSet<u64> = quantized(&m).iter().map(|t| t["rank"].as_u64().unwrap()).collect();
        println!(
            "{what}: widths {widths:?}, ranks {ranks:?}: Python decoder reproduced all {} digests",
            pack.manifest.tensors.len()
        );
    }
}

/// The byte range of `tensor`'s data inside a safetensors file.
fn tensor_range(file: &[u8], tensor: &str) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let offs = &header[tensor]["data_offsets"];
    let (a, b) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
    8 + n + a..8 + n + b
}

/// Replace the one occurrence of `old` in the manifest bytes (same length, so the bytes stay
/// canonical JSON).
fn edit_manifest(pack: &Path, old: &str, new: &str) {
    assert_eq!(old.len(), new.len());
    let p = pack.join("ucw-manifest.json");
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.matches(old).count(), 1, "{old} occurs once in the manifest");
    std::fs::write(&p, text.replace(old, new)).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The tensors the decoder reports with a tensor-sha256 mismatch.
fn digest_mismatches(v: &serde_json::Value) -> Vec<String> {
    v["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "tensor-sha256")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// The decoder's own mismatch detection: one flipped code bit in a layer file (with and
/// without the manifest's file digest updated to hide it from the file check), and one
/// edited tensor digest in the manifest, each make it exit 1 naming exactly that tensor.
#[test]
fn independent_decoder_names_the_damaged_tensor() {
    let Some(py) = python_with_numpy() else {
        common::report_skip(
            "independent_decoder_names_the_damaged_tensor",
            "no python3 with numpy (UCW_REQUIRE_PYTHON makes this a failure)",
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (fixture, opts) = calibrated_cases(t.path()).swap_remove(0);
    let good = t.path().join("good");
    compress(&root().join("tests/fixtures").join(fixture), &good, &CpuBackend::new(), &opts, &mut |_| {}).unwrap();
    let m = manifest_json(&good);
    assert_mixed_with_overlays(fixture, &m);
    let (code, v, all) = decode(py, &good);
    assert!(code == Some(0) && v["ok"] == true, "the undamaged pack must pass: {all}");
    // The victim: a linear whose width is not codec.parameters.bits, with an overlay.
    let bits = m["codec"]["parameters"]["bits"].as_u64().unwrap();
    let victim = quantized(&m)
        .into_iter()
        .find(|t| t["bits"].as_u64() != Some(bits) && t["rank"].as_u64().unwrap() > 0)
        .expect("a linear of another width than --bits, with an overlay");
    let name = victim["name"].as_str().unwrap().to_string();
    let file = victim["file"].as_str().unwrap().to_string();
    let copy = |to: &str| -> PathBuf {
        let dir = t.path().join(to);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    };

    for hide_from_file_check in [false, true] {
        let dir = copy(if hide_from_file_check { "flip-hidden" } else { "flip" });
        let path = dir.join(&file);
        let mut bytes = std::fs::read(&path).unwrap();
        let old_sha = sha256_hex(&bytes);
        // The lowest bit of the last byte of the codes' rANS streams (codec 3, FORMAT.md
        // §4.1): the last byte the decoder of the last stream reads.
        let at = tensor_range(&bytes, &format!("{name}.rans")).end - 1;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        if hide_from_file_check {
            edit_manifest(&dir, &old_sha, &sha256_hex(&bytes));
        }
        let (code, v, all) = decode(py, &dir);
        assert_eq!(code, Some(1), "flipped code bit (hidden {hide_from_file_check}): {all}");
        assert_eq!(v["ok"], false, "{all}");
        // A damaged stream is either refused (kind "rans", naming the stream tensor) or decodes
        // to other codes (the tensor's digest differs); either way only this linear is named.
        let named: Vec<String> = v["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["kind"] == "tensor-sha256" || m["kind"] == "rans")
            .map(|m| m["name"].as_str().unwrap().trim_end_matches(".rans").to_string())
            .collect();
        assert_eq!(named, vec![name.clone()], "only the damaged linear is named: {all}");
        let file_flagged = v["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "file-sha256" && m["name"] == file.as_str());
        assert_eq!(file_flagged, !hide_from_file_check, "{all}");
        println!(
            "flipped a code bit of {name} (file digest updated: {hide_from_file_check}): decoder exit 1 naming it"
        );
    }

    let dir = copy("edited-digest");
    let real = victim["sha256"].as_str().unwrap();
    let first = if real.starts_with('0') { "1" } else { "0" };
    let edited = format!("{first}{}", &real[1..]);
    edit_manifest(&dir, real, &edited);
    let (code, v, all) = decode(py, &dir);
    assert_eq!(code, Some(1), "edited tensor digest: {all}");
    assert_eq!(digest_mismatches(&v), vec![name.clone()], "{all}");
    let m = v["mismatches"].as_array().unwrap().iter().find(|m| m["kind"] == "tensor-sha256").unwrap();
    assert_eq!((m["expected"].as_str(), m["actual"].as_str()), (Some(edited.as_str()), Some(real)), "{all}");
    println!("edited the manifest digest of {name}: decoder exit 1 naming it");
}
