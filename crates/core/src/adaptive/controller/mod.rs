//! The decisions: pure state machines that read samples and move a limit.
//!
//! A [`Controller`] gets one [`Sample`] per finished call, with the time
//! passed in, so it needs no runtime and is unit-tested without one. The
//! layer around it owns the permits, the clock, the classification of
//! responses and the rules that are the same for every controller (one
//! decrease per congestion episode, a hold after a long `Retry-After`).
//!
//! Bring your own by implementing [`Controller`]; here, one that halves on
//! overload and adds one per success while the limit is in use:
//!
//! ```
//! use tokio::time::Instant;
//! use tower_fanout_core::adaptive::controller::{Change, Controller, Sample};
//! use tower_fanout_core::adaptive::AdaptiveLimitLayer;
//! use tower_fanout_core::classify::Outcome;
//!
//! struct Halving {
//!     limit: usize,
//! }
//!
//! impl Controller for Halving {
//!     fn initial_limit(&self) -> usize {
//!         self.limit
//!     }
//!
//!     fn update(&mut self, sample: &Sample, _now: Instant) -> Option<Change> {
//!         let (limit, reason) = match sample.outcome {
//!             Outcome::Overload => ((self.limit / 2).max(1), "overload"),
//!             // In use, and no further than a third above the demand.
//!             Outcome::Success if sample.saturated() && self.limit < sample.ceiling() => {
//!                 ((self.limit + 1).min(100), "increase")
//!             }
//!             _ => return None,
//!         };
//!         (limit != self.limit).then(|| {
//!             self.limit = limit;
//!             Change { limit, reason }
//!         })
//!     }
//!
//!     fn name(&self) -> &'static str {
//!         "halving"
//!     }
//! }
//!
//! let layer = AdaptiveLimitLayer::new(Halving { limit: 4 });
//! assert_eq!(layer.handle().limit(), 4);
//! assert_eq!(layer.handle().controller(), "halving");
//! ```

use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Outcome;
use crate::error::ConfigError;

/// The `min`, `max` and `initial` setters every builder has, on its
/// `bounds` field; `$kind` and the values are what their docs call the
/// starting values (`"default"`, `1`, `1000`, `5`).
macro_rules! bounds_setters {
    ($kind:literal: min $min:literal, max $max:literal, initial $initial:literal) => {
        #[doc = concat!("The lowest the limit goes (", $kind, " ", $min, ").")]
        #[must_use]
        pub fn min(mut self, min: usize) -> Self {
            self.bounds.min = min;
            self
        }
        #[doc = concat!("The highest the limit goes (", $kind, " ", $max, ").")]
        #[must_use]
        pub fn max(mut self, max: usize) -> Self {
            self.bounds.max = max;
            self
        }
        #[doc = concat!("The limit to start with (", $kind, " ", $initial, ").")]
        #[must_use]
        pub fn initial(mut self, initial: usize) -> Self {
            self.bounds.initial = initial;
            self
        }
    };
}

mod aimd;
mod gradient;
mod vegas;
mod windowed;

pub use self::aimd::{AimdBuilder, AimdController};
pub use self::gradient::{GradientBuilder, GradientController};
pub use self::vegas::{VegasBuilder, VegasController};
pub use self::windowed::{WindowedBuilder, WindowedController};

/// One finished call, as a controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// What the response meant.
    pub outcome: Outcome,
    /// From `call` to the response, less the time layers below spent
    /// waiting on purpose, as the response reported it
    /// ([`DeliberateWait`](crate::DeliberateWait)).
    pub rtt: Duration,
    /// The calls that wanted a permit when the call started, this one
    /// included: the permits in use plus the callers queued for one. Above
    /// `limit`, the limit was holding calls back; at or below it, this is
    /// all the demand there was (as far as this layer sees: callers queued
    /// above it, in a `Buffer` or shed by `fail_fast`, are not counted).
    pub in_flight: usize,
    /// The limit when the call started.
    pub limit: usize,
    /// The wait the downstream asked for with an overload answer
    /// (`Retry-After`), if it said so; always `None` for other outcomes.
    pub retry_after: Option<Duration>,
}

