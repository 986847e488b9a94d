//! Packs end to end: compress on every device gives the same pack, golden digests per
//! fixture, verify on every device, export → hash, and every kind of damage (DESIGN §7).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Rng;
use ucw::codec::CODEC_VERSION;
use ucw::compress::{Options, compress};
use ucw::pack::manifest::Manifest;
use ucw::pack::verify::verify;
use ucw::pack::{MANIFEST_FILE, Pack};

const FIXTURES: &[&str] = &["llama-bf16", "mistral-f16", "qwen2-f32", "qwen3-bf16-sharded"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn ucw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucw")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap()
}

fn err(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn golden_doc(pack: &Pack, rank: u32) -> serde_json::Value {
    let m = &pack.manifest;
    let tensors: serde_json::Map<String, serde_json::Value> =
        m.tensors.iter().map(|t| (t.name.clone(), t.sha256.clone().into())).collect();
    serde_json::json!({
        "codec_version": CODEC_VERSION,
        "settings": { "bits": 5, "group_size": 64, "rank": rank, "out_dtype": "source", "calibration": null },
        "pack_digest": pack.digest(),
        "weights_digest": m.weights_digest,
        "bits_per_weight": m.bits_per_weight.linears,
        "tensors": tensors,
    })
}

/// Compress every fixture (and one with a rank-4 overlay) on every device: identical
/// pack digests, equal to golden/<name>.json. Regenerate (CPU backend) only with a
/// CODEC_VERSION bump: `UCW_BLESS_GOLDEN=1 cargo test --test pack golden`.
#[test]
fn golden_packs_on_every_device() {
    let bless = std::env::var("UCW_BLESS_GOLDEN").is_ok();
    let mut cases: Vec<(String, &str, u32)> = FIXTURES.iter().map(|f| (f.to_string(), *f, 0)).collect();
    cases.push(("qwen3-bf16-sharded-r4".into(), "qwen3-bf16-sharded", 4));
    for (name, f, rank) in cases {
        let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("golden/{name}.json"));
        let opts = Options { rank: ucw::compress::Rank::Fixed(rank), ..common::golden_pack_options() };
        let mut ran = Vec::new();
        let mut reference: Option<serde_json::Value> = None;
        for d in common::devices() {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("pack");
            compress(&fixture(f), &out, d.backend.as_ref(), &opts, &mut |_| {}).unwrap();
            let pack = Pack::open(&out).unwrap();
            let doc = golden_doc(&pack, rank);
            match &reference {
                None => reference = Some(doc),
                Some(r) => assert_eq!(&doc, r, "{name}: {} compresses differently from the CPU", d.label),
            }
            ran.push(d.label.clone());
        }
        let doc = reference.unwrap();
        if bless {
            if let Ok(old) = std::fs::read_to_string(&golden_path) {
                let old: serde_json::Value = serde_json::from_str(&old).unwrap();
                assert!(
                    old["codec_version"] != doc["codec_version"] || old == doc,
                    "{name}: golden differs under the same codec version: bump CODEC_VERSION"
                );
            }
            std::fs::write(&golden_path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        }
        let golden: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&golden_path).unwrap_or_else(|_| panic!("{} missing", golden_path.display())),
        )
        .unwrap();
        assert_eq!(doc, golden, "{name}: pack differs from {}", golden_path.display());
        println!(
            "{name}: pack sha256:{} identical to golden on {}",
            doc["pack_digest"].as_str().unwrap(),
            ran.join(", ")
        );
    }
}

