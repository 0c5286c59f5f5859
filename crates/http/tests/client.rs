//! The client preset against real hyper servers on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{Chunks, counted, handler, respond, serve, table_resolver};
use tower::ServiceExt;
use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_http::guard::RefusedAddress;
use tower_fanout_http::retry::RetryLayer;
use tower_fanout_http::{BodyTooLarge, Client};

fn quick_retry() -> RetryLayer {
    RetryLayer::builder()
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build()
        .unwrap()
}

#[tokio::test]
async fn per_host_limits_hold_under_load() {
    // host -> (in flight, peak)
    let seen: Arc<Mutex<HashMap<String, (usize, usize)>>> = Arc::default();
    let s = seen.clone();
    let limits: HashMap<&str, usize> = [("github.test", 3), ("stripe.test", 5), ("other.test", 2)]
        .into_iter()
        .collect();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    let addr = serve(handler(move |req| {
        let seen = s.clone();
        let host = req.headers()["host"].to_str().unwrap().to_string();
        let limit = limits[host.split(':').next().unwrap()];
        async move {
            {
                let mut m = seen.lock().unwrap();
                let e = m.entry(host.clone()).or_default();
                e.0 += 1;
                e.1 = e.1.max(e.0);
            }
            // Each request is held until its host has had its limit in
            // flight at once, so the peak reaches the limit by design, not
            // only if the requests happen to overlap (on a loaded machine
            // they may not). A limit set too low never gets there: the
            // requests go on after 10 s and the peak check below fails.
            while seen.lock().unwrap()[&host].1 < limit && tokio::time::Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            seen.lock().unwrap().get_mut(&host).unwrap().0 -= 1;
            respond(200).body(Chunks::full("ok")).unwrap()
        }
    }))
    .await;
    let port = addr.port();
    let client = Client::builder()
        .resolver(table_resolver(&[
            ("github.test", addr),
            ("stripe.test", addr),
            ("other.test", addr),
        ]))
        .host_default(KeyLimit::new().concurrency(2))
        .host_limit(
            format!("github.test:{port}"),
            KeyLimit::new().concurrency(3),
        )
        .host_limit(
            format!("stripe.test:{port}"),
            KeyLimit::new().concurrency(5),
        )
        .build()
        .unwrap();
    let mut calls = Vec::new();
    for i in 0..150 {
        let host = ["github.test", "stripe.test", "other.test"][i % 3];
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.get(&format!("http://{host}:{port}/{i}")).await
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[&format!("github.test:{port}")], (0, 3));
    assert_eq!(seen[&format!("stripe.test:{port}")], (0, 5));
    assert_eq!(seen[&format!("other.test:{port}")], (0, 2));
    assert_eq!(
        client
            .host_limits()
            .in_flight(&format!("github.test:{port}")),
        0
    );
}

