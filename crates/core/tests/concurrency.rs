//! Contract tests for the shared concurrency limit.
#![cfg(feature = "concurrency")]
#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use proptest::prelude::*;
use support::{InFlight, Rng, poll_once};
use tokio::sync::oneshot;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Service, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::error::{NotReady, Overloaded};
use tower_test::mock;

#[tokio::test]
async fn drop_ready_service_releases_permit() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = layer.handle();
    let (mut a, _h) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut b, _h2) = mock::spawn_layer::<(), (), _>(layer);
    assert_ready_ok!(a.poll_ready());
    assert_eq!(handle.in_flight(), 1);
    assert_pending!(b.poll_ready());
    drop(a);
    assert!(
        b.is_woken(),
        "the waiter is woken when the permit comes back"
    );
    assert_ready_ok!(b.poll_ready());
    assert_eq!(handle.in_flight(), 1);
}

#[tokio::test]
async fn drop_response_future_releases_permit() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<&str, &str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call("a"));
    assert_pending!(fut.poll());
    assert_pending!(svc.poll_ready());
    let (req, _send) = inner.next_request().await.unwrap();
    assert_eq!(req, "a");
    drop(fut);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.in_flight(), 1);
}

#[tokio::test]
async fn completed_call_frees_permit_before_future_is_dropped() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<&str, &str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call("a"));
    assert_pending!(fut.poll());
    let (_, send) = inner.next_request().await.unwrap();
    send.send_response("ok");
    assert_eq!(assert_ready_ok!(fut.poll()), "ok");
    assert_eq!(
        handle.in_flight(),
        0,
        "freed on completion, future still alive"
    );
}

#[tokio::test]
async fn clones_and_layered_services_share_one_limit() {
    let layer = ConcurrencyLimitLayer::new(2).unwrap();
    let (mut a, _ha) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut b, _hb) = mock::spawn_layer::<(), (), _>(layer.clone());
    let mut c = mock::Spawn::new(a.get_ref().clone());
    assert_ready_ok!(a.poll_ready());
    assert_ready_ok!(b.poll_ready());
    assert_pending!(c.poll_ready());
    assert_eq!(layer.handle().waiting(), 1);
    assert_eq!(layer.handle().available(), 0);
}

#[tokio::test]
async fn clone_starts_without_a_permit() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let (mut a, _h) = mock::spawn_layer::<(), (), _>(layer.clone());
    assert_ready_ok!(a.poll_ready());
    let b = a.get_ref().clone();
    assert_eq!(layer.handle().in_flight(), 1);
    drop(b);
    assert_eq!(
        layer.handle().in_flight(),
        1,
        "the clone held nothing to give back"
    );
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let (mut first, _h1) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut second, _h2) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut third, _h3) = mock::spawn_layer::<(), (), _>(layer.clone());
    assert_ready_ok!(first.poll_ready());
    assert_pending!(second.poll_ready());
    assert_pending!(third.poll_ready());
    drop(first);
    assert!(second.is_woken());
    assert!(!third.is_woken());
    assert_pending!(third.poll_ready());
    assert_ready_ok!(second.poll_ready());
}

#[tokio::test]
async fn fail_fast_answers_overloaded() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap().fail_fast();
    let (mut a, _ha) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut b, _hb) = mock::spawn_layer::<(), (), _>(layer);
    assert_ready_ok!(a.poll_ready());
    assert_ready_ok!(b.poll_ready(), "fail-fast services stay ready");
    let err = b.call(()).await.unwrap_err();
    assert!(err.is::<Overloaded>(), "got {err}");
    assert!(err.to_string().contains("concurrency limit reached"));
}

#[tokio::test]
async fn call_without_poll_ready_is_an_error_not_a_panic() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let (mut svc, _h) = mock::spawn_layer::<(), (), _>(layer);
    let err = svc.call(()).await.unwrap_err();
    assert!(err.is::<NotReady>(), "got {err}");
}

#[test]
fn zero_limit_is_refused_with_a_message() {
    let err = ConcurrencyLimitLayer::new(0).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

/// 10 000 requests from many tasks on two threads: in flight never above 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_limit_in_flight_under_load() {
    let seen = Arc::new(InFlight::default());
    let layer = ConcurrencyLimitLayer::new(8).unwrap();
    let handle = layer.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn({
            let seen = seen.clone();
            move |_: u32| {
                let guard = seen.enter();
                async move {
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    drop(guard);
                    Ok::<_, std::io::Error>(())
                }
            }
        }));
    let mut tasks = Vec::new();
    for t in 0..100u32 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                svc.clone().oneshot(t * 100 + i).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(seen.total(), 10_000);
    assert!(seen.peak() <= 8, "peak in flight {}", seen.peak());
    assert_eq!(seen.peak(), 8, "the limit is reached under this load");
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.available(), 8);
    assert_eq!(handle.waiting(), 0);
}

