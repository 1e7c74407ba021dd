//! The training loop. [`run`] sets a run up ([`setup`]: data split, model,
//! optimiser, schedule, loaders; fresh or resumed), runs epochs of
//! [`step::Learner::step`] and does the end-of-epoch work ([`epoch`]:
//! validation, checkpoints, reports). [`budget`] fits a run into `--time`.

pub mod budget;
mod epoch;
mod setup;
pub mod step;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use unet_models::candle_core::Device;
use unet_models::Preprocessing;

use crate::checkpoint::{self, TrainState};
use crate::data::Source;
use crate::error::{Result, TrainError};
use crate::loader::{epoch_order, Batch, EpochLoader, LoadCost, LoaderConfig};
use crate::report::EpochRecord;
use crate::schedule::Schedule;
use budget::TimeBudget;
use step::Learner;

pub use crate::options::{Normalization, TrainOptions};

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Summary {
    pub history: Vec<EpochRecord>,
    /// Training loss of every micro-batch run in this process, in order.
    pub step_losses: Vec<f32>,
    pub best_dice: f64,
    /// Whether the run stopped at `stop_after_steps` before its last epoch.
    pub interrupted: bool,
    /// Whether `time_budget` ended the run.
    pub out_of_time: bool,
    pub out_dir: PathBuf,
    pub train_samples: usize,
    pub val_samples: usize,
}

/// Output file names inside `--out`.
pub const BEST_FILE: &str = "best.safetensors";
pub const LAST_FILE: &str = "last.safetensors";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const RESULTS_FILE: &str = "results.csv";
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

/// A run in progress: what [`setup`] built and the loop advances.
struct Trainer<'a> {
    opts: &'a TrainOptions,
    source: Arc<dyn Source>,
    out_dir: &'a Path,
    device: &'a Device,
    quiet: bool,
    learner: Learner,
    preprocessing: Preprocessing,
    /// Input geometry and provenance every model file of the run carries.
    contract: HashMap<String, String>,
    state: TrainState,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    loader_cfg: Arc<LoaderConfig>,
    /// The validation split, decoded once and kept.
    val_batches: Vec<Batch>,
    schedule: Schedule,
    /// Global step at which `stop_after_steps` stops this call.
    stop_at: Option<u64>,
    budget: Option<TimeBudget>,
    step_losses: Vec<f32>,
}

/// The training part of one epoch: how it ended and what it did.
struct EpochRun {
    end: EpochEnd,
    started: Instant,
    /// Images trained on, and the seconds it took.
    images: usize,
    train_seconds: f64,
    /// What loading its batches cost.
    load: LoadCost,
}

/// How an epoch's training part ended.
enum EpochEnd {
    /// All its batches ran.
    Complete,
    /// `stop_after_steps` was reached (checkpoint written).
    Stopped,
    /// The time budget is spent: finish this (partial) epoch and stop.
    OutOfTime,
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
    let mut t = Trainer::setup(opts, source, out_dir, device, resume, quiet)?;
    while t.state.epoch < t.planned_epochs() {
        let epoch = t.train_epoch()?;
        match epoch.end {
            EpochEnd::Complete => t.end_epoch(&epoch)?,
            EpochEnd::Stopped => return Ok(t.summary(true, false)),
            EpochEnd::OutOfTime => {
                t.end_epoch(&epoch)?;
                return Ok(t.summary(false, true));
            }
        }
        if t.plan_spent() {
            return Ok(t.summary(false, true));
        }
    }
    Ok(t.summary(false, false))
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

impl Trainer<'_> {
    fn say(&self, s: String) {
        if !self.quiet {
            log::info!("{s}");
        }
    }

    /// Epochs the run will have: `epochs`, or with a time budget as many as
    /// the planned steps fill.
    fn planned_epochs(&self) -> usize {
        match &self.budget {
            None => self.opts.epochs,
            Some(_) => {
                let spe = self.schedule.steps_per_epoch.max(1);
                (self.schedule.total_steps.div_ceil(spe) as usize).max(self.state.epoch + 1)
            }
        }
    }

