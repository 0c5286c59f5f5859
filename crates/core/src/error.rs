//! The refusals our layers return, each a small type a caller can downcast.
//!
//! Every service in this crate has [`BoxError`](crate::BoxError) as its error
//! type, as tower's own layers do. When a layer refuses a request, the boxed
//! error is one of the types below; errors from the inner service pass
//! through untouched.
//!
//! ```
//! use tower_fanout_core::error::{Overloaded, RateLimited};
//! # fn handle(err: tower_fanout_core::BoxError) {
//! if let Some(limited) = err.downcast_ref::<RateLimited>() {
//!     println!("try again in {:?}", limited.retry_after());
//! } else if err.is::<Overloaded>() {
//!     println!("too many calls in flight");
//! }
//! # }
//! ```

use std::fmt;
use std::time::Duration;

macro_rules! unit_error {
    ($(#[$doc:meta])* $name:ident, $msg:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name {
            _priv: (),
        }

        impl $name {
            /// Creates the error.
            pub const fn new() -> Self {
                Self { _priv: () }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($msg)
            }
        }

        impl std::error::Error for $name {}
    };
}

/// A fail-fast concurrency limit had no free permit (or, for an adaptive
/// limit, was holding new calls after a long `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overloaded {
    /// Refused by an adaptive limit's hold, not for want of a permit: the
    /// message then names the hold, since raising the limit would not help.
    held: bool,
}

impl Overloaded {
    /// Creates the error.
    pub const fn new() -> Self {
        Self { held: false }
    }

    /// The refusal of an adaptive limit holding new calls after a long
    /// `Retry-After`.
    #[cfg_attr(not(feature = "adaptive"), allow(dead_code))]
    pub(crate) const fn held() -> Self {
        Self { held: true }
    }

    /// Whether an adaptive limit refused the call because it holds new
    /// calls after a long `Retry-After` (a spent quota), not for want of a
    /// permit: retrying at once will be refused again until the hold ends.
    pub const fn is_held(&self) -> bool {
        self.held
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.held {
            "adaptive limit holding new calls: the downstream answered with a long Retry-After \
             (a spent quota); wait for the hold to end (drop `.fail_fast()`) or shorten it with \
             `max_hold`"
        } else {
            "concurrency limit reached: no permit free; wait for one (drop `.fail_fast()`) or \
             raise the limit"
        })
    }
}

impl std::error::Error for Overloaded {}

unit_error!(
    /// The backpressure layer's workers are gone: every service was dropped or
    /// the runtime is shutting down.
    Closed,
    "backpressure queue closed: its workers have stopped with the Tokio runtime they ran on \
     (the one of the service's first `poll_ready`); build the service on the runtime that \
     calls it"
);

unit_error!(
    /// `call` was made without a successful `poll_ready` first.
    ///
    /// Tower requires `poll_ready` to return `Ready(Ok(()))` before each
    /// `call`; use `ServiceExt::ready` or `ServiceExt::oneshot`.
    NotReady,
    "service called before poll_ready returned Ready(Ok); await `ServiceExt::ready` before `call`"
);

unit_error!(
    /// The inner service panicked while handling this request.
    ///
    /// The backpressure layer catches the panic, answers the caller with this
    /// error and keeps serving the other requests.
    ServicePanicked,
    "inner service panicked while handling the request (its message went to the panic hook, \
     stderr by default); the other requests are served"
);

unit_error!(
    /// The backpressure layer needs a Tokio runtime to run its workers.
    NoRuntime,
    "no Tokio runtime: the backpressure layer spawns its workers on the current Tokio runtime; \
     call the service from within one"
);

/// A rate limit refused the request; it may be retried after [`retry_after`](Self::retry_after).
///
/// Returned by a fail-fast [`RateLimitLayer`](crate::rate::RateLimitLayer),
/// and by a limit that would have waited but for the request's
/// [`Deadline`](crate::Deadline) ([`is_past_deadline`](Self::is_past_deadline)).
/// A layer that reads the downstream's answers (a retry layer honouring
/// `Retry-After`) returns it too, with the answer's [`status`](Self::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    retry_after: Duration,
    past_deadline: bool,
    status: Option<u16>,
}

impl RateLimited {
    /// Creates the error with the wait after which the request would be admitted.
    pub const fn new(retry_after: Duration) -> Self {
        Self {
            retry_after,
            past_deadline: false,
            status: None,
        }
    }

    /// The error of a request not kept waiting because the wait would end
    /// at or past its deadline, with that wait.
    pub const fn past_deadline(retry_after: Duration) -> Self {
        Self {
            retry_after,
            past_deadline: true,
            status: None,
        }
    }

    /// The same error, saying that the downstream asked for the wait in an
    /// answer with this status code (an HTTP 429 or 503 with `Retry-After`,
    /// say), rather than a limit of this process.
    #[must_use]
    pub const fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The status code of the downstream's answer that asked for the wait,
    /// when one did; `None` when a limit of this process refused the request.
    pub const fn status(&self) -> Option<u16> {
        self.status
    }

    /// How long to wait before the request would be admitted.
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The wait was refused because it would end at or past the request's
    /// deadline (a later deadline would have let it wait), not because the
    /// limit fails fast or the wait is over a cap.
    pub const fn is_past_deadline(&self) -> bool {
        self.past_deadline
    }
}

