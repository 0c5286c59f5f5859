//! The downstream's capacity model: every part optional.

use std::time::Duration;

use http::StatusCode;

/// What the simulated downstream can take, and how it answers beyond that.
///
/// Built with chainable setters from [`Model::new`], which is an unlimited
/// server answering after 100 ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub(crate) concurrency: Option<usize>,
    pub(crate) overflow: Overflow,
    pub(crate) rate: Option<RateCap>,
    pub(crate) quota: Option<Quota>,
    pub(crate) latency: Latency,
    pub(crate) knee: Option<Knee>,
    pub(crate) drop_rate: f64,
    pub(crate) refusal_latency: Duration,
    pub(crate) changes: Vec<CapacityChange>,
    pub(crate) body_bytes: usize,
}

/// What happens to a request beyond the concurrency capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Answered at once with this status (429 or 503, say).
    Refuse(StatusCode),
    /// Queued (FIFO) until a slot frees; beyond `max` queued, a 503.
    Queue {
        /// The most requests waiting.
        max: usize,
    },
}

/// A rate capacity: `per_second` with a `burst`, beyond which a 429 with a
/// `Retry-After` (whole seconds, at least 1) is the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateCap {
    /// Sustained requests per second.
    pub(crate) per_second: f64,
    /// Requests admitted back to back after a quiet spell.
    pub(crate) burst: u32,
}

/// A fixed-window quota: `limit` requests per `window`; past it, a 429 whose
/// `Retry-After` is the rest of the window (the "long Retry-After" case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    /// Requests per window.
    pub(crate) limit: u32,
    /// The window's length.
    pub(crate) window: Duration,
}

/// How long an admitted request takes: `base` plus a random part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Latency {
    /// The fixed part.
    pub(crate) base: Duration,
    /// The random part.
    pub(crate) jitter: Jitter,
}

/// The random part of the latency.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// None: every request takes `base`.
    None,
    /// Exponential with this mean.
    Exponential {
        /// The mean of the random part.
        mean: Duration,
    },
    /// Log-normal with this median and shape σ (σ = 1 gives an LLM-API-like tail:
    /// p99 about ten times the median).
    LogNormal {
        /// The median of the random part.
        median: Duration,
        /// The shape: the standard deviation of the log.
        sigma: f64,
    },
}

/// Above `at` requests in service, latency grows: ×(1 + `slope` × (n − at) / at).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Knee {
    /// Requests in service from which latency grows.
    pub(crate) at: usize,
    /// How steeply.
    pub(crate) slope: f64,
}

