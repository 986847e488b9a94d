use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use super::eval::parse_bytes;
use super::{Common, print_json};
use crate::backend::device;
use crate::compress::calib::{CalibInput, CalibSpec, Propagate};
use crate::compress::{BitAlloc, Options, Progress, Rank, compress};
use crate::dtype::DType;
use crate::error::Result;

pub fn parse_out_dtype(s: &str) -> Result<Option<DType>> {
    match s.to_ascii_lowercase().as_str() {
        "source" => Ok(None),
        "bf16" => Ok(Some(DType::BF16)),
        "f16" => Ok(Some(DType::F16)),
        "f32" => Ok(Some(DType::F32)),
        _ => Err(bad_input!("--out-dtype {s}: expected source, bf16, f16 or f32")),
    }
}

#[derive(clap::Args)]
pub struct CompressArgs {
    pub model_dir: PathBuf,
    /// Output pack directory (must not exist or be empty, unless --force).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Bits per code (2..=8).
    #[arg(long, default_value_t = 5)]
    pub bits: u32,
    /// Input channels per scale group.
    #[arg(long, default_value_t = 64)]
    pub group_size: u32,
    /// Low-rank overlay rank per linear: auto (spend --target-bpw) or a number (0 = none).
    #[arg(long, default_value = "auto")]
    pub rank: String,
    /// Bits per weight over the quantized linears that --bit-alloc mixed and --rank auto
    /// may spend (default: --bits + 0.25).
    #[arg(long)]
    pub target_bpw: Option<String>,
    /// Reconstructed dtype: source (default), bf16, f16 or f32.
    #[arg(long, default_value = "source")]
    pub out_dtype: String,
    /// Replace a non-empty output directory.
    #[arg(long)]
    pub force: bool,
    /// Calibration text (tokenized with the model's tokenizer.json), or `default` for the
    /// built-in mix of six genres (data/calib/README.md; a file named default: ./default).
    /// Without --calib or --calib-tokens compression is uncalibrated.
    #[arg(long, conflicts_with = "calib_tokens")]
    pub calib: Option<PathBuf>,
    /// Calibration token ids (little-endian u32) instead of text.
    #[arg(long)]
    pub calib_tokens: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 32)]
    pub calib_windows: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    pub calib_seq_len: usize,
    /// Tokens skipped before the first calibration window (keep calibration and evaluation
    /// text apart).
    #[arg(long, default_value_t = 0)]
    pub calib_skip: usize,
    /// Hidden states feeding the next layer's calibration: compressed (the layer as stored)
    /// or teacher (the source model's).
    #[arg(long, default_value = "teacher")]
    pub calib_propagate: String,
    /// Code widths: mixed (per linear --bits−1..=--bits+1 within --target-bpw; needs
    /// calibration, uniform without) or uniform (--bits everywhere).
    #[arg(long, default_value = "mixed")]
    pub bit_alloc: String,
    /// Error feedback's damping: added to the calibration statistic's diagonal as this
    /// fraction of its mean (GPTQ's usual is 0.01; larger trusts the calibration text less).
    #[arg(long, value_parser = crate::codec::gptq::Damp::parse, default_value_t = crate::codec::gptq::Damp::DEFAULT)]
    pub damp: crate::codec::gptq::Damp,
    /// Bound on one kernel call's device buffers during calibration (e.g. 512M, 2G). Cannot
    /// change the pack.
    #[arg(long, default_value = "1G")]
    pub max_memory: String,
    #[command(flatten)]
    pub common: Common,
}

/// mm:ss (or h:mm:ss) for progress lines.
fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

