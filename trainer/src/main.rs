use std::process::ExitCode;

use clap::Parser;
use unet_trainer::cli::{init_logging, run, Cli};

fn main() -> ExitCode {
    unet_trainer::allocator::keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.train.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
