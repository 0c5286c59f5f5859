//! The client preset: hyper-util's pooled client under the limits.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Either;
use tower_fanout_core::DeliberateWait;
use tower_fanout_core::keyed::{
    AuthorityKey, KeyFn, KeyLimit, KeyedLimit, KeyedLimitHandle, KeyedLimitLayer,
};
use tower_http::decompression::Decompression;
use tower_http::follow_redirect::FollowRedirect;
use tower_layer::Layer;
use tower_service::Service;

use crate::Deadline;
use crate::body::{BodyTooLarge, Cap, Collect, collect};
use crate::guard::{self, Guard, GuardedConnector, GuardedResolver};
use crate::learn::{Learn, Learned};
use crate::redirect::{API_KEY_HEADERS, AfterRedirect, Hop, RedirectPolicy};
use crate::retry::{RetryFuture, RetryLayer};
use crate::timeout::TimedOut;
use crate::{BoxError, Error};

const DEFAULT_AGENT: &str = concat!("tower-fanout-http/", env!("CARGO_PKG_VERSION"));

type Connector = GuardedConnector<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>>;
type Raw = HyperClient<Connector, Full<Bytes>>;
/// The learned budgets sit below the per-host gate: a call is checked
/// against its host's budget once it is let through, so calls that queued
/// at the gate before the host's first answer still wait for what it says.
type Limited = Gated<KeyedLimit<Learn<Fetch>, AuthorityKey, String>>;
/// With redirects off (`max_redirects(0)`) the redirect layer is left out:
/// it copies every request for a next hop and inserts an extension into
/// every answer, about 1 700 instructions a request on loopback.
type Stack = Either<FollowRedirect<Limited, RedirectPolicy>, Limited>;

/// hyper-util's client behind an `Arc`: its `request` takes `&self`, so each
/// call needs no clone of the client (which copies its whole configuration).
#[derive(Clone)]
struct SharedRaw(Arc<Raw>);

impl Service<Request<Full<Bytes>>> for SharedRaw {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.0.request(req)
    }
}

/// Configures a [`Client`]; made by [`Client::builder`].
///
/// Every setting has a default chosen for an agent runtime calling public
/// APIs; see each method. Cloned, it makes a second client with the same
/// settings (and its own limits and pool).
#[derive(Clone)]
pub struct ClientBuilder {
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    http2_keep_alive_interval: Option<Duration>,
    http2_keep_alive_timeout: Duration,
    http2_prior_knowledge: bool,
    max_response_body: usize,
    max_request_body: usize,
    max_redirects: usize,
    redirect_strip: Vec<String>,
    decompression: bool,
    address_guard: bool,
    guard_allow: Vec<std::net::IpAddr>,
    host_default: KeyLimit,
    host_limits: Vec<(String, KeyLimit)>,
    host_timeouts: Vec<(String, Option<Duration>)>,
    max_hosts: usize,
    retry: Option<RetryLayer>,
    learn_rate_limits: bool,
    resolver: Option<guard::BoxResolver>,
    user_agent: Option<HeaderValue>,
    bad_user_agent: Option<String>,
    tls_config: Option<rustls::ClientConfig>,
    #[cfg(feature = "native-roots")]
    native_roots: bool,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .field("http2_keep_alive_interval", &self.http2_keep_alive_interval)
            .field("http2_keep_alive_timeout", &self.http2_keep_alive_timeout)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .field("max_response_body", &self.max_response_body)
            .field("address_guard", &self.address_guard)
            .field("host_default", &self.host_default)
            .field("host_limits", &self.host_limits)
            .field("host_timeouts", &self.host_timeouts)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Time allowed to make a connection: the DNS lookup, the TCP connect
    /// and the TLS handshake together (default 10 s; `None`: no limit). It
    /// also bounds a connection hyper-util goes on making in the background
    /// after the request that asked for it was served by another, so a
    /// peer that accepts and never completes a handshake holds no socket
    /// for longer.
    ///
    /// A connect failure, this timeout included, is retried like any other
    /// failure to connect (up to [`RetryBuilder::max_retries`](crate::retry::RetryBuilder::max_retries),
    /// 3 by default, with backoff between attempts), and each attempt has
    /// the whole timeout: with the defaults, a host that never completes a
    /// handshake (a plain-HTTP server called with `https://` may wait on
    /// the TLS hello) fails after 4 attempts, about 40 s, longer than
    /// [`timeout`](Self::timeout). The error says
    /// how many attempts were made. Bound the whole call with
    /// [`deadline`](Self::deadline). A handshake that fails (a certificate
    /// not trusted) is not retried: it would fail the same way. The error
    /// of a connect timeout is [`is_connect`](crate::Error::is_connect),
    /// not [`is_timeout`](crate::Error::is_timeout), which is the attempt's
    /// [`timeout`](Self::timeout) or the call's deadline.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for each attempt, from connecting to the last byte of the
    /// body (default 30 s; `None`: no limit). Waits between retries are not
    /// counted: they are bounded by the retry settings. A streamed request
    /// body is read into memory before the first attempt, within a timeout
    /// of its own of the same length. An attempt that times out is not
    /// retried, but one that failed to connect (its
    /// [`connect_timeout`](Self::connect_timeout) included) is, up to the
    /// retry layer's `max_retries` with backoff, each with a timeout of its
    /// own: a call can take several times this. For one bound over the
    /// whole call, retries and their waits included, see
    /// [`deadline`](Self::deadline).
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time allowed for the whole call, from `call` to the last byte of the
    /// response: reading the request body, waits at the host's limits and
    /// learned budgets, every attempt and redirect, and the waits between
    /// retries (default `None`: only each attempt's [`timeout`](Self::timeout)
    /// and the retry settings bound it). Past it the call fails with a
    /// timeout ([`Error::is_timeout`], [`TimedOut::is_deadline`]) and gives
    /// back everything it held. A known wait that would end at or past the
    /// deadline is not slept: a server's `Retry-After`, a hold until the
    /// reset of a host whose headers said nothing remains, or a wait for a
    /// token of the host's own rate ([`host_limit`](Self::host_limit)),
    /// fails the call at once with [`RateLimited`](tower_fanout_core::error::RateLimited)
    /// (as one past [`RetryBuilder::max_wait`](crate::retry::RetryBuilder::max_wait)
    /// does); when a backoff would end at or past it, the last answer is returned
    /// as it is. A request may carry a [`Deadline`] of its own (in its
    /// extensions); the earlier of the two holds.
    #[must_use]
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long an idle pooled connection is kept (default 90 s; `None`, or
    /// anything past a century such as `Duration::MAX`: for ever). Zero
    /// keeps none: each request opens its own connection.
    #[must_use]
    pub fn pool_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Idle connections kept per host (default 32). Zero turns the pool off:
    /// each request opens its own connection and TLS handshake, and HTTP/2
    /// requests do not share one.
    #[must_use]
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// How long an HTTP/2 connection with requests in flight may go without
    /// reading anything before it is pinged (default 30 s; `None`: never
    /// pinged; anything past a century, such as `Duration::MAX`, is never).
    /// A connection that does not answer within
    /// [`http2_keep_alive_timeout`](Self::http2_keep_alive_timeout) is closed,
    /// so a dead one (a NAT or load balancer that dropped it, a peer gone
    /// without a word) is left for a new one: otherwise every request to the
    /// host, all multiplexed on it, runs into its timeout until the system
    /// gives the connection up, which takes minutes. Idle connections are
    /// not pinged (servers count pings on idle connections against a
    /// client); a request on one that has read nothing for longer than this
    /// is pinged as it starts.
    #[must_use]
    pub fn http2_keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.http2_keep_alive_interval = interval;
        self
    }

