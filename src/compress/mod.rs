//! `ucw compress`: one decoder layer at a time: (calibrated) gather the layer's input
//! statistics with the teacher forward pass, quantize and fit each linear, write the layer
//! file, free; then move the calibration hidden states on to the next layer. Files go into
//! a temporary directory beside the pack, renamed at the end.

pub mod calib;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::backend::Backend;
use crate::codec::CODEC_VERSION;
use crate::codec::gptq;
use crate::codec::gram::SymPacked;
use crate::codec::lowrank::{self, LayerItem, Metric};
use crate::codec::quant::quantize_tensor;
use crate::digest::{sha256_hex, weights_digest};
use crate::dtype::{DType, Decoded, first_non_finite};
use crate::error::{Error, Result};
use crate::fixed::quant::{MAX_GROUP_SIZE, MAX_IMPORTANCE, MAX_RANK, QuantParams, QuantTensor, step};
use crate::forward::layer::Tap;
use crate::model::{Model, Role, hash_model_dir};
use crate::pack::layer::{self, LayerMeta, QuantMeta};
use crate::pack::manifest::*;
use crate::pack::output::Staging;
use crate::pack::stfile::{self, OutTensor};
use crate::pack::{COPIED_FILES, SCAFFOLD_FILE, layer_file_name, sha256_file};
use calib::{CalibSpec, Calibration};

#[derive(Debug, Clone)]
pub struct Options {
    pub bits: u32,
    pub group_size: u32,
    pub rank: Rank,
    /// None = each tensor's source dtype.
    pub out_dtype: Option<DType>,
    pub force: bool,
    /// None = uncalibrated.
    pub calib: Option<CalibSpec>,
    /// Code widths per linear (mixed needs calibration; uncalibrated it falls back to
    /// uniform, and the summary says so).
    pub bit_alloc: BitAlloc,
    /// Bound on one kernel call's device buffers during calibration (tiles the calibration
    /// tokens; cannot change a bit).
    pub max_memory: u64,
    /// Error feedback's damping (calibrated compression only).
    pub damp: gptq::Damp,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bits: 5,
            group_size: 64,
            rank: Rank::Fixed(0),
            out_dtype: None,
            force: false,
            calib: None,
            bit_alloc: BitAlloc::Uniform,
            max_memory: crate::forward::eval::DEFAULT_MAX_MEMORY,
            damp: gptq::Damp::DEFAULT,
        }
    }
}

/// Where compression stands, for progress displays.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Layers finished, out of `layers`.
    pub done: usize,
    pub layers: usize,
    /// What runs now.
    pub phase: &'a str,
}

/// One linear input's calibration statistic in the forms the codec uses.
struct TapMetric {
    /// H (f64, packed triangle: 8·n(n+1)/2 bytes) where the full matrix is kept.
    packed: Option<SymPacked>,
    /// Error feedback's factorisation of H (with `packed`; dropped once the codes are
    /// chosen).
    feedback: Option<gptq::Feedback>,
    diag: Vec<f64>,
    /// diag(H) scaled for the scale search.
    importance: Vec<u32>,
}

/// Widest input whose statistic the overlay fit reads as a full matrix (2 GiB at 16,384);
/// wider ones are read packed. Either gives the same bits: memory only.
const FULL_METRIC_MAX_COLS: usize = 16384;

/// Seconds spent per phase (reported, never part of the pack).
#[derive(Debug, Clone, Default)]
pub struct PhaseTimes {
    pub hash: f64,
    /// Teacher forward pass with the statistics gathered inside it, and their conversion
    /// for error feedback (the two parts below are included).
    pub calibrate: f64,
    /// Part of `calibrate`: adding the windows to the exact statistics.
    pub calibrate_accumulate: f64,
    /// Part of `calibrate`: statistics to f64, Cholesky and triangular inverse.
    pub calibrate_factorize: f64,
    /// Scale search.
    pub quantize: f64,
    /// Error feedback (GPTQ) and overlay fit.
    pub fit: f64,
    /// Part of `fit`: error feedback for every candidate width.
    pub fit_feedback: f64,
    /// Reconstruction, digests, layer files.
    pub write: f64,
    /// Hidden states through the compressed layer (`--calib-propagate compressed`).
    pub propagate: f64,
}

