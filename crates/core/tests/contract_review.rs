//! The tower `Service` contract, layer by layer: what a service holds after
//! its inner service's `poll_ready` fails, and the bounds a user needs to box
//! a stack (`BoxCloneSyncService`).
// The features `[[test]] required-features` names for this file in
// Cargo.toml: with `full`, the file compiled to nothing under them.
#![cfg(all(
    feature = "adaptive",
    feature = "backpressure",
    feature = "concurrency",
    feature = "keyed",
    feature = "rate"
))]
#![allow(clippy::unwrap_used)]

mod support;
use support::{aimd, at_once};

use std::time::Duration;

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::AdaptiveLimitLayer;
use tower_fanout_core::backpressure::BackpressureLayer;
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::error::NotReady;
use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};
use tower_fanout_core::rate::RateLimitLayer;
use tower_test::mock;

/// Tower: an error from `poll_ready` means the service is broken. A broken
/// service kept around (in a struct, a pool, a `Reconnect`-style wrapper that
/// tries again later) must not sit on the shared permit: with a limit of 1,
/// every other clone waited until it was dropped.
#[tokio::test]
async fn concurrency_inner_ready_error_gives_the_permit_back() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = layer.handle();
    let (mut broken, mut broken_inner) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut other, _other_inner) = mock::spawn_layer::<(), (), _>(layer);

    broken_inner.send_error("connection refused");
    assert_ready_err!(broken.poll_ready());
    assert_eq!(
        handle.in_flight(),
        0,
        "the failed reservation is given back"
    );
    assert_eq!(handle.available(), 1);
    assert_ready_ok!(other.poll_ready());
    drop(broken);
}

/// The same for the rate limit: the token booked for a service whose inner
/// `poll_ready` failed goes back to the bucket, so the next caller is not
/// made to wait a refill for a call that never happened.
#[tokio::test(start_paused = true)]
async fn rate_inner_ready_error_gives_the_token_back() {
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mut broken, mut broken_inner) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut other, _other_inner) = mock::spawn_layer::<(), (), _>(layer);

    broken_inner.send_error("connection refused");
    assert_ready_err!(broken.poll_ready());
    assert_eq!(handle.tokens(), 1, "the booked token is given back");
    let start = Instant::now();
    assert_ready_ok!(other.poll_ready());
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop(broken);
}

/// And for the adaptive limit.
#[tokio::test(start_paused = true)]
async fn adaptive_inner_ready_error_gives_the_permit_back() {
    let layer = AdaptiveLimitLayer::new(aimd(1));
    let handle = layer.handle();
    let (mut broken, mut broken_inner) =
        mock::spawn_layer::<(), http::Response<()>, _>(layer.clone());
    let (mut other, _other_inner) = mock::spawn_layer::<(), http::Response<()>, _>(layer);

    broken_inner.send_error("connection refused");
    assert_ready_err!(broken.poll_ready());
    assert_eq!(
        handle.in_flight(),
        0,
        "the failed reservation is given back"
    );
    assert_ready_ok!(other.poll_ready());
    drop(broken);
}

/// After the failure the service holds nothing; polled again (a wrapper that
/// retries), it reserves afresh and waits its turn like anybody else.
#[tokio::test]
async fn a_service_polled_again_after_an_inner_error_reserves_afresh() {
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = layer.handle();
    let (mut retried, mut retried_inner) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut other, _other_inner) = mock::spawn_layer::<(), (), _>(layer);

    retried_inner.send_error("connection refused");
    assert_ready_err!(retried.poll_ready());
    assert_ready_ok!(other.poll_ready());
    assert_pending!(retried.poll_ready());
    drop(other);
    assert!(retried.is_woken());
    assert_ready_ok!(retried.poll_ready());
    assert_eq!(handle.in_flight(), 1);
}

/// Every layer can be boxed as a `BoxCloneSyncService` (Clone, Send, Sync,
/// 'static, a Send future), as axum and tonic users box their clients; and
/// its errors are `BoxError`. A compile-time check, run once for good measure.
#[tokio::test(start_paused = true)]
async fn every_layer_boxes_as_a_clone_sync_service() {
    type Boxed = BoxCloneSyncService<http::Request<()>, u16, BoxError>;
    fn inner() -> impl tower::Service<
        http::Request<()>,
        Response = u16,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static {
        service_fn(|_req: http::Request<()>| async { Ok(200) })
    }
    fn adaptive_inner() -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static {
        service_fn(|_req: http::Request<()>| async { Ok(http::Response::new(())) })
    }

    let boxed: Vec<Boxed> = vec![
        BoxCloneSyncService::new(ConcurrencyLimitLayer::new(2).unwrap().layer(inner())),
        BoxCloneSyncService::new(
            RateLimitLayer::builder(10, Duration::from_secs(1))
                .cost(|_: &http::Request<()>| 1)
                .build()
                .unwrap()
                .layer(inner()),
        ),
        BoxCloneSyncService::new(BackpressureLayer::new(2).unwrap().layer(inner())),
        BoxCloneSyncService::new(
            KeyedLimitLayer::builder(KeyLimit::new().concurrency(2))
                .build()
                .unwrap()
                .layer(inner()),
        ),
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_response(|r: http::Response<()>| r.status().as_u16())
                .layer(AdaptiveLimitLayer::new(aimd(2)))
                .service(adaptive_inner()),
        ),
    ];
    for svc in boxed {
        let req = http::Request::get("http://example.com/").body(()).unwrap();
        assert_eq!(
            at_once("a boxed layer", svc.oneshot(req)).await.unwrap(),
            200
        );
    }
}

/// Answers one call through `svc` with `response` after 100 ms.
async fn answer_one<S>(svc: &S, upstream: &mut mock::Handle<(), http::Response<()>>, status: u16)
where
    S: tower::Service<(), Response = http::Response<()>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let call = tokio::spawn(svc.clone().oneshot(()));
    let (_, send) = upstream.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    let response = http::Response::builder()
        .status(status)
        .header("retry-after", "0")
        .body(())
        .unwrap();
    send.send_response(response);
    call.await.unwrap().unwrap();
}

/// While admissions are paced, a service holding a permit is not ready
/// until its slot comes (and its inner service has not been asked). A
/// `call` made anyway went straight to the inner service: past the pace,
/// and into an inner service never polled ready (tower's own services panic
/// there, as the mock does). It is refused with `NotReady` instead, like a
/// call without a permit.
#[tokio::test(start_paused = true)]
async fn adaptive_call_before_its_pacing_slot_is_not_ready() {
    let layer = AdaptiveLimitLayer::new(aimd(4));
    let (inner, mut upstream) = mock::pair::<(), http::Response<()>>();
    let svc = layer.layer(inner);
    // A success gives the pace its RTT; a 429 with Retry-After turns it on.
    answer_one(&svc, &mut upstream, 200).await;
    answer_one(&svc, &mut upstream, 429).await;

    let mut first = mock::Spawn::new(svc.clone());
    assert_ready_ok!(first.poll_ready());
    let mut paced = mock::Spawn::new(svc.clone());
    assert_pending!(paced.poll_ready());
    let mut early = tokio_test::task::spawn(paced.call(()));
    let err = assert_ready_err!(early.poll());
    assert!(err.is::<NotReady>(), "{err}");
    // The service keeps its permit and its slot: once the slot comes it is
    // ready and its call goes out.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_ready_ok!(paced.poll_ready());
    let _call = paced.call(());
    assert!(upstream.next_request().await.is_some());
}
