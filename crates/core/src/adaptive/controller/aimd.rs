//! Additive increase, multiplicative decrease, with a slow start.

use tokio::time::Instant;

use super::{Bounds, Change, Controller, Sample, change};
use crate::classify::Outcome;
use crate::error::ConfigError;

/// Loss-based AIMD: +`increase` per round trip while the limit is in use,
/// ×`backoff` on overload; doubles per round trip (slow start) until the
/// first overload. Either way no further than a third above the calls that
/// wanted a permit ([`Sample::ceiling`]).
///
/// It reads only overload signals, not latency: behind a server that queues
/// instead of refusing, it climbs until every caller is let in (and a third
/// above them, or to its max), so they all queue there. Prefer
/// [`GradientController`](super::GradientController) there.
#[derive(Debug, Clone)]
pub struct AimdController {
    bounds: Bounds,
    increase: f64,
    backoff: f64,
    limit: f64,
    slow_start: bool,
}

/// Builds an [`AimdController`]; see its setters for the defaults.
#[derive(Debug, Clone)]
pub struct AimdBuilder {
    bounds: Bounds,
    increase: f64,
    backoff: f64,
    slow_start: bool,
}

impl AimdController {
    /// Starts a builder: min 1, max 1000, initial 5, +1 per round trip, ×0.9
    /// on overload, slow start on.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            bounds: Bounds {
                min: 1,
                max: 1000,
                initial: 5,
            },
            increase: 1.0,
            backoff: 0.9,
            slow_start: true,
        }
    }
}

impl AimdBuilder {
    bounds_setters!("default": min 1, max 1000, initial 5);
    /// Added per round trip while the limit is in use (default 1).
    #[must_use]
    pub fn increase(mut self, increase: f64) -> Self {
        self.increase = increase;
        self
    }
    /// The factor applied on overload (default 0.9, vector's and Netflix's choice:
    /// a gentle cut, since one decrease answers a whole episode).
    #[must_use]
    pub fn backoff(mut self, backoff: f64) -> Self {
        self.backoff = backoff;
        self
    }
    /// Whether to double per round trip until the first overload (default on).
    #[must_use]
    pub fn slow_start(mut self, on: bool) -> Self {
        self.slow_start = on;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A zero min, min above max, an initial limit outside them, an increase
    /// that is not positive or a backoff outside (0, 1).
    pub fn build(self) -> Result<AimdController, ConfigError> {
        let bounds = self.bounds.validate("aimd")?;
        if !(self.increase > 0.0 && self.increase.is_finite()) {
            return Err(ConfigError::new(format!(
                "aimd: increase must be a positive number (1 adds one call a round trip); got {}",
                self.increase
            )));
        }
        super::validate_backoff("aimd", self.backoff)?;
        Ok(AimdController {
            bounds,
            increase: self.increase,
            backoff: self.backoff,
            limit: bounds.initial as f64,
            slow_start: self.slow_start,
        })
    }
}

impl Controller for AimdController {
    fn initial_limit(&self) -> usize {
        self.bounds.initial
    }

    fn update(&mut self, sample: &Sample, _now: Instant) -> Option<Change> {
        let old = self.limit as usize;
        match sample.outcome {
            Outcome::Overload => {
                self.slow_start = false;
                self.limit = self.bounds.clamp(self.limit * self.backoff);
                change(old, self.limit, "overload")
            }
            Outcome::Success if sample.saturated() => {
                // +1 per answer doubles the limit in a round trip; +increase/limit
                // per answer adds `increase` per round trip.
                let (step, reason) = if self.slow_start {
                    (1.0, "slow start")
                } else {
                    (self.increase / self.limit.max(1.0), "increase")
                };
                // Slow start's +1 per answer counts answers of calls let in
                // by a smaller limit: past the demand it would double 40 to
                // 80 for 40 callers. No further than a third above them.
                let next = super::capped(self.limit, self.limit + step, sample.in_flight);
                self.limit = self.bounds.clamp(next);
                change(old, self.limit, reason)
            }
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        "aimd"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn slow_start_doubles_then_backs_off() {
        let mut c = AimdController::builder().initial(5).build().unwrap();
        let limits = drive(&mut c, 12, |_| 200, |_| ms(100));
        // 5 → 200 takes about log2(40) round trips, not 195.
        let reached = limits.iter().position(|&l| l >= 160).unwrap();
        assert!(reached <= 7, "{limits:?}");
        assert!(limits.iter().all(|&l| l <= 400), "{limits:?}");
    }

    #[test]
    fn overload_cuts_by_backoff() {
        let mut c = AimdController::builder().initial(100).build().unwrap();
        let now = Instant::now();
        let ch = c.update(&overload(1, 100, 100), now).unwrap();
        assert_eq!(
            ch,
            Change {
                limit: 90,
                reason: "overload"
            }
        );
        // After an overload, +1 per round trip.
        for _ in 0..95 {
            c.update(&ok(10, 90, 90), now);
        }
        assert_eq!(c.limit as usize, 91);
    }

    #[test]
    fn caller_errors_and_idle_load_do_not_move_it() {
        let mut c = AimdController::builder().initial(10).build().unwrap();
        let now = Instant::now();
        let mut s = ok(10, 2, 10);
        assert_eq!(c.update(&s, now), None);
        s.outcome = Outcome::CallerError;
        s.in_flight = 10;
        assert_eq!(c.update(&s, now), None);
    }

    #[test]
    fn stays_within_bounds() {
        let mut c = AimdController::builder()
            .min(3)
            .max(8)
            .initial(4)
            .build()
            .unwrap();
        let now = Instant::now();
        for _ in 0..50 {
            c.update(&ok(10, 8, 8), now);
        }
        assert_eq!(c.limit as usize, 8);
        for _ in 0..50 {
            c.update(&overload(10, 8, 8), now);
        }
        assert_eq!(c.limit as usize, 3);
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(AimdController::builder().min(0).build().is_err());
        assert!(AimdController::builder().min(10).max(5).build().is_err());
        assert!(AimdController::builder().backoff(1.5).build().is_err());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = AimdController::builder().increase(bad).build().unwrap_err();
            assert!(
                err.to_string()
                    .contains("increase must be a positive number"),
                "{bad}: {err}"
            );
        }
        let c = AimdController::builder().increase(0.5).build().unwrap();
        assert_eq!(c.name(), "aimd", "the name logs and reports show");
    }
}
