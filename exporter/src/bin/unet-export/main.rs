//! `unet-export`: a self-describing safetensors U-Net (or a PyTorch
//! checkpoint) in, a checked ONNX graph out.
//!
//! Exit status: 0 success (and `--help`, `--version`), 1 a usage or input
//! error, 2 a parity check that failed. clap's own usage errors would exit 2,
//! which reads as drift in CI, so parsing goes through `try_parse`.

mod args;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use args::Cli;

/// A usage or input error.
const EXIT_ERROR: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout and are a success; the rest are usage errors.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // RUST_LOG=info|debug for detail; --quiet keeps warnings out too.
    let level = if cli.quiet { "error" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
