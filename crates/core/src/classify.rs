//! What a response means for an adaptive limit: success, overload, the
//! caller's own mistake, or some other failure.
//!
//! The question "was this an overload?" is kept apart from the controller
//! that acts on the answer (tower-http's `classify` idea): the controllers in
//! [`adaptive`](crate::adaptive) read only an [`Outcome`], so they know nothing
//! about HTTP, and a user can plug in their own rules with a type that
//! implements [`Classify`] or with a closure.
//!
//! The default, [`HttpClassify`], reads (for gRPC, whose answers are mostly
//! HTTP 200s, use [`GrpcClassify`]):
//!
//! | result | outcome |
//! |---|---|
//! | 2xx, 3xx, 1xx | [`Outcome::Success`] |
//! | 429, 502, 503, 504 | [`Outcome::Overload`] |
//! | other 4xx | [`Outcome::CallerError`]: neither raises nor lowers the limit |
//! | other 5xx | [`Outcome::Failure`] |
//! | a timeout (tokio's or tower's `Elapsed`, tonic's `TimeoutExpired`, an I/O `TimedOut`: a connect timeout too), a fail-fast limit's refusal below (our [`Overloaded`](crate::error::Overloaded), tower's `LoadShed`), a reset or aborted connection | [`Outcome::Overload`] |
//! | any other error: a refused connection, a name that does not resolve, any other connect error | [`Outcome::Failure`] |
//!
//! A connection refused (nobody listens on the port) or a name that does
//! not resolve says the host is down or wrong, not busy: fewer calls in
//! flight would not help it. Read as overload, a dead host among the hosts
//! that share one adaptive limit (a batch of URLs, one of them gone) would
//! cut that limit for every host, to its minimum while the calls to it go
//! on. A connect that times out still reads as overload: a host too busy to
//! accept looks like that, and so, unavoidably, does an unreachable one.
//!
//! ```
//! use tower_fanout_core::classify::{Classify, HttpClassify, Outcome};
//!
//! let response = http::Response::builder().status(429).body(()).unwrap();
//! assert_eq!(HttpClassify.classify(Ok(&response)), Outcome::Overload);
//!
//! // A closure works too: here every error is an overload, every response a success.
//! let mine = |result: Result<&u32, &(dyn std::error::Error + 'static)>| match result {
//!     Ok(_) => Outcome::Success,
//!     Err(_) => Outcome::Overload,
//! };
//! assert_eq!(mine.classify(Ok(&7)), Outcome::Success);
//! ```

use std::error::Error;
use std::time::Duration;

/// What one finished call says about the downstream's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded: evidence the downstream has room.
    Success,
    /// The downstream is overloaded (429, 503, a timeout, a reset connection):
    /// the limit goes down.
    Overload,
    /// The caller's own mistake (a 400, 404, ...): says nothing about load,
    /// so the limit neither rises nor falls.
    CallerError,
    /// Some other failure (a 500, a refused connection): counted as an
    /// error, but not as overload.
    Failure,
}

/// Decides what a call's result means for the limit.
///
/// Implemented for [`HttpClassify`] and for any
/// `Fn(Result<&Res, &(dyn Error + 'static)>) -> Outcome` (the layer it is
/// given to needs it `Clone` as well, as a closure without captures is).
pub trait Classify<Res> {
    /// The outcome of one call: its response, or its error.
    fn classify(&self, result: Result<&Res, &(dyn Error + 'static)>) -> Outcome;

    /// How long the downstream asked us to wait (a `Retry-After`), if it said so.
    ///
    /// An overload that comes with a long wait is a quota, not congestion:
    /// the adaptive limit sends no new call until the wait is over and
    /// leaves its limit where it is, instead of collapsing to its minimum; a
    /// short one turns pacing on (the [adaptive module](crate::adaptive)'s
    /// rules). Asked only of responses classified [`Outcome::Overload`]. The
    /// default says nothing.
    fn retry_after(&self, response: &Res) -> Option<Duration> {
        let _ = response;
        None
    }

    /// How much of the call layers below spent waiting on purpose (a
    /// [`DeliberateWait`](crate::DeliberateWait)): the adaptive limit takes
    /// it off the call's latency, so that a call queued behind a per-host
    /// gate of the caller's own does not read as a slow downstream.
    ///
    /// Asked of every response (errors carry none). The default says
    /// nothing: a classifier of your own for `http::Response`s should
    /// return [`HttpClassify`]'s answer here.
    fn waited(&self, response: &Res) -> Duration {
        let _ = response;
        Duration::ZERO
    }
}

impl<F, Res> Classify<Res> for F
where
    F: Fn(Result<&Res, &(dyn Error + 'static)>) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &(dyn Error + 'static)>) -> Outcome {
        self(result)
    }
}

/// The default classifier for `http::Response`s and client errors (see the
/// [module docs](self) for the table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpClassify;

impl HttpClassify {
    /// What a status code means.
    pub fn status(status: http::StatusCode) -> Outcome {
        match status.as_u16() {
            429 | 502 | 503 | 504 => Outcome::Overload,
            400..=499 => Outcome::CallerError,
            500..=599 => Outcome::Failure,
            _ => Outcome::Success,
        }
    }

