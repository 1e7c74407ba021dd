//! The end of an epoch: validation, the epoch's record, the model files
//! (best and last), the checkpoint, and the reports (metrics, curves, preview).

use std::time::Instant;

use unet_models::UNet;
use unet_spec::keys;

use super::step::{input, target};
use super::{
    EpochRun, Trainer, BEST_FILE, CURVES_FILE, LAST_FILE, METRICS_FILE, PREVIEW_FILE, RESULTS_FILE,
};
use crate::error::Result;
use crate::loader::Batch;
use crate::metrics::{MetricAccumulator, Metrics};
use crate::options::TrainOptions;
use crate::report::{self, EpochRecord, PreviewSample};

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

impl Trainer<'_> {
    /// Validates, records and saves after the training part of an epoch.
    pub(super) fn end_epoch(&mut self, run: &EpochRun) -> Result<()> {
        let opts = self.opts;
        let work_started = Instant::now();
        let model = self.learner.model();
        let val = validate(model, &self.val_batches, opts)?;
        let record = EpochRecord {
            epoch: self.state.epoch + 1,
            step: self.state.global_step,
            lr: self.schedule.lr(self.state.global_step.saturating_sub(1)),
            train_loss: self.state.epoch_loss_sum / self.state.epoch_loss_count.max(1) as f64,
            val_loss: val.loss,
            val: val.metrics.clone(),
            seconds: run.started.elapsed().as_secs_f64(),
            images_per_second: run.images as f64 / run.train_seconds.max(1e-9),
        };
        self.say(format!(
            "epoch {:>3}/{}  train loss {:.4}  val loss {:.4}  dice {:.4}  iou {:.4}  prec {:.3}  rec {:.3}  acc {:.4}  {:.1} img/s  {:.1}s",
            record.epoch,
            self.planned_epochs(),
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
        self.say(data_line(run));
        if opts.model.out_channels > 1 {
            let per: Vec<String> = record
                .val
                .per_class
                .iter()
                .enumerate()
                .map(|(c, m)| {
                    format!(
                        "{}: {:.3}",
                        self.preprocessing
                            .class_names
                            .get(c)
                            .cloned()
                            .unwrap_or(c.to_string()),
                        m.dice
                    )
                })
                .collect();
            self.say(format!("           per-class dice  {}", per.join("  ")));
        }
        let state = &mut self.state;
        let improved = record.val.dice > state.best_dice;
        state.history.push(record);
        state.epoch += 1;
        state.batch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_loss_count = 0;
        state.dropout_step = model.dropout_step();

        let out_dir = self.out_dir;
        let mut extra = self.contract.clone();
        extra.insert(keys::TRAINED_EPOCHS.to_string(), state.epoch.to_string());
        extra.insert(
            keys::VAL_DICE.to_string(),
            format!("{:.6}", val.metrics.dice),
        );
        if improved {
            state.best_dice = val.metrics.dice;
            unet_models::io::save(model, &self.preprocessing, &extra, &out_dir.join(BEST_FILE))?;
        }
        unet_models::io::save(model, &self.preprocessing, &extra, &out_dir.join(LAST_FILE))?;
        self.save_checkpoint()?;
        let history = &self.state.history;
        report::write_metrics(&out_dir.join(METRICS_FILE), history)?;
        report::write_results_csv(&out_dir.join(RESULTS_FILE), history)?;
        crate::plot::plot_curves(&out_dir.join(CURVES_FILE), history)?;
        let mut previews = Vec::new();
        let plane = opts.width * opts.height;
        let channels = opts.model.in_channels;
        'outer: for batch in &self.val_batches {
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
            &self.preprocessing.mean,
            &self.preprocessing.std,
        )?;
        if let Some(b) = &mut self.budget {
            b.record_epoch_end(work_started.elapsed());
        }
        Ok(())
    }
}

/// What loading cost the epoch's training: the CPU time decoding and
/// augmenting took (on the loader's threads, which share the cores with the
/// training step) against the step time, and how long the step waited.
fn data_line(run: &EpochRun) -> String {
    let load = &run.load;
    let batches = load.batches.max(1) as f64;
    let step = run.train_seconds / batches;
    let cpu = load.cpu.as_secs_f64() / batches;
    format!(
        "           data  {:.1} ms of CPU a batch ({:.1} % of a {:.0} ms step), waited {:.2}s in all",
        cpu * 1e3,
        100.0 * cpu / step.max(1e-9),
        step * 1e3,
        load.waited.as_secs_f64()
    )
}
