use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;

use super::AdaptiveLimit;
use super::controller::{Controller, GradientController, RttEstimate, Sample};
use crate::classify::{HttpClassify, Outcome};
use crate::clock::Clock;
use crate::semaphore::Semaphore;

/// A concurrency limit that a [`Controller`] moves from what responses say.
///
/// Cloning the layer, or calling [`layer`](Layer::layer) more than once,
/// shares one limit and one controller.
#[derive(Clone)]
pub struct AdaptiveLimitLayer<K = HttpClassify> {
    shared: Arc<Shared>,
    classify: K,
    fail_fast: bool,
}

// By hand: a classifier is often a closure, which is never `Debug`.
impl<K> fmt::Debug for AdaptiveLimitLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("shared", &self.shared)
            .field("classify", &std::any::type_name::<K>())
            .field("fail_fast", &self.fail_fast)
            .finish()
    }
}

impl AdaptiveLimitLayer {
    /// A limit moved by `controller`, with responses read by [`HttpClassify`].
    pub fn new(controller: impl Controller) -> Self {
        Self {
            shared: Arc::new(Shared::new(Box::new(controller))),
            classify: HttpClassify,
            fail_fast: false,
        }
    }
}

impl Default for AdaptiveLimitLayer {
    /// The default: a [`GradientController`] (min 1, max 1000, initial 5).
    fn default() -> Self {
        Self::new(GradientController::default())
    }
}

impl<K> AdaptiveLimitLayer<K> {
    /// Reads responses with another classifier: [`GrpcClassify`](crate::classify::GrpcClassify)
    /// over a gRPC client (tonic's `Channel`), whose refusals are HTTP 200s,
    /// or your own. For
    /// `http::Response`s, wrap a closure in [`HttpClassify::with_outcome`]:
    /// a bare closure reads no `Retry-After` (a spent quota then cuts the
    /// limit instead of holding new calls) and no
    /// [`DeliberateWait`](crate::DeliberateWait) (a wait at a per-host gate
    /// below reads as a slow downstream); see [`Classify`](crate::classify::Classify).
    #[must_use]
    pub fn classify<K2>(self, classify: K2) -> AdaptiveLimitLayer<K2> {
        AdaptiveLimitLayer {
            shared: self.shared,
            classify,
            fail_fast: self.fail_fast,
        }
    }

    /// Refuse with [`Overloaded`](crate::error::Overloaded) instead of
    /// waiting when no permit is free, or while new calls are held after a
    /// long `Retry-After`. (A call that got a permit while admissions are
    /// paced still waits for its slot: a few milliseconds.)
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// The longest a long `Retry-After` may hold new calls and the limit
    /// (default 60 s): past it calls go out and the controller listens
    /// again, so a quota never freezes the limit for good. Zero (or less
    /// than a millisecond) turns holds off: a long `Retry-After` is then an
    /// overload like any other, and the limit comes down.
    ///
    /// Applies to every service sharing this layer's limit.
    #[must_use]
    pub fn max_hold(self, max_hold: Duration) -> Self {
        self.shared
            .max_hold_ms
            .store(duration_ms(max_hold), Ordering::Relaxed);
        self
    }

    /// A live view of the shared limit.
    pub fn handle(&self) -> AdaptiveLimitHandle {
        AdaptiveLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, K: Clone> Layer<S> for AdaptiveLimitLayer<K> {
    type Service = AdaptiveLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit::from_shared(
            inner,
            self.shared.clone(),
            self.classify.clone(),
            self.fail_fast,
        )
    }
}

/// Reads an adaptive limit's live state; every read is an atomic load.
#[derive(Debug, Clone)]
pub struct AdaptiveLimitHandle {
    pub(super) shared: Arc<Shared>,
}

impl AdaptiveLimitHandle {
    /// The limit now.
    pub fn limit(&self) -> usize {
        self.shared.semaphore.limit()
    }

    /// Permits held now: calls in flight plus ready services not yet called.
    pub fn in_flight(&self) -> usize {
        self.shared.semaphore.in_use()
    }

    /// Callers queued for a permit.
    pub fn waiting(&self) -> usize {
        self.shared.semaphore.waiting()
    }

    /// The controller's RTT estimates, as of its last decision.
    pub fn rtt(&self) -> RttEstimate {
        let read = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        };
        RttEstimate {
            short: read(&self.shared.rtt_short_us),
            long: read(&self.shared.rtt_long_us),
        }
    }

