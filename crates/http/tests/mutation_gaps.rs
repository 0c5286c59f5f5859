//! Tests written in a manual mutation-testing pass: each one fails on a small
//! deliberate change to the source that every other test let through (named
//! in its doc comment), and passes on the code as it is.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt, service_fn};
use tower_fanout_core::error::RateLimited;
use tower_fanout_http::guard::is_forbidden;
use tower_fanout_http::headers;
use tower_fanout_http::retry::RetryLayer;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The edges of the ranges the guard refuses, each of which a one-character
/// change let through: CGNAT's last /16 (100.127/16, mutant `64..127`),
/// benchmarking's second /16 (198.19/15, mutant dropping `b == 19`), and
/// Teredo (2001::/32, mutant dropping the line), with their public
/// neighbours still passing.
#[test]
fn guard_refuses_the_edges_of_its_ranges() {
    for s in [
        "100.127.255.255",
        "198.18.0.1",
        "198.19.255.254",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001::1",
        "::ffff:100.127.0.1",
        "::ffff:198.19.0.1",
    ] {
        assert!(is_forbidden(ip(s)), "{s} should be refused");
    }
    for s in [
        "100.63.255.255",
        "198.17.255.255",
        "198.20.0.1",
        "2001:4860:4860::8888",
    ] {
        assert!(!is_forbidden(ip(s)), "{s} should pass");
    }
}

/// `Retry-After` accepts a wait of exactly one day (the bound is
/// inclusive) and nothing past it. Killed mutant: `*d < MAX_WAIT` in
/// `headers::retry_after`.
#[test]
fn retry_after_takes_exactly_one_day() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let day = Duration::from_secs(86_400);
    assert_eq!(
        headers::retry_after(&HeaderValue::from_static("86400"), now),
        Some(day)
    );
    assert_eq!(
        headers::retry_after(&HeaderValue::from_static("86401"), now),
        None
    );
}

/// A reset of exactly 10⁹ is an epoch time (2001-09-09), not a delta of 31
/// years: already past, so zero. Killed mutant: `n > EPOCH_THRESHOLD_NANOS`
/// in `headers::reset`, which read it as a delta (past the bound: `None`).
#[test]
fn a_reset_at_the_epoch_threshold_is_an_epoch_time() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(headers::reset("1000000000", now), Some(Duration::ZERO));
    // One below is a delta, past the one-day bound.
    assert_eq!(headers::reset("999999999", now), None);
    // An epoch time 30 s ahead.
    assert_eq!(
        headers::reset("1700000030", now),
        Some(Duration::from_secs(30))
    );
}

/// A `Retry-After` equal to the cap is waited for (the table: "≤ the cap:
/// wait that long, retry"); only a longer one fails with `RateLimited`.
/// Killed mutant: `d >= settings.max_wait` in the retry loop.
#[tokio::test(start_paused = true)]
async fn a_retry_after_equal_to_the_cap_is_waited_for() {
    for (after, retried) in [("5", true), ("6", false)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = service_fn({
            let calls = calls.clone();
            move |_: Request<String>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let resp = if n == 0 {
                        Response::builder()
                            .status(429)
                            .header("retry-after", after)
                            .body(())?
                    } else {
                        Response::new(())
                    };
                    Ok::<_, http::Error>(resp)
                }
            }
        });
        let retry = RetryLayer::builder()
            .max_wait(Duration::from_secs(5))
            .build()
            .unwrap();
        let start = tokio::time::Instant::now();
        let outcome = retry
            .layer(server)
            .oneshot(Request::new(String::new()))
            .await;
        if retried {
            assert_eq!(outcome.unwrap().status(), 200);
            assert_eq!(start.elapsed(), Duration::from_secs(5));
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        } else {
            let err = outcome.unwrap_err();
            let limited = err.downcast_ref::<RateLimited>().unwrap();
            assert_eq!(limited.retry_after(), Duration::from_secs(6));
            assert!(!limited.is_past_deadline(), "over the cap, no deadline");
            assert_eq!(start.elapsed(), Duration::ZERO);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }
}

/// A connection that could not be made means the request never left, so
/// even a POST is retried (table: "no connection | any | backoff, retry").
/// Over a real hyper-util client to a loopback port nobody listens on.
/// Killed mutant: the connect exception dropped (`if idempotent` alone),
/// which sent the POST once.
#[tokio::test]
async fn a_post_that_never_connected_is_retried() {
    // Nothing listens on this port, kept bound until the test ends.
    let (addr, _bound) = support::closed_port();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = service_fn({
        let attempts = attempts.clone();
        move |req: Request<Full<Bytes>>| {
            attempts.fetch_add(1, Ordering::SeqCst);
            client.request(req)
        }
    });
    let retry = RetryLayer::builder()
        .max_retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    let req = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let err = retry.layer(counted).oneshot(req).await.unwrap_err();
    let h = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .unwrap();
    assert!(h.is_connect(), "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "first try + 2 retries");
}
