//! A Vegas-style controller: keep a small estimated queue at the downstream.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Bounds, Change, Controller, Episodes, RoundSummary, RttEstimate, Sample, Step, change, ewma,
    overload_cut,
};
use crate::error::ConfigError;

/// Estimates the calls queued at the downstream as
/// `limit × (1 − baseline / rtt)` once per round trip and keeps it between
/// α = 3·log10(limit) and β = 6·log10(limit), the logarithm taken as at
/// least 1 (α = 3 and β = 6 up to a limit of 10; Netflix
/// concurrency-limits' Vegas): below α it grows by log10(limit) (by β, at
/// most a tenth of the limit, when nothing queues), above β it steps back
/// to the middle of the band (at most halving); overload cuts by ×0.9 and
/// at least one call (to half, the last limit without overload, when it
/// ends slow start). Slow start doubles until the first signal. No growth
/// goes past a third above the most calls that wanted a permit in the round
/// ([`Sample::ceiling`](super::Sample::ceiling)); it has no idle rule, so
/// the demand it saw bounds it.
///
/// Like TCP Vegas it reacts before the downstream refuses anything, so it
/// suits servers that queue; its queue estimate is noisy under heavy-tailed
/// latency.
#[derive(Debug, Clone)]
pub struct VegasController {
    bounds: Bounds,
    backoff: f64,
    limit: f64,
    slow_start: bool,
    episodes: Episodes,
    short: Option<Duration>,
    history: VecDeque<Duration>,
    /// The baseline of `history`, kept with it: the layer reads it after
    /// every answer, and it changes only once a round.
    base: Option<Duration>,
}

/// Builds a [`VegasController`]; see its setters for the defaults.
#[derive(Debug, Clone)]
pub struct VegasBuilder {
    bounds: Bounds,
    backoff: f64,
}

const HISTORY: usize = 128;

impl VegasController {
    /// Starts a builder: min 1, max 1000, initial 5, backoff 0.9.
    pub fn builder() -> VegasBuilder {
        VegasBuilder {
            bounds: Bounds {
                min: 1,
                max: 1000,
                initial: 5,
            },
            backoff: 0.9,
        }
    }
}

impl VegasBuilder {
    bounds_setters!("default": min 1, max 1000, initial 5);
    /// The factor applied on overload (default 0.9).
    #[must_use]
    pub fn backoff(mut self, backoff: f64) -> Self {
        self.backoff = backoff;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A zero min, min above max, an initial limit outside them or a backoff
    /// outside (0, 1).
    pub fn build(self) -> Result<VegasController, ConfigError> {
        let bounds = self.bounds.validate("vegas")?;
        super::validate_backoff("vegas", self.backoff)?;
        Ok(VegasController {
            bounds,
            backoff: self.backoff,
            limit: bounds.initial as f64,
            slow_start: true,
            episodes: Episodes::default(),
            short: None,
            history: VecDeque::with_capacity(HISTORY),
            base: None,
        })
    }
}

impl VegasController {
    fn decide(&mut self, round: &RoundSummary) -> Option<Change> {
        if let Some(median) = round.median {
            self.short = Some(ewma(self.short, median, 0.5));
            super::push_capped(&mut self.history, median, HISTORY);
            self.base = super::baseline(&self.history);
        }
        let old = self.limit as usize;
        let (Some(median), Some(base)) = (round.median, self.base) else {
            return None;
        };
        let log = self.limit.max(10.0).log10();
        let (alpha, beta) = (3.0 * log, 6.0 * log);
        let queue = self.limit * (1.0 - base.as_secs_f64() / median.as_secs_f64());
        if queue > beta {
            // Back to the middle of [α, β] in one step, at most halving:
            // once per round trip, a step of log10(limit) would take far
            // too long to drain a queue that slow start overshot into.
            self.slow_start = false;
            // With the queue above β, the middle of the band (4.5 log10)
            // puts the target at least 1.5 log10 below the limit: a cut.
            let target = (self.limit - queue + (alpha + beta) / 2.0).max(self.limit * 0.5);
            self.limit = self.bounds.clamp(target);
            return change(old, self.limit, "latency");
        }
        if queue >= alpha {
            self.slow_start = false;
        }
        // No further than a third above the demand seen: a round counts
        // calls let in by the limit before its last doubling, which still
        // found it in use, and doubling again on them took 40 callers to a
        // limit of 160 (and, with no idle rule, it stayed there).
        let cap = super::capped(self.limit, f64::INFINITY, round.max_in_flight);
        if !round.saturated || queue >= alpha || self.limit >= cap {
            return None;
        }
        let (next, reason) = if self.slow_start {
            (self.limit * 2.0, "slow start")
        } else if queue <= log {
            // Netflix adds β here; at a small limit that is a leap past the
            // capacity (6 on top of 5), so at most a tenth of the limit.
            (self.limit + beta.min(self.limit * 0.1).max(1.0), "increase")
        } else {
            (self.limit + log, "increase")
        };
        self.limit = self.bounds.clamp(next.min(cap));
        change(old, self.limit, reason)
    }
}

impl Controller for VegasController {
    fn initial_limit(&self) -> usize {
        self.bounds.initial
    }

