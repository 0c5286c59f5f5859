//! A host held by an earlier answer (a long `Retry-After`, a budget read as
//! spent) refuses a later call to any of its paths; the refusal says so, and
//! names the setting that decided not to wait, on a real loopback server.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Chunks, handler, respond, serve};
use tower_fanout_http::Client;

/// `/quota` answers 429 with `Retry-After: {after}`, or (with `after` 0) a
/// 200 saying no budget remains for 120 s; `/other` answers 200. Counts the
/// requests it gets.
async fn quota_server(after: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let addr = serve(handler(move |req| {
        counted.fetch_add(1, Ordering::SeqCst);
        let quota = req.uri().path() == "/quota";
        async move {
            match (quota, after) {
                (true, "0") => respond(200)
                    .header("x-ratelimit-remaining", "0")
                    .header("x-ratelimit-reset", "120"),
                (true, after) => respond(429).header("retry-after", after),
                (false, _) => respond(200),
            }
            .body(Chunks::full("answer"))
            .unwrap()
        }
    }))
    .await;
    (addr, hits)
}

/// Asserts the refusal of a call to `/other` after `/quota`'s answer names
/// the held host and the earlier answer as the cause, and the way out.
fn assert_names_the_hold(err: &tower_fanout_http::Error, addr: SocketAddr) -> String {
    assert!(err.is_rate_limited(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("{addr} is held")), "{text}");
    assert!(text.contains("earlier answer"), "{text}");
    assert!(text.contains("learn_rate_limits"), "{text}");
    text
}

/// Retries on: the hold is longer than the retry layer's `max_wait`, which
/// the message names, as it names the hold; from a `Retry-After` and from a
/// budget read as spent alike.
#[tokio::test]
async fn a_hold_past_the_retry_layers_max_wait_names_the_hold_and_max_wait() {
    for after in ["120", "0"] {
        let (addr, hits) = quota_server(after).await;
        let client = Client::builder().build().unwrap();
        let first = client.get(&format!("http://{addr}/quota")).await;
        if after == "0" {
            assert_eq!(first.unwrap().status(), 200);
        } else {
            assert!(first.unwrap_err().is_rate_limited());
        }
        let err = client
            .get(&format!("http://{addr}/other"))
            .await
            .unwrap_err();
        let text = assert_names_the_hold(&err, addr);
        assert!(text.contains("max_wait of 60 s"), "{text}");
        assert!(err.retry_after().unwrap() > Duration::from_secs(100));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "/other never left");
    }
}

/// Retries off: the first 429 comes back as it is, and the hold the next
/// call meets is refused past the fixed cap that `no_retry` leaves, which
/// the message names as such, not as a retry layer's.
#[tokio::test]
async fn with_retries_off_a_hold_does_not_blame_a_retry_layer() {
    let (addr, hits) = quota_server("120").await;
    let client = Client::builder().no_retry().build().unwrap();
    let first = client.get(&format!("http://{addr}/quota")).await.unwrap();
    assert_eq!(first.status(), 429);
    let err = client
        .get(&format!("http://{addr}/other"))
        .await
        .unwrap_err();
    let text = assert_names_the_hold(&err, addr);
    assert!(!text.contains("retry layer"), "{text}");
    assert!(text.contains("no_retry"), "{text}");
    assert!(text.contains("max_wait"), "{text}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "/other never left");

    // Without learning, the other path is not held.
    let client = Client::builder()
        .no_retry()
        .learn_rate_limits(false)
        .build()
        .unwrap();
    assert_eq!(
        client
            .get(&format!("http://{addr}/quota"))
            .await
            .unwrap()
            .status(),
        429
    );
    let other = client.get(&format!("http://{addr}/other")).await.unwrap();
    assert_eq!(other.status(), 200);
}

/// A hold within `max_wait` that would end past the call's deadline names
/// the deadline and the hold, not `max_wait`.
#[tokio::test]
async fn a_hold_past_the_deadline_names_the_hold_and_the_deadline() {
    let (addr, hits) = quota_server("30").await;
    let client = Client::builder()
        .no_retry()
        .deadline(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    let first = client.get(&format!("http://{addr}/quota")).await.unwrap();
    assert_eq!(first.status(), 429);
    let err = client
        .get(&format!("http://{addr}/other"))
        .await
        .unwrap_err();
    let text = assert_names_the_hold(&err, addr);
    assert!(text.contains("past the call's deadline"), "{text}");
    assert!(!text.contains("max_wait"), "{text}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "/other never left");
}
