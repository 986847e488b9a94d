//! Golden digests per fixture (golden/ingest.json), checked on every device.
//!
//! For each fixture tensor: SHA-256 of its ingested form (exponents then mantissas, i32
//! little-endian) at the default ingest format, plus the source weights digest. A changed
//! digest means the produced bits changed: regenerate only together with a CODEC_VERSION
//! bump, with `UCW_BLESS_GOLDEN=1 cargo test --test golden` (it refuses to overwrite
//! different digests under the same version).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use ucw::backend::Backend;
use ucw::codec::{CODEC_VERSION, DEFAULT_INGEST, ingest::ingest_tensor};
use ucw::digest::sha256_hex;
use ucw::model::{Model, hash_model_dir};

const FIXTURES: &[&str] = &["llama-bf16", "mistral-f16", "qwen2-f32", "qwen3-bf16-sharded"];

fn golden_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/ingest.json")
}

/// fixture → {"weights_digest", "ingest": {tensor → digest}}
fn compute(b: &dyn Backend) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for f in FIXTURES {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(f);
        let m = Model::open(&dir).unwrap();
        let mut ingest = BTreeMap::new();
        for t in &m.tensors {
            let v = m.tensor(&t.name);
            let cols = *t.shape.last().unwrap();
            let rows = v.numel() / cols;
            let g = ingest_tensor(b, &t.name, v.bytes, m.dtype_of(&t.name), rows, cols, DEFAULT_INGEST).unwrap();
            let mut bytes = common::i32s_to_bytes(&g.exponents);
            bytes.extend(common::i32s_to_bytes(&g.mantissas));
            ingest.insert(t.name.clone(), sha256_hex(&bytes));
        }
        let weights = hash_model_dir(&dir).unwrap().weights_digest;
        out.insert(f.to_string(), serde_json::json!({ "weights_digest": weights, "ingest": ingest }));
    }
    out
}

#[test]
fn golden_ingest_digests_on_every_device() {
    let devs = common::devices();
    let reference = compute(devs[0].backend.as_ref());
    let doc = serde_json::json!({
        "codec_version": CODEC_VERSION,
        "ingest_format": { "group_size": DEFAULT_INGEST.group_size, "mantissa_bits": DEFAULT_INGEST.mantissa_bits },
        "fixtures": reference,
    });
    let path = golden_path();
    let existing: Option<serde_json::Value> =
        std::fs::read_to_string(&path).ok().map(|s| serde_json::from_str(&s).expect("golden/ingest.json parses"));
    if std::env::var("UCW_BLESS_GOLDEN").is_ok() {
        if let Some(old) = &existing {
            assert!(
                old["codec_version"] != doc["codec_version"] || old == &doc,
                "golden digests differ under the same codec version {CODEC_VERSION}: bump CODEC_VERSION first"
            );
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        println!("wrote {}", path.display());
    }
    let golden = std::fs::read_to_string(&path).ok().map(|s| serde_json::from_str::<serde_json::Value>(&s).unwrap());
    let golden = golden.expect("golden/ingest.json missing: run with UCW_BLESS_GOLDEN=1 once");
    assert_eq!(golden["codec_version"], CODEC_VERSION, "golden/ingest.json is for another codec version");
    assert_eq!(golden["fixtures"], doc["fixtures"], "cpu differs from golden/ingest.json");
    let mut ran = vec![devs[0].label.clone()];
    for d in &devs[1..] {
        assert_eq!(
            serde_json::to_value(compute(d.backend.as_ref())).unwrap(),
            golden["fixtures"],
            "{} differs from golden",
            d.label
        );
        ran.push(d.label.clone());
    }
    println!("golden ingest digests of {} fixtures identical on {}", FIXTURES.len(), ran.join(", "));
}
