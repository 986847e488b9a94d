//! Argument parsing and printing only; the work lives in the library modules.

mod compress;
mod devices;
mod eval;
mod export;
mod hash;
mod info;
mod verify;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

use crate::backend::DeviceSpec;
use crate::error::Result;

#[derive(Parser)]
#[command(name = "ucw", version, about = "Bit-exact ~5-bit compression of transformer language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(Args, Clone)]
pub struct Common {
    /// auto | cpu | vulkan | metal | dx12 | gl | N (index from `ucw devices`)
    #[arg(long, global = true, default_value = "auto")]
    pub device: DeviceSpec,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List every backend usable here: cpu, then hardware adapters, then software ones.
    Devices {
        #[command(flatten)]
        common: Common,
    },
    /// Tensor digests and weights digest of any safetensors model directory.
    Hash {
        model_dir: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Compress a model directory into a pack.
    Compress(compress::CompressArgs),
    /// Check a pack's files, then rebuild every tensor and compare with the manifest.
    Verify(verify::VerifyArgs),
    /// Write a Hugging Face model directory of a pack's reconstructed weights.
    Export {
        pack: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Perplexity of a model directory or pack with the integer forward pass.
    Eval {
        /// A Hugging Face model directory or a pack.
        model: PathBuf,
        /// Evaluation text (UTF-8), tokenized with the model's tokenizer.json, no BOS.
        #[arg(long)]
        text: Option<PathBuf>,
        /// Token ids instead of text: a file of little-endian u32.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Tokens per window.
        #[arg(long, default_value_t = 1024)]
        seq_len: usize,
        /// Number of non-overlapping windows from the start of the text.
        #[arg(long, default_value_t = 30)]
        windows: usize,
        /// all | second-half (llama-perplexity's scoring)
        #[arg(long, default_value = "all")]
        score: String,
        /// Also evaluate this model directory (or pack) on the same windows; report the ratio.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Allow --seq-len beyond max_position_embeddings.
        #[arg(long)]
        force: bool,
        /// Bound on the buffers of one kernel call (e.g. 256M, 2G).
        #[arg(long, default_value = "1G")]
        max_memory: String,
        /// Write the JSON report here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// What a pack or model directory holds: architecture, tensors, sizes, digests.
    Info {
        path: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

/// Run the CLI; returns the process exit code (DESIGN §6).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result: Result<()> = match cli.command {
        Command::Devices { common } => devices::run(&common),
        Command::Hash { model_dir, common } => hash::run(&model_dir, &common),
        Command::Info { path, common } => info::run(&path, &common),
        Command::Compress(args) => compress::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Export { pack, output, force, common } => export::run(&pack, &output, force, &common),
        Command::Eval { model, text, tokens, seq_len, windows, score, baseline, force, max_memory, output, common } => {
            eval::run(&model, text, tokens, seq_len, windows, &score, baseline, force, &max_memory, output, &common)
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ucw: error: {e}");
            e.exit_code()
        }
    }
}

/// Print a serialisable value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON of a plain value"));
}

/// Write `value` as pretty JSON to a temporary file beside `path`, flush it to disk, then
/// rename it: `path` is either absent, the old file, or the whole new one.
pub(crate) fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let body = serde_json::to_string_pretty(value).expect("JSON of a plain value") + "\n";
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(body.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(crate::error::Error::io(path, "cannot write", e));
    }
    Ok(())
}

/// Commands that read a pack refuse one whose files, or whose manifest's claims about
/// them, fail their checks (DESIGN §6).
pub(crate) fn check_pack_files(pack: &crate::pack::Pack) -> Result<()> {
    let problems = pack.check()?;
    if let Some(p) = problems.first() {
        return Err(crate::error::Error::verify_fail(format!(
            "{}: file {}: {} ({} problem(s); run `ucw verify`)",
            pack.dir.display(),
            p.file,
            p.problem,
            problems.len()
        )));
    }
    Ok(())
}
