//! Host ↔ device traffic counters (`Backend::traffic`, issue 16 item 1): on every selected
//! adapter, an evaluation of the llama-bf16 fixture runs each decoder layer on the device
//! from buffers to buffers (`Backend::decoder_layer`): one submission per layer and window
//! whatever the number of kernels, the window's hidden states uploaded once, and only the
//! layer's output read back; `ucw eval --json` / `ucw compress --json` report the counts
//! (and leave them out, or null, on the CPU, which does not count).
//!
//! The expected bytes are derived here from the model's shapes and what the pipeline hands
//! between host and device (weights are ingested on the device and read back; the lm_head
//! reads back the logits' exponents and the NLL), not from the counter.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ucw::backend::{Backend, Traffic};
use ucw::forward::{EvalOptions, Score, Source, evaluate};
use ucw::model::ModelConfig;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-bf16")
}

/// Window length of every evaluation here.
const T: usize = 16;

/// `count` windows of `T` ids spread over the vocabulary.
fn windows(count: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..count).map(|w| (0..T).map(|i| ((w * T + i) * 37 % vocab) as u32).collect()).collect()
}

/// Bytes an `ingest` of a `[rows, cols]` tensor in groups of `group` reads back: its "bad
/// element" word, one exponent per group and one mantissa per element, 4 bytes each (one
/// row chunk: every tensor here fits one binding).
fn ingest_back(rows: usize, cols: usize, group: usize) -> u64 {
    (4 + rows * cols.div_ceil(group) * 4 + rows * cols * 4) as u64
}

/// Bytes of `t` tokens of `width` i32 mantissas and one exponent per token.
fn token_out(t: usize, width: usize) -> u64 {
    (t * width * 4 + t * 4) as u64
}

/// Read-back bytes of one decoder layer over one window of `t` tokens: its output only
/// (eval takes no tap activations), O(hidden) per token.
fn layer_back(c: &ModelConfig, t: usize) -> u64 {
    token_out(t, c.hidden_size)
}

/// Read-back bytes of loading one decoder layer: two norms and seven linears ingested on
/// the device (groups of 64).
fn layer_weights_back(c: &ModelConfig) -> u64 {
    let (h, ff) = (c.hidden_size, c.intermediate_size);
    let (qw, kvw) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let linears = [(qw, h), (kvw, h), (kvw, h), (h, qw), (ff, h), (ff, h), (h, ff)];
    2 * ingest_back(1, h, h) + linears.iter().map(|&(n, k)| ingest_back(n, k, 64)).sum::<u64>()
}

/// Read-back bytes of `evaluate` over `w` windows of `T` tokens, every prediction scored.
fn expected_readback(c: &ModelConfig, w: usize) -> u64 {
    let (h, v) = (c.hidden_size, c.vocab_size);
    assert!(c.tie_word_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm, "llama fixture");
    // Weights, once: two norms and seven linears per layer, the final norm, the (tied)
    // embedding as lm_head.
    let weights = c.num_hidden_layers as u64 * layer_weights_back(c) + ingest_back(1, h, h) + ingest_back(v, h, 64);
    // Per window: its embedding rows (one group per token), the layers, the final norm,
    // and the fused head: the logits' exponents (checked on the host) and the NLL (i64) of
    // the T − 1 predictions.
    let p = T - 1;
    let window =
        ingest_back(T, h, h) + c.num_hidden_layers as u64 * layer_back(c, T) + token_out(T, h) + (p * 4 + p * 8) as u64;
    weights + w as u64 * window
}

/// Size of a device buffer the host fills with `bytes` bytes (`upload`: zero-padded to a
/// multiple of 4, at least 4).
fn up(bytes: usize) -> u64 {
    (bytes.max(4).div_ceil(4) * 4) as u64
}

/// Size of a kernel's uniform of `words` parameter words (padded to 16 bytes).
fn uni(words: usize) -> u64 {
    ((words * 4).max(16).div_ceil(16) * 16) as u64
}

