//! The connection to the Redis that holds the limits, and the scripts that change them.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::Error;
use crate::scripts;

/// How long a call to Redis may take before the limit counts Redis as
/// unavailable, unless [`RedisStoreBuilder::timeout`] says otherwise.
///
/// Loopback and same-zone round trips take well under a millisecond; a
/// quarter of a second is long enough to ride out a slow moment and short
/// enough that no caller hangs noticeably when Redis is gone.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed call, how long the store answers "unavailable" at once
/// instead of asking Redis again, unless [`RedisStoreBuilder::probe_interval`]
/// says otherwise.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The prefix of every key this crate writes, unless
/// [`RedisStoreBuilder::key_prefix`] says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "tower-fanout:";

/// A connection to the Redis that holds the shared limits.
///
/// One multiplexed connection carries every decision of every layer built
/// on this store (and on its clones), so many tasks share one socket and
/// each decision costs one round trip. The connection is opened on first
/// use and reopened by itself after Redis goes away and comes back. After a
/// call times out, the next call dials a new connection: one that went
/// silent (a peer host gone without a word, a NAT or firewall that dropped
/// the flow) is replaced within a probe interval. So is one that Redis
/// answers READONLY: a primary demoted to replica in a failover keeps its
/// clients connected, and the store dials the address again to reach the
/// new primary (behind a DNS name or endpoint that follows it).
///
/// Every call to Redis is bounded by the store's [timeout](RedisStoreBuilder::timeout).
/// After a failed call, the store does not ask Redis again for a
/// [probe interval](RedisStoreBuilder::probe_interval): decisions in between
/// go straight to each layer's fallback (fail closed or fail open), so an
/// outage costs callers no waiting. After the interval one decision asks
/// Redis again while the others still fall back, so a Redis that is still
/// down costs that one caller a timeout, not every caller at once. An error
/// about one key only (`WRONGTYPE`: another program's value where a limit
/// keeps its state) fails that limit's decisions, not the others'.
///
/// The connection's driver runs on the Tokio runtime (with IO and time
/// enabled) of the first decision, so keep a store (and its clones) within
/// one runtime.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection calls use now; `None` until the first call, which
    /// must run inside the runtime the connection's driver will run on.
    connection: RwLock<Option<Connection>>,
    timeout: Duration,
    probe_interval: Duration,
    prefix: String,
    epoch: Instant,
    /// Nanoseconds since `epoch` until which Redis is not asked (0: ask).
    skip_until: AtomicU64,
}

/// Whether a request to Redis is asked again, once, on a new connection
/// when its connection turns out closed: only those that are safe to run
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    IfDropped,
    Never,
}

