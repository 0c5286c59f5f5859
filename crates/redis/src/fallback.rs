//! What a layer does when Redis cannot decide.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::Error;

/// The choice, stated when a layer is built, for when Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fallback {
    /// Refuse the request with [`Error`] (`is_unavailable()`).
    Closed,
    /// Decide locally, with `share` (0 < share ≤ 1) of the shared limit.
    Open { share: f64 },
}

impl Fallback {
    pub(crate) fn checked(self) -> Result<Self, Error> {
        match self {
            Self::Open { share } if !(share.is_finite() && share > 0.0 && share <= 1.0) => {
                Err(Error::config(format!(
                    "fail-open share must be in (0, 1], the part of the shared limit this process may use alone; got {share}"
                )))
            }
            _ => Ok(self),
        }
    }

    pub(crate) fn unset() -> Error {
        Error::config(
            "say what to do when Redis is unreachable: call `.fail_closed()` or `.fail_open(share)` on the builder",
        )
    }
}

/// Remembers whether the last decision of a limit reached Redis, so that
/// an outage is logged once when it starts and once when it ends, not on
/// every request.
#[derive(Debug, Default)]
pub(crate) struct Health {
    degraded: AtomicBool,
    /// Whether a key holding another type of value was reported: it stays
    /// so until someone deletes it, so it is warned of once.
    clobbered: AtomicBool,
}

impl Health {
    pub(crate) fn reached(&self, key: &str) {
        // A load first: the swap's write would bounce the cache line on
        // every decision, where only the end of an outage needs it.
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(key, "redis reachable again; the shared limit applies");
        }
    }

    /// `key` names the limit; `redis_key` is the key the decision used.
    pub(crate) fn failed(&self, key: &str, redis_key: &str, fallback: Fallback, error: &Error) {
        if error.is_key_type() {
            // Redis is up and the other keys work: not an outage (which
            // would flip to "reachable again" at the next good key, a warn
            // and an info per request when keys alternate).
            if self.clobbered.swap(true, Ordering::Relaxed) {
                tracing::debug!(key, redis_key, %error, "limit key holds another type of value");
            } else {
                tracing::warn!(
                    key,
                    redis_key,
                    ?fallback,
                    error = %DisplayChain(error),
                    "a limit's key in redis holds another type of value; its requests fall back until the key is deleted"
                );
            }
            return;
        }
        if self.degraded.swap(true, Ordering::Relaxed) {
            tracing::debug!(key, %error, "redis unavailable");
            return;
        }
        match fallback {
            Fallback::Open { share } => tracing::warn!(
                key,
                share,
                error = %DisplayChain(error),
                "redis unavailable; failing open to this process's share of the limit"
            ),
            Fallback::Closed => tracing::warn!(
                key,
                error = %DisplayChain(error),
                "redis unavailable; failing closed, requests are refused"
            ),
        }
    }
}

/// Shows an error and its sources on one line, for logs, each text once:
/// redis-rs's error and the `io::Error` under it both say "broken pipe".
struct DisplayChain<'a>(&'a Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.0.to_string();
        let mut source = std::error::Error::source(self.0);
        while let Some(err) = source {
            let text = err.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = err.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_says_each_text_once() {
        let lost = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let line = DisplayChain(&Error::redis(redis::RedisError::from(lost))).to_string();
        assert_eq!(line.matches("broken pipe").count(), 1, "{line}");
        assert!(line.contains("outlived the Tokio runtime"), "{line}");
    }
}
