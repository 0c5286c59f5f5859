//! The attempt timeout's error.

use std::fmt;
use std::time::Duration;

/// An attempt took longer than the configured timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    after: Duration,
}

impl TimedOut {
    pub(crate) fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The timeout that passed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no complete response within {} ms (connect, headers and body)",
            self.after.as_millis()
        )
    }
}

impl std::error::Error for TimedOut {}
