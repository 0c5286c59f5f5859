//! The adaptive limit's tracing events, in a binary of their own.
//!
//! tracing caches a callsite's interest process-wide when the callsite is
//! first hit, and while fewer than two dispatchers are registered it asks
//! the hitting thread's own default, outside its registry lock. A test of
//! the same binary reaching the limit-change event first, on a thread with
//! no subscriber, could store "never" for it even after this test's
//! subscriber was set up (tokio-rs/tracing#3611; 1 run in ~500 of the
//! contract tests' binary under load, and a window remained with a second
//! dispatcher held by the test). Alone in its binary, no other test can
//! reach the callsite first.
#![cfg(feature = "adaptive")]
#![allow(clippy::unwrap_used)]

mod support;
use support::{aimd, status};

use std::sync::{Arc, Mutex};

use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::adaptive::AdaptiveLimitLayer;

/// A tiny subscriber that keeps the fields of each event.
#[derive(Default, Clone)]
struct Capture(Arc<Mutex<Vec<EventFields>>>);

type EventFields = Vec<(String, String)>;

struct Fields<'a>(&'a mut Vec<(String, String)>);
impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn every_change_is_a_tracing_event() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let layer = AdaptiveLimitLayer::new(aimd(10));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|()| async {
            Ok::<_, std::convert::Infallible>(status(503))
        }));
    svc.oneshot(()).await.unwrap();
    let events = capture.0.lock().unwrap();
    let change = events
        .iter()
        .find(|f| f.iter().any(|(k, _)| k == "limit.old"))
        .expect("a limit change event");
    let get = |k: &str| change.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("limit.old").as_deref(), Some("10"));
    assert_eq!(get("limit.new").as_deref(), Some("9"));
    assert_eq!(get("reason").as_deref(), Some("\"overload\""));
}
