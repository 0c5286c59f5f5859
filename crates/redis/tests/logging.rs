//! Failing open is logged: one warning when an outage starts, one event
//! when it ends, whatever the number of requests in between.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use support::{RedisServer, echo_unit, outage_store};
use tower::{Layer, ServiceExt};
use tower_fanout_redis::RedisRateLimitLayer;

/// Records each event's level and message.
#[derive(Clone, Default)]
struct Events(std::sync::Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);

impl Events {
    fn count(&self, level: tracing::Level, needle: &str) -> usize {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|(l, m)| *l == level && m.contains(needle))
            .count()
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), message.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// The only test of this binary, with a global subscriber: tracing caches
// per-callsite interest process-wide, so a thread-local subscriber beside
// tests running on other threads can miss events.
#[tokio::test]
async fn failing_open_warns_once_per_outage_and_says_when_it_is_over() {
    let events = Events::default();
    tracing::subscriber::set_global_default(events.clone()).unwrap();
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
    assert_eq!(events.count(tracing::Level::WARN, "failing open"), 1);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.count(tracing::Level::INFO, "redis reachable again") == 0 {
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
    assert_eq!(events.count(tracing::Level::WARN, "failing open"), 1);
}
