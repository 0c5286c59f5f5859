//! Tests written in a manual mutation-testing pass: each one fails on a small
//! deliberate change to the source that every other test let through (named
//! in its doc comment), and passes on the code as it is. Paused clock, no
//! real time, bounded everywhere.
#![cfg(all(
    feature = "rate",
    feature = "concurrency",
    feature = "backpressure",
    feature = "keyed"
))]
#![allow(clippy::unwrap_used)]

mod support;
use support::at_once;
#[cfg(feature = "rate")]
use support::one_token_every;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;

/// A waiting rate limiter books one token in `poll_ready`; a request that
/// turns out to cost 0 must give it back. Killed mutant: `settle_cost`
/// skipping `give_back(first, 1)` for a cost of 0 (rate/service.rs), which
/// charged a free request a whole token: the next 1-token call waited 10 s.
#[cfg(feature = "rate")]
#[tokio::test(start_paused = true)]
async fn rate_a_zero_cost_call_takes_no_token() {
    let layer = one_token_every(Duration::from_secs(10), 1);
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    let start = Instant::now();
    svc.clone().oneshot(0).await.unwrap();
    assert_eq!(handle.tokens(), 1, "a free call leaves the token");
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the paid call did not wait"
    );
    assert_eq!(handle.tokens(), 0);
}

/// A fail-fast concurrency limit that shed once and then got a permit is a
/// plain ready service again: a second `call` without `poll_ready` is the
/// caller's mistake (`NotReady`), not overload. Killed mutant: poll_ready
/// not clearing `shed` once a permit is taken (concurrency/service.rs).
#[cfg(feature = "concurrency")]
#[tokio::test(start_paused = true)]
async fn concurrency_a_shed_service_that_gets_a_permit_forgets_the_shed() {
    use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
    use tower_fanout_core::error::{NotReady, Overloaded};
    let layer = ConcurrencyLimitLayer::new(1).unwrap().fail_fast();
    let inner = service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    let mut a = layer.layer(inner);
    let mut b = a.clone();
    a.ready().await.unwrap();
    let held = a.call(());
    b.ready().await.unwrap();
    // Shed while `held` has the permit.
    let err = b.call(()).await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");
    b.ready().await.unwrap(); // shed again, flag up
    drop(held); // the permit comes back
    b.ready().await.unwrap(); // takes it
    b.call(()).await.unwrap();
    let err = b.call(()).await.unwrap_err();
    assert!(err.is::<NotReady>(), "expected NotReady, got {err}");
}

/// The backpressure queue is FIFO: a lone worker busy with one request takes
/// the queued ones in the order they were queued. Killed mutant:
/// `poll_next` taking `pop_back` (backpressure/worker.rs): 0, 3, 2, 1.
#[cfg(feature = "backpressure")]
#[tokio::test(start_paused = true)]
async fn backpressure_queued_requests_run_in_order() {
    use tower_fanout_core::backpressure::BackpressureLayer;
    let order = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(tokio::sync::Notify::new());
    let inner = service_fn({
        let (order, gate) = (order.clone(), gate.clone());
        move |n: u32| {
            let (order, gate) = (order.clone(), gate.clone());
            async move {
                order.lock().unwrap().push(n);
                if n == 0 {
                    gate.notified().await;
                }
                Ok::<_, BoxError>(n)
            }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(1, 8).unwrap())
        .service(inner);
    let mut calls = Vec::new();
    for n in 0..5u32 {
        calls.push(tokio::spawn(svc.clone().oneshot(n)));
        // Each queued before the next.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(*order.lock().unwrap(), vec![0], "the worker is busy with 0");
    gate.notify_one();
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), n as u32);
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

/// A service whose `poll_ready` panics on its first use, then behaves.
#[derive(Clone)]
struct PanicsInPollReady {
    polls: Arc<AtomicUsize>,
}

impl Service<u32> for PanicsInPollReady {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("deliberate panic in poll_ready (mutation_gaps test)");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        Box::pin(async move { Ok(n) })
    }
}

/// A panic in the inner service's `poll_ready` is answered with
/// `ServicePanicked` and the worker goes on. Killed mutant: the worker's
/// `serve` re-raising a `poll_ready` panic instead of catching it
/// (backpressure/worker.rs): the caller got `Closed` and, the lone worker
/// dead, so did every later caller.
#[cfg(feature = "backpressure")]
#[tokio::test(start_paused = true)]
async fn backpressure_a_panic_in_poll_ready_fails_only_that_request() {
    use tower_fanout_core::backpressure::BackpressureLayer;
    use tower_fanout_core::error::ServicePanicked;
    let polls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(1).unwrap())
        .service(PanicsInPollReady {
            polls: polls.clone(),
        });
    let err = at_once("the request that panics", svc.clone().oneshot(1))
        .await
        .unwrap_err();
    assert!(
        err.is::<ServicePanicked>(),
        "expected ServicePanicked, got {err}"
    );
    for n in 2..5 {
        assert_eq!(
            at_once("a request after it", svc.clone().oneshot(n))
                .await
                .unwrap(),
            n
        );
    }
}