/// Uploaded bytes of one decoder layer over one window of `t` tokens, its weights already
/// on the device (resident: uploaded when loaded, not per window): the window's hidden
/// states, the two norms' weights, the rsqrt seeds, the exp table, RoPE's tables and the
/// positions once each; then per kernel its uniform(s), and per renorm its initial token
/// maxima. Nothing proportional to an intermediate's width.
fn layer_up(c: &ModelConfig, t: usize) -> u64 {
    let h = c.hidden_size;
    let k = ucw::forward::layer::Consts::new(c, T);
    let once = up(t * h * 4)
        + up(t * 4)
        + 2 * up(h * 4)
        + up(k.rms_hidden.seed.len() * 4)
        + up(k.exp.table.len() * 4)
        + 2 * up(k.rope.cos.len() * 4)
        + up(t * 4);
    // renorm_top's and renorm's uniforms and the per-token top (initial i32::MIN).
    let renorm = uni(8) + uni(4) + up(t * 4);
    let linear = uni(8) + renorm; // matmul's uniform (one slice), then renorm
    let rms = uni(12);
    let rope = uni(4);
    let attention = 3 * uni(12) + uni(4);
    let add = uni(4);
    let swiglu = uni(8) + uni(4) + renorm; // swiglu_z, exp_add, renorm
    once + 2 * rms + 7 * linear + 2 * rope + attention + 2 * add + swiglu
}

/// Submissions of one decoder layer over one window: the whole layer recorded, with its
/// readback, in one submission, however many kernels it runs (24 dispatches here).
const LAYER_SUBMISSIONS: u64 = 1;

/// What one evaluation of `w` windows cost on `b`: the whole run, and the layers' part.
fn run(b: &dyn Backend, w: usize) -> (Traffic, Traffic, u64) {
    let mut src = Source::open(&fixture()).unwrap();
    let ids = windows(w, src.config().vocab_size);
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let opts = EvalOptions { score: Score::All, max_memory: ucw::forward::eval::DEFAULT_MAX_MEMORY };
    let before = b.traffic().expect("a GPU backend counts its traffic");
    let r = evaluate(b, &mut src, &refs, &opts, None, &mut |_, _| {}).unwrap();
    let total = b.traffic().unwrap().since(before);
    let layers = r.layer_traffic.expect("layer traffic measured on a counting backend");
    (total, layers.traffic, layers.steps)
}

#[test]
fn eval_traffic_has_the_pipeline_structure() {
    let c = ModelConfig::load(&fixture()).unwrap();
    let layers = c.num_hidden_layers as u64;

    // The CPU does not count: no figures, none made up.
    let cpu = ucw::backend::cpu::CpuBackend::new();
    assert_eq!(cpu.traffic(), None);
    let mut src = Source::open(&fixture()).unwrap();
    let ids = windows(1, c.vocab_size);
    let opts = EvalOptions { score: Score::All, max_memory: ucw::forward::eval::DEFAULT_MAX_MEMORY };
    let r = evaluate(&cpu, &mut src, &[ids[0].as_slice()], &opts, None, &mut |_, _| {}).unwrap();
    assert!(r.layer_traffic.is_none());

    let gpus = common::gpu_backends();
    if gpus.is_empty() {
        common::report_skip("eval_traffic_has_the_pipeline_structure", "no adapter selected");
    }
    for (label, gpu) in &gpus {
        let (t1, l1, s1) = run(gpu, 1);
        let (t2, l2, s2) = run(gpu, 2);
        let (t2b, l2b, _) = run(gpu, 2);
        let (t4, l4, s4) = run(gpu, 4);
        println!("{label}: 1 window {t1:?}; 2 windows {t2:?}; 4 windows {t4:?}; layers of 1 window {l1:?}");
        // Read-back bytes are exactly what the pipeline hands to the host.
        for (w, t) in [(1, t1), (2, t2), (4, t4)] {
            assert_eq!(t.readback_bytes, expected_readback(&c, w), "{label}: read-back bytes of {w} window(s)");
        }
        assert_eq!(l1.readback_bytes, layers * layer_back(&c, T), "{label}: layers' read-back bytes");
        assert_eq!(l1.uploaded_bytes, layers * layer_up(&c, T), "{label}: layers' uploaded bytes");
        // Something is uploaded, every run alike.
        assert!(t1.uploaded_bytes > 0 && l1.uploaded_bytes > 0, "{label}: uploads counted");
        assert_eq!((t2, l2), (t2b, l2b), "{label}: two identical runs");
        // Twice the windows, twice the per-window part (weights are loaded once per run).
        let per_window = t2.since(t1);
        assert!(per_window.submissions > 0 && per_window.uploaded_bytes > 0 && per_window.readback_bytes > 0);
        assert_eq!(t4.since(t2), per_window.plus(per_window), "{label}: per-window traffic doubles");
        // The layers' part is all per window: one step per layer and window.
        assert_eq!((s1, s2, s4), (layers, 2 * layers, 4 * layers), "{label}: layer steps");
        assert_eq!(l2, l1.plus(l1), "{label}: layers' traffic of 2 windows");
        assert_eq!(l4, l2.plus(l2), "{label}: layers' traffic of 4 windows");
        assert_eq!(l1.submissions, layers * LAYER_SUBMISSIONS, "{label}: submissions per layer and window");
    }
}

