use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, poll_fn, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_fanout_core::BoxError;
use tower_fanout_core::error::{CostExceedsBurst, RateLimited};
use tower_fanout_core::rate::{RateLimitBuilder, RateLimitLayer, UnitCost};
use tower_layer::Layer;
use tower_service::Service;

use super::RedisRateLimit;
use crate::Error;
use crate::fallback::{Fallback, Health};
use crate::key::{SingleKey, check_name};
use crate::store::{Gcra, RedisStore};

/// Lua numbers are doubles: keep every time the script handles (now, about
/// 1.8e15 µs, plus the bucket's tolerance) below 2^53 µs so it stays exact.
const MAX_TOLERANCE_US: u64 = 1_000_000_000_000_000;

/// How many per-key local buckets a fail-open layer keeps during an outage.
const MAX_LOCAL_KEYS: usize = 1024;

/// Configures a [`RedisRateLimitLayer`]; made by [`RedisRateLimitLayer::builder`].
#[derive(Clone)]
pub struct RedisRateLimitBuilder<C = UnitCost, K = SingleKey> {
    store: RedisStore,
    name: String,
    rate: u32,
    period: Duration,
    burst: Option<u32>,
    cost: C,
    key: K,
    fail_fast: bool,
    max_wait: Option<Duration>,
    fallback: Option<Fallback>,
}

impl<C, K> fmt::Debug for RedisRateLimitBuilder<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitBuilder")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}

impl<C, K> RedisRateLimitBuilder<C, K> {
    /// The most tokens the bucket holds, so the most requests admitted at
    /// once after a quiet spell. Defaults to `rate`.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Charges each request the tokens `cost` returns for it (a closure
    /// `Fn(&Req) -> u32` will do).
    #[must_use]
    pub fn cost<C2>(self, cost: C2) -> RedisRateLimitBuilder<C2, K> {
        RedisRateLimitBuilder {
            store: self.store,
            name: self.name,
            rate: self.rate,
            period: self.period,
            burst: self.burst,
            cost,
            key: self.key,
            fail_fast: self.fail_fast,
            max_wait: self.max_wait,
            fallback: self.fallback,
        }
    }

    /// Gives each key its own limit, with the same settings: say, one limit
    /// per host with `|req: &http::Request<B>| host_of(req)`.
    #[must_use]
    pub fn key_fn<K2>(self, key: K2) -> RedisRateLimitBuilder<C, K2> {
        RedisRateLimitBuilder {
            store: self.store,
            name: self.name,
            rate: self.rate,
            period: self.period,
            burst: self.burst,
            cost: self.cost,
            key,
            fail_fast: self.fail_fast,
            max_wait: self.max_wait,
            fallback: self.fallback,
        }
    }

    /// Refuse with `tower_fanout_core::error::RateLimited` instead of
    /// waiting when the bucket is short. Overrides [`max_wait`](Self::max_wait):
    /// with both set, nothing waits.
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// The longest a caller waits for its tokens on Redis (default: as
    /// long as it takes). One that would wait longer is refused at once with
    /// `tower_fanout_core::error::RateLimited` and the wait, and books
    /// nothing. Set it no longer than the timeout above the limiter, so a
    /// caller that would not see its wait through is told at once, with the
    /// wait, instead of timing out. (One that books and then gives up gives
    /// its booking up: back to the bucket, or to the next caller that would
    /// wait longer; see the [module docs](super).) `Duration::ZERO` is
    /// [`fail_fast`](Self::fail_fast).
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// When Redis is unreachable, refuse every request with an [`Error`]
    /// whose [`is_unavailable`](Error::is_unavailable) is true. Of this and
    /// [`fail_open`](Self::fail_open), the last one called wins.
    #[must_use]
    pub fn fail_closed(mut self) -> Self {
        self.fallback = Some(Fallback::Closed);
        self
    }

