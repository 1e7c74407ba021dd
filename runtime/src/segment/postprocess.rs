//! Network output to a result: sigmoid or softmax into probabilities, then
//! threshold (binary) or argmax into a mask.

use unet_spec::{Head, ModelInfo};

use super::Segmentation;
use crate::session::Tensor4;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Probabilities `[classes, h, w]` of batch item `n` from the output window
/// at `(y0, x0)`.
pub(super) fn probabilities(
    info: &ModelInfo,
    output: &Tensor4,
    n: usize,
    (y0, x0): (usize, usize),
    (h, w): (usize, usize),
) -> (usize, Vec<f32>) {
    let c = output.shape[1];
    let classes = match info.head {
        Head::Argmax => info.out_channels.unwrap_or(2).max(2),
        _ => c,
    };
    let mut probs = vec![0.0f32; classes * h * w];
    for y in 0..h {
        for x in 0..w {
            let at = |ch: usize| output.data[output.index(n, ch, y0 + y, x0 + x)];
            let dst = |ch: usize| (ch * h + y) * w + x;
            match (info.head, c) {
                (Head::Argmax, _) => {
                    let k = (at(0).round().max(0.0) as usize).min(classes - 1);
                    probs[dst(k)] = 1.0;
                }
                (Head::Logits, 1) => probs[dst(0)] = sigmoid(at(0)),
                (Head::Logits, _) => {
                    let max = (0..c).map(at).fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for ch in 0..c {
                        let e = (at(ch) - max).exp();
                        probs[dst(ch)] = e;
                        sum += e;
                    }
                    for ch in 0..c {
                        probs[dst(ch)] /= sum;
                    }
                }
                (Head::Sigmoid | Head::Softmax, _) => {
                    for ch in 0..c {
                        probs[dst(ch)] = at(ch);
                    }
                }
            }
        }
    }
    (classes, probs)
}

/// Thresholds (one class) or argmaxes (several) the probabilities.
pub(super) fn finish(
    threshold: f32,
    classes: usize,
    probabilities: Vec<f32>,
    h: usize,
    w: usize,
) -> Segmentation {
    let plane = h * w;
    let mask = if classes == 1 {
        probabilities
            .iter()
            .map(|&p| u8::from(p > threshold))
            .collect()
    } else {
        (0..plane)
            .map(|i| {
                let mut best = 0;
                for k in 1..classes {
                    if probabilities[k * plane + i] > probabilities[best * plane + i] {
                        best = k;
                    }
                }
                best.min(255) as u8
            })
            .collect()
    };
    Segmentation {
        width: w,
        height: h,
        classes,
        probabilities,
        mask,
    }
}
