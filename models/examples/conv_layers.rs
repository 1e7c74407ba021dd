//! Forward and backward time of single 3x3 convolutions, the shapes of the
//! `unet` preset (base 64) at 256x256, batch 1: where a training step's time
//! goes, layer by layer. `ci/bench_torch_step.py --conv-layers` prints the same
//! table for PyTorch.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p unet-models --example conv_layers`
use std::time::Instant;

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    println!("conv 3x3            forward ms  backward ms");
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
        println!(
            "{:<20} {:>10.1} {:>12.1}",
            format!("{cin}->{cout} {side}x{side}"),
            median(forward),
            median(backward)
        );
    }
    Ok(())
}
