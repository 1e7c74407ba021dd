//! Element-wise comparison of one output with its reference: error statistics
//! and the Dice between the thresholded masks.
//!
//! An element passes when both values are finite and
//! `|actual - expected| <= atol + rtol * |expected|` (numpy's `allclose`). A
//! NaN or an infinity on either side never passes: a graph whose output is all
//! NaN must not agree with a reference that is NaN too.

use super::Tolerance;
use crate::lower::Head;
use crate::runner::Tensor4 as Nchw;

/// Applies an output head to logits, as the exported graph does.
pub fn apply_head(head: Head, logits: &Nchw) -> Nchw {
    let [n, c, h, w] = logits.shape;
    let hw = h * w;
    match head {
        Head::Logits => logits.clone(),
        Head::Sigmoid => Nchw {
            data: logits.data.iter().map(|&v| sigmoid(v)).collect(),
            shape: logits.shape,
        },
        Head::Softmax => {
            let mut data = logits.data.clone();
            for b in 0..n {
                for p in 0..hw {
                    let at = |k: usize| (b * c + k) * hw + p;
                    let max = (0..c).map(|k| logits.data[at(k)]).fold(f32::MIN, f32::max);
                    let sum: f32 = (0..c).map(|k| (logits.data[at(k)] - max).exp()).sum();
                    for k in 0..c {
                        data[at(k)] = (logits.data[at(k)] - max).exp() / sum;
                    }
                }
            }
            Nchw {
                data,
                shape: logits.shape,
            }
        }
        Head::Argmax => {
            let mut data = vec![0f32; n * hw];
            for b in 0..n {
                for p in 0..hw {
                    let at = |k: usize| (b * c + k) * hw + p;
                    // First maximum wins, as ONNX ArgMax with select_last_index = 0.
                    let mut best = 0;
                    for k in 1..c {
                        if logits.data[at(k)] > logits.data[at(best)] {
                            best = k;
                        }
                    }
                    data[b * hw + p] = best as f32;
                }
            }
            Nchw {
                data,
                shape: [n, 1, h, w],
            }
        }
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Foreground masks of an output: probabilities above 0.5, or one-hot labels.
fn masks(head: Head, out: &Nchw, classes: usize) -> Vec<bool> {
    match head {
        Head::Argmax => {
            let mut m = Vec::with_capacity(out.data.len() * classes);
            for k in 0..classes {
                m.extend(out.data.iter().map(|&l| l as usize == k));
            }
            m
        }
        Head::Sigmoid | Head::Softmax => out.data.iter().map(|&p| p > 0.5).collect(),
        Head::Logits if out.shape[1] == 1 => out.data.iter().map(|&v| v > 0.0).collect(),
        Head::Logits => apply_head(Head::Softmax, out)
            .data
            .iter()
            .map(|&p| p > 0.5)
            .collect(),
    }
}

/// Error statistics of one output against the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub max_abs: f64,
    pub max_rel: f64,
    pub mean_abs: f64,
    /// Dice between the thresholded masks; 1 when both are empty.
    pub dice: f64,
    /// Elements outside the tolerance, non-finite ones included.
    pub mismatches: usize,
    /// Elements where either side is NaN or infinite.
    pub non_finite: usize,
    pub count: usize,
}

impl Stats {
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }
}

/// Compares `actual` with `expected` (same shape) element-wise.
pub fn compare(
    expected: &Nchw,
    actual: &Nchw,
    tol: Tolerance,
    head: Head,
    classes: usize,
) -> Stats {
    let (mut max_abs, mut max_rel, mut sum_abs) = (0f64, 0f64, 0f64);
    let (mut mismatches, mut non_finite) = (0usize, 0usize);
    for (&e, &a) in expected.data.iter().zip(&actual.data) {
        let (e, a) = (e as f64, a as f64);
        if !(e.is_finite() && a.is_finite()) {
            // NaN - NaN is NaN and `NaN > tol` is false: counted here, never compared.
            non_finite += 1;
            mismatches += 1;
            max_abs = f64::INFINITY;
            max_rel = f64::INFINITY;
            sum_abs = f64::INFINITY;
            continue;
        }
        let abs = (a - e).abs();
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(abs / e.abs().max(f32::EPSILON as f64));
        sum_abs += abs;
        if abs > tol.atol as f64 + tol.rtol as f64 * e.abs() {
            mismatches += 1;
        }
    }
    let count = expected.data.len();
    let (me, ma) = (masks(head, expected, classes), masks(head, actual, classes));
    let both = me.iter().zip(&ma).filter(|(x, y)| **x && **y).count();
    let total = me.iter().filter(|x| **x).count() + ma.iter().filter(|x| **x).count();
    let dice = if non_finite > 0 {
        // A NaN is neither foreground nor background: no agreement to report.
        0.0
    } else if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    };
    Stats {
        max_abs,
        max_rel,
        mean_abs: sum_abs / count.max(1) as f64,
        dice,
        mismatches,
        non_finite,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(data: Vec<f32>) -> Nchw {
        Nchw {
            shape: [1, 1, 1, data.len()],
            data,
        }
    }

    #[test]
    fn within_tolerance_passes_and_outside_fails() {
        let tol = Tolerance::F32;
        let s = compare(
            &t(vec![1.0, -2.0]),
            &t(vec![1.0 + 5e-5, -2.0]),
            tol,
            Head::Logits,
            1,
        );
        assert!(s.passed(), "{s:?}");
        assert!((s.max_abs - 5e-5).abs() < 1e-6, "{s:?}");
        let s = compare(
            &t(vec![1.0, -2.0]),
            &t(vec![1.0, -2.1]),
            tol,
            Head::Logits,
            1,
        );
        assert_eq!((s.mismatches, s.non_finite), (1, 0));
    }

    #[test]
    fn non_finite_values_never_pass() {
        // A BatchNorm with a negative running variance makes candle and the
        // graph NaN alike; that must read as a failure, not as no error.
        let nan = f32::NAN;
        for (expected, actual) in [
            (vec![nan, nan], vec![nan, nan]),
            (vec![0.5, 1.0], vec![nan, 1.0]),
            (vec![f32::INFINITY, 1.0], vec![f32::INFINITY, 1.0]),
        ] {
            let s = compare(&t(expected), &t(actual), Tolerance::F32, Head::Sigmoid, 1);
            assert!(!s.passed(), "{s:?}");
            assert!(s.non_finite >= 1 && s.mismatches >= 1, "{s:?}");
            assert_eq!(s.dice, 0.0);
            assert!(s.max_abs.is_infinite());
        }
    }
}
