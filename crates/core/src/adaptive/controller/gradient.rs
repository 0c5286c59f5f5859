//! The gradient controller: RTT against a long-term baseline, plus overload.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Bounds, Change, Controller, Episodes, RoundSummary, RttEstimate, Sample, Step, change, ewma,
    overload_cut,
};
use crate::error::ConfigError;

/// Moves the limit once per round trip by the ratio of the recent RTT to a
/// long-term baseline, and cuts it at once on overload. The default controller.
///
/// - **Overload**: ×`backoff` (0.9) and at least one call less, at once
///   (leaving slow start: back to half, the last limit without overload).
///   The layer reports only overloads of calls that started after the last
///   decrease, so the burst of failures of one episode is one cut, while a
///   limit still above the capacity keeps being cut within milliseconds.
/// - **Latency**: each round (at least one RTT and thirty successes, or as
///   many as the limit) compares the round's median RTT with the baseline:
///   the lowest, over the last 128 rounds, of the median pooled over eight
///   rounds (and over more while those hold fewer than 20 answers).
///   Medians, because LLM-like latency has heavy tails that would swing a
///   mean; pooled, because the minimum of many small-sample medians sits
///   far below the typical one. A median above `tolerance` × baseline
///   (default 1.25, widened up to 3 when the RTTs inside a round are spread
///   wide) cuts by threshold·baseline/median, at most halving. A cut that
///   ends slow start, or comes the round after it ended, halves: the last
///   doubling overshot the knee, and the first answers under a new limit
///   are the quick ones, so the gradient would cut too little.
/// - **Growth**, if the limit was in use and some of the round's calls
///   succeeded (a round of failures alone is no sign of room): ×2 per round
///   during slow start (until the first signal); then, like TCP CUBIC, back
///   quickly towards the capacity last seen (half the gap per round), slowly
///   around it (+2 % per round, at least a quarter call, within 2 % or one
///   call of it), and past it a probe whose step doubles every round (4 %,
///   8 %, 16 %, then 32 %): a capacity that doubled is found in about six
///   round trips while a steady one is overrun rarely and by little. Once the
///   median RTT is half way to the threshold, slow start ends and probing
///   starts over from 4 %: the knee is near. Slow start reads only the
///   answers of calls made under the limit it doubled to (it waits for a
///   few): the answers of earlier calls describe half that limit, and
///   doubling on them would overshoot a knee by a factor of two. After a
///   refusal with a `Retry-After` (a rate cap, which stays put) the probe's
///   step stops at 8 %. No growth goes past a third above the most calls
///   that wanted a permit in the round ([`Sample::ceiling`](super::Sample::ceiling)).
/// - **Idle**: in a round where the limit was not in use, it settles towards
///   1.5 × the calls in flight it saw (×0.9 per round), so a light load
///   leaves no stale high limit behind.
///
/// "The capacity last seen" is the limit before the last overload cut, or
/// after the last latency cut (that is the limit the latency allows). After
/// refusals that carry a `Retry-After` (a rate or a quota: cutting the limit
/// slows the calls only a round trip later, so several cuts follow one
/// another) it stays near the first one.
///
/// RTTs of calls that started before its last decrease are left out of the
/// rounds' medians: each latency decision reads calls made under the limit
/// it is judging.
#[derive(Debug, Clone)]
pub struct GradientController {
    bounds: Bounds,
    tolerance: f64,
    backoff: f64,
    limit: f64,
    slow_start: bool,
    /// Slow start ended a round ago on latency half way to the threshold:
    /// a latency cut now still answers its last doubling.
    leaving: bool,
    /// Probing rounds in a row past `w_max`: each doubles the step.
    probe: u32,
    /// The limit at the last decrease: the capacity last seen.
    w_max: Option<f64>,
    /// The last overload carried a `Retry-After`: a rate cap, which stays
    /// where it is, so probing past it stays gentle.
    rate_capped: bool,
    episodes: Episodes,
    short: Option<Duration>,
    /// The last rounds' RTTs, pooled for a low-noise median: eight rounds,
    /// or as many as hold `MIN_POOLED` answers.
    pool: VecDeque<Vec<Duration>>,
    /// Pooled medians: the baseline is their minimum.
    pooled: VecDeque<Duration>,
    /// The spread of log RTTs inside recent rounds, to know how noisy a
    /// round's median is.
    noise: VecDeque<f64>,
}

