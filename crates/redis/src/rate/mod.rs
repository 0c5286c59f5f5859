//! A token-bucket rate limit shared by every process, kept on Redis.
//!
//! # What it bounds
//! Tokens per unit of time, summed over every process that builds the
//! limit with the same name on the same Redis: over any interval of length
//! `t`, at most `burst + rate × t / period` tokens are admitted. The state
//! is GCRA's theoretical arrival time, one key per limit, updated by one Lua
//! script per decision on the Redis server's clock (`TIME`), so the
//! processes' clocks may disagree. Times are whole microseconds, the
//! refill interval rounded up, so rounding only makes the limit stricter.
//! The key expires when the bucket is full again.
//!
//! # Cost and keys
//! [`cost`](RedisRateLimitBuilder::cost) charges a request several tokens;
//! a request costing more than the burst fails at once with
//! `tower_fanout_core::error::CostExceedsBurst`. [`key_fn`](RedisRateLimitBuilder::key_fn)
//! gives each key (say, each host) its own limit with the same settings.
//! A waiting caller books its whole cost in one decision, so the limit
//! never runs ahead of its bound.
//!
//! # Refusals
//! By default a caller waits: the script books its tokens and says when
//! they are there, and the response future sleeps until then. Dropping it
//! gives the booking up, as core's rate limit does: back to the bucket when
//! nobody booked after it; otherwise its slot is set aside on Redis for the
//! next caller, of any process, that would wait longer, and its tokens go
//! back once the bookings behind it have gone. So callers that time out in
//! a queue do not leave the shared bucket booked ahead for the time their
//! slots would have taken. [`max_wait`](RedisRateLimitBuilder::max_wait)
//! refuses at once, with the wait, a caller that would wait longer. With [`fail_fast`](RedisRateLimitBuilder::fail_fast)
//! a request that finds the bucket short fails with
//! `tower_fanout_core::error::RateLimited`, which carries the wait after
//! which it would have been admitted.
//!
//! # When Redis is unavailable
//! The builder must be told: [`fail_closed`](RedisRateLimitBuilder::fail_closed)
//! refuses with [`Error`](crate::Error) (`is_unavailable()`);
//! [`fail_open`](RedisRateLimitBuilder::fail_open) goes on under
//! `tower_fanout_core`'s local rate limit at a share of this one, and logs
//! a warning once per outage. Either way no caller waits on Redis longer
//! than the store's timeout, and the next decision after Redis comes back
//! uses it again.
//!
//! # The inner service
//! The decision needs the request, so it is made in the response future:
//! `poll_ready` is always ready, and each call drives a clone of the inner
//! service (which must be `Clone`, as hyper-util's client is) to readiness
//! once its tokens are there. A caller waiting for tokens holds nothing of
//! the inner service.
//!
//! # Sharing
//! Every service the layer wraps, every clone, and every layer in any
//! process built with the same name on the same Redis shares the limit.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_redis::{RedisRateLimitLayer, RedisStore};
//!
//! # async fn run() -> Result<(), tower_fanout_core::BoxError> {
//! let store = RedisStore::open("redis://127.0.0.1:6379/")?;
//! // 100 calls a second over all processes, 10 at once, one limit per host.
//! let limit = RedisRateLimitLayer::builder(store, "search-api", 100, Duration::from_secs(1))
//!     .burst(10)
//!     .key_fn(|url: &String| url.split('/').nth(2).unwrap_or_default().to_owned())
//!     .fail_open(0.25) // four processes: each may do a quarter alone
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|url: String| async move { Ok::<_, std::convert::Infallible>(url) }));
//! svc.oneshot("https://example.com/a".to_owned()).await?;
//! # Ok(())
//! # }
//! ```

mod layer;
mod service;

pub use self::layer::{RedisRateLimitBuilder, RedisRateLimitHandle, RedisRateLimitLayer};
pub use self::service::RedisRateLimit;
pub use crate::future::ResponseFuture;
/// How many tokens a request costs: the same trait as the local rate limit's.
pub use tower_fanout_core::rate::{Cost, UnitCost};