    /// How long an HTTP/2 ping may go unanswered before the connection is
    /// closed as dead, failing its requests (default 20 s; anything past a
    /// century waits for ever). Idempotent requests are retried on a new
    /// connection; others fail, since the server may have processed them.
    #[must_use]
    pub fn http2_keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.http2_keep_alive_timeout = timeout;
        self
    }

    /// Speaks HTTP/2 to every host without negotiating it (default off):
    /// in cleartext the client opens each connection with HTTP/2's preface
    /// ("prior knowledge", h2c, as gRPC backends and other internal
    /// services speak it), and over TLS it offers only `h2` in ALPN: a
    /// server that refuses `h2` there fails the handshake; one that ignores
    /// ALPN is sent HTTP/2 frames all the same, and the request fails with
    /// a protocol error. Since every connection is known to be
    /// HTTP/2 before it opens, the requests that find a host cold wait for
    /// one connection and share it, where negotiation opens one for each
    /// (up to the host's concurrency limit) and then sends on one of them.
    ///
    /// Off, the client speaks HTTP/1.1 in cleartext and whichever of
    /// HTTP/1.1 and HTTP/2 a TLS server picks.
    #[must_use]
    pub fn http2_prior_knowledge(mut self, on: bool) -> Self {
        self.http2_prior_knowledge = on;
        self
    }

    /// The largest response body read, after decompression (default 10 MiB).
    /// A larger one fails with [`Error::is_body_too_large`].
    #[must_use]
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// The largest request body accepted (default 10 MiB). Request bodies are
    /// buffered so a retry or a 307/308 redirect can send them again.
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// Redirects followed at most (default 10; 0 returns 3xx responses as they
    /// are). When a redirect leaves the origin (another scheme, host or
    /// port), `Authorization`, `Cookie`, `Proxy-Authorization`, `X-Api-Key`,
    /// `Api-Key` and `X-Goog-Api-Key` are removed from it and every later
    /// hop, with any header named by
    /// [`redirect_strip_header`](Self::redirect_strip_header); other headers
    /// go on, and a redirect from https to http is followed. A hop within
    /// the origin keeps them all. Only http and https `Location`s are
    /// followed: a 301, 302, 303, 307 or 308 whose `Location` is another
    /// scheme (`ftp:`, `file:`, `javascript:`) or no valid URI fails the
    /// call, naming the scheme or the `Location`. Redirects are followed by
    /// tower-http's `FollowRedirect` (301/302 turn a POST into a GET, 303 a GET,
    /// 307/308 resend as is), and every response carries the URI it came from
    /// as tower-http's `RequestUri` extension. A retry starts again from the
    /// original request. With 0 the redirect layer is left out of the stack,
    /// so it costs nothing and responses carry no `RequestUri`.
    #[must_use]
    pub fn max_redirects(mut self, max: usize) -> Self {
        self.max_redirects = max;
        self
    }

    /// Also remove the header `name` (in any case) when a redirect leaves the
    /// origin, as the credentials [`max_redirects`](Self::max_redirects)
    /// lists are: for a key an API takes in a header of its own
    /// (`"x-auth-token"`). Call it once for each header. A name that is
    /// not a valid header name makes [`build`](Self::build) fail.
    #[must_use]
    pub fn redirect_strip_header(mut self, name: impl Into<String>) -> Self {
        self.redirect_strip.push(name.into());
        self
    }

    /// Ask for gzip and brotli and decompress responses (default on).
    #[must_use]
    pub fn decompression(mut self, on: bool) -> Self {
        self.decompression = on;
        self
    }

    /// Refuse loopback, private, link-local, unique-local, CGNAT and metadata
    /// addresses after DNS resolution, and schemes other than http/https
    /// (default off; turn it on for URLs an agent or a user supplies). See
    /// [`guard`](crate::guard).
    #[must_use]
    pub fn address_guard(mut self, on: bool) -> Self {
        self.address_guard = on;
        self
    }

    /// Let `ip` through the address guard anyway (a proxy or an internal
    /// service the operator means to reach). Exact addresses only, no
    /// ranges; but an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the
    /// IPv4 address it maps, so allowing `127.0.0.1` also lets
    /// `http://[::ffff:127.0.0.1]/` (and a name resolving to it) through, and
    /// allowing `::ffff:127.0.0.1` lets `127.0.0.1` through. The other IPv6
    /// forms that embed an IPv4 address (`::a.b.c.d`, NAT64, 6to4) are not
    /// matched: allow each as it is written.
    #[must_use]
    pub fn address_guard_allow(mut self, ip: std::net::IpAddr) -> Self {
        self.guard_allow.push(ip);
        self
    }

    /// The limit for each host without an override (default 16 in flight).
    #[must_use]
    pub fn host_default(mut self, limit: KeyLimit) -> Self {
        self.host_default = limit;
        self
    }

    /// A limit for one host, by URI authority: `"api.github.com"`, or
    /// `"host:8443"` when URIs carry a port other than their scheme's
    /// default (`https://api.github.com:443/` and `https://api.github.com./`
    /// count against `"api.github.com"`). Written in any case, and with or
    /// without a fully qualified name's trailing dot. Leave the scheme's
    /// default port out: [`build`](Self::build) refuses `"api.github.com:443"`
    /// (requests' keys drop `:443`, so its limit would never apply), and
    /// what no request's host can match (a URL, a path, `user:password@`, a
    /// port of 0 or past 65535, a non-ASCII name: write its punycode), and
    /// a host named twice.
    #[must_use]
    pub fn host_limit(mut self, authority: impl Into<String>, limit: KeyLimit) -> Self {
        self.host_limits.push((authority.into(), limit));
        self
    }

    /// The attempt [`timeout`](Self::timeout) for one host in place of the
    /// client's, its authority written as for [`host_limit`](Self::host_limit):
    /// longer for a slow API (a model's completions), shorter for one that
    /// should answer at once (`None`: no limit). A redirect to another host
    /// gets that host's. Reading a streamed request body keeps the client's.
    #[must_use]
    pub fn host_timeout(mut self, authority: impl Into<String>, timeout: Option<Duration>) -> Self {
        self.host_timeouts.push((authority.into(), timeout));
        self
    }

    /// Hosts tracked at most, for the per-host limits and learned budgets
    /// (default 1024), each host being an authority (host and port). A
    /// call to a host not tracked, when the map is full, makes room by
    /// forgetting the least recently used idle hosts; a host with calls in
    /// flight or waiting, or with a rate whose tokens are still refilling,
    /// is never forgotten. When none can be forgotten, the call fails at
    /// once, unsent and not retried, with [`Error::is_overloaded`] ("too
    /// many hosts at once ... raise `max_hosts`"): with `max_hosts(8)`, 20
    /// calls to 20 hosts at once send 8 and refuse 12. Raise it above the
    /// number of hosts called at once, or bound the calls in flight above
    /// the client. A host without any limit (a `host_default` of
    /// `KeyLimit::new()` and no [`host_limit`](Self::host_limit)) takes no
    /// room and is never refused; a host that finds the learned budgets'
    /// map full is not refused either, only not learned from.
    #[must_use]
    pub fn max_hosts(mut self, max: usize) -> Self {
        self.max_hosts = max;
        self
    }

    /// The retry settings (default: [`RetryLayer::builder`]'s defaults).
    #[must_use]
    pub fn retry(mut self, retry: RetryLayer) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Send each request once, never retrying. A host held by an earlier
    /// answer ([`learn_rate_limits`](Self::learn_rate_limits)) is still
    /// waited for up to the retry defaults' `max_wait` (60 s); for another
    /// bound, pass [`retry`](Self::retry) a layer of
    /// [`max_retries(0)`](crate::retry::RetryBuilder::max_retries) and the
    /// [`max_wait`](crate::retry::RetryBuilder::max_wait) you want instead.
    #[must_use]
    pub fn no_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Learn each host's budget from its rate-limit headers and hold its
    /// requests while nothing remains (default on). See [`headers`](crate::headers).
    ///
    /// The hold is per host (its authority, host and port, as
    /// [`host_limit`](Self::host_limit) names it), not per path: once a 429
    /// or 503 answers with `Retry-After`, or an answer's rate-limit headers
    /// say nothing remains until a reset, every request to that host waits
    /// until the time given, whatever its path. A wait up to the retry
    /// layer's [`max_wait`](crate::retry::RetryBuilder::max_wait) (60 s by
    /// default, and with [`no_retry`](Self::no_retry)) is slept; a longer
    /// one, or one ending at or past the call's [`deadline`](Self::deadline),
    /// fails the call at once, unsent, with [`Error::is_rate_limited`] and
    /// the wait as [`Error::retry_after`]. With `false`, every request is
    /// sent and the server answers for itself (a `Retry-After` is then
    /// honoured only by the retry of the request it answered).
    ///
    /// A request is checked against its host's budget once its host's
    /// [`host_limit`](Self::host_limit) lets it through, not before: a crowd
    /// queued there before the host's first answer still hears what that
    /// answer said (checked on arrival, each went out later into a spent
    /// window). A held request keeps its place at the host's limit while it
    /// waits (no other request to the host could go anyway), so
    /// [`Client::host_limits`] counts it in flight; [`Client::held`] counts
    /// the held ones.
    #[must_use]
    pub fn learn_rate_limits(mut self, on: bool) -> Self {
        self.learn_rate_limits = on;
        self
    }

    /// The `User-Agent` sent when a request has none (default
    /// `tower-fanout-http/<version>`; some APIs, GitHub's among them, refuse
    /// requests without one). `None` sends none. A value that is not a valid
    /// header value makes [`build`](Self::build) fail.
    #[must_use]
    pub fn user_agent(mut self, agent: Option<&str>) -> Self {
        self.bad_user_agent = None;
        self.user_agent = match agent.map(HeaderValue::from_str) {
            None => None,
            Some(Ok(value)) => Some(value),
            Some(Err(_)) => {
                self.bad_user_agent = agent.map(str::to_string);
                None
            }
        };
        self
    }

    /// Use this rustls configuration (custom roots, client certificates)
    /// instead of the default one; ALPN is still set for HTTP/2 and HTTP/1.1
    /// (the config's own list is replaced). The [`rustls`](crate::rustls)
    /// re-export names the matching version. Its roots replace the default
    /// ones: to call public hosts too, add the public roots to the store
    /// (`webpki_roots::TLS_SERVER_ROOTS`, or the system's).
    ///
    /// An internal service whose certificate a private CA signed:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_fanout_http::{Client, rustls};
    /// use rustls::pki_types::{CertificateDer, pem::PemObject};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let ca_pem: &[u8] = include_bytes!("../tests/fixtures/ca.pem");
    /// // let ca_pem = std::fs::read("internal-ca.pem")?;
    /// let mut roots = rustls::RootCertStore::empty();
    /// for cert in CertificateDer::pem_slice_iter(&ca_pem) {
    ///     roots.add(cert?)?;
    /// }
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let client = Client::builder().tls_config(config).build()?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Resolve names with `resolver` instead of the system's `getaddrinfo`.
    /// The address guard checks what it returns.
    #[must_use]
    pub fn resolver<R, I>(mut self, resolver: R) -> Self
    where
        R: Service<Name, Response = I> + Clone + Send + Sync + 'static,
        R::Future: Send + 'static,
        R::Error: Into<BoxError>,
        I: Iterator<Item = SocketAddr>,
    {
        self.resolver = Some(guard::box_resolver(resolver));
        self
    }

    /// Trust the operating system's certificate store instead of the
    /// compiled-in Mozilla roots. A [`tls_config`](Self::tls_config) of your
    /// own takes precedence: its roots are used.
    #[cfg(feature = "native-roots")]
    #[must_use]
    pub fn native_roots(mut self, on: bool) -> Self {
        self.native_roots = on;
        self
    }

    fn tls(
        &self,
    ) -> Result<hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>, Error>
    {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        if let Some(config) = &self.tls_config {
            // hyper-rustls sets ALPN itself (and asserts it starts empty).
            let mut config = config.clone();
            config.alpn_protocols.clear();
            return Ok(builder.with_tls_config(config));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        #[cfg(feature = "native-roots")]
        if self.native_roots || cfg!(not(feature = "webpki-roots")) {
            return builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| {
                    Error::config(format!("loading the system's certificates failed: {e}"))
                });
        }
        #[cfg(feature = "webpki-roots")]
        {
            builder
                .with_provider_and_webpki_roots(provider)
                .map_err(|e| Error::config(format!("TLS setup failed: {e}")))
        }
        #[cfg(not(feature = "webpki-roots"))]
        {
            let _ = (builder, provider);
            Err(Error::config(
                "no TLS roots: enable the `webpki-roots` or `native-roots` feature of tower-fanout-http",
            ))
        }
    }

    /// Checks the settings and builds the client.
    ///
    /// # Errors
    /// A zero limit, body cap, timeout (per-host and HTTP/2 keep-alive ones
    /// included), deadline or host count, a bad per-host limit,
    /// a [`user_agent`](Self::user_agent) that is not a valid header value,
    /// or TLS roots that cannot be loaded ([`Error::is_config`]).
    pub fn build(self) -> Result<Client, Error> {
        if let Some(bad) = &self.bad_user_agent {
            return Err(Error::config(format!(
                "user_agent {bad:?} is not a valid header value: use visible ASCII and spaces only"
            )));
        }
        for (name, value, note) in [
            ("max_response_body", self.max_response_body, ""),
            (
                "max_request_body",
                self.max_request_body,
                " (a request without a body passes any max_request_body)",
            ),
            ("max_hosts", self.max_hosts, ""),
        ] {
            if value == 0 {
                return Err(Error::config(format!(
                    "{name} must be at least 1, got 0{note}"
                )));
            }
        }
        let mut strip = Vec::with_capacity(API_KEY_HEADERS.len() + self.redirect_strip.len());
        for name in API_KEY_HEADERS
            .iter()
            .copied()
            .chain(self.redirect_strip.iter().map(String::as_str))
        {
            let header = http::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Error::config(format!(
                    "redirect_strip_header {name:?} is not a valid header name: use a name such as \"x-auth-token\" (letters, digits, `-`), no `:` or value"
                ))
            })?;
            if !strip.contains(&header) {
                strip.push(header);
            }
        }
        let mut host_timeouts = HashMap::with_capacity(self.host_timeouts.len());
        for (authority, timeout) in &self.host_timeouts {
            let host = AuthorityKey::key_for(authority).map_err(|e| {
                let e = e.to_string();
                let why = e.strip_prefix("invalid configuration: ").unwrap_or(&e);
                // `Error`'s display puts "invalid configuration" in front.
                Error::config(format!("host_timeout: {why}"))
            })?;
            if host_timeouts.insert(host.clone(), *timeout).is_some() {
                return Err(Error::config(format!(
                    "host_timeout for {host:?} given twice: give each host one timeout"
                )));
            }
        }
        // A zero timeout fails every request ("no complete response within
        // 0 ms"), a zero ping interval pings without end; `None` is how to
        // say "never".
        let named_host_timeouts = host_timeouts
            .iter()
            .map(|(host, timeout)| (format!("host_timeout for {host:?}"), *timeout));
        for (name, duration, none_means) in [
            ("timeout".to_owned(), self.timeout, "no limit"),
            ("deadline".to_owned(), self.deadline, "no limit"),
            (
                "connect_timeout".to_owned(),
                self.connect_timeout,
                "no limit",
            ),
            (
                "http2_keep_alive_interval".to_owned(),
                self.http2_keep_alive_interval,
                "no pings",
            ),
        ]
        .into_iter()
        .chain(named_host_timeouts.map(|(name, t)| (name, t, "no limit")))
        {
            if duration == Some(Duration::ZERO) {
                return Err(Error::config(format!(
                    "{name} must be more than zero: use None for {none_means}"
                )));
            }
        }
        if self.http2_keep_alive_timeout.is_zero() {
            return Err(Error::config(
                "http2_keep_alive_timeout must be more than zero: it is how long a ping may go unanswered",
            ));
        }
        let mut limits = KeyedLimitLayer::builder(self.host_default).max_keys(self.max_hosts);
        for (host, limit) in &self.host_limits {
            limits = limits.limit_for(host.clone(), *limit);
        }
        let limits = limits.build().map_err(|e| Error::config(e.to_string()))?;
        let host_limits = limits.handle();

        let resolver = self
            .resolver
            .clone()
            .unwrap_or_else(|| guard::box_resolver(GaiResolver::new()));
        let guard = Guard::new(self.address_guard, self.guard_allow.clone());
        let mut http =
            HttpConnector::new_with_resolver(GuardedResolver::new(resolver, guard.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        // Kept beside the connector's own bound on the whole handshake:
        // hyper-util splits this one among a name's addresses, so a dead
        // first address leaves time to try the next.
        http.set_connect_timeout(self.connect_timeout);
        let protocols = self.tls()?.https_or_http();
        let https = if self.http2_prior_knowledge {
            protocols.enable_http2().wrap_connector(http)
        } else {
            protocols.enable_http1().enable_http2().wrap_connector(http)
        };
        let connector = GuardedConnector::new(https, guard.clone(), self.connect_timeout);
        let mut raw = HyperClient::builder(TokioExecutor::new());
        // hyper-util's idle sweeper, and hyper's h2 pings, add these to an
        // `Instant`, which overflows (a panic in the connection's or the
        // sweeper's task) for `Duration::MAX`; past a century they mean
        // never, which `None` (or a century, for the ping's timeout) says
        // without the overflow.
        const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        raw.pool_idle_timeout(self.pool_idle_timeout.filter(|t| *t <= FOREVER))
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            // Needs the timer below, or hyper ignores it.
            .http2_keep_alive_interval(self.http2_keep_alive_interval.filter(|t| *t <= FOREVER))
            .http2_keep_alive_timeout(self.http2_keep_alive_timeout.min(FOREVER))
            .http2_only(self.http2_prior_knowledge)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let raw: Raw = raw.build(connector);
        // gzip and br, as documented: tower-http turns deflate and zstd on
        // too when some other crate in the build enables their features,
        // and `decompression(false)` would then still ask for them.
        let decompress = Decompression::new(SharedRaw(Arc::new(raw)))
            .gzip(self.decompression)
            .br(self.decompression)
            .no_deflate()
            .no_zstd();
        let fetch = Fetch {
            client: decompress,
            timeout: self.timeout,
            // No map to look in unless some host has its own timeout.
            host_timeouts: (!host_timeouts.is_empty()).then(|| Arc::new(host_timeouts)),
            cap: self.max_response_body,
        };

        // Without retries the layer still runs, with zero retries: one
        // concrete stack type, and nothing boxed but the response future.
        let retry = self.retry.clone().unwrap_or_else(RetryLayer::never);
        let budgets = self.learn_rate_limits.then(|| {
            let learned = Learned::new(self.max_hosts, retry.max_wait());
            // Without retries the cap is the defaults', not the user's:
            // the refusal of a held host says so.
            Arc::new(match self.retry {
                Some(_) => learned,
                None => learned.without_retries(),
            })
        });
        let limited = Gated(limits.layer(Learn::new(fetch, budgets.clone())));
        let stack: Stack = match self.max_redirects {
            0 => Either::Right(limited),
            max => Either::Left(FollowRedirect::with_policy(
                limited,
                RedirectPolicy::new(max, strip.into()),
            )),
        };
        Ok(Client {
            shared: Arc::new(Shared {
                stack,
                max_request_body: self.max_request_body,
                timeout: self.timeout,
                deadline: self.deadline,
                user_agent: self.user_agent.clone(),
                guard,
                retry,
                host_limits,
                learned: budgets,
            }),
        })
    }
}

