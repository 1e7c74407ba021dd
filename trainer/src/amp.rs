//! Mixed precision: the `--precision` choice and, for f16, dynamic loss scaling
//! as PyTorch's `GradScaler` does it. The loss is multiplied by `scale` so small
//! gradients survive f16's narrow range; gradients are divided by it again
//! before the update; a step whose gradients overflowed is skipped and halves
//! the scale, and `GROWTH_INTERVAL` clean steps in a row double it.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use unet_models::candle_core::{DType, Tensor};

use crate::error::Result;

/// Numeric precision of the forward and backward passes. The weights, the
/// optimiser and BatchNorm stay f32 in every mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16 activations and convolutions: f32's range, no loss scaling needed.
    Bf16,
    /// float16 activations and convolutions, with dynamic loss scaling.
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// A fresh scaler where the precision needs one (f16).
    pub fn loss_scaler(self) -> Option<LossScaler> {
        (self == Precision::F16).then(LossScaler::default)
    }
}

/// Dynamic loss scale; saved in checkpoints so a resumed run continues it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Consecutive steps without overflow since the last change of `scale`.
    pub good_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: LossScaler::INITIAL_SCALE,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// PyTorch's defaults.
    pub const INITIAL_SCALE: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// Records whether this step's (unscaled) gradients were all finite and
    /// returns whether the optimiser may apply them.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale * 0.5).max(f64::MIN_POSITIVE);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

/// The gradient of the unscaled loss from that of the loss times `scale`.
pub fn unscale(grad: &Tensor, scale: f64) -> Result<Tensor> {
    Ok(if scale != 1.0 {
        (grad * scale.recip())?
    } else {
        grad.clone()
    })
}

/// Whether the optimiser may apply `grads` (unscaled): always without a
/// scaler; with one, only when they are finite, updating its scale.
pub fn step_allowed(scaler: Option<&mut LossScaler>, grads: &[Option<Tensor>]) -> Result<bool> {
    match scaler {
        Some(scaler) => Ok(scaler.update(all_finite(grads)?)),
        None => Ok(true),
    }
}

/// Whether every gradient is free of Inf and NaN (one device sync for all).
pub fn all_finite(grads: &[Option<Tensor>]) -> Result<bool> {
    let sums = grads
        .iter()
        .flatten()
        .map(|g| g.to_dtype(DType::F32)?.sum_all())
        .collect::<unet_models::candle_core::Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(true);
    }
    // Any Inf or NaN element makes its sum, and the sum of sums, non-finite.
    let total = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()?;
    Ok(total.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use unet_models::candle_core::Device;

    #[test]
    fn overflow_skips_the_step_and_halves_the_scale() {
        let mut s = LossScaler {
            scale: 1024.0,
            good_steps: 7,
        };
        assert!(!s.update(false));
        assert_eq!(
            s,
            LossScaler {
                scale: 512.0,
                good_steps: 0
            }
        );
    }

    #[test]
    fn growth_interval_clean_steps_double_the_scale() {
        let mut s = LossScaler::default();
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, LossScaler::INITIAL_SCALE);
        assert!(s.update(true));
        assert_eq!(s.scale, 2.0 * LossScaler::INITIAL_SCALE);
        assert_eq!(s.good_steps, 0);
    }

    #[test]
    fn all_finite_finds_inf_and_nan_in_any_gradient() {
        let ok = Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let inf = Tensor::new(&[1f32, f32::INFINITY], &Device::Cpu).unwrap();
        let nan = Tensor::new(&[f32::NAN, 0.0], &Device::Cpu).unwrap();
        assert!(all_finite(&[Some(ok.clone()), None]).unwrap());
        assert!(!all_finite(&[Some(ok.clone()), Some(inf)]).unwrap());
        assert!(!all_finite(&[None, Some(nan), Some(ok)]).unwrap());
        assert!(all_finite(&[]).unwrap());
    }

    #[test]
    fn only_f16_scales_the_loss() {
        assert!(Precision::F32.loss_scaler().is_none());
        assert!(Precision::Bf16.loss_scaler().is_none());
        assert_eq!(Precision::F16.loss_scaler(), Some(LossScaler::default()));
    }
}
