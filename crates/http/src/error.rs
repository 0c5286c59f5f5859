//! The one error type of the client preset.

use std::fmt;
use std::time::Duration;

use tower_fanout_core::classify::Outcome;
use tower_fanout_core::error::{Overloaded, RateLimited};
use tower_fanout_core::keyed::TooManyKeys;

use crate::BoxError;
use crate::body::{BodyTooLarge, ReadBody, RequestBodyTooLarge};
use crate::guard::{PortOutOfRange, RefusedAddress};
use crate::learn::HostHeld;
use crate::redirect::TooManyRedirects;
use crate::timeout::TimedOut;

/// An error from the client preset: opaque, with predicates for what went
/// wrong and the underlying error as its [`source`](std::error::Error::source).
///
/// ```
/// # fn handle(err: tower_fanout_http::Error) {
/// if let Some(wait) = err.retry_after() {
///     println!("the server asked us to come back in {wait:?}");
/// } else if err.is_refused_address() {
///     println!("refused: {err}");
/// }
/// # }
/// ```
pub struct Error {
    kind: Kind,
    source: BoxError,
    /// The hold of the call's host by an earlier answer, when that refused it.
    held: Option<Box<HostHeld>>,
    /// Attempts the client's retry loop made, when more than one: said in
    /// the message, since each had its own timeout.
    attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Timeout,
    Connect,
    BodyTooLarge,
    RequestBodyTooLarge,
    RateLimited(RateLimited),
    RefusedAddress,
    TooManyRedirects,
    Overloaded,
    InvalidRequest,
    Body,
    Config,
    Request,
}

