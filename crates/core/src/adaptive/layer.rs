use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;

use super::AdaptiveLimit;
use super::controller::{Controller, GradientController, RttEstimate, Sample};
use crate::classify::{HttpClassify, Outcome};
use crate::semaphore::Semaphore;

/// A concurrency limit that a [`Controller`] moves from what responses say.
///
/// Cloning the layer, or calling [`layer`](Layer::layer) more than once,
/// shares one limit and one controller.
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer<K = HttpClassify> {
    shared: Arc<Shared>,
    classify: K,
    fail_fast: bool,
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
    /// Reads responses with your own classifier instead.
    pub fn classify<K2>(self, classify: K2) -> AdaptiveLimitLayer<K2> {
        AdaptiveLimitLayer {
            shared: self.shared,
            classify,
            fail_fast: self.fail_fast,
        }
    }

    /// Refuse with [`Overloaded`](crate::error::Overloaded) instead of
    /// waiting when no permit is free.
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// The longest a `Retry-After` may hold the limit still (default 60 s):
    /// past it the controller listens again, so a quota never freezes it
    /// for good.
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
}

/// What every service of one layer shares.
pub(super) struct Shared {
    pub(super) semaphore: Arc<Semaphore>,
    state: Mutex<State>,
    rtt_short_us: AtomicU64,
    rtt_long_us: AtomicU64,
    max_hold_ms: AtomicU64,
    name: &'static str,
}

struct State {
    controller: Box<dyn Controller>,
    /// Overloads from calls that started before this (or at the same
    /// instant, on a coarse or paused clock) were caused by the old, higher
    /// limit: they are already answered.
    last_decrease: Option<Instant>,
    /// After an overload with a long `Retry-After`, nothing moves until then.
    hold_until: Option<Instant>,
    /// A moving average of successful calls' RTT, whatever the controller
    /// keeps: the yardstick for a "long" `Retry-After`.
    rtt: Option<Duration>,
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
            }),
            rtt_short_us: AtomicU64::new(0),
            rtt_long_us: AtomicU64::new(0),
            max_hold_ms: AtomicU64::new(60_000),
            name,
        }
    }

    /// Feeds one finished call to the controller and applies its decision.
    pub(super) fn record(
        &self,
        started: Instant,
        in_flight: usize,
        limit: usize,
        outcome: Outcome,
        retry_after: Option<Duration>,
    ) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.hold_until.is_some_and(|until| now < until) {
            return;
        }
        if outcome == Outcome::Overload && state.last_decrease.is_some_and(|at| started <= at) {
            return;
        }
        let sample = Sample {
            outcome,
            rtt: now.saturating_duration_since(started),
            in_flight,
            limit,
            retry_after,
        };
        if outcome == Outcome::Success {
            state.rtt = Some(super::controller::ewma(state.rtt, sample.rtt, 0.1));
        }
        let Some(change) = state.controller.update(&sample, now) else {
            return;
        };
        let old = self.semaphore.limit();
        let new = change.limit.max(1);
        if new < old {
            state.last_decrease = Some(now);
            let rtt = state.rtt.unwrap_or(sample.rtt);
            let cap = Duration::from_millis(self.max_hold_ms.load(Ordering::Relaxed));
            if let Some(wait) = retry_after.filter(|w| *w > rtt * LONG_RETRY_AFTER_RTTS) {
                state.hold_until = Some(now + wait.min(cap));
                tracing::debug!(
                    retry_after_ms = duration_ms(wait),
                    "long retry-after: holding the limit"
                );
            }
        }
        let rtt = state.controller.rtt();
        self.rtt_short_us
            .store(rtt.short.map_or(0, micros), Ordering::Relaxed);
        self.rtt_long_us
            .store(rtt.long.map_or(0, micros), Ordering::Relaxed);
        drop(state);
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
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}
