//! The gradient controller: RTT against a long-term baseline, plus overload.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{Bounds, Change, Controller, Round, RoundSummary, RttEstimate, Sample, change, ewma};
use crate::error::ConfigError;

/// Moves the limit once per round trip by the ratio of the recent RTT to a
/// long-term baseline, and cuts it on overload. The default controller.
///
/// Each round (about one RTT, at least ten answers) it compares the round's
/// median RTT with the baseline: the lowest round median of the last 64
/// rounds. Medians, because LLM-like latency has heavy tails that would
/// swing a mean.
///
/// - any overload in the round: ×`backoff` (0.9), or down to the
///   concurrency the downstream actually served in the round when that is
///   lower (but never below half): a capacity that halved, or a slow start
///   that overshot, is answered in one step;
/// - median above `tolerance` × baseline (default 1.5): × baseline·tolerance/median,
///   at most halving;
/// - otherwise, if the limit was in use: ×2 during slow start (until the
///   first signal), then +5 % per round, a step that doubles every two
///   quiet rounds in a row (up to ×8), so a capacity that doubled is found
///   in a few round trips rather than a hundred, while at a steady capacity
///   the probes stay small (and once the RTT is a third of the way to the
///   tolerance, the step stops growing: the knee is near).
///
/// Samples from calls that started before its last decrease are skipped, so
/// each decision reads calls made under the limit it is judging.
#[derive(Debug, Clone)]
pub struct GradientController {
    bounds: Bounds,
    tolerance: f64,
    backoff: f64,
    limit: f64,
    slow_start: bool,
    quiet_rounds: u32,
    round: Round,
    /// Samples from calls started before this describe the old limit.
    last_decrease: Option<Instant>,
    short: Option<Duration>,
    history: VecDeque<Duration>,
}

/// Builds a [`GradientController`]; see its setters for the defaults.
#[derive(Debug, Clone)]
pub struct GradientBuilder {
    bounds: Bounds,
    tolerance: f64,
    backoff: f64,
}

const HISTORY: usize = 64;
const MIN_SAMPLES: usize = 10;
const STEP: f64 = 0.05;

impl GradientController {
    /// Starts a builder: min 1, max 1000, initial 5, tolerance 1.5, backoff 0.9.
    pub fn builder() -> GradientBuilder {
        GradientBuilder {
            bounds: Bounds {
                min: 1,
                max: 1000,
                initial: 5,
            },
            tolerance: 1.5,
            backoff: 0.9,
        }
    }

    fn baseline(&self) -> Option<Duration> {
        self.history.iter().min().copied()
    }
}

impl Default for GradientController {
    fn default() -> Self {
        let b = Self::builder();
        Self::from_builder(b)
    }
}

impl GradientController {
    fn from_builder(b: GradientBuilder) -> Self {
        Self {
            bounds: b.bounds,
            tolerance: b.tolerance,
            backoff: b.backoff,
            limit: b.bounds.initial as f64,
            slow_start: true,
            quiet_rounds: 0,
            round: Round::default(),
            last_decrease: None,
            short: None,
            history: VecDeque::with_capacity(HISTORY),
        }
    }
}

impl GradientBuilder {
    /// The lowest the limit goes (default 1).
    #[must_use]
    pub fn min(mut self, min: usize) -> Self {
        self.bounds.min = min;
        self
    }
    /// The highest the limit goes (default 1000).
    #[must_use]
    pub fn max(mut self, max: usize) -> Self {
        self.bounds.max = max;
        self
    }
    /// The limit to start with (default 5).
    #[must_use]
    pub fn initial(mut self, initial: usize) -> Self {
        self.bounds.initial = initial;
        self
    }
    /// How far above the baseline the median RTT may go before the limit
    /// comes down (default 1.5: queueing that adds half the unloaded
    /// latency is the price of finding the knee).
    #[must_use]
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }
    /// The factor applied on overload (default 0.9).
    #[must_use]
    pub fn backoff(mut self, backoff: f64) -> Self {
        self.backoff = backoff;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A zero min, min above max, an initial limit outside them, a tolerance
    /// below 1 or a backoff outside (0, 1).
    pub fn build(self) -> Result<GradientController, ConfigError> {
        self.bounds.validate("gradient")?;
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return Err(ConfigError::new(
                "gradient: tolerance must be at least 1 (1.5 allows RTT to grow by half)",
            ));
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            return Err(ConfigError::new(
                "gradient: backoff must be between 0 and 1 exclusive (0.9 cuts by a tenth)",
            ));
        }
        Ok(GradientController::from_builder(self))
    }
}

