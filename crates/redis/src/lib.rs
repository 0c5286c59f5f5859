//! Rate and concurrency limits shared by many processes, kept on Redis.
//!
//! When an agent runtime runs on many machines, a per-process limit
//! multiplies by the number of processes. The layers here keep one limit for
//! all of them on a Redis they share:
//!
//! | layer | bounds | refusal when failing fast |
//! |---|---|---|
//! | [`RedisRateLimitLayer`] | tokens per period (GCRA), with burst, cost and a key per host | `tower_fanout_core::error::RateLimited` |
//! | [`RedisConcurrencyLimitLayer`] | calls in flight (a semaphore with leases) | `tower_fanout_core::error::Overloaded` |
//!
//! Each decision is one Lua script, sent with `EVALSHA` over one
//! multiplexed connection (a [`RedisStore`]) and timed on the Redis
//! server's clock, so the processes' clocks may disagree. Nothing is
//! cached locally: the sum over all processes stays within the limit.
//!
//! Needs Redis 3.2 or later (for `TIME` in scripts); tested on Redis 7.0.
//!
//! # When Redis is unavailable
//! Each layer's builder must be told, with `.fail_closed()` or
//! `.fail_open(share)`:
//! - fail closed: the request fails with [`Error`], whose
//!   [`is_unavailable`](Error::is_unavailable) is true;
//! - fail open: the request goes on under a local limit holding `share` of
//!   the shared one (`tower_fanout_core`'s own layers), and a warning is
//!   logged once per outage, since an operator must act.
//!
//! What is logged above debug, each an event an operator acts on and none
//! on a request's ordinary path: an outage's start (a warning, either way
//! of failing), its end (info), a key of the wrong type in Redis (a
//! warning, once per layer), and a lease lost with no room to take it back
//! (a warning, once per permit that finds it). Everything else is at debug
//! or below.
//!
//! No caller waits on Redis longer than the store's timeout. The store
//! reconnects by itself, and the first decision after Redis comes back
//! uses it again, with no rebuild of the layers. After a call times out the
//! store dials a new connection for the next one, so a connection that went
//! silent without an error (a peer host gone, a NAT or firewall that dropped
//! the flow) costs one probe interval, not the minutes the kernel takes to
//! give up on it. So does an answer of READONLY: after a failover the old
//! primary, now a replica, keeps its clients connected, and the store dials
//! the address again to reach the new primary. If Redis was only frozen or slow, commands sent on the old
//! connection may run after newer ones when it catches up: a concurrency
//! permit whose acquire timed out may then be taken, by nobody, until its
//! lease ends, and a rate decision that timed out may still spend its
//! tokens. Nothing is held longer than that.
//!
//! The limits live in Redis's memory only as long as Redis keeps them: a
//! Redis restarted without persistence starts every bucket full and every
//! semaphore empty, so right after a restart the sum can run over a limit
//! by what was in use before it. (Calls still in flight take their place
//! back at their next lease renewal, if there is room; if not, a warning
//! says the limit is exceeded.) Run Redis with persistence if that matters.
//!
//! # Shedding: `fail_fast`, not `LoadShed`
//! Do not put tower's `LoadShed` above [`RedisConcurrencyLimitLayer`], nor
//! anything else that reads a `Pending` from `poll_ready` as overload: its
//! `poll_ready` asks Redis for a permit, a round trip, so its first poll is
//! always `Pending` and `LoadShed` sheds every request, even with every
//! permit free (and each shed request still costs Redis an acquire and a
//! release). To shed, build the layer with `.fail_fast()`: `poll_ready`
//! waits one round trip, never for a permit to free up, and a request that
//! finds none gets `Overloaded` from its response future.
//! [`RedisRateLimitLayer`]'s `poll_ready` is always ready (its decision is
//! made in the response future), so a `LoadShed` above it never sheds
//! anything; there too `.fail_fast()` (or `.max_wait(d)`) is the way to
//! refuse instead of waiting.
//!
//! # One store per runtime
//! A [`RedisStore`]'s connection is driven by a task on the Tokio runtime
//! of its first call, and a concurrency permit's release is a task spawned
//! on the runtime that drops it. Build one store, and its layers, per
//! runtime, inside it, and use them only there. A store used from another
//! runtime once its first one is gone (a static store shared by
//! `#[tokio::test]`s, each with a runtime of its own; a sync wrapper that
//! makes a runtime per call) finds its connection closed at its next call,
//! which asks again on a new connection, driven by the new runtime. While
//! the first runtime is alive but not driven (a current-thread runtime
//! between two `block_on`s), a call from elsewhere times out instead, once.
//! A release spawned on a runtime that is not driven again (one dropped
//! right after its `block_on`) never runs, so its permit stays taken, for
//! every process, until its lease ends.
//!
//! # Running Redis for limits
//! - **Eviction**: run it with `maxmemory-policy noeviction` (the default),
//!   or without `maxmemory`. Every key a limit writes has a TTL, so under a
//!   `volatile-*` policy they are the only keys Redis may evict when full:
//!   a semaphore evicted as soon as it is written lets every caller in
//!   (a trial measured 24 in flight against a limit of 2), and says
//!   nothing. Under `allkeys-*` an idle limit's keys can go, with the same
//!   effect for the calls in flight.
//! - **A process that dies** holding concurrency permits gives them back
//!   when their leases end: at most the layer's
//!   [`lease`](concurrency::RedisConcurrencyLimitBuilder::lease) later (10 s
//!   by default).
//! - **Idle connections**: a `timeout` in Redis's config (or a proxy's)
//!   closes the store's connection when it is idle; the next decision finds
//!   it closed and is asked again, once, on a new connection.
//! - **Authentication**: `redis://user:password@host/` (or `:password@`).
//!   An ACL user needs, on the keys under the store's
//!   [`key_prefix`](RedisStoreBuilder::key_prefix), `EVALSHA` and `SCRIPT
//!   LOAD` (scripts are loaded on first use and after Redis loses them) and
//!   the commands the scripts call: `+evalsha +script|load +time +get +set
//!   +exists +del +pttl +pexpire +zadd +zrem +zcard +zcount +zscore
//!   +zrangebyscore +zremrangebyscore`. Errors and `Debug` print a URL
//!   without its password.
//! - **Not supported**: TLS (`rediss://` is refused when the store is
//!   built), Redis Cluster redirects (below), renamed `EVALSHA`. A store
//!   that cannot log in or run scripts reports it as "redis limit
//!   unavailable", the reply (`NOAUTH`, `NOPERM`, ...) in its `source()`;
//!   failing open, it runs on the local share with one warning.
//!
//! # Keys
//! Keys look like `tower-fanout:{name}:gcra` or `tower-fanout:{name:host}:gcra`:
//! the braces are a hash tag, so Redis Cluster keeps each limit on one slot.
//! Distinct limits get distinct keys: a `:` or `%` in a layer's name is
//! percent-escaped (the limit `api:v1` is `tower-fanout:{api%3Av1}:gcra`, not
//! the limit `api` for the key `v1`), and so are `{`, `}` and `%` in a
//! per-request key. Names may not contain `{` or `}`.
//! Every key expires once its limit is idle. The store itself talks to one
//! Redis (standalone, a primary, or a cluster proxy): it does not follow
//! Redis Cluster redirects.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisRateLimitLayer, RedisStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_fanout_core::BoxError> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .timeout(Duration::from_millis(100))
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     // 50 calls a second over every process, waiting for tokens...
//!     .layer(
//!         RedisRateLimitLayer::builder(store.clone(), "search", 50, Duration::from_secs(1))
//!             .burst(5)
//!             .fail_closed()
//!             .build()?,
//!     )
//!     // ...and at most 10 in flight, each process alone 2 if Redis is down.
//!     .layer(
//!         RedisConcurrencyLimitLayer::builder(store, "search", 10)
//!             .fail_open(0.2)
//!             .build()?,
//!     )
//!     .service(service_fn(|q: String| async move { Ok::<_, std::convert::Infallible>(q) }));
//!
//! match svc.oneshot("rust".to_owned()).await {
//!     Ok(answer) => println!("{answer}"),
//!     Err(err) if err.downcast_ref::<tower_fanout_redis::Error>().is_some() => {
//!         println!("limit unavailable: {err}");
//!     }
//!     Err(err) => return Err(err),
//! }
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod fallback;
mod future;
mod key;
mod scripts;
mod store;

pub mod concurrency;
pub mod rate;

pub use self::concurrency::{RedisConcurrencyLimit, RedisConcurrencyLimitLayer};
pub use self::error::Error;
pub use self::key::{LimitKey, SingleKey};
pub use self::rate::{RedisRateLimit, RedisRateLimitLayer};
pub use self::store::{
    DEFAULT_KEY_PREFIX, DEFAULT_PROBE_INTERVAL, DEFAULT_TIMEOUT, RedisStore, RedisStoreBuilder,
};