    fn update(&mut self, sample: &Sample, now: Instant) -> Option<Change> {
        let old_limit = self.limit as usize;
        let length = self.short.unwrap_or(sample.rtt);
        match self.episodes.push(sample, now, length, self.limit, 0)? {
            Step::Overload => {
                let cut = overload_cut(self.limit, &mut self.slow_start, self.backoff);
                self.limit = self.bounds.clamp(cut);
                change(old_limit, self.limit, "overload")
            }
            Step::Round(round) => {
                let decision = self.decide(&round);
                self.episodes.decided(decision, old_limit, now)
            }
        }
    }

    fn rtt(&self) -> RttEstimate {
        RttEstimate {
            short: self.short,
            long: self.base,
        }
    }

    fn name(&self) -> &'static str {
        "vegas"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::test_support::*;
    use super::*;

    /// A controller at `limit` whose baseline RTT is `base`.
    fn at(limit: f64, slow_start: bool, base: Duration) -> VegasController {
        let mut c = VegasController::builder().build().unwrap();
        c.limit = limit;
        c.slow_start = slow_start;
        c.history.extend(std::iter::repeat_n(base, 20));
        c
    }

    /// One round's decision, worked by hand from the formulas in the
    /// controller's doc: queue = limit × (1 − base / rtt), α = 3 log10,
    /// β = 6 log10 (log10 of the limit, at least 1).
    #[test]
    fn each_decision_follows_the_queue_estimate() {
        // (limit, slow start, base ms, median ms, saturated) → (limit, reason)
        type Case = (f64, bool, u64, u64, bool, Option<(usize, &'static str)>);
        let cases: [Case; 8] = [
            // 100 × (1 − 100/200) = 50 > β = 12: back to the middle of the
            // band, 100 − 50 + 9 = 59 (more than half).
            (100.0, false, 100, 200, true, Some((59, "latency"))),
            // 100 × (1 − 100/1000) = 90: the middle would be 19, but a
            // step at most halves.
            (100.0, false, 100, 1000, true, Some((50, "latency"))),
            // 8 × (1 − 1/4) = 6 = β exactly (log10 taken as 1): in the band.
            (8.0, false, 1000, 4000, true, None),
            // Nothing queued, past slow start: up by β = 12, at most a
            // tenth of the limit (10).
            (100.0, false, 100, 100, true, Some((110, "increase"))),
            // At 20, β = 7.8 and a tenth is 2: up by 2.
            (20.0, false, 100, 100, true, Some((22, "increase"))),
            // 100 × (1 − 945/1000) = 5.5: above log10 = 2, below α = 6: up
            // by log10.
            (100.0, false, 945, 1000, true, Some((102, "increase"))),
            // Slow start doubles while nothing queues.
            (5.0, true, 100, 100, true, Some((10, "slow start"))),
            // A round that did not use the limit says nothing about more.
            (100.0, false, 100, 100, false, None),
        ];
        for (limit, slow_start, base, median, saturated, expected) in cases {
            let mut c = at(limit, slow_start, ms(base));
            let decision = c.decide(&summary(ms(median), saturated, 1));
            let got = decision.map(|d| (d.limit, d.reason));
            assert_eq!(
                got, expected,
                "limit {limit}, base {base} ms, rtt {median} ms, saturated {saturated}"
            );
        }
        // In the band, slow start ends without a change.
        let mut c = at(8.0, true, ms(1000));
        assert_eq!(c.decide(&summary(ms(4000), true, 1)), None);
        assert!(!c.slow_start);
    }

    #[test]
    fn reports_its_settings_and_estimates() {
        let mut c = VegasController::builder().initial(7).build().unwrap();
        assert_eq!(c.initial_limit(), 7);
        assert_eq!(c.name(), "vegas");
        assert_eq!(c.rtt(), RttEstimate::default());
        c.history.extend(std::iter::repeat_n(ms(40), 20));
        c.decide(&summary(ms(60), false, 1));
        // The short estimate starts at the first median; the long one is
        // the history's 10th percentile.
        assert_eq!(
            c.rtt(),
            RttEstimate {
                short: Some(ms(60)),
                long: Some(ms(40)),
            }
        );
    }

    #[test]
    fn ramps_up_and_backs_off_on_overload() {
        let mut c = VegasController::builder().build().unwrap();
        let limits = drive(&mut c, 40, |_| 100, |_| ms(100));
        let reached = limits.iter().position(|&l| l >= 80).unwrap();
        assert!(reached <= 10, "{limits:?}");
        assert!(
            limits[20..].iter().all(|&l| (70..=130).contains(&l)),
            "{limits:?}"
        );
    }

    #[test]
    fn holds_a_small_queue_behind_a_queueing_server() {
        let mut c = VegasController::builder().initial(10).build().unwrap();
        let latency = |n: usize| ms(100).mul_f64((n as f64 / 40.0).max(1.0));
        let limits = drive(&mut c, 60, |_| 1000, latency);
        assert!(
            limits[30..].iter().all(|&l| (36..=56).contains(&l)),
            "{limits:?}"
        );
    }
}
