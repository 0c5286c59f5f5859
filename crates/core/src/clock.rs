//! Moments as nanoseconds since an epoch, on tokio's clock (so the paused
//! test clock drives the layers), for state kept in atomics.

use std::time::Duration;

use tokio::time::Instant;

/// An epoch, and the conversions between instants and `u64` nanoseconds
/// since it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub(crate) fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds from the epoch to now.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    /// Nanoseconds from the epoch to `at` (0 before it).
    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        // Whole seconds and the rest in u64: cheaper than `as_nanos`' u128,
        // and saturating the same way (after 584 years).
        // Through std's `checked_duration_since` directly: tokio's
        // `saturating_duration_since` is one more call that does not inline.
        let since = at
            .into_std()
            .checked_duration_since(self.epoch.into_std())
            .unwrap_or_default();
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
    }

    /// The instant `nanos` after the epoch.
    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}
