//! `ucw eval` as a library call: read the text, choose the windows, run the model (and the
//! baseline with the same windows), and build the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::eval::{EvalOptions, EvalResult, Score, evaluate, evaluate_pair};
use super::source::Source;
use super::text::{choose_windows, parse_token_bytes, tokenize_bytes};
use crate::backend::Backend;
use crate::backend::cpu::kld::Divergence;
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

    let (r, base, divergence) = match (&mut baseline, &job.baseline) {
        (Some(b), Some(p)) => {
            let pr = evaluate_pair(backend, &mut src, b, &windows, &opts, progress)?;
            let base = figures(p, b, &pr.baseline, tokens)?;
            (pr.model, Some(base), Some(DivergenceFigures::new(&pr.divergence)))
        }
        _ => (evaluate(backend, &mut src, &windows, &opts, None, &mut |d, t| progress(0, d, t))?, None, None),
    };
    let model = figures(&job.model, &src, &r, tokens)?;
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
        divergence,
        tokens_per_s: model.tokens_per_s,
        model,
        baseline: base,
        device: device.to_string(),
        seconds: start.elapsed().as_secs_f64(),
        peak_device_bytes: backend.peak_device_bytes(),
        peak_rss_bytes: peak_rss_bytes(),
        max_memory: job.max_memory,
        tool: format!("ucw {} (codec {})", env!("CARGO_PKG_VERSION"), crate::codec::CODEC_VERSION),
        forward_version: super::FORWARD_VERSION,
        notes,
    })
}