#[tokio::test]
async fn wait_cap_returns_rate_limited_without_sleeping() {
    let (counting, hits) = counted(move |_| async {
        respond(429)
            .header("retry-after", "120")
            .body(Chunks::empty())
            .unwrap()
    });
    let addr = serve(counting).await;
    let client = Client::builder()
        .retry(
            RetryLayer::builder()
                .max_wait(Duration::from_secs(30))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "returned at once, no sleep"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let core = err
        .source()
        .unwrap()
        .downcast_ref::<tower_fanout_core::error::RateLimited>();
    assert_eq!(core.unwrap().retry_after(), Duration::from_secs(120));
    // The server's answer asked for the wait, not a limit of ours: said so,
    // and its status kept for callers that report statuses.
    assert_eq!(core.unwrap().status(), Some(429));
    assert!(
        err.to_string().starts_with(
            "rate limited by the downstream (its answer: status 429): retry after 120 s"
        ),
        "{err}"
    );
}

/// A server that publishes a budget of 5 requests per 300 ms window in the
/// `x-ratelimit-*-requests` form and answers 429 past it.
async fn budget_server(too_many: Arc<AtomicUsize>) -> SocketAddr {
    const WINDOW: Duration = Duration::from_millis(300);
    let start = tokio::time::Instant::now();
    let used: Arc<Mutex<(u128, u64)>> = Arc::default(); // (window index, used)
    serve(handler(move |_| {
        let (used, too_many) = (used.clone(), too_many.clone());
        async move {
            let elapsed = start.elapsed();
            let index = elapsed.as_nanos() / WINDOW.as_nanos();
            let end = WINDOW * u32::try_from(index + 1).unwrap();
            let reset_ms = (end - elapsed).as_micros().div_ceil(1000);
            let mut u = used.lock().unwrap();
            if u.0 != index {
                *u = (index, 0);
            }
            if u.1 >= 5 {
                too_many.fetch_add(1, Ordering::SeqCst);
                return respond(429).body(Chunks::empty()).unwrap();
            }
            u.1 += 1;
            respond(200)
                .header("x-ratelimit-limit-requests", "5")
                .header("x-ratelimit-remaining-requests", (5 - u.1).to_string())
                .header("x-ratelimit-reset-requests", format!("{reset_ms}ms"))
                .body(Chunks::full("ok"))
                .unwrap()
        }
    }))
    .await
}

/// A server with 1 s windows aligned to wall-clock seconds and a budget of 4
/// per window, published in whole seconds: the IETF structured `RateLimit`
/// field (`t` = seconds left) or `X-RateLimit-Reset` as epoch seconds.
async fn wall_clock_budget_server(ietf: bool, too_many: Arc<AtomicUsize>) -> SocketAddr {
    let used: Arc<Mutex<(u64, u64)>> = Arc::default(); // (epoch second, used)
    serve(handler(move |_| {
        let (used, too_many) = (used.clone(), too_many.clone());
        async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let second = now.as_secs();
            let mut u = used.lock().unwrap();
            if u.0 != second {
                *u = (second, 0);
            }
            if u.1 >= 4 {
                too_many.fetch_add(1, Ordering::SeqCst);
                return respond(429).body(Chunks::empty()).unwrap();
            }
            u.1 += 1;
            let remaining = 4 - u.1;
            let r = respond(200);
            let r = if ietf {
                r.header("ratelimit-policy", "\"default\";q=4;w=1")
                    .header("ratelimit", format!("\"default\";r={remaining};t=1"))
            } else {
                r.header("x-ratelimit-limit", "4")
                    .header("x-ratelimit-remaining", remaining.to_string())
                    .header("x-ratelimit-reset", (second + 1).to_string())
            };
            r.body(Chunks::full("ok")).unwrap()
        }
    }))
    .await
}

async fn run_workers(client: &Client, addr: SocketAddr, workers: usize, each: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..each {
                if c.get(&format!("http://{addr}/")).await.unwrap().status() == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    ok
}

#[tokio::test]
async fn learned_budget_prevents_429s() {
    let too_many = Arc::new(AtomicUsize::new(0));
    let addr = budget_server(too_many.clone()).await;
    let client = Client::builder().no_retry().build().unwrap();
    let ok = run_workers(&client, addr, 4, 6).await;
    assert_eq!(ok, 24);
    assert_eq!(
        too_many.load(Ordering::SeqCst),
        0,
        "the host's budget was waited for"
    );

    // Control: the same load without learning draws 429s.
    let too_many = Arc::new(AtomicUsize::new(0));
    let addr = budget_server(too_many.clone()).await;
    let blind = Client::builder()
        .no_retry()
        .learn_rate_limits(false)
        .build()
        .unwrap();
    run_workers(&blind, addr, 4, 6).await;
    assert!(too_many.load(Ordering::SeqCst) > 0);
}

/// The first error of type `T` in `err`'s chain of sources.
fn find_source<T: std::error::Error + 'static>(err: &tower_fanout_http::Error) -> Option<&T> {
    let mut chain = err.source();
    while let Some(e) = chain {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        chain = e.source();
    }
    None
}