impl Sample {
    /// Whether the limit was really being used when this call started:
    /// three quarters of it at least.
    ///
    /// A limit only grows on evidence that it was the bottleneck: without
    /// this, a light load would let it climb without bound (vector's
    /// "limit reached" rule). The rule alone does not bound a step, though:
    /// a limit of 40 that 40 callers fill is saturated, and doubling it on
    /// that gives 80. Grow to at most [`ceiling`](Self::ceiling) as well.
    pub fn saturated(&self) -> bool {
        self.in_flight.saturating_mul(4) >= self.limit.saturating_mul(3)
    }

    /// The highest limit this call's demand justifies: a third above the
    /// calls that wanted a permit (the largest limit they still saturate),
    /// and at least one above.
    ///
    /// Every built-in controller grows only on saturated samples and to at
    /// most the ceiling of the demand it saw (the most of a round, for the
    /// round-based ones): under a steady demand of D callers the limit
    /// stops at 4/3 × D, however fast it grew (40 callers: 53). A demand
    /// above the limit (callers queued) lifts the ceiling with it, so slow
    /// start still doubles while they wait.
    pub fn ceiling(&self) -> usize {
        ceiling(self.in_flight)
    }
}

/// See [`Sample::ceiling`].
pub(crate) fn ceiling(demand: usize) -> usize {
    // 4D/3 rounded down (without overflowing for a huge D), and at least
    // one more: a full limit of 1 or 2 whose queue this layer cannot see
    // (a `Buffer` above it) must still be able to grow.
    demand.saturating_add((demand / 3).max(1))
}

/// The limit after an increase to `next` from `limit`, with the most calls
/// that wanted a permit at once being `demand`: never past a third above
/// it, and never lower than `limit` (an increase does not cut).
pub(crate) fn capped(limit: f64, next: f64, demand: usize) -> f64 {
    next.min(limit.max(ceiling(demand) as f64))
}

/// A move of the limit, with a short reason for the `tracing` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The new limit.
    pub limit: usize,
    /// Why (`"slow start"`, `"increase"`, `"overload"`, `"latency"`, ...).
    pub reason: &'static str,
}

/// Round-trip-time estimates, for the handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttEstimate {
    /// The recent RTT (the controller's short-term view).
    pub short: Option<Duration>,
    /// The long-term baseline (unloaded) RTT, where the controller keeps one.
    pub long: Option<Duration>,
}

/// Decides the limit from finished calls.
///
/// Implement it to bring your own algorithm; the layer calls it under a
/// lock, once per finished call, with that call's [`Sample`].
pub trait Controller: Send + 'static {
    /// The limit to start with.
    fn initial_limit(&self) -> usize;

    /// Reads one sample; returns a change when the limit should move.
    ///
    /// The limit returned must stay within the controller's own bounds;
    /// the layer takes 0 (here or from [`initial_limit`](Self::initial_limit))
    /// as 1, so that a call can always go, and puts no upper bound of its
    /// own.
    fn update(&mut self, sample: &Sample, now: Instant) -> Option<Change>;

    /// The controller's RTT estimates, if it keeps any.
    fn rtt(&self) -> RttEstimate {
        RttEstimate::default()
    }

    /// A short name for logs and reports (`"aimd"`, `"gradient"`, ...).
    fn name(&self) -> &'static str;
}

impl Controller for Box<dyn Controller> {
    fn initial_limit(&self) -> usize {
        (**self).initial_limit()
    }
    fn update(&mut self, sample: &Sample, now: Instant) -> Option<Change> {
        (**self).update(sample, now)
    }
    fn rtt(&self) -> RttEstimate {
        (**self).rtt()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// Min, max and initial limit, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) initial: usize,
}

impl Bounds {
    pub(crate) fn validate(self, what: &str) -> Result<Self, ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new(format!(
                "{what}: min limit must be at least 1 (a limit of 0 admits no call)"
            )));
        }
        if self.min > self.max {
            return Err(ConfigError::new(format!(
                "{what}: min limit {} is above max limit {}; lower min or raise max",
                self.min, self.max
            )));
        }
        if self.initial < self.min || self.initial > self.max {
            return Err(ConfigError::new(format!(
                "{what}: initial limit {} is outside [{}, {}]; pick one within min and max",
                self.initial, self.min, self.max
            )));
        }
        Ok(self)
    }

    pub(crate) fn clamp(&self, limit: f64) -> f64 {
        limit.clamp(self.min as f64, self.max as f64)
    }
}