    /// When Redis is unreachable (of this and [`fail_closed`](Self::fail_closed),
    /// the last one called wins), go on under a local limit of `share`
    /// (0 < share ≤ 1) of this one: `rate × share` per period, with a burst
    /// of `burst × share` (at least 1). With `n` processes sharing the
    /// limit, `1 / n` keeps the total near the limit during an outage: each
    /// local burst is at least 1 (so more than `burst` processes can
    /// together exceed it), and each local bucket starts the outage full,
    /// so just after Redis spent the shared burst the total can reach about
    /// twice it.
    /// A waiting request costing more than that local burst takes its cost
    /// in turns at the local rate; failing fast, it is refused with
    /// `CostExceedsBurst` until Redis is back.
    #[must_use]
    pub fn fail_open(mut self, share: f64) -> Self {
        self.fallback = Some(Fallback::Open { share });
        self
    }

    /// Checks the settings and builds the layer. Makes no call to Redis.
    ///
    /// # Errors
    /// A zero rate, period or burst; an empty name or one with `{` or `}`;
    /// a period so long that the bucket's times overflow; a fail-open share
    /// outside (0, 1] or too small for the local period to fit a `Duration`;
    /// or no choice between [`fail_closed`](Self::fail_closed)
    /// and [`fail_open`](Self::fail_open).
    pub fn build(self) -> Result<RedisRateLimitLayer<C, K>, Error> {
        check_name(&self.name)?;
        if self.rate == 0 {
            return Err(Error::config(
                "rate limit rate must be at least 1 token per period",
            ));
        }
        if self.period.is_zero() {
            return Err(Error::config("rate limit period must be longer than zero"));
        }
        let burst = self.burst.unwrap_or(self.rate);
        if burst == 0 {
            return Err(Error::config(
                "rate limit burst must be at least 1 token (a bucket of 0 admits nothing)",
            ));
        }
        let fallback = self.fallback.ok_or_else(Fallback::unset)?.checked()?;
        // Whole microseconds, rounded up: rounding only makes the limit stricter.
        let period_us = u64::try_from(self.period.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX);
        let interval_us = period_us.div_ceil(u64::from(self.rate)).max(1);
        if interval_us.saturating_mul(u64::from(burst)) > MAX_TOLERANCE_US {
            return Err(Error::config(
                "rate limit period × burst / rate is longer than 30 years; shorten the period or lower the burst",
            ));
        }
        let local = match fallback {
            Fallback::Closed => None,
            Fallback::Open { share } => Some(LocalRates::new(
                self.rate,
                self.period,
                burst,
                share,
                self.fail_fast,
            )?),
        };
        Ok(RedisRateLimitLayer {
            shared: Arc::new(Shared {
                single_key: self.store.key(&self.name, None, "gcra"),
                store: self.store,
                name: self.name,
                interval_us,
                burst,
                fail_fast: self.fail_fast,
                // The script books no wait longer than this (µs); 0 books
                // none (fail fast), and "as long as it takes" is the 30
                // years no wait can exceed.
                max_wait_us: if self.fail_fast {
                    0
                } else {
                    self.max_wait.map_or(MAX_TOLERANCE_US, |w| {
                        u64::try_from(w.as_micros())
                            .unwrap_or(u64::MAX)
                            .min(MAX_TOLERANCE_US)
                    })
                },
                fallback,
                health: Health::default(),
                local,
            }),
            cost: self.cost,
            key: self.key,
        })
    }
}

/// Admits requests at `rate` tokens per `period`, with bursts of up to
/// `burst`, counted on Redis for every process that uses the same limit
/// name.
///
/// Cloning the layer, or calling [`layer`](Layer::layer) more than once,
/// shares one limit, as do layers in other processes built with the same
/// name, settings and Redis.
#[derive(Clone)]
pub struct RedisRateLimitLayer<C = UnitCost, K = SingleKey> {
    shared: Arc<Shared>,
    cost: C,
    key: K,
}

