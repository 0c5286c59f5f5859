//! A token-bucket rate limit: `rate` tokens per `period`, at most `burst` at once.
//!
//! # What it bounds
//! Calls per unit of time, whatever the concurrency: over any interval of
//! length `t`, requests of unit cost are admitted at most
//! `burst + rate × t / period` times. There are no fixed windows, so no
//! double burst at a window's edge. Use it for a downstream that publishes
//! "N requests per minute" or bills per call.
//!
//! # Cost
//! A request can cost more than one token: pass a closure from the request
//! to its cost with [`RateLimitBuilder::cost`] (say, the number of records
//! in a batch call, or an LLM request's token estimate). A request whose
//! cost is larger than the burst can never be admitted and fails at once
//! with [`CostExceedsBurst`](crate::error::CostExceedsBurst).
//!
//! Callers book tokens in `poll_ready`, before the request is known: one,
//! or, for a caller that has to wait, the cost the layer's calls repeat
//! (while their costs vary, one). A call whose cost is not what it booked
//! gives back what it does not use, or gives its booking up and books its
//! whole cost in one stretch; when those tokens are not there yet, the call
//! waits for them in its response future before the inner service sees the
//! request, so the bound holds for any cost and however many services were
//! ready together; it holds nothing below meanwhile (the inner service
//! readied for it is dropped, and a clone readied once the tokens are
//! there). A booking given up goes back to the bucket when nothing
//! was booked behind it (a lone caller's); under contention its slots may
//! go unused, which errs on the strict side: 20 callers of cost 2 get the
//! whole rate once the cost has shown, callers of costs 1 to 4 in turn
//! about 0.7 of it. For that wait the response future takes a clone of the
//! inner service, which is why the rate limit's inner service must be
//! `Clone` (tower's hyper clients and stacks of tower layers are). A fail-fast limiter checks the full cost in
//! `call` and refuses with the exact wait instead.
//!
//! # Callers that give up
//! A caller that leaves before its call (a timeout above the limit, a
//! dropped future or service) gives up the tokens it booked. The latest
//! booking goes straight back to the bucket. One with later bookings
//! behind it cannot (they were placed after it), so its slot goes to the
//! next caller that would otherwise wait longer, and its tokens go back
//! once the bookings behind it are gone too. So a batch of callers that
//! time out while queued does not leave the bucket spent for the time their
//! slots would have taken. A slot whose time has passed is taken by nobody:
//! used late it could bunch with later calls past the burst.
//!
//! A booking is the service's, not the caller's: a service that outlives
//! the caller that made it wait keeps it, and spends it on its next call,
//! however late. tower's `Buffer` above the limit keeps its one service for
//! good (its callers leave its queue, not the service), and tower's
//! `LoadShed` above it sheds when `poll_ready` says wait, after the booking
//! is made: over a window, such a late booking can let one call more
//! through than the bound (a randomised trial: 2 calls 243 ms apart at one
//! per 250 ms). Put those layers below the limit, or shed with
//! [`fail_fast`](RateLimitBuilder::fail_fast).
//!
//! # Sharing
//! The bucket is held in an `Arc` inside the layer: every service the layer
//! wraps, and every clone, draws on the same tokens.
//!
//! # Runtime
//! A wait for a token sleeps on a tokio timer, made on the runtime that
//! polls the wait, so a service can move from one runtime to another. A
//! limit that has to wait outside a Tokio runtime (or in one built without
//! `enable_time`) panics there, as tokio's timers do; one that never waits
//! (a fail-fast limit) needs no runtime. The bucket reads tokio's clock,
//! so on a paused clock time is the paused clock's.
//!
//! # Where it goes
//! Outside the concurrency limit, so that a caller waiting for a token holds
//! no concurrency permit.
//!
//! The bound is on admissions: a token is taken when a service gets ready,
//! before it waits for the inner service's readiness. Callers that got their
//! tokens one interval apart and then queued for the concurrency limit's
//! permits go out together when permits free together (the answers of one
//! round trip arriving at once): a downstream then sees more calls at once
//! than `burst`, though never more than the tokens taken. Where the
//! downstream refuses such bunches (a rate cap with a small burst), give the
//! rate limit a burst of at least the concurrency limit, or put it inside
//! the concurrency limit (a caller then holds a permit while it waits for
//! its token).
//!
//! # Refusals
//! By default `poll_ready` waits for a token, and waiting callers are served
//! in the order they arrived (each books its slot; a slot given up goes to
//! the next caller that would wait, ahead of those already waiting for
//! later ones). With
//! [`fail_fast`](RateLimitBuilder::fail_fast), a request that finds the
//! bucket short fails with [`RateLimited`](crate::error::RateLimited), which
//! carries the wait after which it would have been admitted.
//!
//! A service whose inner `poll_ready` fails gives its booked token up with
//! the error, as a caller that leaves does, and is no longer ready.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_core::rate::RateLimitLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_fanout_core::BoxError> {
//! // 10 calls a second, 2 at once; a call costs its payload's length.
//! let limit = RateLimitLayer::builder(10, Duration::from_secs(1))
//!     .burst(2)
//!     .build()?;
//! let handle = limit.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|s: &'static str| async move { Ok::<_, std::convert::Infallible>(s.len()) }));
//!
//! let start = tokio::time::Instant::now();
//! for _ in 0..4 {
//!     svc.clone().oneshot("hello").await?;
//! }
//! // Two from the burst, then one every 100 ms.
//! assert_eq!(start.elapsed(), Duration::from_millis(200));
//! assert_eq!(handle.tokens(), 0);
//! # Ok(())
//! # }
//! ```

// The keyed limit keeps one of these per key: the same exact math.
pub(crate) mod bucket;
mod layer;
mod service;

pub use self::layer::{Cost, RateLimitBuilder, RateLimitHandle, RateLimitLayer, UnitCost};
pub use self::service::RateLimit;

/// The response future of [`RateLimit`]: the inner future, a refusal, or a
/// call waiting for the rest of its cost.
pub type ResponseFuture<S, Req> = crate::future::ResponseFuture<
    <S as tower_service::Service<Req>>::Future,
    (),
    self::service::DeferredCall<S, Req>,
>;
