//! Training-mode BatchNorm over batch statistics, ReLU optionally fused.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{slice, with_data, Elem};

/// Per-channel mean and biased variance of the last training forward pass.
type ChannelStats = Arc<Mutex<(Vec<f64>, Vec<f64>)>>;

/// Training-mode BatchNorm `(x - mean) / sqrt(var + eps) * weight + bias`
/// over batch statistics, differentiated through the statistics, with the
/// ReLU that follows it in every U-Net block optionally fused: one op instead
/// of two saves an activation-sized tensor, a pass each way and the zero-fill
/// and sum candle's backward spends on every op's input gradient.
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    stats: ChannelStats,
}

/// Mean and biased variance per channel (two passes, f64 sums).
fn channel_stats<T: Elem>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let count = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
            let sum: f64 = planes()
                .map(|p| p.iter().map(|v| v.f64()).sum::<f64>())
                .sum();
            let mean = sum / count;
            let sq: f64 = planes()
                .map(|p| p.iter().map(|v| (v.f64() - mean).powi(2)).sum::<f64>())
                .sum();
            (mean, sq / count)
        })
        .unzip()
}

fn bn_fwd<T: Elem>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    (n, c, hw): (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let (mean, var) = channel_stats(x, n, c, hw);
    let mut y = vec![<T as Elem>::zero(); x.len()];
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, (y, x))| {
            let ch = plane % c;
            let scale = weight[ch].f64() / (var[ch] + eps).sqrt();
            let shift = bias[ch].f64() - mean[ch] * scale;
            let (scale, shift) = (T::of(scale), T::of(shift));
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * scale + shift;
            }
            if relu {
                let zero = <T as Elem>::zero();
                for y in y.iter_mut() {
                    *y = if *y > zero { *y } else { zero };
                }
            }
        });
    (y, mean, var)
}

/// Gradients of [`bn_fwd`]: with x̂ the normalised input and M = N·H·W,
/// dβ = Σ g, dγ = Σ g·x̂, dx = γ/σ · (g − dβ/M − x̂·dγ/M). With a fused ReLU,
/// `relu_out` is the op's output and g is zero wherever it is.
#[allow(clippy::too_many_arguments)]
fn bn_bwd<T: Elem>(
    x: &[T],
    grad: &[T],
    relu_out: Option<&[T]>,
    weight: &[T],
    (mean, var): (&[f64], &[f64]),
    (n, c, hw): (usize, usize, usize),
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    // dx starts as the gradient reaching the normalisation (zero where a fused
    // ReLU cut) and becomes the input gradient in place: no second buffer.
    let zero = <T as Elem>::zero();
    let mut dx: Vec<T> = match relu_out {
        Some(y) => grad
            .par_iter()
            .zip(y.par_iter())
            .map(|(&g, &y)| if y > zero { g } else { zero })
            .collect(),
        None => grad.to_vec(),
    };
    let count = (n * hw) as f64;
    let g = &dx;
    let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let inv_std = 1.0 / (var[ch] + eps).sqrt();
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for b in 0..n {
                let at = (b * c + ch) * hw;
                for (&g, &x) in g[at..at + hw].iter().zip(&x[at..at + hw]) {
                    let g = g.f64();
                    sum_g += g;
                    sum_gx += g * (x.f64() - mean[ch]) * inv_std;
                }
            }
            (sum_g, sum_gx)
        })
        .unzip();
    dx.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, (dx, x))| {
            let ch = plane % c;
            let inv_std = 1.0 / (var[ch] + eps).sqrt();
            let k = weight[ch].f64() * inv_std;
            // dx = k·g − k·dβ/M − k·dγ/M · (x − mean)·inv_std, as a·g + b·x + d.
            let b_coef = -k * dgamma[ch] / count * inv_std;
            let d = -k * dbeta[ch] / count - b_coef * mean[ch];
            let (k, b_coef, d) = (T::of(k), T::of(b_coef), T::of(d));
            for (dx, &x) in dx.iter_mut().zip(x) {
                *dx = k * *dx + b_coef * x + d;
            }
        });
    let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
    (dx, cast(dgamma), cast(dbeta))
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "unet-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let dims = (n, c, h * w);
        let name = self.name();
        let (y, mean, var) = match s1 {
            CpuStorage::F32(_) => {
                let (y, m, v) = bn_fwd::<f32>(
                    slice(s1, l1, name)?,
                    slice(s2, l2, name)?,
                    slice(s3, l3, name)?,
                    dims,
                    self.eps,
                    self.relu,
                );
                (f32::to_cpu_storage_owned(y), m, v)
            }
            CpuStorage::F64(_) => {
                let (y, m, v) = bn_fwd::<f64>(
                    slice(s1, l1, name)?,
                    slice(s2, l2, name)?,
                    slice(s3, l3, name)?,
                    dims,
                    self.eps,
                    self.relu,
                );
                (f64::to_cpu_storage_owned(y), m, v)
            }
            _ => bail!("{name}: only f32 and f64 are supported"),
        };
        *self.stats.lock().expect("stats lock") = (mean, var);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let dims = (n, c, h * w);
        let stats = self.stats.lock().expect("stats lock");
        let (mean, var) = (stats.0.as_slice(), stats.1.as_slice());
        let relu_out = self.relu.then_some(res);
        fn run<T: Elem>(
            x: &Tensor,
            grad: &Tensor,
            relu_out: Option<&Tensor>,
            weight: &Tensor,
            stats: (&[f64], &[f64]),
            dims: (usize, usize, usize),
            eps: f64,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let bwd = |xs: &[T], g: &[T], y: Option<&[T]>| {
                with_data::<T, _>(weight, |wt| {
                    let (dx, dgamma, dbeta) = bn_bwd(xs, g, y, wt, stats, dims, eps);
                    let c = dims.1;
                    Ok((
                        Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
                        Tensor::from_vec(dgamma, c, &Device::Cpu)?,
                        Tensor::from_vec(dbeta, c, &Device::Cpu)?,
                    ))
                })
            };
            with_data::<T, _>(x, |xs| {
                with_data::<T, _>(grad, |g| match relu_out {
                    Some(y) => with_data::<T, _>(y, |y| bwd(xs, g, Some(y))),
                    None => bwd(xs, g, None),
                })
            })
        }
        let stats = (mean, var);
        let (dx, dgamma, dbeta) = match x.dtype() {
            candle_core::DType::F32 => {
                run::<f32>(x, grad, relu_out, weight, stats, dims, self.eps)?
            }
            candle_core::DType::F64 => {
                run::<f64>(x, grad, relu_out, weight, stats, dims, self.eps)?
            }
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Training-mode BatchNorm, followed by a ReLU if `relu`; returns the output
/// and the batch's per-channel mean and biased variance.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let stats: ChannelStats = Arc::default();
    let op = BatchNormTrain {
        eps,
        relu,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let guard = stats.lock().expect("stats lock");
    let c = guard.0.len();
    let mean = Tensor::from_slice(&guard.0, c, &Device::Cpu)?.to_dtype(x.dtype())?;
    let var = Tensor::from_slice(&guard.1, c, &Device::Cpu)?.to_dtype(x.dtype())?;
    Ok((y, mean, var))
}