    /// What an error means: overload for timeouts, sheds of a limit below
    /// and connections reset or aborted, failure otherwise (a refused
    /// connection too). The whole `source()` chain is looked at.
    pub fn error(error: &(dyn Error + 'static)) -> Outcome {
        let mut next = Some(error);
        while let Some(err) = next {
            if is_overload_error(err) {
                return Outcome::Overload;
            }
            next = err.source();
        }
        Outcome::Failure
    }
}

fn is_overload_error(err: &(dyn Error + 'static)) -> bool {
    if err.is::<tokio::time::error::Elapsed>() || err.is::<crate::error::Overloaded>() {
        return true;
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind as K;
        return matches!(
            io.kind(),
            K::ConnectionReset | K::ConnectionAborted | K::TimedOut
        );
    }
    // tower's `timeout::error::Elapsed` and `load_shed::error::Overloaded`
    // (the shed of a limit below, like our own fail-fast `Overloaded`) are
    // recognised by their messages, so that this crate needs no tower
    // features for them. hyper-util's connect error ("client error
    // (Connect)") is not overload in itself: a timeout under it is found
    // further down the chain (an I/O `TimedOut`).
    crate::error::tower_error(err).is_some()
}

impl<B> Classify<http::Response<B>> for HttpClassify {
    fn classify(&self, result: Result<&http::Response<B>, &(dyn Error + 'static)>) -> Outcome {
        match result {
            Ok(response) => Self::status(response.status()),
            Err(error) => Self::error(error),
        }
    }

    /// `Retry-After` as delta-seconds (an HTTP date is not read).
    fn retry_after(&self, response: &http::Response<B>) -> Option<Duration> {
        let value = response.headers().get(http::header::RETRY_AFTER)?;
        let secs: f64 = value.to_str().ok()?.trim().parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
    }

    /// The response's [`DeliberateWait`](crate::DeliberateWait) extension, if any.
    fn waited(&self, response: &http::Response<B>) -> Duration {
        response
            .extensions()
            .get::<crate::DeliberateWait>()
            .map_or(Duration::ZERO, |w| w.duration())
    }
}

impl HttpClassify {
    /// Your own outcomes, with [`HttpClassify`]'s reading of `Retry-After`
    /// and of [`DeliberateWait`](crate::DeliberateWait) kept: `outcome`
    /// says what each response or error means, as a closure would.
    ///
    /// A bare closure handed to
    /// [`AdaptiveLimitLayer::classify`](crate::adaptive::AdaptiveLimitLayer::classify)
    /// answers neither question (a closure cannot tell an HTTP response from
    /// any other result): a 429 with a long `Retry-After` then reads as
    /// congestion and cuts the limit instead of holding new calls, and a
    /// call queued at a per-host gate below reads as a slow downstream.
    ///
    /// ```
    /// use tower_fanout_core::adaptive::AdaptiveLimitLayer;
    /// use tower_fanout_core::classify::{HttpClassify, Outcome};
    ///
    /// // A 500 from this API means "too busy": an overload, not a failure.
    /// let layer = AdaptiveLimitLayer::default().classify(HttpClassify::with_outcome(
    ///     |result: Result<&http::Response<()>, &(dyn std::error::Error + 'static)>| match result {
    ///         Ok(response) if response.status() == 500 => Outcome::Overload,
    ///         Ok(response) => HttpClassify::status(response.status()),
    ///         Err(error) => HttpClassify::error(error),
    ///     },
    /// ));
    /// # let _ = layer;
    /// ```
    pub fn with_outcome<F>(outcome: F) -> HttpClassifyWith<F> {
        HttpClassifyWith { outcome }
    }
}

/// A classifier whose outcomes are a closure's, with [`HttpClassify`]'s
/// `Retry-After` and [`DeliberateWait`](crate::DeliberateWait) readings;
/// made by [`HttpClassify::with_outcome`].
#[derive(Clone, Copy)]
pub struct HttpClassifyWith<F> {
    outcome: F,
}

impl<F> std::fmt::Debug for HttpClassifyWith<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClassifyWith")
            .field("outcome", &std::any::type_name::<F>())
            .finish()
    }
}

impl<F, B> Classify<http::Response<B>> for HttpClassifyWith<F>
where
    F: Fn(Result<&http::Response<B>, &(dyn Error + 'static)>) -> Outcome,
{
    fn classify(&self, result: Result<&http::Response<B>, &(dyn Error + 'static)>) -> Outcome {
        (self.outcome)(result)
    }

    fn retry_after(&self, response: &http::Response<B>) -> Option<Duration> {
        HttpClassify.retry_after(response)
    }

    fn waited(&self, response: &http::Response<B>) -> Duration {
        HttpClassify.waited(response)
    }
}

/// The classifier for gRPC over HTTP/2 (a tonic `Channel`, say): reads the
/// `grpc-status` a server sends in the response headers, which are all a
/// limit sees when the response future completes.
///
/// gRPC answers HTTP 200 to most calls and says how the call went in
/// `grpc-status`: [`HttpClassify`] would read a server refusing every call
/// with `RESOURCE_EXHAUSTED` as 200s, successes, and raise the limit.
///
/// | `grpc-status` | outcome |
/// |---|---|
/// | 0 `OK` | [`Outcome::Success`] |
/// | 8 `RESOURCE_EXHAUSTED`, 14 `UNAVAILABLE`, 4 `DEADLINE_EXCEEDED` | [`Outcome::Overload`] |
/// | 1 `CANCELLED`, 3 `INVALID_ARGUMENT`, 5 `NOT_FOUND`, 6 `ALREADY_EXISTS`, 7 `PERMISSION_DENIED`, 9 `FAILED_PRECONDITION`, 11 `OUT_OF_RANGE`, 12 `UNIMPLEMENTED`, 16 `UNAUTHENTICATED` | [`Outcome::CallerError`] |
/// | 2 `UNKNOWN`, 10 `ABORTED`, 13 `INTERNAL`, 15 `DATA_LOSS`, any other number or a malformed value | [`Outcome::Failure`] |
/// | no `grpc-status` in the headers | the HTTP status, as [`HttpClassify::status`] reads it (a proxy's 429 or 503 is an overload) |
/// | an error | as [`HttpClassify::error`] reads it |
///
/// A server that fails a call at once sends a "trailers-only" response,
/// whose `grpc-status` is in the headers: that is how overload usually
/// arrives. A status sent in trailers after a response has begun (a stream
/// that ends in `RESOURCE_EXHAUSTED`) comes after the limit has counted the
/// call, when the headers arrived, and is not seen.
///
/// tonic reports timeouts its own way: a channel's timeout
/// (`Endpoint::timeout`) is an error, tonic's `TimeoutExpired`, which reads
/// as overload; but a server past its own timeout, or past a request's
/// `grpc-timeout`, answers `CANCELLED`, which reads as the caller's doing.
/// Give the channel a timeout for slow answers to lower the limit.
///
/// A server's pushback (`grpc-retry-pushback-ms`, gRFC A6), or failing that
/// a proxy's `Retry-After`, is read as the wait an overload asks for; a
/// [`DeliberateWait`](crate::DeliberateWait) as [`HttpClassify`] reads it.
///
/// ```
/// use tower_fanout_core::adaptive::AdaptiveLimitLayer;
/// use tower_fanout_core::classify::{Classify, GrpcClassify, Outcome};
///
/// let refused = http::Response::builder()
///     .status(200)
///     .header("content-type", "application/grpc")
///     .header("grpc-status", "8") // RESOURCE_EXHAUSTED
///     .body(())
///     .unwrap();
/// assert_eq!(GrpcClassify.classify(Ok(&refused)), Outcome::Overload);
///
/// // Over a tonic `Channel`: `ServiceBuilder::new().layer(layer).service(channel)`.
/// let layer = AdaptiveLimitLayer::default().classify(GrpcClassify);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcClassify;

impl GrpcClassify {
    /// What a gRPC status code means (the table above).
    pub fn code(code: u32) -> Outcome {
        match code {
            0 => Outcome::Success,
            4 | 8 | 14 => Outcome::Overload,
            1 | 3 | 5 | 6 | 7 | 9 | 11 | 12 | 16 => Outcome::CallerError,
            _ => Outcome::Failure,
        }
    }
}

impl<B> Classify<http::Response<B>> for GrpcClassify {
    fn classify(&self, result: Result<&http::Response<B>, &(dyn Error + 'static)>) -> Outcome {
        match result {
            Ok(response) => match response.headers().get("grpc-status") {
                Some(value) => value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .map_or(Outcome::Failure, Self::code),
                None => HttpClassify::status(response.status()),
            },
            Err(error) => HttpClassify::error(error),
        }
    }

    /// `grpc-retry-pushback-ms` (a negative one means "do not retry" and
    /// says no wait), else `Retry-After` as [`HttpClassify`] reads it.
    fn retry_after(&self, response: &http::Response<B>) -> Option<Duration> {
        match response.headers().get("grpc-retry-pushback-ms") {
            Some(value) => {
                let ms: u64 = value.to_str().ok()?.trim().parse().ok()?;
                Some(Duration::from_millis(ms.min(86_400_000)))
            }
            None => HttpClassify.retry_after(response),
        }
    }

    fn waited(&self, response: &http::Response<B>) -> Duration {
        HttpClassify.waited(response)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resp(status: u16) -> http::Response<()> {
        http::Response::builder().status(status).body(()).unwrap()
    }

    #[test]
    fn statuses() {
        let c = HttpClassify;
        for (status, outcome) in [
            (200, Outcome::Success),
            (204, Outcome::Success),
            (304, Outcome::Success),
            (429, Outcome::Overload),
            (502, Outcome::Overload),
            (503, Outcome::Overload),
            (504, Outcome::Overload),
            (400, Outcome::CallerError),
            (404, Outcome::CallerError),
            (500, Outcome::Failure),
            (501, Outcome::Failure),
        ] {
            assert_eq!(c.classify(Ok(&resp(status))), outcome, "status {status}");
        }
    }

    #[derive(Debug)]
    struct Wrapped(Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn errors() {
        // A refused connection is a host down, not busy.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(HttpClassify::error(&refused), Outcome::Failure);
        let timed_out = Wrapped(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        assert_eq!(HttpClassify::error(&timed_out), Outcome::Overload);
        let nested = Wrapped(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(HttpClassify::error(&nested), Outcome::Overload);
        let other = std::io::Error::other("boom");
        assert_eq!(HttpClassify::error(&other), Outcome::Failure);
        let overloaded = crate::error::Overloaded::new();
        assert_eq!(HttpClassify::error(&overloaded), Outcome::Overload);
    }

    /// Stands in for tower's `timeout::error::Elapsed`, recognised by its message.
    #[derive(Debug)]
    struct TowerElapsed;
    impl std::fmt::Display for TowerElapsed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request timed out")
        }
    }
    impl Error for TowerElapsed {}

    /// Stands in for tonic's `TimeoutExpired` (a channel's timeout), under
    /// tonic's transport error as a client meets it.
    #[derive(Debug)]
    struct TonicTimeoutExpired;
    impl std::fmt::Display for TonicTimeoutExpired {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Timeout expired")
        }
    }
    impl Error for TonicTimeoutExpired {}

    /// It read as a failure: over tonic a slow downstream never lowered the
    /// limit (a trial with a real tonic channel).
    #[test]
    fn tonic_timeout_is_overload() {
        let transport = Wrapped(Box::new(TonicTimeoutExpired));
        assert_eq!(HttpClassify::error(&transport), Outcome::Overload);
        assert_eq!(
            Classify::<http::Response<()>>::classify(&GrpcClassify, Err(&transport)),
            Outcome::Overload
        );
    }

    #[test]
    fn tower_timeout_is_overload() {
        assert_eq!(HttpClassify::error(&TowerElapsed), Outcome::Overload);
        assert_eq!(
            HttpClassify::error(&Wrapped(Box::new(TowerElapsed))),
            Outcome::Overload
        );
    }

    /// Stands in for tower's `load_shed::error::Overloaded` (the facade's
    /// `tests/tower_compose.rs` uses the real one).
    #[derive(Debug)]
    struct TowerOverloaded;
    impl std::fmt::Display for TowerOverloaded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("service overloaded")
        }
    }
    impl Error for TowerOverloaded {}

    #[test]
    fn tower_load_shed_is_overload() {
        assert_eq!(HttpClassify::error(&TowerOverloaded), Outcome::Overload);
        assert_eq!(
            HttpClassify::error(&Wrapped(Box::new(TowerOverloaded))),
            Outcome::Overload
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_timeout_is_overload() {
        let elapsed = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(HttpClassify::error(&elapsed), Outcome::Overload);
    }

    #[test]
    fn retry_after_seconds() {
        let r = http::Response::builder()
            .status(429)
            .header("retry-after", "30")
            .body(())
            .unwrap();
        assert_eq!(HttpClassify.retry_after(&r), Some(Duration::from_secs(30)));
        let bad = http::Response::builder()
            .status(429)
            .header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")
            .body(())
            .unwrap();
        assert_eq!(HttpClassify.retry_after(&bad), None);
    }

    /// A negative or endless wait is malformed: ignored, never a panic (a
    /// negative one reached `Duration::from_secs_f64`) nor a day's wait.
    /// Found surviving in a mutation pass (`is_finite() || >= 0.0`).
    #[test]
    fn retry_after_that_is_negative_or_endless_is_ignored() {
        for value in ["-5", "-0.5", "inf", "infinity", "NaN", "-inf"] {
            let r = http::Response::builder()
                .status(429)
                .header("retry-after", value)
                .body(())
                .unwrap();
            assert_eq!(HttpClassify.retry_after(&r), None, "{value}");
        }
        let huge = http::Response::builder()
            .status(429)
            .header("retry-after", "1e12")
            .body(())
            .unwrap();
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(HttpClassify.retry_after(&huge), day, "capped at a day");
    }

    fn grpc(code: &str) -> http::Response<()> {
        http::Response::builder()
            .status(200)
            .header("grpc-status", code)
            .body(())
            .unwrap()
    }

    #[test]
    fn grpc_statuses() {
        let c = GrpcClassify;
        for (code, outcome) in [
            ("0", Outcome::Success),
            ("4", Outcome::Overload),
            ("8", Outcome::Overload),
            ("14", Outcome::Overload),
            ("1", Outcome::CallerError),
            ("3", Outcome::CallerError),
            ("5", Outcome::CallerError),
            ("7", Outcome::CallerError),
            ("12", Outcome::CallerError),
            ("16", Outcome::CallerError),
            ("2", Outcome::Failure),
            ("10", Outcome::Failure),
            ("13", Outcome::Failure),
            ("15", Outcome::Failure),
            ("17", Outcome::Failure),
            ("eight", Outcome::Failure),
            ("-8", Outcome::Failure),
            (" 8 ", Outcome::Overload),
        ] {
            assert_eq!(c.classify(Ok(&grpc(code))), outcome, "grpc-status {code:?}");
        }
        // No grpc-status in the headers: the HTTP status decides (a proxy's 503).
        assert_eq!(c.classify(Ok(&resp(503))), Outcome::Overload);
        assert_eq!(c.classify(Ok(&resp(200))), Outcome::Success);
        assert_eq!(c.classify(Ok(&resp(404))), Outcome::CallerError);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Classify::<http::Response<()>>::classify(&c, Err(&reset)),
            Outcome::Overload
        );
        assert_eq!(
            Classify::<http::Response<()>>::classify(&c, Err(&refused)),
            Outcome::Failure
        );
    }

    #[test]
    fn grpc_pushback_is_the_wait() {
        let with = |name: &str, value: &str| {
            http::Response::builder()
                .status(200)
                .header("grpc-status", "8")
                .header(name, value)
                .body(())
                .unwrap()
        };
        let c = GrpcClassify;
        let ms = Duration::from_millis;
        assert_eq!(
            c.retry_after(&with("grpc-retry-pushback-ms", "1500")),
            Some(ms(1500))
        );
        assert_eq!(
            c.retry_after(&with("grpc-retry-pushback-ms", "-1")),
            None,
            "do not retry"
        );
        assert_eq!(c.retry_after(&with("grpc-retry-pushback-ms", "soon")), None);
        let huge = with("grpc-retry-pushback-ms", "99999999999");
        assert_eq!(
            c.retry_after(&huge),
            Some(Duration::from_secs(86_400)),
            "capped at a day"
        );
        // A proxy's Retry-After, when the server gave no pushback.
        assert_eq!(
            c.retry_after(&with("retry-after", "3")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(c.retry_after(&grpc("8")), None);
    }
}
