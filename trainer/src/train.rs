//! The training loop: data split, loader, forward/backward, optimiser and
//! schedule, validation, checkpoints and reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use unet_models::candle_core::{Device, Tensor};
use unet_models::{Preprocessing, UNet, UNetConfig};

use crate::amp::{self, Precision};
use crate::augment::AugmentConfig;
use crate::checkpoint::{self, TrainState};
use crate::data::{channel_stats, Source};
use unet_spec::keys;
use crate::error::{Result, TrainError};
use crate::loader::{epoch_order, Batch, EpochLoader, LoaderConfig};
use crate::loss::{LossKind, LossParams};
use crate::metrics::{MetricAccumulator, Metrics};
use crate::optim::{clip_grad_norm, Optimizer, OptimizerConfig};
use crate::report::{self, EpochRecord, PreviewSample};
use crate::schedule::{Schedule, SchedulerKind};

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
    pub scheduler: SchedulerKind,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub step_epochs: u64,
    pub gamma: f64,
    pub restart_epochs: f64,
    pub restart_mult: f64,
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
    /// Stop (after checkpointing) at this optimiser step, as if killed; for tests and time boxes.
    pub stop_after_steps: Option<u64>,
    /// Validation samples drawn in `val_preview.png`.
    pub preview_count: usize,
}

impl TrainOptions {
    /// Defaults that train a good binary model on the bundled synthetic data.
    pub fn defaults_for(model: UNetConfig) -> Self {
        TrainOptions {
            model,
            epochs: 10,
            batch_size: 4,
            accumulate: 1,
            precision: Precision::F32,
            lr: 2e-3,
            optimizer: OptimizerConfig {
                kind: crate::optim::OptimizerKind::Adamw,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-4,
                momentum: 0.99,
            },
            loss: LossKind::BceDice,
            loss_params: LossParams::default(),
            scheduler: SchedulerKind::Cosine,
            min_lr: 1e-5,
            warmup_steps: 0,
            step_epochs: 10,
            gamma: 0.1,
            restart_epochs: 5.0,
            restart_mult: 2.0,
            clip_grad_norm: None,
            width: 128,
            height: 128,
            val_split: 0.1,
            seed: 42,
            workers: 1,
            prefetch: 2,
            augment: Some(AugmentConfig::default()),
            normalization: Normalization::Dataset,
            threshold: 0.5,
            class_names: Vec::new(),
            save_every_steps: None,
            stop_after_steps: None,
            preview_count: 6,
        }
    }