impl GradientController {
    fn decide(&mut self, round: &RoundSummary) -> Option<Change> {
        if let Some(median) = round.median {
            self.short = Some(ewma(self.short, median, 0.5));
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(median);
        }
        let old = self.limit as usize;
        let baseline = self.baseline();
        if round.overloads > 0 {
            self.slow_start = false;
            self.quiet_rounds = 0;
            self.limit = self
                .bounds
                .clamp(overload_cut(self.limit, self.backoff, round.delivered));
            return change(old, self.limit, "overload");
        }
        if let (Some(median), Some(baseline)) = (round.median, baseline) {
            let target = baseline.mul_f64(self.tolerance);
            if median > target {
                self.slow_start = false;
                self.quiet_rounds = 0;
                let gradient = (target.as_secs_f64() / median.as_secs_f64()).clamp(0.5, 1.0);
                self.limit = self.bounds.clamp(self.limit * gradient);
                return change(old, self.limit, "latency");
            }
            // Latency already rising towards the tolerance: the knee is near,
            // so probe with small steps only.
            if median > baseline.mul_f64(1.0 + (self.tolerance - 1.0) / 3.0) {
                self.quiet_rounds = 0;
            }
        }
        if !round.saturated {
            return None;
        }
        if self.slow_start {
            self.limit = self.bounds.clamp(self.limit * 2.0);
            return change(old, self.limit, "slow start");
        }
        let boost = f64::from(1u32 << (self.quiet_rounds / 2).min(3));
        self.quiet_rounds = self.quiet_rounds.saturating_add(1);
        let step = (self.limit * STEP * boost).max(0.25);
        self.limit = self.bounds.clamp(self.limit + step);
        change(old, self.limit, "increase")
    }
}

impl Controller for GradientController {
    fn initial_limit(&self) -> usize {
        self.bounds.initial
    }

    fn update(&mut self, sample: &Sample, now: Instant) -> Option<Change> {
        let old_limit = self.limit as usize;
        if self
            .last_decrease
            .is_some_and(|at| now.checked_sub(sample.rtt).is_some_and(|s| s < at))
        {
            return None;
        }
        let length = self.short.unwrap_or(sample.rtt);
        let round = self.round.push(sample, now, length, MIN_SAMPLES)?;
        let decision = self.decide(&round);
        if decision.is_some_and(|c| c.limit < old_limit) {
            self.last_decrease = Some(now);
        }
        decision
    }

    fn rtt(&self) -> RttEstimate {
        RttEstimate {
            short: self.short,
            long: self.baseline(),
        }
    }

    fn name(&self) -> &'static str {
        "gradient"
    }
}

/// The cut on overload: `backoff`, or down to what was delivered when that
/// is lower, but never more than half.
pub(crate) fn overload_cut(limit: f64, backoff: f64, delivered: f64) -> f64 {
    (limit * backoff).min(delivered.max(limit * 0.5))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::test_support::*;
    use super::*;

    fn within(limit: usize, capacity: usize) -> bool {
        let (l, c) = (limit as f64, capacity as f64);
        (l - c).abs() <= 0.2 * c
    }

    #[test]
    fn ramps_from_5_to_200_in_few_round_trips() {
        let mut c = GradientController::default();
        let limits = drive(&mut c, 40, |_| 200, |_| ms(100));
        let reached = limits.iter().position(|&l| within(l, 200)).unwrap();
        // Ten-answer rounds make the first rounds a little longer than an RTT.
        assert!(reached <= 10, "{limits:?}");
        // And stays near capacity afterwards, without wild swings.
        assert!(
            limits[20..].iter().all(|&l| (150..=240).contains(&l)),
            "{limits:?}"
        );
    }

    #[test]
    fn follows_a_capacity_that_halves_then_doubles() {
        let mut c = GradientController::default();
        let cap = |r: usize| if (30..60).contains(&r) { 50 } else { 100 };
        let limits = drive(&mut c, 90, cap, |_| ms(100));
        let down = limits[30..].iter().position(|&l| within(l, 50)).unwrap();
        assert!(down <= 10, "{limits:?}");
        let up = limits[60..].iter().position(|&l| within(l, 100)).unwrap();
        assert!(up <= 10, "{limits:?}");
    }

    #[test]
    fn latency_above_tolerance_lowers_the_limit() {
        let mut c = GradientController::builder().initial(10).build().unwrap();
        // Above 20 in flight the downstream queues: RTT grows with load.
        let latency = |n: usize| ms(100).mul_f64((n as f64 / 20.0).max(1.0));
        let limits = drive(&mut c, 60, |_| 1000, latency);
        assert!(
            limits[30..].iter().all(|&l| (15..=36).contains(&l)),
            "{limits:?}"
        );
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(
            GradientController::builder()
                .tolerance(0.5)
                .build()
                .is_err()
        );
        assert!(GradientController::builder().min(4).max(3).build().is_err());
    }
}
