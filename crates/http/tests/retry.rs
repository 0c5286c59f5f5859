//! Retry-After timing on the paused clock, against a real server.
//!
//! Why this shape: on tokio's paused clock the runtime jumps to the next
//! timer whenever it is idle, including while it waits on a socket. A client
//! with its own timers (connect timeout, pool reaper, attempt timeout) would
//! see them fire while the server's bytes are still on the way. So the
//! server runs on its own thread and runtime (real clock), and the
//! `RetryLayer` under test drives a `tower::service_fn` that forwards to it
//! with a bare hyper-util client that sets no timers. While a request is in
//! flight no timer is pending, so the paused clock stands still; once the
//! retry layer sleeps, its sleep is the only timer, and the clock jumps
//! exactly to it. The attempts' timestamps are then exact.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use support::{Chunks, counted, respond, serve_on_thread, through_retry};
use tower_fanout_core::error::RateLimited;
use tower_fanout_http::retry::RetryLayer;

/// A server answering each request with the next status and `Retry-After` of `script`.
fn scripted(script: Vec<(u16, Option<String>)>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let script = Arc::new(script);
    let (counting, hits) = counted(move |n| {
        let (status, after) = script.get(n).cloned().unwrap_or((200, None));
        async move {
            let mut r = respond(status);
            if let Some(after) = after {
                r = r.header("retry-after", after);
            }
            r.body(Chunks::full("done")).unwrap()
        }
    });
    let addr = serve_on_thread(counting);
    (addr, hits)
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_waited_exactly() {
    let (addr, hits) = scripted(vec![(429, Some("2".into()))]);
    let (outcome, attempts) = through_retry(&RetryLayer::default(), addr, http::Method::POST).await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Retried after 2 s on the paused clock, not a nanosecond before.
    assert_eq!(attempts, [Duration::ZERO, Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_honoured() {
    // An HTTP-date has whole seconds, and so has the `Date` hyper's server
    // puts on its answer: the layer waits from the answer's `Date` (the
    // server's clock) to the date: 3 s, or 2 s if the server's second
    // ticked between `before` and its answer (1 s if the answer took over
    // a second, under load). Whole seconds either way: read against the
    // client's wall clock, the wait shrank by however long the round trip
    // took.
    let before = SystemTime::now();
    let at = httpdate::fmt_http_date(before + Duration::from_secs(3));
    let (addr, _) = scripted(vec![(503, Some(at))]);
    let (outcome, attempts) = through_retry(&RetryLayer::default(), addr, http::Method::POST).await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(attempts.len(), 2);
    // The paused clock jumps to the sleep's deadline rounded up to the
    // timer's 1 ms tick.
    let waited = attempts[1];
    assert!(
        [1, 2, 3].into_iter().any(|s| {
            let s = Duration::from_secs(s);
            waited >= s && waited <= s + Duration::from_millis(1)
        }),
        "{attempts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_retry_waits_what_its_answer_says() {
    let (addr, hits) = scripted(vec![
        (429, Some("1".into())),
        (503, Some("4".into())),
        (429, Some("0".into())),
    ]);
    let (outcome, attempts) = through_retry(&RetryLayer::default(), addr, http::Method::GET).await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    let secs = |s| Duration::from_secs(s);
    assert_eq!(attempts, [secs(0), secs(1), secs(5), secs(5)]);
}

#[tokio::test(start_paused = true)]
async fn past_the_cap_returns_rate_limited_at_once() {
    let (addr, hits) = scripted(vec![(429, Some("90".into()))]);
    let retry = RetryLayer::builder()
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let (outcome, attempts) = through_retry(&retry, addr, http::Method::GET).await;
    let err = outcome.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        Duration::from_secs(90)
    );
    assert_eq!(attempts, [Duration::ZERO]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn backoff_for_502_on_get_only_and_retries_run_out() {
    let (addr, hits) = scripted(vec![(502, None); 10]);
    let retry = RetryLayer::builder()
        .max_retries(2)
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .unwrap();
    let (outcome, attempts) = through_retry(&retry, addr, http::Method::GET).await;
    assert_eq!(
        outcome.unwrap().status(),
        502,
        "the last answer, once retries run out"
    );
    assert_eq!(attempts.len(), 3);
    // Jittered within the upper half of 100 ms, then of 200 ms.
    let (d1, d2) = (attempts[1] - attempts[0], attempts[2] - attempts[1]);
    assert!(
        d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
        "{d1:?}"
    );
    assert!(
        d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200),
        "{d2:?}"
    );

    let before = hits.load(Ordering::SeqCst);
    let (outcome, attempts) = through_retry(&retry, addr, http::Method::POST).await;
    assert_eq!(outcome.unwrap().status(), 502);
    assert_eq!(attempts.len(), 1, "a POST is not retried on 502");
    assert_eq!(hits.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_a_retry_storm() {
    // Every answer is a 503 with Retry-After: 1. With a budget of 1 retry a
    // second and none from deposits, 20 requests get far fewer than 20 retries.
    let (addr, hits) = scripted(vec![(503, Some("1".into())); 1000]);
    let retry = RetryLayer::builder().budget(1, 0.0).build().unwrap();
    let mut total_attempts = 0;
    for _ in 0..20 {
        let (_, attempts) = through_retry(&retry, addr, http::Method::GET).await;
        total_attempts += attempts.len();
    }
    let retries = total_attempts - 20;
    assert!(retries < 20, "{retries} retries for 20 requests");
    assert_eq!(hits.load(Ordering::SeqCst), total_attempts);
}

/// A `Retry-After` longer than a day is still a `Retry-After` past the cap:
/// the request fails at once with `RateLimited`, it is not retried after a
/// 100 ms backoff as if the server had said nothing.
#[tokio::test(start_paused = true)]
async fn retry_after_beyond_a_day_is_rate_limited_not_hammered() {
    for after in ["172800", "99999999999999999999"] {
        let (addr, hits) = scripted(vec![(429, Some(after.into()))]);
        let (outcome, _) = through_retry(&RetryLayer::default(), addr, http::Method::GET).await;
        let err = outcome.unwrap_err();
        let limited = err
            .downcast_ref::<RateLimited>()
            .unwrap_or_else(|| panic!("Retry-After: {after}: {err}"));
        assert!(limited.retry_after() >= Duration::from_secs(172_800));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "Retry-After: {after}");
    }
}