/// Low-rank overlay rank per quantized linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    /// The same rank for every linear (0 = no overlay).
    Fixed(u32),
    /// Per layer, spend what this many bits per weight over the linears leaves after the
    /// codes (a ratio of integers, e.g. 525/100) on overlays where they lower the error
    /// most (`lowrank::allocate_layer`).
    Auto { bits: u64, weights: u64 },
}

/// How code widths are chosen per linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitAlloc {
    /// `--bits` everywhere.
    Uniform,
    /// Per layer, `--bits` − 1, `--bits` or `--bits` + 1 per linear, chosen within this
    /// many bits per weight over the layer's linears (a ratio of integers, the
    /// `--target-bpw`) where a bit lowers the calibrated error most (`allocate_bits`); the
    /// overlays (`Rank::Auto`, same target) get what is left.
    Mixed { bits: u64, weights: u64 },
}

/// Greedy width allocation: every linear starts at its narrowest candidate; while the
/// budget allows, widen the linear whose next width lowers its loss most per stored bit
/// (ties to the earlier linear). `costs[t][i]` is candidate i's stored bits (candidates
/// ascend in width), `losses[t][i]` its loss. Deterministic (fixed-order f64, fixed
/// tie-break).
fn allocate_bits(costs: &[Vec<i128>], losses: &[Vec<f64>], budget_bits: i128) -> Vec<usize> {
    let mut pick = vec![0usize; costs.len()];
    let mut remaining = budget_bits - costs.iter().map(|c| c[0]).sum::<i128>();
    loop {
        let mut best: Option<(f64, usize)> = None;
        for (t, c) in costs.iter().enumerate() {
            let i = pick[t];
            if i + 1 >= c.len() {
                continue;
            }
            let dc = c[i + 1] - c[i];
            if dc > remaining || dc <= 0 {
                continue;
            }
            let ratio = (losses[t][i] - losses[t][i + 1]) / dc as f64;
            if ratio > 0.0 && best.is_none_or(|(b, _)| ratio > b) {
                best = Some((ratio, t));
            }
        }
        let Some((_, t)) = best else { break };
        remaining -= costs[t][pick[t] + 1] - costs[t][pick[t]];
        pick[t] += 1;
    }
    pick
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pack::bits;

    /// Bit-packed bytes of codes, scales and zeros of a [rows×cols] linear.
    fn base_bytes(rows: usize, cols: usize, p: QuantParams) -> u64 {
        let gpr = cols.div_ceil(p.group_size as usize);
        (rows * (bits::row_bytes(cols, p.bits) + gpr + bits::row_bytes(gpr, p.bits))) as u64
    }

    /// Widening costs cols · 1 bit + one zero-point bit per group; the greedy takes the
    /// best loss drop per bit while it fits, and never exceeds the budget.
    #[test]
    fn allocate_bits_spends_the_budget_where_a_bit_buys_most() {
        let c: Vec<Vec<i128>> = (0..3)
            .map(|_| (4..=6).map(|bits| 8 * base_bytes(1, 640, QuantParams { bits, group_size: 64 }) as i128).collect())
            .collect();
        let cost = |t: &[usize]| -> i128 { t.iter().zip(&c).map(|(&i, cc)| cc[i]).sum() };
        // Linear 1 gains most from each bit, linear 2 least.
        let losses = vec![vec![16.0, 4.0, 1.0], vec![64.0, 16.0, 8.0], vec![2.0, 1.9, 1.8]];
        let narrow = cost(&[0, 0, 0]);
        let step = cost(&[1, 0, 0]) - narrow;
        assert_eq!(allocate_bits(&c, &losses, narrow - 1), vec![0, 0, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + step), vec![0, 1, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + 2 * step), vec![1, 1, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + 3 * step), vec![1, 2, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + 4 * step), vec![2, 2, 0]);
        let all = allocate_bits(&c, &losses, i128::MAX / 2);
        assert_eq!(all, vec![2, 2, 2]);
        for budget in [narrow, narrow + step / 2, narrow + 5 * step + 7] {
            assert!(cost(&allocate_bits(&c, &losses, budget)) <= budget);
        }
    }
}

