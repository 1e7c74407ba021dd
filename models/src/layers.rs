//! Candle implementations of the primitive ops of [`crate::arch::Op`] that
//! candle lacks or implements without a backward pass. All tensors are NCHW.

use candle_core::{DType, Device, Tensor, D};

use crate::cpu_kernels;

/// PyTorch's BatchNorm defaults.
pub const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPS: f64 = 1e-5;

/// Whether [`cpu_kernels`] covers `x`: CPU tensors in f32 or f64. Mixed-precision
/// (bf16/f16) CPU tensors take candle's own ops.
fn has_cpu_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whether `x` is a half-precision (mixed precision) CPU tensor: candle's CPU
/// convolutions lack bf16/f16, so [`cpu_kernels`] run on it widened to f32 and
/// the result is rounded back, i.e. half-precision storage with f32
/// accumulation, as GPU tensor cores compute.
fn is_half_on_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::BF16 | DType::F16)
}

/// Runs a binary f32 CPU kernel on half-precision operands (see [`is_half_on_cpu`]).
fn widened(
    x: &Tensor,
    w: &Tensor,
    kernel: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    kernel(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
}

/// Convolution plus optional bias, stride 1.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let kernel = |x: &Tensor, w: &Tensor| cpu_kernels::conv2d(x, w, padding);
    let y = if has_cpu_kernel(x) {
        kernel(x, weight)?
    } else if is_half_on_cpu(x) {
        widened(x, weight, kernel)?
    } else {
        x.conv2d(weight, padding, 1, 1, 1)?
    };
    add_channel_bias(y, bias)
}

/// 2x2 stride-2 transposed convolution; `weight [in, out, 2, 2]` as PyTorch.
pub fn conv_transpose2x2(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    let y = if has_cpu_kernel(x) {
        cpu_kernels::conv_transpose2x2(x, weight)?
    } else if is_half_on_cpu(x) {
        widened(x, weight, cpu_kernels::conv_transpose2x2)?
    } else {
        x.conv_transpose2d(weight, 0, 0, 2, 1)?
    };
    add_channel_bias(y, Some(bias))
}

fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let Some(b) = bias else { return Ok(y) };
    // [C] -> [1, C, 1, 1]
    let b = b.reshape((1, (), 1, 1))?;
    if matches!(y.dtype(), DType::BF16 | DType::F16) {
        // The bias gradient sums N*H*W values: accumulated in half precision it
        // loses most of its digits, so the add (and its backward) runs in f32.
        let half = y.dtype();
        return y
            .to_dtype(DType::F32)?
            .broadcast_add(&b.to_dtype(DType::F32)?)?
            .to_dtype(half);
    }
    if has_cpu_kernel(&y) {
        return cpu_kernels::add_channel_bias(&y, &b.flatten_all()?);
    }
    y.broadcast_add(&b)
}

/// `x [N, C, H, W] · a [N, 1, H, W]`, `a` broadcast over the channels (the
/// attention gate).
pub fn mul_channel_planes(x: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
    if has_cpu_kernel(x) {
        cpu_kernels::mul_channel_planes(x, a)
    } else {
        x.broadcast_mul(a)
    }
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if has_cpu_kernel(x) {
        cpu_kernels::relu(x)
    } else {
        x.relu()
    }
}

/// 2x2 max pooling, stride 2, with a correct gradient.
///
/// candle 0.11's `max_pool2d` backward multiplies the gradient by the mean of
/// the argmax mask (1/4 for a unique maximum) instead of dividing by the tie
/// count, shrinking gradients 4x per pooling level. Here the max is selected
/// with a constant mask, so autograd routes the gradient to the maximum (split
/// evenly between ties) through `avg_pool2d`, whose backward is exact.
pub fn max_pool2x2(x: &Tensor) -> candle_core::Result<Tensor> {
    if has_cpu_kernel(x) {
        cpu_kernels::max_pool2x2(x)
    } else {
        max_pool2x2_composed(x)
    }
}

/// [`max_pool2x2`] from candle ops (any device); ties share the gradient.
pub fn max_pool2x2_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let constant = x.detach();
    let max = constant.max_pool2d(2)?;
    // [N, C, H/2, W/2] -> [N, C, H, W] (odd trailing rows/columns never win)
    let max_up = max.upsample_nearest2d(2 * (h / 2), 2 * (w / 2))?;
    let constant = constant
        .narrow(2, 0, 2 * (h / 2))?
        .narrow(3, 0, 2 * (w / 2))?;
    let is_max = constant.eq(&max_up)?.to_dtype(x.dtype())?;
    let ties = (is_max.avg_pool2d(2)? * 4.0)?;
    let x = x.narrow(2, 0, 2 * (h / 2))?.narrow(3, 0, 2 * (w / 2))?;
    ((x * is_max)?.avg_pool2d(2)? * 4.0)?.div(&ties)
}

/// Batch statistics of a training-mode BatchNorm, for the running-stat update.
pub struct BatchStats {
    pub mean: Tensor,
    /// Unbiased (n - 1) variance, as PyTorch uses for `running_var`.
    pub unbiased_var: Tensor,
}

/// BatchNorm in eval mode: `(x - running_mean) / sqrt(running_var + eps) * weight + bias`.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> candle_core::Result<Tensor> {
    let scale = (weight / (running_var + BN_EPS)?.sqrt()?)?;
    let shift = (bias - (running_mean * &scale)?)?;
    // [C] -> [1, C, 1, 1]
    x.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?
        .broadcast_add(&shift.reshape((1, (), 1, 1))?)
}