/// A raw TCP server on 127.0.0.1 that reads each request and writes
/// `reply`, then hangs up (or, with `stall`, keeps the connection open and
/// silent).
async fn raw_server(reply: &'static [u8], stall: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(reply).await;
                if stall {
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    addr
}

/// A user trial: a server that closes a connection as a POST goes out on
/// it failed the call with no predicate true ("request failed: client
/// error (SendRequest): connection closed before message completed").
/// `is_request` says it, and the POST is not retried (it may have run).
#[tokio::test]
async fn a_connection_closed_under_a_request_is_a_request_error() {
    let addr = raw_server(b"", false).await;
    let client = Client::builder().build().unwrap();
    let req = http::Request::post(format!("http://{addr}/"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let err = client.clone().oneshot(req).await.unwrap_err();
    assert!(err.is_request(), "{err:?}");
    assert_eq!(err.kind_name(), "request");
    assert!(
        !err.is_connect() && !err.is_body() && !err.is_timeout(),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains("attempts"),
        "a POST is sent once: {err}"
    );
}

#[tokio::test]
async fn body_cap_fires_with_and_without_a_length() {
    let addr = serve(handler(|req| async move {
        match req.uri().path() {
            "/announced" => respond(200)
                .body(Chunks::full(vec![b'x'; 300_000]))
                .unwrap(),
            "/chunked" => respond(200)
                .body(Chunks::new(100, 16 * 1024, Duration::ZERO))
                .unwrap(),
            _ => respond(200).body(Chunks::full(vec![b'y'; 50_000])).unwrap(),
        }
    }))
    .await;
    let client = Client::builder()
        .max_response_body(100_000)
        .build()
        .unwrap();
    for path in ["announced", "chunked"] {
        let err = client
            .get(&format!("http://{addr}/{path}"))
            .await
            .unwrap_err();
        assert!(err.is_body_too_large(), "{path}: {err}");
        let cap = err
            .source()
            .unwrap()
            .downcast_ref::<BodyTooLarge>()
            .unwrap();
        assert_eq!(cap.limit(), 100_000);
        // The head came: a caller reporting statuses keeps the 200.
        assert_eq!(cap.status(), Some(http::StatusCode::OK), "{path}");
    }
    let ok = client.get(&format!("http://{addr}/small")).await.unwrap();
    assert_eq!(ok.body().len(), 50_000);
}

#[tokio::test]
async fn body_cap_admits_a_body_of_exactly_the_cap() {
    const CAP: usize = 4096;
    let addr = serve(handler(|req| async move {
        match req.uri().path() {
            "/announced" => respond(200).body(Chunks::full(vec![b'x'; CAP])).unwrap(),
            _ => respond(200)
                .body(Chunks::new(4, CAP / 4, Duration::ZERO))
                .unwrap(),
        }
    }))
    .await;
    let client = Client::builder().max_response_body(CAP).build().unwrap();
    for path in ["announced", "chunked"] {
        let ok = client.get(&format!("http://{addr}/{path}")).await.unwrap();
        assert_eq!(ok.body().len(), CAP, "{path}");
    }
    let err = Client::builder()
        .max_response_body(CAP - 1)
        .build()
        .unwrap()
        .get(&format!("http://{addr}/chunked"))
        .await
        .unwrap_err();
    assert!(err.is_body_too_large(), "{err}");
    // What happened and what to change.
    let text = err.to_string();
    assert!(text.contains("exceeds the cap of 4095 bytes"), "{text}");
    assert!(text.contains("raise `max_response_body`"), "{text}");
}

/// A URI without an http or https scheme, or without a host, is refused
/// before anything is sent, as the caller's mistake.
#[tokio::test]
async fn a_uri_the_client_cannot_send_is_an_invalid_request() {
    let client = Client::builder().no_retry().build().unwrap();
    for uri in ["/relative", "ftp://127.0.0.1:9/"] {
        let err = client.get(uri).await.unwrap_err();
        assert!(err.is_invalid_request(), "{uri}: {err}");
        assert!(err.to_string().contains("http or https"), "{uri}: {err}");
    }
}

/// Both body caps default to 10 MiB, as their docs say: a body of exactly
/// that passes, one byte more is refused.
#[tokio::test]
async fn the_body_caps_default_to_10_mib() {
    const MIB_10: usize = 10 * 1024 * 1024;
    let addr = serve(handler(|req| async move {
        let len = if req.uri().path() == "/over" {
            MIB_10 + 1
        } else {
            MIB_10
        };
        respond(200).body(Chunks::full(vec![b'x'; len])).unwrap()
    }))
    .await;
    let client = Client::builder().no_retry().build().unwrap();
    let ok = client.get(&format!("http://{addr}/exact")).await.unwrap();
    assert_eq!(ok.body().len(), MIB_10);
    let err = client
        .get(&format!("http://{addr}/over"))
        .await
        .unwrap_err();
    assert!(err.is_body_too_large(), "{err}");

    // Nothing listens on the discard port: a request body within the cap
    // gets as far as connecting.
    for (len, too_large) in [(MIB_10, false), (MIB_10 + 1, true)] {
        let req = Request::post("http://127.0.0.1:9/")
            .body(Full::new(Bytes::from(vec![0u8; len])))
            .unwrap();
        let err = client.clone().oneshot(req).await.unwrap_err();
        assert_eq!(err.is_request_body_too_large(), too_large, "{len}: {err}");
    }
}

/// A length announced past the cap is refused before any of the body is
/// read: here the server sends its headers and a few bytes, then nothing.
#[tokio::test]
async fn an_announced_length_past_the_cap_fails_before_the_body_is_read() {
    let addr = raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n0123456789",
        true,
    )
    .await;
    // A stalled body would end in this timeout instead.
    let client = Client::builder()
        .max_response_body(100_000)
        .timeout(Some(Duration::from_secs(10)))
        .no_retry()
        .build()
        .unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_body_too_large(), "{err}");
}

/// An error met on a hop says it came after a redirect (the retry layer
/// reads that too: a redirected POST is not sent again).
#[tokio::test]
async fn an_error_after_a_redirect_says_so() {
    // Nothing listens on this port, kept bound until the test ends.
    let (closed, _bound) = support::closed_port();
    let addr = serve(handler(move |_| async move {
        respond(302)
            .header("location", format!("http://{closed}/gone"))
            .body(Chunks::empty())
            .unwrap()
    }))
    .await;
    let client = Client::builder().no_retry().build().unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(err.to_string().contains("after a redirect"), "{err}");
}

#[tokio::test]
async fn slow_body_times_out() {
    let addr = serve(handler(|_| async {
        respond(200)
            .body(Chunks::new(20, 10, Duration::from_millis(100)))
            .unwrap()
    }))
    .await;
    let client = Client::builder()
        .timeout(Some(Duration::from_millis(250)))
        .build()
        .unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("within 250 ms"), "{err}");
    let timed_out = find_source::<tower_fanout_http::TimedOut>(&err).unwrap();
    assert_eq!(timed_out.after(), Duration::from_millis(250));
}