/// Builds a [`GradientController`]; see its setters for the defaults.
#[derive(Debug, Clone)]
pub struct GradientBuilder {
    bounds: Bounds,
    tolerance: f64,
    backoff: f64,
}

const HISTORY: usize = 128;
/// The most answers of calls made under a limit that slow start waits for
/// before it doubles it again.
const SLOW_START_FRESH: usize = 8;
const POOL_ROUNDS: usize = 8;
/// The fewest answers a pooled median is taken over.
const MIN_POOLED: usize = 20;
const NOISE_ROUNDS: usize = 32;
/// A round's median must exceed the baseline by this many standard
/// deviations of its noise to count as congestion.
const NOISE_SIGMAS: f64 = 4.0;
/// The threshold never exceeds three times the baseline, however noisy.
const MAX_THRESHOLD: f64 = 3.0;

impl GradientController {
    /// Starts a builder: min 1, max 1000, initial 5, tolerance 1.25, backoff 0.9.
    pub fn builder() -> GradientBuilder {
        GradientBuilder {
            bounds: Bounds {
                min: 1,
                max: 1000,
                initial: 5,
            },
            tolerance: 1.25,
            backoff: 0.9,
        }
    }

    fn baseline(&self) -> Option<Duration> {
        self.pooled.iter().min().copied()
    }

    /// How far above the baseline a round's median may go: `tolerance`, or
    /// more when latency is noisy (heavy tails), so that noise does not
    /// pass for congestion.
    ///
    /// The noise is read inside each round (the spread of its RTTs), not
    /// across rounds, where the controller's own probing would count as
    /// noise and widen the threshold it is judged by. A round median of `n`
    /// answers wanders by about 1.25·s/√n in log terms (s: the spread of
    /// log RTTs), the baseline is a minimum of pooled medians and so sits
    /// about 2.5 of its own deviations low: the threshold covers four
    /// deviations of the first plus that bias.
    fn threshold(&self, n: usize) -> f64 {
        let mut spreads: Vec<f64> = self.noise.iter().copied().collect();
        spreads.sort_unstable_by(f64::total_cmp);
        let Some(&spread) = spreads.get(spreads.len() / 2) else {
            return self.tolerance;
        };
        let pooled_n: usize = self.pool.iter().map(Vec::len).sum();
        let deviation = |n: usize| 1.25 * spread / (n.max(1) as f64).sqrt();
        let log = NOISE_SIGMAS * deviation(n) + 2.5 * deviation(pooled_n);
        log.exp()
            .clamp(self.tolerance, MAX_THRESHOLD.max(self.tolerance))
    }

    fn learn(&mut self, round: &RoundSummary) {
        let Some(median) = round.median else {
            return;
        };
        self.short = Some(ewma(self.short, median, 0.5));
        // The spread of log RTTs inside the round, from its quartiles.
        let q = |f: f64| round.rtts[((round.rtts.len() - 1) as f64 * f) as usize];
        let (q1, q3) = (q(0.25).as_secs_f64(), q(0.75).as_secs_f64());
        if q1 > 0.0 {
            super::push_capped(&mut self.noise, (q3 / q1).ln() / 1.349, NOISE_ROUNDS);
        }
        // The last eight rounds, and more while those hold fewer than
        // MIN_POOLED answers: at a limit of one or two a round holds an
        // answer or two, eight such rounds never made a pooled median, and
        // the baseline stayed where it was for good (a downstream that got
        // slower for good kept the limit at its minimum).
        self.pool.push_back(round.rtts.clone());
        let mut answers: usize = self.pool.iter().map(Vec::len).sum();
        while self.pool.len() > POOL_ROUNDS
            && let Some(oldest) = self.pool.front()
            && answers - oldest.len() >= MIN_POOLED
        {
            answers -= oldest.len();
            self.pool.pop_front();
        }
        let mut all: Vec<Duration> = self.pool.iter().flatten().copied().collect();
        all.sort_unstable();
        // A median of a handful of heavy-tailed answers can sit far below
        // the typical one, and the baseline (their minimum) would keep it
        // for 128 rounds: every round after would look congested.
        if all.len() >= MIN_POOLED
            && let Some(pooled) = all.get(all.len() / 2)
        {
            super::push_capped(&mut self.pooled, *pooled, HISTORY);
        }
    }

