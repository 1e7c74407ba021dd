//! The two per-channel broadcasts of the network, with one-pass backward
//! passes: a convolution's bias, `x[n, c] + b[c]`, and the attention gate's
//! product, `x[n, c] · a[n, 0]` with a one-channel `a`.
//!
//! candle differentiates a broadcast by summing the gradient over the
//! broadcast dims with its generic strided reduction, on one thread: in an
//! Attention U-Net's training step those sums took a tenth of the time.
//! Here every sum reads contiguous planes, on the pool.

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{slice, with_data, Elem};

/// Pixels of a plane summed per task of the gate's backward pass.
const PIXELS_PER_TASK: usize = 4096;

/// `[N, C, H, W]` as (images, channels, pixels per plane).
fn planes(dims: &[usize], op: &str) -> Result<(usize, usize, usize)> {
    match dims {
        &[n, c, h, w] => Ok((n, c, h * w)),
        _ => bail!("{op}: NCHW input expected, got {dims:?}"),
    }
}

/// Applies `f` to two CPU storages of one element type (f32 or f64).
macro_rules! with_pair {
    ($name:expr, ($s1:expr, $l1:expr), ($s2:expr, $l2:expr), |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let ($a, $b) = (
                    slice::<f32>($s1, $l1, $name)?,
                    slice::<f32>($s2, $l2, $name)?,
                );
                f32::to_cpu_storage_owned($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let ($a, $b) = (
                    slice::<f64>($s1, $l1, $name)?,
                    slice::<f64>($s2, $l2, $name)?,
                );
                f64::to_cpu_storage_owned($body)
            }
            _ => bail!("{}: f32 or f64 operands of one type", $name),
        }
    };
}

/// `x [N, C, H, W] + b [C]`.
struct ChannelBias;

impl ChannelBias {
    fn forward<T: Elem>(x: &[T], b: &[T], pixels: usize) -> Vec<T> {
        let mut y = x.to_vec();
        y.par_chunks_mut(pixels.max(1))
            .enumerate()
            .for_each(|(plane, y)| {
                let bias = b[plane % b.len()];
                y.iter_mut().for_each(|v| *v += bias);
            });
        y
    }

    /// `db[c]`: the sum of channel c's planes of `grad`.
    fn bias_grad<T: Elem>(grad: &[T], (n, c, pixels): (usize, usize, usize)) -> Vec<T> {
        (0..c)
            .into_par_iter()
            .map(|ch| {
                let sum: f64 = (0..n)
                    .map(|img| {
                        let plane = &grad[(img * c + ch) * pixels..][..pixels];
                        plane.iter().map(|v| v.f64()).sum::<f64>()
                    })
                    .sum();
                T::of(sum)
            })
            .collect()
    }
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "unet-channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, pixels) = planes(l1.dims(), self.name())?;
        if l2.dims() != [c] {
            bail!("{}: bias {:?} for {c} channels", self.name(), l2.dims());
        }
        let y = with_pair!(self.name(), (s1, l1), (s2, l2), |x, b| Self::forward(
            x, b, pixels
        ));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = planes(x.dims(), self.name())?;
        let db = match grad.dtype() {
            candle_core::DType::F32 => with_data::<f32, _>(grad, |g| {
                Tensor::from_vec(Self::bias_grad(g, dims), b.shape(), &Device::Cpu)
            })?,
            candle_core::DType::F64 => with_data::<f64, _>(grad, |g| {
                Tensor::from_vec(Self::bias_grad(g, dims), b.shape(), &Device::Cpu)
            })?,
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// `x [N, C, H, W] + bias [C]` on the CPU, f32 or f64.
pub fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, ChannelBias)
}

/// `x [N, C, H, W] · a [N, 1, H, W]`, `a` broadcast over the channels.
struct PlaneProduct;

impl PlaneProduct {
    fn forward<T: Elem>(x: &[T], a: &[T], (_, c, pixels): (usize, usize, usize)) -> Vec<T> {
        let mut y = x.to_vec();
        y.par_chunks_mut(pixels.max(1))
            .enumerate()
            .for_each(|(plane, y)| {
                let a = &a[plane / c * pixels..][..pixels];
                y.iter_mut().zip(a).for_each(|(v, &a)| *v *= a);
            });
        y
    }

    /// `dx = grad · a` and `da[n] = Σ_c grad[n, c] · x[n, c]`.
    fn backward<T: Elem>(
        x: &[T],
        a: &[T],
        grad: &[T],
        dims @ (n, c, pixels): (usize, usize, usize),
    ) -> (Vec<T>, Vec<T>) {
        let dx = Self::forward(grad, a, dims);
        let mut da = vec![<T as Elem>::zero(); n * pixels];
        da.par_chunks_mut(pixels.max(1))
            .enumerate()
            .flat_map(|(img, da)| {
                da.par_chunks_mut(PIXELS_PER_TASK)
                    .enumerate()
                    .map(move |(task, da)| (img, task, da))
            })
            .for_each(|(img, task, da)| {
                let start = task * PIXELS_PER_TASK;
                for ch in 0..c {
                    let at = (img * c + ch) * pixels + start;
                    let (g, x) = (&grad[at..at + da.len()], &x[at..at + da.len()]);
                    for ((d, &g), &x) in da.iter_mut().zip(g).zip(x) {
                        *d += g * x;
                    }
                }
            });
        (dx, da)
    }
}

impl CustomOp2 for PlaneProduct {
    fn name(&self) -> &'static str {
        "unet-plane-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims @ (n, _, pixels) = planes(l1.dims(), self.name())?;
        let d = l1.dims();
        if l2.dims() != [n, 1, d[2], d[3]] {
            bail!("{}: a {:?} for x {d:?}", self.name(), l2.dims());
        }
        debug_assert_eq!(l2.shape().elem_count(), n * pixels);
        let y = with_pair!(self.name(), (s1, l1), (s2, l2), |x, a| Self::forward(
            x, a, dims
        ));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Elem>(x: &Tensor, a: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
            let dims = planes(x.dims(), "unet-plane-product")?;
            with_data::<T, _>(x, |xs| {
                with_data::<T, _>(a, |av| {
                    with_data::<T, _>(grad, |g| {
                        let (dx, da) = PlaneProduct::backward(xs, av, g, dims);
                        Ok((
                            Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
                            Tensor::from_vec(da, a.shape(), &Device::Cpu)?,
                        ))
                    })
                })
            })
        }
        let (dx, da) = match x.dtype() {
            candle_core::DType::F32 => run::<f32>(x, a, grad)?,
            candle_core::DType::F64 => run::<f64>(x, a, grad)?,
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(dx), Some(da)))
    }
}

/// `x [N, C, H, W] · a [N, 1, H, W]` on the CPU, f32 or f64.
pub fn mul_channel_planes(x: &Tensor, a: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&a.contiguous()?, PlaneProduct)
}