/// One attempt: send, decompress, read the body up to the cap, all within the timeout.
#[derive(Clone)]
struct Fetch {
    client: Decompression<SharedRaw>,
    timeout: Option<Duration>,
    host_timeouts: Option<Arc<HashMap<String, Option<Duration>>>>,
    cap: usize,
}

type Sent = tower_http::decompression::ResponseFuture<hyper_util::client::legacy::ResponseFuture>;
type Received = tower_http::decompression::DecompressionBody<hyper::body::Incoming>;

pin_project! {
    /// The future of one attempt: the response's head, then its body.
    struct FetchFuture {
        #[pin]
        step: Step,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        timeout: Option<Duration>,
        cap: usize,
        // Sent by following a redirect: the outcome is marked so.
        hop: bool,
    }
}

pin_project! {
    #[project = StepProj]
    enum Step {
        Head { #[pin] sent: Sent },
        Body { parts: Option<http::response::Parts>, #[pin] body: Collect<Received> },
    }
}

impl Future for FetchFuture {
    type Output = Result<Response<Bytes>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let hop = self.hop;
        match self.poll_attempt(cx) {
            Poll::Ready(outcome) if hop => Poll::Ready(match outcome {
                Ok(mut resp) => {
                    resp.extensions_mut().insert(Hop);
                    Ok(resp)
                }
                Err(e) => Err(AfterRedirect(e).into()),
            }),
            other => other,
        }
    }
}

impl FetchFuture {
    fn poll_attempt(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<Bytes>, BoxError>> {
        let mut this = self.project();
        loop {
            let progress = match this.step.as_mut().project() {
                StepProj::Head { sent } => match sent.poll(cx) {
                    Poll::Ready(Ok(resp)) => {
                        let (parts, body) = resp.into_parts();
                        this.step.set(Step::Body {
                            parts: Some(parts),
                            body: collect(body, Cap::Response(*this.cap)),
                        });
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => Poll::Pending,
                },
                StepProj::Body { parts, body } => match body.poll(cx) {
                    Poll::Ready(Ok(body)) => {
                        let Some(parts) = parts.take() else {
                            return Poll::Ready(Err("attempt polled after completion".into()));
                        };
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    }
                    Poll::Ready(Err(e)) => {
                        // A body over the cap came with a head: its status
                        // goes with the error (a caller reporting statuses
                        // saw none for a 200 it could not keep).
                        let e = match (e.downcast::<BodyTooLarge>(), parts.as_ref()) {
                            (Ok(cap), Some(parts)) => cap.with_status(parts.status).into(),
                            (Ok(cap), None) => cap,
                            (Err(e), _) => e,
                        };
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => Poll::Pending,
                },
            };
            // Not done yet: the timeout, if any, is checked.
            if let (Some(deadline), Some(after)) =
                (this.deadline.as_mut().as_pin_mut(), *this.timeout)
                && deadline.poll(cx).is_ready()
            {
                return Poll::Ready(Err(TimedOut::new(after).into()));
            }
            return progress;
        }
    }
}

impl Service<Request<Full<Bytes>>> for Fetch {
    type Response = Response<Bytes>;
    type Error = BoxError;
    type Future = FetchFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        // The step is built last, straight into the returned future (built
        // first, it was built aside and its 560 bytes copied in).
        let timeout = (self.host_timeouts.as_ref())
            .and_then(|hosts| hosts.get(&*AuthorityKey.key(&req)).copied())
            .unwrap_or(self.timeout);
        let deadline = timeout.map(tokio::time::sleep);
        let hop = req.extensions().get::<Hop>().is_some();
        FetchFuture {
            deadline,
            timeout,
            cap: self.cap,
            hop,
            step: Step::Head {
                sent: self.client.call(req),
            },
        }
    }
}

/// The per-host gate (core's keyed limit), timed: a response that waited
/// for its host's permit or token carries the wait as a [`DeliberateWait`],
/// so an adaptive limit above the client does not read it as latency.
///
/// The keyed future says when it is past the gate
/// ([`is_admitted`](tower_fanout_core::keyed::ResponseFuture::is_admitted)),
/// so a `Pending` before that is the gate's. A call the gate admits at once
/// (the usual case) reads no clock: the time is read when the gate first
/// keeps the call waiting and again when it lets it through.
///
/// Each hop of a redirect passes its host's gate; only the last hop's wait
/// reaches the caller (tower-http's `FollowRedirect` drops the responses
/// before it).
#[derive(Clone)]
struct Gated<S>(S);

impl<S> Service<Request<Full<Bytes>>> for Gated<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Bytes>>,
    S::Future: Admission,
{
    type Response = Response<Bytes>;
    type Error = S::Error;
    type Future = GatedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        GatedFuture {
            inner: self.0.call(req),
            gate: Gate::Open,
        }
    }
}

/// Where an attempt stands at its host's gate.
#[derive(Clone, Copy)]
enum Gate {
    /// Not past it, and not kept waiting so far.
    Open,
    /// Not past it: kept waiting since then.
    Waiting(tokio::time::Instant),
    /// Past it, after waiting that long.
    Sent(Duration),
}

pin_project! {
    /// The response future of [`Gated`].
    struct GatedFuture<F> {
        #[pin]
        inner: F,
        gate: Gate,
    }
}

/// A gate's future that says when the call is past the gate.
trait Admission {
    fn is_admitted(&self) -> bool;
}

impl<S: Service<Req>, Req> Admission for tower_fanout_core::keyed::ResponseFuture<S, Req> {
    fn is_admitted(&self) -> bool {
        tower_fanout_core::keyed::ResponseFuture::is_admitted(self)
    }
}

impl<F, E> Future for GatedFuture<F>
where
    F: Future<Output = Result<Response<Bytes>, E>> + Admission,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let before = *this.gate;
        // The answer is returned as the inner future gives it, and noted in
        // place: taken out of its `Poll` and put back, it was copied whole
        // twice.
        if let Gate::Sent(waited) = before {
            if waited.is_zero() {
                return this.inner.poll(cx);
            }
            let mut poll = this.inner.poll(cx);
            note(&mut poll, waited);
            return poll;
        }
        let mut poll = this.inner.as_mut().poll(cx);
        let sent = this.inner.as_ref().get_ref().is_admitted();
        *this.gate = match before {
            Gate::Waiting(since) if sent => Gate::Sent(since.elapsed()),
            _ if sent => Gate::Sent(Duration::ZERO),
            Gate::Open if poll.is_pending() => Gate::Waiting(tokio::time::Instant::now()),
            unchanged => unchanged,
        };
        if poll.is_pending() {
            // A fresh `Pending`: returning `poll` copied its whole size.
            return Poll::Pending;
        }
        if let Gate::Sent(waited) = *this.gate {
            note(&mut poll, waited);
        }
        poll
    }
}

