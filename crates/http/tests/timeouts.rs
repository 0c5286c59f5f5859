//! The client's deadline over the whole call, and its per-host attempt
//! timeouts, against real servers on 127.0.0.1 (each on its own thread and
//! runtime, on the real clock).
//!
//! A wait that would end at or past the deadline is not slept, so those
//! tests finish at once on any clock. The tests where a deadline or a
//! timeout fires run on the paused clock: nothing answers in them, so the
//! runtime goes idle and the clock jumps to the earliest timer.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{
    Chunks, counted, failed_call, scripted, serve_on_thread, stalled_post, table_resolver,
};
use tower::{Service, ServiceExt};
use tower_fanout_http::retry::RetryLayer;
use tower_fanout_http::{Client, Deadline, TimedOut};

/// A call that must not wait (no sleep, no hold) came back well within
/// `bound` of real time, far below the wait it would otherwise have made.
fn returned_within(started: std::time::Instant, bound: Duration) {
    let took = started.elapsed();
    assert!(took < bound, "returned at once, without waiting: {took:?}");
}

fn get(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A `Retry-After` within the cap but past the deadline is not slept: the
/// call fails at once with `RateLimited` and the server's wait, as one past
/// the cap does, instead of sleeping 20 s to time out after 10.
#[tokio::test]
async fn a_retry_after_past_the_deadline_fails_at_once_as_rate_limited() {
    let (addr, hits) = scripted(|_| (429, Some("20")));
    // A GET starts its retry loop in `call`; a request with a body to read
    // starts it once the body is in: both loops know the deadline. (A fresh
    // client each: one that heard the 429 holds the host's next call.)
    let post = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    for (n, req) in [get(addr), post].into_iter().enumerate() {
        let client = Client::builder()
            .deadline(Some(Duration::from_secs(10)))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = client.oneshot(req).await.unwrap_err();
        assert!(err.is_rate_limited(), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
        // It says the deadline is why, not a cap that raising would lift.
        let message = err.to_string();
        assert!(
            message.contains("past the call's deadline") && !message.contains("max_wait"),
            "{message}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), n + 1, "no retry");
        returned_within(started, Duration::from_secs(5));
    }
}

/// A wait that ends within the deadline is still waited, and the retry made.
#[tokio::test]
async fn a_retry_after_within_the_deadline_is_still_retried() {
    let (addr, hits) = scripted(|n| {
        if n == 0 {
            (429, Some("0"))
        } else {
            (200, None)
        }
    });
    let client = Client::builder()
        .deadline(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    let response = client.oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// A backoff that would end past the deadline is not slept either: the
/// last answer goes back as it is (a backoff has no server's wait to tell).
#[tokio::test]
async fn a_backoff_past_the_deadline_returns_the_last_answer() {
    let (addr, hits) = scripted(|_| (503, None));
    let client = Client::builder()
        .deadline(Some(Duration::from_secs(5)))
        // Every backoff is 10..=20 s.
        .retry(
            RetryLayer::builder()
                .backoff(Duration::from_secs(20), Duration::from_secs(20))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let response = client.oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no retry");
    returned_within(started, Duration::from_secs(4));
}

/// A server that never answers: the call fails at its deadline, before the
/// attempt's own timeout, with a timeout that says it was the deadline, and
/// gives its place at the host's limit back.
#[tokio::test(start_paused = true)]
async fn a_call_that_runs_past_its_deadline_times_out_at_it() {
    let (silent, hits) = counted(|_| std::future::pending());
    let addr = serve_on_thread(silent);
    let client = Client::builder()
        .timeout(Some(Duration::from_secs(30)))
        .deadline(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let (err, took) = failed_call(client.clone(), get(addr)).await;
    // The paused clock jumps to the deadline, rounded up to the timer's 1 ms tick.
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_millis(2001),
        "{took:?}"
    );
    assert!(err.is_timeout(), "{err:?}");
    let timed_out = timed_out_in(&err);
    assert!(timed_out.is_deadline());
    assert_eq!(timed_out.after(), Duration::from_secs(2));
    let message = err.to_string();
    assert!(message.contains("deadline of 2000 ms"), "{message}");
    assert!(message.contains("`deadline`"), "{message}");
    // Over the client, an adaptive limit reads it as the downstream's load.
    assert!(
        !message.contains("before the request was sent"),
        "{message}"
    );
    assert_eq!(
        outcome(&err),
        tower_fanout_core::classify::Outcome::Overload
    );
    assert!(hits.load(Ordering::SeqCst) <= 1);
    let host = format!("127.0.0.1:{}", addr.port());
    // The host is tracked (the default limit of 16), and its place is back.
    assert_eq!(client.host_limits().max_in_flight(&host), Some(16));
    assert_eq!(
        client.host_limits().in_flight(&host),
        0,
        "the place went back"
    );
    assert_eq!(client.host_limits().waiting(&host), 0);
}

/// A call ended by its deadline gives back what it held with its answer,
/// not when its future is dropped: a caller that keeps the finished future
/// (in a `FuturesUnordered`, say, or a struct) holds no place at the host's
/// limit and no stream.
#[tokio::test(start_paused = true)]
async fn a_call_ended_by_its_deadline_holds_nothing_after_its_answer() {
    let (silent, _) = counted(|_| std::future::pending::<http::Response<Chunks>>());
    let addr = serve_on_thread(silent);
    let mut client = Client::builder()
        .timeout(Some(Duration::from_secs(30)))
        .connect_timeout(None)
        .deadline(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let host = format!("127.0.0.1:{}", addr.port());
    let mut call = ServiceExt::<Request<Full<Bytes>>>::ready(&mut client)
        .await
        .unwrap()
        .call(get(addr));
    let err = (&mut call).await.unwrap_err();
    assert!(timed_out_in(&err).is_deadline(), "{err}");
    assert_eq!(
        client.host_limits().in_flight(&host),
        0,
        "held after the answer"
    );
    drop(call);
}

/// A request's own `Deadline` ends its call there when the client has no
/// deadline, and when the client's comes later; the client's holds when it
/// comes first. Each error says which deadline passed, and how long after
/// the call it was.
#[tokio::test(start_paused = true)]
async fn a_requests_own_deadline_ends_the_call_unless_the_clients_comes_first() {
    let (silent, _) = counted(|_| std::future::pending::<http::Response<Chunks>>());
    let addr = serve_on_thread(silent);
    // (client's deadline, request's, when the call ends, the request's ended it)
    let cases = [
        (None, 3, 3, true),
        (Some(10), 3, 3, true),
        (Some(2), 5, 2, false),
    ];
    for (client_s, own_s, ends_s, by_request) in cases {
        let client = Client::builder()
            .timeout(Some(Duration::from_secs(30)))
            .deadline(client_s.map(Duration::from_secs))
            .connect_timeout(None)
            .build()
            .unwrap();
        let mut req = get(addr);
        req.extensions_mut()
            .insert(Deadline::after(Duration::from_secs(own_s)));
        let (err, took) = failed_call(client, req).await;
        let case = format!("client {client_s:?}, request {own_s} s");
        let ends = Duration::from_secs(ends_s);
        assert!(
            took >= ends && took <= ends + Duration::from_millis(1),
            "{case}: {took:?}"
        );
        let timed_out = timed_out_in(&err);
        assert!(timed_out.is_deadline(), "{case}: {err}");
        assert_eq!(timed_out.after(), ends, "{case}");
        let message = err.to_string();
        assert_eq!(
            message.contains("its request's `Deadline`"),
            by_request,
            "{case}: {message}"
        );
        assert_eq!(
            message.contains("raise `deadline`"),
            !by_request,
            "{case}: {message}"
        );
    }
}

/// A request whose own deadline has passed when it reaches the client (it
/// waited too long at a limit above, say) fails at once without being sent.
#[tokio::test]
async fn a_request_past_its_own_deadline_is_not_sent() {
    let (addr, hits) = scripted(|_| (200, None));
    let client = Client::builder().build().unwrap();
    let mut req = get(addr);
    req.extensions_mut().insert(Deadline::after(Duration::ZERO));
    let err = client.clone().oneshot(req).await.unwrap_err();
    let timed_out = timed_out_in(&err);
    assert!(timed_out.is_deadline(), "{err}");
    assert_eq!(timed_out.after(), Duration::ZERO);
    assert!(err.to_string().contains("`Deadline`"), "{err}");
    assert!(
        err.to_string().contains("before the request was sent"),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "not sent");
    // An adaptive limit above, at which it may have waited, does not read
    // it as the downstream's load: each such request would cut the limit,
    // and the next ones would wait longer still.
    assert_eq!(
        outcome(&err),
        tower_fanout_core::classify::Outcome::CallerError
    );
    // A deadline still ahead is sent as usual.
    let mut req = get(addr);
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_secs(60)));
    assert_eq!(client.oneshot(req).await.unwrap().status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A host's own rate under a deadline: a call whose token would come past
/// it fails at once with `RateLimited` and the wait, unsent, instead of
/// waiting at the host's gate to time out; the client's deadline and a
/// request's own both count.
#[tokio::test]
async fn a_hosts_token_due_past_the_deadline_fails_at_once() {
    use tower_fanout_core::keyed::KeyLimit;
    let (addr, hits) = scripted(|_| (200, None));
    let host = format!("127.0.0.1:{}", addr.port());
    let one_a_minute = KeyLimit::new().rate(1, Duration::from_secs(60)).burst(1);
    for client_deadline in [Some(10), None] {
        let client = Client::builder()
            .host_limit(host.clone(), one_a_minute)
            .deadline(client_deadline.map(Duration::from_secs))
            .build()
            .unwrap();
        assert_eq!(
            client.clone().oneshot(get(addr)).await.unwrap().status(),
            200
        );
        let mut req = get(addr);
        if client_deadline.is_none() {
            req.extensions_mut()
                .insert(Deadline::after(Duration::from_secs(10)));
        }
        let sent = hits.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let err = client.oneshot(req).await.unwrap_err();
        assert!(err.is_rate_limited(), "{client_deadline:?}: {err}");
        assert!(
            err.to_string().contains("past the call's deadline"),
            "{err}"
        );
        let wait = err.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), sent, "not sent");
        returned_within(started, Duration::from_secs(5));
    }
}

/// A retry layer on its own (as one above the client, past limits of the
/// caller's) reads the request's `Deadline` too: a `Retry-After` that would
/// end past it fails at once with `RateLimited`, and a backoff past it
/// returns the last answer, on the first attempt each.
#[tokio::test]
async fn a_retry_layer_on_its_own_does_not_wait_past_the_requests_deadline() {
    for (status, retry_after) in [(429, Some("20")), (503, None)] {
        let (addr, hits) = scripted(move |_| (status, retry_after));
        let client = Client::builder().no_retry().build().unwrap();
        let retry = RetryLayer::builder()
            .backoff(Duration::from_secs(20), Duration::from_secs(20))
            .build()
            .unwrap();
        let mut req = get(addr);
        req.extensions_mut()
            .insert(Deadline::after(Duration::from_secs(5)));
        let started = std::time::Instant::now();
        let outcome = tower::Layer::layer(&retry, client).oneshot(req).await;
        match retry_after {
            Some(_) => {
                let err = outcome.unwrap_err();
                let limited = err
                    .downcast_ref::<tower_fanout_core::error::RateLimited>()
                    .unwrap_or_else(|| panic!("{err}"));
                assert_eq!(limited.retry_after(), Duration::from_secs(20));
                assert!(limited.is_past_deadline(), "{err}");
                assert_eq!(limited.status(), Some(429), "the answer that asked");
            }
            None => assert_eq!(outcome.unwrap().status(), 503),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{status}: no retry");
        returned_within(started, Duration::from_secs(4));
    }
}

/// Without a deadline the same call is bounded by the attempt's timeout
/// alone, which is then what fails it.
#[tokio::test(start_paused = true)]
async fn without_a_deadline_the_attempt_timeout_ends_the_call() {
    let (silent, _) = counted(|_| std::future::pending::<http::Response<Chunks>>());
    let addr = serve_on_thread(silent);
    let client = Client::builder()
        .timeout(Some(Duration::from_secs(30)))
        // The connect timeout (10 s) would come first if the paused clock
        // jumped while the connection is being made.
        .connect_timeout(None)
        .build()
        .unwrap();
    let (err, took) = failed_call(client, get(addr)).await;
    assert!(err.is_timeout(), "{err:?}");
    let timed_out = timed_out_in(&err);
    assert!(!timed_out.is_deadline());
    assert!(took >= Duration::from_secs(30));
}

/// The deadline also bounds reading a streamed request body, where no
/// attempt (and no attempt timeout) has started yet.
#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_a_stalled_request_body() {
    let client = Client::builder()
        .timeout(None)
        .deadline(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let (err, took, hits) = stalled_post(client).await;
    assert_eq!(took, Duration::from_millis(300));
    assert!(err.is_timeout(), "{err:?}");
    let timed_out = timed_out_in(&err);
    assert!(timed_out.is_deadline());
    assert_eq!(hits, 0, "nothing was sent");
    // The caller's body, not the downstream's load.
    assert!(
        err.to_string().contains("before the request was sent"),
        "{err}"
    );
    assert_eq!(
        outcome(&err),
        tower_fanout_core::classify::Outcome::CallerError
    );
}

/// A host that said nothing remains until its reset holds the next call
/// only if the reset comes before the call's deadline: a later one fails it
/// at once with `RateLimited` and the wait, as a `Retry-After` past the
/// deadline does, instead of holding it until the deadline to time out.
#[tokio::test]
async fn a_hold_for_a_reset_past_the_deadline_fails_at_once() {
    let (spent, hits) = counted(|_| async {
        support::respond(200)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", "30")
            .body(Chunks::empty())
            .unwrap()
    });
    let addr = serve_on_thread(spent);
    let client = Client::builder()
        .deadline(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    assert_eq!(
        client.clone().oneshot(get(addr)).await.unwrap().status(),
        200
    );
    let started = std::time::Instant::now();
    let err = client.oneshot(get(addr)).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert!(
        err.to_string().contains("past the call's deadline"),
        "{err}"
    );
    let wait = err.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "the reset is 30 s from the answer: {wait:?}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second call was not sent"
    );
    returned_within(started, Duration::from_secs(5));
}

/// A host's own attempt timeout replaces the client's for that host only,
/// its authority written in any case and with a trailing dot.
#[tokio::test(start_paused = true)]
async fn a_host_timeout_replaces_the_clients_for_that_host_only() {
    let (silent, _) = counted(|_| std::future::pending::<http::Response<Chunks>>());
    let addr = serve_on_thread(silent);
    let port = addr.port();
    let client = Client::builder()
        .resolver(table_resolver(&[("slow.test", addr), ("quick.test", addr)]))
        .timeout(Some(Duration::from_secs(30)))
        .host_timeout(format!("Quick.Test.:{port}"), Some(Duration::from_secs(2)))
        // No timer that could fire first while the paused clock jumps: the
        // connect timeout (10 s).
        .connect_timeout(None)
        .no_retry()
        .build()
        .unwrap();
    for (host, expected) in [("quick.test", 2), ("slow.test", 30)] {
        let req = Request::get(format!("http://{host}:{port}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (err, took) = failed_call(client.clone(), req).await;
        assert!(err.is_timeout(), "{host}: {err:?}");
        let timed_out = timed_out_in(&err);
        assert_eq!(timed_out.after(), Duration::from_secs(expected), "{host}");
        assert!(
            took >= Duration::from_secs(expected)
                && took <= Duration::from_secs(expected) + Duration::from_millis(1),
            "{host}: {took:?}"
        );
    }
}

/// A redirect meets the timeout of the host it goes to. On the real clock:
/// the paused one would jump to a timer while the 302 is on its way.
#[tokio::test]
async fn a_redirect_meets_the_timeout_of_the_host_it_goes_to() {
    // `/start` sends the caller to quick.test; nothing else is answered.
    let addr = redirecting_to("quick.test", false);
    let port = addr.port();
    let client = Client::builder()
        .resolver(table_resolver(&[("hop.test", addr), ("quick.test", addr)]))
        .timeout(Some(Duration::from_secs(30)))
        .host_timeout(
            format!("quick.test:{port}"),
            Some(Duration::from_millis(200)),
        )
        .no_retry()
        .build()
        .unwrap();
    let req = Request::get(format!("http://hop.test:{port}/start"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let err = client.oneshot(req).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let timed_out = timed_out_in(&err);
    assert_eq!(timed_out.after(), Duration::from_millis(200));
}

/// A cross-origin redirect keeps the call's deadline (tower-http drops
/// every other extension there): the hop to a host whose own rate has no
/// token for a minute fails at once with `RateLimited`, instead of waiting
/// at that host's gate until the deadline times the call out.
#[tokio::test]
async fn a_cross_origin_hop_keeps_the_deadline() {
    // `/start` sends the caller to spent.test; every other path answers 200.
    let addr = redirecting_to("spent.test", true);
    let port = addr.port();
    let one_a_minute = tower_fanout_core::keyed::KeyLimit::new()
        .rate(1, Duration::from_secs(60))
        .burst(1);
    let client = Client::builder()
        .resolver(table_resolver(&[("hop.test", addr), ("spent.test", addr)]))
        .host_limit(format!("spent.test:{port}"), one_a_minute)
        .deadline(Some(Duration::from_secs(10)))
        .no_retry()
        .build()
        .unwrap();
    let url = |host: &str, path: &str| {
        Request::get(format!("http://{host}:{port}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // spent.test's one token of the minute.
    let first = client
        .clone()
        .oneshot(url("spent.test", "/"))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let started = std::time::Instant::now();
    let err = client.oneshot(url("hop.test", "/start")).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    returned_within(started, Duration::from_secs(5));
}

/// A server whose `/start` sends the caller to `target` on the same port;
/// every other path answers 200, or never when `answer_others` is false.
fn redirecting_to(target: &'static str, answer_others: bool) -> std::net::SocketAddr {
    serve_on_thread(support::handler(move |req| async move {
        if req.uri().path() == "/start" {
            let host = req.headers()["host"].to_str().unwrap().to_owned();
            let port = host.rsplit(':').next().unwrap().to_owned();
            return support::respond(302)
                .header("location", format!("http://{target}:{port}/"))
                .body(Chunks::empty())
                .unwrap();
        }
        if !answer_others {
            std::future::pending::<()>().await;
        }
        support::respond(200).body(Chunks::empty()).unwrap()
    }))
}

/// What an adaptive limit over the client reads of `err`.
fn outcome(err: &tower_fanout_http::Error) -> tower_fanout_core::classify::Outcome {
    let err: &(dyn std::error::Error + 'static) = err;
    tower_fanout_core::classify::Classify::<http::Response<Bytes>>::classify(
        &tower_fanout_http::ClientClassify,
        Err(err),
    )
}

/// The `TimedOut` in an error's source chain.
fn timed_out_in(err: &tower_fanout_http::Error) -> TimedOut {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<TimedOut>() {
            return *t;
        }
        next = e.source();
    }
    panic!("no TimedOut in {err:?}")
}
