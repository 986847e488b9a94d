//! `ucw eval` as a library call: read the text, choose the windows, run the model (and the
//! baseline with the same windows), and build the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::eval::{EvalOptions, EvalResult, LayerTraffic, Score, evaluate, evaluate_pair};
use super::source::Source;
use super::text::{choose_windows, parse_token_bytes, tokenize_bytes};
use crate::backend::cpu::kld::Divergence;
use crate::backend::{Backend, Traffic};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};

pub enum Input {
    Text(PathBuf),
    Tokens(PathBuf),
}

pub struct EvalJob {
    pub model: PathBuf,
    pub input: Input,
    pub seq_len: usize,
    pub windows: usize,
    pub score: Score,
    pub baseline: Option<PathBuf>,
    pub force: bool,
    pub max_memory: u64,
}

/// One model's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFigures {
    pub path: String,
    pub ppl: f64,
    /// The f64 bits of `ppl` (hex), for exact comparison across devices.
    pub ppl_bits: String,
    /// Σ NLL over the scored predictions in Q30 nats (an exact integer).
    pub nll_q30: i64,
    /// The same in nats, for reading.
    pub nll_nats: f64,
    pub weights_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pack_digest: Option<String>,
    pub forward_seconds: f64,
    pub tokens_per_s: f64,
}

/// How far the model's next-token distributions are from the baseline's over the scored
/// predictions (`backend/cpu/kld.rs`: KL(baseline ‖ model) per prediction in Q30 nats,
/// exact integers, the same on every device). Percentiles are nearest-rank on the exact
/// values: the smallest value with at least p% of the predictions at or below it.
#[derive(Debug, Clone, Serialize)]
pub struct DivergenceFigures {
    /// Σ KL over the predictions, Q30 nats (an exact integer).
    pub kld_total_q30: i64,
    /// Mean KL in nats (the total / predictions, in f64), and its f64 bits (hex).
    pub kld_mean: f64,
    pub kld_mean_bits: String,
    pub kld_median: f64,
    pub kld_p90: f64,
    pub kld_p99: f64,
    pub kld_p999: f64,
    pub kld_max: f64,
    /// Predictions whose most likely token is the same under both models.
    pub top1_agree: u64,
    pub top1_fraction: f64,
    pub predictions: u64,
    /// Standard error of `kld_mean` in nats, treating predictions as independent (as
    /// llama-perplexity's `±` does); None below two predictions.
    pub kld_mean_stderr: Option<f64>,
}

impl DivergenceFigures {
    pub fn new(d: &[Divergence]) -> DivergenceFigures {
        let n = d.len() as u64;
        let mut kl: Vec<i64> = d.iter().map(|x| x.kl_q30).collect();
        kl.sort_unstable();
        let nats = |q: i64| q as f64 / (1u64 << 30) as f64;
        // Nearest rank: index ceil(n·per_mille/1000) − 1.
        let pct =
            |per_mille: u64| kl.get(((n * per_mille).div_ceil(1000)).max(1) as usize - 1).map_or(0.0, |&q| nats(q));
        let total: i64 = kl.iter().sum();
        let sumsq: i128 = kl.iter().map(|&q| q as i128 * q as i128).sum();
        let mean = nats(total) / n.max(1) as f64;
        let agree = d.iter().filter(|x| x.top1_same).count() as u64;
        DivergenceFigures {
            kld_total_q30: total,
            kld_mean: mean,
            kld_mean_bits: format!("{:016x}", mean.to_bits()),
            kld_median: pct(500),
            kld_p90: pct(900),
            kld_p99: pct(990),
            kld_p999: pct(999),
            kld_max: kl.last().map_or(0.0, |&q| nats(q)),
            top1_agree: agree,
            top1_fraction: agree as f64 / n.max(1) as f64,
            predictions: n,
            kld_mean_stderr: mean_stderr(total as i128, sumsq, n).map(nats_f64),
        }
    }
}

/// Q30 units (as f64) to nats.
fn nats_f64(q: f64) -> f64 {
    q / (1u64 << 30) as f64
}