#[tokio::test]
async fn guard_refuses_names_resolving_to_private_addresses() {
    let (counting, hits) =
        counted(move |_| async { respond(200).body(Chunks::full("secret")).unwrap() });
    let local = serve(counting).await;
    let resolver = table_resolver(&[
        ("evil.test", "169.254.169.254:80".parse().unwrap()),
        ("intranet.test", "10.0.0.1:80".parse().unwrap()),
        ("aws6.test", "[fd00:ec2::254]:80".parse().unwrap()),
        (
            "mapped.test",
            "[::ffff:169.254.169.254]:80".parse().unwrap(),
        ),
        ("local.test", local),
    ]);
    let guarded = Client::builder()
        .resolver(resolver.clone())
        .address_guard(true)
        .no_retry()
        .build()
        .unwrap();
    let port = local.port();
    for (url, ip) in [
        (
            "http://evil.test/latest/meta-data".to_string(),
            "169.254.169.254",
        ),
        ("http://intranet.test/".to_string(), "10.0.0.1"),
        ("http://aws6.test/".to_string(), "fd00:ec2::254"),
        ("http://mapped.test/".to_string(), "::ffff:169.254.169.254"),
        (format!("http://local.test:{port}/"), "127.0.0.1"),
        (format!("http://127.0.0.1:{port}/"), "127.0.0.1"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "::ffff:127.0.0.1",
        ),
        ("http://169.254.169.254/".to_string(), "169.254.169.254"),
    ] {
        let err = guarded.get(&url).await.unwrap_err();
        assert!(err.is_refused_address(), "{url}: {err}");
        let mut chain = err.source();
        let refused = loop {
            let e = chain.expect("RefusedAddress in the source chain");
            if let Some(r) = e.downcast_ref::<RefusedAddress>() {
                break r;
            }
            chain = e.source();
        };
        assert_eq!(refused.ip().unwrap().to_string(), ip, "{url}");
    }
    let err = guarded.get("ftp://example.test/file").await.unwrap_err();
    assert!(err.is_refused_address(), "{err}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the local server"
    );

    // The same resolver without the guard reaches the server.
    let open = Client::builder().resolver(resolver).build().unwrap();
    let resp = open
        .get(&format!("http://local.test:{port}/"))
        .await
        .unwrap();
    assert_eq!(resp.body().as_ref(), b"secret");
}

#[tokio::test(start_paused = true)]
async fn a_refused_address_is_answered_at_once_not_retried() {
    // With the default retry policy: the guard's refusal after DNS comes
    // wrapped in the client's connect error, and must still be final.
    let client = Client::builder()
        .resolver(table_resolver(&[(
            "evil.test",
            "169.254.169.254:80".parse().unwrap(),
        )]))
        .address_guard(true)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = client.get("http://evil.test/").await.unwrap_err();
    assert!(err.is_refused_address(), "{err}");
    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff, no retry");
}