    /// With a time budget: whether its planned steps are all done, or it is spent.
    fn plan_spent(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.exhausted() || self.state.global_step >= self.schedule.total_steps)
    }

    /// Re-lays the schedule over the steps that still fit in the budget.
    fn replan(&mut self, left_in_epoch: u64) {
        let spe = self.schedule.steps_per_epoch;
        if let Some(total) = self
            .budget
            .as_ref()
            .and_then(|b| b.planned_total(self.state.global_step, left_in_epoch, spe))
        {
            self.schedule.total_steps = total.max(self.state.global_step);
            // Warm-up takes at most a tenth of what the budget allows (never lengthened
            // again, so a later, longer plan does not restart it).
            let cfg = &mut self.schedule.cfg;
            cfg.warmup_steps = cfg.warmup_steps.min(self.schedule.total_steps / 10);
        }
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        if let Some(b) = &self.budget {
            self.state.seconds_spent = b.spent().as_secs_f64();
        }
        checkpoint::save(
            &self.out_dir.join(CHECKPOINT_FILE),
            self.learner.model(),
            &self.preprocessing,
            self.learner.optimizer().state_tensors(),
            &self.state,
        )
    }

    /// Runs the training batches of the current epoch (from `state.batch` on).
    fn train_epoch(&mut self) -> Result<EpochRun> {
        let (opts, device) = (self.opts, self.device);
        let epoch = self.state.epoch;
        let order = epoch_order(&self.train_idx, self.state.seed, epoch as u64);
        let mut loader = EpochLoader::new(
            Arc::clone(&self.source),
            Arc::clone(&self.loader_cfg),
            &order,
            epoch as u64,
            self.state.batch,
        );
        let n_batches = loader.num_batches();
        let bar = progress_bar(
            n_batches,
            self.state.batch,
            epoch,
            self.planned_epochs(),
            self.quiet,
        );
        let (mut images, started) = (0usize, Instant::now());
        let run = |end, images, load| EpochRun {
            end,
            started,
            images,
            train_seconds: started.elapsed().as_secs_f64(),
            load,
        };
        let mut since_step = Instant::now();
        let classes = opts.model.out_channels;
        for batch in loader.by_ref() {
            let batch = batch?;
            let lr = self.schedule.lr(self.state.global_step);
            let update = (self.state.batch + 1).is_multiple_of(opts.accumulate)
                || self.state.batch + 1 == n_batches;
            let report = self.learner.step(
                &step::input(&batch, device)?,
                &step::target(&batch, classes, device)?,
                update.then_some(lr),
                self.state.loss_scaler.as_mut(),
            )?;
            self.step_losses.push(report.loss);
            self.state.batch += 1;
            self.state.epoch_loss_sum += report.loss as f64;
            self.state.epoch_loss_count += 1;
            images += batch.len();
            if update {
                self.state.global_step += 1;
                self.state.dropout_step = self.learner.model().dropout_step();
                let periodic = opts
                    .save_every_steps
                    .is_some_and(|k| k > 0 && self.state.global_step.is_multiple_of(k));
                let stop = self.stop_at == Some(self.state.global_step);
                if (periodic && self.state.batch < n_batches) || stop {
                    self.save_checkpoint()?;
                }
                if stop {
                    bar.abandon_with_message(format!("stopped at step {}", self.state.global_step));
                    return Ok(run(EpochEnd::Stopped, images, loader.cost()));
                }
                if let Some(b) = &mut self.budget {
                    b.record_steps(1, since_step.elapsed());
                    since_step = Instant::now();
                    let left = (n_batches - self.state.batch).div_ceil(opts.accumulate) as u64;
                    self.replan(left);
                    if self.plan_spent() && self.state.batch < n_batches {
                        bar.finish_and_clear();
                        self.say(format!(
                            "time budget: stopping at step {} in epoch {} after {:.1}s",
                            self.state.global_step,
                            epoch + 1,
                            self.budget
                                .as_ref()
                                .map_or(0.0, |b| b.spent().as_secs_f64())
                        ));
                        return Ok(run(EpochEnd::OutOfTime, images, loader.cost()));
                    }
                }
            }
            let rate = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} lr {lr:.2e} {rate:.1} img/s",
                self.state.epoch_loss_sum / self.state.epoch_loss_count.max(1) as f64
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(run(EpochEnd::Complete, images, loader.cost()))
    }

    fn summary(self, interrupted: bool, out_of_time: bool) -> Summary {
        Summary {
            best_dice: self.state.best_dice,
            history: self.state.history,
            step_losses: self.step_losses,
            interrupted,
            out_of_time,
            out_dir: self.out_dir.to_path_buf(),
            train_samples: self.train_idx.len(),
            val_samples: self.val_idx.len(),
        }
    }
}

/// Seconds as a `Duration`, for times read back from checkpoints.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}
