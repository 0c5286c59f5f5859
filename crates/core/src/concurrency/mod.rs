//! A concurrency limit: at most N calls in flight, shared by every clone.
//!
//! # What it bounds
//! The number of requests between `call` and the moment their response
//! future completes (or is dropped). It is the first bound an agent runtime
//! needs: it keeps sockets, file descriptors and buffered responses in
//! proportion to N, whatever the batch size, as long as a response is read
//! inside the limit. An HTTP client's response future completes when the
//! headers arrive: a body (a gRPC stream, a download) read after that holds
//! no permit, and its connection stays busy meanwhile. Read the body under
//! the limit (collect it in an `and_then` between this layer and the
//! client, as `tower-fanout-http`'s client does) to bound those too.
//!
//! # Sharing
//! One limit is held in an `Arc` inside the layer: every service the layer
//! wraps, and every clone of those services, draws on the same permits.
//! (tower's `ConcurrencyLimitLayer` makes a new semaphore per `layer()` call;
//! this one behaves like tower's `GlobalConcurrencyLimitLayer`.)
//!
//! # Where it goes
//! Innermost, right above the client, so that waits in outer layers (rate
//! limits, retries sleeping on `Retry-After`) hold no permit.
//!
//! # Reservations
//! `poll_ready` takes a permit and keeps it in the service; `call` moves it
//! into the response future, which returns it when it completes or is
//! dropped. A ready service that is never called holds its permit until it
//! is dropped, so do not park ready services. Waiters are served in FIFO order.
//! A service whose inner `poll_ready` fails gives its permit back with the
//! error.
//!
//! # Refusals
//! By default callers wait in `poll_ready`. With
//! [`fail_fast`](ConcurrencyLimitLayer::fail_fast), a caller that finds no
//! free permit gets an [`Overloaded`](crate::error::Overloaded) error from
//! its response future instead.
//!
//! # Example
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_fanout_core::BoxError> {
//! let limit = ConcurrencyLimitLayer::new(8)?;
//! let handle = limit.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) }));
//!
//! let answer = svc.clone().oneshot(21).await?;
//! assert_eq!(answer, 42);
//! assert_eq!(handle.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

mod layer;
mod service;

pub use self::layer::{ConcurrencyLimitHandle, ConcurrencyLimitLayer};
pub use self::service::ConcurrencyLimit;
pub use crate::semaphore::Permit;

/// The response future of [`ConcurrencyLimit`]: it holds the call's [`Permit`].
pub type ResponseFuture<F> = crate::future::ResponseFuture<F, Permit>;