/// Adds `waited` to a ready answer's [`DeliberateWait`].
fn note<E>(poll: &mut Poll<Result<Response<Bytes>, E>>, waited: Duration) {
    if let Poll::Ready(Ok(resp)) = poll {
        DeliberateWait::add_to(resp.extensions_mut(), waited);
    }
}

/// The client preset: a `Clone` tower service from `http::Request<B>` to
/// `http::Response<Bytes>`.
///
/// Responses come back with their body read into [`Bytes`], up to
/// [`max_response_body`](ClientBuilder::max_response_body): an agent runtime
/// parses whole bodies (JSON, HTML, text), and a buffered body means a
/// permit is never held by a caller that is slow to read. A body over the
/// cap fails with [`Error::is_body_too_large`] instead of filling memory.
///
/// Clones share the connection pool, the per-host limits, the learned
/// budgets and the retry budget.
///
/// Each request runs in one `http_request` span with `method`, `host` and,
/// once known, `status`; never the full URI, since query strings carry secrets.
#[derive(Clone)]
pub struct Client {
    // One allocation shared by every clone: a clone is one reference count.
    shared: Arc<Shared>,
}

struct Shared {
    stack: Stack,
    max_request_body: usize,
    // Bounds reading a streamed request body too (the attempts have their own).
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    user_agent: Option<HeaderValue>,
    guard: Guard,
    retry: RetryLayer,
    host_limits: KeyedLimitHandle<String>,
    learned: Option<Arc<Learned>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address_guard", &self.shared.guard.enabled())
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    /// The defaults, as [`Client::builder`].
    fn default() -> Self {
        Client::builder()
    }
}