#[tokio::test]
async fn guard_refuses_a_redirect_to_a_private_address() {
    let target = serve(handler(|_| async {
        respond(200).body(Chunks::full("internal")).unwrap()
    }))
    .await;
    let port = target.port();
    let redirector = serve(handler(move |_| async move {
        respond(302)
            .header("location", format!("http://internal.test:{port}/"))
            .body(Chunks::empty())
            .unwrap()
    }))
    .await;
    let client = |guard: bool| {
        Client::builder()
            .resolver(table_resolver(&[
                ("public.test", redirector),
                ("internal.test", target),
            ]))
            .address_guard(guard)
            // Stands in for a public address: the test has only loopback.
            .address_guard_allow(redirector.ip())
            .build()
            .unwrap()
    };
    let url = format!("http://public.test:{}/", redirector.port());
    let ok = client(false).get(&url).await.unwrap();
    assert_eq!(
        ok.body().as_ref(),
        b"internal",
        "unguarded: the redirect is followed"
    );
    // Guarded, the redirect's target resolves to a private address: refused.
    let guarded = Client::builder()
        .resolver(table_resolver(&[
            ("public.test", redirector),
            ("internal.test", "10.1.1.1:80".parse().unwrap()),
        ]))
        .address_guard(true)
        .address_guard_allow(redirector.ip())
        .build()
        .unwrap();
    let err = guarded.get(&url).await.unwrap_err();
    assert!(err.is_refused_address(), "{err}");
}

#[tokio::test]
async fn cross_origin_redirect_strips_credentials_and_hops_are_capped() {
    let seen: Arc<Mutex<Vec<(String, bool, bool)>>> = Arc::default();
    let s = seen.clone();
    let b = serve(handler(move |req| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push((
                req.uri().path().to_string(),
                req.headers().contains_key("authorization"),
                req.headers().contains_key("cookie"),
            ));
            respond(200).body(Chunks::full("landed")).unwrap()
        }
    }))
    .await;
    let s = seen.clone();
    let a = serve(handler(move |req| {
        let s = s.clone();
        async move {
            let path = req.uri().path().to_string();
            s.lock().unwrap().push((
                path.clone(),
                req.headers().contains_key("authorization"),
                req.headers().contains_key("cookie"),
            ));
            match path.as_str() {
                "/cross" => respond(302)
                    .header("location", format!("http://{b}/landing"))
                    .body(Chunks::empty())
                    .unwrap(),
                "/same" => respond(307)
                    .header("location", "/same-landing")
                    .body(Chunks::empty())
                    .unwrap(),
                "/loop" => respond(302)
                    .header("location", "/loop")
                    .body(Chunks::empty())
                    .unwrap(),
                _ => respond(200).body(Chunks::full("same")).unwrap(),
            }
        }
    }))
    .await;
    let client = Client::builder().max_redirects(3).build().unwrap();
    let send = |path: &str| {
        let req = Request::get(format!("http://{a}{path}"))
            .header("authorization", "Bearer secret")
            .header("cookie", "session=1")
            .body(Full::<Bytes>::default())
            .unwrap();
        client.clone().oneshot(req)
    };
    assert_eq!(send("/cross").await.unwrap().body().as_ref(), b"landed");
    assert_eq!(send("/same").await.unwrap().body().as_ref(), b"same");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], ("/cross".into(), true, true));
        assert_eq!(
            seen[1],
            ("/landing".into(), false, false),
            "stripped across origins"
        );
        assert_eq!(seen[2], ("/same".into(), true, true));
        assert_eq!(
            seen[3],
            ("/same-landing".into(), true, true),
            "kept on the same origin"
        );
    }
    let err = send("/loop").await.unwrap_err();
    assert!(err.is_too_many_redirects(), "{err}");
    assert!(err.to_string().contains("more than 3 redirects"), "{err}");
    let cap = find_source::<tower_fanout_http::TooManyRedirects>(&err).unwrap();
    assert_eq!(cap.max(), 3);
    assert_eq!(
        seen.lock().unwrap().len(),
        4 + 4,
        "first request plus 3 hops"
    );
}

#[tokio::test]
async fn gzip_is_decompressed() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&vec![b'z'; 10_000]).unwrap();
    let gz = Bytes::from(enc.finish().unwrap());
    let addr = serve(handler(move |req| {
        let gz = gz.clone();
        async move {
            let accepts = req
                .headers()
                .get("accept-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .contains("gzip");
            assert!(accepts);
            respond(200)
                .header("content-encoding", "gzip")
                .body(Chunks::full(gz))
                .unwrap()
        }
    }))
    .await;
    let client = Client::builder().max_response_body(20_000).build().unwrap();
    let resp = client.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(resp.body().len(), 10_000);
    // The cap applies after decompression.
    let small = Client::builder().max_response_body(5_000).build().unwrap();
    assert!(
        small
            .get(&format!("http://{addr}/"))
            .await
            .unwrap_err()
            .is_body_too_large()
    );
}

