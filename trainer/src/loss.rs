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
            LossKind::BceDice => (bce_with_logits(logits, target)? + soft_dice(&probs()?, target, p.smooth)?)?,
            LossKind::Jaccard => jaccard(&probs()?, target, p.smooth)?,
            LossKind::Focal => focal(logits, target, p.focal_alpha, p.focal_gamma)?,
            LossKind::Tversky => tversky(&probs()?, target, p.tversky_alpha, p.tversky_beta, p.smooth)?,
            LossKind::Ce => cross_entropy(logits, target)?,
            LossKind::CeDice => (cross_entropy(logits, target)? + soft_dice(&probs()?, target, p.smooth)?)?,
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
