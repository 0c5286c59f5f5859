//! Regression tests from a review of the retry decisions, on the paused
//! clock against a real server (see `retry.rs` for why this shape).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{Chunks, handler, respond, serve_on_thread};
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_fanout_core::error::RateLimited;
use tower_fanout_http::retry::RetryLayer;

/// A server answering every request with `status` and `Retry-After: after`.
fn always(status: u16, after: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = serve_on_thread(handler(move |_| {
        h.fetch_add(1, Ordering::SeqCst);
        async move {
            respond(status)
                .header("retry-after", after)
                .body(Chunks::full("later"))
                .unwrap()
        }
    }));
    (addr, hits)
}

async fn send(retry: RetryLayer, addr: std::net::SocketAddr) -> Result<Response<Bytes>, BoxError> {
    let raw: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let forward = service_fn(move |req: Request<Full<Bytes>>| {
        let raw = raw.clone();
        async move {
            let resp = raw.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::from_parts(parts, body))
        }
    });
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    retry.layer(forward).oneshot(req).await
}

/// A `Retry-After` longer than a day is still a `Retry-After` past the cap:
/// the request fails at once with `RateLimited`, it is not retried after a
/// 100 ms backoff as if the server had said nothing.
#[tokio::test(start_paused = true)]
async fn retry_after_beyond_a_day_is_rate_limited_not_hammered() {
    for after in ["172800", "99999999999999999999"] {
        let (addr, hits) = always(429, after);
        let err = send(RetryLayer::default(), addr).await.unwrap_err();
        let limited = err
            .downcast_ref::<RateLimited>()
            .unwrap_or_else(|| panic!("Retry-After: {after}: {err}"));
        assert!(limited.retry_after() >= Duration::from_secs(172_800));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "Retry-After: {after}");
    }
}

/// A 429 whose `Retry-After` is past a day holds the host like a shorter one
/// past the cap does: the next call fails with `RateLimited` without leaving.
#[tokio::test]
async fn a_retry_after_beyond_a_day_is_learned_too() {
    for after in ["90", "172800", "99999999999999999999"] {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let addr = support::serve(handler(move |_| {
            h.fetch_add(1, Ordering::SeqCst);
            async move {
                respond(429)
                    .header("retry-after", after)
                    .body(Chunks::full("later"))
                    .unwrap()
            }
        }))
        .await;
        let client = tower_fanout_http::Client::builder().build().unwrap();
        let url = format!("http://{addr}/");
        for _ in 0..2 {
            let err = client.get(&url).await.unwrap_err();
            assert!(err.is_rate_limited(), "Retry-After: {after}: {err}");
            assert!(err.retry_after().unwrap() >= Duration::from_secs(89));
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
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
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
