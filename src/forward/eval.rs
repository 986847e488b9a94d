//! The streaming evaluation driver: one decoder layer at a time over every window.
//!
//! Hidden states of all windows live on the host (windows × seq_len × hidden i32 plus one
//! exponent per token); each layer's weights are ingested once, applied to every window in
//! turn, and dropped before the next layer is read. The logits of a window are reduced to
//! per-token NLL chunk by chunk as they are produced, never held for all windows (nor for a
//! whole window of a large vocabulary). Every step is per token or per window, so neither
//! the chunk sizes nor the memory budget can change a bit (DESIGN §3 rule 5).

use std::time::Instant;

use rayon::prelude::*;

use super::layer::{self, ACT_BITS, Consts, LOGIT_BITS, Layer, RESIDUAL_BITS, slice_tokens};
use super::source::Source;
use crate::backend::cpu::kld::{self, Divergence};
use crate::backend::{Backend, Traffic};
use crate::error::Result;
use crate::fixed::tensor::TokenFixed;

/// Which predictions of a window count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Score {
    /// Every prediction inside the window: seq_len − 1.
    All,
    /// Predictions of tokens seq_len/2+1 … seq_len−1 (llama.cpp's llama-perplexity).
    SecondHalf,
}

impl Score {
    pub fn name(self) -> &'static str {
        match self {
            Score::All => "all",
            Score::SecondHalf => "second-half",
        }
    }

    /// Positions whose logits are scored (position p predicts token p + 1).
    pub fn positions(self, seq_len: usize) -> std::ops::Range<usize> {
        match self {
            Score::All => 0..seq_len - 1,
            Score::SecondHalf => seq_len / 2..seq_len - 1,
        }
    }
}

/// Default device-buffer budget when `--max-memory` is not given.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;

pub struct EvalOptions {
    pub score: Score,
    /// Bound on the buffers one kernel call may need (weights of the current linear
    /// included); chooses the token chunk of every matrix product.
    pub max_memory: u64,
}

/// What the forward pass measured.
#[derive(Debug, Clone)]
pub struct EvalResult {
    /// Σ NLL over scored predictions, Q30 nats (exact, the same on every device).
    pub nll_q30: i64,
    pub predictions: u64,
    /// Per window Σ NLL (Q30).
    pub window_nll_q30: Vec<i64>,
    /// Host ↔ device traffic of the decoder layers applied to the windows (weights' loading
    /// and the head excluded), where the backend counts it, and how many (layer, window
    /// group) steps it covers: the per-layer cost of the forward pass.
    pub layer_traffic: Option<LayerTraffic>,
    /// Seconds spent in the forward pass (weights reading and ingest included, tokenizing
    /// excluded), as `hf_ppl.py` times its forward loop. Not a result: never compared.
    pub forward_seconds: f64,
}

/// `Backend::traffic` over the decoder layers' window steps only (`EvalResult::layer_traffic`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerTraffic {
    pub traffic: Traffic,
    /// Layers × window groups (`Backend::concurrent_windows` windows at a time) measured.
    pub steps: u64,
}

impl LayerTraffic {
    fn add(&mut self, t: Traffic, steps: u64) {
        self.traffic = self.traffic.plus(t);
        self.steps += steps;
    }

    pub fn plus(self, o: LayerTraffic) -> LayerTraffic {
        LayerTraffic { traffic: self.traffic.plus(o.traffic), steps: self.steps + o.steps }
    }
}

impl EvalResult {
    /// exp(mean NLL) on the host with `libm` (DESIGN §3 rule 6).
    pub fn ppl(&self) -> f64 {
        ppl_from_q30(self.nll_q30, self.predictions)
    }
}

/// The Q30 total converts exactly below 2^53 (about 8 million predictions at 1 nat) and by
/// IEEE round-to-nearest beyond: the same f64 everywhere either way.
pub fn ppl_from_q30(nll_q30: i64, predictions: u64) -> f64 {
    libm::exp(nll_q30 as f64 / (1u64 << 30) as f64 / predictions as f64)
}

/// Called with each window's logits as they are produced: (window, first position, logits
/// of positions first.. at `LOGIT_BITS`).
pub type LogitsSink<'a> = &'a mut dyn FnMut(usize, usize, &TokenFixed);