/// A change of capacity `at` a time after the simulation started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CapacityChange {
    /// When, from the start.
    pub(crate) at: Duration,
    /// The new concurrency capacity, if it changes.
    pub(crate) concurrency: Option<usize>,
    /// The new rate per second, if it changes.
    pub(crate) rate: Option<f64>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An unlimited server that answers every request after 100 ms.
    pub fn new() -> Self {
        Self {
            concurrency: None,
            overflow: Overflow::Refuse(StatusCode::TOO_MANY_REQUESTS),
            rate: None,
            quota: None,
            latency: Latency {
                base: Duration::from_millis(100),
                jitter: Jitter::None,
            },
            knee: None,
            drop_rate: 0.0,
            refusal_latency: Duration::from_millis(1),
            changes: Vec::new(),
            body_bytes: 0,
        }
    }

    /// At most `capacity` requests in service; beyond, refused with 429
    /// unless [`overflow`](Self::overflow) says otherwise.
    #[must_use]
    pub fn concurrency(mut self, capacity: usize) -> Self {
        self.concurrency = Some(capacity);
        self
    }

    /// What happens beyond the concurrency capacity.
    #[must_use]
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// A rate capacity with burst; beyond it, 429 with `Retry-After`.
    ///
    /// # Panics
    ///
    /// If `per_second` is not above zero (0, negative or NaN). A zero rate
    /// reads as an outage, but the simulation has no rate outage: it would
    /// take such a rate as no limit at all. Model an outage with a
    /// concurrency of 0 instead (`.concurrency(0)`, or
    /// `.change_at(at, Some(0), None)` for one that starts later).
    #[must_use]
    pub fn rate(mut self, per_second: f64, burst: u32) -> Self {
        check_rate(per_second);
        self.rate = Some(RateCap {
            per_second,
            burst: burst.max(1),
        });
        self
    }

    /// A fixed-window quota; past it, 429 with the rest of the window as `Retry-After`.
    #[must_use]
    pub fn quota(mut self, limit: u32, window: Duration) -> Self {
        self.quota = Some(Quota { limit, window });
        self
    }

    /// The latency of an admitted request.
    #[must_use]
    pub fn latency(mut self, base: Duration, jitter: Jitter) -> Self {
        self.latency = Latency { base, jitter };
        self
    }

    /// Latency grows above `at` requests in service; a negative (or NaN)
    /// slope is taken as 0, latency that does not grow.
    #[must_use]
    pub fn knee(mut self, at: usize, slope: f64) -> Self {
        self.knee = Some(Knee {
            at: at.max(1),
            slope: if slope > 0.0 { slope } else { 0.0 },
        });
        self
    }

    /// This fraction of requests never gets an answer (the client's timeout must fire).
    #[must_use]
    pub fn drop_rate(mut self, fraction: f64) -> Self {
        self.drop_rate = fraction.clamp(0.0, 1.0);
        self
    }

    /// How long a refusal takes (default 1 ms).
    #[must_use]
    pub fn refusal_latency(mut self, latency: Duration) -> Self {
        self.refusal_latency = latency;
        self
    }

    /// Changes the capacity at `at` after the start.
    ///
    /// A new `rate` applies only to a model with a rate capacity
    /// ([`rate`](Self::rate)), whose burst it keeps.
    ///
    /// # Panics
    ///
    /// If `rate` is `Some` of a rate that is not above zero, as
    /// [`rate`](Self::rate) does: for an outage from `at` on, change the
    /// concurrency to `Some(0)`.
    #[must_use]
    pub fn change_at(
        mut self,
        at: Duration,
        concurrency: Option<usize>,
        rate: Option<f64>,
    ) -> Self {
        if let Some(per_second) = rate {
            check_rate(per_second);
        }
        self.changes.push(CapacityChange {
            at,
            concurrency,
            rate,
        });
        self.changes.sort_by_key(|c| c.at);
        self
    }

    /// Each successful answer carries a body of this many bytes, allocated
    /// for it (so a size the machine cannot hold fails in the call).
    ///
    /// # Panics
    ///
    /// If `bytes` is more than `isize::MAX`, more than any allocation can
    /// hold: every successful call would panic ("capacity overflow").
    #[must_use]
    pub fn body_bytes(mut self, bytes: usize) -> Self {
        assert!(
            isize::try_from(bytes).is_ok(),
            "a simulated body of {bytes} bytes cannot be allocated (at most isize::MAX bytes)"
        );
        self.body_bytes = bytes;
        self
    }

    /// The unloaded latency's quantile `q` (0..1), estimated from 20 000
    /// draws of a fixed seed: the yardstick for "p99 over unloaded p99".
    pub fn unloaded_quantile(&self, q: f64) -> Duration {
        let mut rng = crate::rng::Rng::new(0x5EED);
        let mut draws: Vec<Duration> = (0..20_000).map(|_| self.latency.sample(&mut rng)).collect();
        draws.sort_unstable();
        crate::stats::quantile(&draws, q)
    }

    /// The mean unloaded latency, computed from the distribution.
    pub fn unloaded_mean(&self) -> Duration {
        self.latency.base.saturating_add(match self.latency.jitter {
            Jitter::None => Duration::ZERO,
            Jitter::Exponential { mean } => mean,
            Jitter::LogNormal { median, sigma } => scale(median, (sigma * sigma / 2.0).exp()),
        })
    }
}

impl Latency {
    pub(crate) fn sample(&self, rng: &mut crate::rng::Rng) -> Duration {
        let extra = match self.jitter {
            Jitter::None => Duration::ZERO,
            Jitter::Exponential { mean } => scale(mean, -rng.unit().ln()),
            Jitter::LogNormal { median, sigma } => {
                scale(median, (sigma * rng.normal()).exp().min(1e4))
            }
        };
        self.base.saturating_add(extra)
    }
}