    fn validate(&self) -> Result<()> {
        self.loss.check(self.model.out_channels)?;
        let m = self.model.size_multiple();
        if self.model.padding == unet_models::Padding::Same
            && (self.width % m != 0 || self.height % m != 0)
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
        if !(0.0..1.0).contains(&self.val_split) {
            return Err(TrainError::option("--val-split", "must be in [0, 1)"));
        }
        Ok(())
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Summary {
    pub history: Vec<EpochRecord>,
    /// Training loss of every micro-batch run in this process, in order.
    pub step_losses: Vec<f32>,
    pub best_dice: f64,
    /// Whether the run stopped at `stop_after_steps` before its last epoch.
    pub interrupted: bool,
    pub out_dir: PathBuf,
    pub train_samples: usize,
    pub val_samples: usize,
}

/// Output file names inside `--out`.
pub const BEST_FILE: &str = "best.safetensors";
pub const LAST_FILE: &str = "last.safetensors";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "curves.png";
pub const PREVIEW_FILE: &str = "val_preview.png";

/// Splits `0..n` into (train, val) indices, reproducibly for `seed`.
pub fn split(n: usize, val_split: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let all: Vec<usize> = (0..n).collect();
    let order = epoch_order(&all, seed ^ 0x5B11_7000, u64::MAX);
    let n_val = ((n as f64 * val_split).round() as usize).max(usize::from(val_split > 0.0));
    if n_val >= n {
        return Err(TrainError::TooFewSamples {
            reason: format!("{n} sample(s) leave none for training with --val-split {val_split}"),
        });
    }
    let mut val = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// Binary target `[N, 1, H, W]` (0/1) or one-hot `[N, C, H, W]`.
fn target(batch: &Batch, classes: usize, device: &Device) -> Result<Tensor> {
    let (n, plane) = (batch.len(), batch.height * batch.width);
    let data: Vec<f32> = if classes == 1 {
        batch.masks.iter().map(|&m| f32::from(m.min(1))).collect()
    } else {
        let mut v = vec![0f32; n * classes * plane];
        for k in 0..n {
            for i in 0..plane {
                let c = batch.masks[k * plane + i] as usize;
                v[(k * classes + c) * plane + i] = 1.0;
            }
        }
        v
    };
    Ok(Tensor::from_vec(
        data,
        (n, classes, batch.height, batch.width),
        device,
    )?)
}

fn input(batch: &Batch, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        batch.images.clone(),
        (batch.len(), batch.channels, batch.height, batch.width),
        device,
    )?)
}

/// Result of one pass over the validation split.
struct Validation {
    loss: f64,
    metrics: Metrics,
    /// Predicted masks of the first samples, for the preview.
    predictions: Vec<Vec<u8>>,
}

fn validate(model: &UNet, batches: &[Batch], opts: &TrainOptions) -> Result<Validation> {
    let classes = opts.model.out_channels;
    let mut acc = MetricAccumulator::new(classes, opts.threshold);
    let (mut loss_sum, mut n) = (0f64, 0usize);
    let mut predictions = Vec::new();
    for batch in batches {
        let device = model.device();
        let logits = model.forward_t(&input(batch, device)?, false)?;
        let loss =
            opts.loss
                .compute(&logits, &target(batch, classes, device)?, &opts.loss_params)?;
        loss_sum += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
        n += batch.len();
        let values = logits.flatten_all()?.to_vec1::<f32>()?;
        let plane = batch.height * batch.width;
        acc.add(&values, &batch.masks, plane);
        for k in 0..batch.len() {
            if predictions.len() < opts.preview_count {
                predictions.push(acc.predict(
                    &values[k * classes * plane..(k + 1) * classes * plane],
                    plane,
                ));
            }
        }
    }
    Ok(Validation {
        loss: loss_sum / n.max(1) as f64,
        metrics: acc.finish(),
        predictions,
    })
}

fn progress_bar(len: usize, pos: usize, epoch: usize, epochs: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template(
        "{prefix:>13} [{bar:28.cyan/blue}] {pos:>4}/{len:4} {msg} [{elapsed_precise} < {eta_precise}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar.set_position(pos as u64);
    bar
}

/// Trains on `source`, writing everything into `out_dir`; continues from
/// `resume` (a `checkpoint.safetensors`) when given.
pub fn run(
    opts: &TrainOptions,
    source: Arc<dyn Source>,
    out_dir: &Path,
    device: &Device,
    resume: Option<&Path>,
    quiet: bool,
) -> Result<Summary> {
    opts.validate()?;
    std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io {
        dir: out_dir.to_path_buf(),
        what: "cannot create the output folder".into(),
        source,
    })?;
    let say = |s: String| {
        if !quiet {
            println!("{s}");
        }
    };
    let classes = opts.model.out_channels;
    let (train_idx, val_idx) = split(source.len(), opts.val_split, opts.seed)?;
    // Geometry and provenance, fixed for the run (the date is its start).
    let contract = crate::provenance::model_metadata(opts, source.as_ref(), &train_idx);

    let options_json = serde_json::to_string(opts).unwrap_or_default();
    let (mut model, preprocessing, mut state, optimizer_state) = match resume {
        Some(path) => {
            let ck = checkpoint::load(path, device)?;
            if ck.loaded.model.config() != &opts.model {
                return Err(TrainError::BadCheckpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it holds a different model ({}) than requested ({})",
                        ck.loaded.model.config().to_json(),
                        opts.model.to_json()
                    ),
                });
            }
            if ck.state.options != options_json {
                say(
                    "note: options differ from the checkpoint's; continuing with the new ones"
                        .into(),
                );
            }
            ck.loaded.model.set_dropout_step(ck.state.dropout_step);
            say(format!(
                "resuming from {} at epoch {}, batch {}, step {}",
                path.display(),
                ck.state.epoch + 1,
                ck.state.batch,
                ck.state.global_step
            ));
            (
                ck.loaded.model,
                ck.loaded.preprocessing,
                ck.state,
                Some(ck.optimizer),
            )
        }
        None => {
            let (mean, std) = match &opts.normalization {
                Normalization::Dataset => {
                    let samples = train_idx
                        .iter()
                        .take(64)
                        .map(|&i| source.get(i))
                        .collect::<Result<Vec<_>>>()?;
                    channel_stats(&samples)
                }
                Normalization::Imagenet => {
                    let d = Preprocessing::default_for(&opts.model);
                    (d.mean, d.std)
                }
                Normalization::Explicit { mean, std } => (mean.clone(), std.clone()),
            };
            if mean.len() != opts.model.in_channels || std.len() != opts.model.in_channels {
                return Err(TrainError::option(
                    "--mean/--std",
                    format!("need {} values each", opts.model.in_channels),
                ));
            }
            let mut pre = Preprocessing::default_for(&opts.model);
            pre.mean = mean;
            pre.std = std;
            pre.threshold = opts.threshold;
            if !opts.class_names.is_empty() {
                pre.class_names = opts.class_names.clone();
            }
            let fresh = UNet::new(&opts.model, device, opts.seed)?;
            let model = checkpoint::reload(&fresh, &pre, device)?;
            let state = TrainState {
                seed: opts.seed,
                epoch: 0,
                batch: 0,
                global_step: 0,
                dropout_step: 0,
                epoch_loss_sum: 0.0,
                epoch_loss_count: 0,
                best_dice: f64::NEG_INFINITY,
                history: Vec::new(),
                options: options_json.clone(),
                loss_scaler: None,
            };
            (model, pre, state, None)
        }
    };
    state.options = options_json;
    let seed = state.seed;
    model.set_compute_dtype(opts.precision.dtype())?;
    // A resumed f16 run keeps its scale; a run whose precision changed starts afresh.
    state.loss_scaler = opts
        .precision
        .loss_scaler()
        .map(|fresh| state.loss_scaler.unwrap_or(fresh));
    if opts.precision != Precision::F32 && device.is_cpu() {
        say(format!(
            "note: {:?} on the CPU adds casts around the f32 kernels and is slower than f32; it is meant for CUDA",
            opts.precision
        ));
    }

    let mut optimizer = Optimizer::new(opts.optimizer.clone(), model.trainable_vars());
    if let Some(tensors) = optimizer_state {
        optimizer.load_state(tensors, state.global_step)?;
    }

    let loader_cfg = Arc::new(LoaderConfig {
        batch_size: opts.batch_size,
        workers: opts.workers,
        prefetch: opts.prefetch,
        width: opts.width,
        height: opts.height,
        seed,
        mean: preprocessing.mean.clone(),
        std: preprocessing.std.clone(),
        augment: opts.augment.clone(),
    });
    let val_cfg = Arc::new(LoaderConfig {
        augment: None,
        ..(*loader_cfg).clone()
    });
    // The validation split is decoded once and kept.
    let val_batches: Vec<Batch> =
        EpochLoader::new(Arc::clone(&source), val_cfg, &val_idx, 0, 0).collect::<Result<_>>()?;

    let batches_per_epoch = train_idx.len().div_ceil(opts.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(opts.accumulate) as u64;
    let schedule = Schedule {
        kind: opts.scheduler,
        base_lr: opts.lr,
        min_lr: opts.min_lr,
        warmup_steps: opts.warmup_steps,
        steps_per_epoch,
        epochs: opts.epochs as u64,
        step_epochs: opts.step_epochs,
        gamma: opts.gamma,
        restart_epochs: opts.restart_epochs,
        restart_mult: opts.restart_mult,
    };
    say(format!(
        "model {} ({} parameters), {} train / {} val samples at {}x{}, batch {} x {} accumulated, {} steps/epoch, {:?} on {:?}",
        if opts.model.attention { "attention-unet" } else { "unet" },
        model.num_parameters(),
        train_idx.len(),
        val_idx.len(),
        opts.width,
        opts.height,
        opts.batch_size,
        opts.accumulate,
        steps_per_epoch,
        opts.optimizer.kind,
        device.location(),
    ));

    let save_checkpoint = |state: &TrainState, optimizer: &Optimizer| -> Result<()> {
        checkpoint::save(
            &out_dir.join(CHECKPOINT_FILE),
            &model,
            &preprocessing,
            optimizer.state_tensors(),
            state,
        )
    };
    let mut step_losses = Vec::new();
    let vars: Vec<_> = optimizer.vars().iter().map(|(_, v)| v.clone()).collect();
    while state.epoch < opts.epochs {
        let epoch = state.epoch;
        let started = Instant::now();
        let order = epoch_order(&train_idx, seed, epoch as u64);
        let loader = EpochLoader::new(
            Arc::clone(&source),
            Arc::clone(&loader_cfg),
            &order,
            epoch as u64,
            state.batch,
        );
        let n_batches = loader.num_batches();
        let bar = progress_bar(n_batches, state.batch, epoch, opts.epochs, quiet);
        let mut pending: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut images, train_started) = (0usize, Instant::now());
        for batch in loader {
            let batch = batch?;
            let logits = model.forward_t(&input(&batch, device)?, true)?;
            let loss = opts.loss.compute(
                &logits,
                &target(&batch, classes, device)?,
                &opts.loss_params,
            )?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::option(
                    "--lr",
                    format!("the loss became {value} at step {}; lower the learning rate or enable --clip-grad", state.global_step),
                ));
            }
            let loss_scale = state.loss_scaler.map_or(1.0, |s| s.scale);
            let factor = loss_scale / opts.accumulate as f64;
            let scaled = if factor != 1.0 {
                (loss * factor)?
            } else {
                loss
            };
            let grads = scaled.backward()?;
            for (slot, var) in pending.iter_mut().zip(&vars) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let g = amp::unscale(&g.detach(), loss_scale)?;
                    *slot = Some(match slot.take() {
                        Some(sum) => (sum + g)?,
                        None => g,
                    });
                }
            }
            drop(grads);
            step_losses.push(value);
            state.batch += 1;
            state.epoch_loss_sum += value as f64;
            state.epoch_loss_count += 1;
            images += batch.len();
            let lr = schedule.lr(state.global_step);
            if state.batch % opts.accumulate == 0 || state.batch == n_batches {
                if amp::step_allowed(state.loss_scaler.as_mut(), &pending)? {
                    if let Some(max) = opts.clip_grad_norm {
                        clip_grad_norm(&mut pending, max)?;
                    }
                    optimizer.step(&pending, lr)?;
                }
                pending.iter_mut().for_each(|g| *g = None);
                state.global_step += 1;
                state.dropout_step = model.dropout_step();
                let periodic = opts
                    .save_every_steps
                    .is_some_and(|k| k > 0 && state.global_step % k == 0);
                let stop = opts.stop_after_steps == Some(state.global_step);
                if (periodic && state.batch < n_batches) || stop {
                    save_checkpoint(&state, &optimizer)?;
                }
                if stop {
                    bar.abandon_with_message(format!("stopped at step {}", state.global_step));
                    return Ok(Summary {
                        best_dice: state.best_dice,
                        history: state.history,
                        step_losses,
                        interrupted: true,
                        out_dir: out_dir.to_path_buf(),
                        train_samples: train_idx.len(),
                        val_samples: val_idx.len(),
                    });
                }
            }
            let rate = images as f64 / train_started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} lr {lr:.2e} {rate:.1} img/s",
                state.epoch_loss_sum / state.epoch_loss_count.max(1) as f64
            ));
            bar.inc(1);
        }
        let train_seconds = train_started.elapsed().as_secs_f64();
        bar.finish_and_clear();

        let val = validate(&model, &val_batches, opts)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            step: state.global_step,
            lr: schedule.lr(state.global_step.saturating_sub(1)),
            train_loss: state.epoch_loss_sum / state.epoch_loss_count.max(1) as f64,
            val_loss: val.loss,
            val: val.metrics.clone(),
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: images as f64 / train_seconds.max(1e-9),
        };
        say(format!(
            "epoch {:>3}/{}  train loss {:.4}  val loss {:.4}  dice {:.4}  iou {:.4}  prec {:.3}  rec {:.3}  acc {:.4}  {:.1} img/s  {:.1}s",
            record.epoch,
            opts.epochs,
            record.train_loss,
            record.val_loss,
            record.val.dice,
            record.val.iou,
            record.val.precision,
            record.val.recall,
            record.val.pixel_accuracy,
            record.images_per_second,
            record.seconds
        ));
        if classes > 1 {
            let per: Vec<String> = record
                .val
                .per_class
                .iter()
                .enumerate()
                .map(|(c, m)| {
                    format!(
                        "{}: {:.3}",
                        preprocessing
                            .class_names
                            .get(c)
                            .cloned()
                            .unwrap_or(c.to_string()),
                        m.dice
                    )
                })
                .collect();
            say(format!("           per-class dice  {}", per.join("  ")));
        }
        let improved = record.val.dice > state.best_dice;
        state.history.push(record);
        state.epoch += 1;
        state.batch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_loss_count = 0;
        state.dropout_step = model.dropout_step();

        let mut extra = contract.clone();
        extra.insert(keys::TRAINED_EPOCHS.to_string(), state.epoch.to_string());
        extra.insert(
            keys::VAL_DICE.to_string(),
            format!("{:.6}", val.metrics.dice),
        );
        if improved {
            state.best_dice = val.metrics.dice;
            unet_models::io::save(&model, &preprocessing, &extra, &out_dir.join(BEST_FILE))?;
        }
        unet_models::io::save(&model, &preprocessing, &extra, &out_dir.join(LAST_FILE))?;
        save_checkpoint(&state, &optimizer)?;
        report::write_metrics(&out_dir.join(METRICS_FILE), &state.history)?;
        report::plot_curves(&out_dir.join(CURVES_FILE), &state.history)?;
        let mut previews = Vec::new();
        let plane = opts.width * opts.height;
        let channels = opts.model.in_channels;
        'outer: for batch in &val_batches {
            for k in 0..batch.len() {
                let Some(prediction) = val.predictions.get(previews.len()) else {
                    break 'outer;
                };
                previews.push(PreviewSample {
                    image: &batch.images[k * channels * plane..(k + 1) * channels * plane],
                    truth: &batch.masks[k * plane..(k + 1) * plane],
                    prediction,
                });
            }
        }
        report::preview_grid(
            &out_dir.join(PREVIEW_FILE),
            &previews,
            opts.width,
            opts.height,
            &preprocessing.mean,
            &preprocessing.std,
        )?;
    }
    Ok(Summary {
        best_dice: state.best_dice,
        history: state.history,
        step_losses,
        interrupted: false,
        out_dir: out_dir.to_path_buf(),
        train_samples: train_idx.len(),
        val_samples: val_idx.len(),
    })
}
