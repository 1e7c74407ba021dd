//! Training kernels for the CPU with hand-written backward passes.
//!
//! candle 0.11's CPU backward of these layers is the bulk of a training step:
//! the input gradient of a convolution runs its naive `conv_transpose2d`, and
//! BatchNorm and max pooling, composed from broadcast and reduction ops, make
//! a dozen passes over every activation. Each op here computes the same
//! function in one or two passes (the convolution's input gradient becomes a
//! regular im2col convolution with the flipped, transposed kernel). They are
//! used on the CPU only; on CUDA the composed ops of [`crate::layers`] run,
//! and those stay the reference the tests compare these kernels with.
//! f32 and f64 (the finite-difference tests) are supported.

use std::sync::{Arc, Mutex};

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage,
    Tensor, WithDType,
};
use rayon::prelude::*;

/// Element types of the kernels (f32, f64); sums are taken in f64.
trait Elem:
    WithDType + PartialOrd + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    fn zero() -> Self {
        Self::of(0.0)
    }
    fn of(v: f64) -> Self {
        <Self as WithDType>::from_f64(v)
    }
    fn f64(self) -> f64 {
        <Self as WithDType>::to_f64(self)
    }
    fn max(self, other: Self) -> Self {
        if other > self {
            other
        } else {
            self
        }
    }
}
impl Elem for f32 {}
impl Elem for f64 {}

/// The contiguous slice behind a custom op's argument.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => bail!("{op}: non-contiguous input"),
    }
}

/// Runs `f` on the contiguous data of a CPU tensor.
fn with_data<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("cpu kernel on a non-CPU tensor")
    };
    f(slice(cpu, layout, "cpu kernel")?)
}

fn tensor_of(s: &CpuStorage, l: &Layout, op: &str) -> Result<Tensor> {
    match s {
        CpuStorage::F32(_) => Tensor::from_slice(slice::<f32>(s, l, op)?, l.shape(), &Device::Cpu),
        CpuStorage::F64(_) => Tensor::from_slice(slice::<f64>(s, l, op)?, l.shape(), &Device::Cpu),
        _ => bail!("{op}: only f32 and f64 are supported"),
    }
}

fn storage_of(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("cpu kernel on a non-CPU tensor")
    };
    let owned = match cpu {
        CpuStorage::F32(_) => f32::to_cpu_storage_owned(slice::<f32>(cpu, layout, "")?.to_vec()),
        CpuStorage::F64(_) => f64::to_cpu_storage_owned(slice::<f64>(cpu, layout, "")?.to_vec()),
        _ => bail!("cpu kernel: only f32 and f64 are supported"),
    };
    Ok((owned, layout.shape().clone()))
}

/// Stride-1 convolution `x [N, Cin, H, W] * w [Cout, Cin, k, k]` with zero padding.
struct Conv2d {
    padding: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "unet-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = tensor_of(s1, l1, self.name())?;
        let w = tensor_of(s2, l2, self.name())?;
        storage_of(&x.conv2d(&w, self.padding, 1, 1, 1)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, kh, kw) = w.dims4()?;
        if kh != kw || kh < self.padding + 1 {
            bail!(
                "{}: kernel {kh}x{kw} with padding {}",
                self.name(),
                self.padding
            );
        }
        // The adjoint of a stride-1 convolution is the convolution of the
        // gradient with the spatially flipped kernel, in and out swapped.
        let w_adjoint = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
        let grad = grad.contiguous()?;
        let dx = grad.conv2d(&w_adjoint, kh - 1 - self.padding, 1, 1, 1)?;
        // dW[o, i] = sum over batch and pixels of grad[o] * shifted x[i]: a
        // convolution of x (batch and channels swapped) with the gradient.
        let dw = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, self.padding, 1, 1, 1)?
            .transpose(0, 1)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Convolution with an input gradient as fast as its forward pass.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2d { padding })
}

/// A one-input kernel in both element types: the forward pass, and the
/// input gradient from a saved tensor (the op's input or output) and the
/// output gradient. `dims` are the input's NCHW dims.
trait UnaryKernel {
    /// Whether `backward` takes the op's output (else its input).
    const BACKWARD_FROM_OUTPUT: bool;
    fn name(&self) -> &'static str;
    fn output_dims(&self, dims: &[usize]) -> Vec<usize>;
    fn forward<T: Elem>(&self, x: &[T], dims: &[usize]) -> Vec<T>;
    fn backward<T: Elem>(&self, saved: &[T], grad: &[T], dims: &[usize]) -> Vec<T>;
}