impl<C, K> fmt::Debug for RedisRateLimitLayer<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimitLayer {
    /// Starts the configuration of the limit `name`: `rate` tokens per
    /// `period`, kept in `store`'s Redis.
    ///
    /// Every process that builds a layer with the same `name` (on the same
    /// Redis and key prefix) shares one limit; give them the same settings.
    pub fn builder(
        store: RedisStore,
        name: impl Into<String>,
        rate: u32,
        period: Duration,
    ) -> RedisRateLimitBuilder {
        RedisRateLimitBuilder {
            store,
            name: name.into(),
            rate,
            period,
            burst: None,
            cost: UnitCost,
            key: SingleKey,
            fail_fast: false,
            max_wait: None,
            fallback: None,
        }
    }
}

impl<C, K> RedisRateLimitLayer<C, K> {
    /// A view of the limit's live state on Redis.
    pub fn handle(&self) -> RedisRateLimitHandle {
        RedisRateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Reads a Redis rate limit's live state: each read is one round trip.
#[derive(Debug, Clone)]
pub struct RedisRateLimitHandle {
    shared: Arc<Shared>,
}

impl RedisRateLimitHandle {
    /// Whole tokens in the layer's single limit now (for a layer with a
    /// [`key_fn`](RedisRateLimitBuilder::key_fn), see [`tokens_for`](Self::tokens_for)).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn tokens(&self) -> Result<u64, Error> {
        self.read_tokens(None).await
    }

    /// Whole tokens in the limit of `key` now.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn tokens_for(&self, key: &str) -> Result<u64, Error> {
        self.read_tokens(Some(key)).await
    }

    async fn read_tokens(&self, key: Option<&str>) -> Result<u64, Error> {
        let shared = &self.shared;
        shared
            .store
            .tokens(&shared.redis_key(key), shared.interval_us, shared.burst)
            .await
    }

    /// The most tokens a bucket holds.
    pub fn burst(&self) -> u32 {
        self.shared.burst
    }

    /// The time it takes to refill one token (whole microseconds, rounded up).
    pub fn refill_interval(&self) -> Duration {
        Duration::from_micros(self.shared.interval_us)
    }
}

impl<S, C: Clone, K: Clone> Layer<S> for RedisRateLimitLayer<C, K> {
    type Service = RedisRateLimit<S, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit::new(
            inner,
            self.shared.clone(),
            self.cost.clone(),
            self.key.clone(),
        )
    }
}

/// What every service of one layer shares.
pub(super) struct Shared {
    store: RedisStore,
    name: String,
    /// The Redis key of the bucket when the key function gives none (the
    /// usual case), built once.
    single_key: String,
    interval_us: u64,
    burst: u32,
    fail_fast: bool,
    /// The longest wait a caller books, in µs (0 when failing fast).
    max_wait_us: u64,
    fallback: Fallback,
    health: Health,
    local: Option<LocalRates>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("interval_us", &self.interval_us)
            .field("burst", &self.burst)
            .field("fail_fast", &self.fail_fast)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn redis_key(&self, key: Option<&str>) -> Cow<'_, str> {
        match key {
            None => Cow::Borrowed(&self.single_key),
            Some(key) => Cow::Owned(self.store.key(&self.name, Some(key), "gcra")),
        }
    }

    /// Decides whether a request of `cost` tokens, counted against `key`,
    /// may go ahead: waits for the tokens, or refuses. The tokens taken on
    /// Redis come with their booking, armed: dropped before the caller
    /// [`spends`](Booking::spend) it (the request was never made: the caller
    /// left, or the inner service failed before the call), they are given
    /// back. Tokens of the local fallback have none.
    pub(super) async fn admit(
        self: Arc<Self>,
        key: Option<String>,
        cost: u32,
    ) -> Result<Option<Booking>, BoxError> {
        if cost == 0 {
            return Ok(None);
        }
        if cost > self.burst {
            tracing::debug!(key = %self.name, cost, burst = self.burst, "request costs more than the burst");
            return Err(CostExceedsBurst::new(cost, self.burst).into());
        }
        let redis_key = self.redis_key(key.as_deref());
        let decision = self
            .store
            .gcra(
                &redis_key,
                self.interval_us,
                self.burst,
                cost,
                self.max_wait_us,
            )
            .await;
        match decision {
            Ok(Gcra::Admitted { wait, tat }) => {
                self.health.reached(&self.name);
                let booking = Booking {
                    store: self.store.clone(),
                    key: redis_key.into_owned(),
                    tat,
                    weight_us: self.interval_us.saturating_mul(u64::from(cost)),
                    interval_us: self.interval_us,
                    armed: true,
                };
                if !wait.is_zero() {
                    tracing::debug!(
                        key = %booking.key,
                        cost,
                        wait_ms = wait.as_millis() as u64,
                        "rate limited; waiting for tokens"
                    );
                    // Dropped while waiting: the tokens are given up.
                    tokio::time::sleep(wait).await;
                }
                Ok(Some(booking))
            }
            Ok(Gcra::Refused { retry_after }) => {
                self.health.reached(&self.name);
                tracing::debug!(
                    key = %redis_key,
                    cost,
                    retry_after_ms = retry_after.as_millis() as u64,
                    "rate limited; refused"
                );
                Err(RateLimited::new(retry_after).into())
            }
            Err(error) => {
                self.health
                    .failed(&self.name, &redis_key, self.fallback, &error);
                match &self.local {
                    Some(local) => local.admit(key, cost).await.map(|()| None),
                    None => Err(error.into()),
                }
            }
        }
    }
}

