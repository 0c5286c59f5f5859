//! A concurrency limit shared by every process, kept on Redis.
//!
//! # What it bounds
//! Calls in flight, summed over every process that builds the limit with
//! the same name on the same Redis. The permits are a semaphore with
//! leases: a sorted set of holder ids scored by the moment their lease
//! ends, on the Redis server's clock. Taking a permit is one Lua script
//! that drops the expired holders and adds this one if fewer than the
//! limit remain.
//!
//! # Reservations
//! `poll_ready` takes a permit and keeps it in the service; `call` moves it
//! into the response future, which releases it (one `ZREM`, sent from a
//! task of its own) when it completes or is dropped. A service whose inner
//! `poll_ready` fails releases its permit with the error. A call that lasts
//! renews its lease every third of it (a failed renewal is retried a
//! sixth of the lease after it started). If a process dies without
//! releasing, its permits come back when their leases end: a crashed
//! process never keeps permits for good.
//!
//! Releases are sent from spawned tasks. A process that exits right after
//! its last call may exit before they are sent; its permits then come back
//! when their leases end, as for a crash. Choose the lease with that in
//! mind: it is how long a crashed (or abruptly stopped) process's permits
//! stay taken.
//!
//! # Refusals
//! By default a caller waits, asking Redis again every
//! [`retry_interval`](RedisConcurrencyLimitBuilder::retry_interval) (Redis
//! has no blocking semaphore to wait on; with many waiters, raise it to
//! spare Redis, at the price of later wake-ups). Waiters are not served in
//! the order they came, unlike core's concurrency limit: a freed place goes
//! to whichever caller asks next, so under contention some wait several
//! retry intervals while others go at once (a user trial with a limit of 2
//! and 20 callers saw waits from 0 to about 1.1 s, p99 0.86 s, where core's
//! limit kept every wait near 0.1 s). Where the callers are in one process,
//! put core's concurrency limit above this one to queue them in order. With
//! [`fail_fast`](RedisConcurrencyLimitBuilder::fail_fast) it gets
//! `tower_fanout_core::error::Overloaded` from its response future instead.
//! Either way `poll_ready` is `Pending` for at least one round trip to
//! Redis, so do not put tower's `LoadShed` above this limit: it sheds
//! every request (see [`RedisConcurrencyLimitLayer`]). `fail_fast` is how
//! to shed.
//!
//! # When Redis is unavailable
//! The builder must be told: [`fail_closed`](RedisConcurrencyLimitBuilder::fail_closed)
//! refuses with [`Error`](crate::Error) (`is_unavailable()`);
//! [`fail_open`](RedisConcurrencyLimitBuilder::fail_open) takes a permit
//! from a local semaphore holding a share of the limit, and logs a warning
//! once per outage. A caller waiting for a local permit asks Redis again
//! every retry interval, and takes a permit there once Redis is back.
//! Calls admitted locally during an outage are not
//! counted on Redis when it comes back, so the sum may briefly run over
//! the limit by the local shares.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisStore};
//!
//! # async fn run() -> Result<(), tower_fanout_core::BoxError> {
//! let store = RedisStore::open("redis://127.0.0.1:6379/")?;
//! // At most 20 calls in flight over all processes.
//! let limit = RedisConcurrencyLimitLayer::builder(store, "llm-api", 20)
//!     .lease(Duration::from_secs(5))
//!     .fail_closed()
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|prompt: String| async move { Ok::<_, std::convert::Infallible>(prompt) }));
//! svc.oneshot("hello".to_owned()).await?;
//! # Ok(())
//! # }
//! ```

mod layer;
mod permit;
mod service;

pub use self::layer::{
    DEFAULT_LEASE, DEFAULT_RETRY_INTERVAL, RedisConcurrencyLimitBuilder,
    RedisConcurrencyLimitHandle, RedisConcurrencyLimitLayer,
};
pub use self::service::{RedisConcurrencyLimit, ResponseFuture};
