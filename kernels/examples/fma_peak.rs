//! Prints this CPU's f32 FMA peak per instruction set and thread count.
//!
//! `cargo run --release -p unet-kernels --example fma_peak [-- THREADS [SECONDS]]`
use std::time::Duration;

use unet_kernels::{measure, Isa};

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    for isa in Isa::available() {
        for t in [1, threads] {
            if let Some(p) = measure(isa, t, Duration::from_secs_f64(seconds)) {
                println!("{:<7} {t} thread(s): {:7.1} GFLOP/s", isa.name(), p.gflops);
            }
            if threads == 1 {
                break;
            }
        }
    }
}
