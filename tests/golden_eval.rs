//! Golden evaluation bits per fixture (golden/eval.json), equal on every device and at two
//! memory budgets: the NLL total (Q30 integer), the perplexity's f64 bits and a digest of
//! the logits of the first window, at pinned tiny settings on the committed text
//! (tests/fixtures/text/sample.txt). Also one pack (llama-bf16 at the golden pack
//! settings), so the evaluated reconstruction is covered too, and that pack against its
//! source with `evaluate_pair` (KL divergence and top-1 agreement of every prediction).
//!
//! A changed value means the forward pass changed: regenerate only together with a
//! FORWARD_VERSION bump, with `UCW_BLESS_GOLDEN=1 cargo test --test golden_eval` (it
//! refuses to change or drop a value under the same version; new entries may be added).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use ucw::backend::Backend;
use ucw::fixed::tensor::TokenFixed;
use ucw::forward::text::tokenize_file;
use ucw::forward::{EvalOptions, FORWARD_VERSION, Score, Source, evaluate, evaluate_pair};

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

/// The pack against its source model, both heads stepped together (`evaluate_pair`): both
/// NLL totals, the divergence totals and a digest of every prediction's divergence.
fn pair_one(b: &dyn Backend, pack_dir: &Path, base_dir: &Path, budget: u64) -> serde_json::Value {
    let ids = tokenize_file(base_dir, &root().join("tests/fixtures/text/sample.txt")).unwrap();
    let windows: Vec<&[u32]> = (0..WINDOWS).map(|i| &ids[i * SEQ_LEN..(i + 1) * SEQ_LEN]).collect();
    let (mut model, mut base) = (Source::open(pack_dir).unwrap(), Source::open(base_dir).unwrap());
    let opts = EvalOptions { score: Score::All, max_memory: budget };
    let r = evaluate_pair(b, &mut model, &mut base, &windows, &opts, &mut |_, _, _| {}).unwrap();
    let mut h = Sha256::new();
    for d in &r.divergence {
        h.update(d.kl_q30.to_le_bytes());
        h.update([d.top1_same as u8]);
    }
    serde_json::json!({
        "model_nll_q30": r.model.nll_q30,
        "baseline_nll_q30": r.baseline.nll_q30,
        "predictions": r.divergence.len(),
        "kld_total_q30": r.divergence.iter().map(|d| d.kl_q30).sum::<i64>(),
        "top1_agree": r.divergence.iter().filter(|d| d.top1_same).count(),
        "divergence_sha256": hex::encode(h.finalize()),
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
    let pack_key = "llama-bf16 pack (5 bits, g64, rank 0) score=all";
    out.insert(pack_key.into(), eval_one(b, pack_dir, Score::All, budget));
    let pair = pair_one(b, pack_dir, &dir, budget);
    // Stepping the two models together gives each the NLL it has alone.
    assert_eq!(pair["model_nll_q30"], out[pack_key]["nll_q30"], "pair: the pack's NLL");
    assert_eq!(pair["baseline_nll_q30"], out["llama-bf16 score=all"]["nll_q30"], "pair: the baseline's NLL");
    out.insert("llama-bf16 pack against llama-bf16, divergence, score=all".into(), pair);
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
            // Under one forward version entries may be added (a new measurement), never
            // changed or dropped.
            let kept =
                old["results"].as_object().is_some_and(|o| o.iter().all(|(k, v)| doc["results"].get(k) == Some(v)));
            assert!(
                old["forward_version"] != doc["forward_version"] || (kept && old["settings"] == doc["settings"]),
                "golden eval values differ under the same forward version {FORWARD_VERSION}: bump FORWARD_VERSION first"
            );
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        println!("wrote {}", path.display());
    }
    let golden = std::fs::read_to_string(&path).ok().map(|s| serde_json::from_str::<serde_json::Value>(&s).unwrap());
    let golden = golden.expect("golden/eval.json missing: run with UCW_BLESS_GOLDEN=1 once");
    assert_eq!(golden["forward_version"], FORWARD_VERSION, "golden/eval.json is for another forward version");
    assert_eq!(golden["results"], doc["results"], "cpu differs from golden/eval.json");
    let ran = common::check_devices_and_budgets(&BUDGETS, &golden["results"], |b, budget| {
        serde_json::to_value(compute(b, &pack_dir, budget)).unwrap()
    });
    println!("golden eval bits of {} fixtures identical on {}", FIXTURES.len(), ran.join(", "));
}
