//! What a person sees after each epoch: `metrics.jsonl`, `curves.png` (loss and
//! Dice per epoch) and `val_preview.png` (validation images with true and
//! predicted masks). Drawn with the `image` crate and a built-in 3x5 font, so
//! no system font library is needed.

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
    Ok(unet_models::io::atomic_write(path, &bytes)?)
}

/// Rewrites `metrics.jsonl` from the whole history (so a resumed run's log is whole).
pub fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut text = String::new();
    for r in history {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    Ok(unet_models::io::atomic_write(path, text.as_bytes())?)
}

/// 3x5 glyphs, one row of 3 bits per entry, top row first.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' | 'o' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' | 's' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [7, 4, 4, 4, 7],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 7, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [7, 4, 5, 5, 7],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'p' => [7, 5, 7, 4, 4],
        'r' => [6, 5, 6, 5, 5],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        _ => [0; 5],
    }
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale` pixels wide.
fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, colour: Rgb<u8>, scale: i64) {
    for (k, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                img,
                                x + (k as i64 * 4 + col) * scale + dx,
                                y + row as i64 * scale + dy,
                                colour,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            put(img, x.round() as i64 + dx, y.round() as i64 + dy, colour);
        }
    }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel: series of `(label, colour, values per epoch)` over `[lo, hi]`.
fn panel(
    img: &mut RgbImage,
    origin: (i64, i64),
    size: (i64, i64),
    title: &str,
    series: &[(&str, Rgb<u8>, Vec<f64>)],
    range: (f64, f64),
) {
    let (ox, oy) = origin;
    let (w, h) = size;
    let axis = Rgb([60, 60, 60]);
    let (left, top, bottom) = (ox + 52, oy + 28, oy + h - 24);
    let right = ox + w - 12;
    draw_text(img, ox + 52, oy + 6, title, Rgb([0, 0, 0]), 3);
    line(
        img,
        (left as f64, top as f64),
        (left as f64, bottom as f64),
        axis,
    );
    line(
        img,
        (left as f64, bottom as f64),
        (right as f64, bottom as f64),
        axis,
    );
    let (lo, hi) = if range.1 > range.0 {
        range
    } else {
        (range.0 - 0.5, range.0 + 0.5)
    };
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let y = bottom as f64 - (bottom - top) as f64 * k as f64 / 4.0;
        for x in (left..right).step_by(4) {
            put(img, x, y as i64, Rgb([220, 220, 220]));
        }
        draw_text(img, ox + 4, y as i64 - 5, &fmt_tick(v), axis, 2);
    }
    let epochs = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let xof = |i: usize| left as f64 + (right - left) as f64 * i as f64 / (epochs - 1) as f64;
    draw_text(img, left, bottom + 8, "1", axis, 2);
    draw_text(img, right - 20, bottom + 8, &epochs.to_string(), axis, 2);
    draw_text(img, (left + right) / 2 - 20, bottom + 8, "epoch", axis, 2);
    for (k, (label, colour, values)) in series.iter().enumerate() {
        let yof =
            |v: f64| bottom as f64 - (bottom - top) as f64 * ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        for i in 1..values.len() {
            line(
                img,
                (xof(i - 1), yof(values[i - 1])),
                (xof(i), yof(values[i])),
                *colour,
            );
        }
        if values.len() == 1 {
            for d in -2..=2 {
                put(img, xof(0) as i64 + d, yof(values[0]) as i64, *colour);
            }
        }
        let ly = top + 6 + 14 * k as i64;
        line(
            img,
            ((right - 130) as f64, (ly + 4) as f64),
            ((right - 110) as f64, (ly + 4) as f64),
            *colour,
        );
        draw_text(img, right - 104, ly, label, Rgb([0, 0, 0]), 2);
    }
}

/// `curves.png`: training and validation loss (left), validation Dice and IoU (right).
pub fn plot_curves(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut img = RgbImage::from_pixel(900, 340, Rgb([255, 255, 255]));
    let train: Vec<f64> = history.iter().map(|r| r.train_loss).collect();
    let val: Vec<f64> = history.iter().map(|r| r.val_loss).collect();
    let finite = train.iter().chain(&val).copied().filter(|v| v.is_finite());
    let hi = finite.clone().fold(f64::MIN, f64::max);
    let lo = finite.fold(f64::MAX, f64::min).min(0.0);
    panel(
        &mut img,
        (0, 0),
        (450, 340),
        "loss",
        &[
            ("train", Rgb([31, 119, 180]), train),
            ("val", Rgb([255, 127, 14]), val),
        ],
        (lo, if hi > lo { hi } else { lo + 1.0 }),
    );
    panel(
        &mut img,
        (450, 0),
        (450, 340),
        "val dice",
        &[
            (
                "dice",
                Rgb([44, 160, 44]),
                history.iter().map(|r| r.val.dice).collect(),
            ),
            (
                "iou",
                Rgb([148, 103, 189]),
                history.iter().map(|r| r.val.iou).collect(),
            ),
        ],
        (0.0, 1.0),
    );
    save_rgb(&img, path)
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
