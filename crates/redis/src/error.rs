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
/// timeout error untouched. A configuration error has no source: its
/// `Display` says all of it.
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
    /// The limit's key holds a value of another type (`WRONGTYPE`).
    KeyType,
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
        let kind = match reply_code(&err) {
            Some("WRONGTYPE") => Kind::KeyType,
            _ => Kind::Redis,
        };
        Self {
            kind,
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

    /// Redis answered that the limit's key holds another type of value.
    pub(crate) fn is_key_type(&self) -> bool {
        self.kind == Kind::KeyType
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
            Kind::Timeout | Kind::Redis | Kind::KeyType | Kind::Reply | Kind::Skipped
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
            Kind::KeyType => {
                "redis limit unavailable: its key in Redis holds another type of value (another program writes under this key prefix: give the store a key_prefix of its own, or delete the key)"
            }
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
            // redis-rs answers "broken pipe" both for a socket Redis closed
            // and for a connection whose driver task died with the runtime
            // it ran on, which looks like an outage of a healthy Redis.
            (Kind::Redis, Some(source))
                if source
                    .downcast_ref::<redis::RedisError>()
                    .is_some_and(is_broken_pipe) =>
            {
                write!(
                    f,
                    "{}: connection lost (Redis closed it, or this store outlived the Tokio runtime its connection ran on: build one store per runtime, inside it)",
                    self.description()
                )
            }
            _ => f.write_str(self.description()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if self.kind == Kind::Config {
            // Its message is already in `Display` (as core's `ConfigError`
            // has it, with no source): a chain printer said it twice.
            return None;
        }
        self.source
            .as_ref()
            .map(|source| &**source as &(dyn std::error::Error + 'static))
    }
}

/// Whether `err` is redis-rs's "broken pipe": the socket was closed, or
/// the connection's driver task is gone. redis-rs keeps the `io::Error`
/// behind an `Arc`, so both are looked through.
fn is_broken_pipe(err: &redis::RedisError) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let Some(source) = std::error::Error::source(err) else {
        return false;
    };
    let io = source.downcast_ref::<std::io::Error>().or_else(|| {
        source
            .downcast_ref::<Shared>()
            .and_then(|shared| shared.downcast_ref::<std::io::Error>())
    });
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The code of a Redis error reply, as the command inside a script gave
/// it: Redis 7 passes it on (`READONLY You can't write ...`), older
/// versions wrap it (`ERR Error running script (call to f_...):
/// @user_script:4: @user_script: 4: -READONLY You can't write ...`).
pub(crate) fn reply_code(err: &redis::RedisError) -> Option<&str> {
    let code = err.code()?;
    if code != "ERR" {
        return Some(code);
    }
    let wrapped = err.detail().and_then(|detail| {
        let (_, rest) = detail.split_once(": -")?;
        let wrapped = rest.split_whitespace().next()?;
        wrapped
            .bytes()
            .all(|b| b.is_ascii_uppercase())
            .then_some(wrapped)
    });
    Some(wrapped.unwrap_or(code))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
        assert!(err.source().is_none());

        let err = Error::redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connection refused",
        )));
        assert!(err.is_unavailable());
        assert!(!err.is_timeout());
        assert!(err.source().is_some_and(|s| s.is::<redis::RedisError>()));
        assert_eq!(err.to_string(), "redis limit unavailable");
    }

    #[test]
    fn a_lost_connection_names_a_runtime_gone_too() {
        // What redis-rs answers when the connection's driver task is gone.
        let lost = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let err = Error::redis(redis::RedisError::from(lost));
        assert!(err.is_unavailable());
        assert!(
            err.to_string().contains("outlived the Tokio runtime"),
            "{err}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = Error::redis(redis::RedisError::from(refused));
        assert_eq!(err.to_string(), "redis limit unavailable");
    }

    fn reply(bytes: &[u8]) -> redis::RedisError {
        redis::parse_redis_value(bytes)
            .and_then(redis::Value::extract_error)
            .unwrap_err()
    }

    #[test]
    fn reply_codes_are_read_through_script_errors() {
        // Redis 7 passes the failing command's code on.
        let err = reply(b"-READONLY You can't write against a read only replica. script: 72, on @user_script:17.\r\n");
        assert_eq!(reply_code(&err), Some("READONLY"));
        // Redis before 7 wraps it in a script error.
        let err = reply(b"-ERR Error running script (call to f_72): @user_script:4: @user_script: 4: -READONLY You can't write against a read only replica.\r\n");
        assert_eq!(reply_code(&err), Some("READONLY"));
        let err = reply(b"-ERR Error running script (call to f_72): @user_script:9: @user_script: 9: -WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert_eq!(reply_code(&err), Some("WRONGTYPE"));
        assert!(Error::redis(err).to_string().contains("key_prefix"));
        let err = reply(b"-ERR user_script:5: attempt to compare nil with number\r\n");
        assert_eq!(reply_code(&err), Some("ERR"));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(reply_code(&io), None);
    }
}