/// Turns a fractional limit into a change when its whole part moved.
pub(crate) fn change(old: usize, new: f64, reason: &'static str) -> Option<Change> {
    // The float limit is kept whole-part-stable: truncation, not rounding,
    // so that +0.5 steps do not flap between two values.
    let new = new.max(1.0) as usize;
    (new != old).then_some(Change { limit: new, reason })
}

/// Accumulates the samples of one round (about one RTT) for the
/// round-based controllers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Round {
    start: Option<Instant>,
    pub(crate) rtts: Vec<Duration>,
    pub(crate) samples: u32,
    pub(crate) successes: usize,
    pub(crate) saturated: u32,
    pub(crate) max_in_flight: usize,
    /// The same for the calls started since the limit last moved.
    fresh: Fresh,
}

/// Samples of calls started since the limit last moved.
#[derive(Debug, Clone, Default)]
struct Fresh {
    rtts: Vec<Duration>,
    samples: u32,
    successes: usize,
    saturated: u32,
}

/// What a finished round saw.
#[derive(Debug, Clone)]
pub(crate) struct RoundSummary {
    /// Median RTT of the round's successes: robust to heavy tails.
    pub(crate) median: Option<Duration>,
    /// Whether most of the round's calls started with the limit in use.
    pub(crate) saturated: bool,
    /// The most calls that wanted a permit (in flight or queued) when any
    /// of the round's calls started.
    pub(crate) max_in_flight: usize,
    /// How many of the round's calls succeeded (stale ones included).
    pub(crate) successes: usize,
    /// The round's success RTTs, sorted.
    pub(crate) rtts: Vec<Duration>,
    /// The median RTT of the successes of calls started since the limit
    /// last moved (`None`: none came back yet).
    pub(crate) fresh_median: Option<Duration>,
    /// How many such successes.
    pub(crate) fresh_successes: usize,
    /// Whether most of those calls started with the limit in use.
    pub(crate) fresh_saturated: bool,
}

impl Round {
    /// Adds a sample; returns the summary when the round is over.
    ///
    /// A round ends, as in TCP, when a call that started after the round
    /// began comes back (one full round trip), provided it holds at least
    /// `min_samples` successes; or after four times `length` (an RTT
    /// estimate) whatever it holds, so that a small limit with a noisy RTT
    /// neither decides on two samples nor waits for ever. A `stale` sample
    /// (its call started under an older limit) counts for saturation but
    /// not for the RTT: its queueing belongs to that limit. A `fresh`
    /// sample (its call started since the limit last moved) also counts
    /// apart, and the round waits for `min_fresh` fresh successes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        sample: &Sample,
        now: Instant,
        length: Duration,
        min_samples: usize,
        stale: bool,
        fresh: bool,
        min_fresh: usize,
    ) -> Option<RoundSummary> {
        let start = *self.start.get_or_insert(now);
        self.samples += 1;
        match sample.outcome {
            Outcome::Success => {
                self.successes += 1;
                if !stale {
                    self.rtts.push(sample.rtt);
                }
            }
            // Overloads never get here: `Episodes::push` answers them first.
            Outcome::Overload | Outcome::CallerError | Outcome::Failure => {}
        }
        if sample.saturated() {
            self.saturated += 1;
        }
        if fresh {
            self.fresh.samples += 1;
            if sample.outcome == Outcome::Success {
                self.fresh.successes += 1;
                self.fresh.rtts.push(sample.rtt);
            }
            if sample.saturated() {
                self.fresh.saturated += 1;
            }
        }
        self.max_in_flight = self.max_in_flight.max(sample.in_flight);
        let elapsed = now.saturating_duration_since(start);
        let started = now.checked_sub(sample.rtt).unwrap_or(now);
        let round_trip =
            started >= start && self.successes >= min_samples && self.fresh.successes >= min_fresh;
        // Saturating: a huge RTT sample must not overflow the product.
        if !(round_trip || elapsed >= length.saturating_mul(4)) {
            return None;
        }
        self.rtts.sort_unstable();
        self.fresh.rtts.sort_unstable();
        let summary = RoundSummary {
            median: self.rtts.get(self.rtts.len() / 2).copied(),
            saturated: self.saturated * 2 >= self.samples,
            max_in_flight: self.max_in_flight,
            successes: self.successes,
            rtts: std::mem::take(&mut self.rtts),
            fresh_median: self.fresh.rtts.get(self.fresh.rtts.len() / 2).copied(),
            fresh_successes: self.fresh.successes,
            fresh_saturated: self.fresh.saturated * 2 >= self.fresh.samples
                && self.fresh.samples > 0,
        };
        self.reset();
        Some(summary)
    }

    /// Forgets the round so far (after a decrease, it described the old limit).
    pub(crate) fn reset(&mut self) {
        self.start = None;
        self.rtts.clear();
        self.samples = 0;
        self.successes = 0;
        self.saturated = 0;
        self.max_in_flight = 0;
        self.fresh = Fresh::default();
    }
}

