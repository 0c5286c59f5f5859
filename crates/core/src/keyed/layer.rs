use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::map::{Keys, Resolved};
use super::service::KeyedLimit;
use crate::Deadline;
use crate::error::ConfigError;

/// The limits applied to one key: concurrency, rate, both, or neither.
///
/// ```
/// use std::time::Duration;
/// use tower_fanout_core::keyed::KeyLimit;
///
/// // 3 in flight and 10 a second, at most 2 at once.
/// let github = KeyLimit::new().concurrency(3).rate(10, Duration::from_secs(1)).burst(2);
/// # let _ = github;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyLimit {
    concurrency: Option<usize>,
    rate: Option<(u32, Duration)>,
    burst: Option<u32>,
}

impl KeyLimit {
    /// No limit at all; add one with [`concurrency`](Self::concurrency) or [`rate`](Self::rate).
    pub const fn new() -> Self {
        Self {
            concurrency: None,
            rate: None,
            burst: None,
        }
    }

    /// At most `max` calls in flight for the key.
    #[must_use]
    pub const fn concurrency(mut self, max: usize) -> Self {
        self.concurrency = Some(max);
        self
    }

    /// At most `rate` calls per `period` for the key (a token bucket, burst `rate` by default).
    #[must_use]
    pub const fn rate(mut self, rate: u32, period: Duration) -> Self {
        self.rate = Some((rate, period));
        self
    }

    /// The most calls the key's bucket admits at once; needs [`rate`](Self::rate).
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The concurrency limit, if any.
    pub const fn max_in_flight(&self) -> Option<usize> {
        self.concurrency
    }

    fn resolve(&self, what: &str) -> Result<Resolved, ConfigError> {
        if self.concurrency == Some(0) {
            return Err(ConfigError::new(format!(
                "{what}: concurrency must be at least 1 (a limit of 0 admits nothing)"
            )));
        }
        let rate = match (self.rate, self.burst) {
            (None, Some(_)) => {
                return Err(ConfigError::new(format!(
                    "{what}: a burst needs a rate; call `.rate(n, period)` too"
                )));
            }
            (None, None) => None,
            (Some((rate, period)), burst) => {
                if rate == 0 || period.is_zero() {
                    return Err(ConfigError::new(format!(
                        "{what}: rate and period must be non-zero (got {rate} per {period:?})"
                    )));
                }
                let burst = burst.unwrap_or(rate);
                if burst == 0 {
                    return Err(ConfigError::new(format!(
                        "{what}: burst must be at least 1 token (a bucket of 0 admits nothing)"
                    )));
                }
                crate::rate::bucket::check_refill(rate, period, burst)
                    .map_err(|e| ConfigError::new(format!("{what}: {e}")))?;
                Some((rate, period, burst))
            }
        };
        Ok(Resolved {
            concurrency: self.concurrency,
            rate,
        })
    }
}

/// Picks the key a request is limited under.
///
/// Implemented for closures `Fn(&Req) -> K` and for [`AuthorityKey`].
///
/// A key is handed over as a [`Cow`] of its [`Lookup`](Self::Lookup) form,
/// so that one borrowed from the request (a host name, say) is looked up
/// without being copied: the map builds an owned key only for a key it does
/// not track yet. A closure's key is its own lookup form, always owned.
///
/// ```
/// use std::borrow::Cow;
/// use tower_fanout_core::keyed::KeyFn;
///
/// struct Tenant;
///
/// impl KeyFn<(String, u32)> for Tenant {
///     type Key = String;
///     type Lookup = str;
///
///     fn key<'r>(&self, req: &'r (String, u32)) -> Cow<'r, str> {
///         Cow::Borrowed(&req.0)
///     }
/// }
///
/// let req = ("acme".to_string(), 7);
/// assert_eq!(Tenant.key(&req), "acme");
/// ```
pub trait KeyFn<Req> {
    /// The key: a host name, a tenant id, an API route...
    type Key: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static + Borrow<Self::Lookup>;

    /// The form a key is looked up in: `str` for a `String` key, or the key
    /// itself.
    type Lookup: ?Sized + Hash + Eq + ToOwned<Owned = Self::Key>;

    /// The key of `req`, borrowed from it when it can be.
    fn key<'r>(&self, req: &'r Req) -> Cow<'r, Self::Lookup>;

    /// When `req` must be done by, if it says so: a call that would wait for
    /// its key's token until or past it is refused at once with
    /// [`RateLimited`](crate::error::RateLimited) and the wait, instead of
    /// held until then. `None` by default (a closure's keys); [`AuthorityKey`]
    /// reads the request's [`Deadline`] extension. Asked of the calls to a
    /// key with a rate. A wait for the key's permit has no known end, so
    /// the deadline does not bound it: a layer above ends the call there
    /// (tower-fanout-http's client does; `tower::timeout` will), and a call
    /// dropped while it waits leaves the queue.
    fn deadline(&self, req: &Req) -> Option<Deadline> {
        let _ = req;
        None
    }
}

