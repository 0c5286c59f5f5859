//! A backpressure queue: a bounded queue drained by a fixed pool of workers.
//!
//! # What it bounds
//! Both the calls in flight (one per worker) and the calls waiting (the
//! queue's bound, 3 × workers unless set). Producers that find the queue full
//! wait in `poll_ready`, so a batch of any size holds at most
//! `workers + queue` requests in memory at once.
//!
//! # When to choose it
//! When many producers (agent tool calls, a crawler's link extractor) feed
//! one downstream and you want the work done by a fixed pool, with memory
//! flat and a clear "full" signal, rather than every producer holding its own
//! future. For a single batch, a [`ConcurrencyLimit`](crate::concurrency)
//! is lighter.
//!
//! # Sharing
//! Each `layer()` call builds one queue and one pool, shared by every clone
//! of the service it returns. (A queue holds one service's requests, so two
//! different inner services cannot share one; clone the service instead.)
//! The workers are spawned on the current Tokio runtime at the first
//! `poll_ready`, and stop once every clone is dropped and the queue is drained.
//! If that runtime shuts down first, the requests still queued are answered
//! with [`Closed`](crate::error::Closed), and `poll_ready` fails with it from
//! then on: keep a service within the runtime that started it.
//!
//! # Reservations
//! `poll_ready` reserves a queue slot; `call` fills it; a worker frees it when
//! it takes the request. A caller that drops its response future while the
//! request is still queued removes it: it is never executed. A caller that
//! drops it while running cancels the inner call: its worker drops the
//! call's future the next time it runs, a moment later, on its own task.
//! A limit above the queue gives its permit back as the caller leaves, so
//! for that moment the service below can see one more call than that limit
//! allows (2 calls under a concurrency limit of 1 in 25 of 300 rounds of a
//! trial on two threads). Put the queue outermost, as the crate's
//! recommended order does, and the limits below it see only the workers.
//!
//! # Failures
//! An inner service that fails or panics answers that request with its error
//! (or [`ServicePanicked`](crate::error::ServicePanicked)); the worker takes a
//! fresh clone of the service and goes on. Unlike tower's `Buffer`, one bad
//! request never closes the queue for everybody else.
//!
//! # Refusals
//! By default callers wait for a slot. With
//! [`fail_fast`](BackpressureLayer::fail_fast), a caller that finds the queue
//! full gets [`QueueFull`](crate::error::QueueFull) at once.
//!
//! # Example
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_core::backpressure::BackpressureLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_fanout_core::BoxError> {
//! // 4 workers, 12 queued at most.
//! let svc = ServiceBuilder::new()
//!     .layer(BackpressureLayer::new(4)?)
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n + 1) }));
//! let handle = svc.handle();
//!
//! assert_eq!(svc.clone().oneshot(1).await?, 2);
//! assert_eq!(handle.queue_capacity(), 12);
//! assert_eq!(handle.queue_depth(), 0);
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod message;
mod service;
mod worker;

pub use self::future::ResponseFuture;
pub use self::layer::BackpressureLayer;
pub use self::service::{Backpressure, BackpressureHandle};
