//! One training step, shared by the training loop and `unet-train bench-step`:
//! forward, loss, backward and gradient accumulation for a micro-batch, then,
//! when asked, the optimiser update (loss scaling, clipping, AdamW/SGD).

use std::time::{Duration, Instant};

use unet_models::candle_core::{Device, Tensor, Var};
use unet_models::UNet;

use crate::amp::{self, LossScaler};
use crate::error::{Result, TrainError};
use crate::loader::Batch;
use crate::loss::{LossKind, LossParams};
use crate::optim::{clip_grad_norm, Optimizer};

/// The model, its optimiser and the gradients summed since the last update.
pub struct Learner {
    model: UNet,
    optimizer: Optimizer,
    vars: Vec<Var>,
    pending: Vec<Option<Tensor>>,
    loss: LossKind,
    loss_params: LossParams,
    /// Micro-batches per update: each one's loss is divided by it.
    accumulate: usize,
    clip_grad_norm: Option<f64>,
}

/// What [`Learner::step`] did, and how long each part took.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// The micro-batch's (unscaled) loss.
    pub loss: f32,
    /// Whether the optimiser changed the weights (f16 skips overflowing steps).
    pub applied: bool,
    pub forward: Duration,
    /// Loss and backward pass.
    pub backward: Duration,
    /// Optimiser update (zero when not updating).
    pub update: Duration,
}

impl Learner {
    pub fn new(
        model: UNet,
        optimizer: Optimizer,
        loss: LossKind,
        loss_params: LossParams,
        accumulate: usize,
        clip_grad_norm: Option<f64>,
    ) -> Self {
        let vars: Vec<Var> = optimizer.vars().iter().map(|(_, v)| v.clone()).collect();
        Learner {
            pending: vec![None; vars.len()],
            model,
            optimizer,
            vars,
            loss,
            loss_params,
            accumulate: accumulate.max(1),
            clip_grad_norm,
        }
    }

    pub fn model(&self) -> &UNet {
        &self.model
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// One micro-batch: forward in training mode, loss, backward, gradients
    /// added to the pending sum. With `update = Some(lr)` the optimiser then
    /// applies the sum (unless the f16 `scaler` finds an overflow) and clears it.
    pub fn step(
        &mut self,
        input: &Tensor,
        target: &Tensor,
        update: Option<f64>,
        scaler: Option<&mut LossScaler>,
    ) -> Result<StepReport> {
        let t0 = Instant::now();
        let logits = self.model.forward_t(input, true)?;
        let t1 = Instant::now();
        let loss = self.loss.compute(&logits, target, &self.loss_params)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::option(
                "--lr",
                format!(
                    "the loss became {value} at step {}; lower the learning rate or enable --clip-grad",
                    self.optimizer.steps()
                ),
            ));
        }
        let loss_scale = scaler.as_deref().map_or(1.0, |s| s.scale);
        let factor = loss_scale / self.accumulate as f64;
        let scaled = if factor != 1.0 {
            (loss * factor)?
        } else {
            loss
        };
        let grads = scaled.backward()?;
        for (slot, var) in self.pending.iter_mut().zip(&self.vars) {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = amp::unscale(&g.detach(), loss_scale)?;
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
            }
        }
        drop(grads);
        let t2 = Instant::now();
        let mut applied = false;
        if let Some(lr) = update {
            if amp::step_allowed(scaler, &self.pending)? {
                if let Some(max) = self.clip_grad_norm {
                    clip_grad_norm(&mut self.pending, max)?;
                }
                self.optimizer.step(&self.pending, lr)?;
                applied = true;
            }
            self.pending.iter_mut().for_each(|g| *g = None);
        }
        Ok(StepReport {
            loss: value,
            applied,
            forward: t1 - t0,
            backward: t2 - t1,
            update: t2.elapsed(),
        })
    }
}

/// Binary target `[N, 1, H, W]` (0/1) or one-hot `[N, C, H, W]`.
pub fn target(batch: &Batch, classes: usize, device: &Device) -> Result<Tensor> {
    let (n, plane) = (batch.len(), batch.height * batch.width);
    let data: Vec<f32> = if classes == 1 {
        batch.masks.iter().map(|&m| f32::from(m.min(1))).collect()
    } else {
        let mut v = vec![0f32; n * classes * plane];
        for k in 0..n {
            for i in 0..plane {
                let c = batch.masks[k * plane + i] as usize;
                v[(k * classes + c) * plane + i] = 1.0;
            }
        }
        v
    };
    Ok(Tensor::from_vec(
        data,
        (n, classes, batch.height, batch.width),
        device,
    )?)
}

/// The batch's images as `[N, C, H, W]`.
pub fn input(batch: &Batch, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        batch.images.clone(),
        (batch.len(), batch.channels, batch.height, batch.width),
        device,
    )?)
}