    /// The answers of calls made under the current limit a round waits
    /// for before slow start decides: a quarter of the limit, 1 to
    /// `SLOW_START_FRESH` (none after slow start). Slow start decides on
    /// calls made under the limit it doubled to: the answers of calls made
    /// before it still describe half of it, and doubling on them overshoots
    /// a knee by a factor of two.
    fn min_fresh(&self) -> usize {
        if self.slow_start {
            (self.limit as usize / 4).clamp(1, SLOW_START_FRESH)
        } else {
            0
        }
    }

    fn on_overload(&mut self, sample: &Sample) {
        self.probe = 0;
        // After slow start the last limit that worked is half this one.
        let seen = if self.slow_start {
            self.limit / 2.0
        } else {
            self.limit
        };
        // A refusal with a Retry-After comes from a rate or a quota: cutting
        // the limit slows the calls down only a round trip later, so the
        // refusals go on and cut again meanwhile. The capacity last seen is
        // then not each of those lower limits, only a little below the last.
        self.rate_capped = sample.retry_after.is_some();
        self.w_max = match (self.w_max, sample.retry_after) {
            (Some(w), Some(_)) => Some(seen.max(w * 0.97)),
            _ => Some(seen),
        };
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
            leaving: false,
            probe: 0,
            w_max: None,
            rate_capped: false,
            episodes: Episodes::default(),
            short: None,
            pool: VecDeque::with_capacity(POOL_ROUNDS + 1),
            pooled: VecDeque::with_capacity(HISTORY),
            noise: VecDeque::with_capacity(NOISE_ROUNDS),
        }
    }
}

impl GradientBuilder {
    bounds_setters!("default": min 1, max 1000, initial 5);
    /// The least a round's median RTT may exceed the baseline by before the
    /// limit comes down (default 1.25). The controller widens it, up to 3,
    /// when round medians are noisy (four robust standard deviations of
    /// their spread), so heavy-tailed latency does not pass for congestion.
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
            return Err(ConfigError::new(format!(
                "gradient: tolerance must be at least 1 (1.25 lets the RTT grow by a quarter); got {}",
                self.tolerance
            )));
        }
        super::validate_backoff("gradient", self.backoff)?;
        Ok(GradientController::from_builder(self))
    }
}

