//! Segmentation losses over logits `[N, C, H, W]` and one-hot (or binary)
//! targets of the same shape. Region losses (Dice, Jaccard, Tversky) are
//! computed per image and class, then averaged, with a smoothing term.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use unet_models::candle_core::{Tensor, D};

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Binary cross-entropy on logits (per class, one-hot targets for C > 1).
    Bce,
    /// Soft Dice, 1 - (2|P∩T| + s) / (|P| + |T| + s).
    Dice,
    /// BCE + soft Dice.
    BceDice,
    /// Soft Jaccard (IoU), 1 - (|P∩T| + s) / (|P| + |T| - |P∩T| + s).
    Jaccard,
    /// Focal loss (Lin et al. 2017), alpha 0.25, gamma 2 for one class.
    Focal,
    /// Tversky, alpha 0.3 (false positives), beta 0.7 (false negatives).
    Tversky,
    /// Softmax cross-entropy (C > 1 classes).
    Ce,
    /// Cross-entropy + soft Dice on the softmax (C > 1 classes).
    CeDice,
}

/// Hyper-parameters of the losses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossParams {
    pub smooth: f64,
    pub focal_alpha: f64,
    pub focal_gamma: f64,
    pub tversky_alpha: f64,
    pub tversky_beta: f64,
}

impl Default for LossParams {
    fn default() -> Self {
        LossParams {
            smooth: 1.0,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            tversky_alpha: 0.3,
            tversky_beta: 0.7,
        }
    }
}

impl LossKind {
    /// Rejects losses that do not fit the number of output classes.
    pub fn check(self, classes: usize) -> Result<()> {
        if classes == 1 && matches!(self, LossKind::Ce | LossKind::CeDice) {
            return Err(TrainError::option(
                "--loss",
                "ce and ce-dice need a model with at least 2 output channels; use bce, dice or bce-dice for binary masks",
            ));
        }
        Ok(())
    }

    /// The mean loss of a batch.
    pub fn compute(self, logits: &Tensor, target: &Tensor, p: &LossParams) -> Result<Tensor> {
        let classes = logits.dim(1)?;
        let probs = || -> Result<Tensor> {
            Ok(if classes == 1 {
                unet_models::candle_nn::ops::sigmoid(logits)?
            } else {
                unet_models::candle_nn::ops::softmax(logits, 1)?
            })
        };
        Ok(match self {
            LossKind::Bce => bce_with_logits(logits, target)?,
            LossKind::Dice => soft_dice(&probs()?, target, p.smooth)?,
            LossKind::BceDice => {
                (bce_with_logits(logits, target)? + soft_dice(&probs()?, target, p.smooth)?)?
            }
            LossKind::Jaccard => jaccard(&probs()?, target, p.smooth)?,
            LossKind::Focal => focal(logits, target, p.focal_alpha, p.focal_gamma)?,
            LossKind::Tversky => {
                tversky(&probs()?, target, p.tversky_alpha, p.tversky_beta, p.smooth)?
            }
            LossKind::Ce => cross_entropy(logits, target)?,
            LossKind::CeDice => {
                (cross_entropy(logits, target)? + soft_dice(&probs()?, target, p.smooth)?)?
            }
        })
    }
}

/// `mean(max(x, 0) - x t + log(1 + exp(-|x|)))`, stable for any logit.
pub fn bce_with_logits(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    Ok(elementwise_bce(x, t)?.mean_all()?)
}

fn elementwise_bce(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let softplus = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((x.relu()? - (x * t)?)? + softplus)?)
}

/// Sums over H, W: `[N, C, H, W] -> [N, C]`.
fn spatial_sum(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(2)?.sum(D::Minus1)?)
}

/// `1 - mean_{n,c} (2 Σ p t + s) / (Σ p + Σ t + s)`.
pub fn soft_dice(probs: &Tensor, t: &Tensor, smooth: f64) -> Result<Tensor> {
    let inter = spatial_sum(&(probs * t)?)?;
    let card = (spatial_sum(probs)? + spatial_sum(t)?)?;
    let dice = ((inter * 2.0)? + smooth)?.div(&(card + smooth)?)?;
    Ok(dice.mean_all()?.affine(-1.0, 1.0)?)
}

/// `1 - mean_{n,c} (Σ p t + s) / (Σ p + Σ t - Σ p t + s)`.
pub fn jaccard(probs: &Tensor, t: &Tensor, smooth: f64) -> Result<Tensor> {
    let inter = spatial_sum(&(probs * t)?)?;
    let union = ((spatial_sum(probs)? + spatial_sum(t)?)? - &inter)?;
    let iou = (inter + smooth)?.div(&(union + smooth)?)?;
    Ok(iou.mean_all()?.affine(-1.0, 1.0)?)
}

/// `1 - mean (TP + s) / (TP + α FP + β FN + s)` with soft counts.
pub fn tversky(probs: &Tensor, t: &Tensor, alpha: f64, beta: f64, smooth: f64) -> Result<Tensor> {
    let tp = spatial_sum(&(probs * t)?)?;
    let fp = (spatial_sum(probs)? - &tp)?;
    let fneg = (spatial_sum(t)? - &tp)?;
    let denom = (((&tp + (fp * alpha)?)? + (fneg * beta)?)? + smooth)?;
    let index = (tp + smooth)?.div(&denom)?;
    Ok(index.mean_all()?.affine(-1.0, 1.0)?)
}

