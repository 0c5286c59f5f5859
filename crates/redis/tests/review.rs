//! Permits and probes in the corners: drops while a decision is in flight,
//! and calls made outside a Tokio runtime.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use support::{RedisServer, never_ends};
use tower::{Layer, ServiceExt};
use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisStore};

/// Checks, for a while, that the holders set stays empty (a leaked holder
/// would stay for the whole 30 s lease).
async fn stays_empty(redis: &RedisServer, name: &str) {
    for _ in 0..20 {
        assert_eq!(redis.holders(name).await, 0, "a holder leaked");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn layer(redis: &RedisServer, name: &str, timeout: Duration) -> RedisConcurrencyLimitLayer {
    let store = RedisStore::builder(redis.url())
        .timeout(timeout)
        .build()
        .unwrap();
    RedisConcurrencyLimitLayer::builder(store, name, 1)
        .lease(Duration::from_secs(30))
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_service_dropped_while_its_acquire_is_in_flight_leaves_no_holder() {
    let redis = RedisServer::start();
    // A long timeout: the drop comes first, with the script sent.
    let svc = layer(&redis, "drop-in-flight", Duration::from_secs(5)).layer(never_ends());
    // Connect and load the script, so that the frozen Redis gets EVALSHA.
    let mut warm = svc.clone();
    warm.ready().await.unwrap();
    drop(warm);
    redis.until_holders("drop-in-flight", 0).await;

    redis.pause();
    let mut pending = svc.clone();
    let task = tokio::spawn(async move {
        pending.ready().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished());
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    redis.resume();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stays_empty(&redis, "drop-in-flight").await;
    // And the permit is free.
    svc.clone().ready().await.unwrap();
}

#[tokio::test]
async fn an_acquire_that_times_out_leaves_no_holder() {
    let redis = RedisServer::start();
    // 1 s: the warm-up acquire must be answered within it on a loaded
    // machine; the paused Redis below answers nothing, whatever the timeout.
    let svc = layer(&redis, "timed-out", Duration::from_secs(1)).layer(never_ends());
    let mut warm = svc.clone();
    warm.ready().await.unwrap();
    drop(warm);
    redis.until_holders("timed-out", 0).await;

    redis.pause();
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let err = err.downcast_ref::<tower_fanout_redis::Error>().unwrap();
    assert!(err.is_unavailable(), "{err}");
    redis.resume();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stays_empty(&redis, "timed-out").await;
}

/// Polls `future` once, on this thread, with no runtime.
fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    let mut future = pin!(future);
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn a_call_outside_a_runtime_does_not_hold_the_probe() {
    let mut redis = RedisServer::start();
    // The reconnect after the restart must be answered within the timeout:
    // 2 s, not 200 ms, on a loaded machine. (A killed Redis refuses at once.)
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(2))
        .probe_interval(Duration::from_millis(300))
        .build()
        .unwrap();
    let handle = RedisConcurrencyLimitLayer::builder(store, "probe", 1)
        .fail_closed()
        .build()
        .unwrap()
        .handle();
    handle.in_flight().await.unwrap();

    // Redis goes down: a failure opens the probe interval.
    redis.kill();
    assert!(handle.in_flight().await.unwrap_err().is_unavailable());
    redis.restart();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // The interval is over. A call from a thread with no runtime is a
    // configuration error: it must not claim the probe...
    let outside = handle.clone();
    let answer = std::thread::spawn(move || match poll_once(outside.in_flight()) {
        Poll::Ready(result) => result.map(drop).map_err(|err| err.is_config()),
        Poll::Pending => panic!("outside a runtime the call must fail at once"),
    })
    .join()
    .unwrap();
    assert_eq!(answer, Err(true));
    // ...so the next call in the runtime asks Redis, which is back.
    assert_eq!(handle.in_flight().await.unwrap(), 0);
}
