//! Time-boxed training (`--time`): how many optimiser steps still fit in the
//! budget, from the measured time of the steps and of the end-of-epoch work
//! (validation, saving) so far. The schedule is re-laid over that many steps
//! after every step, so its cosine ends at the budget; its warm-up is cut to a
//! tenth of the plan when longer.

use std::time::{Duration, Instant};

/// The budget of a run and what its steps have cost so far.
#[derive(Debug, Clone)]
pub struct TimeBudget {
    budget: Duration,
    started: Instant,
    /// Time already spent before a resume.
    spent_before: Duration,
    /// Training time (steps and data waits) and the steps it covered.
    step_time: Duration,
    steps: u64,
    /// The longest end-of-epoch work seen (validation and saving).
    epoch_end: Duration,
}

impl TimeBudget {
    pub fn new(budget: Duration, spent_before: Duration) -> Self {
        TimeBudget {
            budget,
            started: Instant::now(),
            spent_before,
            step_time: Duration::ZERO,
            steps: 0,
            epoch_end: Duration::ZERO,
        }
    }

    /// Time spent by the run, resumed parts included.
    pub fn spent(&self) -> Duration {
        self.spent_before + self.started.elapsed()
    }

    pub fn exhausted(&self) -> bool {
        self.spent() >= self.budget
    }

    /// Records `n` optimiser steps that took `took` (data waits included).
    pub fn record_steps(&mut self, n: u64, took: Duration) {
        self.steps += n;
        self.step_time += took;
    }

    /// Records one end-of-epoch pass.
    pub fn record_epoch_end(&mut self, took: Duration) {
        self.epoch_end = self.epoch_end.max(took);
    }

    /// Total optimiser steps of the run when `done` are done and
    /// `left_in_epoch` remain in the current epoch of `steps_per_epoch`;
    /// `None` until a step has been timed.
    pub fn planned_total(
        &self,
        done: u64,
        left_in_epoch: u64,
        steps_per_epoch: u64,
    ) -> Option<u64> {
        if self.steps == 0 {
            return None;
        }
        let remaining = self.budget.saturating_sub(self.spent()).as_secs_f64();
        let per_step = self.step_time.as_secs_f64() / self.steps as f64;
        Some(
            done + steps_that_fit(
                remaining,
                per_step,
                self.epoch_end.as_secs_f64(),
                left_in_epoch,
                steps_per_epoch,
            ),
        )
    }
}

/// How many steps fit in `remaining` seconds at `per_step` seconds each, when
/// every epoch boundary crossed (after `left_in_epoch` steps, then every
/// `steps_per_epoch`) and the final one cost `epoch_end` seconds more.
pub fn steps_that_fit(
    remaining: f64,
    per_step: f64,
    epoch_end: f64,
    left_in_epoch: u64,
    steps_per_epoch: u64,
) -> u64 {
    let spe = steps_per_epoch.max(1);
    // The last epoch end (validation of the final weights) is always paid.
    let mut left = remaining - epoch_end;
    if left <= 0.0 || per_step <= 0.0 {
        return 0;
    }
    let mut n = 0u64;
    let mut to_boundary = left_in_epoch.max(1).min(spe);
    loop {
        let whole = to_boundary as f64 * per_step;
        if whole > left {
            return n + (left / per_step).floor() as u64;
        }
        left -= whole;
        n += to_boundary;
        // Crossing a boundary that is not the last costs one more epoch end.
        if left <= epoch_end {
            return n;
        }
        left -= epoch_end;
        to_boundary = spe;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_fit_between_epoch_ends() {
        // 10 s, 1 s a step, no epoch cost: 10 steps.
        assert_eq!(steps_that_fit(10.0, 1.0, 0.0, 5, 5), 10);
        // 2 s per epoch end: the final one is reserved (8 s), 5 steps, one more
        // epoch end (6 -> 1 s), 1 step.
        assert_eq!(steps_that_fit(10.0, 1.0, 2.0, 5, 5), 6);
        // 2 steps left in the current epoch: 8 s - 1 s reserved, 2 steps, an
        // epoch end (4 s left), 4 more.
        assert_eq!(steps_that_fit(8.0, 1.0, 1.0, 2, 5), 6);
        assert_eq!(steps_that_fit(0.5, 1.0, 0.0, 5, 5), 0);
        assert_eq!(steps_that_fit(3.0, 1.0, 4.0, 5, 5), 0);
    }

    #[test]
    fn no_plan_before_a_timed_step() {
        let mut b = TimeBudget::new(Duration::from_secs(60), Duration::ZERO);
        assert_eq!(b.planned_total(0, 10, 10), None);
        b.record_steps(4, Duration::from_secs(4));
        // The recorded steps took no real time: almost all 60 s are left, at
        // 1 s a step, on top of the 4 done.
        let total = b.planned_total(4, 6, 10).unwrap();
        assert!((63..=64).contains(&total), "{total}");
        assert!(!b.exhausted());
        assert!(TimeBudget::new(Duration::ZERO, Duration::ZERO).exhausted());
    }
}