/// The candle op of a [`UnaryKernel`].
struct Unary<K>(K);

impl<K: UnaryKernel> CustomOp1 for Unary<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        unary_fwd(&self.0, s, l)
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let saved = if K::BACKWARD_FROM_OUTPUT { res } else { x };
        unary_bwd(&self.0, x, saved, grad).map(Some)
    }
}

fn unary_fwd<K: UnaryKernel>(k: &K, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let dims = l.shape().dims();
    let out = match s {
        CpuStorage::F32(_) => f32::to_cpu_storage_owned(k.forward(slice(s, l, k.name())?, dims)),
        CpuStorage::F64(_) => f64::to_cpu_storage_owned(k.forward(slice(s, l, k.name())?, dims)),
        _ => bail!("{}: only f32 and f64 are supported", k.name()),
    };
    Ok((out, Shape::from(k.output_dims(dims))))
}

fn unary_bwd<K: UnaryKernel>(k: &K, x: &Tensor, saved: &Tensor, grad: &Tensor) -> Result<Tensor> {
    fn run<T: Elem, K: UnaryKernel>(
        k: &K,
        x: &Tensor,
        saved: &Tensor,
        grad: &Tensor,
    ) -> Result<Tensor> {
        with_data::<T, _>(saved, |s| {
            with_data::<T, _>(grad, |g| {
                Tensor::from_vec(k.backward(s, g, x.dims()), x.shape(), &Device::Cpu)
            })
        })
    }
    match x.dtype() {
        candle_core::DType::F32 => run::<f32, K>(k, x, saved, grad),
        candle_core::DType::F64 => run::<f64, K>(k, x, saved, grad),
        dt => bail!("{}: unsupported dtype {dt:?}", k.name()),
    }
}

/// 2x2 stride-2 max pooling; the gradient goes to the first maximum of each
/// window, as PyTorch's; odd trailing rows and columns are dropped.
struct MaxPool2x2;

impl UnaryKernel for MaxPool2x2 {
    const BACKWARD_FROM_OUTPUT: bool = false;

    fn name(&self) -> &'static str {
        "unet-max-pool2x2"
    }

    fn output_dims(&self, d: &[usize]) -> Vec<usize> {
        vec![d[0], d[1], d[2] / 2, d[3] / 2]
    }

    fn forward<T: Elem>(&self, x: &[T], d: &[usize]) -> Vec<T> {
        let (h, w) = (d[2], d[3]);
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![<T as Elem>::zero(); d[0] * d[1] * ho * wo];
        out.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(out, x)| {
                for y in 0..ho {
                    let (r0, r1) = (&x[2 * y * w..], &x[(2 * y + 1) * w..]);
                    for (xo, o) in out[y * wo..(y + 1) * wo].iter_mut().enumerate() {
                        let c = 2 * xo;
                        *o = Elem::max(Elem::max(r0[c], r0[c + 1]), Elem::max(r1[c], r1[c + 1]));
                    }
                }
            });
        out
    }

    fn backward<T: Elem>(&self, x: &[T], grad: &[T], d: &[usize]) -> Vec<T> {
        let (h, w) = (d[2], d[3]);
        let (ho, wo) = (h / 2, w / 2);
        let mut dx = vec![<T as Elem>::zero(); x.len()];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(grad.par_chunks(ho * wo))
            .for_each(|((dx, x), g)| {
                for y in 0..ho {
                    for xo in 0..wo {
                        let top = 2 * y * w + 2 * xo;
                        // First maximum in row-major order, as PyTorch's argmax.
                        let mut best = top;
                        for i in [top + 1, top + w, top + w + 1] {
                            if x[i] > x[best] {
                                best = i;
                            }
                        }
                        dx[best] = g[y * wo + xo];
                    }
                }
            });
        dx
    }
}

pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary(MaxPool2x2))
}

/// `max(x, 0)`; the gradient passes where the output is positive (candle's
/// own ReLU backward builds a zeros tensor, a mask and a cast first).
struct Relu;

impl UnaryKernel for Relu {
    const BACKWARD_FROM_OUTPUT: bool = true;