impl Error {
    pub(crate) fn invalid_request(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::InvalidRequest,
            source: source.into(),
            held: None,
            attempts: 1,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Config,
            source: message.into().into(),
            held: None,
            attempts: 1,
        }
    }

    /// Classifies an error from the stack by the first known error in its chain.
    pub(crate) fn from_box(source: BoxError) -> Self {
        // A held host's refusal keeps core's `RateLimited` as the source,
        // which callers downcast; the hold is told in the message.
        let (source, held) = match source.downcast::<HostHeld>() {
            Ok(held) => (Box::new(held.limited) as BoxError, Some(held)),
            Err(source) => (source, None),
        };
        let kind = classify(&*source);
        Self {
            kind,
            source,
            held,
            attempts: 1,
        }
    }

    /// The error of a call whose retry loop made `attempts` attempts.
    pub(crate) fn after_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// The attempt (connect, request, response body), or reading a streamed
    /// request body before it, took longer than the timeout; or the whole
    /// call ran past its deadline ([`TimedOut::is_deadline`] tells which).
    /// A connection not made within the connect timeout is
    /// [`is_connect`](Self::is_connect) instead (its message names
    /// `connect_timeout`).
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// No connection could be made (DNS, TCP, TLS); the request was not sent.
    /// A refusal by the address guard is [`is_refused_address`](Self::is_refused_address) instead.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The response body was larger than the configured cap.
    pub fn is_body_too_large(&self) -> bool {
        self.kind == Kind::BodyTooLarge
    }

    /// The request body was larger than the bound for bodies kept for replay.
    pub fn is_request_body_too_large(&self) -> bool {
        self.kind == Kind::RequestBodyTooLarge
    }

    /// The server (or a local limit) asked for a wait longer than the retry
    /// cap, or one that would end past the call's deadline (then
    /// [`RateLimited::is_past_deadline`] in the source chain);
    /// [`retry_after`](Self::retry_after) says how long. That includes a
    /// call never sent because an earlier answer holds its host (see
    /// [`ClientBuilder::learn_rate_limits`](crate::ClientBuilder::learn_rate_limits)).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.kind, Kind::RateLimited(_))
    }

    /// The host whose hold refused this call unsent, when that is why it
    /// failed: an earlier answer's `Retry-After` or rate-limit headers hold
    /// the host longer than the wait cap or past the call's deadline (see
    /// [`ClientBuilder::learn_rate_limits`](crate::ClientBuilder::learn_rate_limits)).
    /// [`is_rate_limited`](Self::is_rate_limited) is true too; the
    /// server said nothing about this call itself.
    pub fn held_host(&self) -> Option<&str> {
        self.held.as_deref().map(HostHeld::host)
    }

    /// How long to wait before trying again, for a rate-limited request.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::RateLimited(r) => Some(r.retry_after()),
            _ => None,
        }
    }

    /// The address guard refused the scheme, or the address the host is or resolved to.
    pub fn is_refused_address(&self) -> bool {
        self.kind == Kind::RefusedAddress
    }

    /// The redirect chain was longer than the cap.
    pub fn is_too_many_redirects(&self) -> bool {
        self.kind == Kind::TooManyRedirects
    }

    /// A fail-fast limit, or the per-host map, refused the request.
    pub fn is_overloaded(&self) -> bool {
        self.kind == Kind::Overloaded
    }

    /// The request could not be sent as given (no host, a bad URI...).
    pub fn is_invalid_request(&self) -> bool {
        self.kind == Kind::InvalidRequest
    }

    /// Reading the request or response body failed (a reset mid-body, a bad encoding).
    pub fn is_body(&self) -> bool {
        self.kind == Kind::Body
    }

    /// The client or a layer was configured with values it cannot work with.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The exchange failed once the request was, or may have been, sent,
    /// for none of the reasons above: the connection closed or reset before
    /// a complete response head ("connection closed before message
    /// completed" when a server closes an idle pooled connection as a
    /// request goes out on it), an answer that is not HTTP (a garbage
    /// status line, HTTP/2 spoken to an HTTP/1 server), or a redirect
    /// that cannot be followed.
    ///
    /// The server may have acted on the request. The retry layer retries
    /// these for idempotent methods only; a `POST` is returned: send it
    /// again only if it is safe to repeat (an idempotency key), or keep
    /// [`pool_idle_timeout`](crate::ClientBuilder::pool_idle_timeout)
    /// below the server's keep-alive timeout so its connections are not
    /// closed under a request.
    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }

    /// A short snake_case name of the kind, for counting failures: one per
    /// predicate (`timeout`, `connect`, `body_too_large`,
    /// `request_body_too_large`, `rate_limited`, `refused_address`,
    /// `too_many_redirects`, `overloaded`, `invalid_request`, `body`,
    /// `config`, `request`).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Timeout => "timeout",
            Kind::Connect => "connect",
            Kind::BodyTooLarge => "body_too_large",
            Kind::RequestBodyTooLarge => "request_body_too_large",
            Kind::RateLimited(_) => "rate_limited",
            Kind::RefusedAddress => "refused_address",
            Kind::TooManyRedirects => "too_many_redirects",
            Kind::Overloaded => "overloaded",
            Kind::InvalidRequest => "invalid_request",
            Kind::Body => "body",
            Kind::Config => "config",
            Kind::Request => "request",
        }
    }

    fn describe(&self) -> &'static str {
        match self.kind {
            Kind::Timeout => "request timed out",
            Kind::Connect => "connection failed",
            Kind::BodyTooLarge => "response body too large",
            Kind::RequestBodyTooLarge => "request body too large to keep for retries",
            Kind::RateLimited(_) => "rate limited",
            Kind::RefusedAddress => "address refused by the guard",
            Kind::TooManyRedirects => "too many redirects",
            Kind::Overloaded => "refused by a local limit",
            Kind::InvalidRequest => "invalid request",
            Kind::Body => "body error",
            Kind::Config => "invalid configuration",
            Kind::Request => "request failed",
        }
    }
}