/// Standard error of the mean of `n` values from their exact sum and sum of squares:
/// sqrt((n·Σx² − (Σx)²) / (n²·(n − 1))), the numerator an exact integer where it fits
/// i128 (one rounding into f64; the same value on every device), else from f64 sums. In
/// the values' units; None below two values.
fn mean_stderr(sum: i128, sumsq: i128, n: u64) -> Option<f64> {
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let num = (n as i128)
        .checked_mul(sumsq)
        .zip(sum.checked_mul(sum))
        .and_then(|(a, b)| a.checked_sub(b))
        .map_or_else(|| nf * sumsq as f64 - (sum as f64) * (sum as f64), |v| v as f64);
    Some((num.max(0.0) / (nf * nf * (nf - 1.0))).sqrt())
}

/// How precisely the perplexity ratio is known. ln(ratio) is the mean over the scored
/// predictions of d = the model's NLL − the baseline's; its standard error is given two
/// ways: per prediction (d's spread / √n: llama-perplexity's `±`, which treats
/// predictions as independent; neighbouring ones in a text are not, so it can understate)
/// and between windows (the spread of the windows' means / √windows: each window a whole
/// sample; rough with few windows). The ratio's errors are the ratio times those (first
/// order). Computed from exact integer sums of the Q30 differences.
#[derive(Debug, Clone, Serialize)]
pub struct RatioUncertainty {
    /// Mean d in nats: ln(model ppl / baseline ppl).
    pub ln_ratio: f64,
    pub ln_ratio_stderr: Option<f64>,
    pub ppl_ratio_stderr: Option<f64>,
    pub ln_ratio_stderr_windows: Option<f64>,
    pub ppl_ratio_stderr_windows: Option<f64>,
}

impl RatioUncertainty {
    /// `window_diffs`: per window, the model's NLL total − the baseline's (Q30 nats), each
    /// over `per_window` predictions; `sumsq`: Σ d² over all the predictions (Q60).
    pub fn new(window_diffs: &[i64], sumsq: i128, per_window: u64) -> RatioUncertainty {
        let windows = window_diffs.len() as u64;
        let n = windows * per_window;
        let sum: i128 = window_diffs.iter().map(|&d| d as i128).sum();
        let ln_ratio = nats_f64(sum as f64 / n.max(1) as f64);
        let ratio = ln_ratio.exp();
        let per = mean_stderr(sum, sumsq, n).map(nats_f64);
        // The windows' totals: their mean's error / predictions per window is the error of
        // d's mean.
        let sq: i128 = window_diffs.iter().map(|&d| (d as i128).pow(2)).sum();
        let between = mean_stderr(sum, sq, windows).map(|e| nats_f64(e / per_window.max(1) as f64));
        RatioUncertainty {
            ln_ratio,
            ln_ratio_stderr: per,
            ppl_ratio_stderr: per.map(|e| ratio * e),
            ln_ratio_stderr_windows: between,
            ppl_ratio_stderr_windows: between.map(|e| ratio * e),
        }
    }
}

/// Host ↔ device traffic of one `ucw eval` (`Backend::traffic` from the job's start to its
/// end: weights' ingest, embedding, layers and head, of both models with a baseline).
#[derive(Debug, Clone, Serialize)]
pub struct TrafficFigures {
    pub submissions: u64,
    pub uploaded_bytes: u64,
    pub readback_bytes: u64,
    /// Tokens evaluated: windows × seq_len.
    pub tokens: u64,
    pub submissions_per_token: f64,
    pub uploaded_bytes_per_token: f64,
    pub readback_bytes_per_token: f64,
    /// The decoder layers applied to the windows alone (their weights' loading excluded).
    pub layers: LayerTrafficFigures,
}

/// `TrafficFigures::layers`: the traffic of the decoder layers' window steps, per step (one
/// layer over one group of windows evaluated together) and per token and layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTrafficFigures {
    pub submissions: u64,
    pub uploaded_bytes: u64,
    pub readback_bytes: u64,
    /// Layers × window groups measured (both models' with a baseline).
    pub layer_groups: u64,
    pub submissions_per_layer_group: f64,
    pub uploaded_bytes_per_token_layer: f64,
    pub readback_bytes_per_token_layer: f64,
}

