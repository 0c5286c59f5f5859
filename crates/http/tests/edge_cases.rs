//! Regression tests for edge cases found in review: settings at the end of
//! their range.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Chunks, handler, respond};

/// Panics anywhere in this test binary, background tasks included (a panic
/// in a spawned task is caught by the runtime and never reaches the test).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// `pool_idle_timeout(Some(Duration::MAX))` ("keep idle connections for
/// ever") must not panic: hyper-util's idle sweeper adds the timeout to an
/// `Instant`, which overflowed in the task it spawns once a connection went
/// idle (an abort under `panic = "abort"`).
#[tokio::test]
async fn an_idle_timeout_of_duration_max_does_not_panic() {
    count_panics();
    let addr = support::serve(handler(|_| async {
        respond(200).body(Chunks::full("ok")).unwrap()
    }))
    .await;
    for forever in [Duration::MAX, Duration::from_secs(u64::MAX)] {
        let client = tower_fanout_http::Client::builder()
            .pool_idle_timeout(Some(forever))
            .build()
            .unwrap();
        // The first answer puts its connection in the pool (and starts the
        // sweeper); the second reuses it, yielding to the sweeper on the way.
        for _ in 0..2 {
            let resp = client.get(&format!("http://{addr}/")).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a background task panicked"
    );
}