/// `f(index, window)` for every window, `group` windows at a time (in parallel within a
/// group; a group of one runs on the calling thread), results in window order.
fn each_window<T: Send, R: Send>(
    items: &mut [T],
    group: usize,
    f: impl Fn(usize, &mut T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let group = group.max(1);
    let mut out = Vec::with_capacity(items.len());
    for (g, part) in items.chunks_mut(group).enumerate() {
        if let [one] = part {
            out.push(f(g * group, one)?);
        } else {
            let r: Vec<R> = part.par_iter_mut().enumerate().map(|(i, x)| f(g * group + i, x)).collect::<Result<_>>()?;
            out.extend(r);
        }
    }
    Ok(out)
}

/// `Backend::allow_resident_weights` for the life of one evaluation, withdrawn however it
/// ends (the backend may serve another run next: a baseline, a test).
pub(crate) struct ResidentAllowance<'a>(&'a dyn Backend);

impl<'a> ResidentAllowance<'a> {
    pub(crate) fn new(backend: &'a dyn Backend, bytes: u64) -> Self {
        backend.allow_resident_weights(bytes);
        ResidentAllowance(backend)
    }

    fn allow(&self, bytes: u64) {
        self.0.allow_resident_weights(bytes);
    }
}

impl Drop for ResidentAllowance<'_> {
    fn drop(&mut self) {
        self.0.allow_resident_weights(0);
    }
}

/// Token chunk of one matrix product: up to this many tokens, or more while the chunk's exact
/// sums stay within `MAX_CHUNK_SUMS_BYTES`.
pub const MAX_CHUNK: usize = 64;
pub const MAX_CHUNK_SUMS_BYTES: usize = 128 << 20;

/// Token chunk for a product with `k` inputs, `n` outputs and `weight_bytes` of weights,
/// within `budget` bytes: per token the inputs (4k), exact sums (8n) and outputs (4n).
pub fn chunk_tokens(budget: u64, k: usize, n: usize, weight_bytes: u64) -> Result<usize> {
    let per_token = per_token_bytes(k, n);
    let free = budget.saturating_sub(weight_bytes);
    if free < per_token {
        return Err(bad_input!(
            "--max-memory {budget} bytes is below one matrix product's needs ({weight_bytes} bytes of weights + {per_token} per token)"
        ));
    }
    // Narrow products take whole windows (fewer, larger calls); wide ones (a vocabulary) stop
    // at 128 MB of exact sums (the sums of a 1024-token window over a 49k vocabulary are
    // 400 MB). Each call streams the whole weight from memory (1.1 GB for a 128k-vocabulary
    // lm_head at hidden 4096, packed once by `prepare_matmul`), so it wants more tokens per
    // call than the 64 that 32 MB gave: on the 8B shape 128 MB (130 tokens) ran `ucw eval`
    // 10% faster with the same peak RSS, 256 MB no faster (BENCHMARKS.md; measured when
    // the AVX2 kernel still packed the weights on every call). The price is host memory at small
    // vocabularies (SmolLM2's 49k: 341 tokens; 12 bytes of sums and logits per token and
    // output make that 0.15 GB more than at 85; on SmolLM2, with the f64 kernel, chunks
    // of 64 and 256 tokens ran equally fast). Chunks never change a bit (module comment).
    let cap = MAX_CHUNK.max(MAX_CHUNK_SUMS_BYTES / (8 * n).max(1));
    Ok(((free / per_token) as usize).clamp(1, cap))
}

pub(crate) use crate::backend::layer::per_token_bytes;

/// The least budget `chunk_tokens` accepts for an `n × k` linear whose weights are held as
/// ingested (mantissas and one exponent per group, 4 bytes each: what a GPU backend keeps
/// on the host, whose device allowance this sizes): one token.
pub fn least_call_bytes(k: usize, n: usize) -> u64 {
    let gpr = k.div_ceil(super::layer::WEIGHT_GROUP as usize);
    ((n * k + n * gpr) * 4) as u64 + per_token_bytes(k, n)
}

/// Windows the forward pass accepts: one length >= 2, within the sliding window if any.
fn check_windows(c: &crate::model::ModelConfig, windows: &[&[u32]]) -> Result<usize> {
    let seq_len = windows.first().map_or(0, |w| w.len());
    if seq_len < 2 || windows.iter().any(|w| w.len() != seq_len) {
        return Err(bad_input!("evaluation needs windows of one length >= 2"));
    }
    if let Some(sw) = c.sliding_window
        && seq_len > sw
    {
        return Err(bad_input!(
            "--seq-len {seq_len} exceeds the model's sliding_window {sw}: sliding-window attention is not implemented (use --seq-len <= {sw})"
        ));
    }
    Ok(seq_len)
}