/// The same load, with callers giving up at random points: after a ready
/// service is dropped, while queued, or mid-call. Every permit comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_drops_leak_no_permit() {
    let seed = support::seed();
    let seen = Arc::new(InFlight::default());
    let layer = ConcurrencyLimitLayer::new(8).unwrap();
    let handle = layer.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn({
            let seen = seen.clone();
            move |spins: u64| {
                let guard = seen.enter();
                async move {
                    for _ in 0..spins {
                        tokio::task::yield_now().await;
                    }
                    drop(guard);
                    Ok::<_, std::io::Error>(())
                }
            }
        }));
    let mut tasks = Vec::new();
    for t in 0..100u64 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ t);
            for _ in 0..100 {
                let mut svc = svc.clone();
                match rng.below(4) {
                    // Give up while waiting for (or just after getting) a permit.
                    0 => {
                        let _ = tokio::time::timeout(std::time::Duration::ZERO, svc.ready()).await;
                    }
                    // Take a permit, then drop the ready service unused.
                    1 => {
                        svc.ready().await.unwrap();
                    }
                    // Drop the response future after a few polls.
                    2 => {
                        svc.ready().await.unwrap();
                        let mut fut = Box::pin(svc.call(10));
                        for _ in 0..rng.below(5) {
                            let _ = poll_once(fut.as_mut());
                            tokio::task::yield_now().await;
                        }
                    }
                    _ => svc.oneshot(rng.below(3)).await.unwrap(),
                }
            }
        }));
    }
    // Bounded: a leaked permit leaves callers queued for good, and the
    // test should say so rather than hang (it takes about a second).
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(30), all)
        .await
        .is_err()
    {
        panic!(
            "seed {seed}: callers still queued after 30 s, {} permits held",
            handle.in_flight()
        );
    }
    assert!(seen.peak() <= 8, "seed {seed}: peak {}", seen.peak());
    assert_eq!(handle.in_flight(), 0, "seed {seed}: permits leaked");
    assert_eq!(handle.available(), 8, "seed {seed}");
    assert_eq!(handle.waiting(), 0, "seed {seed}");
}

type Call = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

#[derive(Debug, Clone)]
enum Op {
    PollReady(usize),
    Call(usize),
    Finish(usize),
    DropCall(usize),
    DropService(usize),
    CloneService(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..6).prop_map(Op::PollReady),
        (0usize..6).prop_map(Op::Call),
        (0usize..16).prop_map(Op::Finish),
        (0usize..16).prop_map(Op::DropCall),
        (0usize..6).prop_map(Op::DropService),
        (0usize..6).prop_map(Op::CloneService),
    ]
}

proptest! {
    /// Any interleaving of readiness, calls, completions, clones and drops
    /// keeps in-use permits equal to the ones actually held, never above the
    /// limit, and all are back once everything is dropped.
    #[test]
    fn permit_accounting_under_random_drops(limit in 1usize..5, ops in proptest::collection::vec(op(), 1..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _guard = rt.enter();
        let layer = ConcurrencyLimitLayer::new(limit).unwrap();
        let handle = layer.handle();
        let inner = service_fn(|rx: oneshot::Receiver<()>| async move {
            let _ = rx.await;
            Ok::<_, std::io::Error>(())
        });
        let mut services: Vec<_> = (0..3).map(|_| tower::Layer::layer(&layer, inner)).collect();
        let mut ready = vec![false; services.len()];
        let mut pending = vec![false; services.len()];
        let mut calls: Vec<(Call, oneshot::Sender<()>)> = Vec::new();
        for op in ops {
            match op {
                Op::PollReady(i) if i < services.len() => {
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    match services[i].poll_ready(&mut cx) {
                        Poll::Ready(r) => {
                            r.unwrap();
                            ready[i] = true;
                            pending[i] = false;
                        }
                        Poll::Pending => pending[i] = true,
                    }
                }
                Op::Call(i) if i < services.len() && ready[i] => {
                    let (tx, rx) = oneshot::channel();
                    let fut: Call = Box::pin(services[i].call(rx));
                    calls.push((fut, tx));
                    ready[i] = false;
                }
                Op::Finish(j) if j < calls.len() => {
                    let (mut fut, tx) = calls.swap_remove(j);
                    tx.send(()).unwrap();
                    prop_assert!(assert_ready!(poll_once(fut.as_mut())).is_ok());
                }
                Op::DropCall(j) if j < calls.len() => {
                    drop(calls.swap_remove(j));
                }
                Op::DropService(i) if i < services.len() => {
                    services.swap_remove(i);
                    ready.swap_remove(i);
                    pending.swap_remove(i);
                }
                Op::CloneService(i) if i < services.len() => {
                    services.push(services[i].clone());
                    ready.push(false);
                    pending.push(false);
                }
                _ => {}
            }
            // What an executor does on a wake-up: poll the waiting services again.
            for i in 0..services.len() {
                if pending[i] {
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    if let Poll::Ready(r) = services[i].poll_ready(&mut cx) {
                        r.unwrap();
                        ready[i] = true;
                        pending[i] = false;
                    }
                }
            }
            let held = ready.iter().filter(|r| **r).count() + calls.len();
            prop_assert_eq!(handle.in_flight(), held);
            prop_assert!(held <= limit);
        }
        drop(services);
        drop(calls);
        prop_assert_eq!(handle.in_flight(), 0);
        prop_assert_eq!(handle.available(), limit);
    }
}

/// The handle reads what the layer was built with, from the layer and from
/// a service it made. Found surviving in a mutation pass
/// (`Semaphore::limit` answering 1).
#[test]
fn the_handle_reads_the_configured_limit() {
    let layer = ConcurrencyLimitLayer::new(7).unwrap();
    let svc = tower::Layer::layer(&layer, service_fn(|()| async { Ok::<_, BoxError>(()) }));
    assert_eq!(layer.handle().limit(), 7);
    assert_eq!(svc.handle().limit(), 7);
    assert_eq!(svc.handle().available(), 7);
}