impl GradientController {
    fn decide(&mut self, round: &RoundSummary) -> Option<Change> {
        self.learn(round);
        let old = self.limit as usize;
        let just_left = std::mem::take(&mut self.leaving);
        // In slow start, read only the calls made under the current limit.
        let fresh = self.slow_start && round.fresh_median.is_some();
        let (median, saturated, n) = if fresh {
            (
                round.fresh_median,
                round.fresh_saturated,
                round.fresh_successes,
            )
        } else {
            (round.median, round.saturated, round.rtts.len())
        };
        if let (Some(median), Some(baseline)) = (median, self.baseline()) {
            let threshold = self.threshold(n);
            let target = scaled(baseline, threshold);
            if median > target {
                self.probe = 0;
                let leaving = std::mem::take(&mut self.slow_start);
                let gradient = if leaving || just_left {
                    // Slow start doubled past the knee: half this limit (the
                    // last one with no queue) is the capacity seen, as on an
                    // overload. The gradient would cut less: the first
                    // answers under a new limit are the quick ones.
                    0.5
                } else {
                    (target.as_secs_f64() / median.as_secs_f64()).clamp(0.5, 1.0)
                };
                self.limit = self.bounds.clamp(self.limit * gradient);
                // The gradient aims at the limit the latency allows: that is
                // the capacity seen, not the higher limit that queued.
                self.w_max = Some(self.limit);
                return change(old, self.limit, "latency");
            }
            // Latency already half way to the threshold: the knee is near,
            // so probe with small steps only, and end slow start a round
            // before the threshold would be crossed (doubling past a knee
            // overshoots it by far).
            if median > scaled(baseline, 1.0 + (threshold - 1.0) / 2.0) {
                self.probe = 0;
                self.leaving = std::mem::take(&mut self.slow_start);
            }
        }
        if !saturated {
            // The limit was not the bottleneck: let it settle to half again
            // the demand it saw (increases stop at a third above it: the
            // gap keeps the two from flapping), so
            // that a light load does not leave behind a limit a later burst
            // would overrun the downstream with.
            let ceiling = (round.max_in_flight as f64 * 1.5).max(self.bounds.min as f64);
            if self.limit > ceiling {
                self.limit = self.bounds.clamp((self.limit * 0.9).max(ceiling));
                return change(old, self.limit, "idle");
            }
            return None;
        }
        if round.successes == 0 {
            // Nothing but failures (500s): no evidence the limit has room.
            return None;
        }
        // No further than a third above the demand seen: the round's calls
        // may have been let in by a limit half this one (on the paused
        // clock, those sent at the instant of a doubling count as fresh),
        // and doubling again on them took 40 callers to a limit of 160.
        // Nor does the probe count a round the demand stopped.
        let cap = super::capped(self.limit, f64::INFINITY, round.max_in_flight);
        if self.limit >= cap {
            return None;
        }
        if self.slow_start {
            self.limit = self.bounds.clamp((self.limit * 2.0).min(cap));
            return change(old, self.limit, "slow start");
        }
        // CUBIC's shape: back quickly towards the limit of the last decrease
        // (the capacity last seen), slowly around it, then probe past it
        // with a step that doubles every round (4 %, 8 %, 16 %, 32 %), so a
        // capacity that doubled is found in about six round trips while a
        // steady one is overrun rarely and by little.
        let step = match self.w_max {
            Some(w) if self.limit < w - (w * 0.02).max(1.0) => ((w - self.limit) / 2.0).max(0.25),
            Some(w) if self.limit < w + (w * 0.02).max(1.0) => (self.limit * 0.02).max(0.25),
            _ => {
                // Past a rate cap every call too many is refused at once:
                // no step above 8 %, or the probe overruns it by a quarter.
                let doublings = if self.rate_capped { 1 } else { 3 };
                let step = self.limit * 0.04 * f64::from(1u32 << self.probe.min(doublings));
                self.probe = self.probe.saturating_add(1);
                step.max(0.25)
            }
        };
        self.limit = self.bounds.clamp((self.limit + step).min(cap));
        change(old, self.limit, "increase")
    }
}

