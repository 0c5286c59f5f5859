use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_fanout_core::BoxError;
use tower_fanout_core::error::Overloaded;
use tower_layer::Layer;

use super::RedisConcurrencyLimit;
use super::permit::{Pending, Permit};
use crate::Error;
use crate::fallback::{Fallback, Health};
use crate::key::check_name;
use crate::store::RedisStore;

/// How long a permit outlives a holder that died without releasing it,
/// unless [`RedisConcurrencyLimitBuilder::lease`] says otherwise.
///
/// Live holders renew every third of it, so it only matters when a process
/// crashes: then its permits come back after at most this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How often a waiting caller asks Redis again for a permit, unless
/// [`RedisConcurrencyLimitBuilder::retry_interval`] says otherwise. Each
/// wait is jittered between half and all of it, so that processes do not
/// ask in step.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// The longest lease: with the server's clock (about 1.8e12 ms) added, it
/// stays exact in a Lua double and within what `PEXPIRE` takes.
const MAX_LEASE_MS: u64 = 1_000_000_000_000_000;

/// Configures a [`RedisConcurrencyLimitLayer`]; made by [`RedisConcurrencyLimitLayer::builder`].
#[derive(Debug, Clone)]
pub struct RedisConcurrencyLimitBuilder {
    store: RedisStore,
    name: String,
    limit: usize,
    lease: Duration,
    retry_interval: Duration,
    fail_fast: bool,
    fallback: Option<Fallback>,
}

impl RedisConcurrencyLimitBuilder {
    /// How long a holder's permit lasts without renewal; a permit of a
    /// process that died comes back after at most this long. Defaults to
    /// [`DEFAULT_LEASE`]. Must be at least three times the store's timeout:
    /// renewals start every third of the lease, and one that fails (after
    /// up to a whole timeout) is retried at once, so one failed renewal
    /// still leaves a retry that lands before the lease ends.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often a waiting caller asks Redis again. Defaults to
    /// [`DEFAULT_RETRY_INTERVAL`]. Unused with [`fail_fast`](Self::fail_fast),
    /// which never waits.
    #[must_use]
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Refuse with `tower_fanout_core::error::Overloaded` instead of
    /// waiting when no permit is free.
    ///
    /// `poll_ready` still asks Redis, one round trip during which it is
    /// `Pending`; it is then ready whatever the answer, and the refusal
    /// comes from the response future of the next `call`. Failing open
    /// during an outage, a local permit is taken only if one is free at
    /// once. This is the way to shed with this limit; tower's `LoadShed`
    /// above it sheds every request (see [`RedisConcurrencyLimitLayer`]).
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// When Redis is unreachable, refuse every request with an [`Error`]
    /// whose [`is_unavailable`](Error::is_unavailable) is true.
    ///
    /// Of this and [`fail_open`](Self::fail_open), the last one called wins.
    #[must_use]
    pub fn fail_closed(mut self) -> Self {
        self.fallback = Some(Fallback::Closed);
        self
    }

    /// When Redis is unreachable, go on under a local limit of `share`
    /// (0 < share ≤ 1) of this one (at least 1 call in flight). With `n`
    /// processes sharing the limit, `1 / n` keeps the total within it, as
    /// long as the limit is at least `n` (each process keeps at least 1).
    ///
    /// Of this and [`fail_closed`](Self::fail_closed), the last one called wins.
    #[must_use]
    pub fn fail_open(mut self, share: f64) -> Self {
        self.fallback = Some(Fallback::Open { share });
        self
    }

