//! Learning-rate schedules as pure functions of the optimiser step, so a
//! resumed run needs no schedule state.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerKind {
    /// Constant learning rate.
    None,
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step,
    /// Cosine annealing from the base rate to `min_lr` over the whole run.
    Cosine,
    /// Cosine annealing with warm restarts (SGDR): first cycle `restart_epochs`, then x `restart_mult`.
    CosineRestarts,
}

/// The scheduler and its parameters, as chosen for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub kind: SchedulerKind,
    /// Floor of the cosine schedules.
    pub min_lr: f64,
    /// Linear warm-up from 0 over this many optimiser steps.
    pub warmup_steps: u64,
    pub step_epochs: u64,
    pub gamma: f64,
    pub restart_epochs: f64,
    pub restart_mult: f64,
}

/// A schedule laid over a run's length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub cfg: ScheduleConfig,
    pub base_lr: f64,
    pub steps_per_epoch: u64,
    /// Optimiser steps of the whole run: the cosine reaches `min_lr` there.
    pub total_steps: u64,
}

impl Schedule {
    /// Learning rate of optimiser step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let c = &self.cfg;
        let spe = self.steps_per_epoch.max(1) as f64;
        let epoch = step as f64 / spe;
        let cosine = |t: f64, period: f64| {
            c.min_lr
                + (self.base_lr - c.min_lr)
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * (t / period).min(1.0)).cos())
        };
        let lr = match c.kind {
            SchedulerKind::None => self.base_lr,
            SchedulerKind::Step => {
                self.base_lr
                    * c.gamma
                        .powi((step / (c.step_epochs.max(1) * self.steps_per_epoch.max(1))) as i32)
            }
            SchedulerKind::Cosine => cosine(step as f64, self.total_steps.max(1) as f64),
            SchedulerKind::CosineRestarts => {
                let t0 = c.restart_epochs.max(1e-9);
                let (t_cur, period) = if c.restart_mult <= 1.0 {
                    (epoch % t0, t0)
                } else {
                    let m = c.restart_mult;
                    let n = ((epoch / t0 * (m - 1.0) + 1.0).ln() / m.ln()).floor();
                    (epoch - t0 * (m.powf(n) - 1.0) / (m - 1.0), t0 * m.powf(n))
                };
                cosine(t_cur, period)
            }
        };
        if step < c.warmup_steps {
            lr * (step + 1) as f64 / c.warmup_steps as f64
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: SchedulerKind) -> Schedule {
        Schedule {
            cfg: ScheduleConfig {
                kind,
                min_lr: 0.0,
                warmup_steps: 0,
                step_epochs: 2,
                gamma: 0.1,
                restart_epochs: 1.0,
                restart_mult: 2.0,
            },
            base_lr: 1.0,
            steps_per_epoch: 10,
            total_steps: 40,
        }
    }

    #[test]
    fn step_decay() {
        let s = schedule(SchedulerKind::Step);
        assert_eq!(s.lr(0), 1.0);
        assert_eq!(s.lr(19), 1.0);
        assert!((s.lr(20) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn cosine_halfway_is_half() {
        let s = schedule(SchedulerKind::Cosine);
        assert_eq!(s.lr(0), 1.0);
        assert!((s.lr(20) - 0.5).abs() < 1e-12);
        assert!(s.lr(40).abs() < 1e-12);
    }

    #[test]
    fn warm_restarts_double_the_period() {
        // torch CosineAnnealingWarmRestarts(T_0=1 epoch, T_mult=2): restarts at epochs 1 and 3.
        let s = schedule(SchedulerKind::CosineRestarts);
        assert_eq!(s.lr(0), 1.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(20) - 0.5).abs() < 1e-12);
        assert!((s.lr(30) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn warmup_is_linear() {
        let mut s = schedule(SchedulerKind::None);
        s.cfg.warmup_steps = 4;
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(4), 1.0);
    }
}