/// The largest `least_call_bytes` of these `(rows, cols)` linears.
fn least(shapes: &[(usize, usize)]) -> u64 {
    shapes.iter().map(|&(n, k)| least_call_bytes(k, n)).max().unwrap_or(0)
}

/// Weights a backend may keep on the device while a decoder layer runs over every window:
/// what `max_memory` leaves beyond the least one of the layer's products needs, so each
/// call's chunk still fits in the rest and keeping weights never turns a budget that works
/// into one that does not (eval and calibration alike).
pub(crate) fn layer_residency(max_memory: u64, c: &crate::model::ModelConfig) -> u64 {
    max_memory.saturating_sub(least(&Layer::linear_shapes(c)))
}

/// What one call may hold beside the weights `backend` keeps on the device.
pub(crate) fn budget_beside_resident(backend: &dyn Backend, max_memory: u64) -> u64 {
    max_memory.saturating_sub(backend.resident_weight_bytes())
}

/// Embedding and every decoder layer over all windows: the residual stream after the last
/// layer, one `TokenFixed` per window, and the traffic of the layers' window steps where the
/// backend counts it. `progress(done, layers + 1)` after each layer.
fn run_layers(
    backend: &dyn Backend,
    src: &mut Source,
    windows: &[&[u32]],
    consts: &Consts,
    opts: &EvalOptions,
    resident: &ResidentAllowance,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<TokenFixed>, Option<LayerTraffic>)> {
    let c = src.config().clone();
    // Embedding: the rows of the ids, one exponent per token at the residual width.
    let mut hidden = Vec::with_capacity(windows.len());
    {
        let name = "model.embed_tokens.weight";
        let (emb, dtype) = src.tensor_bytes(backend, name)?;
        for w in windows {
            hidden.push(super::embed_rows(backend, name, &emb, dtype, c.vocab_size, c.hidden_size, w, RESIDUAL_BITS)?);
        }
    }
    // Weights may stay on the device for every window (GPU backends).
    resident.allow(layer_residency(opts.max_memory, &c));
    let call_budget = || budget_beside_resident(backend, opts.max_memory);
    let layers = c.num_hidden_layers;
    progress(0, layers + 1);
    // Window groups per layer (each_window's partition): the steps one layer's traffic covers.
    let groups = windows.len().div_ceil(backend.concurrent_windows().max(1)) as u64;
    let mut measured = backend.traffic().map(|_| LayerTraffic::default());
    for l in 0..layers {
        let layer = Layer::load(backend, src, l, call_budget())?;
        let chunk = layer.chunk(call_budget())?;
        let before = backend.traffic();
        each_window(&mut hidden, backend.concurrent_windows(), |_, h| {
            *h = layer.forward(backend, h, consts, chunk)?;
            Ok(())
        })?;
        if let (Some(m), Some(b), Some(a)) = (measured.as_mut(), before, backend.traffic()) {
            m.add(a.since(b), groups);
        }
        progress(l + 1, layers + 1);
    }
    Ok((hidden, measured))
}

/// The final norm and the lm_head (the embedding when tied), loaded within `budget`.
struct Head {
    norm: crate::fixed::tensor::GroupFixed,
    linear: layer::Linear,
}

impl Head {
    fn load(backend: &dyn Backend, src: &mut Source, budget: u64) -> Result<Head> {
        let c = src.config().clone();
        let norm = layer::load_norm(backend, src, "model.norm.weight", c.hidden_size)?;
        let name = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let w = layer::load_weight(backend, src, name, c.vocab_size, c.hidden_size)?;
        let linear = layer::Linear::new_within(backend, name.to_string(), w, None, budget)?;
        Ok(Head { norm, linear })
    }
}