fn compressed(fixture_name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pack");
    let o = ucw(&["compress", fixture(fixture_name).to_str().unwrap(), "-o", out.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "{}", err(&o));
    (tmp, out)
}

#[test]
fn verify_passes_on_every_device_and_export_hashes_to_the_weights_digest() {
    for f in FIXTURES {
        let (_t, pack) = compressed(f);
        let p = Pack::open(&pack).unwrap();
        let devs = common::devices();
        let backends: Vec<(String, &dyn ucw::backend::Backend)> =
            devs.iter().map(|d| (d.label.clone(), d.backend.as_ref())).collect();
        let report = verify(&p, &backends, Some(&format!("SHA256:{}", p.digest().to_uppercase()))).unwrap();
        assert!(report.pass(), "{f}: {:?}", report.tensors.iter().find(|t| !t.ok));
        assert_eq!(report.tensors.len(), p.manifest.tensors.len() * devs.len());

        let o = ucw(&["verify", pack.to_str().unwrap(), "--device", "cpu", "--expect", &p.digest()]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .unwrap()
                .starts_with(&format!("PASS sha256:{}", p.digest()))
        );

        let exp = _t.path().join("export");
        let o = ucw(&["export", pack.to_str().unwrap(), "-o", exp.to_str().unwrap(), "--device", "cpu"]);
        assert!(o.status.success(), "{}", err(&o));
        let o = ucw(&["hash", "--json", exp.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["weights_digest"], p.manifest.weights_digest, "{f}: exported weights digest");
        // The export is a model ucw itself reads back.
        let o = ucw(&["info", exp.to_str().unwrap()]);
        assert!(o.status.success(), "{}", err(&o));
        println!("{f}: verify PASS on {} devices; export hashes to the weights digest", devs.len());
    }
}

#[test]
fn export_shards_above_the_limit() {
    let (t, pack) = compressed("qwen2-f32");
    let p = Pack::open(&pack).unwrap();
    let out = t.path().join("sharded");
    let e = ucw::pack::export::export(&p, &ucw::backend::cpu::CpuBackend::new(), &out, false, 100_000).unwrap();
    assert!(e.files.len() > 3, "{:?}", e.files);
    assert_eq!(ucw::model::hash_model_dir(&out).unwrap().weights_digest, p.manifest.weights_digest);
}

fn verify_code(pack: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["verify", pack.to_str().unwrap(), "--device", "cpu"];
    args.extend(extra);
    let o = ucw(&args);
    (o.status.code().unwrap_or(-1), err(&o))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A pack written under codec version 1 (tests/fixtures/packs/README.md: committed as the
/// version-1 tool wrote it) verifies on every device with the digest it had then: versions
/// change which codes compression chooses, never how codes decode, so a pack validated
/// under an earlier version stays verifiable. A version this build does not know is refused.
#[test]
fn packs_of_earlier_codec_versions_verify_and_unknown_versions_are_refused() {
    let pack = fixture("packs/qwen3-calibrated-codec-v1.ucw");
    let p = Pack::open(&pack).unwrap();
    assert_eq!((p.manifest.codec.version, p.manifest.tool.codec_version), (1, 1));
    const { assert!(CODEC_VERSION > 1, "the fixture is meant to be older than this build's codec") };
    let v1 = "307af14b27edff36f86fe32151b51990662c85ea0d87b30d607e38becbf85da8";
    assert_eq!(p.digest(), v1);
    let devs = common::devices();
    let backends: Vec<(String, &dyn ucw::backend::Backend)> =
        devs.iter().map(|d| (d.label.clone(), d.backend.as_ref())).collect();
    let report = verify(&p, &backends, Some(v1)).unwrap();
    assert!(report.pass(), "{:?}", report.tensors.iter().find(|t| !t.ok));
    assert_eq!(report.tensors.len(), p.manifest.tensors.len() * devs.len());
    let (code, out) = verify_code(&pack, &["--expect", v1]);
    assert_eq!(code, 0, "{out}");

    let t = tempfile::tempdir().unwrap();
    let future = t.path().join("future");
    copy_dir(&pack, &future);
    rewrite_manifest(&future, |v| {
        v["codec"]["version"] = (CODEC_VERSION + 1).into();
        v["tool"]["codec_version"] = (CODEC_VERSION + 1).into();
    });
    let (code, out) = verify_code(&future, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "version {}; this build decodes ucw-q1 versions 1 to {CODEC_VERSION}",
            CODEC_VERSION + 1
        )),
        "{out}"
    );
}

/// Flipped bits at fixed-seed positions in the header and in the data of each kind of pack
/// file: verify exits 1 naming the file, and for tensor data the damaged tensor.
#[test]
fn flipped_bits_in_every_file_region_fail_verification() {
    let (t, pack) = compressed("llama-bf16");
    let mut rng = Rng(2024);
    let mut cases = 0;
    for file in ["layer-00001.safetensors", "scaffold.safetensors", "config.json", "tokenizer.json"] {
        let bytes = std::fs::read(pack.join(file)).unwrap();
        let regions: Vec<(&str, std::ops::Range<usize>)> = if file.ends_with(".safetensors") {
            let n = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            vec![("header", 0..n), ("data", n..bytes.len())]
        } else {
            vec![("text", 0..bytes.len())]
        };
        for (region, range) in regions {
            for _ in 0..3 {
                let pos = range.start + rng.below((range.end - range.start) as u64) as usize;
                let bit = rng.below(8);
                let damaged = t.path().join(format!("d{cases}"));
                copy_dir(&pack, &damaged);
                let mut b = bytes.clone();
                b[pos] ^= 1 << bit;
                std::fs::write(damaged.join(file), &b).unwrap();
                let (code, out) = verify_code(&damaged, &[]);
                assert_eq!(code, 1, "{file} {region} byte {pos}: {out}");
                assert!(out.contains(&format!("FAIL  file {file}: SHA-256")), "{file} {region}: {out}");
                if region == "data" {
                    // The damaged tensor is named.
                    assert!(out.contains("damaged:"), "{file} data byte {pos}: no tensor named\n{out}");
                }
                cases += 1;
            }
        }
    }
    println!("{cases} flipped-bit cases: all exit 1 naming the file");
}

fn rewrite_manifest(pack: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = pack.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, ucw::digest::canonical_json(&v)).unwrap();
}

/// The JSON path of the one leaf where two manifests differ ("" when the structure does).
fn changed_field(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        _ if a == b => None,
        (Object(x), Object(y)) if x.keys().eq(y.keys()) => {
            x.iter().find_map(|(k, v)| changed_field(v, &y[k], &format!("{path}.{k}")))
        }
        (Array(x), Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (v, w))| changed_field(v, w, &format!("{path}[{i}]")))
        }
        _ => Some(path.to_string()),
    }
}

