//! `unet-train`: a candle training pipeline for U-Net / Attention U-Net
//! segmentation.
//!
//! - [`options`]: what defines a run, its defaults and checks.
//! - [`data`]: Kvasir-SEG, Carvana and generic folders; [`synth`]: bundled synthetic data.
//! - [`augment`] and [`loader`]: augmentation on worker threads with bounded prefetch.
//! - [`loss`], [`metrics`], [`optim`], [`schedule`]: the training maths.
//! - [`amp`]: mixed precision (bf16/f16) and f16 loss scaling.
//! - [`train`]: set-up, the step, the epoch loop, time budgets; [`checkpoint`]: resumable state.
//! - [`report`] and [`plot`]: metrics files and pictures; [`files`]: atomic writes.
//! - [`allocator`]: keeps freed memory for the next step (glibc).

pub mod allocator;
pub mod amp;
pub mod augment;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod files;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod options;
pub mod plot;
pub mod provenance;
pub mod report;
pub mod schedule;
pub mod synth;
pub mod train;

pub use error::{Result, TrainError};
