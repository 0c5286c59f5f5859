//! The simple windowed controller from the design, kept as a preset and as
//! the baseline the others are measured against.

use std::time::Duration;

use tokio::time::Instant;

use super::{Bounds, Change, Controller, RttEstimate, Sample, change};
use crate::classify::Outcome;
use crate::error::ConfigError;

/// Every `window` answers: +`step_up` when errors are under 1 % and the
/// mean latency under `fast`; −`step_down` when errors are over 10 % or the
/// mean latency over `slow`.
///
/// [`preset`](Self::preset): window 20, +2 below 1 % and 500 ms, −3 above
/// 10 % or 2 s, min 2, max 50, initial 5. Overloads and failures count as
/// errors; caller errors are left out of the window.
#[derive(Debug, Clone)]
pub struct WindowedController {
    bounds: Bounds,
    window: u32,
    step_up: usize,
    step_down: usize,
    fast: Duration,
    slow: Duration,
    limit: usize,
    seen: u32,
    errors: u32,
    latency_sum: Duration,
    successes: u32,
    last_mean: Option<Duration>,
}

/// Builds a [`WindowedController`]; starts from the preset's values.
#[derive(Debug, Clone)]
pub struct WindowedBuilder {
    bounds: Bounds,
    window: u32,
    step_up: usize,
    step_down: usize,
    fast: Duration,
    slow: Duration,
}

impl WindowedController {
    /// The design's preset: window 20, +2 / −3, 500 ms / 2 s, min 2, max 50, initial 5.
    pub fn preset() -> Self {
        Self::from_builder(Self::builder())
    }

    /// Starts a builder from the preset's values.
    pub fn builder() -> WindowedBuilder {
        WindowedBuilder {
            bounds: Bounds {
                min: 2,
                max: 50,
                initial: 5,
            },
            window: 20,
            step_up: 2,
            step_down: 3,
            fast: Duration::from_millis(500),
            slow: Duration::from_secs(2),
        }
    }

    fn from_builder(b: WindowedBuilder) -> Self {
        Self {
            bounds: b.bounds,
            window: b.window,
            step_up: b.step_up,
            step_down: b.step_down,
            fast: b.fast,
            slow: b.slow,
            limit: b.bounds.initial,
            seen: 0,
            errors: 0,
            latency_sum: Duration::ZERO,
            successes: 0,
            last_mean: None,
        }
    }
}

impl WindowedBuilder {
    bounds_setters!("preset": min 2, max 50, initial 5);
    /// Answers per decision (preset 20).
    #[must_use]
    pub fn window(mut self, window: u32) -> Self {
        self.window = window;
        self
    }
    /// The increase and the decrease per window (preset +2, −3).
    #[must_use]
    pub fn steps(mut self, up: usize, down: usize) -> Self {
        self.step_up = up;
        self.step_down = down;
        self
    }
    /// Mean latency below which the limit may grow, and above which it
    /// shrinks (preset 500 ms and 2 s).
    #[must_use]
    pub fn latency(mut self, fast: Duration, slow: Duration) -> Self {
        self.fast = fast;
        self.slow = slow;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A zero min, min above max, an initial limit outside them, an empty
    /// window, or `fast` above `slow`.
    pub fn build(self) -> Result<WindowedController, ConfigError> {
        self.bounds.validate("windowed")?;
        if self.window == 0 {
            return Err(ConfigError::new(
                "windowed: window must hold at least 1 answer",
            ));
        }
        if self.step_up == 0 || self.step_down == 0 {
            return Err(ConfigError::new(
                "windowed: both steps must be at least 1 (a zero increase never raises the \
                 limit, a zero decrease never lowers it on errors or latency)",
            ));
        }
        if self.fast > self.slow {
            return Err(ConfigError::new(format!(
                "windowed: `latency(fast, slow)` needs fast at most slow; got {:?} above {:?}",
                self.fast, self.slow
            )));
        }
        Ok(WindowedController::from_builder(self))
    }
}

impl Controller for WindowedController {
    fn initial_limit(&self) -> usize {
        self.bounds.initial
    }