/// Calibration gathers its statistics from the layer run on the device and keeps them there
/// (issue 16 item 4): per window one submission for the layer and one per statistic, the
/// layer's output and the four tap activations read back (each at its width), the taps'
/// grid values uploaded to the statistics; the statistics themselves come back once per
/// layer, whatever the number of windows.
#[test]
fn calibration_statistics_come_from_the_layer_on_the_device() {
    use ucw::compress::calib::{CalibInput, CalibSpec, Calibration, Propagate, read_windows};
    let gpus = common::gpu_backends();
    if gpus.is_empty() {
        common::report_skip("calibration_statistics_come_from_the_layer_on_the_device", "no adapter selected");
    }
    let model = ucw::model::Model::open(&fixture()).unwrap();
    let c = model.config.clone();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/sample.txt");
    let spec =
        CalibSpec { input: CalibInput::Text(text), windows: 3, seq_len: T, skip: 0, propagate: Propagate::Teacher };
    let (ids, provenance) = read_windows(&model, &spec).unwrap();
    assert_eq!(ids.len(), 3, "the sample text holds three windows");
    let (qw, ff) = (c.num_attention_heads * c.head_dim, c.intermediate_size);
    let widths = [c.hidden_size, qw, c.hidden_size, ff];
    let taps: u64 = widths.iter().map(|&w| token_out(T, w)).sum();
    for on_device in [false, true] {
        for (label, gpu) in common::gpu_backends() {
            let gpu = &gpu.with_gram_on_device(on_device);
            let label = format!("{label}, statistics on the {}", if on_device { "device" } else { "host" });
            let budget = ucw::forward::eval::DEFAULT_MAX_MEMORY;
            let mut cal = Calibration::start(gpu, &model, &ids, provenance.clone(), budget).unwrap();
            let before = gpu.traffic().unwrap();
            cal.layer_stats(gpu, &model, 0).unwrap();
            let t = gpu.traffic().unwrap().since(before);
            // Loading the layer (weights ingested and kept on the device) precedes the
            // windows; what follows is per window.
            let mut cal2 = Calibration::start(gpu, &model, &ids[..1], provenance.clone(), budget).unwrap();
            let before = gpu.traffic().unwrap();
            cal2.layer_stats(gpu, &model, 0).unwrap();
            let t1 = gpu.traffic().unwrap().since(before);
            let per_window = t.since(t1);
            println!("{label}: layer 0 over 3 windows {t:?}, over 1 {t1:?}");
            // On the device each tap's statistic costs, per window, one more submission with
            // its values on the window's grid and one dispatch's parameters (every triangle
            // here fits one binding, every window one piece), and comes back once per layer,
            // 8 bytes an entry.
            let (gram_subs, gram_up, triangles) = if on_device {
                (
                    4,
                    widths.iter().map(|&w| up(T * w * 4) + uni(12)).sum::<u64>(),
                    widths.iter().map(|&w| (8 * w * (w + 1) / 2) as u64).sum::<u64>(),
                )
            } else {
                (0, 0, 0)
            };
            assert_eq!(
                per_window.submissions,
                2 * (LAYER_SUBMISSIONS + gram_subs),
                "{label}: submissions of two more windows"
            );
            assert_eq!(
                per_window.readback_bytes,
                2 * (layer_back(&c, T) + taps),
                "{label}: read-back of two more windows: the output and the four taps"
            );
            assert_eq!(
                per_window.uploaded_bytes,
                2 * (layer_up(&c, T) + gram_up),
                "{label}: uploads of two more windows: the layer's (and the taps' values)"
            );
            assert_eq!(
                t1.readback_bytes,
                layer_weights_back(&c) + layer_back(&c, T) + taps + triangles,
                "{label}: read-back of one window: the weights, the output, the taps (and the statistics)"
            );
        }
    }
}

