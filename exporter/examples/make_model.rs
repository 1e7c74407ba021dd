//! Writes a randomly initialised model of a preset, with BatchNorm running
//! statistics moved away from 0/1 by two training-mode forwards, so exports of
//! it exercise every weight. Used by the export benchmark and for trying the CLI.
//!
//! `cargo run --release -p unet-exporter --example make_model -- unet /tmp/unet.safetensors`

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use unet_models::candle_core::{Device, Tensor};
use unet_models::{Preprocessing, UNet, UNetConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let preset = args
        .next()
        .context("usage: make_model PRESET OUT.safetensors")?;
    let out = PathBuf::from(
        args.next()
            .context("usage: make_model PRESET OUT.safetensors")?,
    );
    let cfg = UNetConfig::preset(&preset)?;
    let device = Device::Cpu;
    let model = UNet::new(&cfg, &device, 7)?;
    let graph = model.graph();
    let size = match graph.nearest_sizes(1).1 {
        Some(s) if cfg.padding == unet_models::Padding::Valid => s,
        _ => cfg.size_multiple() * 2,
    };
    for seed in 0..2u64 {
        let x = Tensor::randn(
            0.5f32 + seed as f32,
            1.0,
            (2, cfg.in_channels, size, size),
            &device,
        )?;
        model.forward_t(&x, true)?;
    }
    unet_models::io::save(
        &model,
        &Preprocessing::default_for(&cfg),
        &HashMap::new(),
        &out,
    )?;
    println!(
        "wrote {} ({} parameters)",
        out.display(),
        model.num_parameters()
    );
    Ok(())
}
