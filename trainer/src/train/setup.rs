//! Setting a run up: checks, the output folder (stale temp files of a killed
//! run removed), the data split, the model and its preprocessing (fresh or
//! from a checkpoint), the optimiser, loaders and schedule.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use unet_models::candle_core::{Device, Tensor};
use unet_models::{Preprocessing, UNet};

use super::budget::TimeBudget;
use super::step::Learner;
use super::{seconds, split, Trainer};
use crate::amp::Precision;
use crate::checkpoint::{self, TrainState};
use crate::data::{channel_stats, Source};
use crate::error::{Result, TrainError};
use crate::files;
use crate::loader::{Batch, EpochLoader, LoaderConfig};
use crate::optim::Optimizer;
use crate::options::{Normalization, TrainOptions};
use crate::schedule::Schedule;

/// Where a run starts from.
struct Start {
    model: UNet,
    preprocessing: Preprocessing,
    state: TrainState,
    /// Optimiser tensors of a checkpoint, and its path (for messages).
    optimizer: Option<(HashMap<String, Tensor>, std::path::PathBuf)>,
}

impl<'a> Trainer<'a> {
    pub(super) fn setup(
        opts: &'a TrainOptions,
        source: Arc<dyn Source>,
        out_dir: &'a Path,
        device: &'a Device,
        resume: Option<&Path>,
        quiet: bool,
    ) -> Result<Self> {
        let started = SystemTime::now();
        opts.validate()?;
        std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io {
            dir: out_dir.to_path_buf(),
            what: "cannot create the output folder".into(),
            source,
        })?;
        let say = |s: String| {
            if !quiet {
                log::info!("{s}");
            }
        };
        let (stale, bytes) = files::remove_stale_temps(out_dir, started)?;
        if !stale.is_empty() {
            say(format!(
                "removed {} temp file(s) ({:.1} MB) that an interrupted run left in {}",
                stale.len(),
                bytes as f64 / 1e6,
                out_dir.display()
            ));
        }
        let (train_idx, val_idx) = split(source.len(), opts.val_split, opts.seed)?;
        // Geometry and provenance, fixed for the run (the date is its start).
        let contract = crate::provenance::model_metadata(opts, source.as_ref(), &train_idx);
        let options_json = serde_json::to_string(opts).unwrap_or_default();
        let start = match resume {
            Some(path) => resumed(opts, path, device, &options_json, &say)?,
            None => fresh(opts, source.as_ref(), &train_idx, device, &options_json)?,
        };
        let Start {
            mut model,
            preprocessing,
            mut state,
            optimizer: optimizer_state,
        } = start;
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
        if let Some((tensors, path)) = optimizer_state {
            optimizer
                .load_state(tensors, state.global_step)
                .map_err(|reason| TrainError::BadCheckpoint { path, reason })?;
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
        let val_batches: Vec<Batch> =
            EpochLoader::new(Arc::clone(&source), val_cfg, &val_idx, 0, 0)
                .collect::<Result<_>>()?;

        let batches_per_epoch = train_idx.len().div_ceil(opts.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(opts.accumulate) as u64;
        let schedule = Schedule {
            cfg: opts.schedule.clone(),
            base_lr: opts.lr,
            steps_per_epoch,
            total_steps: opts.epochs as u64 * steps_per_epoch,
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
        let budget = opts.time_budget.map(|b| {
            say(format!(
                "time budget {}: the schedule is re-planned from measured step times and ends at the budget",
                humantime::format_duration(b)
            ));
            TimeBudget::new(b, seconds(state.seconds_spent))
        });
        let stop_at = opts.stop_after_steps.map(|n| state.global_step + n);
        let learner = Learner::new(
            model,
            optimizer,
            opts.loss,
            opts.loss_params,
            opts.accumulate,
            opts.clip_grad_norm,
        );
        Ok(Trainer {
            opts,
            source,
            out_dir,
            device,
            quiet,
            learner,
            preprocessing,
            contract,
            state,
            train_idx,
            val_idx,
            loader_cfg,
            val_batches,
            schedule,
            stop_at,
            budget,
            step_losses: Vec::new(),
        })
    }
}

/// A run continued from the checkpoint at `path`.
fn resumed(
    opts: &TrainOptions,
    path: &Path,
    device: &Device,
    options_json: &str,
    say: &dyn Fn(String),
) -> Result<Start> {
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
        say("note: options differ from the checkpoint's; continuing with the new ones".into());
    }
    ck.loaded.model.set_dropout_step(ck.state.dropout_step);
    say(format!(
        "resuming from {} at epoch {}, batch {}, step {}",
        path.display(),
        ck.state.epoch + 1,
        ck.state.batch,
        ck.state.global_step
    ));
    Ok(Start {
        model: ck.loaded.model,
        preprocessing: ck.loaded.preprocessing,
        state: ck.state,
        optimizer: Some((ck.optimizer, path.to_path_buf())),
    })
}

/// A new run: normalisation statistics, a freshly initialised model.
fn fresh(
    opts: &TrainOptions,
    source: &dyn Source,
    train_idx: &[usize],
    device: &Device,
    options_json: &str,
) -> Result<Start> {
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
    let init = UNet::new(&opts.model, device, opts.seed)?;
    let model = checkpoint::reload(&init, &pre, device)?;
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
        options: options_json.to_string(),
        loss_scaler: None,
        seconds_spent: 0.0,
    };
    Ok(Start {
        model,
        preprocessing: pre,
        state,
        optimizer: None,
    })
}
