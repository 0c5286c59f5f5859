//! Failing open is logged: one warning when an outage starts, one event
//! when it ends, whatever the number of requests in between.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use support::{Events, RedisServer, echo_unit, outage_store};
use tower::{Layer, ServiceExt};
use tower_fanout_redis::RedisRateLimitLayer;

// The only test of this binary, with a global subscriber: tracing caches
// per-callsite interest process-wide, so a thread-local subscriber beside
// tests running on other threads can miss events.
#[tokio::test]
async fn failing_open_warns_once_per_outage_and_says_when_it_is_over() {
    let events = Events::global();
    let mut redis = RedisServer::start();
    let svc =
        RedisRateLimitLayer::builder(outage_store(&redis), "warned", 1000, Duration::from_secs(1))
            .fail_open(0.5)
            .build()
            .unwrap()
            .layer(echo_unit());
    svc.clone().oneshot(()).await.unwrap();
    redis.kill();
    for _ in 0..5 {
        svc.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(events.count(tracing::Level::WARN, &["failing open"]), 1);
    // The warning says why, with the error's chain of causes.
    assert_eq!(
        events.count(
            tracing::Level::WARN,
            &["failing open", "error=redis limit unavailable"]
        ),
        1
    );
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.count(tracing::Level::INFO, &["redis reachable again"]) == 0 {
        assert!(
            Instant::now() < deadline,
            "no recovery event: {:?}",
            events
                .0
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
        );
        svc.clone().oneshot(()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once: the decisions after the recovery say nothing more.
    for _ in 0..5 {
        svc.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(
        events.count(tracing::Level::INFO, &["redis reachable again"]),
        1
    );
    assert_eq!(events.count(tracing::Level::WARN, &["failing open"]), 1);
}