/// The most successes a round of a round-based controller waits for.
const MIN_SAMPLES: usize = 30;

/// The episodes of a round-based controller (gradient, Vegas): the round
/// in progress, and when the limit last came down.
#[derive(Debug, Clone, Default)]
pub(crate) struct Episodes {
    round: Round,
    /// Samples from calls started before this describe the old limit.
    last_decrease: Option<Instant>,
    /// When the limit last moved, either way.
    last_change: Option<Instant>,
}

/// What a sample calls for, from a round-based controller.
#[derive(Debug)]
pub(crate) enum Step {
    /// Cut the limit now: an overload of a call made under the current limit.
    Overload,
    /// Decide: the round is over.
    Round(RoundSummary),
}

impl Episodes {
    /// Reads one sample; returns what it calls for, if anything.
    ///
    /// An overload of a call started at or before the last decrease belongs
    /// to the episode that decrease answered, and calls for nothing. Any
    /// other overload starts a new episode and calls for a cut at once, not
    /// at the round's end: past the capacity every refused call frees its
    /// permit for the next one to be refused, so each millisecond of delay
    /// costs a burst of refusals. The layer passes only overloads of calls
    /// started after the last decrease, so this is one cut per episode.
    /// Other samples go into the round (`length` is the RTT estimate, see
    /// [`Round::push`]), which calls for a decision when it is over, after
    /// at least `min_fresh` successes of calls started since the limit last
    /// moved. A caller error calls for nothing and goes into no round: it
    /// says nothing about the load, so it neither raises nor lowers the
    /// limit (a round of 404s alone ended on time and, its calls having
    /// kept the limit in use, doubled it in slow start).
    pub(crate) fn push(
        &mut self,
        sample: &Sample,
        now: Instant,
        length: Duration,
        limit: f64,
        min_fresh: usize,
    ) -> Option<Step> {
        if sample.outcome == Outcome::CallerError {
            return None;
        }
        let started = now.checked_sub(sample.rtt);
        let before = |at: Option<Instant>| at.is_some_and(|at| started.is_none_or(|s| s <= at));
        let stale = before(self.last_decrease);
        if sample.outcome == Outcome::Overload {
            if stale {
                return None;
            }
            self.round.reset();
            self.last_decrease = Some(now);
            self.last_change = Some(now);
            return Some(Step::Overload);
        }
        // A small limit cannot wait for thirty answers per round.
        let min_samples = MIN_SAMPLES.min(limit as usize);
        // Calls started at the very instant of the change are the ones it
        // let in: fresh (unlike the decrease rule above).
        let fresh = self
            .last_change
            .is_none_or(|at| started.is_some_and(|s| s >= at));
        self.round
            .push(sample, now, length, min_samples, stale, fresh, min_fresh)
            .map(Step::Round)
    }

    /// Passes on the decision taken at the end of a round, noting a
    /// decrease below `old` (the limit before the sample).
    pub(crate) fn decided(
        &mut self,
        decision: Option<Change>,
        old: usize,
        now: Instant,
    ) -> Option<Change> {
        if decision.is_some_and(|c| c.limit < old) {
            self.last_decrease = Some(now);
        }
        if decision.is_some() {
            self.last_change = Some(now);
        }
        decision
    }
}

/// The limit after an overload, for the round-based controllers; ends slow
/// start.
pub(crate) fn overload_cut(limit: f64, slow_start: &mut bool, backoff: f64) -> f64 {
    if std::mem::take(slow_start) {
        // Slow start doubled past the capacity: it lies between half this
        // limit (the last one without overload) and this one, so restart
        // from the half, as TCP does.
        limit / 2.0
    } else {
        // At least one whole call less: at a limit of 6, ×0.9 would leave
        // 5.4 and the next probe would overrun again at once.
        (limit * backoff).min(limit - 1.0)
    }
}

