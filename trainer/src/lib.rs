//! `unet-train`: a candle training pipeline for U-Net / Attention U-Net
//! segmentation.
//!
//! - [`data`]: Kvasir-SEG, Carvana and generic folders; [`synth`]: bundled synthetic data.
//! - [`augment`] and [`loader`]: augmentation on worker threads with bounded prefetch.
//! - [`loss`], [`metrics`], [`optim`], [`schedule`]: the training maths.
//! - [`amp`]: mixed precision (bf16/f16) and f16 loss scaling.
//! - [`train`]: the loop; [`checkpoint`]: resumable state; [`report`]: logs and pictures.
//! - [`allocator`]: keeps freed memory for the next step (glibc).

pub mod allocator;
pub mod amp;
pub mod augment;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod provenance;
pub mod report;
pub mod schedule;
pub mod synth;
pub mod train;

pub use error::{Result, TrainError};
