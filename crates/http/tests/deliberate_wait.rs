//! The client notes the waits at a host's configured gate as a
//! `DeliberateWait` on the response, and an adaptive limit above it
//! therefore does not read one host's configured rate limit as a slow
//! downstream; the waits the downstream asked for (a learned hold, a retry's
//! sleep) are not noted, and reach the adaptive limit as latency.
//!
//! On the paused clock, against a server on its own thread (real clock): the
//! client is built without timers of its own (no timeouts, no pool reaper),
//! so the clock moves only for the waits under test. Where calls are in
//! flight while others sleep at a gate, `keep_still` keeps the runtime busy
//! until the answers are in, or the clock would jump to the next sleeper's
//! instant and charge the jump to the calls at the server.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::{Chunks, counted, handler, respond, serve_on_thread};
use tokio::task::JoinSet;
use tokio::time::{self, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_fanout_core::DeliberateWait;
use tower_fanout_core::adaptive::{AdaptiveLimitLayer, WindowedController};
use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_http::{Client, ClientBuilder};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A client that sets no timers: the paused clock moves only for its waits.
fn quiet() -> ClientBuilder {
    Client::builder()
        .timeout(None)
        .connect_timeout(None)
        .pool_idle_timeout(None)
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn waited(resp: &Response<Bytes>) -> Option<Duration> {
    resp.extensions()
        .get::<DeliberateWait>()
        .map(|w| w.duration())
}

/// A server that answers 200 at once.
fn quick() -> std::net::SocketAddr {
    serve_on_thread(handler(|_| async {
        respond(200).body(Chunks::full("ok")).unwrap()
    }))
}

/// A server that answers at once, saying each time that its window of one
/// request is spent until a second from now.
fn one_a_second() -> std::net::SocketAddr {
    serve_on_thread(handler(|_| async {
        respond(200)
            .header("x-ratelimit-limit", "1")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", "1")
            .body(Chunks::full("ok"))
            .unwrap()
    }))
}

/// Keeps the paused clock still while `host` has calls at the server (its
/// per-host permits in use, but for the calls its learned budget holds,
/// which sleep), checking every millisecond.
async fn keep_still(client: Client, host: String) {
    loop {
        time::sleep(ms(1)).await;
        while client.host_limits().in_flight(&host) > client.held(&host) {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waited_for_nothing_carries_no_wait() {
    let addr = quick();
    let client = quiet().build().unwrap();
    let resp = client.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(waited(&resp), None);
}

/// Admitted at once, a call's time at the server is latency, not a wait:
/// the gate's clock starts only when the gate keeps a call waiting. (On
/// the real clock: a paused one stands still while the server works.)
#[tokio::test]
async fn a_slow_answer_to_a_call_admitted_at_once_carries_no_wait() {
    let addr = serve_on_thread(handler(|_| async {
        tokio::time::sleep(ms(100)).await;
        respond(200).body(Chunks::full("ok")).unwrap()
    }));
    let client = quiet().build().unwrap();
    let resp = client.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(waited(&resp), None);
}

#[tokio::test(start_paused = true)]
async fn a_wait_at_the_hosts_rate_gate_is_noted() {
    let addr = quick();
    let host = addr.to_string();
    let client = quiet()
        .host_limit(
            &host,
            KeyLimit::new().rate(1, Duration::from_secs(1)).burst(1),
        )
        .build()
        .unwrap();
    let url = format!("http://{addr}/");
    // Both are sent at once: the first takes the token, the second waits a second for the next.
    let (a, b) = tokio::join!(client.get(&url), client.get(&url));
    let mut waits = [waited(&a.unwrap()), waited(&b.unwrap())];
    waits.sort();
    assert_eq!(waits, [None, Some(Duration::from_secs(1))]);
}

#[tokio::test(start_paused = true)]
async fn a_learned_hold_is_not_noted() {
    let addr = one_a_second();
    let client = quiet().build().unwrap();
    let url = format!("http://{addr}/");
    let start = Instant::now();
    assert_eq!(waited(&client.get(&url).await.unwrap()), None);
    // The first answer said nothing remains for a second: the next request is held that long.
    let resp = client.get(&url).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // The host's own word on its capacity: latency, for an adaptive limit.
    assert_eq!(waited(&resp), None);
}

/// A learned hold of exactly the retry layer's `max_wait` is waited out;
/// one a nanosecond longer fails at once with the wait it would need.
#[tokio::test(start_paused = true)]
async fn a_learned_hold_of_exactly_the_wait_cap_is_waited() {
    let addr = one_a_second();
    let url = format!("http://{addr}/");
    for (cap, waits) in [
        (ms(1000), true),
        (ms(1000) - Duration::from_nanos(1), false),
    ] {
        let retry = tower_fanout_http::retry::RetryLayer::builder()
            .max_wait(cap)
            .build()
            .unwrap();
        let client = quiet().retry(retry).build().unwrap();
        client.get(&url).await.unwrap();
        let start = Instant::now();
        let second = client.get(&url).await;
        if waits {
            assert_eq!(second.unwrap().status(), 200);
            assert_eq!(start.elapsed(), ms(1000));
        } else {
            let err = second.unwrap_err();
            assert!(err.is_rate_limited(), "{err}");
            assert_eq!(err.retry_after(), Some(ms(1000)));
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_sleeps_are_not_noted() {
    let (server, hits) = counted(|n| async move {
        match n {
            0 => respond(429).header("retry-after", "2"),
            1 => respond(503).header("retry-after", "1"),
            _ => respond(200),
        }
        .body(Chunks::full("ok"))
        .unwrap()
    });
    let addr = serve_on_thread(server);
    let client = quiet().build().unwrap();
    let resp = client.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    // The server asked for both sleeps: latency, for an adaptive limit.
    assert_eq!(waited(&resp), None);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_attempts_wait_at_the_gate_is_carried_to_the_answer() {
    // One token a second. After a first call takes the token at 0 s, the
    // second call's first attempt waits for the token of 1 s and gets a 503;
    // its retry waits for the token of 2 s.
    let (server, hits) = counted(|n| async move {
        match n {
            1 => respond(503).header("retry-after", "0"),
            _ => respond(200),
        }
        .body(Chunks::full("ok"))
        .unwrap()
    });
    let addr = serve_on_thread(server);
    let client = quiet()
        .host_limit(
            addr.to_string(),
            KeyLimit::new().rate(1, Duration::from_secs(1)).burst(1),
        )
        .build()
        .unwrap();
    let url = format!("http://{addr}/");
    let start = Instant::now();
    assert_eq!(waited(&client.get(&url).await.unwrap()), None);
    let resp = client.get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(waited(&resp), Some(Duration::from_secs(2)));
}

/// Sends `n` GETs to `addr` at once through an adaptive limit (windowed: 5
/// answers a window, −3 when their mean latency is above 200 ms, +2 below
/// 50 ms, from 16) above `client`; returns the lowest limit seen as the calls
/// finished, and how many responses noted a wait.
async fn crowd(client: Client, addr: std::net::SocketAddr, n: usize) -> (usize, usize) {
    let controller = WindowedController::builder()
        .window(5)
        .initial(16)
        .min(1)
        .max(64)
        .latency(ms(50), ms(200))
        .build()
        .unwrap();
    let adaptive = AdaptiveLimitLayer::new(controller);
    let limit = adaptive.handle();
    let stack = ServiceBuilder::new()
        .layer(adaptive)
        .service(client.clone());
    let keeper = tokio::spawn(keep_still(client, addr.to_string()));
    let mut calls = JoinSet::new();
    for i in 0..n {
        let req = get(&format!("http://{addr}/{i}"));
        calls.spawn(stack.clone().oneshot(req));
    }
    let (mut lowest, mut noted) = (limit.limit(), 0);
    while let Some(done) = calls.join_next().await {
        let resp = done.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        noted += usize::from(waited(&resp).is_some());
        lowest = lowest.min(limit.limit());
    }
    keeper.abort();
    (lowest, noted)
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_holds_while_calls_queue_at_a_hosts_rate_gate() {
    let addr = quick();
    // Ten a second, one at a time: a crowd of 40 waits up to 4 s at the
    // gate, while the server answers every call at once.
    let client = quiet()
        .host_limit(
            addr.to_string(),
            KeyLimit::new()
                .concurrency(64)
                .rate(10, Duration::from_secs(1))
                .burst(1),
        )
        .build()
        .unwrap();
    let (lowest, noted) = crowd(client, addr, 40).await;
    assert!(
        lowest >= 16,
        "the limit fell to {lowest} while calls queued at the host's gate"
    );
    assert_eq!(noted, 39, "every call but the first waited for a token");
}

#[tokio::test(start_paused = true)]
async fn a_learned_budget_reaches_the_adaptive_limit_as_latency() {
    let addr = one_a_second();
    // No limit of its own but a concurrency that never binds, which
    // `keep_still` reads.
    let client = quiet()
        .host_limit(addr.to_string(), KeyLimit::new().concurrency(64))
        .build()
        .unwrap();
    let (lowest, noted) = crowd(client, addr, 30).await;
    // The host said it takes one a second: an adaptive limit that hears it
    // sends fewer at once (a limit that held at 16 released 16 at each reset).
    assert!(
        lowest < 16,
        "the limit stayed at {lowest} while the host's budget held calls"
    );
    assert_eq!(noted, 0, "a learned hold is not a wait on purpose");
}
