//! [`Deadline`]: when one call must be done, carried in its request's
//! extensions so that every layer it passes can see it.

use std::time::Duration;

use tokio::time::Instant;

/// When one call must be done, carried in its `http::Request`'s extensions.
///
/// Layers that would wait on the call's behalf read it and do not start a
/// wait they know ends at or past it:
/// - the [keyed limit](crate::keyed) refuses at once, with
///   [`RateLimited`](crate::error::RateLimited) and the wait, a call that
///   would wait for its key's token until or past its deadline, instead of
///   holding it (and its key's permit) until then (its default key,
///   [`AuthorityKey`](crate::keyed::AuthorityKey), reads the extension; a
///   [`KeyFn`](crate::keyed::KeyFn) of your own can, through
///   [`KeyFn::deadline`](crate::keyed::KeyFn::deadline));
/// - tower-fanout-http's client ends the call there, and its retry layer
///   and learned budgets do not sleep a `Retry-After`, a backoff or a hold
///   that would pass it.
///
/// Set it once, where the call starts: a layer that retries above others
/// keeps it on every attempt, so all of them share it. The instant is on
/// tokio's clock, so a paused test clock moves it.
///
/// ```
/// use std::time::Duration;
/// use tower_fanout_core::Deadline;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let req = http::Request::get("https://api.example.com/report")
///     .extension(Deadline::after(Duration::from_secs(5)))
///     .body(())
///     .unwrap();
/// let deadline = req.extensions().get::<Deadline>().unwrap();
/// assert_eq!(deadline.instant() - tokio::time::Instant::now(), Duration::from_secs(5));
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
