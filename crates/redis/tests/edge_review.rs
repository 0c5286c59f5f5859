//! Edge cases found in review: extreme settings and the fail-open fallback.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use support::{RedisServer, never_ends, take_place};
use tower::{Layer, ServiceExt};
use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisStore};

/// A concurrency limit too large for a local semaphore (tokio's hold at
/// most `usize::MAX >> 3` permits), say `usize::MAX` for "no limit here",
/// panicked in `build` when failing open; it builds, and the local share
/// admits while Redis is down.
#[tokio::test]
async fn a_huge_concurrency_limit_failing_open_builds_and_admits() {
    for share in [1.0, 0.5] {
        let built = std::panic::catch_unwind(|| {
            RedisConcurrencyLimitLayer::builder(
                RedisStore::open("redis://127.0.0.1:1/").unwrap(),
                "huge",
                usize::MAX,
            )
            .fail_open(share)
            .build()
        });
        let layer = built.expect("build panicked").unwrap();
        // Nothing listens on port 1: the local share decides.
        let mut svc = layer.layer(never_ends());
        tokio::time::timeout(Duration::from_secs(10), svc.ready())
            .await
            .expect("the local share answers")
            .unwrap();
    }
}

/// The same limit against a real Redis: the script compares with it in a
/// Lua double, and admits.
#[tokio::test]
async fn a_huge_concurrency_limit_admits_on_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let layer = RedisConcurrencyLimitLayer::builder(store, "huge-remote", usize::MAX)
        .lease(Duration::from_secs(30))
        .fail_closed()
        .build()
        .unwrap();
    let mut a = layer.layer(never_ends());
    let mut b = layer.layer(never_ends());
    take_place(&mut a).await;
    take_place(&mut b).await;
    redis.until_holders("huge-remote", 2).await;
    drop((a, b));
    redis.until_holders("huge-remote", 0).await;
}

/// Failing open, the local bucket holds `burst × share` tokens: 2 of 10 at
/// a quarter. A request costing 5, which the shared limit admits, was
/// refused with `CostExceedsBurst` (5 over a burst of 2) for as long as
/// Redis was down. A waiting caller now takes its cost in turns of at most
/// the local burst, at the local rate (10 per 4 s: 0.4 s a token).
#[tokio::test(start_paused = true)]
async fn failing_open_a_cost_above_the_local_burst_waits_at_the_local_rate() {
    use tower_fanout_redis::RedisRateLimitLayer;
    let layer = RedisRateLimitLayer::builder(
        RedisStore::open("redis://127.0.0.1:1/").unwrap(),
        "costly",
        10,
        Duration::from_secs(1),
    )
    .cost(|n: &u32| *n)
    .fail_open(0.25)
    .build()
    .unwrap();
    let svc = layer.layer(tower::service_fn(|_: u32| async {
        Ok::<_, std::convert::Infallible>(())
    }));
    // 2 tokens at once, then 3 more at 0.4 s each.
    let start = tokio::time::Instant::now();
    svc.clone().oneshot(5).await.unwrap();
    let first = start.elapsed();
    assert!(first >= Duration::from_millis(1200), "{first:?}");
    assert!(first < Duration::from_millis(2000), "{first:?}");
    // The next 5 tokens take 2 s: the local rate holds.
    let start = tokio::time::Instant::now();
    svc.clone().oneshot(5).await.unwrap();
    let second = start.elapsed();
    assert!(second >= Duration::from_millis(2000), "{second:?}");
    assert!(second < Duration::from_millis(3000), "{second:?}");
}

/// A response future polled again after its answer answers with an error,
/// as core's do, instead of polling a finished `async` future again (the
/// rate limit's boxed decision and the concurrency limit's inner call
/// both panicked there).
#[tokio::test]
async fn response_futures_polled_after_their_answer_answer_an_error() {
    use std::task::Poll;
    use tower::Service;
    use tower_fanout_redis::RedisRateLimitLayer;

    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let inner = tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(7) });
    let rate = RedisRateLimitLayer::builder(store.clone(), "again", 10, Duration::from_secs(1))
        .fail_closed()
        .build()
        .unwrap()
        .layer(inner);
    let limit = RedisConcurrencyLimitLayer::builder(store, "again", 2)
        .fail_closed()
        .build()
        .unwrap()
        .layer(inner);
    let futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>> = vec![
        Box::pin(rate.clone().ready_oneshot().await.unwrap().call(())),
        Box::pin(limit.clone().ready_oneshot().await.unwrap().call(())),
    ];
    for mut fut in futures {
        let answer: Result<i32, tower_fanout_core::BoxError> =
            std::future::poll_fn(|cx| fut.as_mut().poll(cx)).await;
        assert_eq!(answer.unwrap(), 7);
        let again = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        match again {
            Poll::Ready(Err(e)) => {
                assert!(e.to_string().contains("polled after completion"), "{e}")
            }
            other => panic!("{:?}", other.map(|r| r.is_ok())),
        }
    }
}
