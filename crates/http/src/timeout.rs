//! The attempt timeout's error.

use std::fmt;
use std::time::Duration;

/// An attempt took longer than the configured timeout, or a streamed request
/// body was not read within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    after: Duration,
    request_body: bool,
}

impl TimedOut {
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            request_body: false,
        }
    }

    /// The request body, read into memory before the first attempt, did not
    /// end within the timeout.
    pub(crate) fn reading_request_body(after: Duration) -> Self {
        Self {
            after,
            request_body: true,
        }
    }

    /// The caller's streamed request body did not end in time (not the
    /// downstream's doing).
    pub(crate) fn is_request_body(&self) -> bool {
        self.request_body
    }

    /// The timeout that passed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.after.as_millis();
        if self.request_body {
            write!(
                f,
                "the request body did not end within {ms} ms; send a body that ends, or raise `timeout`"
            )
        } else {
            write!(
                f,
                "no complete response within {ms} ms (connect, headers and body); raise `timeout` if the server is known to be slow"
            )
        }
    }
}

impl std::error::Error for TimedOut {}