/// A service that breaks for good (every later `poll_ready` fails) once a
/// call asks it to fail; a fresh clone is whole.
#[derive(Clone, Default)]
struct BreaksOnError {
    broken: bool,
}

impl Service<bool> for BreaksOnError {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.broken {
            return Poll::Ready(Err("broken: this instance failed before".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, fail: bool) -> Self::Future {
        if fail {
            self.broken = true;
            return std::future::ready(Err("asked to fail".into()));
        }
        std::future::ready(Ok(()))
    }
}

/// After an error the worker starts again from a fresh clone of the inner
/// service (it may be broken, as tower says of a `poll_ready` error).
/// Killed mutant: the worker keeping its service after an error
/// (backpressure/worker.rs), so one failure failed every later request.
#[cfg(feature = "backpressure")]
#[tokio::test(start_paused = true)]
async fn backpressure_a_failed_request_leaves_the_worker_a_fresh_service() {
    use tower_fanout_core::backpressure::BackpressureLayer;
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(1).unwrap())
        .service(BreaksOnError::default());
    let err = at_once("the failing request", svc.clone().oneshot(true))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "asked to fail");
    for _ in 0..3 {
        at_once("a request after it", svc.clone().oneshot(false))
            .await
            .unwrap();
    }
}

#[cfg(feature = "keyed")]
fn get(host: &str) -> http::Request<()> {
    http::Request::get(format!("http://{host}/x"))
        .body(())
        .unwrap()
}

/// A key whose bucket is refilling is never forgotten, whatever its burst:
/// with a burst of 3 and 2 tokens left, evicting it would give it a full
/// bucket again (4 calls at t = 0 for a burst of 3). The existing test used
/// a burst of 1, where "some token" and "a full bucket" are the same thing.
/// Killed mutant: eviction taking keys with `tokens > 0` instead of
/// `tokens >= burst` (keyed/map.rs).
#[cfg(feature = "keyed")]
#[tokio::test(start_paused = true)]
async fn keyed_a_partly_refilled_bucket_keeps_its_key() {
    use tower_fanout_core::error::RateLimited;
    use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer, TooManyKeys};
    let layer = KeyedLimitLayer::builder(KeyLimit::new().rate(1, Duration::from_secs(10)).burst(3))
        .max_keys(1)
        .fail_fast()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: http::Request<()>| async {
                Ok::<_, BoxError>(())
            }));
    svc.clone().oneshot(get("a.test")).await.unwrap();
    assert_eq!(handle.tokens(&"a.test".to_string()), Some(2));
    let err = svc.clone().oneshot(get("b.test")).await.unwrap_err();
    assert!(err.is::<TooManyKeys>(), "a.test is refilling: {err}");
    let mut admitted = 1;
    for _ in 0..5 {
        match svc.clone().oneshot(get("a.test")).await {
            Ok(()) => admitted += 1,
            Err(e) => assert!(e.is::<RateLimited>(), "{e}"),
        }
    }
    assert_eq!(admitted, 3, "a burst of 3 admits 3 at t = 0");
}