impl<F, Req, K> KeyFn<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    type Key = K;
    type Lookup = K;

    fn key<'r>(&self, req: &'r Req) -> Cow<'r, K> {
        Cow::Owned(self(req))
    }
}

/// The default key of an [`http::Request`]: its URI authority (`host` or
/// `host:port`), in lower case, without any `user:password@` (so
/// credentials neither split a host's limit nor show in the keys), without
/// the scheme's default port (`:443` for https, `:80` for http) and without
/// a fully qualified name's trailing dot, so that `https://API.example.com.:443/`
/// counts against `api.example.com` like every other way of writing it; the
/// empty string when the URI has none. A key that is a slice of the
/// authority as written is borrowed from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorityKey;

impl<B> KeyFn<http::Request<B>> for AuthorityKey {
    type Key = String;
    type Lookup = str;

    fn deadline(&self, req: &http::Request<B>) -> Option<Deadline> {
        req.extensions().get::<Deadline>().copied()
    }

    fn key<'r>(&self, req: &'r http::Request<B>) -> Cow<'r, str> {
        let uri = req.uri();
        let authority = uri.authority().map_or("", |a| a.as_str());
        // One pass over a short string (cheaper than a scan per question,
        // and than `rfind`'s `memrchr`): the host starts after the last `@`
        // (userinfo, as in http's `Authority::host`), the port at the last
        // `:` outside an IPv6 literal (`[::1]`, whose `]` ends the host),
        // and upper case in the host means the key is built, not borrowed.
        let bytes = authority.as_bytes();
        let (mut start, mut colon, mut upper) = (0, bytes.len(), false);
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'@' => (start, colon, upper) = (i + 1, bytes.len(), false),
                b':' => colon = i,
                b']' => colon = bytes.len(),
                b'A'..=b'Z' => upper = true,
                _ => {}
            }
        }
        let written_host = &authority[start..colon];
        let port = &authority[colon..];
        // The scheme's default port (or `host:`, an empty one) says no more
        // than no port.
        let port = if port.len() <= 1 || is_default_port(uri, port) {
            ""
        } else {
            port
        };
        let host = written_host.strip_suffix('.').unwrap_or(written_host);
        if !upper && (port.is_empty() || host.len() == written_host.len()) {
            // The host alone, or the host and port as written.
            Cow::Borrowed(&authority[start..start + host.len() + port.len()])
        } else {
            let mut key = host.to_ascii_lowercase();
            key.push_str(port);
            Cow::Owned(key)
        }
    }
}

impl AuthorityKey {
    /// The key of the requests to `authority`, as an override names it
    /// ([`KeyedLimitBuilder::limit_for`] calls this for a layer made by
    /// [`KeyedLimitLayer::builder`]): in lower case and without a fully
    /// qualified name's trailing dot, so `"API.GitHub.com."` names the
    /// requests to `https://api.github.com/`. A port is kept as written:
    /// requests are counted under `"host:8443"` when their URI carries a
    /// port other than its scheme's default.
    ///
    /// # Errors
    /// Something that is not a URI authority, or that no request's key can
    /// be: empty, a URL (`"https://api.github.com"`), a path, a query,
    /// `user:password@` (requests' keys leave it out), a space, a name
    /// with non-ASCII letters (URIs carry its punycode, `xn--…`), a port
    /// of 0 or past 65535. And port 80 or 443: requests' keys leave out
    /// their scheme's default port, so `"api.github.com:443"` would match
    /// no https request (only `http://api.github.com:443/`, which no one
    /// sends); write `"api.github.com"`.
    ///
    /// ```
    /// use tower_fanout_core::keyed::AuthorityKey;
    ///
    /// assert_eq!(AuthorityKey::key_for("API.GitHub.com.").unwrap(), "api.github.com");
    /// assert_eq!(AuthorityKey::key_for("[::1]:8080").unwrap(), "[::1]:8080");
    /// assert!(AuthorityKey::key_for("https://api.github.com").is_err());
    /// assert!(AuthorityKey::key_for("api.github.com:443").is_err());
    /// ```
    pub fn key_for(authority: &str) -> Result<String, ConfigError> {
        let refuse = |why: &str| {
            Err(ConfigError::new(format!(
                "keyed limit key {authority:?} {why}: name a host as requests' URIs carry it, \
                 like \"api.github.com\" or \"localhost:8080\""
            )))
        };
        if authority.is_empty() {
            return refuse("is empty");
        }
        if authority.contains('@') {
            return refuse("has user:password@, which requests' keys leave out");
        }
        if !authority.is_ascii() {
            return refuse(
                "is not ASCII: URIs carry an internationalized name in its punycode form \
                 (xn--...), and so do requests' keys",
            );
        }
        if authority.parse::<http::uri::Authority>().is_err() || authority.contains(' ') {
            return refuse("is not a URI authority (no scheme, path or query)");
        }
        let mut key = authority.to_ascii_lowercase();
        // The port starts at the last `:` outside an IPv6 literal.
        let host_end = match key.rfind([':', ']']) {
            Some(i) if key.as_bytes()[i] == b':' => i,
            _ => key.len(),
        };
        if host_end < key.len() {
            match key[host_end + 1..].parse::<u16>() {
                Ok(0) | Err(_) => return refuse("has a port no URI can carry (1 to 65535)"),
                Ok(port @ (80 | 443)) => {
                    let scheme = if port == 80 { "http" } else { "https" };
                    let host = &authority[..host_end];
                    return Err(ConfigError::new(format!(
                        "keyed limit key {authority:?} names port {port}, the {scheme} default, \
                         which requests' keys leave out ({scheme}://{host}/ and \
                         {scheme}://{host}:{port}/ both count as {host:?}): write {host:?}"
                    )));
                }
                Ok(_) => {}
            }
        }
        if host_end > 1 && key.as_bytes()[host_end - 1] == b'.' {
            key.remove(host_end - 1);
        }
        Ok(key)
    }
}