pub fn run(a: &CompressArgs) -> Result<()> {
    let target_text = a.target_bpw.clone().unwrap_or_else(|| format!("{}.25", a.bits));
    let (tb, tw) = parse_decimal(&target_text)
        .ok_or_else(|| bad_input!("--target-bpw {target_text}: expected a decimal number such as 5.25"))?;
    let rank = match a.rank.as_str() {
        "auto" => Rank::Auto { bits: tb, weights: tw },
        n => Rank::Fixed(n.parse::<u32>().map_err(|_| bad_input!("--rank {n}: expected auto or a number"))?),
    };
    let propagate = match a.calib_propagate.as_str() {
        "compressed" => Propagate::Compressed,
        "teacher" => Propagate::Teacher,
        p => return Err(bad_input!("--calib-propagate {p}: expected compressed or teacher")),
    };
    let input = match (&a.calib, &a.calib_tokens) {
        (Some(p), _) if p.as_os_str() == "default" => Some(CalibInput::DefaultMix),
        (Some(p), _) => Some(CalibInput::Text(p.clone())),
        (None, Some(p)) => Some(CalibInput::Tokens(p.clone())),
        (None, None) => None,
    };
    let calib = input.map(|input| CalibSpec {
        input,
        windows: a.calib_windows,
        seq_len: a.calib_seq_len,
        skip: a.calib_skip,
        propagate,
    });
    let bit_alloc = match a.bit_alloc.as_str() {
        "mixed" => BitAlloc::Mixed { bits: tb, weights: tw },
        "uniform" => BitAlloc::Uniform,
        b => return Err(bad_input!("--bit-alloc {b}: expected mixed or uniform")),
    };
    let opts = Options {
        bit_alloc,
        bits: a.bits,
        group_size: a.group_size,
        rank,
        out_dtype: parse_out_dtype(&a.out_dtype)?,
        force: a.force,
        calib,
        max_memory: parse_bytes(&a.max_memory)?,
        damp: a.damp,
    };
    let common = &a.common;
    let (info, backend) = device::open(common.device)?;
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    // Layer progress: a bar with the ETA from the time per finished layer on a terminal,
    // one plain line per phase change otherwise.
    let mut last_line = String::new();
    let mut progress = |p: Progress| {
        let el = start.elapsed().as_secs_f64();
        let eta = if p.done > 0 && p.done < p.layers {
            format!(" ETA {}", clock(el / p.done as f64 * (p.layers - p.done) as f64))
        } else {
            String::new()
        };
        if tty {
            let width = 30;
            let fill = (width * p.done).checked_div(p.layers).unwrap_or(width);
            eprint!(
                "\r\x1b[K[{}{}] {}/{} layers  {}  {}{}",
                "#".repeat(fill),
                ".".repeat(width - fill),
                p.done,
                p.layers,
                p.phase,
                clock(el),
                eta
            );
        } else if !common.json {
            let line = format!("layer {}/{}: {}", (p.done + 1).min(p.layers), p.layers, p.phase);
            if line != last_line {
                eprintln!("compressing on {}: {line} ({}{eta})", info.api, clock(el));
                last_line = line;
            }
        }
    };
    let traffic_start = backend.traffic();
    let s = compress(&a.model_dir, &a.output, backend.as_ref(), &opts, &mut progress)?;
    // Host ↔ device traffic of the compression (null where the backend does not count it).
    let traffic = traffic_start.zip(backend.traffic()).map(|(a, b)| b.since(a));
    if tty {
        eprintln!();
    }
    let calibration = s.calibration.as_ref().map(|c| {
        serde_json::json!({
            "input": c.input,
            "input_sha256": c.input_sha256,
            "builtin": c.builtin,
            "windows": c.windows,
            "asked_windows": c.asked_windows,
            "seq_len": c.seq_len,
            "skip": c.skip,
            "tokens": c.tokens,
            "propagate": c.propagate.name(),
            "hidden_cache_bytes": s.calib_cache_bytes,
        })
    });
    let p = &s.phases;
    // The first six partition the run; the `calibrate_*` and `fit_*` entries are parts of
    // `calibrate` and `fit`.
    let phases = serde_json::json!({
        "hash": p.hash, "calibrate": p.calibrate, "quantize": p.quantize,
        "fit": p.fit, "write": p.write, "propagate": p.propagate,
        "calibrate_accumulate": p.calibrate_accumulate, "calibrate_factorize": p.calibrate_factorize,
        "fit_feedback": p.fit_feedback,
    });
    if common.json {
        print_json(&serde_json::json!({
            "pack": s.pack.display().to_string(),
            "pack_digest": s.pack_digest,
            "weights_digest": s.weights_digest,
            "bits_per_weight": { "linears": s.bits_per_weight.linears, "pack": s.bits_per_weight.pack },
            "quantized_tensors": s.quantized,
            "raw_tensors": s.raw,
            "calibrated": s.calibration.is_some(),
            "mixed_bits": s.mixed_bits,
            "linears_per_width": s.widths,
            "calibration": calibration,
            "device": backend.describe(),
            "seconds": s.seconds,
            "phase_seconds": phases,
            "peak_device_bytes": backend.peak_device_bytes(),
            "peak_rss_bytes": crate::forward::job::peak_rss_bytes(),
            "traffic": traffic,
        }));
        return Ok(());
    }
    println!("pack:            {}", s.pack.display());
    println!("pack digest:     sha256:{}", s.pack_digest);
    println!("weights digest:  sha256:{}", s.weights_digest);
    println!(
        "bits per weight: {:.4} over the quantized linears, {:.4} over the whole pack",
        s.bits_per_weight.linears.value(),
        s.bits_per_weight.pack.value()
    );
    match &s.calibration {
        None => println!("tensors:         {} quantized, {} raw; uncalibrated (no --calib)", s.quantized, s.raw),
        Some(c) => {
            println!("tensors:         {} quantized, {} raw; calibrated", s.quantized, s.raw);
            let short = if c.windows < c.asked_windows {
                format!(" (asked for {}; the text holds only {} after the skip)", c.asked_windows, c.windows)
            } else {
                String::new()
            };
            let what = c.builtin.map_or(c.input.to_string(), |b| format!("{} {b}", c.input));
            println!(
                "calibration:     {} windows × {} tokens from token {}{short}; {what} sha256:{}; {} states propagated",
                c.windows,
                c.seq_len,
                c.skip,
                c.input_sha256,
                c.propagate.name()
            );
        }
    }
    let widths: Vec<String> = s.widths.iter().map(|(b, n)| format!("{n} × {b} bits")).collect();
    let how = if s.mixed_bits {
        "allocated per linear within --target-bpw".to_string()
    } else if matches!(opts.bit_alloc, BitAlloc::Mixed { .. }) {
        "one width (mixed widths need calibration)".to_string()
    } else {
        "one width".to_string()
    };
    println!("code widths:     {} ({how})", widths.join(", "));
    println!(
        "time:            {:.2} s (hash {:.1}, calibrate {:.1} [accumulate {:.1}, factorize {:.1}], quantize {:.1}, fit {:.1} [feedback {:.1}], write {:.1}, propagate {:.1})",
        s.seconds,
        p.hash,
        p.calibrate,
        p.calibrate_accumulate,
        p.calibrate_factorize,
        p.quantize,
        p.fit,
        p.fit_feedback,
        p.write,
        p.propagate
    );
    println!("device:          {}", backend.describe());
    Ok(())
}

/// "5.25" → (525, 100): a decimal as an exact ratio of integers (no floats reach the
/// manifest).
fn parse_decimal(s: &str) -> Option<(u64, u64)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || frac.len() > 6 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let weights = 10u64.pow(frac.len() as u32);
    let bits = format!("{int}{frac}").parse::<u64>().ok()?;
    (bits > 0 && bits / weights < 64).then_some((bits, weights))
}
