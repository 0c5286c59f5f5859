//! The one error type of this crate: opaque, with predicates, as hyper-util does.

use std::fmt;

use tower_fanout_core::BoxError;

/// An error from a Redis-backed limit.
///
/// The services in this crate return [`BoxError`]: a refusal by the limit
/// is one of `tower_fanout_core::error`'s types (`RateLimited`,
/// `CostExceedsBurst`, `Overloaded`), and a failure to reach a decision
/// at all is this `Error`. Ask what happened with the `is_*` predicates;
/// [`source`](std::error::Error::source) gives the underlying Redis or
/// timeout error untouched.
///
/// ```
/// use tower_fanout_redis::Error;
/// # fn handle(err: tower_fanout_core::BoxError) {
/// if let Some(err) = err.downcast_ref::<Error>() {
///     if err.is_unavailable() {
///         println!("the shared limit is unreachable: {err}");
///     }
/// }
/// # }
/// ```
pub struct Error {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The layer or store was configured with values it cannot use.
    Config,
    /// Redis did not answer within the configured timeout.
    Timeout,
    /// Redis could not be reached, or answered with an error.
    Redis,
    /// Redis answered something the limit's script never returns.
    Reply,
    /// A call failed moments ago; Redis is not asked again until the
    /// store's probe interval has passed, and then by one caller at a time.
    Skipped,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Config,
            source: Some(message.into().into()),
        }
    }

    pub(crate) fn timeout(elapsed: tokio::time::error::Elapsed) -> Self {
        Self {
            kind: Kind::Timeout,
            source: Some(Box::new(elapsed)),
        }
    }

    pub(crate) fn redis(err: redis::RedisError) -> Self {
        Self {
            kind: Kind::Redis,
            source: Some(Box::new(err)),
        }
    }

    pub(crate) fn reply(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Reply,
            source: Some(message.into().into()),
        }
    }

    pub(crate) fn skipped() -> Self {
        Self {
            kind: Kind::Skipped,
            source: Some(
                "a call to redis failed moments ago; not asked again until the next probe".into(),
            ),
        }
    }

    /// The request never left: a recent failure kept Redis from being asked.
    pub(crate) fn was_skipped(&self) -> bool {
        self.kind == Kind::Skipped
    }

    /// The limit's state on Redis could not be read or updated: Redis was
    /// unreachable, too slow (see [`is_timeout`](Self::is_timeout)), or
    /// answered with an error. A fail-closed layer returns this error to
    /// the caller; a fail-open layer falls back to its local share instead.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            Kind::Timeout | Kind::Redis | Kind::Reply | Kind::Skipped
        )
    }

    /// Redis did not answer within the store's timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The configuration was refused when the layer or store was built.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    fn description(&self) -> &'static str {
        match self.kind {
            Kind::Config => "invalid configuration",
            Kind::Timeout => "redis limit unavailable: no answer within the timeout",
            Kind::Redis => "redis limit unavailable",
            Kind::Reply => "redis limit unavailable: unexpected reply from the limit script",
            Kind::Skipped => "redis limit unavailable: redis failed moments ago",
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_tuple("tower_fanout_redis::Error");
        f.field(&self.kind);
        if let Some(source) = &self.source {
            f.field(source);
        }
        f.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.source) {
            // A config message is the whole story; print it, not just its kind.
            (Kind::Config, Some(source)) => write!(f, "{}: {source}", self.description()),
            _ => f.write_str(self.description()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|source| &**source as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn predicates_and_source() {
        let err = Error::config("burst must be at least 1");
        assert!(err.is_config());
        assert!(!err.is_unavailable());
        assert_eq!(
            err.to_string(),
            "invalid configuration: burst must be at least 1"
        );

        let err = Error::redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connection refused",
        )));
        assert!(err.is_unavailable());
        assert!(!err.is_timeout());
        assert!(err.source().is_some_and(|s| s.is::<redis::RedisError>()));
    }
}