/// Refuses a rate the simulation would take as no limit (see [`Model::rate`]).
fn check_rate(per_second: f64) {
    assert!(
        per_second > 0.0,
        "a simulated rate must be more than zero requests per second, not {per_second}: \
         a zero rate would mean no limit, not an outage; for an outage set the concurrency to 0"
    );
}

/// `d` × `factor`, saturating at `Duration::MAX` instead of panicking on a
/// product too large for a `Duration`; a negative or NaN factor gives zero.
pub(crate) fn scale(d: Duration, factor: f64) -> Duration {
    if d.is_zero() || factor.is_nan() || factor <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

impl Knee {
    pub(crate) fn factor(&self, in_service: usize) -> f64 {
        if in_service <= self.at {
            1.0
        } else {
            1.0 + self.slope * (in_service - self.at) as f64 / self.at as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body larger than any allocation is refused where it is written: it
    /// was taken, and every successful call then panicked with "capacity
    /// overflow" making it.
    #[test]
    fn a_body_no_allocation_can_hold_is_refused() {
        for bytes in [usize::MAX, isize::MAX as usize + 1] {
            let built = std::panic::catch_unwind(|| Model::new().body_bytes(bytes));
            let message = built.expect_err(&format!("body_bytes({bytes}) was accepted"));
            let message = message
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            assert!(message.contains("cannot be allocated"), "{message}");
        }
        let largest = Model::new().body_bytes(isize::MAX as usize);
        assert_eq!(largest.body_bytes, isize::MAX as usize);
    }

    /// A zero rate reads as an outage but used to mean "no limit" (the
    /// simulation skips a rate that is not above zero), so it is refused
    /// where it is written, like a negative or NaN rate.
    #[test]
    fn a_rate_that_is_not_above_zero_is_refused() {
        for per_second in [0.0, -0.0, -5.0, f64::NAN] {
            let built = std::panic::catch_unwind(|| Model::new().rate(per_second, 5));
            let message = built.expect_err(&format!("rate({per_second}, 5) was accepted"));
            let message = message
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            assert!(
                message.contains("more than zero"),
                "{per_second}: {message}"
            );
            let changed = std::panic::catch_unwind(|| {
                Model::new()
                    .rate(10.0, 5)
                    .change_at(Duration::from_secs(1), None, Some(per_second))
            });
            assert!(
                changed.is_err(),
                "change_at(.., Some({per_second})) was accepted"
            );
        }
        // Positive rates, however small or large, are taken as they are.
        for per_second in [1e-300, 0.5, 1e9, f64::INFINITY] {
            let model = Model::new().rate(per_second, 1).change_at(
                Duration::from_secs(1),
                None,
                Some(per_second),
            );
            assert_eq!(model.rate.map(|r| r.per_second), Some(per_second));
            assert_eq!(model.changes[0].rate, Some(per_second));
        }
    }

    /// The top quantile is the slowest draw, not one past the end. Found
    /// surviving in a mutation pass (the index capped at `len + 1` or
    /// `len`: `unloaded_quantile(1.0)` panicked).
    #[test]
    fn the_top_quantile_is_the_slowest_draw() {
        let model = Model::new().latency(
            Duration::from_millis(10),
            Jitter::Exponential {
                mean: Duration::from_millis(5),
            },
        );
        let top = model.unloaded_quantile(1.0);
        assert!(top > model.unloaded_quantile(0.99), "{top:?}");
        assert!(model.unloaded_quantile(0.0) >= Duration::from_millis(10));
    }

    /// A factor that is negative or NaN scales to zero, never to the
    /// saturated maximum. Found surviving in a mutation pass (the guard's
    /// `||` as `&&`).
    #[test]
    fn a_negative_or_nan_factor_scales_to_zero() {
        let second = Duration::from_secs(1);
        for factor in [f64::NAN, -1.0, -0.0, 0.0, f64::NEG_INFINITY] {
            assert_eq!(scale(second, factor), Duration::ZERO, "{factor}");
        }
        assert_eq!(scale(Duration::ZERO, f64::INFINITY), Duration::ZERO);
        assert_eq!(scale(second, f64::INFINITY), Duration::MAX);
        assert_eq!(scale(second, 2.5), Duration::from_millis(2500));
    }
}
