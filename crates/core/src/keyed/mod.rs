//! Per-key limits: concurrency and rate separately for each host (or any key).
//!
//! # What it bounds
//! Each key (by default the URI authority of an `http::Request`, so each
//! host) gets its own concurrency limit and token bucket: `api.github.com`
//! can be held to 3 calls in flight while `api.stripe.com` gets 5 and every
//! other host the default. Use it when one client calls many APIs, each with
//! its own published limits, and one slow API must not starve the others.
//!
//! # Keys
//! A key comes from the request through a [`KeyFn`]: [`AuthorityKey`] by
//! default, or any closure `Fn(&Req) -> K`. A request whose URI has no
//! authority (a tonic client built without `with_origin` sends
//! `/pkg.Service/Method`) has the key `""` under [`AuthorityKey`]: all such
//! requests share one key's limit and no host override applies; key them
//! with a closure, on `uri().path()` say. Keys without an override get the
//! default [`KeyLimit`]. The per-key state lives in a map bounded by
//! [`max_keys`](KeyedLimitBuilder::max_keys): when it is full, the least
//! recently used *idle* keys are forgotten (no call waiting or in flight,
//! their buckets full again), an eighth of the map at a time, so the map
//! cannot grow without end, a stream of new keys does not scan it for each
//! one, and forgetting a key never loosens its limit. If every key is busy,
//! the call fails with [`TooManyKeys`]. A key without any limit (no concurrency, no rate: the
//! default [`KeyLimit::new`], or such an override) has nothing to keep, so
//! it is not tracked: it takes no room in the map and is never refused.
//!
//! # Where it goes
//! The key is known only with the request, so `poll_ready` is always ready
//! and the response future does the waiting: for the key's permit first,
//! then its token, then the inner service's readiness (on a clone of it, so
//! the inner service must be `Clone`, as a hyper client is), then the call.
//! A call waiting on its key reserves nothing in the inner service: a global
//! limit placed inside is taken only by calls their key has admitted.
//!
//! Only a call holding the key's permit books a token, so a call goes out
//! as its token arrives: the key's rate bounds what reaches the downstream,
//! even when permits free together (calls that booked tokens apart and then
//! queued for permits would go out together). A call waiting for its token
//! holds its permit (the handle counts it as waiting, not in flight); that
//! costs no throughput, as any call that could take the permit would need a
//! token of the same bucket first. A limit placed inside can still hold
//! admitted calls back, and those go out together when it frees. A call
//! that gives up while it waits for its token leaves the token as the rate
//! limit's callers do (see [`rate`](crate::rate), "Callers that give up").
//!
//! # Refusals
//! Waiting is the default. With [`fail_fast`](KeyedLimitBuilder::fail_fast)
//! a key with no permit free answers [`Overloaded`](crate::error::Overloaded)
//! and an empty bucket answers [`RateLimited`](crate::error::RateLimited).
//! A request that carries a [`Deadline`](crate::Deadline) does not wait for
//! a token due at or past it: it answers `RateLimited` with the wait at once
//! (read by [`AuthorityKey`]; a closure's keys carry none, see
//! [`KeyFn::deadline`]).
//!
//! # Sharing
//! The map is held in an `Arc` inside the layer: every service the layer
//! wraps, and every clone, shares the per-key limits.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_fanout_core::BoxError> {
//! let limits = KeyedLimitLayer::builder(KeyLimit::new().concurrency(8))
//!     .limit_for("api.github.com", KeyLimit::new().concurrency(3))
//!     .limit_for("api.stripe.com", KeyLimit::new().concurrency(5).rate(25, Duration::from_secs(1)))
//!     .max_keys(256)
//!     .build()?;
//! let handle = limits.handle();
//! let svc = ServiceBuilder::new().layer(limits).service(service_fn(
//!     |req: http::Request<()>| async move { Ok::<_, std::convert::Infallible>(req.uri().to_string()) },
//! ));
//!
//! let req = http::Request::get("https://api.github.com/repos").body(())?;
//! svc.clone().oneshot(req).await?;
//! assert_eq!(handle.max_in_flight("api.github.com"), Some(3));
//! assert_eq!(handle.max_in_flight("example.com"), Some(8));
//! assert_eq!(handle.in_flight("api.github.com"), 0);
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod map;
mod service;

use std::fmt;

pub use self::future::ResponseFuture;
pub use self::layer::{
    AuthorityKey, KeyFn, KeyLimit, KeyedLimitBuilder, KeyedLimitHandle, KeyedLimitLayer,
};
pub use self::service::KeyedLimit;

/// Every tracked key was busy when a new key arrived, so none could be
/// forgotten to make room for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyKeys {
    max_keys: usize,
}

impl TooManyKeys {
    /// Creates the error for a map of `max_keys` keys.
    pub const fn new(max_keys: usize) -> Self {
        Self { max_keys }
    }

    /// The map's bound.
    pub const fn max_keys(&self) -> usize {
        self.max_keys
    }
}

impl fmt::Display for TooManyKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keyed limit: all {} keys are busy, none can be forgotten; raise max_keys or bound the calls in flight",
            self.max_keys
        )
    }
}

impl std::error::Error for TooManyKeys {}
