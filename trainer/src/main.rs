use std::process::ExitCode;

use clap::Parser;
use unet_trainer::cli::{init_logging, run, Cli};

fn main() -> ExitCode {
    unet_trainer::allocator::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; usage errors exit 1
        // (not clap's 2, which this project keeps for parity drift).
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.train.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