/// Focal loss. One class: `mean(α_t (1 - p_t)^γ BCE)` with `α_t = α t + (1-α)(1-t)`;
/// C classes: `mean over pixels of Σ_c t_c (1 - p_c)^γ (-log p_c)` on the softmax.
pub fn focal(x: &Tensor, t: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    if x.dim(1)? == 1 {
        let p = unet_models::candle_nn::ops::sigmoid(x)?;
        // p_t = p t + (1 - p)(1 - t) = 1 - p - t + 2 p t
        let p_t = ((p.affine(-1.0, 1.0)? - t)? + ((&p * t)? * 2.0)?)?;
        let modulator = p_t.affine(-1.0, 1.0)?.powf(gamma)?;
        let alpha_t = t.affine(2.0 * alpha - 1.0, 1.0 - alpha)?;
        Ok(((elementwise_bce(x, t)? * modulator)? * alpha_t)?.mean_all()?)
    } else {
        let log_p = unet_models::candle_nn::ops::log_softmax(x, 1)?;
        let modulator = log_p.exp()?.affine(-1.0, 1.0)?.powf(gamma)?;
        let per_pixel = ((t * modulator)? * log_p)?.sum(1)?.neg()?;
        Ok(per_pixel.mean_all()?)
    }
}

/// Softmax cross-entropy with one-hot targets, averaged over pixels.
pub fn cross_entropy(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let log_p = unet_models::candle_nn::ops::log_softmax(x, 1)?;
    Ok((t * log_p)?.sum(1)?.neg()?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use unet_models::candle_core::Device;

    // Expected values from PyTorch 2.x (F.binary_cross_entropy_with_logits, F.cross_entropy
    // and the formulas above written with torch ops):
    //   x = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]], [[[-0.5, 1.5], [3.0, 0.0]]]])
    //   t = torch.tensor([[[[1., 0.], [1., 0.]]], [[[0., 1.], [1., 1.]]]])
    //   p = sigmoid(x); inter = (p*t).sum((2,3)); card = p.sum((2,3)) + t.sum((2,3))
    //   dice = 1 - ((2*inter + 1)/(card + 1)).mean(); jaccard = 1 - ((inter+1)/(card-inter+1)).mean()
    //   tversky = 1 - ((tp+1)/(tp + 0.3 fp + 0.7 fn + 1)).mean()
    //   focal = (at * (1-pt)**2 * bce(x, t, reduction='none')).mean(), at = 0.25t + 0.75(1-t)
    fn binary() -> (Tensor, Tensor) {
        let d = &Device::Cpu;
        let x = Tensor::new(
            &[[[[2.0f32, -1.0], [0.5, -3.0]]], [[[-0.5, 1.5], [3.0, 0.0]]]],
            d,
        )
        .unwrap();
        let t = Tensor::new(
            &[[[[1.0f32, 0.0], [1.0, 0.0]]], [[[0.0, 1.0], [1.0, 1.0]]]],
            d,
        )
        .unwrap();
        (x, t)
    }

    fn value(kind: LossKind, x: &Tensor, t: &Tensor) -> f32 {
        kind.compute(x, t, &LossParams::default())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn binary_losses_match_pytorch() {
        let (x, t) = binary();
        for (kind, expected) in [
            (LossKind::Bce, 0.297_509_85),
            (LossKind::Dice, 0.167_645_7),
            (LossKind::BceDice, 0.465_155_54),
            (LossKind::Jaccard, 0.249_076_25),
            (LossKind::Tversky, 0.155_264_14),
            (LossKind::Focal, 0.016_265_579),
        ] {
            let got = value(kind, &x, &t);
            assert!(
                (got - expected).abs() < 1e-6,
                "{kind:?}: {got} vs {expected}"
            );
        }
    }

    // xm = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.5, 1.0, 0.0]], [[-1.0, 0.5, 2.0]]]]); tm = [[[0, 1, 1]]]
    // F.cross_entropy(xm, tm); + dice on softmax vs one-hot; focal-mc = -(oh*(1-p)**2*log_softmax).sum(1).mean()
    #[test]
    fn multiclass_losses_match_pytorch() {
        let d = &Device::Cpu;
        let x = Tensor::new(
            &[[[[2.0f32, 0.0, -1.0]], [[0.5, 1.0, 0.0]], [[-1.0, 0.5, 2.0]]]],
            d,
        )
        .unwrap();
        let t = Tensor::new(
            &[[[[1.0f32, 0.0, 0.0]], [[0.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]]]],
            d,
        )
        .unwrap();
        for (kind, expected) in [
            (LossKind::Ce, 1.030_475_7),
            (LossKind::CeDice, 1.397_089_5),
            (LossKind::Focal, 0.626_450_06),
        ] {
            let got = value(kind, &x, &t);
            assert!(
                (got - expected).abs() < 1e-6,
                "{kind:?}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn bce_is_stable_for_extreme_logits() {
        let d = &Device::Cpu;
        let x = Tensor::new(&[100.0f32, -100.0], d).unwrap();
        let t = Tensor::new(&[0.0f32, 1.0], d).unwrap();
        assert_eq!(
            bce_with_logits(&x, &t).unwrap().to_scalar::<f32>().unwrap(),
            100.0
        );
    }

    #[test]
    fn perfect_prediction_has_zero_region_loss() {
        let d = &Device::Cpu;
        let t = Tensor::new(&[[[[1.0f32, 0.0], [0.0, 1.0]]]], d).unwrap();
        // Probabilities exactly equal to the target.
        for f in [
            soft_dice(&t, &t, 1.0),
            jaccard(&t, &t, 1.0),
            tversky(&t, &t, 0.3, 0.7, 1.0),
        ] {
            assert_eq!(f.unwrap().to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn ce_needs_several_classes() {
        assert!(LossKind::Ce.check(1).is_err());
        assert!(LossKind::CeDice.check(1).is_err());
        assert!(LossKind::Dice.check(1).is_ok());
        assert!(LossKind::Ce.check(3).is_ok());
    }
}
