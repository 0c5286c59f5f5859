//! Bounds around a tower client an application already has.
//!
//! The "existing client" here is what many services carry: a hyper-util
//! client already wrapped in the application's own tower layers (a header
//! on every request, a timeout). Our limits go around it unchanged, since
//! any `tower::Service` will do; a tonic `Channel` or another tower-based
//! client takes them the same way.
//!
//! Run it with `cargo run --example existing_client`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{Empty, Full};
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_fanout::BoxError;
use tower_fanout::concurrency::ConcurrencyLimitLayer;
use tower_fanout::rate::RateLimitLayer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A loopback server that counts how many requests it handles at once.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    tokio::spawn({
        let (now, peak) = (now.clone(), peak.clone());
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (now, peak) = (now.clone(), peak.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (now, peak) = (now.clone(), peak.clone());
                            async move {
                                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(n, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                now.fetch_sub(1, Ordering::SeqCst);
                                let who = req.headers().get("x-app").cloned();
                                let body = format!(
                                    "hello {}",
                                    who.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("?")
                                );
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                    body,
                                ))))
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    });

    // The application's existing client: hyper-util plus its own layers.
    let existing = ServiceBuilder::new()
        .map_request(|mut req: Request<Empty<Bytes>>| {
            req.headers_mut()
                .insert("x-app", HeaderValue::from_static("billing"));
            req
        })
        .timeout(Duration::from_secs(5))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    // Ours, wrapped around it.
    let concurrency = ConcurrencyLimitLayer::new(6)?;
    let in_flight = concurrency.handle();
    let bounded = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(200, Duration::from_secs(1))
                .burst(20)
                .build()?,
        )
        .layer(concurrency)
        .service(existing);

    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let req = Request::get(format!("http://{addr}/{i}")).body(Empty::new())?;
        calls.spawn(bounded.clone().oneshot(req));
    }
    let mut ok = 0;
    while let Some(done) = calls.join_next().await {
        if done?.map(|r| r.status().is_success()).unwrap_or(false) {
            ok += 1;
        }
    }
    println!(
        "{ok}/100 ok in {} ms; server saw at most {} at once (limit 6); {} permits held now",
        started.elapsed().as_millis(),
        peak.load(Ordering::SeqCst),
        in_flight.in_flight()
    );
    Ok(())
}