/// One connection (a lazy, self-reconnecting manager) and its generation:
/// 0 for the first, one more for each replacement.
struct Connection {
    generation: u64,
    manager: ConnectionManager,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.inner.timeout)
            .field("probe_interval", &self.inner.probe_interval)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisStore`]; made by [`RedisStore::builder`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    timeout: Duration,
    probe_interval: Duration,
    prefix: String,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redacted(&self.url))
            .field("timeout", &self.timeout)
            .field("probe_interval", &self.probe_interval)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Where `url`'s passwords are (byte ranges): the one after `user:` in the
/// userinfo, and a `pass=` or `password=` query value (redis-rs reads one
/// there for Unix sockets). Errors and `Debug` print URLs, which end up in
/// logs: [`redacted`] leaves these out, and so does the build error's copy
/// of redis-rs's message.
fn passwords(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let (before_query, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    if let Some(start) = before_query.find("://").map(|i| i + 3) {
        let rest = &before_query[start..];
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some(colon) = userinfo.find(':')
        {
            found.push(start + colon + 1..start + userinfo.len());
        }
    }
    if let Some(query) = query {
        let mut at = before_query.len() + 1;
        for pair in query.split('&') {
            if let Some((name, _)) = pair.split_once('=')
                && (name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password"))
            {
                found.push(at + name.len() + 1..at + pair.len());
            }
            at += pair.len() + 1;
        }
    }
    found
}

/// `url` with each of its [`passwords`] replaced by `***`.
fn redacted(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    for password in passwords(url) {
        out.push_str(&url[copied..password.start]);
        out.push_str("***");
        copied = password.end;
    }
    out.push_str(&url[copied..]);
    out
}

impl RedisStoreBuilder {
    /// The longest a single call to Redis may take; past it the decision
    /// counts as "Redis unavailable" and the layer's fallback decides.
    /// Defaults to [`DEFAULT_TIMEOUT`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failed call, how long to answer "unavailable" without asking
    /// Redis; then one caller asks again (the probe) while the others keep
    /// answering "unavailable" until it has its answer. Defaults to
    /// [`DEFAULT_PROBE_INTERVAL`]; zero asks every time.
    #[must_use]
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// The prefix of every key written (say, one per application sharing a
    /// Redis). Defaults to [`DEFAULT_KEY_PREFIX`].
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks the settings and builds the store. No connection is made yet.
    ///
    /// # Errors
    /// A URL that `redis` cannot parse, a zero timeout, or a key prefix
    /// with `{` or `}` (they would break the hash tags that keep each
    /// limit on one Redis Cluster slot).
    pub fn build(self) -> Result<RedisStore, Error> {
        let client = redis::Client::open(self.url.as_str()).map_err(|err| {
            // Without the passwords: configuration errors end up in logs.
            let mut message = err.to_string();
            for password in passwords(&self.url) {
                let password = &self.url[password];
                if !password.is_empty() {
                    message = message.replace(password, "***");
                }
            }
            Error::config(format!(
                "redis url {:?} is not valid: {message}",
                redacted(&self.url)
            ))
        })?;
        if self.timeout.is_zero() {
            return Err(Error::config(
                "redis timeout must be longer than zero (it bounds how long a caller waits for Redis)",
            ));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(Error::config(format!(
                "redis key prefix {:?} must not contain '{{' or '}}': they are reserved for the hash tag",
                self.prefix
            )));
        }
        // Reconnects are retried briefly and then left to the next call:
        // callers never wait on a long backoff, and a Redis that comes back
        // is picked up by the next decision.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(self.timeout);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                config,
                connection: RwLock::new(None),
                timeout: self.timeout,
                probe_interval: self.probe_interval,
                prefix: self.prefix,
                epoch: Instant::now(),
                skip_until: AtomicU64::new(0),
            }),
        })
    }
}

impl RedisStore {
    /// A store for the Redis at `url` (`redis://host:port/db`), with the
    /// default timeout. No connection is made until the first decision.
    ///
    /// # Errors
    /// A URL that cannot be parsed.
    pub fn open(url: &str) -> Result<Self, Error> {
        Self::builder(url).build()
    }

    /// Starts the configuration of a store for the Redis at `url`.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    /// The longest a single call to Redis may take.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The Redis key for the limit `name` (and `sub`, a per-host key), with
    /// the whole limit name in a hash tag so that Redis Cluster keeps it on
    /// one slot.
    ///
    /// One-to-one: the name's `:` and `%` are percent-escaped, so the first
    /// `:` in the tag ends the name (the limit `a:b` is not the limit `a`
    /// for the key `b`); the key's `{`, `}` and `%` are escaped, so a brace
    /// cannot end the hash tag early. (Names refuse braces at build.)
    pub(crate) fn key(&self, name: &str, sub: Option<&str>, kind: &str) -> String {
        let prefix = &self.inner.prefix;
        let name = escape(name, &[':']);
        match sub {
            None => format!("{prefix}{{{name}}}:{kind}"),
            Some(sub) => format!("{prefix}{{{name}:{}}}:{kind}", escape(sub, &['{', '}'])),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The connection to use, and its generation (for [`replace`](Self::replace)).
    fn connection(&self) -> Result<(u64, ConnectionManager), Error> {
        // A poisoned lock holds a whole `Option<Connection>` all the same:
        // nothing panics between its reads and writes.
        if let Some(current) = &*self
            .inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Ok((current.generation, current.manager.clone()));
        }
        let mut slot = self
            .inner
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let current = match slot.take() {
            Some(current) => current,
            None => Connection {
                generation: 0,
                manager: self.new_manager()?,
            },
        };
        let answer = (current.generation, current.manager.clone());
        *slot = Some(current);
        Ok(answer)
    }

    /// A manager that connects (and reconnects after I/O errors) on its
    /// own, from its first use, inside the runtime of the call that makes it.
    fn new_manager(&self) -> Result<ConnectionManager, Error> {
        ConnectionManager::new_lazy_with_config(
            self.inner.client.clone(),
            self.inner.config.clone(),
        )
        .map_err(Error::redis)
    }

    /// Called after a call on the connection of `generation` timed out, or
    /// was answered READONLY by a primary demoted to replica (which keeps
    /// its clients connected; a write there never succeeds): replaces that
    /// connection with a fresh lazy one, so the next call
    /// dials anew. redis-rs reconnects only after an I/O error, and a
    /// connection that went silent (a peer host gone without FIN or RST, a
    /// NAT or firewall that dropped the flow) gives none until the kernel
    /// gives up on it, many minutes later; without this every probe would
    /// time out on it until then.
    ///
    /// Only the current generation is replaced: calls that time out
    /// together on one connection replace it once, and a call that started
    /// on an older connection never replaces a newer one. The old
    /// connection closes when the last call still on it ends (within the
    /// timeout).
    ///
    /// The price, when Redis was only slow or frozen: commands sent on the
    /// old connection may run after commands sent on the new one. The harm
    /// is bounded, script by script (see `scripts`):
    /// - `GCRA` of a timed-out decision books tokens nobody uses, as it
    ///   would without a new connection; they come back as the bucket
    ///   refills. Its give-back is sent only after its answer, so it never
    ///   overtakes it; one whose TAT a late booking moved is declined (the
    ///   strict side).
    /// - `ACQUIRE` of a timed-out attempt (or of a renewal taking its place
    ///   back) may run after the release its caller then sent on the new
    ///   connection: the holder is added with nobody to renew or release
    ///   it, and takes one place until its lease ends (the next `ACQUIRE`
    ///   drops it then; an idle key expires by itself). Never longer: no
    ///   leak; each such holder costs one place for one lease at most.
    /// - `RENEW` run late finds a released holder gone and adds nothing
    ///   (`ZADD XX` after `ZSCORE`); otherwise it sets the lease end from
    ///   its own run time, as an in-order renewal would.
    /// - A late `ZREM` (release) removes only its own holder id, which no
    ///   live call uses: each attempt has an id of its own, and a released
    ///   permit's renewals are stopped first.
    /// - `TOKENS` and `IN_FLIGHT` only read.
    ///
    /// Each connection matches its own replies, so no answer is misread.
    fn replace(&self, generation: u64, reason: &'static str) {
        let mut slot = self
            .inner
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if slot
            .as_ref()
            .is_none_or(|current| current.generation != generation)
        {
            return;
        }
        let Ok(manager) = self.new_manager() else {
            // Only a bad config fails here, and the first manager was made
            // with the same one: keep the old connection.
            return;
        };
        let old = slot.replace(Connection {
            generation: generation.wrapping_add(1),
            manager,
        });
        drop(slot);
        tracing::debug!(
            generation,
            reason,
            "the next redis call dials a new connection"
        );
        drop(old);
    }

    /// The generation of the connection in use, if any.
    #[cfg(test)]
    fn generation(&self) -> Option<u64> {
        self.inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|current| current.generation)
    }

    /// Whether a decision may ask Redis: always while Redis answers; after a
    /// failure, not until the probe interval has passed, and then only the
    /// one caller that claims the probe. The others go on skipping until
    /// that probe has its answer (which can take the whole timeout), so a
    /// Redis that is still down costs one caller a timeout, not every
    /// caller that arrives once the interval is over.
    fn claim_probe(&self) -> bool {
        let skip_until = self.inner.skip_until.load(Ordering::Relaxed);
        if skip_until == 0 {
            return true;
        }
        let now = self.now();
        if now < skip_until {
            return false;
        }
        // The claim lapses by itself if the probing caller is dropped.
        let probe_for = self.inner.probe_interval.saturating_add(self.inner.timeout);
        let claim = now
            .saturating_add(u64::try_from(probe_for.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        self.inner
            .skip_until
            .compare_exchange(skip_until, claim, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Runs one request against Redis within the timeout. `probe` requests
    /// respect the skip window after a failure; background clean-ups
    /// (releases) do not, since nobody waits for them.
    async fn run<T, F, Fut>(&self, probe: bool, again: Again, request: F) -> Result<T, Error>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        // Checked before the probe is claimed: a call that cannot run would
        // hold the claim, and keep every caller from Redis, until it lapsed.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "no Tokio runtime: redis limits run on a Tokio runtime with IO and time enabled",
            ));
        }
        if probe && !self.claim_probe() {
            return Err(Error::skipped());
        }
        let (generation, connection) = self.connection()?;
        let ask = async {
            match request(connection.clone()).await {
                // Redis (or a proxy before it) closes connections left idle
                // past its `timeout`, a routine close that the manager meets
                // at its next command and then dials again for: no outage
                // to fail the calls behind this one for. The command went
                // nowhere, or its answer went with the connection: asked
                // again, once.
                Err(err) if again == Again::IfDropped && err.is_connection_dropped() => {
                    tracing::debug!(error = %err, "redis connection closed; asking again");
                    request(connection).await
                }
                answer => answer,
            }
        };
        // Whether Redis answered in a way that says it can decide for other
        // keys: a success, or an error about this call's own key.
        let (result, answered) = match tokio::time::timeout(self.inner.timeout, ask).await {
            Ok(Ok(value)) => (Ok(value), true),
            Ok(Err(err)) => {
                let code = crate::error::reply_code(&err);
                if code == Some("READONLY") {
                    // A primary demoted to replica keeps its clients'
                    // connections, and redis-rs reconnects only after
                    // an I/O error: dial again, to whatever node the
                    // address leads to now (the new primary, after a
                    // failover behind a DNS name or an endpoint).
                    self.replace(generation, "redis answered READONLY (a replica)");
                }
                let about_the_key = code == Some("WRONGTYPE");
                (Err(Error::redis(err)), about_the_key)
            }
            Err(elapsed) => {
                self.replace(generation, "redis call timed out");
                (Err(Error::timeout(elapsed)), false)
            }
        };
        if answered {
            // An error about one key (another program's value there) says
            // nothing about the other limits on this store: they keep asking.
            self.inner.skip_until.store(0, Ordering::Relaxed);
        } else if !self.inner.probe_interval.is_zero() {
            let probe_interval =
                u64::try_from(self.inner.probe_interval.as_nanos()).unwrap_or(u64::MAX);
            self.inner.skip_until.store(
                self.now().saturating_add(probe_interval).max(1),
                Ordering::Relaxed,
            );
        }
        result
    }

    /// Runs one of the crate's scripts through [`run`](Self::run).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        probe: bool,
        again: Again,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        self.run(probe, again, |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    /// One GCRA decision (see `scripts::GCRA`).
    pub(crate) async fn gcra(
        &self,
        key: &str,
        interval_us: u64,
        burst: u32,
        cost: u32,
        max_wait_us: u64,
    ) -> Result<Gcra, Error> {
        let (admitted, wait_us, tat): (i64, i64, String) = self
            .invoke(
                true,
                // A decision made twice books twice: fewer admissions, never more.
                Again::IfDropped,
                GCRA.key(key)
                    .key(given_up_key(key))
                    .arg(interval_us)
                    .arg(burst)
                    .arg(cost)
                    .arg(max_wait_us),
            )
            .await?;
        let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        match admitted {
            1 => Ok(Gcra::Admitted { wait, tat }),
            0 => Ok(Gcra::Refused { retry_after: wait }),
            other => Err(Error::reply(format!(
                "gcra script returned {other}, expected 0 or 1"
            ))),
        }
    }

    /// Gives up the booking that ended the bucket at `tat` (see
    /// `scripts::GCRA_GIVE_BACK`): pulled back if it is the latest, kept
    /// aside for a caller that would wait longer if not.
    pub(crate) async fn gcra_give_back(
        &self,
        key: &str,
        tat: &str,
        weight_us: u64,
        interval_us: u64,
    ) -> Result<(), Error> {
        self.invoke::<i64>(
            false,
            // Given back twice, the tokens would be twice: more admissions.
            Again::Never,
            GCRA_GIVE_BACK
                .key(key)
                .key(given_up_key(key))
                .arg(tat)
                .arg(weight_us)
                .arg(interval_us),
        )
        .await
        .map(drop)
    }

    /// Tries to add `holder` to the semaphore at `key`; returns whether it
    /// was added, and the holders counted.
    pub(crate) async fn acquire(
        &self,
        key: &str,
        limit: usize,
        lease_ms: u64,
        holder: &str,
    ) -> Result<(bool, u64), Error> {
        let (acquired, held): (i64, i64) = self
            .invoke(
                true,
                Again::IfDropped,
                ACQUIRE.key(key).arg(limit).arg(lease_ms).arg(holder),
            )
            .await?;
        Ok((acquired == 1, u64::try_from(held).unwrap_or(0)))
    }

    /// Extends `holder`'s lease; false when the lease was already lost.
    pub(crate) async fn renew(
        &self,
        key: &str,
        lease_ms: u64,
        holder: &str,
    ) -> Result<bool, Error> {
        let renewed: i64 = self
            .invoke(
                false,
                Again::IfDropped,
                RENEW.key(key).arg(lease_ms).arg(holder),
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Whole tokens in the bucket at `key` now.
    pub(crate) async fn tokens(
        &self,
        key: &str,
        interval_us: u64,
        burst: u32,
    ) -> Result<u64, Error> {
        let tokens: i64 = self
            .invoke(
                true,
                Again::IfDropped,
                TOKENS.key(key).arg(interval_us).arg(burst),
            )
            .await?;
        Ok(u64::try_from(tokens).unwrap_or(0))
    }

    /// Holders of the semaphore at `key` whose lease has not ended.
    pub(crate) async fn in_flight(&self, key: &str) -> Result<u64, Error> {
        let held: i64 = self
            .invoke(true, Again::IfDropped, &IN_FLIGHT.key(key))
            .await?;
        Ok(u64::try_from(held).unwrap_or(0))
    }

    /// Removes `holder` from the semaphore at `key`.
    pub(crate) async fn release(&self, key: &str, holder: &str) -> Result<(), Error> {
        self.run(false, Again::IfDropped, |mut connection| async move {
            redis::cmd("ZREM")
                .arg(key)
                .arg(holder)
                .query_async::<i64>(&mut connection)
                .await
        })
        .await
        .map(drop)
    }
}

/// Percent-escapes `%` and the `special` characters (all ASCII), one-to-one.
fn escape<'a>(part: &'a str, special: &[char]) -> std::borrow::Cow<'a, str> {
    let escaped = |c: char| c == '%' || special.contains(&c);
    if !part.contains(escaped) {
        return std::borrow::Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        if escaped(c) {
            // Writing to a String cannot fail.
            let _ = fmt::Write::write_fmt(&mut out, format_args!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The answer of one GCRA decision.
#[derive(Debug)]
pub(crate) enum Gcra {
    /// The tokens are booked; they are there after `wait` (zero: now).
    /// `tat` is the bucket's state after the booking, to undo it.
    Admitted { wait: Duration, tat: String },
    /// Fail fast: the tokens are not there; they would be after `retry_after`.
    Refused { retry_after: Duration },
}

// `Script` sends EVALSHA and, when Redis answers NOSCRIPT (first use, or
// after a restart or SCRIPT FLUSH), loads the script and sends it again.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::GCRA));
static GCRA_GIVE_BACK: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(scripts::GCRA_GIVE_BACK));
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::ACQUIRE));
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::RENEW));
static TOKENS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::TOKENS));
static IN_FLIGHT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(scripts::IN_FLIGHT));

