//! Forward and backward time of single 3x3 convolutions, the shapes of the
//! `unet` preset (base 64) at 256x256, batch 1: where a training step's time
//! goes, layer by layer. `ci/bench_torch_step.py --conv-layers` prints the same
//! table for PyTorch.
//!
//! Each is also given in GFLOP/s and as a fraction of this machine's f32 FMA
//! peak (`unet-kernels`' probe, widest instruction set, RAYON_NUM_THREADS
//! threads); the backward pass counts two products (input and weight
//! gradients). `--no-default-features` runs gemm's AVX2 kernels on an
//! AVX-512 CPU, the other path.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p unet-models --example conv_layers`
use std::time::{Duration, Instant};

use unet_kernels::{measure, Isa};
use unet_models::candle_core::{Device, Tensor, Var};

/// (input channels, output channels, side) of the preset's convolutions.
const LAYERS: [(usize, usize, usize); 7] = [
    (3, 64, 256),
    (64, 64, 256),
    (128, 64, 256),
    (128, 128, 128),
    (256, 256, 64),
    (512, 512, 32),
    (1024, 512, 32),
];
const RUNS: usize = 9;

/// The heap policy of `unet-train` (`unet_trainer::allocator`): freed blocks
/// stay in the process, so the large scratch buffers are not faulted in from
/// the kernel again at every call, as they are not in a training step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // gemm's AVX-512 kernels exist only in a build with the `avx512` feature.
    let isa = Isa::widest_built();
    let peak = isa.and_then(|isa| measure(isa, threads, Duration::from_secs(1)));
    if let Some(p) = peak {
        println!(
            "FMA peak, {} on {threads} thread(s): {:.1} GFLOP/s",
            p.isa.name(),
            p.gflops
        );
    }
    let rate = |flops: f64, ms: f64| {
        let gflops = flops / ms / 1e6;
        match peak {
            Some(p) => format!("{gflops:>6.0} {:>4.0}%", 100.0 * gflops / p.gflops),
            None => format!("{gflops:>6.0}"),
        }
    };
    println!("conv 3x3            forward ms  backward ms   fwd GFLOP/s peak   bwd GFLOP/s peak");
    for (cin, cout, side) in LAYERS {
        let x = Var::from_tensor(&Tensor::rand(0f32, 1., (1, cin, side, side), &Device::Cpu)?)?;
        let w = Var::from_tensor(&Tensor::rand(0f32, 1., (cout, cin, 3, 3), &Device::Cpu)?)?;
        let (mut forward, mut backward) = (Vec::new(), Vec::new());
        // One warm-up run, then RUNS timed ones.
        for run in 0..=RUNS {
            let t = Instant::now();
            let y = unet_models::layers::conv2d(x.as_tensor(), w.as_tensor(), None, 1)?;
            let f = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let grads = y.sum_all()?.backward()?;
            let b = t.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(grads.get(w.as_tensor()).is_some(), "no weight gradient");
            if run > 0 {
                forward.push(f);
                backward.push(b);
            }
        }
        let (forward, backward) = (median(forward), median(backward));
        let flops = 2.0 * (cin * cout * 9 * side * side) as f64;
        println!(
            "{:<20} {:>10.1} {:>12.1} {:>18} {:>18}",
            format!("{cin}->{cout} {side}x{side}"),
            forward,
            backward,
            rate(flops, forward),
            rate(2.0 * flops, backward)
        );
    }
    Ok(())
}
