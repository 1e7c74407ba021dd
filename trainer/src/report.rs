//! What a run leaves to read after each epoch: `metrics.jsonl` (one nested
//! record per epoch), `results.csv` (the same, flat, for spreadsheets and
//! pandas) and `val_preview.png` (validation images with true and predicted
//! masks); `curves.png` is drawn in the `plot` module.

use std::path::Path;

use image::{ImageEncoder, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::metrics::Metrics;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Optimiser steps so far.
    pub step: u64,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val: Metrics,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    pub images_per_second: f64,
}

/// PNG bytes of 8-bit gray (1 channel) or RGB (3 channels) pixels.
pub fn encode_png(
    data: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let colour = if channels == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, width as u32, height as u32, colour)
        .map_err(|reason| TrainError::Image {
            path: path.to_path_buf(),
            reason,
        })?;
    Ok(out)
}

fn save_rgb(img: &RgbImage, path: &Path) -> Result<()> {
    let bytes = encode_png(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        3,
        path,
    )?;
    crate::files::atomic_write(path, &bytes)
}

/// Rewrites `metrics.jsonl` from the whole history (so a resumed run's log is whole).
pub fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut text = String::new();
    for r in history {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    crate::files::atomic_write(path, text.as_bytes())
}

/// Columns of `results.csv`, after Ultralytics' `results.csv` (`train/…`,
/// `val/…`, `metrics/…`, `lr`, cumulative `time`).
pub const RESULTS_COLUMNS: [&str; 12] = [
    "epoch",
    "step",
    "train/loss",
    "val/loss",
    "metrics/dice",
    "metrics/iou",
    "metrics/precision",
    "metrics/recall",
    "metrics/pixel_accuracy",
    "lr",
    "time",
    "images_per_second",
];

/// Rewrites `results.csv`: one flat row per epoch; `time` is the seconds
/// since the run started (epochs summed), floats in their shortest exact form.
pub fn write_results_csv(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut text = RESULTS_COLUMNS.join(",");
    text.push('\n');
    let mut time = 0.0;
    for r in history {
        time += r.seconds;
        let row = [
            r.epoch.to_string(),
            r.step.to_string(),
            r.train_loss.to_string(),
            r.val_loss.to_string(),
            r.val.dice.to_string(),
            r.val.iou.to_string(),
            r.val.precision.to_string(),
            r.val.recall.to_string(),
            r.val.pixel_accuracy.to_string(),
            r.lr.to_string(),
            time.to_string(),
            r.images_per_second.to_string(),
        ];
        text.push_str(&row.join(","));
        text.push('\n');
    }
    crate::files::atomic_write(path, text.as_bytes())
}

/// One validation sample for the preview grid.
pub struct PreviewSample<'a> {
    /// `[C, H, W]` normalised network input.
    pub image: &'a [f32],
    pub truth: &'a [u8],
    pub prediction: &'a [u8],
}

/// `val_preview.png`: one row per sample: image | true mask over it (green) |
/// predicted mask over it (red), with mismatches outlined in yellow in the last.
pub fn preview_grid(
    path: &Path,
    samples: &[PreviewSample],
    width: usize,
    height: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<()> {
    let gap = 4;
    let cols = 3;
    let mut img = RgbImage::from_pixel(
        (cols * (width + gap) + gap) as u32,
        (samples.len().max(1) * (height + gap) + gap) as u32,
        Rgb([40, 40, 40]),
    );
    let channels = mean.len();
    let plane = width * height;
    for (row, s) in samples.iter().enumerate() {
        for y in 0..height {
            for x in 0..width {
                let i = y * width + x;
                let mut rgb = [0f32; 3];
                for (k, v) in rgb.iter_mut().enumerate() {
                    let ch = k.min(channels - 1);
                    *v = (s.image[ch * plane + i] * std[ch] + mean[ch]).clamp(0.0, 1.0) * 255.0;
                }
                let base = Rgb(rgb.map(|v| v as u8));
                let blend = |m: bool, tint: [f32; 3]| {
                    if m {
                        Rgb([0, 1, 2].map(|k| (rgb[k] * 0.5 + tint[k] * 0.5) as u8))
                    } else {
                        base
                    }
                };
                let t = s.truth[i] > 0;
                let p = s.prediction[i] > 0;
                let oy = (gap + row * (height + gap) + y) as u32;
                img.put_pixel((gap + x) as u32, oy, base);
                img.put_pixel(
                    (2 * gap + width + x) as u32,
                    oy,
                    blend(t, [0.0, 255.0, 0.0]),
                );
                let wrong = s.truth[i] != s.prediction[i];
                let px = if wrong {
                    Rgb([255, 230, 0])
                } else {
                    blend(p, [255.0, 0.0, 0.0])
                };
                img.put_pixel((3 * gap + 2 * width + x) as u32, oy, px);
            }
        }
    }
    save_rgb(&img, path)
}
