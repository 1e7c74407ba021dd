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
//!
//! One file per op family: [`conv`] (its 3x3 f32 forward pass and weight
//! gradient by Winograd in [`winograd`]), [`deconv`], [`batchnorm`], [`pool`],
//! [`relu`], [`broadcast`] (bias and attention-gate products); [`matmul`] and
//! [`unary`] are what they share.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor, WithDType};

mod batchnorm;
mod broadcast;
mod conv;
mod deconv;
mod matmul;
mod pool;
mod relu;
mod unary;
mod winograd;

pub use batchnorm::batch_norm_train;
pub use broadcast::{add_channel_bias, mul_channel_planes};
pub use conv::conv2d;
pub use deconv::conv_transpose2x2;
pub use pool::max_pool2x2;
pub use relu::relu;

/// Element types of the kernels (f32, f64); sums are taken in f64.
trait Elem:
    WithDType
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
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
    /// A faster path of the convolution for this type, where it has one.
    fn conv_forward_fast(
        _x: &[Self],
        _weight: &[Self],
        _n: usize,
        _cout: usize,
        _shape: conv::ConvShape,
    ) -> Option<Vec<Self>> {
        None
    }
    /// The weight gradient of [`Self::conv_forward_fast`]'s convolutions.
    fn conv_weight_grad_fast(
        _x: &[Self],
        _grad: &[Self],
        _n: usize,
        _cout: usize,
        _shape: conv::ConvShape,
    ) -> Option<Vec<Self>> {
        None
    }
}
impl Elem for f32 {
    /// 3x3 kernels by Winograd.
    fn conv_forward_fast(
        x: &[f32],
        weight: &[f32],
        n: usize,
        cout: usize,
        shape: conv::ConvShape,
    ) -> Option<Vec<f32>> {
        winograd::winograd_forward(x, weight, n, cout, shape)
    }

    fn conv_weight_grad_fast(
        x: &[f32],
        grad: &[f32],
        n: usize,
        cout: usize,
        shape: conv::ConvShape,
    ) -> Option<Vec<f32>> {
        winograd::winograd_weight_grad(x, grad, n, cout, shape)
    }
}
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
