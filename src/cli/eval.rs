use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Common, print_json, write_json_atomic};
use crate::backend::device;
use crate::error::Result;
use crate::forward::Score;
use crate::forward::job::{EvalJob, EvalReport, Input, run as run_job};

/// "512M", "2G", "1048576" → bytes (binary units).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| bad_input!("--max-memory {s}: expected a size such as 512M, 2G or a number of bytes"))
}

pub fn parse_score(s: &str) -> Result<Score> {
    match s {
        "all" => Ok(Score::All),
        "second-half" => Ok(Score::SecondHalf),
        _ => Err(bad_input!("--score {s}: expected all or second-half")),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Path,
    text: Option<PathBuf>,
    tokens: Option<PathBuf>,
    seq_len: usize,
    windows: usize,
    score: &str,
    baseline: Option<PathBuf>,
    force: bool,
    max_memory: &str,
    output: Option<PathBuf>,
    common: &Common,
) -> Result<()> {
    let input = match (text, tokens) {
        (Some(t), None) => Input::Text(t),
        (None, Some(t)) => Input::Tokens(t),
        (None, None) => {
            return Err(bad_input!("give the evaluation text with --text FILE (or ids with --tokens FILE)"));
        }
        (Some(_), Some(_)) => return Err(bad_input!("--text and --tokens exclude each other")),
    };
    let job = EvalJob {
        model: model.to_path_buf(),
        input,
        seq_len,
        windows,
        score: parse_score(score)?,
        baseline,
        force,
        max_memory: parse_bytes(max_memory)?,
    };
    let (info, backend) = device::open(common.device)?;
    let label = format!("{}#{}: {}", info.api, info.index, backend.describe());
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut progress = |which: usize, done: usize, total: usize| {
        let what = if which == 0 { "model" } else { "baseline" };
        let el = t0.elapsed().as_secs_f64();
        if tty {
            eprint!("\r\x1b[Kevaluating {what} on {}: layer {done}/{total} ({el:.0} s)", info.api);
        } else if !common.json && output.is_none() {
            eprintln!("evaluating {what} on {}: layer {done}/{total} ({el:.1} s)", info.api);
        }
    };
    let report = run_job(&job, backend.as_ref(), &label, &mut progress)?;
    if tty {
        eprintln!();
    }
    if let Some(out) = &output {
        write_json_atomic(out, &report)?;
    }
    if common.json {
        print_json(&report);
    } else {
        print_human(&report);
    }
    Ok(())
}

fn print_human(r: &EvalReport) {
    println!("perplexity      {:.4}  (bits {})", r.ppl, r.ppl_bits);
    println!("NLL             {} Q30 = {:.6} nats over {} predictions", r.nll_q30, r.nll_nats, r.predictions);
    println!("windows         {} × {} tokens, score {}", r.windows, r.seq_len, r.score);
    if let Some(b) = &r.baseline {
        println!("baseline        {:.4}  (bits {})  {}", b.ppl, b.ppl_bits, b.path);
        println!("ppl ratio       {:.5}", r.ppl_ratio.unwrap_or(f64::NAN));
    }
    if let Some(u) = &r.ppl_ratio_uncertainty {
        let pm = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("± {e:.5}"));
        println!(
            "ratio error     {} per prediction, {} between windows (standard errors)",
            pm(u.ppl_ratio_stderr),
            pm(u.ppl_ratio_stderr_windows)
        );
    }
    if let Some(d) = &r.divergence {
        println!(
            "KL divergence   mean {:.6} ± {:.6}  median {:.6}  p99 {:.6}  max {:.6} nats (baseline ‖ model)",
            d.kld_mean,
            d.kld_mean_stderr.unwrap_or(0.0),
            d.kld_median,
            d.kld_p99,
            d.kld_max
        );
        println!("top-1 agreement {:.4}% ({} of {})", 100.0 * d.top1_fraction, d.top1_agree, d.predictions);
    }
    println!("weights digest  {}", r.weights_digest);
    if let Some(p) = &r.pack_digest {
        println!("pack digest     sha256:{p}");
    }
    if let Some(t) = &r.text_sha256 {
        println!("text sha256     {t}");
    }
    println!("device          {}", r.device);
    println!(
        "speed           {:.1} tokens/s (forward {:.2} s; {:.2} s in all)",
        r.tokens_per_s, r.model.forward_seconds, r.seconds
    );
    if let Some(p) = r.peak_device_bytes {
        println!("peak device     {:.1} MiB", p as f64 / (1 << 20) as f64);
    }
    if let Some(p) = r.peak_rss_bytes {
        println!("peak RSS        {:.1} MiB", p as f64 / (1 << 20) as f64);
    }
    if let Some(t) = &r.traffic {
        println!(
            "traffic         {} submissions, {:.1} MiB up, {:.1} MiB back ({:.0} / {:.0} bytes per token)",
            t.submissions,
            t.uploaded_bytes as f64 / (1 << 20) as f64,
            t.readback_bytes as f64 / (1 << 20) as f64,
            t.uploaded_bytes_per_token,
            t.readback_bytes_per_token
        );
        println!(
            "layer traffic   {:.1} submissions per layer and window group; {:.0} / {:.0} bytes per token and layer",
            t.layers.submissions_per_layer_group,
            t.layers.uploaded_bytes_per_token_layer,
            t.layers.readback_bytes_per_token_layer
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}
