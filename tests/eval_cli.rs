//! `ucw eval` end to end: the report, --tokens vs --text, --baseline, packs (evaluated as
//! reconstructed, refused when damaged), other devices, and every bad input of the issue.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn text() -> String {
    root().join("tests/fixtures/text/sample.txt").display().to_string()
}

fn ucw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucw")).args(args).env("XDG_RUNTIME_DIR", "/tmp").output().expect("run ucw")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "ucw failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

fn fails(o: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn eval_args<'a>(model: &'a str, text: &'a str) -> Vec<&'a str> {
    vec!["eval", model, "--text", text, "--seq-len", "64", "--windows", "3", "--device", "cpu", "--json"]
}

#[test]
fn report_fields_tokens_file_and_output_file() {
    let m = fixture("llama-bf16").display().to_string();
    let t = text();
    let r = json(&ucw(&eval_args(&m, &t)));
    for key in [
        "ppl",
        "ppl_bits",
        "nll_q30",
        "predictions",
        "windows",
        "seq_len",
        "score",
        "text_sha256",
        "tokenizer_sha256",
        "weights_digest",
        "device",
        "seconds",
        "tokens_per_s",
        "peak_rss_bytes",
        "forward_version",
    ] {
        assert!(r.get(key).is_some(), "report lacks {key}: {r}");
    }
    assert_eq!(r["predictions"], 3 * 63);
    assert_eq!(r["windows"], 3);
    assert_eq!(r["score"], "all");
    // ppl is exp(NLL / predictions) of the exact integer total.
    let nll = r["nll_q30"].as_i64().unwrap() as f64 / (1u64 << 30) as f64;
    let ppl = r["ppl"].as_f64().unwrap();
    assert!((ppl - (nll / 189.0).exp()).abs() < 1e-9 * ppl);
    assert_eq!(r["text_sha256"], ucw::digest::sha256_hex(&std::fs::read(text()).unwrap()));
    assert_eq!(r["weights_digest"], ucw::model::hash_model_dir(&fixture("llama-bf16")).unwrap().weights_digest);

    // The same ids from a token file give the same bits.
    let d = tempfile::tempdir().unwrap();
    let ids = ucw::forward::text::tokenize_file(&fixture("llama-bf16"), Path::new(&t)).unwrap();
    let tok = d.path().join("ids.u32");
    std::fs::write(&tok, ids.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let tok = tok.display().to_string();
    let r2 =
        json(&ucw(&["eval", &m, "--tokens", &tok, "--seq-len", "64", "--windows", "3", "--device", "cpu", "--json"]));
    assert_eq!(r2["ppl_bits"], r["ppl_bits"]);
    assert_eq!(r2["tokens_sha256"], r["tokens_sha256"]);

    // -o writes the same report atomically (no temporary left beside it).
    let out = d.path().join("report.json");
    let o = ucw(&[
        "eval",
        &m,
        "--text",
        &t,
        "--seq-len",
        "64",
        "--windows",
        "3",
        "--device",
        "cpu",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written["ppl_bits"], r["ppl_bits"]);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2, "only ids.u32 and report.json");
    assert!(String::from_utf8_lossy(&o.stdout).contains("perplexity"));

    // second-half scores seq_len/2 - 1 predictions per window.
    let mut a = eval_args(&m, &t);
    a.extend(["--score", "second-half"]);
    assert_eq!(json(&ucw(&a))["predictions"], 3 * 31);
}

#[test]
fn pack_with_baseline_and_on_another_device() {
    let d = tempfile::tempdir().unwrap();
    let pack = d.path().join("p");
    let m = fixture("qwen2-f32").display().to_string();
    let o = ucw(&["compress", &m, "-o", pack.to_str().unwrap(), "--device", "cpu", "--rank", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = pack.display().to_string();
    let t = text();
    let mut a = eval_args(&p, &t);
    a.extend(["--baseline", &m]);
    let r = json(&ucw(&a));
    let ratio = r["ppl_ratio"].as_f64().unwrap();
    assert_eq!(ratio, r["ppl"].as_f64().unwrap() / r["baseline_ppl"].as_f64().unwrap());
    // A 5-bit pack of a random model changes the perplexity a little, not a lot.
    assert!(ratio != 1.0 && (ratio - 1.0).abs() < 0.1, "ratio {ratio}");
    let manifest = std::fs::read(pack.join("ucw-manifest.json")).unwrap();
    assert_eq!(r["pack_digest"], ucw::digest::sha256_hex(&manifest));
    // The baseline's figures equal a plain evaluation of the model, and the pack's its own.
    let base = json(&ucw(&eval_args(&m, &t)));
    assert_eq!(r["baseline"]["ppl_bits"], base["ppl_bits"]);
    assert_eq!(r["baseline"]["nll_q30"], base["nll_q30"]);
    assert_eq!(r["nll_q30"], json(&ucw(&eval_args(&p, &t)))["nll_q30"]);
    // Divergence of the pack from its source: small, positive, most top tokens kept, and
    // the figures consistent with each other.
    let d = &r["divergence"];
    let n = r["predictions"].as_u64().unwrap();
    assert_eq!(d["predictions"].as_u64(), Some(n));
    let mean = d["kld_mean"].as_f64().unwrap();
    assert!(mean > 0.0 && mean < 0.5, "mean KL {mean}");
    assert_eq!(mean, d["kld_total_q30"].as_i64().unwrap() as f64 / (1u64 << 30) as f64 / n as f64);
    let (med, p99, max) =
        (d["kld_median"].as_f64().unwrap(), d["kld_p99"].as_f64().unwrap(), d["kld_max"].as_f64().unwrap());
    assert!(med <= p99 && p99 <= max && mean <= max, "median {med} p99 {p99} max {max}");
    let agree = d["top1_agree"].as_u64().unwrap();
    assert!(agree > n / 2 && agree < n, "top-1 agreement {agree} of {n}");
    assert_eq!(d["top1_fraction"].as_f64().unwrap(), agree as f64 / n as f64);
    assert!(d["kld_mean_stderr"].as_f64().unwrap() > 0.0);
    // The ratio's uncertainty: its per-prediction differences add up to the two NLL totals,
    // and both standard errors are there (two windows or more).
    let u = &r["ppl_ratio_uncertainty"];
    let nll_diff = r["nll_q30"].as_i64().unwrap() - r["baseline"]["nll_q30"].as_i64().unwrap();
    let ln_ratio = u["ln_ratio"].as_f64().unwrap();
    assert_eq!(ln_ratio, nll_diff as f64 / n as f64 / (1u64 << 30) as f64);
    assert!((ln_ratio.exp() - ratio).abs() < 1e-12, "exp(ln ratio) {} vs ratio {ratio}", ln_ratio.exp());
    for k in ["ln_ratio_stderr", "ppl_ratio_stderr", "ln_ratio_stderr_windows", "ppl_ratio_stderr_windows"] {
        let e = u[k].as_f64().unwrap_or(-1.0);
        assert!(e > 0.0 && e < 0.1, "{k} {e}");
    }

    // A model against itself: every divergence exactly 0, every top token the same.
    let mut a = eval_args(&m, &t);
    a.extend(["--baseline", &m]);
    let s = json(&ucw(&a));
    assert_eq!(s["divergence"]["kld_total_q30"], 0);
    assert_eq!(s["divergence"]["kld_max"], 0.0);
    assert_eq!(s["divergence"]["top1_agree"].as_u64(), Some(n));
    assert_eq!(s["ppl_ratio"], 1.0);
    for k in ["ln_ratio", "ln_ratio_stderr", "ln_ratio_stderr_windows", "ppl_ratio_stderr"] {
        assert_eq!(s["ppl_ratio_uncertainty"][k], 0.0, "{k} of a model against itself");
    }
    assert_eq!(s["divergence"]["kld_mean_stderr"], 0.0);

    // Every other device under test gives the same bits (the harness's selection, so a
    // required device that is missing or filtered out fails here too).
    for i in common::selected_indices().into_iter().skip(1) {
        let idx = i.to_string();
        let mut a = eval_args(&p, &t);
        a[9] = &idx;
        a.extend(["--baseline", &m]);
        let r2 = json(&ucw(&a));
        assert_eq!(r2["nll_q30"], r["nll_q30"], "device {i}");
        assert_eq!(r2["ppl_bits"], r["ppl_bits"], "device {i}");
        assert_eq!(r2["divergence"], r["divergence"], "device {i}");
        assert_eq!(r2["ppl_ratio_uncertainty"], r["ppl_ratio_uncertainty"], "device {i}");
        println!("eval of the pack: same bits on device {i}");
    }

    // A damaged pack file is refused before anything is evaluated (exit 1).
    let layer = pack.join("layer-00000.safetensors");
    let mut b = std::fs::read(&layer).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x10;
    std::fs::write(&layer, b).unwrap();
    fails(&ucw(&eval_args(&p, &t)), 1, "layer-00000.safetensors");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let m = fixture("mistral-f16").display().to_string();
    let t = text();

    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails(&ucw(&eval_args(&m, empty.to_str().unwrap())), 2, "fewer than one window");

    let short = d.path().join("short.txt");
    std::fs::write(&short, "Alice was beginning to get very tired").unwrap();
    fails(&ucw(&eval_args(&m, short.to_str().unwrap())), 2, "fewer than one window");

    // Fewer windows than asked for: evaluates what fits and says so.
    let mut a = eval_args(&m, &t);
    a[7] = "1000";
    let r = json(&ucw(&a));
    assert_eq!(r["windows"], 5682 / 64);
    assert!(r["notes"][0].as_str().unwrap().contains("1000 asked for"), "{r}");

    let no_tok = d.path().join("no-tokenizer");
    copy_dir(&fixture("mistral-f16"), &no_tok);
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    fails(&ucw(&eval_args(no_tok.to_str().unwrap(), &t)), 2, "--tokens");

    let ids = d.path().join("ids.u32");
    let mut v: Vec<u32> = (0..200).map(|i| i % 512).collect();
    v[150] = 512;
    std::fs::write(&ids, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    fails(
        &ucw(&["eval", &m, "--tokens", ids.to_str().unwrap(), "--seq-len", "64", "--device", "cpu"]),
        2,
        "token 150 has id 512",
    );
    std::fs::write(&ids, [1u8, 2, 3]).unwrap();
    fails(&ucw(&["eval", &m, "--tokens", ids.to_str().unwrap(), "--device", "cpu"]), 2, "little-endian u32");

    // Beyond max_position_embeddings (256): refused, allowed with --force.
    let mut a = eval_args(&m, &t);
    a[5] = "300";
    a[7] = "1";
    fails(&ucw(&a), 2, "max_position_embeddings 256");
    a.push("--force");
    assert_eq!(json(&ucw(&a))["seq_len"], 300);

    fails(&ucw(&["eval", &m, "--device", "cpu"]), 2, "--text");
    fails(&ucw(&["eval", &m, "--text", &t, "--tokens", &t, "--device", "cpu"]), 2, "exclude");
    fails(&ucw(&["eval", &m, "--text", &t, "--score", "half", "--device", "cpu"]), 2, "--score half");
    fails(
        &ucw(&["eval", &m, "--text", &t, "--seq-len", "64", "--max-memory", "1K", "--device", "cpu"]),
        2,
        "--max-memory",
    );
    fails(&ucw(&["eval", &m, "--text", &t, "--max-memory", "lots", "--device", "cpu"]), 2, "--max-memory lots");
    fails(&ucw(&["eval", &m, "--text", "/nonexistent.txt", "--device", "cpu"]), 2, "/nonexistent.txt");
    fails(&ucw(&["eval", "/nonexistent-model", "--text", &t, "--device", "cpu"]), 2, "/nonexistent-model");
    let mut a = eval_args(&m, &t);
    a.extend(["--baseline", "/nonexistent-base"]);
    fails(&ucw(&a), 2, "/nonexistent-base");
}