impl TrafficFigures {
    /// `total` over `tokens` evaluated tokens; `layers`' traffic covered `token_layers`
    /// (tokens × decoder layers, summed over the models run).
    fn new(total: Traffic, tokens: u64, layers: LayerTraffic, token_layers: u64) -> TrafficFigures {
        let per = |v: u64, n: u64| v as f64 / n.max(1) as f64;
        let l = layers.traffic;
        TrafficFigures {
            submissions: total.submissions,
            uploaded_bytes: total.uploaded_bytes,
            readback_bytes: total.readback_bytes,
            tokens,
            submissions_per_token: per(total.submissions, tokens),
            uploaded_bytes_per_token: per(total.uploaded_bytes, tokens),
            readback_bytes_per_token: per(total.readback_bytes, tokens),
            layers: LayerTrafficFigures {
                submissions: l.submissions,
                uploaded_bytes: l.uploaded_bytes,
                readback_bytes: l.readback_bytes,
                layer_groups: layers.steps,
                submissions_per_layer_group: per(l.submissions, layers.steps),
                uploaded_bytes_per_token_layer: per(l.uploaded_bytes, token_layers),
                readback_bytes_per_token_layer: per(l.readback_bytes, token_layers),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub ppl: f64,
    pub ppl_bits: String,
    pub nll_q30: i64,
    pub nll_nats: f64,
    pub predictions: u64,
    pub windows: usize,
    pub windows_requested: usize,
    pub seq_len: usize,
    pub score: &'static str,
    /// SHA-256 of the text file (or of the token file with --tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file_sha256: Option<String>,
    /// SHA-256 of the evaluated ids (u32 little-endian): identifies the scored tokens.
    pub tokens_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    pub model: ModelFigures,
    pub weights_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pack_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<ModelFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_ppl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl_ratio: Option<f64>,
    /// With a baseline: the ratio's standard errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl_ratio_uncertainty: Option<RatioUncertainty>,
    /// With a baseline: the model's distributions against the baseline's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<DivergenceFigures>,
    pub device: String,
    pub seconds: f64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_device_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Host ↔ device traffic, where the backend counts it (GPU backends; omitted on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficFigures>,
    pub max_memory: u64,
    pub tool: String,
    pub forward_version: u32,
    /// Notes for the reader (e.g. fewer windows than asked for).
    pub notes: Vec<String>,
}

fn figures(path: &Path, src: &Source, r: &EvalResult, tokens: usize) -> Result<ModelFigures> {
    let ppl = r.ppl();
    Ok(ModelFigures {
        path: path.display().to_string(),
        ppl,
        ppl_bits: format!("{:016x}", ppl.to_bits()),
        nll_q30: r.nll_q30,
        nll_nats: r.nll_q30 as f64 / (1u64 << 30) as f64,
        weights_digest: src.weights_digest()?,
        pack_digest: src.pack_digest(),
        forward_seconds: r.forward_seconds,
        tokens_per_s: tokens as f64 / r.forward_seconds.max(1e-9),
    })
}

/// Peak resident set of this process (Linux `VmHWM`), None elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn tokenizer_sha(dir: &Path) -> Option<String> {
    crate::pack::sha256_file(&dir.join("tokenizer.json")).ok()
}

/// Run the job on `backend`; `progress(model_index, done, total)` after each layer.
pub fn run(
    job: &EvalJob,
    backend: &dyn Backend,
    device: &str,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<EvalReport> {
    let start = Instant::now();
    let traffic_start = backend.traffic();
    let mut src = Source::open(&job.model)?;
    let mut baseline = job.baseline.as_ref().map(|p| Source::open(p)).transpose()?;
    let c = src.config().clone();
    if let Some(b) = &baseline
        && (b.config().vocab_size != c.vocab_size || b.config().max_position_embeddings != c.max_position_embeddings)
    {
        return Err(bad_input!("baseline {} does not share the model's vocabulary and positions", b.dir().display()));
    }
    let (ids, text_sha256, tokens_file_sha256, tokenizer_sha256) = match &job.input {
        Input::Text(p) => {
            // Read once: the same bytes are hashed and tokenized.
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, "cannot read", e))?;
            let text_sha256 = sha256_hex(&bytes);
            let ids = tokenize_bytes(src.dir(), p, bytes)?;
            let tok = tokenizer_sha(src.dir());
            if let Some(b) = &baseline
                && tokenizer_sha(b.dir()) != tok
            {
                return Err(bad_input!(
                    "baseline {} has a different tokenizer.json than {}: the same text would give different tokens",
                    b.dir().display(),
                    src.dir().display()
                ));
            }
            (ids, Some(text_sha256), None, tok)
        }
        Input::Tokens(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, "cannot read", e))?;
            (parse_token_bytes(p, &bytes)?, None, Some(sha256_hex(&bytes)), None)
        }
    };
    let w = choose_windows(&ids, c.vocab_size, job.seq_len, job.windows, c.max_position_embeddings, job.force)?;
    let mut notes = Vec::new();
    if w.truncated {
        notes.push(format!(
            "the text holds {} tokens: {} window(s) of {} evaluated, {} asked for",
            ids.len(),
            w.count,
            w.seq_len,
            job.windows
        ));
    }
    let windows: Vec<&[u32]> = (0..w.count).map(|i| &ids[i * w.seq_len..(i + 1) * w.seq_len]).collect();
    let used: Vec<u8> = ids[..w.count * w.seq_len].iter().flat_map(|x| x.to_le_bytes()).collect();
    let opts = EvalOptions { score: job.score, max_memory: job.max_memory };
    let tokens = w.count * w.seq_len;

