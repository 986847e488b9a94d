//! Golden evaluation bits per fixture (golden/eval.json), equal on every device and at two
//! memory budgets: the NLL total (Q30 integer), the perplexity's f64 bits and a digest of
//! the logits of the first window, at pinned tiny settings on the committed text
//! (tests/fixtures/text/sample.txt). Also one pack (llama-bf16 at the golden pack
//! settings), so the evaluated reconstruction is covered too.
//!
//! A changed value means the forward pass changed: regenerate only together with a
//! FORWARD_VERSION bump, with `UCW_BLESS_GOLDEN=1 cargo test --test golden_eval` (it
//! refuses to overwrite different values under the same version).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use ucw::backend::{Backend, TokenFixed};
use ucw::forward::text::tokenize_file;
use ucw::forward::{EvalOptions, FORWARD_VERSION, Score, Source, evaluate};

const FIXTURES: &[&str] = &["llama-bf16", "mistral-f16", "qwen2-f32", "qwen3-bf16-sharded"];
const SEQ_LEN: usize = 64;
const WINDOWS: usize = 4;
/// Default budget, one small enough to split every product into chunks of a few tokens, and
/// one below the lm_head's and the MLP's weights, which slices them by rows
/// (`Linear::new_within`).
const BUDGETS: [u64; 3] = [1 << 30, 256 << 10, 40 << 10];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn golden_path() -> PathBuf {
    root().join("golden/eval.json")
}

/// The fixture pack evaluated alongside the models (built on the CPU; its digest is golden
/// in golden/llama-bf16.json).
fn pack(dir: &Path) -> PathBuf {
    let out = dir.join("llama-bf16.ucw");
    let opts = common::golden_pack_options();
    let cpu = ucw::backend::cpu::CpuBackend::new();
    ucw::compress::compress(&root().join("tests/fixtures/llama-bf16"), &out, &cpu, &opts, &mut |_| {}).unwrap();
    out
}

fn eval_one(b: &dyn Backend, dir: &Path, score: Score, budget: u64) -> serde_json::Value {
    let ids = tokenize_file(dir, &root().join("tests/fixtures/text/sample.txt")).unwrap();
    let windows: Vec<&[u32]> = (0..WINDOWS).map(|i| &ids[i * SEQ_LEN..(i + 1) * SEQ_LEN]).collect();
    let mut src = Source::open(dir).unwrap();
    let mut h = Sha256::new();
    let mut sink = |w: usize, _p0: usize, l: &TokenFixed| {
        if w == 0 {
            for t in 0..l.tokens {
                h.update(l.exps[t].to_le_bytes());
                for m in &l.mants[t * l.width..(t + 1) * l.width] {
                    h.update(m.to_le_bytes());
                }
            }
        }
    };
    let opts = EvalOptions { score, max_memory: budget };
    let r = evaluate(b, &mut src, &windows, &opts, Some(&mut sink), &mut |_, _| {}).unwrap();
    serde_json::json!({
        "nll_q30": r.nll_q30,
        "predictions": r.predictions,
        "ppl_bits": format!("{:016x}", r.ppl().to_bits()),
        "ppl": r.ppl(),
        "window0_logits_sha256": hex::encode(h.finalize()),
    })
}

fn compute(b: &dyn Backend, pack_dir: &Path, budget: u64) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for f in FIXTURES {
        let dir = root().join("tests/fixtures").join(f);
        out.insert(format!("{f} score=all"), eval_one(b, &dir, Score::All, budget));
    }
    let dir = root().join("tests/fixtures/llama-bf16");
    out.insert("llama-bf16 score=second-half".into(), eval_one(b, &dir, Score::SecondHalf, budget));
    out.insert("llama-bf16 pack (5 bits, g64, rank 0) score=all".into(), eval_one(b, pack_dir, Score::All, budget));
    out
}

#[test]
fn golden_eval_bits_on_every_device_and_budget() {
    let t = tempfile::tempdir().unwrap();
    let pack_dir = pack(t.path());
    let devs = common::devices();
    let reference = compute(devs[0].backend.as_ref(), &pack_dir, BUDGETS[0]);
    let doc = serde_json::json!({
        "forward_version": FORWARD_VERSION,
        "settings": { "text": "tests/fixtures/text/sample.txt", "seq_len": SEQ_LEN, "windows": WINDOWS,
                      "logits_digest": "window 0, every position: per token its exponent then its mantissas, i32 LE" },
        "results": reference,
    });
    let path = golden_path();
    let existing: Option<serde_json::Value> =
        std::fs::read_to_string(&path).ok().map(|s| serde_json::from_str(&s).expect("golden/eval.json parses"));
    if std::env::var("UCW_BLESS_GOLDEN").is_ok() {
        if let Some(old) = &existing {
            assert!(
                old["forward_version"] != doc["forward_version"] || old == &doc,
                "golden eval values differ under the same forward version {FORWARD_VERSION}: bump FORWARD_VERSION first"
            );
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        println!("wrote {}", path.display());
    }
    let golden = existing.or_else(|| std::fs::read_to_string(&path).ok().map(|s| serde_json::from_str(&s).unwrap()));
    let golden = golden.expect("golden/eval.json missing: run with UCW_BLESS_GOLDEN=1 once");
    assert_eq!(golden["forward_version"], FORWARD_VERSION, "golden/eval.json is for another forward version");
    assert_eq!(golden["results"], doc["results"], "cpu differs from golden/eval.json");
    let ran = common::check_devices_and_budgets(&BUDGETS, &golden["results"], |b, budget| {
        serde_json::to_value(compute(b, &pack_dir, budget)).unwrap()
    });
    println!("golden eval bits of {} fixtures identical on {}", FIXTURES.len(), ran.join(", "));
}
