//! An adaptive concurrency limit: the limit finds the downstream's capacity
//! from what its responses say.
//!
//! # What it bounds
//! Calls in flight, like [`concurrency`](crate::concurrency), but the limit
//! moves: a [`Controller`] reads every finished
//! call (its [`Outcome`](crate::classify::Outcome), its RTT, how full the
//! limit was) and raises or lowers it. A fixed limit is wrong twice: too low
//! wastes the downstream's capacity, too high brings 429 storms.
//!
//! # Choosing a controller
//! | controller | reads | choose it when |
//! |---|---|---|
//! | [`GradientController`] (default) | overload and RTT against a long-term baseline | unsure: it handles both refusing and queueing servers |
//! | [`AimdController`] | overload only | the downstream refuses (429/503) instead of slowing down |
//! | [`VegasController`] | estimated queue at the downstream | the downstream queues and latency is not heavy-tailed |
//! | [`WindowedController::preset`] | error rate and mean latency per 20 answers | you want the simple, predictable rule (max 50) |
//!
//! The windowed preset grows only on answers faster than 500 ms on
//! average: against a downstream slower than that by nature (a model's
//! completions, 1 s each) it stays at its start of 5. Build it with
//! [`WindowedController::builder`] and `.latency(fast, slow)` set from the
//! downstream's normal latency, or use the gradient default, which learns it.
//!
//! One limit over several downstreams whose normal latencies differ (a
//! 20 ms API and a 150 ms one behind one layer) suits [`AimdController`]:
//! the RTT readers take the slower one's normal latency for queueing
//! against the faster one's baseline, and drift down. Or give each
//! downstream its own adaptive layer.
//!
//! Every controller starts with a slow start (except the windowed preset):
//! while callers queue for a permit it doubles per round trip until the
//! first sign of overload, so a capacity of 200 is found from 5 in about
//! six round trips.
//!
//! And every one but the windowed preset (whose rules grow on fast answers
//! alone) grows only while the limit is in use, and no further than a third
//! above the most calls that wanted a permit at once, in flight or queued
//! for one (and at least one above): under a steady demand of 40 callers
//! and no overload it stops at 53, so a later burst does not find a limit
//! far above anything the downstream was shown. Callers queued above this
//! layer (in a `Buffer`) or shed by
//! [`fail_fast`](AdaptiveLimitLayer::fail_fast) are demand it cannot see:
//! a full limit then grows by a third (at least one) per round trip.
//!
//! # Rules the layer keeps for every controller
//! - One congestion episode, one decrease: overloads from calls admitted
//!   before the last decrease are not reported (the calls in flight when
//!   the limit was too high fail together; they are one signal).
//! - A `Retry-After` names a rate cap or a quota. The first one turns
//!   pacing on (until 256 RTTs, and at least a minute, pass without
//!   another): each call that gets a permit then waits for its slot, at
//!   most 1.25 × limit calls per lowest recent RTT (a pace that smooths
//!   bursts but seldom binds), because a rate cap with a small burst
//!   refuses the bursts a concurrency limit lets through (the answers of
//!   one round trip come back together, and each frees a permit at once).
//!   The refusals of calls sent before pacing began are answered by it,
//!   not by a decrease.
//! - An overload that carries a long `Retry-After` (more than four RTTs and
//!   more than the header's smallest step, 1 s) is a quota spent, not
//!   congestion: no new call goes out until the wait is over (at most
//!   [`max_hold`](AdaptiveLimitLayer::max_hold)), since each would only be
//!   refused, and the limit is neither lowered nor moved meanwhile, so it
//!   neither collapses to its minimum nor freezes for good. This holds for
//!   the answer of a call admitted before the last decrease too: that
//!   episode is answered, but the quota is spent all the same.
//! - A call's latency is the downstream's, not the waits of the caller's own
//!   limits below (the client preset's configured per-host gates): a
//!   response carrying a [`DeliberateWait`](crate::DeliberateWait) gives
//!   the controller a sample reduced by it (read by
//!   [`Classify::waited`](crate::classify::Classify::waited)). Otherwise one
//!   host's configured rate limit, making its calls queue, would read as a
//!   slow downstream and lower the limit for every host. Waits the
//!   downstream asked for (the client's learned rate-limit holds, its retry
//!   sleeps) stay in the latency: they are the downstream's capacity. An
//!   error carries none: its sample keeps the whole time, which only its
//!   outcome is read for.
//! - Caller errors (other 4xx) neither raise nor lower the limit.
//! - A call whose future is dropped gives its permit back and reports
//!   nothing.
//!
//! # Where it goes
//! Innermost but for a fixed [`ConcurrencyLimitLayer`](crate::concurrency::ConcurrencyLimitLayer)
//! cap, under the rate limit and the retry layer: a retry sleeping on
//! `Retry-After` must hold no permit. Under a keyed limit
//! (`KeyedLimitLayer`) too: the keyed limit readies its inner service only
//! once a call's key admits it, so a call waiting at its key's gate then
//! holds no adaptive permit, and its wait is not read as the downstream's
//! latency. (With the adaptive limit above the keyed one, a gate's waits
//! count as in flight and as slow answers, unless the responses carry them
//! as a [`DeliberateWait`](crate::DeliberateWait), as tower-fanout-http's
//! client does.)
//!
//! # Sharing and reservations
//! One limit and one controller are held in an `Arc` in the layer: every
//! service it wraps, and every clone, shares them. `poll_ready` takes a
//! permit (and, while paced, waits for its slot), the response future holds
//! it and gives it back when it completes or is dropped. A ready service that is never called holds its permit.
//! A service whose inner `poll_ready` fails gives its permit back with the
//! error.
//! A service dropped while it waits for its pacing slot gives the slot back,
//! so callers that give up do not push later calls' slots further out.
//!
//! # Observing
//! [`AdaptiveLimitHandle`] reads the limit, the permits in use and the RTT
//! estimates with atomic loads. Each change of the limit is a `tracing`
//! debug event with `limit.old`, `limit.new` and `reason`.
//!
//! # Example
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_fanout_core::adaptive::{AdaptiveLimitLayer, GradientController};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_fanout_core::BoxError> {
//! let controller = GradientController::builder().min(2).max(200).initial(5).build()?;
//! let limit = AdaptiveLimitLayer::new(controller);
//! let handle = limit.handle();
//! let svc = ServiceBuilder::new().layer(limit).service(service_fn(|_req: ()| async {
//!     tokio::time::sleep(std::time::Duration::from_millis(50)).await;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//!
//! let calls: Vec<_> = (0..100).map(|_| tokio::spawn(svc.clone().oneshot(()))).collect();
//! for call in calls {
//!     assert!(call.await?.is_ok());
//! }
//! // Every answer was a quick 200: the limit grew from 5 while it was in use.
//! assert!(handle.limit() > 5);
//! assert_eq!(handle.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

pub mod controller;
pub mod future;
mod layer;
mod service;

pub use self::controller::{
    AimdController, Controller, GradientController, VegasController, WindowedController,
};
pub use self::future::ResponseFuture;
pub use self::layer::{AdaptiveLimitHandle, AdaptiveLimitLayer};
pub use self::service::AdaptiveLimit;