/// ALS rounds of the overlay fit.
pub const FIT_ROUNDS: usize = 4;

/// The source weights as exact f64 (bf16, f16 and f32 all convert exactly).
pub fn source_f64(src: &[u8], dtype: DType, n: usize) -> Vec<f64> {
    (0..n)
        .into_par_iter()
        .map(|i| match dtype.decode(dtype.load_bits(src, i)) {
            Decoded::Finite { neg, sig, exp } => libm::ldexp(if neg { -(sig as f64) } else { sig as f64 }, exp),
            _ => 0.0,
        })
        .collect()
}

/// Σ_ij (w_ij − ŵ_ij)² · d_j (f64, ascending index): the error under diag(H).
fn diag_weighted_error(q: &QuantTensor, w: &[f64], d: &[f64]) -> f64 {
    let mut total = 0.0;
    for (i, e) in residual(w, q).iter().enumerate() {
        total += e * e * d[i % q.cols];
    }
    total
}

/// Exact f64 residual source − quantized (every term is an exact f64).
fn residual(w: &[f64], q: &QuantTensor) -> Vec<f64> {
    let gpr = q.groups_per_row();
    let g = q.params.group_size as usize;
    w.par_iter()
        .enumerate()
        .map(|(i, &w)| {
            let gi = (i / q.cols) * gpr + (i % q.cols) / g;
            let (m, e) = step(q.scales[gi], q.base_exp);
            w - libm::ldexp(m as f64 * (q.codes[i] as f64 - q.zeros[gi] as f64), e)
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub pack: PathBuf,
    pub pack_digest: String,
    pub weights_digest: String,
    pub bits_per_weight: PackBits,
    pub quantized: usize,
    pub raw: usize,
    pub seconds: f64,
    pub phases: PhaseTimes,
    pub calibration: Option<calib::Provenance>,
    /// Host bytes of the calibration hidden-state cache.
    pub calib_cache_bytes: u64,
    /// Quantized linears per code width.
    pub widths: BTreeMap<u32, usize>,
    /// Whether code widths were allocated per linear (`BitAlloc::Mixed` with calibration).
    pub mixed_bits: bool,
}

fn file_entry(dir: &Path, name: &str) -> Result<FileEntry> {
    let path = dir.join(name);
    let size = std::fs::metadata(&path).map_err(|e| Error::io(&path, "cannot stat", e))?.len();
    Ok(FileEntry { name: name.to_string(), sha256: sha256_file(&path)?, size })
}

pub fn compress(
    model_dir: &Path,
    out: &Path,
    backend: &dyn Backend,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let start = Instant::now();
    let mut times = PhaseTimes::default();
    let params = QuantParams { bits: opts.bits, group_size: opts.group_size };
    if !(2..=8).contains(&opts.bits) {
        return Err(bad_input!("--bits {} out of range 2..=8", opts.bits));
    }
    if opts.group_size == 0 || opts.group_size > MAX_GROUP_SIZE {
        return Err(bad_input!("--group-size {} out of range 1..={}", opts.group_size, MAX_GROUP_SIZE));
    }
    let model = Model::open(model_dir)?;
    if let Rank::Fixed(r) = opts.rank
        && r as usize > MAX_RANK
    {
        return Err(bad_input!("--rank {r}: at most {MAX_RANK}"));
    }
    let layers = model.config.num_hidden_layers;
    // Calibration text first: a bad calibration input fails before any work.
    let calib_windows = match &opts.calib {
        Some(spec) => Some(calib::read_windows(&model, spec)?),
        None => None,
    };
    let tmp = Staging::new(out, opts.force)?;

    // Source provenance.
    progress(Progress { done: 0, layers, phase: "hashing source" });
    let t0 = Instant::now();
    let src_digests = hash_model_dir(model_dir)?;
    let mut src_files: Vec<FileEntry> = Vec::new();
    for f in &model.checkpoint.files {
        let name = f.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        src_files.push(file_entry(model_dir, &name)?);
    }
    if model_dir.join(crate::model::weights::INDEX_FILE).exists() {
        src_files.push(file_entry(model_dir, crate::model::weights::INDEX_FILE)?);
    }
    for name in COPIED_FILES {
        if model_dir.join(name).exists() {
            src_files.push(file_entry(model_dir, name)?);
        }
    }
    src_files.sort_by(|a, b| a.name.cmp(&b.name));

    times.hash = t0.elapsed().as_secs_f64();
    let mut calib = match calib_windows {
        Some((windows, prov)) => {
            progress(Progress { done: 0, layers, phase: "embedding calibration tokens" });
            Some(Calibration::start(backend, &model, &windows, prov, opts.max_memory)?)
        }
        None => None,
    };
    let calib_cache_bytes = calib.as_ref().map_or(0, |c| c.cache_bytes());
    let mixed_target = match opts.bit_alloc {
        BitAlloc::Mixed { bits, weights } if calib.is_some() => Some((bits, weights)),
        _ => None,
    };
    let mixed_used = mixed_target.is_some();

    let mut files: Vec<FileEntry> = Vec::new();
    for name in COPIED_FILES {
        let from = model_dir.join(name);
        if from.exists() {
            std::fs::copy(&from, tmp.path.join(name)).map_err(|e| Error::io(&from, "cannot copy", e))?;
            files.push(file_entry(&tmp.path, name)?);
        }
    }

    let mut entries: Vec<TensorEntry> = Vec::new();
    let mut linear_bits = 0u64;
    let mut linear_weights = 0u64;
    let mut data_bytes = 0u64;
    let mut all_weights = 0u64;
    let mut scaffold: Vec<OutTensor> = Vec::new();
    for l in 0..layers {
        let mut meta = LayerMeta::new();
        let mut stored: Vec<OutTensor> = Vec::new();
        let file = layer_file_name(l);
        let linears: Vec<_> = model.tensors.iter().filter(|t| t.layer == Some(l) && t.role == Role::Linear).collect();
        // Calibration statistics of this layer's four inputs, as f64 metrics: the full H
        // where kept (error feedback and the overlay use it), else its diagonal.
        let t0 = Instant::now();
        let stats = match calib.as_mut() {
            Some(c) => {
                progress(Progress { done: l, layers, phase: "calibration forward" });
                let s = c.layer_stats(backend, &model, l)?;
                times.calibrate_accumulate += s.accumulate_seconds;
                Some(s)
            }
            None => None,
        };
        let t1 = Instant::now();
        // Each statistic is consumed as it is converted (its i64 triangle becomes the f64
        // one in place); memory per input in codec/gram.rs and codec/gptq.rs.
        let mut metrics: BTreeMap<Tap, TapMetric> = stats.map_or_else(BTreeMap::new, |s| {
            s.grams
                .into_iter()
                .map(|(t, g)| {
                    let diag = g.to_f64_diag();
                    let importance = g.importance(MAX_IMPORTANCE);
                    let packed = g.into_f64_packed();
                    let m = TapMetric {
                        feedback: packed.as_ref().and_then(|p| gptq::Feedback::from_packed(p, opts.damp)),
                        packed,
                        diag,
                        importance,
                    };
                    (t, m)
                })
                .collect()
        });
        times.calibrate_factorize += t1.elapsed().as_secs_f64();
        times.calibrate += t0.elapsed().as_secs_f64();
        let metric_of = |name: &str| Tap::of_linear(name).and_then(|t| metrics.get(&t));

        // Widths tried per linear: --bits, and its neighbours when the bits are allocated.
        let widths: Vec<u32> = if mixed_used {
            (opts.bits.saturating_sub(1)..=opts.bits + 1).filter(|b| (2..=8).contains(b)).collect()
        } else {
            vec![opts.bits]
        };
        progress(Progress { done: l, layers, phase: "quantize" });
        let t0 = Instant::now();
        let mut candidates: Vec<Vec<QuantTensor>> = Vec::with_capacity(linears.len());
        for t in &linears {
            let v = model.tensor(&t.name);
            let mut per = Vec::with_capacity(widths.len());
            for &b in &widths {
                per.push(quantize_tensor(
                    backend,
                    &t.name,
                    v.bytes,
                    model.dtype_of(&t.name),
                    t.shape[0],
                    t.shape[1],
                    QuantParams { bits: b, ..params },
                    metric_of(&t.name).map(|m| m.importance.as_slice()),
                )?);
            }
            candidates.push(per);
        }
        times.quantize += t0.elapsed().as_secs_f64();

        progress(Progress { done: l, layers, phase: "fit" });
        let t0 = Instant::now();
        // The exact source weights as f64 (8 bytes per weight), made for one linear at a
        // time where needed: holding a whole layer's would add 8 bytes per weight to the
        // peak (6.9 GB on a Llama-3.1-70B layer).
        let source_of = |t: &crate::model::arch::ExpectedTensor| {
            source_f64(model.tensor(&t.name).bytes, model.dtype_of(&t.name), t.shape[0] * t.shape[1])
        };
        // Error feedback under the full statistic: codes re-chosen, scales kept; its loss
        // (output squared error under H) prices each width.
        // Inputs with only the diagonal kept (wider than FULL_GRAM_MAX_COLS) are priced by
        // the diag(H)-weighted error of their nearest-rounded codes.
        let t1 = Instant::now();
        let mut losses: Vec<Vec<f64>> = Vec::with_capacity(linears.len());
        for (t, per) in linears.iter().zip(candidates.iter_mut()) {
            let w = &source_of(t);
            losses.push(
                per.iter_mut()
                    .map(|q| match metric_of(&t.name) {
                        Some(TapMetric { feedback: Some(f), .. }) => f.refine(q, w),
                        Some(TapMetric { diag, .. }) => diag_weighted_error(q, w, diag),
                        None => 0.0,
                    })
                    .collect(),
            );
        }
        times.fit_feedback += t1.elapsed().as_secs_f64();
        // U is not needed past this point.
        for m in metrics.values_mut() {
            m.feedback = None;
        }
        let choice: Vec<usize> = match mixed_target {
            Some((bits, weights)) => {
                let n: u64 = linears.iter().map(|t| (t.shape[0] * t.shape[1]) as u64).sum();
                let budget = bits as i128 * n as i128 / weights.max(1) as i128;
                // Each width is priced by its stored size, codes entropy-coded as written.
                let costs: Vec<Vec<i128>> = candidates
                    .iter()
                    .map(|per| per.iter().map(|q| 8 * layer::base_stored_bytes(q) as i128).collect())
                    .collect();
                allocate_bits(&costs, &losses, budget)
            }
            _ => vec![widths.iter().position(|&b| b == opts.bits).unwrap_or(0); linears.len()],
        };
        let mut quantized: Vec<QuantTensor> = candidates
            .into_iter()
            .zip(&choice)
            .map(|(per, &i)| per.into_iter().nth(i).expect("chosen width"))
            .collect();
        // Overlays: a common rank, or (auto) this layer's share of the budget spent where it
        // lowers the error most. Residuals live for this layer only.
        if opts.rank != Rank::Fixed(0) {
            // The overlay fit reads H as a full row-major matrix (8·n² bytes, its fastest
            // products) up to FULL_METRIC_MAX_COLS inputs, each packed triangle dropped as
            // its full matrix is made; wider inputs keep the packed triangle (half the
            // memory; the same bits, `Metric::Packed`).
            let fulls: BTreeMap<Tap, Vec<f64>> = metrics
                .iter_mut()
                .filter(|(_, m)| m.packed.as_ref().is_some_and(|p| p.n <= FULL_METRIC_MAX_COLS))
                .filter_map(|(&t, m)| m.packed.take().map(|p| (t, p.to_full())))
                .collect();
            let metric_of = |name: &str| Tap::of_linear(name).and_then(|t| metrics.get(&t));
            let full_of = |name: &str| Tap::of_linear(name).and_then(|t| fulls.get(&t));
            let residuals: Vec<Vec<f64>> =
                linears.iter().zip(&quantized).map(|(t, q)| residual(&source_of(t), q)).collect();
            let items: Vec<LayerItem> = linears
                .iter()
                .zip(&quantized)
                .zip(&residuals)
                .map(|((t, q), r)| LayerItem {
                    residual: r,
                    rows: q.rows,
                    cols: q.cols,
                    base_exp: q.base_exp,
                    metric: match (full_of(&t.name), metric_of(&t.name)) {
                        (Some(h), _) => Metric::Full(h),
                        (None, Some(TapMetric { packed: Some(p), .. })) => Metric::Packed(p),
                        (None, Some(TapMetric { diag, .. })) => Metric::Diagonal(diag),
                        (None, None) => Metric::Identity,
                    },
                })
                .collect();
            let overlays = match opts.rank {
                Rank::Fixed(r) => items
                    .iter()
                    .map(|it| {
                        lowrank::fit(it.residual, it.rows, it.cols, r as usize, it.base_exp, FIT_ROUNDS, it.metric)
                    })
                    .collect(),
                Rank::Auto { bits, weights } => {
                    let n: u64 = quantized.iter().map(|q| (q.rows * q.cols) as u64).sum();
                    let base: u64 = quantized.iter().map(|q| 8 * layer::base_stored_bytes(q)).sum();
                    let budget = bits as i128 * n as i128 / weights.max(1) as i128 - base as i128;
                    lowrank::allocate_layer(&items, budget, FIT_ROUNDS)
                }
            };
            for (q, o) in quantized.iter_mut().zip(overlays) {
                q.overlay = o;
            }
        }
        times.fit += t0.elapsed().as_secs_f64();

        progress(Progress { done: l, layers, phase: "write" });
        let t0 = Instant::now();
        // The compressed layer's outputs feed the next layer's statistics; after the last
        // layer nothing reads them, so that forward pass is skipped.
        let keep =
            l + 1 < layers && calib.as_ref().is_some_and(|c| c.provenance.propagate == calib::Propagate::Compressed);
        let mut patches: BTreeMap<String, (Vec<u8>, DType)> = BTreeMap::new();
        for (t, q) in linears.iter().zip(&quantized) {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let dtype = model.dtype_of(&t.name);
            let out_dtype = opts.out_dtype.unwrap_or(dtype);
            let rec = backend.dequantize(q, out_dtype).map_err(|e| e.for_tensor(&t.name, out_dtype))?;
            let tensors = layer::encode(&t.name, q);
            let sb: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
            linear_bits += 8 * sb;
            linear_weights += (rows * cols) as u64;
            data_bytes += sb;
            all_weights += (rows * cols) as u64;
            meta.tensors.insert(
                t.name.clone(),
                QuantMeta {
                    base_exp: q.base_exp,
                    bits: q.params.bits,
                    group_size: opts.group_size,
                    out_dtype,
                    overlay_exp: q.overlay.as_ref().map(|o| o.exp),
                    rank: q.overlay.as_ref().map_or(0, |o| o.rank as u32),
                    shape: [rows as u64, cols as u64],
                },
            );
            entries.push(TensorEntry {
                bits: Some(q.params.bits),
                dtype: out_dtype.safetensors_name().into(),
                file: file.clone(),
                kind: Kind::Quantized,
                name: t.name.clone(),
                rank: Some(q.overlay.as_ref().map_or(0, |o| o.rank as u32)),
                sha256: sha256_hex(&rec),
                shape: vec![rows as u64, cols as u64],
            });
            stored.extend(tensors);
            if keep {
                patches.insert(t.name.clone(), (rec, out_dtype));
            }
        }
        let (size, sha256) = stfile::write(&tmp.path.join(&file), stored, &meta.to_metadata())?;
        files.push(FileEntry { name: file, sha256, size });
        times.write += t0.elapsed().as_secs_f64();
        if let Some(c) = calib.as_mut()
            && keep
        {
            progress(Progress { done: l, layers, phase: "propagate" });
            let t0 = Instant::now();
            c.propagate_compressed(backend, &model, l, &patches)?;
            times.propagate += t0.elapsed().as_secs_f64();
        }
        // This layer is done: its mapped pages leave RSS (host memory stays one layer).
        for t in model.tensors.iter().filter(|t| t.layer == Some(l)) {
            model.checkpoint.release(&t.name);
        }
    }
    progress(Progress { done: layers, layers, phase: "scaffold" });
    let t0 = Instant::now();
    for t in model.tensors.iter().filter(|t| t.role != Role::Linear) {
        let v = model.tensor(&t.name);
        let dtype = model.dtype_of(&t.name);
        if let Some(i) = first_non_finite(v.bytes, dtype) {
            return Err(bad_input!("tensor \"{}\": element {i} is not finite (NaN or Inf)", t.name));
        }
        data_bytes += v.bytes.len() as u64;
        all_weights += v.numel() as u64;
        let shape: Vec<u64> = v.shape.iter().map(|&d| d as u64).collect();
        entries.push(TensorEntry {
            bits: None,
            dtype: dtype.safetensors_name().into(),
            file: SCAFFOLD_FILE.into(),
            kind: Kind::Raw,
            name: t.name.clone(),
            rank: None,
            sha256: sha256_hex(v.bytes),
            shape: shape.clone(),
        });
        scaffold.push(OutTensor {
            name: t.name.clone(),
            dtype: dtype.safetensors_name(),
            shape,
            data: Cow::Borrowed(v.bytes),
        });
    }
    let (size, sha256) = stfile::write(&tmp.path.join(SCAFFOLD_FILE), scaffold, &BTreeMap::new())?;
    for t in model.tensors.iter().filter(|t| t.role != Role::Linear) {
        model.checkpoint.release(&t.name);
    }
    files.push(FileEntry { name: SCAFFOLD_FILE.into(), sha256, size });
    files.sort_by(|a, b| a.name.cmp(&b.name));
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));

    let digests: Vec<_> = entries.iter().map(|t| t.digest()).collect();
    let manifest = Manifest {
        bits_per_weight: PackBits {
            linears: BitsPerWeight { bits: linear_bits, weights: linear_weights },
            pack: BitsPerWeight { bits: 8 * data_bytes, weights: all_weights },
        },
        codec: Codec {
            calibration: calib.as_ref().map(|c| c.provenance.to_json()),
            name: layer::CODEC_NAME.into(),
            parameters: CodecParams {
                bits: opts.bits,
                group_size: opts.group_size,
                out_dtype: opts.out_dtype.map_or("source".into(), |d| d.safetensors_name().into()),
                rank: match opts.rank {
                    Rank::Fixed(r) => r.to_string(),
                    Rank::Auto { .. } => "auto".into(),
                },
                bit_alloc: mixed_used.then(|| "mixed".to_string()),
                damp: calib.is_some().then(|| opts.damp.to_string()),
                target_bpw: match (opts.rank, mixed_target) {
                    (Rank::Auto { bits, weights }, _) | (_, Some((bits, weights))) => {
                        Some(BitsPerWeight { bits, weights })
                    }
                    _ => None,
                },
            },
            version: CODEC_VERSION,
        },
        files,
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        source: Source {
            files: src_files,
            model_type: model.config.arch.model_type().into(),
            tensors: {
                let mut v: Vec<SourceTensor> = src_digests
                    .tensors
                    .iter()
                    .map(|t| SourceTensor { name: t.name.clone(), sha256: t.sha256.clone() })
                    .collect();
                v.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                v
            },
            weights_digest: src_digests.weights_digest,
        },
        tensors: entries,
        // No tool version: it would change the pack digest without any change in content.
        tool: Tool { codec_version: CODEC_VERSION, name: "ucw".into() },
        weights_digest: weights_digest(&digests),
    };
    let bytes = manifest.to_bytes();
    let mpath = tmp.path.join(MANIFEST_FILE);
    std::fs::write(&mpath, &bytes).map_err(|e| Error::io(&mpath, "cannot write", e))?;
    tmp.install()?;
    times.write += t0.elapsed().as_secs_f64();
    Ok(Summary {
        pack: out.to_path_buf(),
        pack_digest: sha256_hex(&bytes),
        weights_digest: manifest.weights_digest.clone(),
        bits_per_weight: manifest.bits_per_weight,
        quantized: manifest.tensors.iter().filter(|t| t.kind == Kind::Quantized).count(),
        raw: manifest.tensors.iter().filter(|t| t.kind == Kind::Raw).count(),
        seconds: start.elapsed().as_secs_f64(),
        phases: times,
        calibration: calib.map(|c| c.provenance),
        calib_cache_bytes,
        widths: manifest.tensors.iter().filter_map(|t| t.bits).fold(BTreeMap::new(), |mut m, b| {
            *m.entry(b).or_insert(0) += 1;
            m
        }),
        mixed_bits: mixed_used,
    })
}
