//! Requests dropped at every point of their life leave every count at rest.
//!
//! Against a hyper server on 127.0.0.1 (its own thread, on the real clock),
//! requests are dropped after each number of polls, and after each length
//! of time on the paused clock: while the request body is read, at the
//! host's gate (permit or token), holding for a learned budget, in a
//! retry's sleep (`Retry-After` or backoff), mid-attempt, mid-redirect,
//! while the response body is read. After each batch the per-host limits
//! (in flight, waiting) and the learned budgets (in flight, holding) must be
//! back at zero, and at the end a fresh request goes at once and nothing the
//! client spawned is left running.
//!
//! In the crate, not in `tests/`, because the learned budgets' counters have
//! no public handle.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_fanout_core::keyed::KeyLimit;
use tower_service::Service;

use crate::retry::RetryLayer;
use crate::{Client, Error};
use support::{Chunks, handler, respond, serve_on_thread, serve_tls_on_thread};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Serves [`answer`] over plain HTTP/1, or over TLS (HTTP/2 by ALPN), from
/// a thread of its own on the real clock.
fn server(tls: bool) -> SocketAddr {
    if tls {
        serve_tls_on_thread(answer())
    } else {
        serve_on_thread(answer())
    }
}

/// Answers by path; every request body is read first.
fn answer() -> support::Handler {
    let hits = Arc::new(AtomicUsize::new(0));
    handler(move |req: Request<hyper::body::Incoming>| {
        let n = hits.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path().to_owned();
        async move {
            let _ = req.into_body().collect().await;
            let ok = || respond(200).body(Chunks::full("ok")).unwrap();
            match path.as_str() {
                "/body" => respond(200).body(Chunks::new(4, 512, ms(2))).unwrap(),
                "/slow" => {
                    tokio::time::sleep(ms(3)).await;
                    ok()
                }
                "/after" if n.is_multiple_of(2) => respond(429)
                    .header("retry-after", "1")
                    .body(Chunks::empty())
                    .unwrap(),
                "/backoff" if n.is_multiple_of(2) => respond(503).body(Chunks::empty()).unwrap(),
                "/redirect" => respond(302)
                    .header("location", "/body")
                    .body(Chunks::empty())
                    .unwrap(),
                // A window of one request, spent until a second from now.
                "/budget" => respond(200)
                    .header("x-ratelimit-limit", "1")
                    .header("x-ratelimit-remaining", "0")
                    .header("x-ratelimit-reset", "1")
                    .body(Chunks::full("ok"))
                    .unwrap(),
                _ => ok(),
            }
        }
    })
}

