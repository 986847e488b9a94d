//! `ucw compress`: one decoder layer at a time: (calibrated) gather the layer's input
//! statistics with the teacher forward pass, quantize and fit each linear, write the layer
//! file, free; then move the calibration hidden states on to the next layer. Files go into
//! a temporary directory beside the pack, renamed at the end.
//!
//! `compress` reads as its stages: source and provenance (`writer::source_facts`), per
//! layer the statistics (`calib`), metrics, candidate codes, the widths chosen and the
//! overlays (`work`), the layer file (`writer::PackWriter`), and the hidden states moved
//! on; then the scaffold and the manifest (`PackWriter::finish`).

pub mod calib;
mod work;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::backend::Backend;
use crate::codec::gptq;
use crate::dtype::{DType, Decoded};
use crate::error::Result;
use crate::fixed::quant::{MAX_GROUP_SIZE, MAX_RANK, QuantParams};
use crate::model::{Model, Role};
use crate::pack::manifest::{Kind, PackBits};
use calib::{CalibSpec, Calibration};
use writer::{PackWriter, Recipe};

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
    /// Part of `fit`: error feedback for every candidate width, and the width chosen.
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
    /// `--target-bpw`) where a bit lowers the calibrated error most (`work::allocate_bits`); the
    /// overlays (`Rank::Auto`, same target) get what is left.
    Mixed { bits: u64, weights: u64 },
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
    let mut pack = PackWriter::new(out, opts)?;

    // Source and provenance.
    progress(Progress { done: 0, layers, phase: "hashing source" });
    let t0 = Instant::now();
    let source = writer::source_facts(model_dir, &model)?;
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
    let widths = work::widths(opts, mixed_target.is_some());
    pack.copy_side_files(model_dir)?;

    // Per layer: statistics, codes, overlays, the layer file, then the hidden states on.
    for l in 0..layers {
        let linears: Vec<_> = model.tensors.iter().filter(|t| t.layer == Some(l) && t.role == Role::Linear).collect();
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
        let mut metrics = work::metrics(stats, opts.damp);
        times.calibrate_factorize += t1.elapsed().as_secs_f64();
        times.calibrate += t0.elapsed().as_secs_f64();

        progress(Progress { done: l, layers, phase: "quantize" });
        let t0 = Instant::now();
        let candidates = work::candidates(backend, &model, &linears, &metrics, params, &widths)?;
        times.quantize += t0.elapsed().as_secs_f64();

        progress(Progress { done: l, layers, phase: "fit" });
        let t0 = Instant::now();
        let mut quantized = work::choose(&model, &linears, candidates, &mut metrics, opts, mixed_target, &widths);
        times.fit_feedback += t0.elapsed().as_secs_f64();
        work::fit_overlays(&model, &linears, &mut quantized, &mut metrics, opts.rank);
        times.fit += t0.elapsed().as_secs_f64();

        progress(Progress { done: l, layers, phase: "write" });
        let t0 = Instant::now();
        // The compressed layer's outputs feed the next layer's statistics; after the last
        // layer nothing reads them, so that forward pass is skipped.
        let keep =
            l + 1 < layers && calib.as_ref().is_some_and(|c| c.provenance.propagate == calib::Propagate::Compressed);
        let patches = pack.write_layer(backend, &model, l, &linears, &quantized, keep)?;
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

    // The scaffold, then the manifest.
    progress(Progress { done: layers, layers, phase: "scaffold" });
    let t0 = Instant::now();
    pack.write_scaffold(&model)?;
    for t in model.tensors.iter().filter(|t| t.role != Role::Linear) {
        model.checkpoint.release(&t.name);
    }
    let recipe = Recipe { opts, calibration: calib.as_ref().map(|c| c.provenance.to_json()), mixed_target };
    let (manifest, pack_digest) = pack.finish(&model, source, recipe)?;
    times.write += t0.elapsed().as_secs_f64();
    Ok(Summary {
        pack: out.to_path_buf(),
        pack_digest,
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
        mixed_bits: mixed_target.is_some(),
    })
}