/// Run the model over `windows` (each a slice of seq_len ids) and score them.
pub fn evaluate(
    backend: &dyn Backend,
    src: &mut Source,
    windows: &[&[u32]],
    opts: &EvalOptions,
    mut logits_sink: Option<LogitsSink>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalResult> {
    let c = src.config().clone();
    let seq_len = check_windows(&c, windows)?;
    let start = Instant::now();
    let consts = Consts::new(&c, seq_len);
    let resident = ResidentAllowance::new(backend, 0);
    let (mut hidden, layer_traffic) = run_layers(backend, src, windows, &consts, opts, &resident, progress)?;
    let layers = c.num_hidden_layers;

    // Final norm, lm_head and NLL, chunk by chunk.
    resident.allow(opts.max_memory.saturating_sub(least(&[(c.vocab_size, c.hidden_size)])));
    let call_budget = || budget_beside_resident(backend, opts.max_memory);
    let Head { norm: final_norm, linear: head } = Head::load(backend, src, call_budget())?;
    let chunk = head.chunk(call_budget())?;
    let scored = opts.score.positions(seq_len);
    // With a sink every position's logits are produced (the last one predicts nothing).
    let produced = if logits_sink.is_some() { 0..seq_len } else { scored.clone() };
    // One window's Σ NLL over its scored positions, handing logits to the sink if any.
    let score_window = |wi: usize, h: &TokenFixed, ids: &[u32], mut sink: Option<&mut LogitsSink>| -> Result<i64> {
        let x = backend.rms_norm(h, &final_norm, &consts.rms_hidden, ACT_BITS)?;
        let mut sum = 0i64;
        let mut p0 = produced.start;
        while p0 < produced.end {
            let p1 = (p0 + chunk).min(produced.end);
            let xc = slice_tokens(&x, p0, p1);
            let Some(sink) = sink.as_mut() else {
                // Every produced position is scored: the logits need not be kept.
                let nll = head.nll(backend, &xc, LOGIT_BITS, &ids[p0 + 1..p1 + 1], &consts.exp, &consts.log)?;
                sum += nll.iter().sum::<i64>();
                p0 = p1;
                continue;
            };
            let logits = layer::linear(backend, &xc, &head, LOGIT_BITS, chunk)?;
            sink(wi, p0, &logits);
            // Positions of this chunk that are scored.
            let (s0, s1) = (p0.max(scored.start), p1.min(scored.end));
            if s0 < s1 {
                let part = if s0 == p0 && s1 == p1 { logits } else { slice_tokens(&logits, s0 - p0, s1 - p0) };
                let nll = backend.nll(&part, &ids[s0 + 1..s1 + 1], &consts.exp, &consts.log)?;
                sum += nll.iter().sum::<i64>();
            }
            p0 = p1;
        }
        Ok(sum)
    };
    let window_nll: Vec<i64> = match logits_sink.as_mut() {
        // The sink sees windows in order.
        Some(sink) => hidden
            .iter()
            .zip(windows)
            .enumerate()
            .map(|(wi, (h, ids))| score_window(wi, h, ids, Some(&mut *sink)))
            .collect::<Result<_>>()?,
        None => each_window(&mut hidden, backend.concurrent_windows(), |wi, h| score_window(wi, h, windows[wi], None))?,
    };
    progress(layers + 1, layers + 1);
    let predictions = (windows.len() * scored.len()) as u64;
    Ok(EvalResult {
        nll_q30: window_nll.iter().sum(),
        predictions,
        window_nll_q30: window_nll,
        layer_traffic,
        forward_seconds: start.elapsed().as_secs_f64(),
    })
}

/// What `evaluate_pair` measured: each model's figures as `evaluate` gives them, and per
/// scored prediction (windows in order, positions in order) how far the model's
/// distribution is from the baseline's.
#[derive(Debug, Clone)]
pub struct PairResult {
    pub model: EvalResult,
    pub baseline: EvalResult,
    pub divergence: Vec<Divergence>,
    /// Σ over the scored predictions of d², d = the model's NLL − the baseline's in Q30
    /// nats (with the windows' NLL totals, what the ratio's uncertainty needs).
    pub nll_diff_sumsq: i128,
}

/// Evaluate `model` and `baseline` on the same windows and compare their next-token
/// distributions at every scored position (`backend::cpu::kld`).
///
/// Both models run their decoder layers in turn, as two `evaluate` calls would; the
/// baseline's final-norm activations are kept (windows × seq_len × hidden i32: what one
/// model's hidden states already cost) while the model's layers run, and the two heads are
/// then stepped together, chunk by chunk: each chunk's two rows of logits give both NLLs
/// (the same values `evaluate` gives: `nll` of the same logits) and the divergence, and are
/// dropped. Memory beyond one evaluation: the second head's weights, one more chunk of
/// logits, the kept activations and 16 bytes per prediction. `progress(which, done,
/// total)`: 0 for the model, 1 for the baseline; the head phase of both reports as the
/// model's last step, and its time counts in the model's `forward_seconds`.
pub fn evaluate_pair(
    backend: &dyn Backend,
    model: &mut Source,
    baseline: &mut Source,
    windows: &[&[u32]],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<PairResult> {
    let (cm, cb) = (model.config().clone(), baseline.config().clone());
    if cm.vocab_size != cb.vocab_size {
        return Err(bad_input!(
            "baseline {} has a vocabulary of {}, the model {}: their distributions cannot be compared",
            baseline.dir().display(),
            cb.vocab_size,
            cm.vocab_size
        ));
    }
    let seq_len = check_windows(&cm, windows)?;
    check_windows(&cb, windows)?;
    let resident = ResidentAllowance::new(backend, 0);
    let call_budget = || budget_beside_resident(backend, opts.max_memory);
    let head_least = least(&[(cm.vocab_size, cm.hidden_size), (cb.vocab_size, cb.hidden_size)]);

    // The baseline's trunk, reduced to its final-norm activations.
    let t0 = Instant::now();
    let kb = Consts::new(&cb, seq_len);
    let (hb, traffic_b) = run_layers(backend, baseline, windows, &kb, opts, &resident, &mut |d, t| progress(1, d, t))?;
    let norm_b = layer::load_norm(backend, baseline, "model.norm.weight", cb.hidden_size)?;
    let xb: Vec<TokenFixed> = hb
        .iter()
        .map(|h| backend.rms_norm(h, &norm_b, &kb.rms_hidden, ACT_BITS))
        .collect::<std::result::Result<_, _>>()?;
    drop(hb);
    let base_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let km = Consts::new(&cm, seq_len);
    let (mut hm, traffic_m) = run_layers(backend, model, windows, &km, opts, &resident, &mut |d, t| progress(0, d, t))?;
    // Both heads at once: each may keep weights on the device within what leaves one
    // product of either room.
    resident.allow(opts.max_memory.saturating_sub(2 * head_least));
    let head_b = Head::load(backend, baseline, call_budget())?;
    let head_m = Head::load(backend, model, call_budget())?;
    let chunk = head_b.linear.chunk(call_budget())?.min(head_m.linear.chunk(call_budget())?);
    let scored = opts.score.positions(seq_len);
    let per_window = each_window(&mut hm, backend.concurrent_windows(), |wi, h| {
        let xm = backend.rms_norm(h, &head_m.norm, &km.rms_hidden, ACT_BITS)?;
        let ids = windows[wi];
        let (mut sum_m, mut sum_b, mut sumsq) = (0i64, 0i64, 0i128);
        let mut div = Vec::with_capacity(scored.len());
        let mut p0 = scored.start;
        while p0 < scored.end {
            let p1 = (p0 + chunk).min(scored.end);
            let targets = &ids[p0 + 1..p1 + 1];
            let lb = layer::linear(backend, &slice_tokens(&xb[wi], p0, p1), &head_b.linear, LOGIT_BITS, chunk)?;
            let lm = layer::linear(backend, &slice_tokens(&xm, p0, p1), &head_m.linear, LOGIT_BITS, chunk)?;
            let nb = backend.nll(&lb, targets, &kb.exp, &kb.log)?;
            let nm = backend.nll(&lm, targets, &km.exp, &km.log)?;
            sum_b += nb.iter().sum::<i64>();
            sum_m += nm.iter().sum::<i64>();
            sumsq += nm.iter().zip(&nb).map(|(m, b)| ((m - b) as i128).pow(2)).sum::<i128>();
            div.extend(kld::divergence(&lb, &lm, &km.exp, &km.log)?);
            p0 = p1;
        }
        Ok((sum_m, sum_b, div, sumsq))
    })?;
    let layers = cm.num_hidden_layers;
    progress(0, layers + 1, layers + 1);
    let predictions = (windows.len() * scored.len()) as u64;
    let result = |window_nll: Vec<i64>, layer_traffic: Option<LayerTraffic>, forward_seconds: f64| EvalResult {
        nll_q30: window_nll.iter().sum(),
        predictions,
        window_nll_q30: window_nll,
        layer_traffic,
        forward_seconds,
    };
    let model_seconds = t1.elapsed().as_secs_f64();
    let model_nll = per_window.iter().map(|r| r.0).collect();
    let base_nll = per_window.iter().map(|r| r.1).collect();
    let nll_diff_sumsq = per_window.iter().map(|r| r.3).sum();
    Ok(PairResult {
        model: result(model_nll, traffic_m, model_seconds),
        baseline: result(base_nll, traffic_b, base_seconds),
        divergence: per_window.into_iter().flat_map(|r| r.2).collect(),
        nll_diff_sumsq,
    })
}