    fn name(&self) -> &'static str {
        "unet-relu"
    }

    fn output_dims(&self, dims: &[usize]) -> Vec<usize> {
        dims.to_vec()
    }

    fn forward<T: Elem>(&self, x: &[T], _: &[usize]) -> Vec<T> {
        let zero = <T as Elem>::zero();
        x.par_iter()
            .map(|&v| if v > zero { v } else { zero })
            .collect()
    }

    fn backward<T: Elem>(&self, y: &[T], grad: &[T], _: &[usize]) -> Vec<T> {
        let zero = <T as Elem>::zero();
        y.par_iter()
            .zip(grad.par_iter())
            .map(|(&y, &g)| if y > zero { g } else { zero })
            .collect()
    }
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary(Relu))
}

/// Per-channel mean and biased variance of the last training forward pass.
type ChannelStats = Arc<Mutex<(Vec<f64>, Vec<f64>)>>;

/// Training-mode BatchNorm `(x - mean) / sqrt(var + eps) * weight + bias`
/// over batch statistics, differentiated through the statistics.
struct BatchNormTrain {
    eps: f64,
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
        });
    (y, mean, var)
}

/// Gradients of [`bn_fwd`]: with x̂ the normalised input and M = N·H·W,
/// dβ = Σ g, dγ = Σ g·x̂, dx = γ/σ · (g − dβ/M − x̂·dγ/M).
fn bn_bwd<T: Elem>(
    x: &[T],
    grad: &[T],
    weight: &[T],
    (mean, var): (&[f64], &[f64]),
    (n, c, hw): (usize, usize, usize),
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let count = (n * hw) as f64;
    let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let inv_std = 1.0 / (var[ch] + eps).sqrt();
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for b in 0..n {
                let at = (b * c + ch) * hw;
                for (&g, &x) in grad[at..at + hw].iter().zip(&x[at..at + hw]) {
                    let g = g.f64();
                    sum_g += g;
                    sum_gx += g * (x.f64() - mean[ch]) * inv_std;
                }
            }
            (sum_g, sum_gx)
        })
        .unzip();
    let mut dx = vec![<T as Elem>::zero(); x.len()];
    dx.par_chunks_mut(hw)
        .zip(x.par_chunks(hw).zip(grad.par_chunks(hw)))
        .enumerate()
        .for_each(|(plane, (dx, (x, g)))| {
            let ch = plane % c;
            let inv_std = 1.0 / (var[ch] + eps).sqrt();
            let k = weight[ch].f64() * inv_std;
            // dx = k·g − k·dβ/M − k·dγ/M · (x − mean)·inv_std, as a·g + b·x + d.
            let b_coef = -k * dgamma[ch] / count * inv_std;
            let d = -k * dbeta[ch] / count - b_coef * mean[ch];
            let (k, b_coef, d) = (T::of(k), T::of(b_coef), T::of(d));
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                *dx = k * g + b_coef * x + d;
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
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let dims = (n, c, h * w);
        let stats = self.stats.lock().expect("stats lock");
        let (mean, var) = (stats.0.as_slice(), stats.1.as_slice());
        fn run<T: Elem>(
            x: &Tensor,
            grad: &Tensor,
            weight: &Tensor,
            stats: (&[f64], &[f64]),
            dims: (usize, usize, usize),
            eps: f64,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            with_data::<T, _>(x, |xs| {
                with_data::<T, _>(grad, |g| {
                    with_data::<T, _>(weight, |wt| {
                        let (dx, dgamma, dbeta) = bn_bwd(xs, g, wt, stats, dims, eps);
                        let c = dims.1;
                        Ok((
                            Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
                            Tensor::from_vec(dgamma, c, &Device::Cpu)?,
                            Tensor::from_vec(dbeta, c, &Device::Cpu)?,
                        ))
                    })
                })
            })
        }
        let (dx, dgamma, dbeta) = match x.dtype() {
            candle_core::DType::F32 => run::<f32>(x, grad, weight, (mean, var), dims, self.eps)?,
            candle_core::DType::F64 => run::<f64>(x, grad, weight, (mean, var), dims, self.eps)?,
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Training-mode BatchNorm; returns the output and the batch's per-channel
/// mean and biased variance.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let stats: ChannelStats = Arc::default();
    let op = BatchNormTrain {
        eps,
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