/// A wait as this crate's errors say it, for messages of your own that
/// should read alike: under a second in milliseconds with their fraction
/// (above 1000 calls a second a wait is under a millisecond, which whole
/// milliseconds showed as 0), from a second on in seconds to the
/// millisecond ("10 s", not "9999.988884 ms").
///
/// ```
/// use std::time::Duration;
/// use tower_fanout_core::error::WaitDisplay;
///
/// assert_eq!(WaitDisplay(Duration::from_micros(200)).to_string(), "0.2 ms");
/// assert_eq!(WaitDisplay(Duration::from_millis(61_234)).to_string(), "61.234 s");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitDisplay(pub Duration);

impl fmt::Display for WaitDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wait = self.0;
        if wait < Duration::from_secs(1) {
            return write!(f, "{} ms", wait.as_nanos() as f64 / 1e6);
        }
        // Rounded to the millisecond in integers: through an `f64`, a wait
        // of u64::MAX seconds read one second more.
        let millis = (wait.as_nanos() + 500_000) / 1_000_000;
        let secs = format!("{}.{:03}", millis / 1000, millis % 1000);
        write!(f, "{} s", secs.trim_end_matches('0').trim_end_matches('.'))
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limited")?;
        if let Some(status) = self.status {
            write!(f, " by the downstream (its answer: status {status})")?;
        }
        write!(f, ": retry after {}", WaitDisplay(self.retry_after))?;
        if self.past_deadline {
            f.write_str(", which would end past the call's deadline")?;
        }
        Ok(())
    }
}

impl std::error::Error for RateLimited {}

/// A request's cost is larger than the rate limit's burst, so it could never be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostExceedsBurst {
    cost: u32,
    burst: u32,
}

impl CostExceedsBurst {
    /// Creates the error.
    pub const fn new(cost: u32, burst: u32) -> Self {
        Self { cost, burst }
    }

    /// The tokens the request asked for.
    pub const fn cost(&self) -> u32 {
        self.cost
    }

    /// The most tokens the bucket can ever hold.
    pub const fn burst(&self) -> u32 {
        self.burst
    }
}

impl fmt::Display for CostExceedsBurst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request costs {} tokens but the bucket holds at most {}; raise the burst or lower the cost",
            self.cost, self.burst
        )
    }
}

impl std::error::Error for CostExceedsBurst {}

/// A shedding backpressure queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    capacity: usize,
}

impl QueueFull {
    /// Creates the error for a queue of `capacity` slots.
    pub const fn new(capacity: usize) -> Self {
        Self { capacity }
    }

    /// The queue's bound.
    pub const fn capacity(&self) -> usize {
        self.capacity
    }
}

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backpressure queue full ({} queued); retry later, wait for a slot (drop `.fail_fast()`), or raise the queue bound (`BackpressureLayer::with_queue`)",
            self.capacity
        )
    }
}

impl std::error::Error for QueueFull {}

/// A layer was configured with values it cannot work with.
///
/// Returned by the layers' constructors, so a bad limit fails when the stack
/// is built rather than on the first request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    #[cfg_attr(
        not(any(
            feature = "concurrency",
            feature = "rate",
            feature = "backpressure",
            feature = "adaptive",
            feature = "keyed",
            feature = "fan-out"
        )),
        allow(dead_code, reason = "only the layers' builders make one")
    )]
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The answer of a response future polled again after it finished (a
/// caller's bug; tower's futures panic there, ours answer with an error).
#[cold]
#[cfg_attr(
    not(any(
        feature = "concurrency",
        feature = "rate",
        feature = "backpressure",
        feature = "adaptive"
    )),
    allow(dead_code)
)]
pub(crate) fn polled_after_completion() -> crate::BoxError {
    "response future polled after completion".into()
}

/// One of tower's own errors that our layers read.
#[cfg(any(feature = "adaptive", feature = "fan-out"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TowerError {
    /// `tower::timeout::error::Elapsed`, or tonic's `TimeoutExpired` (its
    /// channel's own timeout, `Endpoint::timeout`).
    Elapsed,
    /// `tower::load_shed::error::Overloaded`: a limit below shed the call.
    Overloaded,
}

/// Recognises tower's timeout and load-shed errors by their messages, so
/// that this crate needs neither of tower's features (tests/tower_compose.rs
/// pins the messages against tower's real types). The one place that reads
/// them: the adaptive limit's classifier and the fan-out's error kinds must
/// not disagree.
#[cfg(any(feature = "adaptive", feature = "fan-out"))]
pub(crate) fn tower_error(err: &(dyn std::error::Error + 'static)) -> Option<TowerError> {
    // A `to_string` only for the errors that can be one of them.
    if err.source().is_some() {
        return None;
    }
    match err.to_string().as_str() {
        "request timed out" => Some(TowerError::Elapsed),
        // tonic's `TimeoutExpired`: a gRPC channel's timeout, which a
        // tonic client reports as `Cancelled`, not `DEADLINE_EXCEEDED`.
        "Timeout expired" => Some(TowerError::Elapsed),
        "service overloaded" => Some(TowerError::Overloaded),
        _ => None,
    }
}