    fn update(&mut self, sample: &Sample, _now: Instant) -> Option<Change> {
        match sample.outcome {
            Outcome::CallerError => return None,
            Outcome::Success => {
                self.successes += 1;
                self.latency_sum = self.latency_sum.saturating_add(sample.rtt);
            }
            Outcome::Overload | Outcome::Failure => self.errors += 1,
        }
        self.seen += 1;
        if self.seen < self.window {
            return None;
        }
        let errors = f64::from(self.errors) / f64::from(self.seen);
        let mean = (self.successes > 0).then(|| self.latency_sum / self.successes);
        self.last_mean = mean.or(self.last_mean);
        self.seen = 0;
        self.errors = 0;
        self.successes = 0;
        self.latency_sum = Duration::ZERO;
        let old = self.limit;
        if errors > 0.10 || mean.is_some_and(|m| m > self.slow) {
            self.limit = old.saturating_sub(self.step_down).max(self.bounds.min);
            let reason = if errors > 0.10 { "errors" } else { "latency" };
            return change(old, self.limit as f64, reason);
        }
        if errors < 0.01 && mean.is_some_and(|m| m < self.fast) {
            self.limit = old.saturating_add(self.step_up).min(self.bounds.max);
            return change(old, self.limit as f64, "increase");
        }
        None
    }

    fn rtt(&self) -> RttEstimate {
        RttEstimate {
            short: self.last_mean,
            long: None,
        }
    }

    fn name(&self) -> &'static str {
        "windowed"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::test_support::*;
    use super::*;

    /// `steps(2, 0)` was accepted and then never lowered the limit, on any
    /// error rate or latency (the other controllers refuse a backoff that
    /// cannot lower theirs).
    #[test]
    fn zero_steps_are_refused_when_built() {
        for (up, down) in [(2, 0), (0, 3), (0, 0)] {
            let err = WindowedController::builder()
                .steps(up, down)
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("steps"), "{err}");
        }
        assert!(WindowedController::builder().steps(1, 1).build().is_ok());
    }

    #[test]
    fn preset_steps() {
        let mut c = WindowedController::preset();
        let now = Instant::now();
        let mut last = None;
        for _ in 0..20 {
            last = c.update(&ok(100, 5, 5), now);
        }
        assert_eq!(
            last,
            Some(Change {
                limit: 7,
                reason: "increase"
            })
        );
        // Three errors in twenty: 15 %, so −3.
        for i in 0..20 {
            let s = if i < 3 {
                overload(1, 7, 7)
            } else {
                ok(100, 7, 7)
            };
            last = c.update(&s, now);
        }
        assert_eq!(
            last,
            Some(Change {
                limit: 4,
                reason: "errors"
            })
        );
        // Slow answers: −3, floored at min 2.
        for _ in 0..20 {
            last = c.update(&ok(2500, 4, 4), now);
        }
        assert_eq!(
            last,
            Some(Change {
                limit: 2,
                reason: "latency"
            })
        );
        // Between the thresholds: no change.
        for _ in 0..20 {
            last = c.update(&ok(1000, 2, 2), now);
        }
        assert_eq!(last, None);
    }

    #[test]
    fn never_passes_max() {
        let mut c = WindowedController::preset();
        let limits = drive(&mut c, 400, |_| 1000, |_| ms(50));
        assert_eq!(*limits.last().unwrap(), 50);
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(WindowedController::builder().window(0).build().is_err());
        assert!(WindowedController::builder().min(60).build().is_err());
        let (fast, slow) = (Duration::from_secs(1), Duration::from_millis(900));
        let err = WindowedController::builder()
            .latency(fast, slow)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("needs fast at most slow"), "{err}");
        // One threshold for both is allowed.
        assert!(
            WindowedController::builder()
                .latency(fast, fast)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn starts_at_the_initial_limit() {
        assert_eq!(WindowedController::preset().initial_limit(), 5);
        let c = WindowedController::builder().initial(9).build().unwrap();
        assert_eq!((c.initial_limit(), c.name()), (9, "windowed"));
    }

    /// The steps are taken strictly beyond the thresholds: a window whose
    /// mean latency is exactly `slow` (or exactly `fast`) leaves the limit.
    #[test]
    fn a_mean_at_a_threshold_moves_nothing() {
        let now = Instant::now();
        for at in [500, 2000] {
            let mut c = WindowedController::preset();
            let last = (0..20).map(|_| c.update(&ok(at, 5, 5), now)).last();
            assert_eq!(last, Some(None), "mean {at} ms");
            // The handle shows the last window's mean as the recent RTT.
            assert_eq!(c.rtt().short, Some(ms(at)));
        }
    }
}
