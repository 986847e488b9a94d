//! Fidelity of the integer forward pass against the committed transformers float32 logits
//! (tests/fixtures/*/reference.safetensors), with negative controls that must fail.
//!
//! Tolerance, chosen before measuring and derived from the widths (src/forward/layer.rs):
//! every rounding point keeps at least 16 significant bits of the token's largest value
//! (q/k/v after RoPE are the narrowest at 16; matmul inputs 18, residual 20, weights 16-bit
//! per group of 64, exact for bf16/f16 sources and 2^-16 relative for f32), so one
//! rounding adds a relative error of at most 2^-16 of the token's maximum. A fixture layer
//! has about 12 rounding points; 2 layers plus the final norm and lm_head make about 27,
//! which, independent, grow as √27 ≈ 5.2; the per-token maximum is within 2^2 of the RMS in
//! these random models; and the random N(0, 0.2) layers amplify a perturbation of the
//! residual stream by at most about 2^4 end to end (their attention is sharp: max/uniform
//! ≈ 14, tests/fixtures/README.md). That gives ≈ 2^-16 · 5.2 · 2^2 · 2^4 ≈ 2^-7.6 as a
//! loose worst case and ≈ 2^-11 without the amplification. The float32 reference itself
//! and its float32 RoPE angles (ours are f64) add about 2^-20.
//!
//! TOLERANCE: relative RMS error of the logits ‖ours − ref‖₂ / ‖ref‖₂ ≤ 2^-10 over the
//! whole 64×512 block, and max |ours − ref| ≤ 2^-7 · max |ref|. The controls below
//! (wrong rope_theta, a dropped layer, a transposed weight) move the logits by 4–10 in
//! absolute terms (README table), ≥ 2^0 relative, so the tolerance separates them by
//! three orders of magnitude.

use std::path::{Path, PathBuf};

use ucw::backend::TokenFixed;
use ucw::backend::cpu::CpuBackend;
use ucw::forward::eval::DEFAULT_MAX_MEMORY;
use ucw::forward::{EvalOptions, Score, Source, evaluate};

const REL_RMS_TOL: f64 = 1.0 / 1024.0;
const REL_MAX_TOL: f64 = 1.0 / 128.0;
const FIXTURES: [&str; 4] = ["llama-bf16", "mistral-f16", "qwen2-f32", "qwen3-bf16-sharded"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// (tokens, logits [64 × 512] row-major) from reference.safetensors.
fn reference(dir: &Path) -> (Vec<u32>, Vec<f64>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tokens = st
        .tensor("tokens")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect();
    (tokens, logits)
}

/// Our logits for one window as f64 (m · 2^e is exact in f64: |m| < 2^24).
fn our_logits(src: &mut Source, tokens: &[u32]) -> Vec<f64> {
    let cpu = CpuBackend::new();
    let mut out = vec![0f64; tokens.len() * src.config().vocab_size];
    let vocab = src.config().vocab_size;
    let mut sink = |_w: usize, p0: usize, l: &TokenFixed| {
        for t in 0..l.tokens {
            let scale = libm::ldexp(1.0, l.exps[t]);
            for v in 0..vocab {
                out[(p0 + t) * vocab + v] = l.mants[t * vocab + v] as f64 * scale;
            }
        }
    };
    let opts = EvalOptions { score: Score::All, max_memory: DEFAULT_MAX_MEMORY };
    evaluate(&cpu, src, &[tokens], &opts, Some(&mut sink), &mut |_, _| {}).unwrap();
    out
}

/// (relative RMS error, max abs error / max |ref|).
fn errors(ours: &[f64], reference: &[f64]) -> (f64, f64) {
    let (mut num, mut den, mut max_d, mut max_r) = (0f64, 0f64, 0f64, 0f64);
    for (a, b) in ours.iter().zip(reference) {
        num += (a - b) * (a - b);
        den += b * b;
        max_d = max_d.max((a - b).abs());
        max_r = max_r.max(b.abs());
    }
    ((num / den).sqrt(), max_d / max_r)
}

fn within(e: (f64, f64)) -> bool {
    e.0 <= REL_RMS_TOL && e.1 <= REL_MAX_TOL
}

#[test]
fn logits_match_transformers_float32_on_every_fixture() {
    for f in FIXTURES {
        let dir = fixture(f);
        let (tokens, want) = reference(&dir);
        let mut src = Source::open(&dir).unwrap();
        let got = our_logits(&mut src, &tokens);
        let e = errors(&got, &want);
        println!("{f}: relative RMS error {:.3e}, max error / max |ref| {:.3e}", e.0, e.1);
        assert!(within(e), "{f}: logits outside the tolerance: {e:?}");
    }
}

#[test]
fn negative_controls_fail_the_tolerance() {
    for f in FIXTURES {
        let dir = fixture(f);
        let (tokens, want) = reference(&dir);

        let mut src = Source::open(&dir).unwrap();
        if let Source::Model(m) = &mut src {
            m.config.rope_theta *= 10.0;
        }
        let e = errors(&our_logits(&mut src, &tokens), &want);
        println!("{f}: rope_theta ×10: {e:?}");
        assert!(!within(e), "{f}: a wrong rope_theta passed the tolerance: {e:?}");

        let mut src = Source::open(&dir).unwrap();
        if let Source::Model(m) = &mut src {
            m.config.num_hidden_layers -= 1;
        }
        let e = errors(&our_logits(&mut src, &tokens), &want);
        println!("{f}: last layer dropped: {e:?}");
        assert!(!within(e), "{f}: a dropped layer passed the tolerance: {e:?}");

        let t = transposed_copy(&dir, "model.layers.0.mlp.gate_proj.weight");
        let mut src = Source::open(t.path()).unwrap();
        let e = errors(&our_logits(&mut src, &tokens), &want);
        println!("{f}: gate_proj of layer 0 transposed (as a [160, 64] view of its [64, 160] transpose): {e:?}");
        assert!(!within(e), "{f}: a transposed weight passed the tolerance: {e:?}");
    }
}

/// A copy of a fixture directory with one 2-D weight replaced by its transpose, read back
/// with the original shape (the classic [out, in] vs [in, out] loading mistake).
fn transposed_copy(dir: &Path, name: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), t.path().join(e.file_name())).unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && !p.ends_with("reference.safetensors"))
        .collect();
    files.sort();
    for p in files {
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        if st.tensor(name).is_err() {
            continue;
        }
        let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (n, v) in st.tensors() {
            let mut data = v.data().to_vec();
            if n == name {
                let (r, c) = (v.shape()[0], v.shape()[1]);
                let es = data.len() / (r * c);
                let src = data.clone();
                for i in 0..r {
                    for j in 0..c {
                        // element (i, j) of the transpose [c, r] laid over the [r, c] buffer
                        let k = i * c + j;
                        let (ti, tj) = (k / r, k % r);
                        data[k * es..(k + 1) * es].copy_from_slice(&src[(tj * c + ti) * es..(tj * c + ti + 1) * es]);
                    }
                }
            }
            owned.push((n, v.dtype(), v.shape().to_vec(), data));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = owned
            .iter()
            .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let out = safetensors::serialize(views, None).unwrap();
        std::fs::write(&p, out).unwrap();
        return t;
    }
    panic!("{name} not found in {}", dir.display());
}
