//! Times forward and forward+backward of a preset, per op family where it matters:
//! `cargo run --release -p unet-models --example step_bench -- unet-16 128 8`
use std::time::Instant;

use unet_models::candle_core::{Device, Tensor};
use unet_models::{UNet, UNetConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map(String::as_str).unwrap_or("unet-16");
    let size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let runs = 5;
    let cfg = UNetConfig::preset(preset)?;
    let model = UNet::new(&cfg, &Device::Cpu, 0)?;
    let x = Tensor::rand(0f32, 1., (batch, cfg.in_channels, size, size), &Device::Cpu)?;
    let mut fwd = Vec::new();
    let mut step = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let _ = model.forward(&x)?;
        fwd.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let y = model.forward_t(&x, true)?;
        let loss = y.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let _ = grads.get(model.trainable_vars()[0].1.as_tensor());
        step.push(t.elapsed().as_secs_f64());
    }
    fwd.sort_by(f64::total_cmp);
    step.sort_by(f64::total_cmp);
    println!(
        "{preset} {size}x{size} batch {batch}: eval forward {:.1} ms, train forward+backward {:.1} ms ({:.1} img/s), threads {}",
        fwd[runs / 2] * 1e3,
        step[runs / 2] * 1e3,
        batch as f64 / step[runs / 2],
        unet_models::candle_core::utils::get_num_threads()
    );
    Ok(())
}