/// `d × factor`, or `Duration::MAX` past it: a huge tolerance (the builder
/// takes any finite one) made `Duration::mul_f64` panic.
fn scaled(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

impl Controller for GradientController {
    fn initial_limit(&self) -> usize {
        self.bounds.initial
    }

    fn update(&mut self, sample: &Sample, now: Instant) -> Option<Change> {
        let old_limit = self.limit as usize;
        let length = self.short.unwrap_or(sample.rtt);
        let min_fresh = self.min_fresh();
        match self
            .episodes
            .push(sample, now, length, self.limit, min_fresh)?
        {
            Step::Overload => {
                self.on_overload(sample);
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
            long: self.baseline(),
        }
    }

    fn name(&self) -> &'static str {
        "gradient"
    }
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

    /// A controller at `limit` whose baseline RTT is `base`, with no noise
    /// seen yet (the threshold is the tolerance, 1.25).
    fn at(limit: f64, slow_start: bool, base: Duration) -> GradientController {
        let mut c = GradientController {
            limit,
            slow_start,
            ..GradientController::default()
        };
        c.pooled.push_back(base);
        c
    }

    fn decided(c: &mut GradientController, r: &RoundSummary) -> Option<(usize, &'static str)> {
        c.decide(r).map(|d| (d.limit, d.reason))
    }

    /// Single latency decisions worked by hand, baseline 100 ms and
    /// threshold 1.25 (125 ms; half way, 112.5 ms).
    #[test]
    fn latency_decisions_follow_the_gradient() {
        let base = ms(100);
        // 125/200: cut to 62.5, and that is the capacity seen.
        let mut c = at(100.0, false, base);
        assert_eq!(
            decided(&mut c, &summary(ms(200), true, 30)),
            Some((62, "latency"))
        );
        assert_eq!(c.w_max, Some(62.5));
        // 125/400 is below a half: at most halving.
        let mut c = at(100.0, false, base);
        assert_eq!(
            decided(&mut c, &summary(ms(400), true, 30)),
            Some((50, "latency"))
        );
        // A cut that ends slow start halves, whatever the gradient.
        let mut c = at(100.0, true, base);
        assert_eq!(
            decided(&mut c, &summary(ms(200), true, 30)),
            Some((50, "latency"))
        );
        assert!(!c.slow_start);
        // And so does one the round after slow start ended half way.
        let mut c = at(100.0, false, base);
        c.leaving = true;
        assert_eq!(
            decided(&mut c, &summary(ms(200), true, 30)),
            Some((50, "latency"))
        );
        // At the threshold exactly: no cut.
        let mut c = at(100.0, false, base);
        c.w_max = Some(100.0);
        assert_eq!(
            decided(&mut c, &summary(ms(125), true, 30)),
            Some((102, "increase"))
        );
        // Half way to the threshold ends slow start without a cut: the
        // growth that follows is the probe's 4 %, not a doubling, and the
        // next round still counts as leaving.
        let mut c = at(100.0, true, base);
        c.probe = 2;
        assert_eq!(
            decided(&mut c, &summary(ms(120), true, 30)),
            Some((104, "increase"))
        );
        assert!(!c.slow_start && c.leaving);
        assert_eq!(c.probe, 1);
        // Half way exactly (baseline 1 s: 1.125 s, exact in binary) is not
        // past it: slow start goes on.
        let mut c = at(100.0, true, ms(1000));
        assert_eq!(
            decided(&mut c, &summary(ms(1125), true, 30)),
            Some((200, "slow start"))
        );
        // Past slow start every answer of the round counts, not only the
        // fresh ones (calls made under the current limit).
        let mut c = at(100.0, false, base);
        let mut mixed = summary(ms(200), true, 30);
        mixed.fresh_median = Some(base);
        assert_eq!(decided(&mut c, &mixed), Some((62, "latency")));
        // In slow start only the fresh ones do.
        let mut c = at(100.0, true, base);
        assert_eq!(decided(&mut c, &mixed), Some((200, "slow start")));
        // Below half way, slow start doubles.
        let mut c = at(100.0, true, base);
        assert_eq!(
            decided(&mut c, &summary(ms(110), true, 30)),
            Some((200, "slow start"))
        );
        assert!(c.slow_start && !c.leaving);
    }

    /// Growth and idling, worked by hand: CUBIC's three regions around the
    /// capacity last seen, the doubling probe and its cap after a rate
    /// limit, the settling of an unused limit, and a round of failures.
    #[test]
    fn growth_decisions_follow_the_capacity_last_seen() {
        let base = ms(100);
        let grow = |limit: f64, w_max: Option<f64>, probe: u32, rate_capped: bool| {
            let mut c = at(limit, false, base);
            c.w_max = w_max;
            c.probe = probe;
            c.rate_capped = rate_capped;
            let decision = decided(&mut c, &summary(base, true, 30));
            (decision, c.limit, c.probe)
        };
        // Far below 100: half the gap.
        assert_eq!(
            grow(50.0, Some(100.0), 0, false),
            (Some((75, "increase")), 75.0, 0)
        );
        // Within 2 % of 100 (98..102): 2 % of the limit.
        assert_eq!(grow(99.0, Some(100.0), 0, false).1, 99.0 + 99.0 * 0.02);
        assert_eq!(
            grow(97.0, Some(100.0), 0, false).1,
            98.5,
            "97 < 98: half the gap"
        );
        assert_eq!(grow(98.0, Some(100.0), 0, false).1, 98.0 + 98.0 * 0.02);
        // Within one call of a small one: a quarter call.
        assert_eq!(grow(10.0, Some(10.5), 0, false), (None, 10.25, 0));
        // Past it: 4 %, doubling each round up to 32 %.
        assert_eq!(grow(102.0, Some(100.0), 0, false).1, 102.0 + 102.0 * 0.04);
        // (probe rounds so far, rate capped) → the new limit; past a rate
        // cap, 8 % at most.
        for (probe, capped, next) in [
            (0, false, 104),
            (1, false, 108),
            (2, false, 116),
            (3, false, 132),
            (9, false, 132),
            (0, true, 104),
            (3, true, 108),
        ] {
            assert_eq!(
                grow(100.0, None, probe, capped),
                (Some((next, "increase")), next as f64, probe + 1),
                "probe {probe}, rate capped {capped}"
            );
        }
        // At a limit of 2, 4 % is less than a quarter call.
        assert_eq!(grow(2.0, None, 0, false), (None, 2.25, 1));
        // The probe's count saturates rather than wrapping.
        assert_eq!(grow(100.0, None, u32::MAX, false).2, u32::MAX);

        // Unused (not saturated) with 20 in flight at most: down by a tenth
        // a round towards 30, and no lower.
        let idle = |limit: f64| {
            let mut c = at(limit, false, base);
            (decided(&mut c, &summary(base, false, 30)), c.limit)
        };
        assert_eq!(idle(100.0), (Some((90, "idle")), 90.0));
        assert_eq!(idle(32.0), (Some((30, "idle")), 30.0));
        assert_eq!(idle(30.0), (None, 30.0));
        assert_eq!(idle(20.0), (None, 20.0));
        // A saturated round without one success is no sign of room.
        let no_success = RoundSummary {
            successes: 0,
            ..summary(base, true, 30)
        };
        let mut c = at(100.0, false, base);
        assert_eq!(decided(&mut c, &no_success), None);
        assert_eq!(c.limit, 100.0);
    }

    /// The capacity last seen on an overload: half the limit in slow start,
    /// the limit after it; after refusals with a `Retry-After`, within 3 %
    /// of the first.
    #[test]
    fn an_overload_notes_the_capacity_last_seen() {
        let refused = |retry_after: Option<Duration>| Sample {
            retry_after,
            ..overload(1, 100, 100)
        };
        let mut c = at(100.0, true, ms(100));
        c.probe = 3;
        c.on_overload(&refused(None));
        assert_eq!((c.w_max, c.probe, c.rate_capped), (Some(50.0), 0, false));
        let mut c = at(100.0, false, ms(100));
        c.on_overload(&refused(None));
        assert_eq!(c.w_max, Some(100.0));
        c.limit = 90.0;
        c.on_overload(&refused(Some(ms(1000))));
        assert_eq!((c.w_max, c.rate_capped), (Some(97.0), true));
        c.limit = 99.0;
        c.on_overload(&refused(Some(ms(1000))));
        assert_eq!(c.w_max, Some(99.0));
        c.limit = 50.0;
        c.on_overload(&refused(None));
        assert_eq!((c.w_max, c.rate_capped), (Some(50.0), false));
    }

    #[test]
    fn slow_start_waits_for_a_quarter_of_the_limit_in_fresh_answers() {
        for (limit, fresh) in [
            (1.0, 1),
            (2.0, 1),
            (8.0, 2),
            (12.0, 3),
            (35.0, 8),
            (400.0, 8),
        ] {
            assert_eq!(at(limit, true, ms(100)).min_fresh(), fresh, "limit {limit}");
        }
        assert_eq!(at(12.0, false, ms(100)).min_fresh(), 0);
    }

    /// The threshold widens with the noise inside rounds: four deviations
    /// of a round median (1.25 s / sqrt n in log terms) plus 2.5 of the
    /// pooled one's, between the tolerance and 3.
    #[test]
    fn the_threshold_widens_with_noise() {
        let mut c = GradientController::default();
        assert_eq!(c.threshold(4), 1.25, "no noise seen: the tolerance");
        // Spreads 0.05, 0.1, 0.2, 0.3, 0.9: their median is 0.2.
        c.noise.extend([0.9, 0.1, 0.2, 0.05, 0.3]);
        c.pool.push_back(vec![ms(100); 16]);
        let expected = (4.0 * 1.25 * 0.2 / 2.0 + 2.5 * 1.25 * 0.2 / 4.0f64).exp();
        assert!(
            (c.threshold(4) - expected).abs() < 1e-12,
            "{}",
            c.threshold(4)
        );
        // Little noise: the tolerance; much: at most 3.
        assert_eq!(c.threshold(10_000), 1.25);
        c.noise = [2.0; 3].into_iter().collect();
        assert_eq!(c.threshold(1), 3.0);
        // A tolerance above 3 is kept.
        let mut wide = GradientController::builder()
            .tolerance(4.0)
            .build()
            .unwrap();
        wide.noise.push_back(2.0);
        assert_eq!(wide.threshold(1), 4.0);
    }

    /// What a round teaches: the short RTT (an average of medians), the
    /// spread of its log RTTs, and a pooled median once 20 answers are in.
    #[test]
    fn a_round_teaches_rtts_spread_and_baseline() {
        let mut c = GradientController::default();
        // 11 answers, 10 ms apart from 100 ms: the quartiles are the 3rd and
        // the 8th (indices 2.5 and 7.5 rounded down), 120 and 170 ms.
        let mut r = summary(ms(150), true, 11);
        r.rtts = (0..11).map(|i| ms(100 + 10 * i)).collect();
        c.learn(&r);
        assert_eq!(c.short, Some(ms(150)));
        let spread = (0.17f64 / 0.12).ln() / 1.349;
        assert!((c.noise[0] - spread).abs() < 1e-12, "{:?}", c.noise);
        assert!(
            c.pooled.is_empty(),
            "11 answers are too few for a pooled median"
        );
        c.learn(&r);
        // 22 answers now: the pooled median is the 12th of them sorted.
        assert_eq!(c.short, Some(ms(150)));
        assert_eq!(c.pooled, [ms(150)]);
        assert_eq!(
            c.rtt(),
            RttEstimate {
                short: Some(ms(150)),
                long: Some(ms(150))
            }
        );
        // Past eight rounds the oldest go, while those left hold 20 answers.
        for _ in 0..8 {
            c.learn(&r);
        }
        assert_eq!(c.pool.len(), 8);
        // A round whose first quartile took no time has no spread to read.
        let mut c = GradientController::default();
        c.learn(&summary(Duration::ZERO, true, 30));
        assert!(c.noise.is_empty(), "{:?}", c.noise);
        // Rounds of one answer: kept until 20 are pooled.
        let mut c = GradientController::default();
        let one = summary(ms(100), true, 1);
        for _ in 0..25 {
            c.learn(&one);
        }
        assert_eq!(c.pool.len(), 20);
        assert_eq!(c.initial_limit(), 5);
        assert_eq!(c.name(), "gradient");
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
