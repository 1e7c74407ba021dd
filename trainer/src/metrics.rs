//! Validation metrics from logits and class-index masks: Dice, IoU, precision,
//! recall per image and class (averaged over images), pixel accuracy over all pixels.

use serde::{Deserialize, Serialize};

/// Confusion counts of one class in one image.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    tp: u64,
    fp: u64,
    fn_: u64,
}

impl Counts {
    /// Empty prediction of an empty class counts as perfect.
    fn dice(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            1.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
    fn iou(&self) -> f64 {
        let d = self.tp + self.fp + self.fn_;
        if d == 0 {
            1.0
        } else {
            self.tp as f64 / d as f64
        }
    }
    fn precision(&self) -> f64 {
        match self.tp + self.fp {
            0 => f64::from(u8::from(self.fn_ == 0)),
            d => self.tp as f64 / d as f64,
        }
    }
    fn recall(&self) -> f64 {
        match self.tp + self.fn_ {
            0 => f64::from(u8::from(self.fp == 0)),
            d => self.tp as f64 / d as f64,
        }
    }
}

/// Metrics of one class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub dice: f64,
    pub iou: f64,
    pub precision: f64,
    pub recall: f64,
}

/// Metrics of a validation pass. The headline values average the foreground
/// classes (class 0 is background when there are several classes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub dice: f64,
    pub iou: f64,
    pub precision: f64,
    pub recall: f64,
    pub pixel_accuracy: f64,
    /// One entry per class (for one output channel: the foreground).
    pub per_class: Vec<ClassMetrics>,
}

/// Accumulates predictions batch by batch.
#[derive(Debug, Clone)]
pub struct MetricAccumulator {
    classes: usize,
    /// Logit above which a binary pixel is foreground.
    logit_threshold: f32,
    sums: Vec<ClassMetrics>,
    images: usize,
    correct: u64,
    pixels: u64,
}

impl MetricAccumulator {
    /// `classes` output channels; `threshold` is the probability for binary masks.
    pub fn new(classes: usize, threshold: f32) -> Self {
        let t = threshold.clamp(1e-6, 1.0 - 1e-6);
        MetricAccumulator {
            classes,
            logit_threshold: (t / (1.0 - t)).ln(),
            sums: vec![ClassMetrics::default(); classes],
            images: 0,
            correct: 0,
            pixels: 0,
        }
    }

    /// Predicted class index per pixel of one image's logits `[C, H*W]`.
    pub fn predict(&self, logits: &[f32], plane: usize) -> Vec<u8> {
        (0..plane)
            .map(|i| {
                if self.classes == 1 {
                    u8::from(logits[i] > self.logit_threshold)
                } else {
                    let mut best = 0;
                    for c in 1..self.classes {
                        if logits[c * plane + i] > logits[best * plane + i] {
                            best = c;
                        }
                    }
                    best as u8
                }
            })
            .collect()
    }

    /// Adds a batch: `logits [N, C, H, W]`, `masks [N, H, W]`.
    pub fn add(&mut self, logits: &[f32], masks: &[u8], plane: usize) {
        let n = masks.len() / plane.max(1);
        for k in 0..n {
            let pred = self.predict(
                &logits[k * self.classes * plane..(k + 1) * self.classes * plane],
                plane,
            );
            let truth = &masks[k * plane..(k + 1) * plane];
            let last = self.classes.max(2) - 1;
            let mut counts = vec![Counts::default(); last + 1];
            for (&p, &t) in pred.iter().zip(truth) {
                if p == t {
                    self.correct += 1;
                    counts[p as usize].tp += 1;
                } else {
                    counts[p as usize].fp += 1;
                    counts[(t as usize).min(last)].fn_ += 1;
                }
            }
            self.pixels += plane as u64;
            // A binary model's one class is the foreground (index 1).
            let offset = usize::from(self.classes == 1);
            for (c, sum) in self.sums.iter_mut().enumerate() {
                let cnt = counts[c + offset];
                sum.dice += cnt.dice();
                sum.iou += cnt.iou();
                sum.precision += cnt.precision();
                sum.recall += cnt.recall();
            }
            self.images += 1;
        }
    }

    pub fn finish(&self) -> Metrics {
        let n = self.images.max(1) as f64;
        let per_class: Vec<ClassMetrics> = self
            .sums
            .iter()
            .map(|s| ClassMetrics {
                dice: s.dice / n,
                iou: s.iou / n,
                precision: s.precision / n,
                recall: s.recall / n,
            })
            .collect();
        let fg = if self.classes == 1 {
            &per_class[..]
        } else {
            &per_class[1..]
        };
        let mean =
            |f: fn(&ClassMetrics) -> f64| fg.iter().map(f).sum::<f64>() / fg.len().max(1) as f64;
        Metrics {
            dice: mean(|m| m.dice),
            iou: mean(|m| m.iou),
            precision: mean(|m| m.precision),
            recall: mean(|m| m.recall),
            pixel_accuracy: self.correct as f64 / self.pixels.max(1) as f64,
            per_class,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_counts_by_hand() {
        // 2x3 image: truth 1 1 0 / 0 0 1, prediction 1 0 0 / 1 0 1
        // tp = 2, fp = 1, fn = 1, tn = 2.
        let logits = [2.0, -1.0, -3.0, 0.5, -0.1, 4.0];
        let masks = [1, 1, 0, 0, 0, 1];
        let mut acc = MetricAccumulator::new(1, 0.5);
        acc.add(&logits, &masks, 6);
        let m = acc.finish();
        assert!((m.dice - 4.0 / 6.0).abs() < 1e-12);
        assert!((m.iou - 0.5).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.pixel_accuracy - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn threshold_moves_the_decision() {
        // sigmoid(0.5) = 0.62: foreground at threshold 0.5, background at 0.7.
        let mut acc = MetricAccumulator::new(1, 0.7);
        assert_eq!(acc.predict(&[0.5, 1.0], 2), vec![0, 1]);
        acc.add(&[0.5, 1.0], &[0, 1], 2);
        assert_eq!(acc.finish().dice, 1.0);
    }

    #[test]
    fn images_are_averaged_and_empty_matches_count_as_perfect() {
        // Image 1: perfect empty prediction (dice 1); image 2: one tp, one fn (dice 2/3).
        let logits = [-1.0, -1.0, 1.0, -1.0];
        let masks = [0, 0, 1, 1];
        let mut acc = MetricAccumulator::new(1, 0.5);
        acc.add(&logits, &masks, 2);
        let m = acc.finish();
        assert!((m.dice - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((m.recall - 0.75).abs() < 1e-12);
    }

    #[test]
    fn multiclass_per_class_and_background_excluded() {
        // 3 classes, 4 pixels; truth 0 1 2 2, argmax prediction 0 1 1 2.
        #[rustfmt::skip]
        let logits = [
            5.0, 0.0, 0.0, 0.0, // class 0
            0.0, 5.0, 5.0, 0.0, // class 1
            0.0, 0.0, 1.0, 5.0, // class 2
        ];
        let mut acc = MetricAccumulator::new(3, 0.5);
        acc.add(&logits, &[0, 1, 2, 2], 4);
        let m = acc.finish();
        assert_eq!(m.per_class[0].dice, 1.0);
        // class 1: tp 1, fp 1 -> dice 2/3; class 2: tp 1, fn 1 -> dice 2/3
        assert!((m.per_class[1].dice - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[2].dice - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.dice - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[1].precision, 0.5);
        assert_eq!(m.per_class[2].recall, 0.5);
        assert_eq!(m.pixel_accuracy, 0.75);
    }
}
