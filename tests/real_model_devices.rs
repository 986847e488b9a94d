//! Real-model shapes on every device (opt-in: UCW_REAL_MODEL=/path/to/smollm2-135m): each
//! step of decoder layer 0 and the lm_head/NLL on a short window, CPU twin vs adapters,
//! compared step by step so a mismatch names the kernel. The text is the first 32 tokens
//! of `../text/eval.txt` beside the model directory (the layout `get-real-data.sh` writes).
//! Here: identical on llvmpipe Vulkan and GL for SmolLM2-135M.

mod common;

use ucw::backend::Backend;
use ucw::forward::Source;
use ucw::forward::layer::{self, ACT_BITS, BRANCH_BITS, Consts, LOGIT_BITS, Layer, QKV_BITS, RESIDUAL_BITS};

type Steps = Vec<(&'static str, ucw::fixed::tensor::TokenFixed)>;

/// Each step's output; stops at the first step the device refuses (llvmpipe's loop limit).
fn steps(b: &dyn Backend, dir: &std::path::Path) -> (Steps, Option<String>) {
    let mut out = Vec::new();
    let r = run_steps(b, dir, &mut out);
    (out, r.err().map(|e| e.to_string()))
}

fn run_steps(b: &dyn Backend, dir: &std::path::Path, out: &mut Steps) -> ucw::error::Result<()> {
    let mut src = Source::open(dir)?;
    let c = src.config().clone();
    let ids = ucw::forward::text::tokenize_file(dir, &dir.join("../text/eval.txt"))?;
    let ids = &ids[..32];
    let (emb, dt) = src.tensor_bytes(b, "model.embed_tokens.weight")?;
    let emb = emb.into_owned();
    let x = ucw::forward::embed_rows(b, "e", &emb, dt, c.vocab_size, c.hidden_size, ids, RESIDUAL_BITS)?;
    let k = Consts::new(&c, 32);
    let l = Layer::load(b, &mut src, 0, u64::MAX)?;
    out.push(("embed", x.clone()));
    let a = b.rms_norm(&x, &l.input_norm, &k.rms_hidden, ACT_BITS)?;
    out.push(("rms_norm", a.clone()));
    let q = layer::linear(b, &a, &l.q, ACT_BITS, 256)?;
    out.push(("q_proj", q.clone()));
    let kk = layer::linear(b, &a, &l.k, ACT_BITS, 256)?;
    let pos: Vec<u32> = (0..32).collect();
    let q = b.rope(&q, &pos, &k.rope, QKV_BITS)?;
    out.push(("rope q", q.clone()));
    let kk = b.rope(&kk, &pos, &k.rope, QKV_BITS)?;
    let v = layer::linear(b, &a, &l.v, QKV_BITS, 256)?;
    out.push(("v_proj", v.clone()));
    let att = b.attention(&q, &kk, &v, &k.attn, &k.exp, ACT_BITS)?;
    out.push(("attention", att.clone()));
    let o = layer::linear(b, &att, &l.o, BRANCH_BITS, 256)?;
    out.push(("o_proj", o.clone()));
    let x2 = b.add(&x, &o, RESIDUAL_BITS)?;
    out.push(("add", x2.clone()));
    let a2 = b.rms_norm(&x2, &l.post_norm, &k.rms_hidden, ACT_BITS)?;
    let g = layer::linear(b, &a2, &l.gate, ACT_BITS, 256)?;
    out.push(("gate_proj", g.clone()));
    let u = layer::linear(b, &a2, &l.up, ACT_BITS, 256)?;
    let s = b.swiglu(&g, &u, &k.exp, ACT_BITS)?;
    out.push(("swiglu", s.clone()));
    let d = layer::linear(b, &s, &l.down, BRANCH_BITS, 256)?;
    out.push(("down_proj", d.clone()));
    let y = l.forward(b, &x, &k, 256)?;
    out.push(("layer 0", y.clone()));
    let head = layer::load_weight(b, &mut src, "model.embed_tokens.weight", c.vocab_size, c.hidden_size)?;
    let sums = b.matmul(&a, &head)?;
    let logits = b.renorm(&sums, &a.exps, LOGIT_BITS)?;
    out.push(("lm_head", logits.clone()));
    let nll = b.nll(&logits, &ids[..32], &k.exp, &k.log)?;
    let n = ucw::fixed::tensor::TokenFixed {
        tokens: 1,
        width: 32,
        exps: vec![0],
        mants: nll.iter().map(|&v| (v >> 8) as i32).collect(),
    };
    out.push(("nll", n));
    Ok(())
}

#[test]
fn real_model_layer_steps_agree_on_every_device() {
    let Some(dir) = common::opt_in(
        "real_model_layer_steps_agree_on_every_device",
        "UCW_REAL_MODEL",
        "a SmolLM2-135M directory from get-real-data.sh",
    ) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let devs = common::devices();
    let (reference, err) = steps(devs[0].backend.as_ref(), &dir);
    assert!(err.is_none(), "cpu: {err:?}");
    for d in &devs[1..] {
        let (got, err) = steps(d.backend.as_ref(), &dir);
        if let Some(e) = &err {
            // Only the documented driver limit may stop a device, and only with its message.
            assert!(e.contains("silently stops shaders"), "{}: {e}", d.label);
            println!("{}: refused after {} steps: {e}", d.label, got.len());
        }
        for ((name, a), (_, b)) in reference.iter().zip(&got) {
            let same = a == b;
            println!("{}: {name}: {}", d.label, if same { "same" } else { "DIFFERS" });
            if !same {
                let i = a.mants.iter().zip(&b.mants).position(|(x, y)| x != y);
                let e = a.exps.iter().zip(&b.exps).position(|(x, y)| x != y);
                println!("  first mantissa diff {i:?}, first exponent diff {e:?}");
            }
        }
        assert!(reference.iter().zip(&got).all(|(a, b)| a.1 == b.1), "{} differs from the CPU", d.label);
    }
}