    /// Checks the settings and builds the layer. Makes no call to Redis.
    ///
    /// # Errors
    /// A zero limit, an empty name or one with `{` or `}`, a lease shorter
    /// than three store timeouts or 1 ms (or absurdly long), a zero retry interval, a fail-open share
    /// outside (0, 1], or no choice between [`fail_closed`](Self::fail_closed)
    /// and [`fail_open`](Self::fail_open).
    pub fn build(self) -> Result<RedisConcurrencyLimitLayer, Error> {
        check_name(&self.name)?;
        if self.limit == 0 {
            return Err(Error::config(
                "concurrency limit must be at least 1 (a limit of 0 admits no call)",
            ));
        }
        let timeout = self.store.timeout();
        if self.lease < timeout.saturating_mul(3) {
            return Err(Error::config(format!(
                "lease {:?} must be at least 3 × the store timeout ({:?}) so renewals land in time; lengthen the lease or shorten the timeout",
                self.lease, timeout
            )));
        }
        // Redis keeps leases in whole milliseconds, and the scripts add them
        // to the server's clock in Lua doubles: a lease under 1 ms would be
        // 0 (the holders' key expired at once, admitting every caller), and
        // one past `MAX_LEASE_MS` breaks `PEXPIRE` (every acquire fails).
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
            return Err(Error::config(format!(
                "lease {:?} must be between 1 ms and {MAX_LEASE_MS} ms",
                self.lease
            )));
        }
        if self.retry_interval.is_zero() {
            return Err(Error::config(
                "retry interval must be longer than zero (a waiting caller would spin on Redis)",
            ));
        }
        let fallback = self.fallback.ok_or_else(Fallback::unset)?.checked()?;
        let local = match fallback {
            Fallback::Closed => None,
            Fallback::Open { share } => {
                // A tokio semaphore holds at most `MAX_PERMITS` (and panics
                // past it): a share of a limit that large is no bound anyway.
                let permits =
                    ((self.limit as f64 * share).floor() as usize).clamp(1, Semaphore::MAX_PERMITS);
                Some(Arc::new(Semaphore::new(permits)))
            }
        };
        let key = self.store.key(&self.name, None, "holders");
        Ok(RedisConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                lease_ms,
                store: self.store,
                name: self.name,
                key,
                limit: self.limit,
                lease: self.lease,
                retry_interval: self.retry_interval,
                fail_fast: self.fail_fast,
                fallback,
                health: Health::default(),
                local,
                holder_prefix: holder_prefix(),
                next_holder: AtomicU64::new(0),
                jitter: RandomState::new(),
            }),
        })
    }
}

/// Limits the calls in flight, summed over every process that uses the
/// same limit name, to one maximum kept on Redis.
///
/// Cloning the layer, or calling [`layer`](Layer::layer) more than once,
/// shares the same permits, as do layers in other processes built with the
/// same name on the same Redis.
///
/// # Not under `LoadShed`
/// Do not put tower's `LoadShed` above this limit, nor anything else that
/// reads a `Pending` from `poll_ready` as overload. A permit is taken in
/// `poll_ready`, and asking Redis for it takes a round trip, so the first
/// poll is always `Pending`, even with every permit free: `LoadShed` then
/// sheds the request (with or without [`fail_fast`](RedisConcurrencyLimitBuilder::fail_fast)),
/// and the acquire it started is still sent, then undone by a release: two
/// round trips for nothing. To shed, use `fail_fast`: the caller gets
/// `tower_fanout_core::error::Overloaded` from its response future after
/// one round trip when no permit is free.
#[derive(Debug, Clone)]
pub struct RedisConcurrencyLimitLayer {
    shared: Arc<Shared>,
}

impl RedisConcurrencyLimitLayer {
    /// Starts the configuration of the limit `name`: at most `limit` calls
    /// in flight, kept in `store`'s Redis.
    pub fn builder(
        store: RedisStore,
        name: impl Into<String>,
        limit: usize,
    ) -> RedisConcurrencyLimitBuilder {
        RedisConcurrencyLimitBuilder {
            store,
            name: name.into(),
            limit,
            lease: DEFAULT_LEASE,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            fail_fast: false,
            fallback: None,
        }
    }
}

impl RedisConcurrencyLimitLayer {
    /// A view of the limit's live state on Redis.
    pub fn handle(&self) -> RedisConcurrencyLimitHandle {
        RedisConcurrencyLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Reads a Redis concurrency limit's live state: each read is one round trip.
#[derive(Debug, Clone)]
pub struct RedisConcurrencyLimitHandle {
    shared: Arc<Shared>,
}

impl RedisConcurrencyLimitHandle {
    /// Permits held now over every process: holders whose lease has not
    /// ended (calls in flight plus ready services not yet called).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn in_flight(&self) -> Result<u64, Error> {
        self.shared.store.in_flight(&self.shared.key).await
    }

    /// The configured maximum.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// How long a permit outlives a holder that died.
    pub fn lease(&self) -> Duration {
        self.shared.lease
    }
}

impl<S> Layer<S> for RedisConcurrencyLimitLayer {
    type Service = RedisConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisConcurrencyLimit::new(inner, self.shared.clone())
    }
}

/// What every service of one layer shares.
pub(super) struct Shared {
    pub(super) store: RedisStore,
    name: String,
    pub(super) key: String,
    pub(super) limit: usize,
    pub(super) lease: Duration,
    pub(super) lease_ms: u64,
    retry_interval: Duration,
    fail_fast: bool,
    fallback: Fallback,
    health: Health,
    local: Option<Arc<Semaphore>>,
    holder_prefix: String,
    next_holder: AtomicU64,
    jitter: RandomState,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("lease", &self.lease)
            .field("fail_fast", &self.fail_fast)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

/// A prefix for holder ids unique to this process and layer, so that two
/// processes never release each other's permits.
fn holder_prefix() -> String {
    let seed = RandomState::new().hash_one((
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    ));
    format!("{}-{seed:016x}", std::process::id())
}

impl Shared {
    pub(super) fn limit_name(&self) -> &str {
        &self.name
    }

