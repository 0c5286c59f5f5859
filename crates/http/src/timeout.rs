//! The client's timeouts' error.

use std::fmt;
use std::time::Duration;

/// An attempt took longer than the configured timeout, a streamed request
/// body was not read within it, or the whole call ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    after: Duration,
    what: What,
    /// The call's deadline passed before its request was sent (at the call,
    /// or while its body was read): nothing reached the server.
    unsent: bool,
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
            unsent: false,
        }
    }

    /// The whole call ran past the request's own
    /// [`Deadline`](crate::Deadline), `after` its start.
    pub(crate) fn request_deadline(after: Duration) -> Self {
        Self {
            after,
            what: What::RequestDeadline,
            unsent: false,
        }
    }

    /// The request body, read into memory before the first attempt, did not
    /// end within the timeout.
    pub(crate) fn reading_request_body(after: Duration) -> Self {
        Self {
            after,
            what: What::RequestBody,
            unsent: false,
        }
    }

    /// The whole call, retries and their waits included, ran past the
    /// client's deadline.
    pub(crate) fn deadline(after: Duration) -> Self {
        Self {
            after,
            what: What::Deadline,
            unsent: false,
        }
    }

    /// The same deadline, passed before the request was sent.
    pub(crate) fn before_sending(self) -> Self {
        Self {
            unsent: true,
            ..self
        }
    }

    /// A deadline that passed before the request was sent: it says nothing
    /// of the downstream's load.
    pub(crate) fn is_unsent(&self) -> bool {
        self.unsent
    }

    /// The caller's streamed request body did not end in time (not the
    /// downstream's doing).
    pub(crate) fn is_request_body(&self) -> bool {
        self.what == What::RequestBody
    }

    /// The whole call ran past its deadline (the client's
    /// [`deadline`](crate::ClientBuilder::deadline) or the request's own
    /// [`Deadline`](crate::Deadline)), not one attempt past its timeout.
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
                "no complete response within {ms} ms (connect, headers and body); raise `timeout` (or the host's `host_timeout`, if it has one) if the server is known to be slow"
            ),
            What::Deadline => write!(
                f,
                "the call did not complete within its deadline of {ms} ms (waits at the host's limits, every attempt and the waits between retries); raise `deadline`"
            ),
            What::RequestDeadline => write!(
                f,
                "the call did not complete by its request's `Deadline`, {ms} ms after it was made (waits at the host's limits, every attempt and the waits between retries); set a later `Deadline`"
            ),
        }?;
        if self.unsent {
            f.write_str(" (it passed before the request was sent: nothing reached the server)")?;
        }
        Ok(())
    }
}

impl std::error::Error for TimedOut {}
