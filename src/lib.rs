//! Bounded fan-out for tower clients.
//!
//! This facade re-exports the parts of the `tower-fanout` workspace behind
//! features, so a user pays only for what they use. See
//! [`tower_fanout_core`] for the layers themselves.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout::concurrency::ConcurrencyLimitLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_fanout::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(ConcurrencyLimitLayer::new(4)?)
//!     .service(service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
//! assert_eq!(svc.oneshot(7).await?, 7);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use tower_fanout_core::{BoxError, error};

#[cfg(feature = "backpressure")]
#[cfg_attr(docsrs, doc(cfg(feature = "backpressure")))]
pub use tower_fanout_core::backpressure;
#[cfg(feature = "concurrency")]
#[cfg_attr(docsrs, doc(cfg(feature = "concurrency")))]
pub use tower_fanout_core::concurrency;
#[cfg(feature = "rate")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate")))]
pub use tower_fanout_core::rate;