/// Whether `err` is an answer that trying again cannot change: a refused
/// address, an invalid request (a port out of range), a body over a cap, too many redirects, a rate limit past the
/// wait cap. Looked for through the whole source chain, since hyper-util
/// wraps a connector's refusal (the address guard's, after DNS) in its own
/// connect error.
pub(crate) fn is_final(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        classify(err),
        Kind::RefusedAddress
            | Kind::InvalidRequest
            | Kind::BodyTooLarge
            | Kind::RequestBodyTooLarge
            | Kind::RateLimited(_)
            | Kind::TooManyRedirects
    )
}

/// What `err` says of the downstream's load, where this crate knows better
/// than core's `HttpClassify`: the caller's own doing (a refused address, an
/// invalid request, a body over a cap, too many redirects, a bad
/// configuration, a request body that never ended) or an attempt timeout
/// (overload). `None`: ask `HttpClassify`. Looked for through the whole
/// chain, as [`is_final`] does.
pub(crate) fn outcome(err: &(dyn std::error::Error + 'static)) -> Option<Outcome> {
    // The client's own `Error` knows its kind (an invalid request's or a
    // configuration's source is a bare message the chain cannot tell).
    let kind = find_in_chain::<Error>(err).map_or_else(|| classify(err), |e| e.kind);
    match kind {
        Kind::RefusedAddress
        | Kind::InvalidRequest
        | Kind::BodyTooLarge
        | Kind::RequestBodyTooLarge
        | Kind::TooManyRedirects
        | Kind::Config => Some(Outcome::CallerError),
        // A request body that never ended is the caller's stream, not the
        // downstream's load.
        // So is a deadline that passed before the request was sent (it
        // waited at a limit above the client, or for its body).
        Kind::Timeout
            if find_in_chain::<TimedOut>(err)
                .is_some_and(|t| t.is_request_body() || t.is_unsent()) =>
        {
            Some(Outcome::CallerError)
        }
        // The attempt timeout is this crate's own type, which core's
        // `HttpClassify` cannot know: it read a timed-out answer as a plain failure.
        // A call past its deadline counts the same: against a downstream
        // slower than the deadline it is the only signal a limit gets.
        Kind::Timeout => Some(Outcome::Overload),
        _ => None,
    }
}

/// The first error of type `T` in `err`'s source chain, `err` included.
/// Whether `err` is a TLS failure, the same on every attempt: rustls's
/// error in the chain (a certificate not trusted or not for the host, no
/// common protocol), or an I/O error of kind `InvalidData`, which is how a
/// TLS stream reports a fatal alert from the peer (a missing client
/// certificate) or a record it cannot read, as text. Looked for inside I/O
/// errors too: tokio-rustls hands rustls's error on in an `io::Error`
/// (which hyper-rustls wraps in another), and an `io::Error`'s `source()`
/// skips the error it wraps.
pub(crate) fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut found = false;
    each_wrapped(err, |e| {
        found = e.is::<rustls::Error>()
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
        found
    });
    found
}

/// rustls's error in `err`'s chain, looked for as [`is_tls_failure`] does.
fn find_tls<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut found = None;
    each_wrapped(err, |e| {
        found = e.downcast_ref::<rustls::Error>();
        found.is_some()
    });
    found
}

