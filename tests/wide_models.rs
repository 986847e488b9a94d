//! Models wider than the old matmul limit of 128 groups (K > 8192), end to end: a tiny random
//! llama with intermediate_size 9000 (down_proj's inner dimension: two split-K slices on a
//! GPU, exponent spread 15) must `ucw eval` and calibrated `ucw compress` on every device with
//! the same bits (perplexity NLL and pack digest). Before issue 14 item 2 both failed with
//! "matmul: weights need ... <= 128 groups".

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn ucw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucw")).args(args).output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "ucw failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A one-layer llama (hidden 64, 4 heads of 16, 2 kv heads, vocabulary 512, tied
/// embeddings) with intermediate size `ff`: random bf16 weights from a fixed generator, the
/// llama fixture's tokenizer.
fn wide_model(dir: &Path, ff: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let fixture = root().join("tests/fixtures/llama-bf16");
    let (h, heads, kv, hd, vocab) = (64usize, 4usize, 2usize, 16usize, 512usize);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = ff.into();
    cfg["num_hidden_layers"] = 1.into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    std::fs::copy(fixture.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bf16 = |n: usize, scale: f32, one: bool| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let x = if one { 1.0 + 0.1 * u } else { scale * u };
                half::bf16::from_f32(x).to_bits().to_le_bytes()
            })
            .collect()
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h], bf16(vocab * h, 1.0, false)),
        ("model.norm.weight".into(), vec![h], bf16(h, 0.0, true)),
    ];
    let p = "model.layers.0";
    for (n, r, c, scale) in [
        ("self_attn.q_proj", heads * hd, h, 0.25),
        ("self_attn.k_proj", kv * hd, h, 0.25),
        ("self_attn.v_proj", kv * hd, h, 0.25),
        ("self_attn.o_proj", h, heads * hd, 0.25),
        ("mlp.gate_proj", ff, h, 0.25),
        ("mlp.up_proj", ff, h, 0.25),
        ("mlp.down_proj", h, ff, 0.03),
    ] {
        tensors.push((format!("{p}.{n}.weight"), vec![r, c], bf16(r * c, scale, false)));
    }
    for n in ["input_layernorm", "post_attention_layernorm"] {
        tensors.push((format!("{p}.{n}.weight"), vec![h], bf16(h, 0.0, true)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn wide_intermediate_model_evaluates_and_compresses_with_the_same_bits_everywhere() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("model");
    wide_model(&model, 9000);
    let (m, text) = (model.to_str().unwrap(), root().join("tests/fixtures/text/sample.txt"));
    let text = text.to_str().unwrap();
    let mut reference: Option<(String, serde_json::Value, serde_json::Value)> = None;
    for d in common::devices() {
        let dev = d.index.to_string();
        let e =
            json(&ucw(&["eval", m, "--text", text, "--seq-len", "16", "--windows", "2", "--device", &dev, "--json"]));
        let pack = t.path().join(format!("pack{}", d.index));
        let c = json(&ucw(&[
            "compress",
            m,
            "-o",
            pack.to_str().unwrap(),
            "--calib",
            text,
            "--calib-windows",
            "2",
            "--calib-seq-len",
            "16",
            "--device",
            &dev,
            "--json",
        ]));
        let nll = e["nll_q30"].clone();
        let digest = c["pack_digest"].clone();
        assert!(nll.is_i64() && digest.is_string(), "{}: eval {e}, compress {c}", d.label);
        // The pack evaluates too (its down_proj is just as wide).
        let pe = json(&ucw(&[
            "eval",
            pack.to_str().unwrap(),
            "--text",
            text,
            "--seq-len",
            "16",
            "--windows",
            "2",
            "--device",
            &dev,
            "--json",
        ]));
        let pnll = pe["nll_q30"].clone();
        println!("{}: eval nll_q30 {nll}, pack {digest}, pack eval nll_q30 {pnll}", d.label);
        match &reference {
            None => reference = Some((d.label.clone(), serde_json::json!([nll, pnll]), digest)),
            Some((label, want, want_digest)) => {
                assert_eq!(serde_json::json!([nll, pnll]), *want, "{}: eval NLL differs from {label}", d.label);
                assert_eq!(digest, *want_digest, "{}: pack digest differs from {label}", d.label);
            }
        }
    }
}
