//! Contract tests for the backpressure queue.
#![cfg(feature = "backpressure")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use support::{InFlight, at_once};
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt, service_fn};
use tower_fanout_core::backpressure::BackpressureLayer;
use tower_fanout_core::error::{Closed, NoRuntime, QueueFull, ServicePanicked};

/// An inner service whose calls wait for the test to open a gate.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    seen: Arc<InFlight>,
    started: Arc<Mutex<Vec<u32>>>,
}

impl Gated {
    fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            seen: Arc::new(InFlight::default()),
            started: Arc::new(Mutex::new(Vec::new())),
        }
    }
    fn started(&self) -> Vec<u32> {
        self.started.lock().unwrap().clone()
    }
}

impl Service<u32> for Gated {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        self.started.lock().unwrap().push(req);
        let guard = self.seen.enter();
        let gate = self.gate.clone();
        Box::pin(async move {
            gate.acquire().await.unwrap().forget();
            drop(guard);
            Ok(req)
        })
    }
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn queue_and_in_flight_never_exceed_their_bounds() {
    let inner = Gated::new();
    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(2, 6).unwrap())
        .service(inner.clone());
    let handle = svc.handle();
    let mut producers = Vec::new();
    for i in 0..50u32 {
        let svc = svc.clone();
        producers.push(tokio::spawn(async move { svc.oneshot(i).await.unwrap() }));
    }
    for step in 0..60 {
        settle().await;
        assert!(
            handle.queue_depth() <= 6,
            "step {step}: depth {}",
            handle.queue_depth()
        );
        assert!(handle.slots_in_use() <= 6);
        assert!(
            inner.seen.now() <= 2,
            "step {step}: {} running",
            inner.seen.now()
        );
        assert!(handle.in_flight() <= 2);
        if step == 0 {
            assert_eq!(handle.queue_depth(), 6, "the queue fills up");
            assert_eq!(handle.in_flight(), 2);
            assert_eq!(handle.waiting(), 50 - 8, "the rest wait for a slot");
        }
        inner.gate.add_permits(1);
    }
    let mut answers: Vec<u32> = Vec::new();
    for p in producers {
        answers.push(p.await.unwrap());
    }
    answers.sort_unstable();
    assert_eq!(answers, (0..50).collect::<Vec<_>>());
    assert_eq!(inner.seen.peak(), 2);
    assert_eq!(handle.queue_depth(), 0);
    assert_eq!(handle.slots_in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_queued_request_never_reaches_the_inner_service() {
    let inner = Gated::new();
    let mut svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(1, 4).unwrap())
        .service(inner.clone());
    let handle = svc.handle();
    let first = svc.ready().await.unwrap().call(1);
    let first = tokio::spawn(first);
    settle().await;
    assert_eq!(inner.started(), vec![1]);
    let second = svc.ready().await.unwrap().call(2);
    let third = svc.ready().await.unwrap().call(3);
    assert_eq!(handle.queue_depth(), 2);
    drop(second);
    assert_eq!(handle.queue_depth(), 1, "removed from the queue at once");
    assert_eq!(handle.slots_in_use(), 1, "its slot is free again");
    inner.gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(third.await.unwrap(), 3);
    assert_eq!(inner.started(), vec![1, 3], "2 was never executed");
}

#[tokio::test(start_paused = true)]
async fn caller_dropping_a_running_request_frees_the_worker() {
    let inner = Gated::new();
    let mut svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::new(1).unwrap())
        .service(inner.clone());
    let handle = svc.handle();
    let running = tokio::spawn(svc.ready().await.unwrap().call(1));
    settle().await;
    assert_eq!(handle.in_flight(), 1);
    running.abort();
    settle().await;
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(inner.seen.now(), 0, "the inner future was dropped");
    inner.gate.add_permits(1);
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_sheds_with_queue_full() {
    let inner = Gated::new();
    let mut svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(1, 2).unwrap().fail_fast())
        .service(inner.clone());
    let mut calls = Vec::new();
    for i in 0..3 {
        calls.push(tokio::spawn(svc.ready().await.unwrap().call(i)));
        settle().await;
    }
    let err = svc.ready().await.unwrap().call(9).await.unwrap_err();
    let full = err.downcast_ref::<QueueFull>().expect("QueueFull");
    assert_eq!(full.capacity(), 2);
    assert!(err.to_string().contains("raise the queue bound"), "{err}");
    inner.gate.add_permits(3);
    for c in calls {
        at_once("a queued call", c).await.unwrap().unwrap();
    }
    assert!(!inner.started().contains(&9));
}

