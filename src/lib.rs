//! Bounded fan-out for tower clients.
//!
//! This facade re-exports the parts of the `tower-fanout` workspace behind
//! features, so a user pays only for what they use. See
//! [`tower_fanout_core`] for the layers themselves.
//!
//! # Features
//!
//! | feature | module | default |
//! |---|---|---|
//! | `concurrency` | `concurrency`: `ConcurrencyLimitLayer` | yes |
//! | `rate` | `rate`: `RateLimitLayer` | yes |
//! | `backpressure` | `backpressure`: `BackpressureLayer` | yes |
//! | `adaptive` | `adaptive`, `classify`: `AdaptiveLimitLayer` and its controllers; `DeliberateWait` (also with `keyed`) | yes |
//! | `keyed` | `keyed`: `KeyedLimitLayer`, `KeyLimit` (turns on `concurrency` and `rate` in the core crate) | yes |
//! | `fan-out` | `fan_out`: the batch API | yes |
//! | `http` | `http`: the HTTP client preset (`tower-fanout-http`) | no |
//! | `native-roots` | with `http`: `ClientBuilder::native_roots(true)`, to trust the system's certificate store instead of the bundled Mozilla roots (the feature alone changes nothing) | no |
//! | `redis` | `redis`: limits shared through Redis (`tower-fanout-redis`) | no |
//! | `sim` | `sim`: the simulated downstream (`tower-fanout-sim`) | no |
//! | `full` | all of the above but `native-roots` | no |
//!
//! `BoxError` and `error` (the refusals and `ConfigError`) are always there.
//!
#![cfg_attr(
    feature = "concurrency",
    doc = r#"
```
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout::concurrency::ConcurrencyLimitLayer;

# #[tokio::main(flavor = "current_thread")]
# async fn main() -> Result<(), tower_fanout::BoxError> {
let svc = ServiceBuilder::new()
    .layer(ConcurrencyLimitLayer::new(4)?)
    .service(service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
assert_eq!(svc.oneshot(7).await?, 7);
# Ok(())
# }
```
"#
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use tower_fanout_core::{BoxError, error};

#[cfg(any(feature = "adaptive", feature = "keyed"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "adaptive", feature = "keyed"))))]
pub use tower_fanout_core::DeliberateWait;
#[cfg(feature = "backpressure")]
#[cfg_attr(docsrs, doc(cfg(feature = "backpressure")))]
pub use tower_fanout_core::backpressure;
#[cfg(feature = "concurrency")]
#[cfg_attr(docsrs, doc(cfg(feature = "concurrency")))]
pub use tower_fanout_core::concurrency;
#[cfg(feature = "fan-out")]
#[cfg_attr(docsrs, doc(cfg(feature = "fan-out")))]
pub use tower_fanout_core::fan_out;
#[cfg(feature = "rate")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate")))]
pub use tower_fanout_core::rate;
#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub use tower_fanout_core::{Deadline, keyed};
#[cfg(feature = "adaptive")]
#[cfg_attr(docsrs, doc(cfg(feature = "adaptive")))]
pub use tower_fanout_core::{adaptive, classify};
/// The HTTP client preset: per-host limits, Retry-After, rate-limit headers, address guard.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use tower_fanout_http as http;
/// Limits shared by many processes through Redis.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tower_fanout_redis as redis;
/// The simulated downstream used by the tests, the demo and the benches.
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub use tower_fanout_sim as sim;