impl Client {
    /// Starts from the defaults; see each [`ClientBuilder`] method.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            connect_timeout: Some(Duration::from_secs(10)),
            timeout: Some(Duration::from_secs(30)),
            deadline: None,
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: 32,
            // A request on a connection that has read nothing for 30 s pings
            // at once, and a dead connection is left after 20 s: inside the
            // request's 30 s timeout, so a GET goes again on a new one.
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            http2_keep_alive_timeout: Duration::from_secs(20),
            http2_prior_knowledge: false,
            max_response_body: 10 * 1024 * 1024,
            max_request_body: 10 * 1024 * 1024,
            max_redirects: 10,
            redirect_strip: Vec::new(),
            decompression: true,
            address_guard: false,
            guard_allow: Vec::new(),
            host_default: KeyLimit::new().concurrency(16),
            host_limits: Vec::new(),
            host_timeouts: Vec::new(),
            max_hosts: 1024,
            retry: Some(RetryLayer::default()),
            learn_rate_limits: true,
            resolver: None,
            user_agent: Some(HeaderValue::from_static(DEFAULT_AGENT)),
            bad_user_agent: None,
            tls_config: None,
            #[cfg(feature = "native-roots")]
            native_roots: false,
        }
    }

    /// A live view of the per-host limits (calls in flight, waiting, tokens per host).
    pub fn host_limits(&self) -> &KeyedLimitHandle<String> {
        &self.shared.host_limits
    }

    /// Calls to `host` (its authority, written as for
    /// [`host_limit`](ClientBuilder::host_limit)) held by what its earlier
    /// answers said of its budget: waiting for its window to reset (see
    /// [`learn_rate_limits`](ClientBuilder::learn_rate_limits)). They are
    /// past the host's gate, so [`host_limits`](Self::host_limits) counts
    /// them in flight too; the rest of its in-flight calls are at the
    /// server. 0 with learning off, and for a host not tracked.
    ///
    /// ```
    /// # let client = tower_fanout_http::Client::builder().build().unwrap();
    /// let host = "api.example.com";
    /// let at_server = client.host_limits().in_flight(host) - client.held(host);
    /// # assert_eq!(at_server, 0);
    /// ```
    pub fn held(&self, host: &str) -> usize {
        let (Some(learned), Ok(key)) = (&self.shared.learned, AuthorityKey::key_for(host)) else {
            return 0;
        };
        learned.held(&key)
    }

    /// Sends a GET to `uri` (a convenience over [`Service::call`]).
    ///
    /// # Errors
    /// As [`Service::call`]; an unparsable `uri` is [`Error::is_invalid_request`].
    pub async fn get(&self, uri: &str) -> Result<Response<Bytes>, Error> {
        let req = Request::get(uri)
            .body(Full::<Bytes>::default())
            .map_err(Error::invalid_request)?;
        self.clone().oneshot(req).await
    }
}

