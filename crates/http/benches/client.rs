//! Loopback end to end: requests per second for 2 000 GETs with 64 in flight,
//! hyper-util's client alone vs the full preset stack, measured in one run.
//!
//! Run: `cargo bench -p tower-fanout-http --bench client`
//!
//! The server runs on its own thread and runtime; each client runs on a
//! current-thread runtime on the main thread. Rounds alternate between the
//! two clients so that load from elsewhere on the machine hits both alike;
//! the report gives each one's median and the median of the paired rounds'
//! ratios. The raw client gets the preset's connector and pool settings
//! (TCP_NODELAY, 64 idle connections per host, a pool timer with a 90 s
//! idle timeout) and sends the same request, less the `Accept-Encoding` the
//! preset's decompression adds (a part of the cost measured).
//!
//! Knobs for investigation, not for the reported figure: `VARIANT` turns
//! preset features off (comma-separated `noretry`, `nolearn`, `notimeout`,
//! `nodecomp`, `noredirect`); `ONLY=raw|preset` runs 50 rounds of one client
//! (for `perf record`; `ONLY_ROUNDS=n` for another count); `RAW_NODELAY=0`
//! and `RAW_TIMER=0` take those settings from the raw client.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Raw;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;
use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_http::Client;

const IN_FLIGHT: usize = 64;

fn serve() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let body = Bytes::from(vec![b'x'; 256]);
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// Runs `requests` calls of `one`, `IN_FLIGHT` at a time; returns requests per second.
async fn drive<F, Fut>(requests: usize, one: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (next, one) = (next.clone(), one.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                assert_eq!(one().await, 256);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    requests as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and gets a quick smoke run instead of the figures.
    let full = std::env::args().any(|a| a == "--bench");
    let (requests, rounds) = if full { (2_000, 11) } else { (200, 1) };
    let addr = serve();
    let url = format!("http://{addr}/");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The same connector and pool settings as the preset (TCP_NODELAY on,
    // the pool's timer and idle timeout), so the ratio measures the stack
    // and nothing else.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(std::env::var("RAW_NODELAY").map_or(true, |v| v == "1"));
    let mut rb = Raw::builder(TokioExecutor::new());
    rb.pool_max_idle_per_host(IN_FLIGHT);
    if std::env::var("RAW_TIMER").map_or(true, |v| v == "1") {
        rb.pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
    }
    let raw: Raw<_, Full<Bytes>> = rb.build(connector);
    let variant = std::env::var("VARIANT").unwrap_or_default();
    let preset = rt.block_on(async {
        let mut b = Client::builder()
            .host_default(KeyLimit::new().concurrency(IN_FLIGHT))
            .pool_max_idle_per_host(IN_FLIGHT)
            .address_guard(true)
            .address_guard_allow(addr.ip());
        for v in variant.split(',') {
            b = match v {
                "noretry" => b.no_retry(),
                "nolearn" => b.learn_rate_limits(false),
                "notimeout" => b.timeout(None),
                "nodecomp" => b.decompression(false),
                "noredirect" => b.max_redirects(0),
                _ => b,
            };
        }
        b.build().unwrap()
    });

    let raw_once = {
        let (raw, url) = (raw.clone(), url.clone());
        move || {
            let (raw, url) = (raw.clone(), url.clone());
            async move {
                // The preset's request, less the `Accept-Encoding` its
                // decompression adds.
                let req = Request::get(url)
                    .header("user-agent", "bench")
                    .body(Full::default())
                    .unwrap();
                let resp = raw.request(req).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes().len()
            }
        }
    };
    let preset_once = {
        let (preset, url) = (preset.clone(), url.clone());
        move || {
            let (preset, url) = (preset.clone(), url.clone());
            async move {
                let req = Request::get(url)
                    .header("user-agent", "bench")
                    .body(Full::<Bytes>::default())
                    .unwrap();
                preset.oneshot(req).await.unwrap().into_body().len()
            }
        }
    };

    let only = std::env::var("ONLY").ok();
    // Warm both pools and the code paths.
    if only.as_deref() != Some("preset") {
        rt.block_on(drive(requests, raw_once.clone()));
    }
    if only.as_deref() != Some("raw") {
        rt.block_on(drive(requests, preset_once.clone()));
    }

    if let Some(only) = only {
        // For profiling one side: many rounds of one client.
        let rounds = std::env::var("ONLY_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(50);
        for _ in 0..rounds {
            if only == "raw" {
                rt.block_on(drive(requests, raw_once.clone()));
            } else {
                rt.block_on(drive(requests, preset_once.clone()));
            }
        }
        return;
    }
    let (mut raw_rps, mut preset_rps) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always follows the other.
        if round % 2 == 0 {
            raw_rps.push(rt.block_on(drive(requests, raw_once.clone())));
            preset_rps.push(rt.block_on(drive(requests, preset_once.clone())));
        } else {
            preset_rps.push(rt.block_on(drive(requests, preset_once.clone())));
            raw_rps.push(rt.block_on(drive(requests, raw_once.clone())));
        }
    }
    let (r, p) = (median(raw_rps.clone()), median(preset_rps.clone()));
    // Each round's pair ran back to back, so its ratio is the least disturbed
    // by load from elsewhere on the machine.
    let ratios: Vec<f64> = raw_rps
        .iter()
        .zip(&preset_rps)
        .map(|(r, p)| p / r)
        .collect();
    let added_us: Vec<f64> = raw_rps
        .iter()
        .zip(&preset_rps)
        .map(|(r, p)| (1.0 / p - 1.0 / r) * 1e6)
        .collect();
    let ratio = median(ratios);
    println!("loopback: {requests} GETs, {IN_FLIGHT} in flight, {rounds} alternating rounds");
    println!("hyper-util client alone : median {r:>9.0} req/s  rounds {raw_rps:.0?}");
    println!("full preset stack       : median {p:>9.0} req/s  rounds {preset_rps:.0?}");
    println!(
        "preset / raw (median of paired rounds): {ratio:.3}  (cost {:+.1} %)",
        (1.0 - ratio) * 100.0
    );
    println!(
        "added wall time per request (median of paired rounds): {:.1} µs",
        median(added_us)
    );
}