/// Whether `port` (with its `:`) is the default of the URI's scheme.
fn is_default_port(uri: &http::Uri, port: &str) -> bool {
    match uri.scheme() {
        Some(s) if *s == http::uri::Scheme::HTTPS => port == ":443",
        Some(s) if *s == http::uri::Scheme::HTTP => port == ":80",
        _ => false,
    }
}

/// Configures a [`KeyedLimitLayer`]; made by [`KeyedLimitLayer::builder`]
/// or [`KeyedLimitLayer::builder_with_key`].
pub struct KeyedLimitBuilder<F, K> {
    key_fn: F,
    default: KeyLimit,
    overrides: Vec<(K, KeyLimit)>,
    max_keys: usize,
    fail_fast: bool,
    // Writes an override's key as the key function writes requests' keys,
    // or says why none will ever match it.
    check_key: fn(K) -> Result<K, ConfigError>,
}

impl<F: Clone, K: Clone> Clone for KeyedLimitBuilder<F, K> {
    fn clone(&self) -> Self {
        Self {
            key_fn: self.key_fn.clone(),
            default: self.default,
            overrides: self.overrides.clone(),
            max_keys: self.max_keys,
            fail_fast: self.fail_fast,
            check_key: self.check_key,
        }
    }
}

impl<F, K: fmt::Debug> fmt::Debug for KeyedLimitBuilder<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimitBuilder")
            .field("default", &self.default)
            .field("overrides", &self.overrides)
            .field("max_keys", &self.max_keys)
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}

impl<F, K> KeyedLimitBuilder<F, K>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    /// Gives `key` its own limit instead of the default. With
    /// [`AuthorityKey`] (a layer made by [`KeyedLimitLayer::builder`]), name
    /// the authority as requests' URIs carry it, `"api.github.com"`, or
    /// `"host:8443"` when they carry a port other than their scheme's
    /// default; the case and a trailing dot do not matter, and
    /// [`build`](Self::build) refuses what is not an authority (see
    /// [`AuthorityKey::key_for`]). Another key function's keys are used as
    /// given.
    #[must_use]
    pub fn limit_for(mut self, key: impl Into<K>, limit: KeyLimit) -> Self {
        self.overrides.push((key.into(), limit));
        self
    }

    /// How many keys are tracked at most (default 1024). When a new key
    /// arrives and the map is full, the least recently used idle keys are
    /// forgotten, an eighth of `max_keys` at a time (at least one), so a
    /// stream of new keys pays for one scan of the map per `max_keys / 8`
    /// keys rather than per key; a key with calls in flight, waiters, or a
    /// bucket still refilling is never forgotten. With no idle key, the call
    /// fails with [`TooManyKeys`](super::TooManyKeys). A key without any
    /// limit is not tracked, so it takes no room and is never refused.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Refuse at once instead of waiting: [`Overloaded`](crate::error::Overloaded)
    /// when the key has no permit free, [`RateLimited`](crate::error::RateLimited)
    /// when its bucket is empty.
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// Checks the limits and builds the layer.
    ///
    /// # Errors
    /// A zero concurrency, rate, period, burst or `max_keys`, or a burst
    /// without a rate, in the default or in any override; a bucket that
    /// takes more than 292 years to refill (`period / rate × burst`); two
    /// overrides for one key; with [`AuthorityKey`], an override's key that
    /// is not an authority.
    pub fn build(self) -> Result<KeyedLimitLayer<F, K>, ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::new(
                "keyed limit max_keys must be at least 1 (a map of 0 keys admits nothing)",
            ));
        }
        let default = self.default.resolve("keyed limit default")?;
        let mut overrides = HashMap::with_capacity(self.overrides.len());
        for (key, limit) in self.overrides {
            let key = (self.check_key)(key)?;
            let resolved = limit.resolve(&format!("keyed limit for {key:?}"))?;
            if overrides.insert(key.clone(), resolved).is_some() {
                return Err(ConfigError::new(format!(
                    "keyed limit for {key:?} given twice: give each key one limit"
                )));
            }
        }
        Ok(KeyedLimitLayer {
            key_fn: self.key_fn,
            keys: Arc::new(Keys::new(default, overrides, self.max_keys, self.fail_fast)),
        })
    }
}