    fn next_holder(&self) -> String {
        let n = self.next_holder.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.holder_prefix)
    }

    fn retry_wait(&self) -> Duration {
        let n = self.next_holder.load(Ordering::Relaxed);
        let fraction = (self.jitter.hash_one(n) % 1000) as f64 / 2000.0 + 0.5;
        self.retry_interval.mul_f64(fraction)
    }

    /// Takes a permit: from Redis, or from the local share when Redis is
    /// unavailable and the layer fails open.
    pub(super) async fn acquire(self: Arc<Self>) -> Result<Permit, BoxError> {
        loop {
            match self.ask().await {
                Ok(Ok(permit)) => return Ok(permit),
                Ok(Err(held)) => {
                    if self.fail_fast {
                        tracing::debug!(key = %self.name, in_flight = held, limit = self.limit, "concurrency limit reached; shed");
                        return Err(Overloaded::new().into());
                    }
                    tracing::trace!(key = %self.name, in_flight = held, "waiting for a permit");
                }
                Err(error) => {
                    self.health
                        .failed(&self.name, &self.key, self.fallback, &error);
                    match &self.local {
                        None => return Err(error.into()),
                        Some(local) if self.fail_fast => {
                            return match local.clone().try_acquire_owned() {
                                Ok(permit) => Ok(Permit::Local(permit)),
                                Err(_) => Err(Overloaded::new().into()),
                            };
                        }
                        Some(local) => {
                            if let Some(permit) = self.wait_locally(local).await? {
                                return Ok(permit);
                            }
                            // Redis is back, and full: wait for it there.
                        }
                    }
                }
            }
            tokio::time::sleep(self.retry_wait()).await;
        }
    }

    /// One attempt on Redis: the permit, or the holders counted when full.
    async fn ask(self: &Arc<Self>) -> Result<Result<Permit, u64>, Error> {
        let pending = Pending::new(self.clone(), self.next_holder());
        let sent = tokio::time::Instant::now();
        let decision = self
            .store
            .acquire(&self.key, self.limit, self.lease_ms, pending.holder())
            .await;
        match decision {
            Ok((true, held)) => {
                self.health.reached(&self.name);
                tracing::trace!(key = %self.name, in_flight = held, limit = self.limit, "permit taken");
                Ok(Ok(pending.into_permit(sent)))
            }
            Ok((false, held)) => {
                self.health.reached(&self.name);
                pending.forget();
                Ok(Err(held))
            }
            Err(error) => {
                if error.was_skipped() || error.is_config() {
                    // Nothing was sent: nothing to take back.
                    pending.forget();
                } else {
                    // Dropped armed: if Redis added us before the answer
                    // was lost, the holder is removed (or expires).
                    drop(pending);
                }
                Err(error)
            }
        }
    }

    /// Failing open, waits for a permit of the local share, and asks Redis
    /// again every retry interval meanwhile (the store answers at once
    /// while Redis is known down). A caller that began waiting during an
    /// outage otherwise waited for a local permit after Redis came back,
    /// as long as the local calls lasted, while new callers went to Redis.
    /// `None`: Redis is back, and full.
    async fn wait_locally(
        self: &Arc<Self>,
        local: &Arc<Semaphore>,
    ) -> Result<Option<Permit>, BoxError> {
        // Kept across the attempts on Redis, so the caller keeps its place
        // in the local queue.
        let mut local_wait = std::pin::pin!(local.clone().acquire_owned());
        loop {
            let mut retry = std::pin::pin!(tokio::time::sleep(self.retry_wait()));
            let local_permit = std::future::poll_fn(|cx| {
                if let Poll::Ready(permit) = local_wait.as_mut().poll(cx) {
                    return Poll::Ready(Some(permit));
                }
                retry.as_mut().poll(cx).map(|()| None)
            })
            .await;
            if let Some(permit) = local_permit {
                return match permit {
                    Ok(permit) => Ok(Some(Permit::Local(permit))),
                    Err(_) => Err(Overloaded::new().into()),
                };
            }
            match self.ask().await {
                Ok(Ok(permit)) => return Ok(Some(permit)),
                Ok(Err(_)) => return Ok(None),
                Err(error) => {
                    tracing::trace!(key = %self.name, %error, "redis still unavailable; waiting for a local permit");
                }
            }
        }
    }
}