/// The key of a rate limit bucket's given-up bookings: the bucket's name
/// and so its hash tag (the same Cluster slot), and a suffix of its own.
fn given_up_key(bucket: &str) -> String {
    format!("{bucket}:given-up")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_carry_a_hash_tag() {
        let store = RedisStore::open("redis://127.0.0.1:1/").unwrap();
        assert_eq!(store.key("api", None, "gcra"), "tower-fanout:{api}:gcra");
        assert_eq!(
            store.key("api", Some("h{o}st"), "gcra"),
            "tower-fanout:{api:h%7Bo%7Dst}:gcra"
        );
        // A name's ':' and '%' are escaped: "a:b" is not "a" keyed "b".
        assert_eq!(store.key("a:b", None, "gcra"), "tower-fanout:{a%3Ab}:gcra");
        assert_eq!(store.key("a", Some("b"), "gcra"), "tower-fanout:{a:b}:gcra");
        assert_eq!(
            store.key("a%3Ab", Some("c:d%"), "gcra"),
            "tower-fanout:{a%253Ab:c:d%25}:gcra"
        );
    }

    #[tokio::test]
    async fn calls_timing_out_together_replace_their_connection_once() {
        // The requests never touch the connection: no Redis is needed, and
        // the lazy managers never dial.
        let store = RedisStore::builder("redis://127.0.0.1:1/")
            .timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let stall = |store: RedisStore| async move {
            store
                .run(false, Again::Never, |_| {
                    std::future::pending::<redis::RedisResult<()>>()
                })
                .await
        };
        assert_eq!(store.generation(), None);
        let callers: Vec<_> = (0..16)
            .map(|_| tokio::spawn(stall(store.clone())))
            .collect();
        for caller in callers {
            assert!(caller.await.unwrap().unwrap_err().is_timeout());
        }
        assert_eq!(store.generation(), Some(1), "16 timeouts on one connection");
        assert!(stall(store.clone()).await.unwrap_err().is_timeout());
        assert_eq!(store.generation(), Some(2));
        // A call that started on an older connection leaves the newer one be.
        store.replace(1, "test");
        store.replace(0, "test");
        assert_eq!(store.generation(), Some(2));
    }

    /// After a failed call Redis is not asked for exactly the probe
    /// interval; then one caller claims the probe, and the others skip
    /// until it has its answer or its claim lapses (interval + timeout).
    #[tokio::test(start_paused = true)]
    async fn after_a_failure_one_probe_is_claimed_when_the_interval_ends() {
        let (timeout, interval) = (Duration::from_millis(50), Duration::from_millis(200));
        let store = RedisStore::builder("redis://127.0.0.1:1/")
            .timeout(timeout)
            .probe_interval(interval)
            .build()
            .unwrap();
        let failed = store
            .run(true, Again::Never, |_| {
                std::future::pending::<redis::RedisResult<()>>()
            })
            .await;
        assert!(failed.unwrap_err().is_timeout());
        tokio::time::advance(interval - Duration::from_nanos(1)).await;
        assert!(!store.claim_probe(), "1 ns before the interval ends");
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(store.claim_probe(), "when the interval ends");
        assert!(
            !store.claim_probe(),
            "a second caller, while the probe runs"
        );
        tokio::time::advance(interval + timeout - Duration::from_nanos(1)).await;
        assert!(!store.claim_probe(), "1 ns before the claim lapses");
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(
            store.claim_probe(),
            "the claim lapsed: the probe's caller was dropped"
        );
    }

    /// A URL's password stayed in the build error's message and in the
    /// builder's `Debug`, which end up in logs. Found by a user trial.
    #[test]
    fn a_bad_urls_password_is_not_printed() {
        for url in [
            "redis://:hunter2@127.0.0.1:99999/",
            "redis://app:hunter2@127.0.0.1:6379/notadb",
            "rediss://app:hunter2@127.0.0.1:6379/",
            "redis+unix:///tmp/redis.sock?db=x&pass=hunter2",
        ] {
            let builder = RedisStore::builder(url);
            let debug = format!("{builder:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            if let Err(err) = builder.build() {
                let (display, debug) = (err.to_string(), format!("{err:?}"));
                assert!(err.is_config(), "{display}");
                assert!(!display.contains("hunter2"), "{display}");
                assert!(!debug.contains("hunter2"), "{debug}");
                assert!(display.contains("***"), "{display}");
            }
        }
        assert_eq!(
            redacted("redis://user:pw@host:1/0?pass=x&db=2"),
            "redis://user:***@host:1/0?pass=***&db=2"
        );
        assert_eq!(redacted("redis://host/"), "redis://host/");
        assert_eq!(redacted("redis://user@host/"), "redis://user@host/");
    }

    #[test]
    fn bad_settings_fail_at_build() {
        assert!(RedisStore::open("not a url").unwrap_err().is_config());
        let err = RedisStore::builder("redis://127.0.0.1/")
            .timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.is_config());
        assert!(err.to_string().contains("timeout"));
        assert!(
            RedisStore::builder("redis://127.0.0.1/")
                .key_prefix("a{b")
                .build()
                .unwrap_err()
                .is_config()
        );
    }
}
