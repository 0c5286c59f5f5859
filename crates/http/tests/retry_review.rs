//! Regression tests from a review of the retry loop, `Retry-After`, the
//! timeouts and the body cap, against real servers on 127.0.0.1.
//!
//! Timing tests run on the paused clock the way `tests/retry.rs` does: the
//! server is on its own thread and runtime, and the `RetryLayer` drives a
//! bare hyper-util client that sets no timers, so the only timer is the
//! retry's own sleep and the attempts' offsets are exact.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{scripted, stalled_post, through_retry};
use tower::ServiceExt;
use tower_fanout_http::retry::RetryLayer;

/// The budget allows `retry_percent` retries per request, whatever the
/// ratio. tower's `TpsBudget` withdrew `floor(1 / ratio)` deposits a retry,
/// so 0.6 allowed a retry for every request (100 % in a storm) and 0.35
/// one for every second request (50 %).
#[tokio::test(start_paused = true)]
async fn the_budget_keeps_the_configured_ratio_in_a_storm() {
    // Every answer is a 503 that asks for no wait: only the budget stops retries.
    let (addr, hits) = scripted(|_| (503, Some("0")));
    for (percent, expected) in [(0.6, 60), (0.35, 35), (0.2, 20)] {
        let retry = RetryLayer::builder()
            .max_retries(1)
            .budget(0, percent)
            .build()
            .unwrap();
        let before = hits.load(Ordering::SeqCst);
        for _ in 0..100 {
            let (outcome, _) = through_retry(&retry, addr, http::Method::GET).await;
            assert_eq!(outcome.unwrap().status(), 503);
        }
        let retries = hits.load(Ordering::SeqCst) - before - 100;
        assert_eq!(
            retries, expected,
            "budget {percent}: {retries} retries for 100 requests"
        );
    }
}

/// `Retry-After: 1.5` is not RFC delta-seconds, but its meaning is plain:
/// read as no `Retry-After` at all, the 429 was retried after a 50-100 ms
/// backoff, three times within the second and a half the server asked for.
#[tokio::test(start_paused = true)]
async fn a_fractional_retry_after_is_waited_not_hammered() {
    let (addr, hits) = scripted(|n| {
        if n == 0 {
            (429, Some("1.5"))
        } else {
            (200, None)
        }
    });
    let (outcome, attempts) = through_retry(&RetryLayer::default(), addr, http::Method::POST).await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(attempts, [Duration::ZERO, Duration::from_millis(1500)]);
}

/// A raw HTTP/1.1 server: request `n` (0-based) is answered with
/// `answers(n)`, written as is, and the connection is then closed. The
/// request head and any `Content-Length` body are read first, so the close
/// is a clean FIN rather than a reset over unread bytes.
fn raw_server(
    answers: impl Fn(usize) -> Vec<u8> + Send + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            let _ = stream.read_exact(&mut body);
            let n = h.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(&answers(n));
            let _ = stream.flush();
            // Dropped: the connection closes.
        }
    });
    (addr, hits)
}

/// A GET whose response is cut off mid-body (the connection closes after 10
/// of 100 announced bytes) lost its connection mid-request: it is retried
/// like one cut off before the head. It returned `is_body` at once. A POST
/// cut off the same way is not retried (it may have run).
#[tokio::test]
async fn an_idempotent_request_whose_body_is_cut_off_is_retried() {
    let answers = |n: usize| {
        if n.is_multiple_of(2) {
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nwhole".to_vec()
        }
    };
    let (addr, hits) = raw_server(answers);
    let client = tower_fanout_http::Client::builder()
        .retry(
            RetryLayer::builder()
                .backoff(Duration::from_millis(1), Duration::from_millis(2))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let resp = client.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&resp.body()[..], b"whol");
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    let post = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from_static(b"order")))
        .unwrap();
    let err = client.clone().oneshot(post).await.unwrap_err();
    assert!(err.is_body(), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "the POST went once");
}

/// A streamed request body that never ends is bounded by the client's
/// `timeout`: it is read into memory before the first attempt, outside the
/// attempt's deadline, and a request with `timeout(100 ms)` waited for ever.
#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_times_out() {
    let client = tower_fanout_http::Client::builder()
        .timeout(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let (err, took, hits) = stalled_post(client).await;
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(took, Duration::from_millis(100));
    let message = err.to_string();
    assert!(message.contains("request body"), "{message}");
    assert!(message.contains("`timeout`"), "{message}");
    assert_eq!(hits, 0, "nothing was sent");
    // The caller's stream, not the downstream's load.
    let err: &(dyn std::error::Error + 'static) = &err;
    let outcome = tower_fanout_core::classify::Classify::<http::Response<Bytes>>::classify(
        &tower_fanout_http::ClientClassify,
        Err(err),
    );
    assert_eq!(outcome, tower_fanout_core::classify::Outcome::CallerError);
}

/// The client preset deposits into the retry budget for each request, as
/// the bare layer does: with no reserve, a storm of 503s gets the share of
/// retries the budget allows (none at all if nothing were deposited).
#[tokio::test]
async fn the_client_preset_keeps_the_budget_ratio() {
    let (addr, hits) = scripted(|_| (503, Some("0")));
    let client = tower_fanout_http::Client::builder()
        .retry(
            RetryLayer::builder()
                .max_retries(1)
                .budget(0, 0.5)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // 40 requests take well under the budget's 10 s window.
    for _ in 0..40 {
        let get = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(client.clone().oneshot(get).await.unwrap().status(), 503);
    }
    let retries = hits.load(Ordering::SeqCst) - 40;
    assert_eq!(retries, 20, "budget 0.5: {retries} retries for 40 requests");
}

/// The retry layer's future polled again after its answer answers with an
/// error instead of polling its finished inner future (an `async` one
/// panics there: "`async fn` resumed after completion").
#[tokio::test(start_paused = true)]
async fn the_retry_future_polled_after_its_answer_answers_an_error() {
    use std::task::Poll;
    use tower::{Layer, Service};

    for retries in [true, false] {
        let layer = if retries {
            RetryLayer::default()
        } else {
            RetryLayer::builder().max_retries(0).build().unwrap()
        };
        let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
        svc.ready().await.unwrap();
        let mut fut = svc.call(Request::new(()));
        let answer = std::future::poll_fn(|cx| fut.as_mut().poll(cx)).await;
        assert!(answer.is_ok());
        let again = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        match again {
            Poll::Ready(Err(e)) => {
                assert!(e.to_string().contains("polled after completion"), "{e}")
            }
            other => panic!("retries {retries}: {:?}", other.map(|r| r.is_ok())),
        }
    }
}

/// A response head hyper cannot read (too many headers, a malformed status
/// line) is the server's answer, the same on every attempt: not retried. A
/// GET to a server sending 10 000 headers was sent 3 times (a user trial of
/// the CLI against a hostile server).
#[tokio::test]
async fn a_response_head_that_cannot_be_read_is_not_retried() {
    for head in [
        format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
            (0..200)
                .map(|i| format!("x-h{i}: v\r\n"))
                .collect::<String>()
        ),
        "HTTP/1.1 2000 Fine\r\ncontent-length: 0\r\n\r\n".to_owned(),
    ] {
        let (addr, hits) = raw_server(move |_| head.clone().into_bytes());
        let client = tower_fanout_http::Client::builder()
            .retry(
                RetryLayer::builder()
                    .backoff(Duration::from_millis(1), Duration::from_millis(2))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
        assert!(err.is_request(), "{err}");
        assert!(!err.to_string().contains("attempts"), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{err}");
    }
}