/// Tokens booked on Redis for one request; if the request is never made
/// (its caller goes away while it waits for them or for the inner service,
/// or the inner service fails first), they are given up: back to the bucket
/// if nobody booked after them, else to the next caller that would wait
/// longer (see `scripts::GCRA_GIVE_BACK`).
pub(super) struct Booking {
    store: RedisStore,
    key: String,
    tat: String,
    weight_us: u64,
    interval_us: u64,
    armed: bool,
}

impl Booking {
    /// The request is made: its tokens are spent.
    pub(super) fn spend(mut self) {
        self.armed = false;
    }
}

impl Drop for Booking {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Without a runtime the booking stays: that only errs strict.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let key = std::mem::take(&mut self.key);
            let tat = std::mem::take(&mut self.tat);
            let (weight_us, interval_us) = (self.weight_us, self.interval_us);
            runtime.spawn(async move {
                if let Err(error) = store
                    .gcra_give_back(&key, &tat, weight_us, interval_us)
                    .await
                {
                    tracing::debug!(%error, "could not give back a dropped booking");
                }
            });
        }
    }
}

type LocalCost = fn(&u32) -> u32;

fn cost_of(cost: &u32) -> u32 {
    *cost
}

/// The fail-open fallback: `tower_fanout_core`'s own rate limit, at the
/// configured share, one bucket per key.
struct LocalRates {
    /// Builds one bucket: the template's, and one per key.
    builder: RateLimitBuilder<LocalCost>,
    template: RateLimitLayer<LocalCost>,
    by_key: Mutex<HashMap<String, RateLimitLayer<LocalCost>>>,
    /// The local bucket's burst: `burst × share`, at least 1.
    burst: u32,
    fail_fast: bool,
}

impl LocalRates {
    fn new(
        rate: u32,
        period: Duration,
        burst: u32,
        share: f64,
        fail_fast: bool,
    ) -> Result<Self, Error> {
        // The share scales the period, not the rate, so that a share of a
        // small rate stays exact (3 per second at 1/4 is 3 per 4 seconds).
        // `Duration::div_f64` panics on overflow: a tiny share is a config error.
        let period = Duration::try_from_secs_f64(period.as_secs_f64() / share).map_err(|_| {
            Error::config(format!(
                "fail-open share {share} is too small: the local limit's period ({period:?} / share) does not fit a Duration"
            ))
        })?;
        let burst = ((f64::from(burst) * share).floor() as u32).max(1);
        let builder = RateLimitLayer::builder(rate, period)
            .burst(burst)
            .cost(cost_of as LocalCost);
        let builder = if fail_fast {
            builder.fail_fast()
        } else {
            builder
        };
        Ok(Self {
            template: Self::build(&builder)?,
            builder,
            by_key: Mutex::new(HashMap::new()),
            burst,
            fail_fast,
        })
    }

