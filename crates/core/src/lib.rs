//! Tower layers that bound the fan-out of client calls.
//!
//! An agent runtime that must make hundreds of calls at once needs bounds:
//! on the calls in flight, on the calls per second, and on the requests held
//! in memory. Each bound here is a tower [`Layer`](tower_layer::Layer) that
//! stacks with `ServiceBuilder` over any `Service` (a hyper-util client,
//! tonic, or a plain `service_fn`):
//!
//! | layer | bounds | refusal when failing fast |
//! |---|---|---|
//! | [`concurrency::ConcurrencyLimitLayer`] | calls in flight, shared by every clone | [`error::Overloaded`] |
//! | [`rate::RateLimitLayer`] | tokens per period, with burst and cost per request | [`error::RateLimited`] |
//! | [`backpressure::BackpressureLayer`] | queued requests, drained by N workers | [`error::QueueFull`] |
//! | `adaptive::AdaptiveLimitLayer` | calls in flight, the limit moved by what responses say ([`classify`]-ed) | [`error::Overloaded`] |
//! | `keyed::KeyedLimitLayer` | concurrency and rate per key (per host by default) | per-key refusals |
//!
//! and `fan_out::fan_out` runs a whole batch through any of them with a
//! bounded window, progress, and per-item results (features `adaptive`,
//! `keyed` and `fan-out`; all on by default).
//!
//! Every layer waits by default and fails fast when asked. `poll_ready`
//! reserves capacity, `call` consumes it, and dropping a ready service or
//! an unfinished response future gives it back. Each layer has a handle that
//! reads its live state with atomic loads (the keyed layer's handle finds a
//! key in its map under the map's lock).
//!
//! Errors follow tower: services return [`BoxError`], and a refusal is a
//! small type from [`error`] to downcast.
//!
//! # With tower's own layers
//! The concurrency, rate, backpressure and adaptive limits wait in
//! `poll_ready`, as tower's own limits do, and tower's `Timeout` times only
//! the response future: to bound a wait for capacity, put the timeout
//! around the whole call (`tokio::time::timeout` over `oneshot`), or a
//! `Buffer` between the `Timeout` and the limit, or shed with the layer's
//! own `fail_fast` (tower's `LoadShed` sheds too, but over a rate limit the
//! token booked for the shed call stays with the service: see
//! the rate module's "Callers that give up"). The keyed limit waits in its
//! response future, which `Timeout` does time. A caller that gives up
//! leaves the queue of waiters either way.
//!
//! tower's `Buffer` above a limit readies its one inner service ahead of
//! the next request, and keeps it ready: a permit it took for a caller that
//! then left its queue stays taken, with nothing in flight, until another
//! request comes through that `Buffer`, and callers of the same limit from
//! elsewhere wait for it. (tower's own concurrency limit does the same.)
//! Put the `Buffer` below the limits, or use [`backpressure`]'s queue.
//!
//! # Recommended order
//! Outermost first: backpressure (bounded memory), rate limit (waits hold
//! nothing downstream), concurrency limit (a permit only while the call
//! really runs), then the client.
//!
#![cfg_attr(
    all(feature = "backpressure", feature = "rate", feature = "concurrency"),
    doc = r#"
```
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::{
    backpressure::BackpressureLayer, concurrency::ConcurrencyLimitLayer, rate::RateLimitLayer,
};

# #[tokio::main(flavor = "current_thread", start_paused = true)]
# async fn main() -> Result<(), tower_fanout_core::BoxError> {
let client = service_fn(|url: String| async move {
    Ok::<_, std::convert::Infallible>(format!("fetched {url}"))
});
let svc = ServiceBuilder::new()
    .layer(BackpressureLayer::new(8)?)
    .layer(RateLimitLayer::builder(50, Duration::from_secs(1)).burst(10).build()?)
    .layer(ConcurrencyLimitLayer::new(8)?)
    .service(client);

let mut calls = Vec::new();
for i in 0..20 {
    calls.push(tokio::spawn(svc.clone().oneshot(format!("https://example.com/{i}"))));
}
for call in calls {
    assert!(call.await?.is_ok());
}
# Ok(())
# }
```
"#
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The table above links every layer; with some features off, some links
// have no target (docs.rs builds with all of them).
#![cfg_attr(
    not(all(
        feature = "backpressure",
        feature = "rate",
        feature = "concurrency",
        feature = "adaptive"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

/// The error type of every service in this crate, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub mod error;

#[cfg(any(feature = "adaptive", feature = "keyed"))]
mod wait;
#[cfg(any(feature = "adaptive", feature = "keyed"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "adaptive", feature = "keyed"))))]
pub use self::wait::DeliberateWait;

#[cfg(feature = "keyed")]
mod deadline;
#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub use self::deadline::Deadline;

#[cfg(any(feature = "rate", feature = "adaptive"))]
mod clock;
#[cfg(any(feature = "concurrency", feature = "rate"))]
mod future;
#[cfg(any(
    feature = "concurrency",
    feature = "backpressure",
    feature = "adaptive"
))]
mod semaphore;
#[cfg(any(feature = "rate", feature = "adaptive"))]
mod sleep;
#[cfg(any(
    feature = "concurrency",
    feature = "backpressure",
    feature = "adaptive"
))]
mod sync;

#[cfg(feature = "adaptive")]
#[cfg_attr(docsrs, doc(cfg(feature = "adaptive")))]
pub mod adaptive;
#[cfg(feature = "backpressure")]
#[cfg_attr(docsrs, doc(cfg(feature = "backpressure")))]
pub mod backpressure;
#[cfg(feature = "adaptive")]
#[cfg_attr(docsrs, doc(cfg(feature = "adaptive")))]
pub mod classify;
#[cfg(feature = "concurrency")]
#[cfg_attr(docsrs, doc(cfg(feature = "concurrency")))]
pub mod concurrency;
#[cfg(feature = "fan-out")]
#[cfg_attr(docsrs, doc(cfg(feature = "fan-out")))]
pub mod fan_out;
#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub mod keyed;
#[cfg(feature = "rate")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate")))]
pub mod rate;
