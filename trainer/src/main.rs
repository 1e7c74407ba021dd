use std::process::ExitCode;

use clap::Parser;
use unet_trainer::cli::{run, Cli};

fn main() -> ExitCode {
    unet_trainer::allocator::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
