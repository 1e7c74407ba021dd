//! The candle op around a one-input kernel (max pooling, ReLU), in both
//! element types.

use candle_core::{bail, CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, WithDType};

use super::{slice, with_data, Elem};

/// A one-input kernel in both element types: the forward pass, and the
/// input gradient from a saved tensor (the op's input or output) and the
/// output gradient. `dims` are the input's NCHW dims.
pub(super) trait UnaryKernel {
    /// Whether `backward` takes the op's output (else its input).
    const BACKWARD_FROM_OUTPUT: bool;
    fn name(&self) -> &'static str;
    fn output_dims(&self, dims: &[usize]) -> Vec<usize>;
    fn forward<T: Elem>(&self, x: &[T], dims: &[usize]) -> Vec<T>;
    fn backward<T: Elem>(&self, saved: &[T], grad: &[T], dims: &[usize]) -> Vec<T>;
}

/// The candle op of a [`UnaryKernel`].
pub(super) struct Unary<K>(pub(super) K);

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
