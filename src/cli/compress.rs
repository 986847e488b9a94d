use std::io::IsTerminal;
use std::path::Path;

use super::{Common, print_json};
use crate::backend::device;
use crate::compress::{Options, Rank, compress};
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

#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Path,
    out: &Path,
    bits: u32,
    group_size: u32,
    rank: &str,
    target_bpw: &str,
    out_dtype: &str,
    force: bool,
    common: &Common,
) -> Result<()> {
    let rank = match rank {
        "auto" => {
            let (bits, weights) = parse_decimal(target_bpw)
                .ok_or_else(|| bad_input!("--target-bpw {target_bpw}: expected a decimal number such as 5.25"))?;
            Rank::Auto { bits, weights }
        }
        n => Rank::Fixed(n.parse::<u32>().map_err(|_| bad_input!("--rank {n}: expected auto or a number"))?),
    };
    let opts = Options { bits, group_size, rank, out_dtype: parse_out_dtype(out_dtype)?, force };
    let (info, backend) = device::open(common.device)?;
    let tty = std::io::stderr().is_terminal();
    let mut progress = |msg: &str| {
        if tty {
            eprint!("\r\x1b[Kcompressing on {}: {msg}", info.api);
        } else if !common.json {
            eprintln!("compressing on {}: {msg}", info.api);
        }
    };
    let s = compress(model, out, backend.as_ref(), &opts, &mut progress)?;
    if tty {
        eprintln!();
    }
    if common.json {
        print_json(&serde_json::json!({
            "pack": s.pack.display().to_string(),
            "pack_digest": s.pack_digest,
            "weights_digest": s.weights_digest,
            "bits_per_weight": { "linears": s.bits_per_weight.linears, "pack": s.bits_per_weight.pack },
            "quantized_tensors": s.quantized,
            "raw_tensors": s.raw,
            "calibrated": false,
            "device": backend.describe(),
            "seconds": s.seconds,
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
    println!("tensors:         {} quantized, {} raw; uncalibrated (no --calib)", s.quantized, s.raw);
    println!("device:          {}; {:.2} s", backend.describe(), s.seconds);
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