    /// The controller's name (`"gradient"`, `"aimd"`, ...).
    pub fn controller(&self) -> &'static str {
        self.shared.name
    }

    /// Until when new calls are held after a long `Retry-After` (a spent
    /// quota: see [`max_hold`](AdaptiveLimitLayer::max_hold)), or `None`
    /// when they may go. Callers held wait before they take a permit, so
    /// [`in_flight`](Self::in_flight) and [`waiting`](Self::waiting) do not
    /// count them: this is how a runtime can tell "paused until T" from
    /// "idle".
    pub fn held_until(&self) -> Option<tokio::time::Instant> {
        self.shared.held_until()
    }
}

/// What every service of one layer shares.
pub(super) struct Shared {
    pub(super) semaphore: Arc<Semaphore>,
    state: Mutex<State>,
    rtt_short_us: AtomicU64,
    rtt_long_us: AtomicU64,
    max_hold_ms: AtomicU64,
    name: &'static str,
    /// The origin of the nanosecond clocks below (so they fit in atomics).
    clock: Clock,
    /// No new call is admitted before this (ns since `epoch`; 0: none).
    admit_at_ns: AtomicU64,
    /// The pacing interval between admissions (ns; 0: not paced).
    pace_ns: AtomicU64,
    /// The next free pacing slot (ns since `epoch`).
    next_slot_ns: AtomicU64,
}

struct State {
    controller: Box<dyn Controller>,
    /// Overloads from calls admitted before this (or at the same instant,
    /// on a coarse or paused clock) were caused by the old, higher limit, or
    /// sent unpaced before pacing began: they are already answered.
    last_decrease: Option<Instant>,
    /// After an overload with a long `Retry-After`, nothing moves (and no
    /// call is admitted) until then.
    hold_until: Option<Instant>,
    /// A moving average of successful calls' RTT, whatever the controller
    /// keeps: the yardstick for a "long" `Retry-After`, and the pace.
    rtt: Option<Duration>,
    /// Admissions are paced until then: the downstream sent a `Retry-After`
    /// (a rate cap or a quota) not long before.
    paced_until: Option<Instant>,
    /// The lowest RTT of recent successes: the pace's yardstick.
    min_rtt: WindowedMin,
}

/// The lowest RTT seen over the last one or two windows of
/// [`MIN_RTT_WINDOW`], as BBR keeps it.
///
/// Not the moving average: a few calls held up somewhere below (a client
/// that waits out a `Retry-After` of its own, a reconnect) would lift it
/// tenfold, and a pace from it would throttle the calls far below the limit.
#[derive(Debug, Default)]
struct WindowedMin {
    start: Option<Instant>,
    current: Option<Duration>,
    previous: Option<Duration>,
}

impl WindowedMin {
    fn push(&mut self, now: Instant, rtt: Duration) {
        let start = *self.start.get_or_insert(now);
        if now.saturating_duration_since(start) >= MIN_RTT_WINDOW {
            self.previous = self.current.take();
            self.start = Some(now);
        }
        self.current = Some(self.current.map_or(rtt, |c| c.min(rtt)));
    }

    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(c), Some(p)) => Some(c.min(p)),
            (c, p) => c.or(p),
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("controller", &self.name)
            .field("limit", &self.semaphore.limit())
            .field("in_flight", &self.semaphore.in_use())
            .finish_non_exhaustive()
    }
}

/// A `Retry-After` longer than this many RTTs marks a quota, not congestion.
const LONG_RETRY_AFTER_RTTS: u32 = 4;

/// ... and longer than this: the header counts whole seconds, so a rate
/// cap's wait of a few milliseconds is sent as 1 s; only more than that
/// says the budget is spent for a while.
const LONG_RETRY_AFTER_MIN: Duration = Duration::from_secs(1);

/// The window of the lowest RTT (BBR's choice: long enough to see a quiet
/// moment, short enough to follow a slower route).
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

/// Pacing stays on for this many RTTs after the last `Retry-After` ...
const PACED_RTTS: u32 = 256;

/// ... and at least this long.
const MIN_PACED: Duration = Duration::from_secs(60);

