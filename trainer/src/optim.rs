//! Optimisers over candle [`Var`]s with PyTorch's update rules, and their state
//! exposed as named tensors so a checkpoint restores them bit for bit.
//!
//! - Adam (`torch.optim.Adam`): L2 weight decay added to the gradient.
//! - AdamW (`torch.optim.AdamW`, as candle-nn's `AdamW`): decoupled decay `θ ← θ (1 - lr λ)`.
//! - SGD with momentum (`torch.optim.SGD`): `b ← μ b + g` (first step `b = g`), `θ ← θ - lr b`.

use std::cell::RefCell;
use std::collections::HashMap;

use clap::ValueEnum;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use unet_models::candle_core::{self, CpuStorage, InplaceOp1, Layout, Storage, Tensor, Var};

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// SGD only.
    pub momentum: f64,
}

pub struct Optimizer {
    cfg: OptimizerConfig,
    vars: Vec<(String, Var)>,
    /// Adam first moments or SGD momentum buffers.
    first: Vec<Option<Tensor>>,
    /// Adam second moments.
    second: Vec<Option<Tensor>>,
    steps: u64,
}

const FIRST: &str = "optimizer.first.";
const SECOND: &str = "optimizer.second.";

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, vars: Vec<(String, Var)>) -> Self {
        let n = vars.len();
        Optimizer {
            cfg,
            vars,
            first: vec![None; n],
            second: vec![None; n],
            steps: 0,
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `vars()[i]`
    /// (`None`: the variable got no gradient and is left alone).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let c = &self.cfg;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(i).and_then(|g| g.as_ref()) else {
                continue;
            };
            // Detached: the optimiser state must not keep autograd graphs (and all
            // activations of every step) alive through the moment chain.
            let (theta, g) = (&var.as_tensor().detach(), &g.detach());
            match c.kind {
                OptimizerKind::Adam | OptimizerKind::Adamw
                    if theta.device().is_cpu() && theta.dtype() == candle_core::DType::F32 =>
                {
                    // Moments start at zero; from then on they are updated in place.
                    let m = match &self.first[i] {
                        Some(m) => m.clone(),
                        None => theta.zeros_like()?,
                    };
                    let v = match &self.second[i] {
                        Some(v) => v.clone(),
                        None => theta.zeros_like()?,
                    };
                    adam_cpu(c, lr, t, theta, g, &m, &v)?;
                    self.first[i] = Some(m);
                    self.second[i] = Some(v);
                }
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let g = if c.kind == OptimizerKind::Adam && c.weight_decay != 0.0 {
                        (g + (theta * c.weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let m = match &self.first[i] {
                        Some(m) => ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?,
                        None => (&g * (1.0 - c.beta1))?,
                    };
                    let v = match &self.second[i] {
                        Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                        None => (g.sqr()? * (1.0 - c.beta2))?,
                    };
                    let bc1 = 1.0 - c.beta1.powi(t);
                    let bc2 = 1.0 - c.beta2.powi(t);
                    let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
                    let update = ((&m / bc1)? / denom)?;
                    let base = if c.kind == OptimizerKind::Adamw && c.weight_decay != 0.0 {
                        (theta * (1.0 - lr * c.weight_decay))?
                    } else {
                        theta.clone()
                    };
                    var.set(&(base - (update * lr)?)?)?;
                    self.first[i] = Some(m);
                    self.second[i] = Some(v);
                }
                OptimizerKind::Sgd => {
                    let g = if c.weight_decay != 0.0 {
                        (g + (theta * c.weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let b = match (&self.first[i], c.momentum != 0.0) {
                        (Some(b), true) => ((b * c.momentum)? + &g)?,
                        _ => g,
                    };
                    var.set(&(theta - (&b * lr)?)?)?;
                    if c.momentum != 0.0 {
                        self.first[i] = Some(b);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs `f` on the data of a contiguous CPU f32 tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => f(&data[start..end]),
        _ => Err(not_cpu_f32()),
    }
}

fn not_cpu_f32() -> TrainError {
    candle_core::Error::Msg("optimizer: expected a contiguous CPU f32 tensor".into()).into()
}

/// Runs `f` on the data of a contiguous CPU f32 tensor, which it changes in place
/// (every tensor sharing the storage, a [`Var`] included, sees the change).
fn with_f32_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    struct InPlace<F> {
        f: RefCell<Option<F>>,
        result: RefCell<Result<()>>,
    }
    impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for InPlace<F> {
        fn name(&self) -> &'static str {
            "optimizer-in-place"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let f = self.f.borrow_mut().take().expect("in-place op runs once");
            *self.result.borrow_mut() = match (storage, layout.contiguous_offsets()) {
                (CpuStorage::F32(data), Some((start, end))) => f(&mut data[start..end]),
                _ => Err(not_cpu_f32()),
            };
            Ok(())
        }
    }
    let op = InPlace {
        f: RefCell::new(Some(f)),
        result: RefCell::new(Ok(())),
    };
    t.inplace_op1(&op)?;
    op.result.into_inner()
}

/// One Adam/AdamW step (the rule of the tensor-op branch of [`Optimizer::step`])
/// in one parallel pass that updates the parameter and both moments in place: the
/// tensor ops make a dozen passes and allocations per parameter, a tenth of a
/// training step at base width 64, and fresh buffers cost a page fault per 4 KiB.
fn adam_cpu(
    c: &OptimizerConfig,
    lr: f64,
    t: i32,
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<()> {
    let l2 = if c.kind == OptimizerKind::Adam {
        c.weight_decay
    } else {
        0.0
    } as f32;
    let decay = if c.kind == OptimizerKind::Adamw {
        1.0 - lr * c.weight_decay
    } else {
        1.0
    } as f32;
    let (b1, b2, eps, lr) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32, lr as f32);
    let bc1 = (1.0 - c.beta1.powi(t)) as f32;
    let bc2 = (1.0 - c.beta2.powi(t)) as f32;
    // Large enough to amortise rayon's split, small enough to share 2 cores evenly.
    const CHUNK: usize = 1 << 15;
    with_f32(g, |g| {
        with_f32_mut(theta, |theta| {
            with_f32_mut(m, |m| {
                with_f32_mut(v, |v| {
                    if [theta.len(), m.len(), v.len()] != [g.len(); 3] {
                        return Err(not_cpu_f32());
                    }
                    theta
                        .par_chunks_mut(CHUNK)
                        .zip(m.par_chunks_mut(CHUNK))
                        .zip(v.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK))
                        .for_each(|(((theta, m), v), g)| {
                            for (((theta, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(g) {
                                let g = g + l2 * *theta;
                                *m = b1 * *m + (1.0 - b1) * g;
                                *v = b2 * *v + (1.0 - b2) * g * g;
                                let update = (*m / bc1) / ((*v / bc2).sqrt() + eps);
                                *theta = *theta * decay - lr * update;
                            }
                        });
                    Ok(())
                })
            })
        })
    })
}

impl Optimizer {
    /// The state as named tensors (`optimizer.first.NAME`, `optimizer.second.NAME`).
    /// On the CPU they share storage with the moments the next step updates in
    /// place: serialise them before stepping again.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            if let Some(t) = &self.first[i] {
                out.push((format!("{FIRST}{name}"), t.clone()));
            }
            if let Some(t) = &self.second[i] {
                out.push((format!("{SECOND}{name}"), t.clone()));
            }
        }
        out
    }

    /// Restores [`Self::state_tensors`] and the step count.
    pub fn load_state(
        &mut self,
        mut tensors: HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), String> {
        let device = self.vars.first().map(|(_, v)| v.device().clone());
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [(FIRST, &mut self.first[i]), (SECOND, &mut self.second[i])] {
                *slot = match tensors.remove(&format!("{prefix}{name}")) {
                    Some(t) if t.dims() == var.dims() => Some(
                        t.to_device(
                            device
                                .as_ref()
                                .unwrap_or(&unet_models::candle_core::Device::Cpu),
                        )
                        .map_err(|e| format!("optimizer state of `{name}`: {e}"))?,
                    ),
                    Some(t) => {
                        return Err(format!(
                            "optimizer state of `{name}` has shape {:?}, the parameter {:?}",
                            t.dims(),
                            var.dims()
                        ))
                    }
                    None => None,
                };
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use unet_models::candle_core::Device;

    /// f32 takes the one-pass CPU path, f64 the tensor-op path (as on CUDA).
    fn run(kind: OptimizerKind, weight_decay: f64, dtype: candle_core::DType) -> Vec<f32> {
        let var = Var::from_tensor(
            &Tensor::new(&[1.0f32, -2.0], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let cfg = OptimizerConfig {
            kind,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            momentum: 0.9,
        };
        let mut opt = Optimizer::new(cfg, vec![("w".into(), var.clone())]);
        for _ in 0..2 {
            // loss = sum(w^2) -> grad 2w
            let g = (var.as_tensor() * 2.0).unwrap();
            opt.step(&[Some(g)], 0.1).unwrap();
        }
        var.as_tensor()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    // Reference values from PyTorch 2.x:
    //   w = torch.tensor([1., -2.], requires_grad=True)
    //   opt = torch.optim.Adam([w], lr=0.1, weight_decay=0.1)   # or AdamW / SGD(momentum=0.9)
    //   for _ in range(2): opt.zero_grad(); (w**2).sum().backward(); opt.step()
    #[test]
    fn matches_pytorch() {
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 2e-6);
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let adam = run(OptimizerKind::Adam, 0.1, dtype);
            assert!(
                close(&adam, &[0.800_412_24, -1.800_166_5]),
                "{dtype:?} {adam:?}"
            );
            let adamw = run(OptimizerKind::Adamw, 0.1, dtype);
            assert!(
                close(&adamw, &[0.781_571_9, -1.761_408_9]),
                "{dtype:?} {adamw:?}"
            );
            let sgd = run(OptimizerKind::Sgd, 0.0, dtype);
            // b1 = 2w0 = [2,-4]; w1 = [0.8,-1.6]; b2 = 0.9 b1 + 2 w1 = [3.4,-6.8]; w2 = [0.46,-0.92]
            assert!(close(&sgd, &[0.46, -0.92]), "{dtype:?} {sgd:?}");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![
            Some(Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()),
            None,
        ];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5,
            "{v:?}"
        );
    }
}