impl<B> Service<Request<B>> for Client
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Bytes>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Every wait (limits, learned budgets, retries) happens per request,
        // in the response future, where the host is known.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let uri = req.uri();
        let host = uri.host();
        // At debug, as everything this crate logs on a request's path: an
        // application logging at info gets no line per request.
        let span = tracing::debug_span!(
            "http_request",
            method = %req.method(),
            host = %host.unwrap_or_default(),
            status = tracing::field::Empty,
        );
        // Refusals that the URI alone decides, made before anything is read.
        let shared = &self.shared;
        // A URI with no scheme or host is the caller's mistake whether the
        // guard is on or not: the guard has no address to refuse.
        let not_absolute = || {
            Error::invalid_request(
                "the URI must be absolute, with an http or https scheme and a host",
            )
        };
        let refused = match (uri.scheme_str(), host) {
            (scheme @ Some(_), Some(host)) => match shared.guard.check(scheme, host) {
                Err(refused) => Some(Error::from_box(refused.into())),
                Ok(()) if matches!(scheme, Some("http" | "https")) => None,
                Ok(()) => Some(not_absolute()),
            },
            _ => Some(not_absolute()),
        };
        // The earlier of the client's deadline and the request's own, with
        // its length for the error. Read from the clock only when there is
        // one; its timer is made at the first poll, inside the runtime.
        let own = req.extensions().get::<Deadline>().map(|d| d.instant());
        let deadline = if shared.deadline.is_none() && own.is_none() {
            None
        } else {
            let now = tokio::time::Instant::now();
            let client = shared.deadline.and_then(|d| now.checked_add(d));
            let earlier = match (client, own) {
                (Some(c), Some(o)) if o < c => Some((o, SetBy::Request)),
                (Some(c), _) => Some((c, SetBy::Client)),
                (None, o) => o.map(|o| (o, SetBy::Request)),
            };
            earlier.map(|(at, set_by)| CallDeadline {
                after: at.saturating_duration_since(now),
                at,
                set_by,
            })
        };
        // A request whose own deadline has passed already (it waited too
        // long at a limit above the client, say) is not sent at all.
        let refused = refused.or_else(|| {
            let past = deadline.filter(|d| d.after.is_zero())?;
            Some(Error::from_box(past.timed_out().before_sending().into()))
        });
        let mut start = None;
        let before = match refused {
            Some(error) => Before::Refused { error: Some(error) },
            None => {
                let (mut parts, body) = req.into_parts();
                // The layers below read the deadline from the request: the
                // client's, when it comes first (the request's own is there).
                if let Some(deadline) = deadline.filter(|d| d.set_by == SetBy::Client) {
                    parts.extensions.insert(Deadline::at(deadline.at));
                }
                if let Some(agent) = &shared.user_agent
                    && let http::header::Entry::Vacant(slot) =
                        parts.headers.entry(http::header::USER_AGENT)
                {
                    slot.insert(agent.clone());
                }
                if body.is_end_stream() {
                    // Nothing to read (a GET, most often): the retry loop
                    // starts here rather than after a read of nothing.
                    start = Some(Request::from_parts(parts, Full::new(Bytes::new())));
                    Before::Started
                } else {
                    Before::Reading {
                        parts: Some(parts),
                        body: collect(body, Cap::Request(shared.max_request_body)),
                        body_timer: None,
                    }
                }
            }
        };
        // One allocation per call: the retry loop runs inside this future.
        // It is a field of its own, not a state, and is handed its request
        // in place: moved through an enum it was copied whole (1.1 KB) twice
        // before the copy into the box.
        let mut future = Box::pin(ClientFuture {
            span,
            shared: shared.clone(),
            deadline,
            deadline_timer: None,
            before,
            retry: shared.retry.unstarted(shared.stack.clone()),
        });
        if let Some(req) = start {
            future.as_mut().project().retry.start(req);
        }
        future
    }
}

