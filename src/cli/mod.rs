//! Argument parsing and printing only; the work lives in the library modules.

mod devices;
mod hash;
mod info;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    /// What a model directory holds: architecture, tensors, dtypes, sizes.
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