/// A request that errors, one whose call panics and one whose future panics
/// each get their own answer; the requests around them are served as usual.
#[tokio::test(start_paused = true)]
async fn failing_or_panicking_inner_service_does_not_stall_others() {
    let inner = service_fn(|req: u32| {
        if req == 2 {
            panic!("call panics");
        }
        async move {
            match req {
                1 => Err(std::io::Error::other("boom")),
                3 => panic!("future panics"),
                n => Ok(n),
            }
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::new(2).unwrap())
        .service(inner);
    let mut calls = Vec::new();
    for i in 0..20u32 {
        calls.push(tokio::spawn(svc.clone().oneshot(i)));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let result = at_once("a call", call).await.unwrap();
        match i {
            1 => assert_eq!(result.unwrap_err().to_string(), "boom"),
            2 | 3 => assert!(result.unwrap_err().is::<ServicePanicked>()),
            n => assert_eq!(result.unwrap(), n as u32),
        }
    }
    // And the queue still serves after the panics.
    assert_eq!(svc.oneshot(42).await.unwrap(), 42);
}

/// An inner service whose `poll_ready` fails once: that caller gets the error,
/// the worker starts again from a fresh clone, and later callers are served.
#[tokio::test(start_paused = true)]
async fn poll_ready_error_does_not_close_the_queue() {
    #[derive(Clone)]
    struct FailsOnce(Arc<AtomicBool>);
    impl Service<u32> for FailsOnce {
        type Response = u32;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<u32, std::io::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.0.swap(false, Ordering::SeqCst) {
                return Poll::Ready(Err(std::io::Error::other("not ready")));
            }
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: u32) -> Self::Future {
            std::future::ready(Ok(req))
        }
    }
    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::new(1).unwrap())
        .service(FailsOnce(Arc::new(AtomicBool::new(true))));
    let err = at_once("a call", svc.clone().oneshot(1)).await.unwrap_err();
    assert_eq!(err.to_string(), "not ready");
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2);
}

/// Once every clone is gone and the queue is drained, the workers stop and
/// drop their copies of the inner service.
#[tokio::test(start_paused = true)]
async fn workers_stop_after_the_last_clone_is_dropped() {
    let marker = Arc::new(());
    let inner = service_fn({
        let marker = marker.clone();
        move |n: u32| {
            let _keep = &marker;
            async move { Ok::<_, std::io::Error>(n) }
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::new(3).unwrap())
        .service(inner);
    // oneshot drops the service right after the call: the request must still be served.
    let answer = at_once("a call", svc.clone().oneshot(7)).await;
    assert_eq!(answer.unwrap(), 7);
    assert!(Arc::strong_count(&marker) > 1);
    let last = svc.oneshot(8);
    assert_eq!(last.await.unwrap(), 8);
    settle().await;
    assert_eq!(
        Arc::strong_count(&marker),
        1,
        "workers exited and dropped the service"
    );
}

#[test]
fn without_a_runtime_poll_ready_says_so() {
    let mut svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::new(1).unwrap())
        .service(service_fn(
            |n: u32| async move { Ok::<_, std::io::Error>(n) },
        ));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.is::<NoRuntime>(), "{e}"),
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

#[test]
fn zero_workers_or_queue_is_refused() {
    let workers = BackpressureLayer::<u32>::new(0).unwrap_err();
    assert!(
        workers.to_string().contains("at least 1 worker"),
        "{workers}"
    );
    let queue = BackpressureLayer::<u32>::with_queue(2, 0).unwrap_err();
    assert!(queue.to_string().contains("queue bound"), "{queue}");
}

/// Every worker is a task with a slot allocated up front: a pool beyond
/// the bound is refused at build time, where it used to panic (capacity
/// overflow) in `layer()`.
#[test]
fn too_many_workers_is_refused_with_what_to_use_instead() {
    for workers in [BackpressureLayer::<u32>::MAX_WORKERS + 1, usize::MAX] {
        let err = BackpressureLayer::<u32>::new(workers).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("at most 65536") && msg.contains("ConcurrencyLimitLayer"),
            "{msg}"
        );
    }
    let max = BackpressureLayer::<u32>::with_queue(BackpressureLayer::<u32>::MAX_WORKERS, 1);
    assert!(max.is_ok());
}

#[tokio::test(start_paused = true)]
async fn default_queue_is_three_per_worker() {
    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::new(4).unwrap())
        .service(service_fn(
            |n: u32| async move { Ok::<_, std::io::Error>(n) },
        ));
    assert_eq!(svc.handle().queue_capacity(), 12);
    assert_eq!(svc.handle().workers(), 4);
}

#[tokio::test(start_paused = true)]
async fn idle_workers_take_requests_while_others_are_busy() {
    // Requests arrive one at a time, so each is handed to a worker that is
    // waiting: every one must start at once while a worker is free, and wait
    // only when all three are busy.
    let inner = Gated::new();
    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(3, 9).unwrap())
        .service(inner.clone());
    let handle = svc.handle();
    let mut next = 0u32;
    for round in 0..20 {
        let mut calls = Vec::new();
        // A different number each round: 1..=5, so some rounds queue.
        for k in 1..=(round % 5 + 1) {
            let svc = svc.clone();
            let req = next;
            next += 1;
            calls.push(tokio::spawn(async move { svc.oneshot(req).await.unwrap() }));
            settle().await;
            assert_eq!(
                inner.seen.now(),
                k.min(3),
                "round {round}: {k} sent, {} running",
                inner.seen.now()
            );
            assert_eq!(handle.queue_depth(), k.saturating_sub(3));
        }
        inner.gate.add_permits(calls.len());
        for call in calls {
            call.await.unwrap();
        }
        settle().await;
        assert_eq!(handle.in_flight(), 0);
    }
    assert_eq!(inner.started().len(), next as usize);
}