/// With the map full, the least recently *used* idle key is forgotten: a
/// key created first but used since stays. Seen through the handle (a
/// forgotten key has no bucket to read). Killed mutants: eviction by
/// `max_by_key` (most recent) and a look-up that does not refresh
/// `last_used` (least recently created), both in keyed/map.rs.
#[cfg(feature = "keyed")]
#[tokio::test(start_paused = true)]
async fn keyed_eviction_forgets_the_least_recently_used_key() {
    use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};
    let layer =
        KeyedLimitLayer::builder(KeyLimit::new().rate(1000, Duration::from_secs(1)).burst(1))
            .max_keys(2)
            .build()
            .unwrap();
    let handle = layer.handle();
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: http::Request<()>| async {
                Ok::<_, BoxError>(())
            }));
    for host in ["a.test", "b.test", "a.test"] {
        svc.clone().oneshot(get(host)).await.unwrap();
        // Every bucket full again (1 ms a token): all keys idle.
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    svc.clone().oneshot(get("c.test")).await.unwrap();
    let tracked = |h: &str| handle.tokens(&h.to_string()).is_some();
    assert_eq!(handle.keys(), 2);
    assert!(tracked("a.test"), "used last before c.test: kept");
    assert!(!tracked("b.test"), "least recently used: forgotten");
    assert!(tracked("c.test"));
}

/// The handle reads the bucket's shape as configured. Killed mutants:
/// `RateLimitHandle::burst` returning 0 or 1 (rate/layer.rs).
#[cfg(feature = "rate")]
#[test]
fn rate_the_handle_reads_the_configured_burst() {
    use tower_fanout_core::rate::RateLimitLayer;
    let layer = RateLimitLayer::builder(4, Duration::from_secs(1))
        .burst(7)
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.burst(), 7);
    assert_eq!(handle.refill_interval(), Duration::from_millis(250));
}

/// A caller that leaves a call still waiting for the rest of its cost gives
/// back the tokens it booked, and not one that a neighbour booked after its
/// first token. Killed mutants: the deferred call recording `more + 1` or
/// `more / 1` tokens instead of `more - 1` (rate/service.rs `settle_cost`),
/// which on drop pulled the bucket back over the neighbour's booking.
#[cfg(feature = "rate")]
#[tokio::test(start_paused = true)]
async fn rate_leaving_a_deferred_call_gives_back_only_its_own_tokens() {
    let layer = one_token_every(Duration::from_secs(1), 3);
    let handle = layer.handle();
    let called = Arc::new(AtomicUsize::new(0));
    let seen = called.clone();
    let inner = service_fn(move |_: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    });
    let svc = layer.layer(inner);
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(handle.tokens(), 2);
    let mut a = svc.clone();
    let mut b = svc.clone();
    a.ready().await.unwrap(); // books the second token
    b.ready().await.unwrap(); // the neighbour books the third
    assert_eq!(handle.tokens(), 0);
    // Costs 3: one is booked, the other two arrive at 2 s and 3 s.
    let mut waiting = Box::pin(a.call(3));
    assert!(support::poll_once(waiting.as_mut()).is_pending());
    drop(waiting);
    assert_eq!(called.load(Ordering::SeqCst), 1, "the left call never ran");
    // Back: a's two and its first; b's token stays booked.
    assert_eq!(handle.tokens(), 0, "the neighbour's token is still booked");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.tokens(), 1);
    b.call(1).await.unwrap();
    assert_eq!(called.load(Ordering::SeqCst), 2);
}

/// A costly call whose tokens are all there is made in `call` itself, on
/// the ready inner service: nothing is deferred or cloned. Killed mutant:
/// `at > now` as `at >= now` in `settle_cost` (rate/service.rs), which
/// deferred every multi-token call to its response future and cloned the
/// inner service for it.
#[cfg(feature = "rate")]
#[tokio::test(start_paused = true)]
async fn rate_a_costly_call_with_its_tokens_there_is_made_at_once() {
    #[derive(Clone)]
    struct Counting(Arc<AtomicUsize>);
    impl Service<u32> for Counting {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: u32) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(()))
        }
    }
    let layer = one_token_every(Duration::from_secs(1), 4);
    let called = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(Counting(called.clone()));
    svc.ready().await.unwrap();
    let fut = svc.call(4);
    assert_eq!(called.load(Ordering::SeqCst), 1, "called before polling");
    fut.await.unwrap();
}
