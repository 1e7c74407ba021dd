//! Integration tests of the trainer, one test binary: the pipeline end to end
//! ([`pipeline`]) and runs under misuse, faults and budgets ([`runs`]).

mod pipeline;
mod runs;

use std::sync::Arc;

use unet_models::{Padding, UNetConfig, Upsampling};
use unet_trainer::data::Source;
use unet_trainer::synth::demo_source;
use unet_trainer::train::TrainOptions;

pub fn tiny(attention: bool, dropout: f32) -> UNetConfig {
    UNetConfig {
        in_channels: 3,
        out_channels: 1,
        base_width: 4,
        depth: 2,
        padding: Padding::Same,
        batch_norm: true,
        upsampling: Upsampling::Transposed,
        dropout,
        attention,
    }
}

pub fn tiny_options(epochs: usize) -> TrainOptions {
    let mut o = TrainOptions::defaults_for(tiny(false, 0.0));
    o.epochs = epochs;
    o.batch_size = 4;
    o.width = 32;
    o.height = 32;
    o.lr = 1e-2;
    o.schedule.warmup_steps = 0;
    o.val_split = 0.2;
    o.workers = 2;
    o.preview_count = 2;
    o
}

pub fn demo(count: usize) -> Arc<dyn Source> {
    Arc::new(demo_source(count, 32, 7))
}
