//! `unet-infer eval`: the figure a device team puts in its verification
//! record, measured on the back end it ships: per-image Dice, IoU, precision
//! and recall against ground-truth masks (CSV), and their means.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::output::{check_free, write_atomic};
use crate::{load_segmenter, BackendArgs, FitArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Directory of frames.
    #[arg(long)]
    images: PathBuf,
    /// Directory of ground-truth masks, matched to frames by file stem
    /// (foreground where the grey value exceeds 127).
    #[arg(long)]
    masks: PathBuf,
    /// The per-image CSV.
    #[arg(short, long, default_value = "eval.csv")]
    output: PathBuf,
    /// Replace the CSV if it exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    fit: FitArgs,
}

/// Pixel counts of one prediction against its truth (foreground = true).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Counts {
    pub fn of(pred: &[bool], truth: &[bool]) -> Counts {
        let mut c = Counts::default();
        for (&p, &t) in pred.iter().zip(truth) {
            match (p, t) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }

    /// `num / den`, or 1 when nothing was there to find and nothing was
    /// found (an empty prediction of an empty mask is perfect, as in training).
    fn ratio(num: u64, den: u64, perfect_when_empty: bool) -> f64 {
        match den {
            0 if perfect_when_empty => 1.0,
            0 => 0.0,
            _ => num as f64 / den as f64,
        }
    }

    pub fn dice(&self) -> f64 {
        Self::ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_, true)
    }
    pub fn iou(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp + self.fn_, true)
    }
    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp, self.fn_ == 0)
    }
    pub fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_, self.fp == 0)
    }
    fn pixels(&self) -> u64 {
        self.tp + self.fp + self.fn_ + self.tn
    }
}

/// The mask file for `image` in `masks`: the same stem (or the stem with a
/// `_mask` suffix, as the trainer accepts), any image extension.
fn mask_for(image: &Path, masks: &Path) -> Result<PathBuf> {
    let stem = image
        .file_stem()
        .context("an image without a name")?
        .to_string_lossy()
        .into_owned();
    let with_suffix = format!("{stem}_mask");
    let found = std::fs::read_dir(masks)
        .with_context(|| format!("reading {}", masks.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let s = p.file_stem().map(|s| s.to_string_lossy().into_owned());
            (s.as_deref() == Some(stem.as_str()) || s.as_deref() == Some(with_suffix.as_str()))
                && unet_runtime::segment::decode::has_image_extension(p)
        })
        .min();
    found.with_context(|| format!("no mask for {} in {}", image.display(), masks.display()))
}

pub fn run(args: &EvalArgs, quiet: bool) -> Result<()> {
    check_free(std::slice::from_ref(&args.output), args.overwrite)?;
    if !args.images.is_dir() {
        bail!("--images {}: not a directory", args.images.display());
    }
    if !args.masks.is_dir() {
        bail!("--masks {}: not a directory", args.masks.display());
    }
    let images = unet_runtime::expand_inputs(std::slice::from_ref(&args.images))?;
    let mut segmenter = load_segmenter(&args.model, &args.fit, &args.backend)?;
    let mut rows =
        vec!["image,mask,dice,iou,precision,recall,pred_foreground,true_foreground".to_string()];
    let (mut total, mut per_image, mut failed) = (Counts::default(), Vec::new(), Vec::new());
    for image_path in &images {
        let mut one = || -> Result<(PathBuf, Counts)> {
            let mask_path = mask_for(image_path, &args.masks)?;
            let image = unet_runtime::decode_image(image_path, args.fit.max_pixels)?;
            let truth = unet_runtime::decode_image(&mask_path, args.fit.max_pixels)?.to_luma8();
            if truth.dimensions() != (image.width(), image.height()) {
                bail!(
                    "{} is {}x{}, its image {}x{}",
                    mask_path.display(),
                    truth.width(),
                    truth.height(),
                    image.width(),
                    image.height()
                );
            }
            let seg = segmenter
                .segment(&image)
                .with_context(|| format!("segmenting {}", image_path.display()))?;
            let pred: Vec<bool> = seg.mask.iter().map(|&m| m > 0).collect();
            let truth: Vec<bool> = truth.as_raw().iter().map(|&v| v > 127).collect();
            Ok((mask_path, Counts::of(&pred, &truth)))
        };
        match one() {
            Ok((mask_path, c)) => {
                let n = c.pixels() as f64;
                rows.push(format!(
                    "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}",
                    csv_field(image_path),
                    csv_field(&mask_path),
                    c.dice(),
                    c.iou(),
                    c.precision(),
                    c.recall(),
                    (c.tp + c.fp) as f64 / n,
                    (c.tp + c.fn_) as f64 / n
                ));
                total.add(c);
                per_image.push(c);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failed.push(image_path.display().to_string());
            }
        }
    }
    let text = rows.join("\n") + "\n";
    write_atomic(&args.output, |w| Ok(w.write_all(text.as_bytes())?))?;
    let mean = |f: fn(&Counts) -> f64| {
        per_image.iter().map(f).sum::<f64>() / per_image.len().max(1) as f64
    };
    if !quiet {
        println!(
            "{} images on {}: mean Dice {:.4}, IoU {:.4}, precision {:.4}, recall {:.4}; \
             pooled Dice {:.4} -> {}",
            per_image.len(),
            segmenter.session().provider(),
            mean(Counts::dice),
            mean(Counts::iou),
            mean(Counts::precision),
            mean(Counts::recall),
            total.dice(),
            args.output.display()
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} images failed: {}",
            failed.len(),
            images.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// A path as one CSV field (quoted when it holds a comma or a quote).
fn csv_field(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_counts() {
        // 3x3: truth is the left column plus the centre (4 px); the
        // prediction is the left column and the top middle (4 px): tp 3, fp 1, fn 1.
        let t = [true, false, false, true, true, false, true, false, false];
        let p = [true, true, false, true, false, false, true, false, false];
        let c = Counts::of(&p, &t);
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (3, 1, 1, 4));
        assert!((c.dice() - 6.0 / 8.0).abs() < 1e-12);
        assert!((c.iou() - 3.0 / 5.0).abs() < 1e-12);
        assert!((c.precision() - 0.75).abs() < 1e-12);
        assert!((c.recall() - 0.75).abs() < 1e-12);
        // Nothing to find, nothing found: perfect; something missed: 0.
        let empty = Counts::of(&[false; 4], &[false; 4]);
        assert_eq!(
            (empty.dice(), empty.iou(), empty.precision(), empty.recall()),
            (1.0, 1.0, 1.0, 1.0)
        );
        let missed = Counts::of(&[false; 2], &[true, false]);
        assert_eq!(
            (missed.dice(), missed.precision(), missed.recall()),
            (0.0, 0.0, 0.0)
        );
    }
}