pin_project! {
    /// A request's whole life, in its `http_request` span: its body read
    /// (bounded), then the retry loop, each attempt following redirects.
    struct ClientFuture<B> {
        span: tracing::Span,
        shared: Arc<Shared>,
        // The whole call's deadline, and its timer once first polled
        // (boxed: most calls have none).
        deadline: Option<CallDeadline>,
        deadline_timer: Option<Pin<Box<tokio::time::Sleep>>>,
        #[pin]
        before: Before<B>,
        // Started once the request is whole.
        #[pin]
        retry: RetryFuture<Stack, Request<Full<Bytes>>>,
    }
}

/// The deadline a call runs under: the client's or the request's own,
/// whichever ends first.
#[derive(Debug, Clone, Copy)]
struct CallDeadline {
    /// Its length from `call`, for the error.
    after: Duration,
    at: tokio::time::Instant,
    set_by: SetBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetBy {
    Client,
    Request,
}

impl CallDeadline {
    /// The error of a call that ran past it.
    fn timed_out(self) -> TimedOut {
        match self.set_by {
            SetBy::Client => TimedOut::deadline(self.after),
            SetBy::Request => TimedOut::request_deadline(self.after),
        }
    }
}

pin_project! {
    /// What comes before the retry loop.
    #[project = BeforeProj]
    enum Before<B> {
        Refused { error: Option<Error> },
        Reading {
            parts: Option<http::request::Parts>,
            #[pin]
            body: Collect<B>,
            // Set when the body first keeps the call waiting: a body already
            // in memory (a `Full`) reads no clock and sets no timer. Boxed,
            // so the response future does not grow for every request.
            body_timer: Option<Pin<Box<tokio::time::Sleep>>>,
        },
        Started,
    }
}

impl<B> Future for ClientFuture<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Bytes>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let polled = 'steps: loop {
            match this.before.as_mut().project() {
                BeforeProj::Refused { error } => {
                    break 'steps Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        Error::from_box(crate::error::polled_after_completion())
                    })));
                }
                BeforeProj::Reading {
                    parts,
                    body,
                    body_timer,
                } => {
                    let body = match body.poll(cx) {
                        Poll::Ready(Ok(body)) => body,
                        Poll::Ready(Err(e)) => break 'steps Poll::Ready(Err(Error::from_box(e))),
                        Poll::Pending => {
                            // A body that never ends would hold the call
                            // for ever: no attempt, and so no attempt
                            // timeout, has started.
                            if let Some(after) = this.shared.timeout
                                && body_timer
                                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)))
                                    .as_mut()
                                    .poll(cx)
                                    .is_ready()
                            {
                                break 'steps Poll::Ready(Err(Error::from_box(
                                    TimedOut::reading_request_body(after).into(),
                                )));
                            }
                            break 'steps Poll::Pending;
                        }
                    };
                    let Some(parts) = parts.take() else {
                        break 'steps Poll::Ready(Err(Error::from_box(
                            crate::error::polled_after_completion(),
                        )));
                    };
                    let req = Request::from_parts(parts, Full::new(body));
                    this.retry.as_mut().start(req);
                    this.before.set(Before::Started);
                }
                BeforeProj::Started => {
                    let Poll::Ready(outcome) = this.retry.as_mut().poll(cx) else {
                        break 'steps Poll::Pending;
                    };
                    let attempts = this.retry.attempts();
                    let outcome = match outcome {
                        // With the redirect layer in the stack, a 3xx out of
                        // it is one it could not follow.
                        Ok(resp) if matches!(this.shared.stack, Either::Left(_)) => {
                            match crate::redirect::unfollowed(&resp) {
                                Some(bad) => Err(Error::from_box(bad.into())),
                                None => Ok(resp),
                            }
                        }
                        outcome => outcome.map_err(Error::from_box),
                    }
                    .map_err(|e| e.after_attempts(attempts));
                    if let Ok(resp) = &outcome {
                        this.span.record("status", resp.status().as_u16());
                    }
                    break 'steps Poll::Ready(outcome);
                }
            }
        };
        // The whole call's deadline, checked after the call's own progress:
        // an answer ready at the deadline is still given.
        if polled.is_pending()
            && let Some(deadline) = *this.deadline
            && this
                .deadline_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.at)))
                .as_mut()
                .poll(cx)
                .is_ready()
        {
            let mut timed_out = deadline.timed_out();
            if matches!(*this.before, Before::Reading { .. }) {
                timed_out = timed_out.before_sending();
            }
            // What the call holds (its attempt's place at the host's limit
            // and its stream, or the body being read) goes back with the
            // answer, not when the caller drops this future.
            this.before.set(Before::Refused { error: None });
            this.retry
                .set(this.shared.retry.unstarted(this.shared.stack.clone()));
            return Poll::Ready(Err(Error::from_box(timed_out.into())));
        }
        polled
    }
}

#[cfg(test)]
impl Client {
    /// The learned budgets, when learning is on (for the cancellation tests).
    pub(crate) fn learned(&self) -> Option<Arc<Learned>> {
        self.shared.learned.clone()
    }
}

#[cfg(all(test, not(any(feature = "webpki-roots", feature = "native-roots"))))]
mod no_roots {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn build_says_which_feature_to_enable() {
        let err = super::Client::builder().build().unwrap_err();
        assert!(err.is_config());
        assert!(err.to_string().contains("webpki-roots"), "{err}");
    }
}
