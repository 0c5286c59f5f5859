//! End to end over real sockets: hyper-util's client behind an
//! `AdaptiveLimitLayer`, against the simulated downstream served over HTTP/1
//! on 127.0.0.1. Real clock, bounded in count and time.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_fanout_core::adaptive::{AdaptiveLimitLayer, GradientController};
use tower_fanout_sim::{Jitter, Model, Sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_limit_over_real_http_finds_a_small_capacity() {
    let model = Model::new()
        .concurrency(8)
        .latency(Duration::from_millis(20), Jitter::None);
    let sim = Sim::new(model, 7);
    let server = sim.serve().await.unwrap();
    let uri: http::Uri = format!("http://{}/item", server.addr()).parse().unwrap();

    let controller = GradientController::builder()
        .min(1)
        .max(100)
        .initial(4)
        .build()
        .unwrap();
    let layer = AdaptiveLimitLayer::new(controller);
    let handle = layer.handle();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    // Counts the requests the client has out (below the limit), and the
    // most at once: what the downstream would have seen without its cap.
    let (out, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counted = tower::service_fn({
        let (out, peak) = (out.clone(), peak.clone());
        move |req: Request<Empty<Bytes>>| {
            let (client, out, peak) = (client.clone(), out.clone(), peak.clone());
            async move {
                let now = out.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let res = client.request(req).await;
                out.fetch_sub(1, Ordering::SeqCst);
                res
            }
        }
    });
    let svc = ServiceBuilder::new().layer(layer).service(counted);

    let calls = 150;
    let work = async {
        let tasks: Vec<_> = (0..calls)
            .map(|_| {
                let (svc, uri) = (svc.clone(), uri.clone());
                tokio::spawn(async move {
                    for _ in 0..200 {
                        let req = Request::get(uri.clone()).body(Empty::new()).unwrap();
                        let res = svc.clone().oneshot(req).await.unwrap();
                        if res.status() == StatusCode::OK {
                            return true;
                        }
                        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    false
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        ok
    };
    let ok = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .unwrap();
    assert_eq!(ok, calls, "every call gets through, retrying its 429s");

    let stats = sim.stats();
    let peak = peak.load(Ordering::SeqCst);
    println!("{stats:?} limit {} client peak {peak}", handle.limit());
    assert_eq!(stats.successes, calls as u64);
    // The downstream's own peak cannot pass its 8 slots (it refuses the
    // rest), so the client's count is the one that says something: without
    // the limit, all 150 callers had a request out at once; with it, the
    // limit grows from 4 to about twice the capacity (16 in every run
    // here, under load too) before it comes down.
    assert!(peak <= 40, "{peak} requests out at once for 8 slots");
    // Without a limit, 150 callers retrying every 20 ms against 8 slots would
    // be refused thousands of times; the limit keeps refusals to a fraction.
    assert!(
        stats.refused_429 <= 2 * calls as u64,
        "refused {} times for {calls} successes",
        stats.refused_429
    );
    assert!(handle.limit() <= 40, "limit {} ran away", handle.limit());
    assert_eq!(handle.in_flight(), 0, "every permit came back");
    server.shutdown().await;
}

/// A refused connection is a host down, not busy: a failure, which leaves
/// an adaptive limit where it is (read as overload, one dead host cut the
/// limit every host behind it shared).
#[tokio::test]
async fn a_refused_connection_is_classified_as_a_failure() {
    use tower_fanout_core::classify::{HttpClassify, Outcome};

    // A port bound, and kept bound until the test ends, but not listening:
    // nothing listens there, and no other test's server can take it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
    let err = client.get(uri).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(HttpClassify::error(&err), Outcome::Failure);
}

/// `shutdown` has stopped the server when it returns: the port refuses a
/// new connection at once. Dropping the handle stops it too, at the server
/// task's next turn. On one thread, so the server task runs only when this
/// test awaits. Found surviving in a mutation pass (`shutdown` not waiting
/// for the task; the handle's `Drop` sending a stop was equivalent to the
/// sender closing, and went).
#[tokio::test(flavor = "current_thread")]
async fn shutdown_and_drop_stop_the_server() {
    use tokio::net::TcpStream;
    let sim = Sim::new(Model::new(), 1);
    let server = sim.serve().await.unwrap();
    let addr = server.addr();
    drop(TcpStream::connect(addr).await.unwrap());
    server.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts after shutdown returned"
    );

    let server = sim.serve().await.unwrap();
    let addr = server.addr();
    drop(server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts 5 s after its handle was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