/// The long-term baseline: the lowest decile of the recent round medians.
///
/// Not their minimum: under heavy-tailed latency a round's median is noisy,
/// and the minimum of many noisy medians sits far below the typical one, so
/// every round would look congested. It drifts up only when nine rounds in
/// ten of the last 128 were slow: a slower downstream, not a passing queue.
pub(crate) fn baseline(history: &std::collections::VecDeque<Duration>) -> Option<Duration> {
    let mut sorted: Vec<Duration> = history.iter().copied().collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 10).copied()
}

/// Checks a multiplicative cut: between 0 and 1, exclusive.
pub(crate) fn validate_backoff(what: &str, backoff: f64) -> Result<(), ConfigError> {
    if backoff > 0.0 && backoff < 1.0 {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "{what}: backoff must be between 0 and 1 exclusive (0.9 cuts by a tenth); got {backoff}"
        )))
    }
}

/// Appends to a bounded history, dropping the oldest entry when it is full.
pub(crate) fn push_capped<T>(q: &mut std::collections::VecDeque<T>, value: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(value);
}

/// An exponentially weighted moving average of durations.
pub(crate) fn ewma(old: Option<Duration>, sample: Duration, weight: f64) -> Duration {
    match old {
        None => sample,
        // Saturating: with both near `Duration::MAX` the rounded halves
        // add up past it.
        Some(old) => old
            .mul_f64(1.0 - weight)
            .saturating_add(sample.mul_f64(weight)),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub(crate) fn ok(rtt_ms: u64, in_flight: usize, limit: usize) -> Sample {
        Sample {
            outcome: Outcome::Success,
            rtt: ms(rtt_ms),
            in_flight,
            limit,
            retry_after: None,
        }
    }

    /// Callers in a saturated closed loop: more than any limit in the tests
    /// reaches, so the demand never caps an increase.
    pub(crate) const CALLERS: usize = 10_000;

    /// A round of `answers` successes all taking `median`, read alike
    /// whether fresh or not (no spread inside it); a saturated one had
    /// [`CALLERS`] wanting a permit, another at most 20.
    pub(crate) fn summary(median: Duration, saturated: bool, answers: usize) -> RoundSummary {
        RoundSummary {
            median: Some(median),
            saturated,
            max_in_flight: if saturated { CALLERS } else { 20 },
            successes: answers,
            rtts: vec![median; answers],
            fresh_median: Some(median),
            fresh_successes: answers,
            fresh_saturated: saturated,
        }
    }

    pub(crate) fn overload(rtt_ms: u64, in_flight: usize, limit: usize) -> Sample {
        Sample {
            outcome: Outcome::Overload,
            ..ok(rtt_ms, in_flight, limit)
        }
    }

    /// Drives a controller with a saturated closed loop of [`CALLERS`]
    /// against a model downstream, event by event: `capacity(round)` calls
    /// at a time succeed after `latency(in flight)`, more are refused after
    /// 1 ms, and every answer admits new calls up to the current limit (the
    /// other callers queue for a permit). Returns the
    /// limit at the end of each round trip (of `latency(1)`). Like the
    /// layer, it drops overloads from calls started before the last decrease.
    pub(crate) fn drive(
        c: &mut dyn Controller,
        rounds: usize,
        capacity: impl Fn(usize) -> usize,
        latency: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let t0 = Instant::now();
        let rtt = latency(1);
        let mut limit = c.initial_limit();
        // (finish, is_ok, demand at start, limit at start, start)
        type Call = (Instant, bool, usize, usize, Instant);
        let mut heap: BinaryHeap<Reverse<Call>> = BinaryHeap::new();
        let mut last_decrease = t0;
        let mut ok_in_flight = 0usize;
        let mut now = t0;
        let mut out = Vec::new();
        let mut next_mark = t0 + rtt;
        while out.len() < rounds {
            while heap.len() < limit {
                let round = (now.duration_since(t0).as_nanos() / rtt.as_nanos()) as usize;
                let n = heap.len() + 1;
                // The calls in flight plus the callers queued behind them;
                // at the start they arrive one by one, and the first ones
                // find none before them.
                let demand = if now == t0 { n } else { CALLERS };
                let accepted = ok_in_flight < capacity(round);
                let finish = if accepted {
                    ok_in_flight += 1;
                    now + latency(ok_in_flight)
                } else {
                    now + ms(1)
                };
                heap.push(Reverse((finish, accepted, demand, limit, now)));
            }
            let Some(Reverse((finish, accepted, n, l, started))) = heap.pop() else {
                break;
            };
            while finish >= next_mark && out.len() < rounds {
                out.push(limit);
                next_mark += rtt;
            }
            now = finish;
            let s = if accepted {
                ok_in_flight -= 1;
                Sample {
                    rtt: finish.duration_since(started),
                    ..ok(0, n, l)
                }
            } else if started < last_decrease {
                continue;
            } else {
                overload(1, n, l)
            };
            if let Some(ch) = c.update(&s, now) {
                if ch.limit < limit {
                    last_decrease = now;
                }
                limit = ch.limit;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounds_refuse_bad_config() {
        let b = |min, max, initial| Bounds { min, max, initial }.validate("test");
        assert!(b(0, 10, 5).is_err());
        assert!(b(11, 10, 10).is_err());
        assert!(b(2, 10, 11).is_err());
        assert!(b(2, 10, 1).is_err());
        assert!(b(2, 10, 5).is_ok());
        // The bounds are inclusive: a fixed limit, and a start at either end.
        assert!(b(5, 5, 5).is_ok());
        assert!(b(2, 10, 2).is_ok());
        assert!(b(2, 10, 10).is_ok());
        let msg = b(11, 10, 10).unwrap_err().to_string();
        assert!(msg.contains("min limit 11 is above max limit 10"), "{msg}");
    }

    /// A round ends on a full round trip: an answer to a call that started
    /// after the round began, once there are enough successes; answers to
    /// calls sent before it do not end it, however many. Its median is the
    /// middle of its RTTs.
    #[test]
    fn a_round_ends_on_a_call_started_after_it_and_reports_the_median() {
        use test_support::{ms, ok};
        let t0 = Instant::now();
        let mut round = Round::default();
        let mut push = |rtt: u64, in_flight: usize, at: Duration| {
            round.push(
                &ok(rtt, in_flight, 10),
                t0 + at,
                ms(1000),
                5,
                false,
                true,
                0,
            )
        };
        // All sent before the round's first answer at t0; half of the
        // round's calls find the limit in use.
        for (rtt, in_flight) in [(10, 10), (60, 10), (20, 10), (50, 2), (30, 2)] {
            assert!(push(rtt, in_flight, ms(0)).is_none(), "rtt {rtt}");
        }
        // Sent at t0 + 5 ms, after the round began.
        let summary = push(40, 2, ms(45)).expect("a full round trip");
        assert_eq!(summary.successes, 6);
        assert_eq!(summary.median, Some(ms(40)), "{:?}", summary.rtts);
        assert_eq!(summary.fresh_median, Some(ms(40)));
        // Half the calls in use is enough to call the round saturated.
        assert!(summary.saturated && summary.fresh_saturated);
        assert_eq!(summary.max_in_flight, 10);
    }

    /// Rounds whose calls mostly found the limit unused, or that hold no
    /// call made since the limit last moved, are not saturated.
    #[test]
    fn a_round_without_fresh_calls_in_use_is_not_fresh_saturated() {
        use test_support::{ms, ok};
        let t0 = Instant::now();
        // Two answers to calls sent before the round began (20 ms ago, no
        // round trip yet), then one past four lengths (40 ms), which ends it;
        // `in_flight` of each when it started, of a limit of 10.
        let round = |in_flight: [usize; 3], fresh: bool| {
            let mut round = Round::default();
            for (at, n) in [0, 15].into_iter().zip(in_flight) {
                let early = round.push(&ok(20, n, 10), t0 + ms(at), ms(10), 2, false, fresh, 0);
                assert!(early.is_none());
            }
            round
                .push(
                    &ok(10, in_flight[2], 10),
                    t0 + ms(40),
                    ms(10),
                    2,
                    false,
                    fresh,
                    0,
                )
                .expect("past four lengths")
        };
        let summary = round([10, 10, 10], false);
        assert!(summary.saturated, "every call in use");
        assert_eq!(
            (summary.fresh_successes, summary.fresh_saturated),
            (0, false)
        );
        let summary = round([1, 1, 10], true);
        assert!(
            !summary.saturated && !summary.fresh_saturated,
            "one in three in use"
        );
    }

    /// An overload in slow start halves the limit (the last one without
    /// overload was half); later ones cut by the backoff, and by at least
    /// one whole call.
    #[test]
    fn overload_cut_halves_in_slow_start_then_backs_off() {
        let mut slow_start = true;
        assert_eq!(overload_cut(40.0, &mut slow_start, 0.9), 20.0);
        assert!(!slow_start, "an overload ends slow start");
        assert_eq!(overload_cut(20.0, &mut slow_start, 0.8), 16.0);
        assert_eq!(overload_cut(6.0, &mut slow_start, 0.9), 5.0, "×0.9 is 5.4");
    }

    #[test]
    fn backoff_is_between_0_and_1_exclusive() {
        for ok in [0.5, 0.9, f64::EPSILON, 1.0 - f64::EPSILON] {
            assert!(validate_backoff("test", ok).is_ok(), "{ok}");
        }
        for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            let err = validate_backoff("test", bad).unwrap_err().to_string();
            assert!(err.contains("between 0 and 1 exclusive"), "{bad}: {err}");
        }
    }

    /// A decrease starts an episode: overloads of calls sent before it
    /// belong to it and call for nothing; a decision that does not lower
    /// the limit starts none.
    #[test]
    fn only_a_decrease_makes_earlier_overloads_stale() {
        use test_support::{ms, overload};
        let t0 = Instant::now();
        let mut e = Episodes::default();
        let cut = Change {
            limit: 5,
            reason: "latency",
        };
        e.decided(Some(cut), 10, t0 + ms(100));
        let step =
            |e: &mut Episodes, rtt, at| e.push(&overload(rtt, 5, 5), t0 + ms(at), ms(10), 5.0, 0);
        assert!(
            step(&mut e, 50, 120).is_none(),
            "sent at 70, before the cut"
        );
        assert!(
            matches!(step(&mut e, 10, 130), Some(Step::Overload)),
            "sent at 120"
        );
        let same = Change {
            limit: 5,
            reason: "hold",
        };
        e.decided(Some(same), 5, t0 + ms(200));
        assert!(
            matches!(step(&mut e, 50, 220), Some(Step::Overload)),
            "sent at 170"
        );
    }

    /// After the limit moves, a success is fresh when its call started at
    /// or after the move: it describes the new limit.
    #[test]
    fn fresh_means_sent_since_the_limit_moved() {
        use test_support::{ms, ok};
        let t0 = Instant::now();
        let mut e = Episodes::default();
        let up = Change {
            limit: 12,
            reason: "increase",
        };
        e.decided(Some(up), 10, t0);
        // Sent at t0 - 30 ms, under the old limit; then one sent at t0 + 30.
        assert!(
            e.push(&ok(50, 12, 12), t0 + ms(20), ms(10), 2.0, 1)
                .is_none()
        );
        let Some(Step::Round(round)) = e.push(&ok(10, 12, 12), t0 + ms(40), ms(10), 2.0, 1) else {
            panic!("a full round trip with one fresh success");
        };
        assert_eq!((round.successes, round.fresh_successes), (2, 1));
        assert_eq!(round.fresh_median, Some(ms(10)));
    }

    /// The ceiling is the largest limit the demand still saturates, and at
    /// least one more than the demand.
    #[test]
    fn the_ceiling_is_a_third_above_the_demand() {
        for (demand, ceiling) in [(1, 2), (2, 3), (3, 4), (40, 53), (100, 133)] {
            let sample = test_support::ok(10, demand, ceiling);
            assert_eq!(sample.ceiling(), ceiling, "{demand}");
            if demand >= 3 {
                assert!(sample.saturated(), "{demand} saturates {ceiling}");
                assert!(!test_support::ok(10, demand, ceiling + 1).saturated());
            }
        }
        assert_eq!(super::ceiling(usize::MAX), usize::MAX);
        // An increase stops there, and never cuts.
        assert_eq!(capped(40.0, 80.0, 40), 53.0);
        assert_eq!(capped(40.0, 80.0, 100), 80.0);
        assert_eq!(capped(60.0, 120.0, 40), 60.0);
    }

    #[test]
    fn saturation_needs_three_quarters_in_use() {
        assert!(test_support::ok(10, 3, 4).saturated());
        assert!(!test_support::ok(10, 2, 4).saturated());
    }
}