/// Manifest fields that record where the pack came from (docs/FORMAT.md §2: the source
/// files and tensor digests, the source weights digest, the calibration inputs, the
/// budget, the tool's name): checking them needs the source, so verify alone may pass
/// them and the pack digest (`--expect`) catches them.
fn provenance(path: &str) -> bool {
    path.starts_with(".source.")
        || path.starts_with(".codec.calibration")
        || path.starts_with(".codec.parameters.target_bpw")
        || path == ".tool.name"
}

/// Flipped bits in the manifest, verify run without --expect: exit 2 exactly when the
/// manifest is not JSON, not canonical or not a valid manifest (DESIGN §7), exit 1 for
/// any other change of a field verify checks against the pack, and for provenance no pass
/// under --expect. An uncalibrated pack and a calibrated one with overlays and mixed
/// widths.
#[test]
fn flipped_bits_in_the_manifest_never_pass() {
    let t = tempfile::tempdir().unwrap();
    let (_t1, plain) = compressed("mistral-f16");
    let calibrated = t.path().join("calibrated");
    common::compress_calibrated("qwen3-bf16-sharded", &calibrated, &["--rank", "4"]);
    let mut rng = Rng(77);
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for pack in [&plain, &calibrated] {
        let digest = Pack::open(pack).unwrap().digest();
        let bytes = std::fs::read(pack.join(MANIFEST_FILE)).unwrap();
        let original: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for i in 0..150 {
            let pos = rng.below(bytes.len() as u64) as usize;
            let bit = rng.below(8);
            let damaged = t.path().join(format!("m{i}"));
            let _ = std::fs::remove_dir_all(&damaged);
            copy_dir(pack, &damaged);
            let mut b = bytes.clone();
            b[pos] ^= 1 << bit;
            std::fs::write(damaged.join(MANIFEST_FILE), &b).unwrap();
            let (code, out) = verify_code(&damaged, &[]);
            let what = format!("{}: byte {pos} bit {bit}", pack.display());
            // What the damage is, decided here without ucw's manifest reader.
            let json: Option<serde_json::Value> = serde_json::from_slice(&b).ok();
            let class = match &json {
                None => "not JSON",
                Some(v) if ucw::digest::canonical_json(v) != b => "not canonical",
                Some(_) if Manifest::parse(&b).is_err() => "invalid manifest",
                Some(v) => match changed_field(&original, v, "") {
                    Some(path) if provenance(&path) => "provenance",
                    Some(_) => "checked field",
                    None => unreachable!("a flipped bit changed nothing"),
                },
            };
            match class {
                "not JSON" => assert!(code == 2 && out.contains("ucw-manifest.json: not valid JSON"), "{what}: {out}"),
                "not canonical" => assert!(code == 2 && out.contains("not in canonical form"), "{what}: {out}"),
                "invalid manifest" => assert!(code == 2 && out.contains(MANIFEST_FILE), "{what}: {out}"),
                "checked field" => {
                    let path = changed_field(&original, json.as_ref().unwrap(), "").unwrap();
                    assert_eq!(code, 1, "{what}: {path} changed, verify without --expect\n{out}");
                }
                _ => {
                    assert!(code == 0 || code == 1, "{what}: {out}");
                    let (code, out) = verify_code(&damaged, &["--expect", &digest]);
                    assert_eq!(code, 1, "{what}: {out}");
                    assert!(out.contains("is not the expected"), "{what}: {out}");
                }
            }
            *counts.entry(class).or_default() += 1;
            std::fs::remove_dir_all(&damaged).unwrap();
        }
    }
    println!("manifest flips without --expect: {counts:?}");
    assert!(counts.get("checked field").is_some_and(|&n| n >= 10), "too few flips reached a checked field: {counts:?}");
    // A self-consistent edit of provenance is caught by --expect only.
    let damaged = t.path().join("consistent");
    copy_dir(&plain, &damaged);
    let digest = Pack::open(&plain).unwrap().digest();
    rewrite_manifest(&damaged, |v| v["source"]["model_type"] = "llama".into());
    assert_eq!(verify_code(&damaged, &[]).0, 0);
    let (code, out) = verify_code(&damaged, &["--expect", &format!("sha256:{digest}")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not the expected"), "{out}");
}

#[test]
fn structural_damage() {
    let (t, pack) = compressed("qwen3-bf16-sharded");
    let fresh = |name: &str| {
        let d = t.path().join(name);
        copy_dir(&pack, &d);
        d
    };
    // Truncated file.
    let d = fresh("trunc");
    let p = d.join("layer-00000.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 10]).unwrap();
    let (code, out) = verify_code(&d, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL  file layer-00000.safetensors: size"), "{out}");
    // Missing and extra files.
    let d = fresh("missing");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("extra.bin"), b"x").unwrap();
    let (code, out) = verify_code(&d, &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  file tokenizer.json: missing") && out.contains("FAIL  file extra.bin: unexpected"),
        "{out}"
    );
    // Paths outside the pack.
    for evil in ["../x", "/etc/passwd", "a/b"] {
        let d = fresh("evil");
        rewrite_manifest(&d, |v| v["files"][0]["name"] = evil.into());
        let (code, out) = verify_code(&d, &[]);
        assert_eq!(code, 2, "{evil}: {out}");
        assert!(out.contains("is not a plain file inside the pack"), "{out}");
        std::fs::remove_dir_all(&d).unwrap();
    }
    // Invalid JSON, non-canonical, foreign or newer format.
    let d = fresh("json");
    std::fs::write(d.join(MANIFEST_FILE), b"{\"format\":").unwrap();
    assert_eq!(verify_code(&d, &[]).0, 2);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(pack.join(MANIFEST_FILE)).unwrap()).unwrap();
    std::fs::write(d.join(MANIFEST_FILE), serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let (code, out) = verify_code(&d, &[]);
    assert_eq!(code, 2);
    assert!(out.contains("not in canonical form"), "{out}");
    let d = fresh("newer");
    rewrite_manifest(&d, |v| v["format_version"] = 2.into());
    let (code, out) = verify_code(&d, &[]);
    assert_eq!(code, 2);
    assert!(out.contains("format_version 2 is newer"), "{out}");
    rewrite_manifest(&d, |v| v["format"] = "other".into());
    assert_eq!(verify_code(&d, &[]).0, 2);
    // Header sizes beyond the file, with the manifest updated to match (a consistent but
    // malicious pack): reported per tensor, exit 1, no panic.
    let d = fresh("header");
    let p = d.join("layer-00001.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let sha = ucw::pack::sha256_file(&p).unwrap();
    rewrite_manifest(&d, |v| {
        for f in v["files"].as_array_mut().unwrap() {
            if f["name"] == "layer-00001.safetensors" {
                f["sha256"] = sha.clone().into();
            }
        }
    });
    let (code, out) = verify_code(&d, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("layer-00001.safetensors: not a valid safetensors file"), "{out}");
    // Wrong --expect syntax is bad input.
    assert_eq!(verify_code(&pack, &["--expect", "abc"]).0, 2);
    // Commands that read a pack refuse a damaged one.
    let d = fresh("info");
    std::fs::write(d.join("config.json"), b"{}").unwrap();
    let o = ucw(&["info", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let o = ucw(&["export", d.to_str().unwrap(), "-o", t.path().join("x").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(!t.path().join("x").exists());
}

#[test]
fn compress_refuses_bad_sources_and_leaves_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    // NaN in a layer-1 weight: the error names it, and neither the pack nor a temporary
    // directory is left behind.
    let src = t.path().join("nan");
    copy_dir(&fixture("mistral-f16"), &src);
    let st = src.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let off = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    let mut b = bytes.clone();
    b[off + 2 * 77..off + 2 * 77 + 2].copy_from_slice(&0x7e00u16.to_le_bytes()); // f16 NaN at element 77
    std::fs::write(&st, &b).unwrap();
    let out = t.path().join("pack");
    let o = ucw(&["compress", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains(&format!("tensor \"{name}\": element 77 (row 1, column 13) is NaN")), "{}", err(&o));
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "something left behind");
    // Existing non-empty pack: refused, then replaced with --force.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let o = ucw(&["compress", fixture("llama-bf16").to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("exists and is not empty"), "{}", err(&o));
    assert!(out.join("keep").exists());
    let o = ucw(&["compress", fixture("llama-bf16").to_str().unwrap(), "-o", out.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!out.join("keep").exists());
    assert_eq!(verify_code(&out, &[]).0, 0);
    // Bad flags.
    let llama = fixture("llama-bf16");
    for args in [
        vec!["--bits", "9"],
        vec!["--group-size", "0"],
        vec!["--rank", "33"],
        vec!["--rank", "x"],
        vec!["--target-bpw", "5,2"],
        vec!["--out-dtype", "f64"],
    ] {
        let mut a = vec!["compress", llama.to_str().unwrap(), "-o", "/tmp/never"];
        a.extend(args.iter());
        let o = ucw(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
    }
}

#[test]
fn out_dtype_changes_the_reconstruction_not_the_codes() {
    let t = tempfile::tempdir().unwrap();
    let cpu = ucw::backend::cpu::CpuBackend::new();
    let a = t.path().join("a");
    let b = t.path().join("b");
    compress(&fixture("llama-bf16"), &a, &cpu, &common::golden_pack_options(), &mut |_| {}).unwrap();
    let opts = Options { out_dtype: Some(ucw::dtype::DType::F32), ..common::golden_pack_options() };
    compress(&fixture("llama-bf16"), &b, &cpu, &opts, &mut |_| {}).unwrap();
    let (ma, mb) = (Pack::open(&a).unwrap().manifest, Pack::open(&b).unwrap().manifest);
    let layer = |m: &Manifest| m.files.iter().find(|f| f.name == "layer-00000.safetensors").unwrap().sha256.clone();
    assert_ne!(layer(&ma), layer(&mb), "metadata records the output dtype");
    let q = |m: &Manifest| m.tensors.iter().find(|t| t.name.ends_with("0.mlp.up_proj.weight")).unwrap().dtype.clone();
    assert_eq!((q(&ma), q(&mb)), ("BF16".to_string(), "F32".to_string()));
    assert_eq!(verify_code(&b, &[]).0, 0);
}
