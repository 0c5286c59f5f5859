//! The client's timeouts' error, and a request's own deadline.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// When one call must be done, carried in its request's extensions.
///
/// Insert it to give a request a deadline of its own. The [`Client`](crate::Client)
/// ends the call there with [`TimedOut`] ([`is_deadline`](TimedOut::is_deadline)),
/// or at its own [`deadline`](crate::ClientBuilder::deadline) if that comes
/// first (a request whose deadline has passed already is not sent), and
/// does not sleep a `Retry-After`, a hold for a spent host's reset
/// or a backoff that would end at or past it (the call fails at once with
/// [`RateLimited`](tower_fanout_core::error::RateLimited), or returns its
/// last answer). A [`RetryLayer`](crate::retry::RetryLayer) used on its own
/// reads it the same way, so a stack that retries above the client (past
/// limits of its own) can set it once per call and every attempt shares it.
///
/// The instant is on tokio's clock, so a paused test clock moves it.
///
/// ```
/// use std::time::Duration;
/// use tower_fanout_http::Deadline;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let req = http::Request::get("https://api.example.com/report")
///     .extension(Deadline::after(Duration::from_secs(5)))
///     .body(())
///     .unwrap();
/// assert!(req.extensions().get::<Deadline>().is_some());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub const fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// A deadline `duration` from now (a duration too long for the clock
    /// is taken as a century).
    pub fn after(duration: Duration) -> Self {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let now = Instant::now();
        Self(now.checked_add(duration).unwrap_or_else(|| now + CENTURY))
    }

    /// The instant the call must be done by.
    pub const fn instant(self) -> Instant {
        self.0
    }
}

/// An attempt took longer than the configured timeout, a streamed request
/// body was not read within it, or the whole call ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    after: Duration,
    what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Attempt,
    RequestBody,
    Deadline,
    RequestDeadline,
}

impl TimedOut {
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            what: What::Attempt,
        }
    }

    /// The whole call ran past the request's own [`Deadline`], `after` its
    /// start.
    pub(crate) fn request_deadline(after: Duration) -> Self {
        Self {
            after,
            what: What::RequestDeadline,
        }
    }

    /// The request body, read into memory before the first attempt, did not
    /// end within the timeout.
    pub(crate) fn reading_request_body(after: Duration) -> Self {
        Self {
            after,
            what: What::RequestBody,
        }
    }

    /// The whole call, retries and their waits included, ran past the
    /// client's deadline or the request's own.
    pub(crate) fn deadline(after: Duration) -> Self {
        Self {
            after,
            what: What::Deadline,
        }
    }

    /// The caller's streamed request body did not end in time (not the
    /// downstream's doing).
    pub(crate) fn is_request_body(&self) -> bool {
        self.what == What::RequestBody
    }

    /// The whole call ran past its deadline (the client's
    /// [`deadline`](crate::ClientBuilder::deadline) or the request's own
    /// [`Deadline`]), not one attempt past its timeout.
    pub fn is_deadline(&self) -> bool {
        matches!(self.what, What::Deadline | What::RequestDeadline)
    }

    /// The timeout (or deadline) that passed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.after.as_millis();
        match self.what {
            What::RequestBody => write!(
                f,
                "the request body did not end within {ms} ms; send a body that ends, or raise `timeout`"
            ),
            What::Attempt => write!(
                f,
                "no complete response within {ms} ms (connect, headers and body); raise `timeout` if the server is known to be slow"
            ),
            What::Deadline => write!(
                f,
                "the call did not complete within its deadline of {ms} ms (waits at the host's limits, every attempt and the waits between retries); raise `deadline`"
            ),
            What::RequestDeadline => write!(
                f,
                "the call did not complete by its request's `Deadline`, {ms} ms after it was made (waits at the host's limits, every attempt and the waits between retries); set a later `Deadline`"
            ),
        }
    }
}

impl std::error::Error for TimedOut {}
