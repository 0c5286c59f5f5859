//! Regression tests from a review of the client preset: learned holds,
//! bodiless answers, redirected requests and retries, against real servers.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{Chunks, counted, handler, respond};
use tower::ServiceExt;
use tower_fanout_http::retry::RetryLayer;

/// A 429 whose `Retry-After` is past a day holds the host like a shorter one
/// past the cap does: the next call fails with `RateLimited` without leaving.
#[tokio::test]
async fn a_retry_after_beyond_a_day_is_learned_too() {
    for after in ["90", "172800", "99999999999999999999"] {
        let (counting, hits) = counted(move |_| async move {
            respond(429)
                .header("retry-after", after)
                .body(Chunks::full("later"))
                .unwrap()
        });
        let addr = support::serve(counting).await;
        let client = tower_fanout_http::Client::builder().build().unwrap();
        let url = format!("http://{addr}/");
        for _ in 0..2 {
            let err = client.get(&url).await.unwrap_err();
            assert!(err.is_rate_limited(), "Retry-After: {after}: {err}");
            assert!(err.retry_after().unwrap() >= Duration::from_secs(89));
            // Past the cap (no deadline here): raising the cap would wait.
            assert!(err.to_string().contains("max_wait"), "{err}");
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "Retry-After: {after}: the second call never left"
        );
    }
}

/// Bodiless answers (HEAD, 204, 304) are read as empty, whatever their
/// `Content-Length` and `Content-Encoding` say.
#[tokio::test]
async fn bodiless_answers_with_length_and_encoding_are_empty() {
    let addr = support::serve(handler(move |req| async move {
        let status = if req.uri().path() == "/204" { 204 } else { 200 };
        let mut r = respond(status).header("content-encoding", "gzip");
        if status == 200 {
            r = r.header("content-length", "100000000");
        }
        r.body(Chunks::empty()).unwrap()
    }))
    .await;
    let client = tower_fanout_http::Client::builder()
        .max_response_body(1024)
        .no_retry()
        .build()
        .unwrap();
    let head = Request::head(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.clone().oneshot(head).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.body().is_empty());
    let resp = client.get(&format!("http://{addr}/204")).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.body().is_empty());
}

/// A POST answered with a 303 has run: when the redirected GET then fails
/// (no connection, or a 429 with `Retry-After`), the retry must not start
/// again from the POST and run it again.
#[tokio::test]
async fn a_post_that_was_redirected_is_not_sent_again_by_a_retry() {
    // Nothing listens on this port, kept bound until the test ends.
    let (closed, _bound) = support::closed_port();
    let limited = support::serve(handler(|_| async {
        respond(429)
            .header("retry-after", "0")
            .body(Chunks::full("later"))
            .unwrap()
    }))
    .await;
    for target in [closed, limited] {
        let posts = Arc::new(AtomicUsize::new(0));
        let gets = Arc::new(AtomicUsize::new(0));
        let (p, g) = (posts.clone(), gets.clone());
        let origin = support::serve(handler(move |req| {
            if req.method() == http::Method::POST {
                p.fetch_add(1, Ordering::SeqCst);
            } else {
                g.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                respond(303)
                    .header("location", format!("http://{target}/done"))
                    .body(Chunks::empty())
                    .unwrap()
            }
        }))
        .await;
        let client = tower_fanout_http::Client::builder()
            .retry(
                RetryLayer::builder()
                    .backoff(Duration::from_millis(1), Duration::from_millis(2))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let post = Request::post(format!("http://{origin}/order"))
            .body(Full::new(Bytes::from_static(b"buy one")))
            .unwrap();
        let outcome = client.clone().oneshot(post).await;
        assert_eq!(posts.load(Ordering::SeqCst), 1, "{target}: {outcome:?}");
        // A GET that was redirected is still retried as before.
        let get = Request::get(format!("http://{origin}/order"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = client.clone().oneshot(get).await;
        assert_eq!(gets.load(Ordering::SeqCst), 4, "{target}: {outcome:?}");
    }
}

/// A port past 65535 is no port to `http::Uri` (`port_u16()` is `None`),
/// and hyper-util then dialled the scheme's default port: a request for
/// `http://host:99999/` went to `http://host:80/`. It is refused as an
/// invalid request instead, with the port named, and not retried. A
/// redirect to such a URI is not followed (tower-http does not resolve its
/// location): the call fails, naming the `Location`.
#[tokio::test(start_paused = true)]
async fn a_port_past_65535_is_refused_not_sent_to_the_default_port() {
    let addr = support::serve(handler(|_| async {
        respond(302)
            .header("location", "http://127.0.0.1:70000/next")
            .body(Chunks::full(""))
            .unwrap()
    }))
    .await;
    let client = tower_fanout_http::Client::builder()
        .address_guard(false)
        .build()
        .unwrap();
    for url in [
        "http://127.0.0.1:99999/",
        "http://u:p@127.0.0.1:4294967377/",
    ] {
        let err = client.get(url).await.unwrap_err();
        assert!(err.is_invalid_request(), "{url}: {err:?}");
        assert!(err.to_string().contains("port"), "{url}: {err}");
        assert!(err.to_string().contains("out of range"), "{url}: {err}");
    }
    let err = client
        .get(&format!("http://{addr}/redirect"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"not a valid URI: "http://127.0.0.1:70000/next""#),
        "{err}"
    );
}