#[tokio::test]
async fn connection_resets_are_retried_for_get_but_not_post() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw server: every other connection is closed after the request
    // arrives, without a response; the others are answered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                if n.is_multiple_of(2) {
                    drop(sock); // cut mid-exchange: no response
                } else {
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    let client = Client::builder().retry(quick_retry()).build().unwrap();
    let resp = client.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(resp.body().as_ref(), b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    let post = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let err = client.clone().oneshot(post).await.unwrap_err();
    assert!(!err.is_connect() && !err.is_timeout(), "{err}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "a POST is not sent twice"
    );
}

#[tokio::test]
async fn refused_connections_are_connect_errors_after_retries() {
    // Nothing listens on this port, kept bound until the test ends.
    let (addr, _bound) = support::closed_port();
    let client = Client::builder().retry(quick_retry()).build().unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(err.source().is_some());
}

#[tokio::test]
async fn oversized_request_body_is_refused_before_sending() {
    let client = Client::builder().max_request_body(1000).build().unwrap();
    let req = Request::post("http://127.0.0.1:9/")
        .body(Full::new(Bytes::from(vec![0u8; 2000])))
        .unwrap();
    let err = client.clone().oneshot(req).await.unwrap_err();
    assert!(err.is_request_body_too_large(), "{err}");
    let text = err.to_string();
    assert!(text.contains("request body exceeds 1000 bytes"), "{text}");
    assert!(text.contains("raise `max_request_body`"), "{text}");
    let bound = err
        .source()
        .unwrap()
        .downcast_ref::<tower_fanout_http::RequestBodyTooLarge>()
        .unwrap();
    assert_eq!(bound.limit(), 1000);
}

#[test]
fn bad_config_fails_at_build() {
    let err = Client::builder()
        .host_limit("x.test", KeyLimit::new().concurrency(0))
        .build()
        .unwrap_err();
    assert!(err.is_config());
    assert!(err.to_string().contains("\"x.test\""), "{err}");
    assert!(
        Client::builder()
            .max_response_body(0)
            .build()
            .unwrap_err()
            .is_config()
    );
}

#[tokio::test]
async fn a_body_cut_short_is_a_body_error() {
    // Announce 100 bytes, send 10, hang up.
    let addr = raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
        false,
    )
    .await;
    let client = Client::builder().no_retry().build().unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_body(), "{err}");
    assert!(err.to_string().contains("reading the body failed"), "{err}");
    // The cause is kept: hyper's error, over the end of file it met.
    assert!(find_source::<hyper::Error>(&err).is_some(), "{err:?}");
    let io = find_source::<std::io::Error>(&err).unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn learned_wait_past_the_cap_returns_rate_limited() {
    let (counting, hits) = counted(move |_| async {
        respond(200)
            .header("ratelimit", "\"default\";r=0;t=3600")
            .body(Chunks::full("last one"))
            .unwrap()
    });
    let addr = serve(counting).await;
    let client = Client::builder().build().unwrap();
    assert_eq!(
        client
            .get(&format!("http://{addr}/"))
            .await
            .unwrap()
            .status(),
        200
    );
    // The host said nothing remains for an hour: longer than the 60 s cap.
    // The budget is the host's, whatever userinfo a URI carries (as the
    // per-host limits are keyed): `http://x@host/` is held too.
    for url in [
        format!("http://{addr}/"),
        format!("http://someone@{addr}/"),
        format!("http://a:b@{addr}/"),
    ] {
        let err = client.get(&url).await.unwrap_err();
        assert!(err.is_rate_limited(), "{url}: {err}");
        assert!(err.retry_after().unwrap() > Duration::from_secs(3500));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the later calls never left");
}

#[tokio::test]
async fn https_goes_through_rustls() {
    // A plain-HTTP server cannot complete a TLS handshake: a connect error,
    // which shows the rustls connector (ring provider, webpki roots) is wired in.
    let addr = serve(handler(|_| async {
        respond(200).body(Chunks::empty()).unwrap()
    }))
    .await;
    let client = Client::builder().no_retry().build().unwrap();
    let err = client.get(&format!("https://{addr}/")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[tokio::test]
async fn learned_budget_from_ietf_and_epoch_headers_prevents_429s() {
    for ietf in [true, false] {
        let too_many = Arc::new(AtomicUsize::new(0));
        let addr = wall_clock_budget_server(ietf, too_many.clone()).await;
        let client = Client::builder().no_retry().build().unwrap();
        assert_eq!(run_workers(&client, addr, 3, 3).await, 9);
        assert_eq!(too_many.load(Ordering::SeqCst), 0, "ietf = {ietf}");
    }
}

#[tokio::test]
async fn a_user_agent_is_sent_unless_the_request_has_one() {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let s = seen.clone();
    let addr = serve(handler(move |req| {
        s.lock().unwrap().push(
            req.headers()
                .get("user-agent")
                .map(|v| v.to_str().unwrap().to_string()),
        );
        async { respond(200).body(Chunks::empty()).unwrap() }
    }))
    .await;
    let url = format!("http://{addr}/");
    Client::builder().build().unwrap().get(&url).await.unwrap();
    let own = Request::get(&url)
        .header("user-agent", "my-agent/2")
        .body(Full::<Bytes>::default())
        .unwrap();
    Client::builder()
        .build()
        .unwrap()
        .oneshot(own)
        .await
        .unwrap();
    Client::builder()
        .user_agent(None)
        .build()
        .unwrap()
        .get(&url)
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen[0]
            .as_deref()
            .unwrap()
            .starts_with("tower-fanout-http/")
    );
    assert_eq!(seen[1].as_deref(), Some("my-agent/2"));
    assert_eq!(seen[2], None);
    let err = Client::builder()
        .user_agent(Some("bad\nagent"))
        .build()
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("user_agent"),
        "{err}"
    );
}

#[test]
fn client_is_clone_send_sync_and_a_tower_service() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    fn assert_service<S: tower::Service<Request<Full<Bytes>>, Response = http::Response<Bytes>>>() {
    }
    assert_shareable::<Client>();
    assert_service::<Client>();
}

