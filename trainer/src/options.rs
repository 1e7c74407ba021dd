//! What defines a training run ([`TrainOptions`]), its defaults (one source,
//! read by the library and by the command line) and the checks that refuse
//! options that cannot train.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use unet_models::UNetConfig;

use crate::amp::Precision;
use crate::augment::AugmentConfig;
use crate::error::{Result, TrainError};
use crate::loss::{LossKind, LossParams};
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::schedule::{ScheduleConfig, SchedulerKind};

/// Default values; `unet-train`'s flags read these, so library and CLI agree.
pub mod defaults {
    /// Epochs for the bundled synthetic data (`--demo`).
    pub const DEMO_EPOCHS: usize = 3;
    /// Epochs for a data set on disk (and the library's default).
    pub const EPOCHS: usize = 40;
    pub const BATCH_SIZE: usize = 4;
    pub const ACCUMULATE: usize = 1;
    pub const LR: f64 = 3e-3;
    pub const MOMENTUM: f64 = 0.99;
    pub const WEIGHT_DECAY: f64 = 1e-4;
    pub const MIN_LR: f64 = 1e-5;
    pub const WARMUP_STEPS: u64 = 20;
    pub const STEP_EPOCHS: u64 = 10;
    pub const GAMMA: f64 = 0.1;
    pub const RESTART_EPOCHS: f64 = 4.0;
    pub const RESTART_MULT: f64 = 2.0;
    /// Square side of the network input.
    pub const IMAGE_SIZE: usize = 128;
    pub const VAL_SPLIT: f64 = 0.1;
    pub const SEED: u64 = 42;
    pub const THRESHOLD: f32 = 0.5;
    pub const WORKERS: usize = 1;
    pub const PREFETCH: usize = 2;
    pub const PREVIEW_COUNT: usize = 6;
}

/// Largest network input accepted, in pixels per image (4096 x 4096); one
/// 16-channel activation of one such image is already 1 GiB.
pub const MAX_PIXELS: usize = 4096 * 4096;

/// How input pixels are normalised before the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// Mean and std measured on (up to 64) training images.
    Dataset,
    /// ImageNet statistics (3 channels) or 0.5/0.5.
    Imagenet,
    /// These values.
    Explicit { mean: Vec<f32>, std: Vec<f32> },
}

/// Everything that defines a run. Serialised into checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub model: UNetConfig,
    /// Epochs to run; with `time_budget`, only the first plan (the budget decides).
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before one optimiser step.
    pub accumulate: usize,
    #[serde(default)]
    pub precision: Precision,
    pub lr: f64,
    pub optimizer: OptimizerConfig,
    pub loss: LossKind,
    pub loss_params: LossParams,
    /// Scheduler kind and its parameters.
    pub schedule: ScheduleConfig,
    /// Global gradient-norm clipping.
    pub clip_grad_norm: Option<f64>,
    pub width: usize,
    pub height: usize,
    pub val_split: f64,
    pub seed: u64,
    pub workers: usize,
    pub prefetch: usize,
    /// `None` disables augmentation.
    pub augment: Option<AugmentConfig>,
    pub normalization: Normalization,
    pub threshold: f32,
    pub class_names: Vec<String>,
    /// Extra checkpoint every this many optimiser steps (besides every epoch end).
    pub save_every_steps: Option<u64>,
    /// Stop (after checkpointing) once this many optimiser steps ran in this
    /// call, counted from the resume point when resuming.
    pub stop_after_steps: Option<u64>,
    /// Wall-clock budget of the run: the schedule is planned to end, and
    /// training stops, when it is spent (`epochs` is then only a first plan).
    #[serde(default)]
    pub time_budget: Option<Duration>,
    /// Validation samples drawn in `val_preview.png`.
    pub preview_count: usize,
}

impl TrainOptions {
    /// The defaults (those of `unet-train`) for `model`.
    pub fn defaults_for(model: UNetConfig) -> Self {
        use defaults as d;
        TrainOptions {
            model,
            epochs: d::EPOCHS,
            batch_size: d::BATCH_SIZE,
            accumulate: d::ACCUMULATE,
            precision: Precision::F32,
            lr: d::LR,
            optimizer: OptimizerConfig {
                kind: OptimizerKind::Adamw,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: d::WEIGHT_DECAY,
                momentum: d::MOMENTUM,
            },
            loss: LossKind::BceDice,
            loss_params: LossParams::default(),
            schedule: ScheduleConfig {
                kind: SchedulerKind::Cosine,
                min_lr: d::MIN_LR,
                warmup_steps: d::WARMUP_STEPS,
                step_epochs: d::STEP_EPOCHS,
                gamma: d::GAMMA,
                restart_epochs: d::RESTART_EPOCHS,
                restart_mult: d::RESTART_MULT,
            },
            clip_grad_norm: None,
            width: d::IMAGE_SIZE,
            height: d::IMAGE_SIZE,
            val_split: d::VAL_SPLIT,
            seed: d::SEED,
            workers: d::WORKERS,
            prefetch: d::PREFETCH,
            augment: Some(AugmentConfig::default()),
            normalization: Normalization::Dataset,
            threshold: d::THRESHOLD,
            class_names: Vec::new(),
            save_every_steps: None,
            stop_after_steps: None,
            time_budget: None,
            preview_count: d::PREVIEW_COUNT,
        }
    }

    /// Refuses options that cannot train or would train to nothing.
    pub fn validate(&self) -> Result<()> {
        self.loss.check(self.model.out_channels)?;
        if self.width == 0 || self.height == 0 {
            return Err(TrainError::option(
                "--image-size",
                format!("{}x{} has no pixels", self.width, self.height),
            ));
        }
        if self.width.saturating_mul(self.height) > MAX_PIXELS {
            return Err(TrainError::option(
                "--image-size",
                format!(
                    "{}x{} is over the limit of {MAX_PIXELS} pixels (4096x4096) per image",
                    self.width, self.height
                ),
            ));
        }
        let m = self.model.size_multiple();
        if self.model.padding == unet_models::Padding::Same
            && (!self.width.is_multiple_of(m) || !self.height.is_multiple_of(m))
        {
            return Err(TrainError::option(
                "--image-size",
                format!(
                    "{}x{} is not a multiple of {m} (2^depth) in both sides",
                    self.width, self.height
                ),
            ));
        }
        if self.batch_size == 0 || self.epochs == 0 || self.accumulate == 0 {
            return Err(TrainError::option(
                "--batch-size/--epochs/--accumulate",
                "must be at least 1",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::option(
                "--lr",
                format!("{} is not a positive learning rate", self.lr),
            ));
        }
        let min_lr = self.schedule.min_lr;
        if !(min_lr.is_finite() && (0.0..=self.lr).contains(&min_lr)) {
            return Err(TrainError::option(
                "--min-lr",
                format!("{min_lr} is not in [0, --lr = {}]", self.lr),
            ));
        }
        if self
            .clip_grad_norm
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            return Err(TrainError::option("--clip-grad", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.val_split) {
            return Err(TrainError::option("--val-split", "must be in [0, 1)"));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(TrainError::option(
                "--threshold",
                format!("{} is not a probability in (0, 1)", self.threshold),
            ));
        }
        if self.stop_after_steps == Some(0) {
            return Err(TrainError::option(
                "--stop-after-steps",
                "must be at least 1",
            ));
        }
        if self.time_budget.is_some_and(|t| t.is_zero()) {
            return Err(TrainError::option("--time", "must be more than 0 s"));
        }
        Ok(())
    }
}