/// Limits concurrency and rate separately for each key of the requests
/// (the host, by default).
///
/// The per-key state is held in an `Arc` inside the layer: every service the
/// layer wraps, and every clone, draws on the same per-key limits.
pub struct KeyedLimitLayer<F = AuthorityKey, K = String> {
    key_fn: F,
    keys: Arc<Keys<K>>,
}

impl KeyedLimitLayer<AuthorityKey, String> {
    /// Limits keyed by the URI authority of an `http::Request`, with
    /// `default` for every host that has no override.
    pub fn builder(default: KeyLimit) -> KeyedLimitBuilder<AuthorityKey, String> {
        KeyedLimitBuilder {
            check_key: |key| AuthorityKey::key_for(&key),
            ..Self::builder_with_key(AuthorityKey, default)
        }
    }
}

impl<F, K> KeyedLimitLayer<F, K> {
    /// Limits keyed by `key_fn` (any [`KeyFn`], such as a closure), with
    /// `default` for every key that has no override.
    pub fn builder_with_key(key_fn: F, default: KeyLimit) -> KeyedLimitBuilder<F, K> {
        KeyedLimitBuilder {
            key_fn,
            default,
            overrides: Vec::new(),
            max_keys: 1024,
            fail_fast: false,
            check_key: Ok,
        }
    }

    /// A live view of the per-key state.
    pub fn handle(&self) -> KeyedLimitHandle<K> {
        KeyedLimitHandle {
            keys: self.keys.clone(),
        }
    }
}

impl<F: Clone, K> Clone for KeyedLimitLayer<F, K> {
    fn clone(&self) -> Self {
        Self {
            key_fn: self.key_fn.clone(),
            keys: self.keys.clone(),
        }
    }
}

impl<F, K> fmt::Debug for KeyedLimitLayer<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimitLayer").finish_non_exhaustive()
    }
}

impl<S, F: Clone, K> Layer<S> for KeyedLimitLayer<F, K> {
    type Service = KeyedLimit<S, F, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedLimit::from_shared(inner, self.key_fn.clone(), self.keys.clone())
    }
}

/// A live view of a keyed limit's per-key state.
pub struct KeyedLimitHandle<K = String> {
    pub(super) keys: Arc<Keys<K>>,
}

impl<K> Clone for KeyedLimitHandle<K> {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedLimitHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimitHandle").finish_non_exhaustive()
    }
}

/// Each look-up takes the key in any form it borrows as (a `&str` for the
/// default `String` keys), as `HashMap::get` does.
impl<K: Hash + Eq + Clone> KeyedLimitHandle<K> {
    /// Keys tracked right now (at most `max_keys`; a key without any limit
    /// is never tracked).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Calls in flight for `key`: past its gate, holding a permit and their
    /// token (0 for an unknown key or one without a concurrency limit).
    /// A call holding a permit while it waits for its token is counted in
    /// [`waiting`](Self::waiting) instead. Past the gate is in the inner
    /// service's hands, not necessarily at the downstream: under an
    /// adaptive limit below (as the adaptive docs advise), calls waiting
    /// there for its permit count here too.
    pub fn in_flight<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.keys.in_flight(key)
    }

    /// Calls waiting at `key`'s gate: for a permit, or for their token
    /// (holding their permit, if the key has a concurrency limit).
    pub fn waiting<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.keys.waiting(key)
    }

    /// Whole tokens in `key`'s bucket (`None` for an unknown key or one without a rate).
    pub fn tokens<Q>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.keys.tokens(key)
    }

    /// The limit `key` gets, whether or not it is tracked yet.
    pub fn max_in_flight<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.keys.max_in_flight(key)
    }
}