    fn build(builder: &RateLimitBuilder<LocalCost>) -> Result<RateLimitLayer<LocalCost>, Error> {
        builder
            .clone()
            .build()
            .map_err(|err| Error::config(format!("fail-open local limit: {err}")))
    }

    fn bucket(&self, key: String) -> Result<RateLimitLayer<LocalCost>, Error> {
        let mut by_key = self
            .by_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(layer) = by_key.get(&key) {
            return Ok(layer.clone());
        }
        if by_key.len() >= MAX_LOCAL_KEYS {
            // Memory stays bounded. Only full buckets are forgotten: a
            // forgotten key starts with a full bucket, which for those is
            // what they hold anyway. Clearing them all gave every key a
            // fresh burst each time the map filled, so with more keys in
            // rotation no key's local rate was bounded.
            let burst = self.burst;
            by_key.retain(|_, layer| layer.handle().tokens() < burst);
            if by_key.len() >= MAX_LOCAL_KEYS {
                // All still refilling: this key shares the template's
                // bucket (stricter, never looser) until room is made.
                return Ok(self.template.clone());
            }
        }
        let layer = Self::build(&self.builder)?;
        by_key.insert(key, layer.clone());
        Ok(layer)
    }

    async fn admit(&self, key: Option<String>, cost: u32) -> Result<(), BoxError> {
        let layer = match key {
            None => self.template.clone(),
            Some(key) => self.bucket(key)?,
        };
        // The shared limit admits a cost up to its burst; the local bucket
        // holds only `burst × share`. A waiting caller takes a larger cost in
        // turns of at most the local burst, so it goes ahead at the local
        // rate instead of failing with `CostExceedsBurst` all outage long.
        // (Failing fast, it cannot wait for the later turns: refused.)
        let mut left = cost;
        while left > 0 {
            let turn = if self.fail_fast {
                left
            } else {
                left.min(self.burst)
            };
            let mut svc = layer.clone().layer(Admit);
            poll_fn(|cx| svc.poll_ready(cx)).await?;
            svc.call(turn).await?;
            left -= turn;
        }
        Ok(())
    }
}

/// The service the local fallback limits: admits at once.
#[derive(Debug, Clone, Copy)]
struct Admit;

impl Service<u32> for Admit {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A full map of per-key fail-open buckets forgets only full ones: a
    /// spent key stays spent when new keys keep arriving. Clearing the map
    /// gave every key a fresh burst each time it filled.
    #[tokio::test(start_paused = true)]
    async fn a_full_local_map_keeps_the_buckets_still_refilling() {
        let local = LocalRates::new(1, Duration::from_secs(10), 2, 1.0, true).unwrap();
        let key = |n: usize| Some(format!("k{n}"));
        local.admit(key(0), 2).await.unwrap();
        assert!(local.admit(key(0), 1).await.is_err(), "spent");
        for n in 1..MAX_LOCAL_KEYS {
            local.admit(key(n), 1).await.unwrap();
        }
        // The map is full of buckets still refilling; a new key shares the
        // template's bucket instead of wiping them.
        local.admit(key(MAX_LOCAL_KEYS), 1).await.unwrap();
        let err = local.admit(key(0), 1).await.unwrap_err();
        assert!(err.is::<RateLimited>(), "{err}");
        // Once the buckets are full again, they give way.
        tokio::time::advance(Duration::from_secs(20)).await;
        local.admit(key(MAX_LOCAL_KEYS + 1), 1).await.unwrap();
        assert!(local.by_key.lock().unwrap().len() < MAX_LOCAL_KEYS);
    }
}