/// BatchNorm in training mode: normalises with the biased batch variance
/// (differentiably) and returns the detached statistics for the running update.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<(Tensor, BatchStats)> {
    batch_norm_train_then(x, weight, bias, false)
}

/// [`batch_norm_train`] followed by a ReLU, fused into one op on the CPU.
pub fn batch_norm_relu_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<(Tensor, BatchStats)> {
    batch_norm_train_then(x, weight, bias, true)
}

fn batch_norm_train_then(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    relu: bool,
) -> candle_core::Result<(Tensor, BatchStats)> {
    if !has_cpu_kernel(x) {
        let (y, stats) = batch_norm_train_composed(x, weight, bias)?;
        return Ok((if relu { y.relu()? } else { y }, stats));
    }
    let (n, _, h, w) = x.dims4()?;
    let (y, mean, var) = cpu_kernels::batch_norm_train(x, weight, bias, BN_EPS, relu)?;
    let stats = BatchStats {
        mean,
        unbiased_var: (var * bessel_correction(n * h * w))?,
    };
    Ok((y, stats))
}

fn bessel_correction(count: usize) -> f64 {
    if count > 1 {
        count as f64 / (count - 1) as f64
    } else {
        1.0
    }
}

/// [`batch_norm_train`] from candle ops (any device).
pub fn batch_norm_train_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<(Tensor, BatchStats)> {
    let (n, c, h, w) = x.dims4()?;
    let count = n * h * w;
    // [N, C, H, W] -> [C, N*H*W] so the statistics are one reduction per channel.
    let flat = x.transpose(0, 1)?.reshape((c, count))?;
    let mean = flat.mean(D::Minus1)?;
    let centred = flat.broadcast_sub(&mean.unsqueeze(1)?)?;
    let var = centred.sqr()?.mean(D::Minus1)?;
    let inv_std = (var.clone() + BN_EPS)?.sqrt()?.recip()?;
    let scale = (weight * &inv_std)?;
    let y = x
        .broadcast_sub(&mean.reshape((1, c, 1, 1))?)?
        .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    let stats = BatchStats {
        mean: mean.detach(),
        unbiased_var: (var.detach() * bessel_correction(count))?,
    };
    Ok((y, stats))
}

/// `(1 - momentum) * running + momentum * batch`, PyTorch's update rule.
pub fn momentum_update(running: &Tensor, batch: &Tensor) -> candle_core::Result<Tensor> {
    (running * (1.0 - BN_MOMENTUM))? + (batch * BN_MOMENTUM)?
}

/// `[out, in]` interpolation matrix of 1-D linear x2 upsampling, as PyTorch's
/// `F.interpolate(mode="bilinear", scale_factor=2)` computes it per axis.
pub fn linear_upsample_matrix(n: usize, align_corners: bool) -> Vec<f32> {
    let out = 2 * n;
    let mut m = vec![0f32; out * n];
    for i in 0..out {
        let src = if align_corners {
            if out > 1 {
                i as f64 * (n as f64 - 1.0) / (out as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            ((i as f64 + 0.5) * 0.5 - 0.5).max(0.0)
        };
        let lo = (src.floor() as usize).min(n - 1);
        let hi = (lo + 1).min(n - 1);
        let frac = (src - lo as f64) as f32;
        m[i * n + lo] += 1.0 - frac;
        m[i * n + hi] += frac;
    }
    m
}

/// Bilinear x2 upsampling as two matmuls with constant interpolation matrices,
/// so it is differentiable (candle's `upsample_bilinear2d` has no backward).
pub fn upsample_bilinear2x(x: &Tensor, align_corners: bool) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let a_h = matrix(linear_upsample_matrix(h, align_corners), (2 * h, h), x)?;
    let a_w_t = matrix(linear_upsample_matrix(w, align_corners), (2 * w, w), x)?.t()?;
    // [N, C, H, W] x [W, 2W] -> [N, C, H, 2W]
    let y = x.reshape((n * c * h, w))?.matmul(&a_w_t)?;
    // [2H, H] x [N*C, H, 2W] -> [N*C, 2H, 2W]
    let y = y.reshape((n * c, h, 2 * w))?;
    let y = a_h
        .unsqueeze(0)?
        .broadcast_as((n * c, 2 * h, h))?
        .matmul(&y)?;
    y.reshape((n, c, 2 * h, 2 * w))
}

/// A constant matrix on `like`'s device and in its dtype.
fn matrix(data: Vec<f32>, shape: (usize, usize), like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, like.device())?.to_dtype(like.dtype())
}

/// Central crop of `x` to `h x w`, offset `(size - target) / 2` rounded down
/// (the difference is always even for sizes the `valid` graph accepts).
pub fn center_crop(x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    let top = (xh - h) / 2;
    let left = (xw - w) / 2;
    x.narrow(2, top, h)?.narrow(3, left, w)
}

/// Inverted dropout with a caller-provided keep mask drawn from the model's seeded RNG.
pub fn dropout_with_mask(x: &Tensor, keep: &[f32], p: f32) -> candle_core::Result<Tensor> {
    let mask = Tensor::from_slice(keep, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    (x * mask)? * (1.0 / (1.0 - p as f64))
}

/// Cast helper for the i64 `num_batches_tracked` counter.
pub fn scalar_i64(v: i64, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::new(v, device)?.to_dtype(DType::I64)
}