    let (r, base, divergence, uncertainty, base_layer_traffic) = match (&mut baseline, &job.baseline) {
        (Some(b), Some(p)) => {
            let pr = evaluate_pair(backend, &mut src, b, &windows, &opts, progress)?;
            let base = figures(p, b, &pr.baseline, tokens)?;
            let diffs: Vec<i64> =
                pr.model.window_nll_q30.iter().zip(&pr.baseline.window_nll_q30).map(|(m, b)| m - b).collect();
            let u =
                RatioUncertainty::new(&diffs, pr.nll_diff_sumsq, pr.model.predictions / windows.len().max(1) as u64);
            let lt = pr.baseline.layer_traffic;
            (pr.model, Some(base), Some(DivergenceFigures::new(&pr.divergence)), Some(u), lt)
        }
        _ => {
            let r = evaluate(backend, &mut src, &windows, &opts, None, &mut |d, t| progress(0, d, t))?;
            (r, None, None, None, None)
        }
    };
    let model = figures(&job.model, &src, &r, tokens)?;
    let token_layers =
        tokens as u64 * (c.num_hidden_layers + baseline.as_ref().map_or(0, |b| b.config().num_hidden_layers)) as u64;
    let layer_traffic = match (r.layer_traffic, base_layer_traffic) {
        (Some(m), Some(b)) => Some(m.plus(b)),
        (m, _) => m,
    };
    let traffic = match (traffic_start, backend.traffic(), layer_traffic) {
        (Some(s), Some(e), Some(l)) => Some(TrafficFigures::new(e.since(s), tokens as u64, l, token_layers)),
        _ => None,
    };
    Ok(EvalReport {
        ppl: model.ppl,
        ppl_bits: model.ppl_bits.clone(),
        nll_q30: model.nll_q30,
        nll_nats: model.nll_nats,
        predictions: r.predictions,
        windows: w.count,
        windows_requested: job.windows,
        seq_len: w.seq_len,
        score: job.score.name(),
        text_sha256,
        tokens_file_sha256,
        tokens_sha256: sha256_hex(&used),
        tokenizer_sha256,
        weights_digest: model.weights_digest.clone(),
        pack_digest: model.pack_digest.clone(),
        baseline_ppl: base.as_ref().map(|b| b.ppl),
        ppl_ratio: base.as_ref().map(|b| model.ppl / b.ppl),
        ppl_ratio_uncertainty: uncertainty,
        divergence,
        tokens_per_s: model.tokens_per_s,
        model,
        baseline: base,
        device: device.to_string(),
        seconds: start.elapsed().as_secs_f64(),
        peak_device_bytes: backend.peak_device_bytes(),
        peak_rss_bytes: peak_rss_bytes(),
        traffic,
        max_memory: job.max_memory,
        tool: format!("ucw {} (codec {})", env!("CARGO_PKG_VERSION"), crate::codec::CODEC_VERSION),
        forward_version: super::FORWARD_VERSION,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::SplitMix64;

    const Q30: f64 = (1u64 << 30) as f64;

    /// What `run` hands `RatioUncertainty::new`, made from per-prediction differences.
    fn from_diffs(d: &[i64], windows: usize) -> RatioUncertainty {
        let w: Vec<i64> = d.chunks(d.len() / windows).map(|c| c.iter().sum()).collect();
        let sumsq = d.iter().map(|&v| (v as i128).pow(2)).sum();
        RatioUncertainty::new(&w, sumsq, (d.len() / windows) as u64)
    }

    /// Two-pass f64 reference: the mean, then Σ(x − mean)² / (n − 1) / n.
    fn two_pass(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let v = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0);
        (m, (v / n).sqrt())
    }

    /// By hand: d = 1, 2, 3, 4 nats: mean 2.5, variance 5/3, error √(5/12); two windows
    /// have means 1.5 and 3.5: their spread √2, error 1.
    #[test]
    fn ratio_uncertainty_by_hand() {
        let d: Vec<i64> = [1, 2, 3, 4].iter().map(|v| v << 30).collect();
        let u = from_diffs(&d, 2);
        assert_eq!(u.ln_ratio, 2.5);
        assert!((u.ln_ratio_stderr.unwrap() - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
        assert!((u.ln_ratio_stderr_windows.unwrap() - 1.0).abs() < 1e-15);
        assert!((u.ppl_ratio_stderr.unwrap() - 2.5f64.exp() * (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        // One window: no between-window figure; one prediction: none at all.
        assert!(from_diffs(&d, 1).ln_ratio_stderr_windows.is_none());
        let one = from_diffs(&d[..1], 1);
        assert!(one.ln_ratio_stderr.is_none() && one.ppl_ratio_stderr.is_none());
        // Identical models: every difference 0, so are the errors.
        let z = from_diffs(&[0; 8], 4);
        assert_eq!((z.ln_ratio, z.ln_ratio_stderr, z.ln_ratio_stderr_windows), (0.0, Some(0.0), Some(0.0)));
    }

    /// Random NLL-sized differences (±40 nats in Q30) against the two-pass reference, per
    /// prediction and between windows.
    #[test]
    fn ratio_uncertainty_matches_two_pass() {
        let mut rng = SplitMix64(15);
        for (n, w) in [(2usize, 2usize), (97, 1), (4096, 8), (30 * 512, 30)] {
            let d: Vec<i64> = (0..n).map(|_| (rng.next() % (80u64 << 30)) as i64 - (40i64 << 30)).collect();
            let u = from_diffs(&d, w);
            let x: Vec<f64> = d.iter().map(|&v| v as f64 / Q30).collect();
            let (m, e) = two_pass(&x);
            let ctx = format!("n {n}, windows {w}");
            assert!((u.ln_ratio - m).abs() <= 1e-12 * m.abs().max(1.0), "{ctx}: mean {} vs {m}", u.ln_ratio);
            let got = u.ln_ratio_stderr.unwrap();
            assert!((got - e).abs() <= 1e-9 * e, "{ctx}: stderr {got} vs {e}");
            if w >= 2 {
                let means: Vec<f64> = x.chunks(n / w).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect();
                let (_, ew) = two_pass(&means);
                let got = u.ln_ratio_stderr_windows.unwrap();
                assert!((got - ew).abs() <= 1e-9 * ew, "{ctx}: windows stderr {got} vs {ew}");
            }
        }
    }

    /// Sums too large for the exact numerator take the f64 route and agree with it.
    #[test]
    fn mean_stderr_falls_back_to_f64_beyond_i128() {
        let (sum, sumsq, n) = (1i128 << 80, 1i128 << 126, 1u64 << 40);
        let nf = n as f64;
        let want = ((nf * sumsq as f64 - (sum as f64).powi(2)) / (nf * nf * (nf - 1.0))).sqrt();
        assert!(want > 0.0);
        assert_eq!(mean_stderr(sum, sumsq, n), Some(want));
        assert_eq!(mean_stderr(5, 25, 1), None);
    }

    /// The divergence's mean error: KL values 0, 2, 4 nats: mean 2, variance 4, error √(4/3).
    #[test]
    fn kld_mean_stderr_by_hand() {
        let d: Vec<Divergence> =
            [0i64, 2, 4].iter().map(|&v| Divergence { kl_q30: v << 30, top1_same: true }).collect();
        let f = DivergenceFigures::new(&d);
        assert_eq!(f.kld_mean, 2.0);
        assert!((f.kld_mean_stderr.unwrap() - (4.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }
}
