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
    common::SyntheticLlama {
        hidden: 64,
        intermediate: ff,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        layers: 1,
        max_positions: None,
        seed: 0x9e37_79b9_7f4a_7c15,
        scale: |n| if n == "mlp.down_proj" { 0.03 } else { 0.25 },
    }
    .write(dir);
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

// The other sizes of issue 14 item 2, kernel by kernel, every device (bounds cited in each).

fn tokens_at(tokens: usize, width: usize, lim: i32, seed: u64) -> ucw::fixed::tensor::TokenFixed {
    let mut rng = common::Rng(seed);
    let mut mants: Vec<i32> = (0..tokens * width).map(|_| (rng.next_u32() as i32) >> (31 - 24 + 1)).collect();
    for m in mants.iter_mut() {
        *m = (*m).clamp(-lim, lim);
    }
    mants[0] = lim;
    mants[1] = -lim;
    ucw::fixed::tensor::TokenFixed { tokens, width, exps: (0..tokens as i32).map(|t| t - 2).collect(), mants }
}

// RMSNorm at hidden 16,384 and 21,844 (the widest llvmpipe runs: 3·21,844 + 2 = 65,534 loop
// iterations), activations at ±2^23: Σ a² <= 2^16·2^46 = 2^62 for widths up to 2^16
// (src/backend/cpu/norm.rs step 1). Before, the llvmpipe check counted 4·width + 2 and
// refused 16,384.
conformance!(rms_norm_at_hidden_16384, |b| {
    use ucw::fixed::tables::RmsConsts;
    use ucw::fixed::tensor::{GroupFixed, IngestParams};
    let mut out = common::Outputs::new();
    for w in [16384usize, 21844] {
        let x = tokens_at(2, w, 1 << 23, w as u64);
        let gamma = GroupFixed {
            rows: 1,
            cols: w,
            params: IngestParams { group_size: w as u32, mantissa_bits: 16 },
            exponents: vec![-15],
            mantissas: (0..w).map(|i| if i % 3 == 0 { -(1 << 15) } else { (1 << 15) - (i % 7) as i32 }).collect(),
        };
        out.tokens(&format!("rms {w}"), &b.rms_norm(&x, &gamma, &RmsConsts::new(w, 1e-5), 20).unwrap());
    }
    out
});

// Vocabulary 262,144: renorm of the lm_head's sums and NLL (Σ e^-D < 2^50 for V <= 2^20,
// src/backend/cpu/nll.rs step 3; llvmpipe walks 4,096 logits + 64 chunk maxima per
// invocation), and head_nll fused on the device (K = 32, 2 tokens: 1.7·10^7 products).
conformance!(nll_at_vocabulary_262144, |b| {
    use ucw::fixed::tables::{ExpConsts, LogConsts};
    use ucw::fixed::tensor::{GroupFixed, IngestParams};
    let (ec, lc) = (ExpConsts::new(), LogConsts::new());
    let v = 262_144usize;
    let mut out = common::Outputs::new();
    let mut logits = tokens_at(2, v, 1 << 23, 7);
    logits.exps = vec![-16, -20];
    let y = [0u32, v as u32 - 1];
    out.add("nll", &b.nll(&logits, &y, &ec, &lc).unwrap());
    let k = 32;
    let mut rng = common::Rng(8);
    let w = GroupFixed {
        rows: v,
        cols: k,
        params: IngestParams { group_size: 64, mantissa_bits: 16 },
        exponents: (0..v).map(|_| -20 - rng.below(4) as i32).collect(),
        mantissas: (0..v * k).map(|_| (rng.next_u32() as i32) >> 16).collect(),
    };
    let mut x = tokens_at(2, k, 1 << 17, 9);
    x.exps = vec![-17, -18];
    let s = b.matmul(&x, &w).unwrap();
    let want = b.nll(&b.renorm(&s, &x.exps, 24).unwrap(), &y, &ec, &lc).unwrap();
    b.allow_resident_weights(1 << 30);
    let p = b.prepare_matmul(w.clone()).unwrap();
    assert_eq!(b.head_nll(&x, &p, 24, &y, &ec, &lc).unwrap(), want, "head_nll at vocabulary {v}");
    drop(p);
    b.allow_resident_weights(0);
    out.add("head_nll", &want);
    out
});

// Attention and RoPE at head_dim 256 (the largest `check_attention_args` takes) and at 128
// query heads of 128 (width 16,384: rope and attn_renorm walk 3·16,384 iterations on
// llvmpipe), a few tokens each; q, k, v at ±2^17.
conformance!(attention_and_rope_at_wide_heads, |b| {
    use ucw::backend::cpu::attention::AttnShape;
    use ucw::fixed::tables::{ExpConsts, RopeTables};
    let ec = ExpConsts::new();
    let mut out = common::Outputs::new();
    for (h, kv, d, t) in [(2usize, 1usize, 256usize, 5usize), (128, 8, 128, 3), (16, 16, 64, 4)] {
        let q = tokens_at(t, h * d, 1 << 17, (h * d) as u64);
        let k = tokens_at(t, kv * d, 1 << 17, (h * d + 1) as u64);
        let v = tokens_at(t, kv * d, 1 << 17, (h * d + 2) as u64);
        let tables = RopeTables::new(d, t, 500000.0);
        let pos: Vec<u32> = (0..t as u32).collect();
        let qr = b.rope(&q, &pos, &tables, 16).unwrap();
        let kr = b.rope(&k, &pos, &tables, 16).unwrap();
        out.tokens(&format!("rope q {h}x{d}"), &qr);
        let a = b.attention(&qr, &kr, &v, &AttnShape::new(h, kv, d), &ec, 18).unwrap();
        out.tokens(&format!("attention {h}x{d}"), &a);
    }
    out
});

// A config beyond a limit is refused with one line naming the field, exit 2.
#[test]
fn configs_beyond_the_size_limits_are_refused_with_the_field() {
    let t = tempfile::tempdir().unwrap();
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/llama-bf16/config.json")).unwrap()).unwrap();
    for (field, v, shown) in [
        ("intermediate_size", 65537u64, "intermediate_size 65537 exceeds the supported 65536"),
        ("hidden_size", 65600, "hidden_size 65600 exceeds the supported 65536"),
        ("head_dim", 512, "head_dim 512 exceeds the supported 256"),
        ("vocab_size", (1 << 20) + 1, "vocab_size 1048577 exceeds the supported 1048576"),
    ] {
        let dir = t.path().join(field);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = base.clone();
        cfg[field] = v.into();
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let e = ucw::model::ModelConfig::parse(&serde_json::to_string(&cfg).unwrap()).unwrap_err().to_string();
        assert!(e.contains(shown) && !e.contains('\n'), "{field}: {e}");
        let o = ucw(&["eval", dir.to_str().unwrap(), "--text", "x", "--device", "cpu"]);
        assert_eq!(o.status.code(), Some(2), "{field}: {}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(shown) && err.trim().lines().count() == 1, "{field}: {err}");
    }
}