fn ucw(args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_ucw")).args(args).output().expect("run ucw");
    assert!(o.status.success(), "ucw {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

#[test]
fn reports_carry_the_traffic() {
    let c = ModelConfig::load(&fixture()).unwrap();
    let m = fixture().display().to_string();
    let d = tempfile::tempdir().unwrap();
    let ids: Vec<u8> = windows(3, c.vocab_size).concat().iter().flat_map(|x| x.to_le_bytes()).collect();
    let tok = d.path().join("ids.u32");
    std::fs::write(&tok, ids).unwrap();
    let tok = tok.display().to_string();
    for dev in common::devices() {
        let i = dev.index.to_string();
        let r = ucw(&["eval", &m, "--tokens", &tok, "--seq-len", &T.to_string(), "--device", &i, "--json"]);
        let pack = d.path().join(format!("pack{i}"));
        let p = ucw(&["compress", &m, "-o", pack.to_str().unwrap(), "--device", &i, "--rank", "0", "--json"]);
        if dev.index == 0 {
            assert!(r.get("traffic").is_none(), "cpu: no traffic in the eval report: {r}");
            assert!(p["traffic"].is_null(), "cpu: traffic null in the compress report: {p}");
            continue;
        }
        let t = &r["traffic"];
        let label = &dev.label;
        assert_eq!(t["tokens"], 3 * T, "{label}: {t}");
        assert_eq!(t["readback_bytes"], expected_readback(&c, 3), "{label}: {t}");
        let back = expected_readback(&c, 3) as f64 / (3 * T) as f64;
        assert_eq!(t["readback_bytes_per_token"].as_f64(), Some(back), "{label}: {t}");
        let l = &t["layers"];
        assert_eq!(l["layer_groups"], 3 * c.num_hidden_layers, "{label}: {t}");
        assert_eq!(l["submissions_per_layer_group"].as_f64(), Some(LAYER_SUBMISSIONS as f64), "{label}: {t}");
        assert_eq!(
            l["readback_bytes_per_token_layer"].as_f64(),
            Some(layer_back(&c, T) as f64 / T as f64),
            "{label}: {t}"
        );
        let per = |v: u64| Some(v as f64 / T as f64);
        assert_eq!(l["uploaded_bytes_per_token_layer"].as_f64(), per(layer_up(&c, T)), "{label}: {t}");
        assert!(t["uploaded_bytes"].as_u64().unwrap() > 0 && t["submissions"].as_u64().unwrap() > 0);
        let pt = &p["traffic"];
        for k in ["submissions", "uploaded_bytes", "readback_bytes"] {
            assert!(pt[k].as_u64().unwrap() > 0, "{label}: compress traffic {k}: {pt}");
        }
        println!("{label}: eval {t}\n{label}: compress {pt}");
    }
}
