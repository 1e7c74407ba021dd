//! The check's inputs: seeded standard-normal batches and synthetic frames at
//! sizes the network accepts, and the candle forward pass that gives the
//! reference outputs.
//!
//! The synthetic-frame generator here is the exporter's only one; the
//! trainer's (`unet-train --demo`) draws different, square frames with masks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use unet_models::candle_core::{Device, Tensor};
use unet_models::config::Padding;
use unet_models::{Graph, Preprocessing, UNet};

use super::OnnxInfo;
use crate::error::Result;
use crate::runner::Tensor4 as Nchw;

/// One input batch of the check, in the network's (normalised) input space.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub input: Nchw,
}

/// Two input sizes the network accepts: a small square one and a larger
/// non-square one, so a transposed H/W or a size-dependent crop shows up.
pub fn default_sizes(graph: &Graph) -> Vec<(usize, usize)> {
    match graph.config.padding {
        Padding::Same => {
            let m = graph.config.size_multiple();
            let a = 64usize.div_ceil(m).max(2) * m;
            vec![(a, a), (a + m, a + 2 * m)]
        }
        Padding::Valid => {
            let next = |n: usize| graph.nearest_sizes(n).1.unwrap_or(n);
            let a = next(1);
            let b = next(a + 1);
            let c = next(b + 1);
            vec![(a, a), (b, c)]
        }
    }
}

/// Seeded standard-normal inputs and synthetic frames (ellipses on a shaded
/// background, normalised with `pre`) at every size, `batch` images each.
pub fn make_cases(
    in_channels: usize,
    pre: &Preprocessing,
    sizes: &[(usize, usize)],
    batch: usize,
    seed: u64,
) -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cases = Vec::new();
    for &(h, w) in sizes {
        let shape = [batch, in_channels, h, w];
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        cases.push(Case {
            name: format!("random {h}x{w}"),
            input: Nchw { data, shape },
        });
        let mut data = Vec::with_capacity(n);
        for _ in 0..batch {
            data.extend(synthetic_frame(&mut rng, in_channels, h, w, pre));
        }
        cases.push(Case {
            name: format!("frames {h}x{w}"),
            input: Nchw { data, shape },
        });
    }
    cases
}

/// A frame like an endoscopy image: a vignetted reddish background with a few
/// brighter elliptical blobs; values in [0, 1] then normalised.
fn synthetic_frame(
    rng: &mut ChaCha8Rng,
    channels: usize,
    h: usize,
    w: usize,
    pre: &Preprocessing,
) -> Vec<f32> {
    let base: Vec<f32> = (0..channels)
        .map(|c| [0.75, 0.35, 0.3][c % 3] + rng.random_range(-0.1..0.1))
        .collect();
    let blobs: Vec<(f32, f32, f32, f32, f32)> = (0..rng.random_range(1..4))
        .map(|_| {
            (
                rng.random_range(0.0..h as f32),
                rng.random_range(0.0..w as f32),
                rng.random_range(0.1..0.35) * h as f32,
                rng.random_range(0.1..0.35) * w as f32,
                rng.random_range(0.15..0.3),
            )
        })
        .collect();
    let mut out = vec![0f32; channels * h * w];
    for y in 0..h {
        for x in 0..w {
            let dy = y as f32 / h as f32 - 0.5;
            let dx = x as f32 / w as f32 - 0.5;
            let vignette = 1.0 - 0.8 * (dx * dx + dy * dy);
            let mut lift = 0.0;
            for &(cy, cx, ry, rx, amount) in &blobs {
                let d = ((y as f32 - cy) / ry).powi(2) + ((x as f32 - cx) / rx).powi(2);
                if d < 1.0 {
                    lift += amount * (1.0 - d);
                }
            }
            let noise: f32 = rng.random_range(-0.02..0.02);
            for c in 0..channels {
                let v = ((base[c] + lift) * vignette + noise).clamp(0.0, 1.0);
                let mean = pre.mean.get(c).copied().unwrap_or(0.0);
                let std = pre.std.get(c).copied().unwrap_or(1.0);
                out[(c * h + y) * w + x] = (v - mean) / std;
            }
        }
    }
    out
}

/// The cases for a file: its fixed shape if it has one, else two sizes at batch 2.
pub fn cases_for(graph: &Graph, pre: &Preprocessing, info: &OnnxInfo, seed: u64) -> Vec<Case> {
    let sizes = match info.spatial {
        Some(hw) => vec![hw],
        None => default_sizes(graph),
    };
    let batch = info.batch.unwrap_or(2);
    make_cases(graph.config.in_channels, pre, &sizes, batch, seed)
}

/// The candle forward pass (eval mode) on the CPU.
pub fn candle_logits(model: &UNet, input: &Nchw) -> Result<Nchw> {
    let x = Tensor::from_slice(&input.data, input.shape.as_slice(), &Device::Cpu)?
        .to_device(model.device())?;
    let y = model.forward(&x)?;
    let shape: [usize; 4] = y.dims4()?.into();
    let data = y.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    Ok(Nchw { data, shape })
}

/// Network-space input back to pixels in [0, 1] for a graph that normalises itself.
pub(crate) fn denormalize(x: &Nchw, pre: &Preprocessing) -> Nchw {
    let [_, c, h, w] = x.shape;
    let hw = h * w;
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let k = (i / hw) % c;
            v * pre.std.get(k).copied().unwrap_or(1.0) + pre.mean.get(k).copied().unwrap_or(0.0)
        })
        .collect();
    Nchw {
        data,
        shape: x.shape,
    }
}