/// A client with no timers of its own (the paused clock moves only for
/// its waits; no h2 pings, whose timeout the clock would reach while the
/// server's bytes are on the way), a gate of 2 at a time and 20 a second
/// per host, quick backoffs and a budget that never runs out.
fn client(pool: usize) -> Client {
    Client::builder()
        .tls_config(support::test_tls_config())
        .timeout(None)
        .connect_timeout(None)
        .pool_idle_timeout(None)
        .http2_keep_alive_interval(None)
        .pool_max_idle_per_host(pool)
        .host_default(
            KeyLimit::new()
                .concurrency(2)
                .rate(20, Duration::from_secs(1))
                .burst(2),
        )
        .retry(
            RetryLayer::builder()
                .backoff(ms(10), ms(40))
                .budget(1000, 1000.0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

type Call = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Error>> + Send>>;

/// A GET, or a POST whose body the client reads in three chunks a
/// millisecond apart (on the paused clock).
fn call(client: &Client, url: &str, post: bool) -> Call {
    let mut client = client.clone();
    if post {
        client.call(Request::post(url).body(Chunks::new(3, 64, ms(1))).unwrap())
    } else {
        client.call(Request::get(url).body(Chunks::empty()).unwrap())
    }
}

/// Polls `fut` at most `polls` times, then drops it.
async fn polled_at_most<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut left = polls;
    std::future::poll_fn(move |cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => {
            left -= 1;
            if left == 0 {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }
    })
    .await
}

/// Runs `fut`, failing the test if it takes more than 20 s of real time
/// (a thread keeps the time: a timer would move the paused clock).
async fn within_real_time<F: Future>(what: &str, fut: F) -> F::Output {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let watch = done.clone();
    std::thread::spawn(move || {
        for _ in 0..2000 {
            if watch.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(ms(10));
        }
        let _ = tx.send(());
    });
    let out = tokio::select! {
        out = fut => out,
        _ = rx => panic!("{what}: still not done after 20 s"),
    };
    done.store(true, Ordering::SeqCst);
    out
}

/// The per-host limits and the learned budgets are at rest.
fn assert_at_rest(client: &Client, hosts: &[String], when: &str) {
    for host in hosts {
        let limits = client.host_limits();
        assert_eq!(
            (limits.in_flight(host), limits.waiting(host)),
            (0, 0),
            "{when}: host {host} (in flight, waiting)"
        );
    }
    let learned = client.learned().unwrap();
    assert_eq!(
        learned.counts(),
        (0, 0),
        "{when}: learned budgets (in flight, holding)"
    );
}

const PATHS: [(&str, bool); 8] = [
    ("/ok", false),
    ("/ok", true),
    ("/slow", false),
    ("/body", false),
    ("/after", false),
    ("/backoff", false),
    ("/redirect", false),
    ("/budget", false),
];

/// Drops requests to every path after 1, 1 + `step`, ... up to 30 polls.
async fn drops_everywhere(pool: usize, tls: bool, step: usize) {
    let (a, b) = (server(tls), server(tls));
    let scheme = if tls { "https" } else { "http" };
    let client = client(pool);
    let hosts = [a.to_string(), b.to_string()];
    for (path, post) in PATHS {
        // The budget's holds on a host of their own.
        let addr = if path == "/budget" { b } else { a };
        let url = format!("{scheme}://{addr}{path}");
        for n in (1..=30).step_by(step) {
            let when = format!(
                "{} {path}, dropped after {n} polls",
                if post { "POST" } else { "GET" }
            );
            let mut batch = JoinSet::new();
            // Three dropped by polls, one by time, and one that finishes,
            // so that the gate (two at a time) keeps some waiting.
            for extra in 0..3 {
                batch.spawn(polled_at_most(call(&client, &url, post), n + extra));
            }
            let timed = tokio::time::timeout(ms(37 * n as u64), call(&client, &url, post));
            batch.spawn(async move { timed.await.ok() });
            let finished = call(&client, &url, post);
            batch.spawn(async move { Some(finished.await) });
            within_real_time(&when, async {
                while let Some(joined) = batch.join_next().await {
                    if let Some(outcome) = joined.unwrap() {
                        let resp = outcome.unwrap_or_else(|e| panic!("{when}: {e:?}"));
                        assert!(
                            matches!(resp.status().as_u16(), 200 | 429 | 503),
                            "{when}: {}",
                            resp.status()
                        );
                    }
                }
            })
            .await;
            assert_at_rest(&client, &hosts, &when);
        }
    }
    // Every hold and sleep is over, every bucket full: a fresh request to
    // each host goes at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for url in [
        format!("{scheme}://{a}/ok"),
        format!("{scheme}://{b}/budget"),
    ] {
        let start = Instant::now();
        let resp = within_real_time("a fresh request", call(&client, &url, false))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let version = if tls {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(resp.version(), version);
        assert_eq!(start.elapsed(), Duration::ZERO, "{url} waited");
    }
    assert_at_rest(&client, &hosts, "after the fresh requests");
    if pool == 0 {
        // No idle connection is kept: once each connection's task has
        // seen its last request go, nothing the client spawned is left.
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..400 {
            if metrics.num_alive_tasks() == 0 {
                break;
            }
            tokio::task::spawn_blocking(|| std::thread::sleep(ms(5)))
                .await
                .unwrap();
        }
        assert_eq!(metrics.num_alive_tasks(), 0, "tasks left running");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_dropped_anywhere_leave_every_count_at_rest() {
    drops_everywhere(32, false, 1).await;
}

#[tokio::test(start_paused = true)]
async fn requests_dropped_anywhere_leave_nothing_spawned() {
    drops_everywhere(0, false, 1).await;
}

#[tokio::test(start_paused = true)]
async fn http2_requests_dropped_anywhere_leave_every_count_at_rest() {
    drops_everywhere(32, true, 1).await;
}

/// Every fourth drop point: each request opens its own TLS connection.
#[tokio::test(start_paused = true)]
async fn http2_requests_dropped_anywhere_leave_nothing_spawned() {
    drops_everywhere(0, true, 4).await;
}

/// A response future polled again after its answer answers with an error,
/// as core's futures do, on every path: one that followed a redirect
/// polled tower-http's finished `Oneshot` again, and one that had held for
/// a learned budget resumed a finished `async` block, both panics.
#[tokio::test(start_paused = true)]
async fn a_call_polled_after_its_answer_answers_an_error() {
    let addr = server(false);
    let client = client(32);
    // The second `/budget` holds for the first one's spent window.
    for path in [
        "/",
        "/body",
        "/after",
        "/backoff",
        "/redirect",
        "/budget",
        "/budget",
    ] {
        let url = format!("http://{addr}{path}");
        let mut fut = call(&client, &url, false);
        let answer = within_real_time(path, std::future::poll_fn(|cx| fut.as_mut().poll(cx))).await;
        assert!(answer.is_ok(), "{path}: {answer:?}");
        let again = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        match again {
            Poll::Ready(Err(e)) => {
                assert!(
                    e.to_string().contains("polled after completion"),
                    "{path}: {e}"
                );
            }
            other => panic!("{path}: {:?}", other.map(|r| r.map(|r| r.status()))),
        }
    }
}
