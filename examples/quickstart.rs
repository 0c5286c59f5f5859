//! Quickstart: three bounds stacked over a real hyper-util client.
//!
//! Starts a hyper server on 127.0.0.1 that takes 20 ms per request and counts
//! how many it serves at once, then sends 300 requests through
//!
//! ```text
//! BackpressureLayer (8 workers, 24 queued) → RateLimitLayer (200/s, burst 20)
//!     → ConcurrencyLimitLayer (4) → hyper-util Client
//! ```
//!
//! and prints what each layer did. Run it with
//! `cargo run --release --example quickstart`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_fanout::BoxError;
use tower_fanout::backpressure::BackpressureLayer;
use tower_fanout::concurrency::ConcurrencyLimitLayer;
use tower_fanout::rate::RateLimitLayer;

const REQUESTS: usize = 300;

/// What the server saw: calls in flight now, the most at once, and the total.
#[derive(Default)]
struct ServerStats {
    now: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicUsize,
}

async fn serve(listener: TcpListener, stats: Arc<ServerStats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let handler =
                hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let stats = stats.clone();
                    async move {
                        let now = stats.now.fetch_add(1, Ordering::SeqCst) + 1;
                        stats.peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        stats.now.fetch_sub(1, Ordering::SeqCst);
                        stats.served.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ServerStats::default());
    tokio::spawn(serve(listener, stats.clone()));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

    let concurrency = ConcurrencyLimitLayer::new(4)?;
    let rate = RateLimitLayer::builder(200, Duration::from_secs(1))
        .burst(20)
        .build()?;
    let (in_flight, tokens) = (concurrency.handle(), rate.handle());
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::with_queue(8, 24)?)
        .layer(rate)
        .layer(concurrency)
        .service(client);
    let queue = svc.handle();

    println!("sending {REQUESTS} requests to http://{addr}/ ...");
    let started = Instant::now();
    let mut peak_queue = 0;
    let mut peak_client = 0;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let req = Request::get(format!("http://{addr}/item/{i}")).body(Empty::new())?;
        let svc = svc.clone();
        calls.spawn(async move {
            let response = svc.oneshot(req).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(status)
        });
        peak_queue = peak_queue.max(queue.queue_depth());
        peak_client = peak_client.max(in_flight.in_flight());
    }
    let mut ok = 0;
    while let Some(done) = calls.join_next().await {
        peak_queue = peak_queue.max(queue.queue_depth());
        peak_client = peak_client.max(in_flight.in_flight());
        if done?.map(|s| s.is_success()).unwrap_or(false) {
            ok += 1;
        }
    }
    let elapsed = started.elapsed();

    println!(
        "{ok}/{REQUESTS} succeeded in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "backpressure: 8 workers, queue bound {}; deepest queue seen {peak_queue}",
        queue.queue_capacity()
    );
    println!(
        "rate limit:   200/s with burst {}; {REQUESTS} requests need at least {:.2} s, took {:.2} s; {} tokens left",
        tokens.burst(),
        (REQUESTS as f64 - 20.0) / 200.0,
        elapsed.as_secs_f64(),
        tokens.tokens()
    );
    println!(
        "concurrency:  limit {}; most permits held at once {peak_client}; server saw at most {} at once",
        in_flight.limit(),
        stats.peak.load(Ordering::SeqCst)
    );
    println!(
        "after the run: {} permits held, {} queued, {} served",
        in_flight.in_flight(),
        queue.queue_depth(),
        stats.served.load(Ordering::SeqCst)
    );
    Ok(())
}