/// The workers live on the runtime of the first `poll_ready`. When that
/// runtime shuts down they are gone: a request still queued, and every
/// later one, must be answered with `Closed` (and its slot freed) rather
/// than wait for ever on a queue nobody drains.
#[test]
fn requests_outliving_the_workers_runtime_get_closed() {
    let inner = Gated::new();
    let first = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (mut svc, running, queued) = first.block_on(async {
        let mut svc = tower::ServiceBuilder::new()
            .layer(BackpressureLayer::with_queue(1, 1).unwrap())
            .service(inner.clone());
        let running = svc.ready().await.unwrap().call(1);
        let running = tokio::spawn(running);
        settle().await;
        assert_eq!(inner.started(), vec![1]);
        let queued = svc.ready().await.unwrap().call(2);
        (svc, running, queued)
    });
    drop(running);
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        let limit = std::time::Duration::from_secs(60);
        let err = tokio::time::timeout(limit, queued)
            .await
            .expect("the queued request is answered, not left waiting")
            .unwrap_err();
        assert!(err.is::<Closed>(), "{err}");
        // The service can never serve again: `poll_ready` says so, as
        // tower's convention for a broken service asks.
        let err = tokio::time::timeout(limit, svc.ready())
            .await
            .expect("poll_ready answers, not left waiting")
            .unwrap_err();
        assert!(err.is::<Closed>(), "{err}");
        assert_eq!(svc.handle().slots_in_use(), 0);
    });
    assert_eq!(inner.started(), vec![1], "nothing ran after the shutdown");
}

/// A queue bound is a cap, not a size to allocate up front: an effectively
/// unbounded queue builds, and serves.
#[tokio::test(start_paused = true)]
async fn a_huge_queue_bound_is_not_allocated_up_front() {
    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(2, usize::MAX).unwrap())
        .service(service_fn(
            |n: u32| async move { Ok::<_, std::io::Error>(n) },
        ));
    assert_eq!(svc.handle().queue_capacity(), usize::MAX);
    let answer = at_once("a call", svc.clone().oneshot(5)).await;
    assert_eq!(answer.unwrap(), 5);
    assert_eq!(svc.handle().slots_in_use(), 0);
}

/// A caller that leaves while its worker waits in the inner service's
/// `poll_ready` (here for a shared concurrency permit) cancels the request;
/// the worker must not keep the inner service's place in that wait. Kept,
/// the permit is later granted to an idle worker's service, and the next
/// request, taken by the other worker, waits for it for ever.
#[tokio::test(start_paused = true)]
async fn cancelled_while_the_inner_service_is_not_ready_leaves_no_reservation() {
    use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
    let inner = Gated::new();
    let limit = ConcurrencyLimitLayer::new(1).unwrap();
    let permits = limit.handle();
    let mut svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(2, 4).unwrap())
        .layer(limit)
        .service(inner.clone());
    let first = tokio::spawn(svc.ready().await.unwrap().call(1));
    settle().await;
    assert_eq!(inner.started(), vec![1]);
    let second = tokio::spawn(svc.ready().await.unwrap().call(2));
    settle().await;
    assert_eq!(
        permits.waiting(),
        1,
        "the second worker waits for the permit"
    );
    second.abort();
    settle().await;
    inner.gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    settle().await;
    let third = svc.ready().await.unwrap().call(3);
    let third = at_once("the third request, for the permit nobody uses", third).await;
    assert_eq!(third.unwrap(), 3);
    assert_eq!(inner.started(), vec![1, 3], "2 was never executed");
    settle().await;
    assert_eq!((permits.in_flight(), permits.waiting()), (0, 0));
}

/// An inner service whose first clone panics, as a buggy `Clone` might.
struct FirstCloneFails {
    armed: Arc<AtomicBool>,
}

impl Clone for FirstCloneFails {
    fn clone(&self) -> Self {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the inner service's clone failed");
        }
        Self {
            armed: self.armed.clone(),
        }
    }
}

impl Service<u32> for FirstCloneFails {
    type Response = u32;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<u32, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        std::future::ready(Ok(n))
    }
}

/// A clone of the inner service that panicked while the workers started
/// left them counted as alive and none spawned: every later call was queued
/// where nothing read it, and hung. The first caller sees the panic; the
/// next `poll_ready` starts the workers, and calls are answered.
#[tokio::test(start_paused = true)]
async fn a_panicking_clone_at_start_up_leaves_the_next_call_served() {
    use tower::Layer;

    let svc = BackpressureLayer::new(2).unwrap().layer(FirstCloneFails {
        armed: Arc::new(AtomicBool::new(true)),
    });
    let first = tokio::spawn(svc.clone().oneshot(1)).await;
    assert!(first.unwrap_err().is_panic());
    let second =
        tokio::time::timeout(std::time::Duration::from_secs(5), svc.clone().oneshot(2)).await;
    assert_eq!(second.expect("answered, not hung").unwrap(), 2);
}