#[tokio::test]
async fn https_with_http2_through_rustls() {
    let versions: Arc<Mutex<Vec<http::Version>>> = Arc::default();
    let v = versions.clone();
    let addr = support::serve_tls(handler(move |req| {
        v.lock().unwrap().push(req.version());
        async { respond(200).body(Chunks::full("secure")).unwrap() }
    }))
    .await;
    let client = Client::builder()
        .tls_config(support::test_tls_config())
        .resolver(table_resolver(&[("localhost", addr)]))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/", addr.port());
    for _ in 0..3 {
        let resp = client.get(&url).await.unwrap();
        assert_eq!(resp.body().as_ref(), b"secure");
    }
    assert_eq!(
        *versions.lock().unwrap(),
        [http::Version::HTTP_2; 3],
        "ALPN chose h2"
    );
    // The default roots do not trust the test CA.
    let strict = Client::builder()
        .resolver(table_resolver(&[("localhost", addr)]))
        .no_retry()
        .build()
        .unwrap();
    assert!(strict.get(&url).await.unwrap_err().is_connect());
}

#[tokio::test]
async fn learned_budget_holds_a_crowd_larger_than_the_window() {
    // 8 callers against a budget of 5 per 300 ms window. One call first,
    // so the client knows the window's size before the crowd arrives.
    let too_many = Arc::new(AtomicUsize::new(0));
    let addr = budget_server(too_many.clone()).await;
    let client = Client::builder().no_retry().build().unwrap();
    assert_eq!(
        client
            .get(&format!("http://{addr}/"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(run_workers(&client, addr, 8, 3).await, 24);
    assert_eq!(
        too_many.load(Ordering::SeqCst),
        0,
        "every window held to its size"
    );
}

#[tokio::test]
async fn a_retry_after_a_redirect_starts_again_from_the_original_request() {
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let busy = Arc::new(AtomicUsize::new(0));
    let (p, b) = (paths.clone(), busy.clone());
    let addr = serve(handler(move |req| {
        let (p, b) = (p.clone(), b.clone());
        async move {
            let path = req.uri().path().to_string();
            p.lock().unwrap().push(path.clone());
            match path.as_str() {
                "/start" => respond(303)
                    .header("location", "/busy")
                    .body(Chunks::empty())
                    .unwrap(),
                _ if b.fetch_add(1, Ordering::SeqCst) == 0 => respond(503)
                    .header("retry-after", "0")
                    .body(Chunks::empty())
                    .unwrap(),
                _ => respond(200).body(Chunks::full("ok")).unwrap(),
            }
        }
    }))
    .await;
    let client = Client::builder().build().unwrap();
    let resp = client.get(&format!("http://{addr}/start")).await.unwrap();
    assert_eq!(resp.body().as_ref(), b"ok");
    assert_eq!(
        *paths.lock().unwrap(),
        ["/start", "/busy", "/start", "/busy"],
        "the 503 on the hop is retried from the first request, and the hop is followed again"
    );
    let final_uri = resp
        .extensions()
        .get::<tower_http::follow_redirect::RequestUri>()
        .map(|u| u.0.to_string());
    assert_eq!(final_uri, Some(format!("http://{addr}/busy")));
}

#[tokio::test]
async fn accept_encoding_is_what_decompression_handles_and_a_callers_own_is_kept() {
    let addr = serve(handler(|req| async move {
        let accept = req
            .headers()
            .get_all("accept-encoding")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("|");
        respond(200).body(Chunks::full(accept)).unwrap()
    }))
    .await;
    let url = format!("http://{addr}/");
    let on = Client::builder().build().unwrap();
    assert_eq!(on.get(&url).await.unwrap().body().as_ref(), b"gzip,br");
    let off = Client::builder().decompression(false).build().unwrap();
    assert_eq!(off.get(&url).await.unwrap().body().as_ref(), b"");
    let own = Request::get(&url)
        .header("accept-encoding", "identity")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = on.clone().oneshot(own).await.unwrap();
    assert_eq!(resp.body().as_ref(), b"identity");
}

/// tower-http's rules, as issue 5 asks: a 301/302 turns a POST into a GET
/// without its body, a 303 keeps a HEAD, a 307 resends the request as it was;
/// relative and absolute `Location`s resolve against the current URI; every
/// answer carries the URI it came from; a redirect off http/https fails; with
/// `max_redirects(0)` a 3xx is the answer (and the layer is left out).
#[tokio::test]
async fn redirects_follow_tower_http_rules_and_location_forms() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let addr = serve(handler(move |req| {
        let s = s.clone();
        async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let target = parts.uri.path_and_query().unwrap().as_str().to_string();
            s.lock().unwrap().push(format!(
                "{} {target} {:?} type={}",
                parts.method,
                String::from_utf8_lossy(&body),
                parts.headers.contains_key("content-type"),
            ));
            let to = |status, location: &str| {
                respond(status)
                    .header("location", location)
                    .body(Chunks::empty())
                    .unwrap()
            };
            match target.as_str() {
                "/form/302" => to(302, "/got?x=1"),
                "/form/307" => to(307, "again"),
                "/head/303" => to(
                    303,
                    &format!("http://{}/seen", parts.headers["host"].to_str().unwrap()),
                ),
                "/ftp" => to(302, "ftp://files.test/secret"),
                _ => respond(200).body(Chunks::full("ok")).unwrap(),
            }
        }
    }))
    .await;
    let client = Client::builder().build().unwrap();
    let send = |method: &str, path: &str, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        client.clone().oneshot(req)
    };
    let uri_of = |resp: &http::Response<Bytes>| {
        resp.extensions()
            .get::<tower_http::follow_redirect::RequestUri>()
            .map(|u| u.0.to_string())
    };

    let resp = send("POST", "/form/302", "hi").await.unwrap();
    assert_eq!(uri_of(&resp), Some(format!("http://{addr}/got?x=1")));
    let resp = send("POST", "/form/307", "hi").await.unwrap();
    assert_eq!(uri_of(&resp), Some(format!("http://{addr}/form/again")));
    let resp = send("HEAD", "/head/303", "").await.unwrap();
    assert_eq!(uri_of(&resp), Some(format!("http://{addr}/seen")));
    let resp = send("GET", "/plain", "").await.unwrap();
    assert_eq!(
        uri_of(&resp),
        Some(format!("http://{addr}/plain")),
        "an answer that was not redirected carries its URI too"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            r#"POST /form/302 "hi" type=true"#,
            r#"GET /got?x=1 "" type=false"#,
            r#"POST /form/307 "hi" type=true"#,
            r#"POST /form/again "hi" type=true"#,
            r#"HEAD /head/303 "" type=true"#,
            r#"HEAD /seen "" type=false"#,
            r#"GET /plain "" type=true"#,
        ]
    );

    let err = send("GET", "/ftp", "").await.unwrap_err();
    let mut chain = Some(&err as &(dyn std::error::Error + 'static));
    let mut said = Vec::new();
    while let Some(e) = chain {
        said.push(e.to_string());
        chain = e.source();
    }
    assert!(
        said.iter().any(|s| s.contains("unsupported scheme")),
        "{said:?}"
    );

    let off = Client::builder().max_redirects(0).build().unwrap();
    let resp = off.get(&format!("http://{addr}/form/302")).await.unwrap();
    assert_eq!(
        resp.status(),
        302,
        "with no hops allowed, a 3xx is the answer"
    );
    assert_eq!(
        uri_of(&resp),
        None,
        "with redirects off the redirect layer is not in the stack"
    );
}