/// Paced admissions run this much faster than the limit's own rate
/// (limit / lowest RTT): a pace that only smooths bursts, it never binds on
/// average.
const PACE_GAIN: f64 = 1.25;

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Shared {
    fn new(controller: Box<dyn Controller>) -> Self {
        let name = controller.name();
        let initial = controller.initial_limit().max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(initial)),
            state: Mutex::new(State {
                controller,
                last_decrease: None,
                hold_until: None,
                rtt: None,
                paced_until: None,
                min_rtt: WindowedMin::default(),
            }),
            rtt_short_us: AtomicU64::new(0),
            rtt_long_us: AtomicU64::new(0),
            max_hold_ms: AtomicU64::new(60_000),
            name,
            clock: Clock::start(),
            admit_at_ns: AtomicU64::new(0),
            pace_ns: AtomicU64::new(0),
            next_slot_ns: AtomicU64::new(0),
        }
    }

    /// Until when new calls must wait, after a long `Retry-After`; `None`
    /// when they may go now. Without a hold, one atomic load (no clock read).
    pub(super) fn held_until(&self) -> Option<Instant> {
        let at = self.admit_at_ns.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        if at > self.clock.now() {
            return Some(self.clock.instant(at));
        }
        // Over: back to the fast path (unless a new hold came meanwhile).
        let _ = self
            .admit_at_ns
            .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed);
        None
    }

    /// Takes the next pacing slot for a call that holds a permit; returns
    /// the time now and when it may go, if that is later. Unpaced, one
    /// atomic load (no clock read).
    pub(super) fn pace(&self) -> Option<(Instant, Instant)> {
        let interval = self.pace_ns.load(Ordering::Relaxed);
        if interval == 0 {
            return None;
        }
        let now = Instant::now();
        let now_ns = self.clock.nanos(now);
        let prev = self
            .next_slot_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                Some(next.max(now_ns).saturating_add(interval))
            })
            .unwrap_or(now_ns);
        (prev > now_ns).then(|| (now, self.clock.instant(prev)))
    }

    /// Gives back a pacing slot its holder leaves unused (dropped before
    /// the slot came). The slots booked after it stay where they are, but
    /// the end of the booked slots comes one interval closer, so the next
    /// call takes the place of the one that left (when a later booking
    /// remains, the two may go together: the pace over the slots is kept).
    /// A slot whose time has come is not given back; nor is anything while
    /// unpaced (one atomic load).
    pub(super) fn give_back_slot(&self, slot: Instant) {
        let interval = self.pace_ns.load(Ordering::Relaxed);
        if interval == 0 {
            return;
        }
        let now = self.clock.now();
        if self.clock.nanos(slot) <= now {
            return;
        }
        let _ = self
            .next_slot_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                (next > now).then(|| next.saturating_sub(interval).max(now))
            });
    }

    /// Feeds one finished call to the controller and applies its decision.
    ///
    /// `waited` is the part of the call that layers below spent waiting on
    /// purpose (a [`DeliberateWait`](crate::DeliberateWait)): it is no
    /// part of the RTT, for the controller or for the estimates kept here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        started: Instant,
        admitted: Instant,
        waited: Duration,
        in_flight: usize,
        limit: usize,
        outcome: Outcome,
        retry_after: Option<Duration>,
    ) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rtt = now
            .saturating_duration_since(started)
            .saturating_sub(waited);
        if outcome == Outcome::Success {
            state.rtt = Some(super::controller::ewma(state.rtt, rtt, 0.1));
            state.min_rtt.push(now, rtt);
        }
        if state.hold_until.is_some_and(|until| now < until) {
            return;
        }
        // Admitted, not started: a call that waited for its pacing slot
        // across a decrease was let in by the old limit.
        let stale =
            outcome == Outcome::Overload && state.last_decrease.is_some_and(|at| admitted <= at);
        // A spent quota is spent however old the call that says so: its
        // long `Retry-After` holds new calls even when its episode was
        // already answered by a decrease (the new calls went out into the
        // spent quota, each to be refused).
        if outcome == Outcome::Overload
            && let Some(wait) = retry_after
            && (!stale || Self::is_long(&state, rtt, wait))
            && self.retry_after(&mut state, now, rtt, wait)
        {
            self.set_pace(&state, now);
            return;
        }
        if stale {
            return;
        }
        let sample = Sample {
            outcome,
            rtt,
            in_flight,
            limit,
            retry_after,
        };
        let change = state.controller.update(&sample, now);
        let rtt = state.controller.rtt();
        self.rtt_short_us
            .store(rtt.short.map_or(0, micros), Ordering::Relaxed);
        self.rtt_long_us
            .store(rtt.long.map_or(0, micros), Ordering::Relaxed);
        let Some(change) = change else {
            self.set_pace(&state, now);
            return;
        };
        let old = self.semaphore.limit();
        let new = change.limit.max(1);
        if new < old {
            state.last_decrease = Some(now);
        }
        if new != old {
            self.semaphore.set_limit(new);
            tracing::debug!(
                limit.old = old,
                limit.new = new,
                reason = change.reason,
                controller = self.name,
                "adaptive limit changed"
            );
        }
        self.set_pace(&state, now);
    }

    /// Answers an overload that carries a `Retry-After`: the downstream has a
    /// rate cap or a quota. Returns whether that answer is all the overload
    /// calls for (the controller is then not told).
    ///
    /// - A long wait (more than four RTTs and more than 1 s) is a quota
    ///   spent: new calls wait until it is over (at most `max_hold`), and the controller is not
    ///   told: a lower limit would not bring the quota back sooner, and
    ///   every call sent meanwhile would only be refused.
    /// - The first `Retry-After` turns pacing on: admissions are spaced at
    ///   [`PACE_GAIN`] × limit per lowest RTT, because a rate cap with a
    ///   small burst refuses the bursts of calls a concurrency limit lets through
    ///   together (the answers of one round trip come back together, and
    ///   each frees a permit at once). The refusals of calls sent unpaced
    ///   say the bursts were too steep, not that the limit is too high:
    ///   pacing answers them, and they count as answered (like the calls of
    ///   an episode after its decrease).
    fn retry_after(&self, state: &mut State, now: Instant, rtt: Duration, wait: Duration) -> bool {
        let srtt = state.rtt.unwrap_or(rtt);
        let newly_paced = state.paced_until.is_none_or(|until| now >= until);
        // At least a minute: before the first success the only RTT known
        // may be a refusal's millisecond.
        state.paced_until = Some(now + (srtt * PACED_RTTS).max(MIN_PACED));
        if newly_paced {
            state.last_decrease = Some(now);
            tracing::debug!(
                limit = self.semaphore.limit(),
                retry_after_ms = duration_ms(wait),
                "retry-after: pacing admissions"
            );
        }
        let cap = Duration::from_millis(self.max_hold_ms.load(Ordering::Relaxed));
        // No hold at all (`max_hold` of zero): a long wait is then an
        // overload like any other, which the controller hears.
        if !cap.is_zero() && Self::is_long(state, rtt, wait) {
            let until = now + wait.min(cap);
            state.hold_until = Some(until);
            self.admit_at_ns
                .fetch_max(self.clock.nanos(until), Ordering::Relaxed);
            tracing::debug!(
                retry_after_ms = duration_ms(wait),
                limit = self.semaphore.limit(),
                "long retry-after: holding new calls and the limit"
            );
            return true;
        }
        newly_paced
    }

    /// Whether a `Retry-After` marks a quota spent: more than four RTTs
    /// (the moving average, or this call's before any success) and more
    /// than 1 s.
    fn is_long(state: &State, rtt: Duration, wait: Duration) -> bool {
        let srtt = state.rtt.unwrap_or(rtt);
        wait > (srtt * LONG_RETRY_AFTER_RTTS).max(LONG_RETRY_AFTER_MIN)
    }

    /// Sets the pacing interval from the limit and the lowest RTT, or clears it.
    fn set_pace(&self, state: &State, now: Instant) {
        let interval = match (state.paced_until, state.min_rtt.get()) {
            (Some(until), Some(rtt)) if now < until => {
                let limit = self.semaphore.limit().max(1) as f64;
                u64::try_from(rtt.div_f64(limit * PACE_GAIN).as_nanos()).unwrap_or(u64::MAX)
            }
            _ => 0,
        };
        self.pace_ns.store(interval, Ordering::Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_min_keeps_the_lowest_of_the_last_one_or_two_windows() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut min = WindowedMin::default();
        assert_eq!(min.get(), None);
        min.push(t0, ms(10));
        min.push(t0 + ms(1000), ms(50));
        min.push(t0 + ms(2000), ms(40));
        assert_eq!(min.get(), Some(ms(10)), "one window: its lowest");
        // A window later a new one starts; the last one's lowest still counts.
        min.push(t0 + MIN_RTT_WINDOW, ms(40));
        assert_eq!(min.get(), Some(ms(10)));
        // Two windows on it is gone: a slower route is followed.
        min.push(t0 + MIN_RTT_WINDOW * 2, ms(30));
        assert_eq!(min.get(), Some(ms(30)));
    }
}