/// Calls `stop` on each error of `err`'s chain and on each error an
/// `io::Error` of it wraps, until `stop` says so.
fn each_wrapped<'e>(
    err: &'e (dyn std::error::Error + 'static),
    mut stop: impl FnMut(&'e (dyn std::error::Error + 'static)) -> bool,
) {
    let mut next = Some(err);
    while let Some(e) = next {
        let mut inner = Some(e);
        while let Some(i) = inner {
            if stop(i) {
                return;
            }
            inner = i
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|wrapped| wrapped as &(dyn std::error::Error + 'static));
        }
        next = e.source();
    }
}

pub(crate) fn find_in_chain<'e, T: std::error::Error + 'static>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    std::iter::successors(Some(err), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

fn classify(err: &(dyn std::error::Error + 'static)) -> Kind {
    let mut saw_connect = false;
    let mut saw_timeout = false;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if e.is::<RefusedAddress>() {
            return Kind::RefusedAddress;
        }
        if e.is::<PortOutOfRange>() {
            return Kind::InvalidRequest;
        }
        if e.is::<BodyTooLarge>() {
            return Kind::BodyTooLarge;
        }
        if e.is::<RequestBodyTooLarge>() {
            return Kind::RequestBodyTooLarge;
        }
        if let Some(r) = e.downcast_ref::<RateLimited>() {
            return Kind::RateLimited(*r);
        }
        if e.is::<TooManyRedirects>() {
            return Kind::TooManyRedirects;
        }
        if e.is::<Overloaded>() || e.is::<TooManyKeys>() {
            return Kind::Overloaded;
        }
        if e.is::<TimedOut>() {
            saw_timeout = true;
        }
        if e.is::<ReadBody>() && !saw_timeout {
            return Kind::Body;
        }
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            saw_connect = true;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_timeout()
        {
            saw_timeout = true;
        }
        next = e.source();
    }
    if saw_timeout {
        Kind::Timeout
    } else if saw_connect {
        Kind::Connect
    } else {
        Kind::Request
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_tuple("tower_fanout_http::Error");
        d.field(&self.kind).field(&self.source);
        if let Some(held) = &self.held {
            d.field(held);
        }
        if self.attempts > 1 {
            d.field(&self.attempts);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.message(f)?;
        // A retried failure took each attempt's time (a connect timeout
        // four times over): the count says why the call took so long.
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl Error {
    /// The message, without the attempts.
    fn message(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = &self.source;
        if let Some(held) = &self.held {
            return write!(f, "{held}");
        }
        match self.kind {
            // Core's text says the wait (and a deadline it would pass).
            Kind::RateLimited(r) if r.is_past_deadline() => {
                write!(f, "{r} (a later deadline would let it wait)")
            }
            Kind::RateLimited(r) => write!(
                f,
                "{r} (longer than the retry layer's max_wait; raise it to wait that long)"
            ),
            // The client's map of hosts is core's keyed map: its refusal
            // names the client's setting, `max_hosts`, not core's `max_keys`.
            Kind::Overloaded if find_in_chain::<TooManyKeys>(&**source).is_some() => {
                let n = find_in_chain::<TooManyKeys>(&**source).map_or(0, |t| t.max_keys());
                write!(
                    f,
                    "too many hosts at once: all {n} tracked hosts have calls in flight, none can be forgotten; raise `max_hosts` or bound the calls in flight"
                )
            }
            // Name the cause too: an agent reading only the top line must see
            // it. hyper-util's wrapper ("client error (Connect)") says little,
            // so the root of the chain (the refused address, the OS error) is
            // named as well.
            _ => {
                // A refusal's own message names the host, the address and
                // why; repeating "refused by the guard" above it says nothing.
                if self.kind == Kind::RefusedAddress
                    && let Some(refused) = find_in_chain::<RefusedAddress>(&**source)
                {
                    return write!(f, "{refused}");
                }
                // A source that already starts with the kind (core's
                // `ConfigError` says "invalid configuration: ...") is not
                // prefixed twice.
                let text = source.to_string();
                if text.starts_with(self.describe()) {
                    f.write_str(&text)?;
                } else {
                    write!(f, "{}: {text}", self.describe())?;
                }
                let mut root: &(dyn std::error::Error + 'static) = &**source;
                while let Some(next) = root.source() {
                    root = next;
                }
                let root = root.to_string();
                if !text.contains(&root) {
                    write!(f, ": {root}")?;
                }
                if let Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )) = find_tls(&**source)
                {
                    f.write_str(
                        "; the server's certificate is signed by no root this client trusts: trust a private CA with `ClientBuilder::tls_config` (or the system's store with `native_roots`, feature `native-roots`)",
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The answer of a future polled again after it answered (a caller's bug;
/// `async` blocks panic there, this crate's futures answer this).
pub(crate) fn polled_after_completion() -> BoxError {
    "response future polled after completion".into()
}
