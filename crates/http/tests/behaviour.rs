//! Permits while a retry sleeps or a request is dropped, and refused
//! spellings of private addresses, against loopback servers. (The tests of
//! what the client logs are in `logging.rs`: a binary of their own.)
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Chunks, counted, handler, respond, serve};
use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_http::Client;

/// Yields until `reached` holds: bounded, so a request that never reaches
/// the server fails the test rather than spinning for ever.
async fn until(what: &str, reached: impl Fn() -> bool) {
    let spin = async {
        while !reached() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), spin)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 10 s"));
}

#[tokio::test]
async fn a_sleeping_retry_holds_no_permit() {
    // The host allows one call in flight. The first call draws a 429 with
    // Retry-After: 1; while it sleeps, a second call runs and finishes.
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = paths.clone();
    let addr = serve(handler(move |req| {
        let path = req.uri().path().to_string();
        let first_answer = {
            let mut paths = seen.lock().unwrap();
            paths.push(path);
            paths.len() == 1
        };
        async move {
            if first_answer {
                respond(429)
                    .header("retry-after", "1")
                    .body(Chunks::empty())
                    .unwrap()
            } else {
                respond(200).body(Chunks::full("ok")).unwrap()
            }
        }
    }))
    .await;
    let client = Client::builder()
        .host_default(KeyLimit::new().concurrency(1))
        // Learning would (rightly) hold the second call until the reset too.
        .learn_rate_limits(false)
        .build()
        .unwrap();
    let start = Instant::now();
    let first = tokio::spawn({
        let (c, u) = (client.clone(), format!("http://{addr}/first"));
        async move { c.get(&u).await.map(|r| (r.status(), start.elapsed())) }
    });
    // Wait until the first call has had its 429.
    until("the first call reaches the server", || {
        !paths.lock().unwrap().is_empty()
    })
    .await;
    let key = addr.to_string();
    let second = client.get(&format!("http://{addr}/second")).await.unwrap();
    assert_eq!(second.status(), 200);
    let (status, first_done) = first.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert!(first_done >= Duration::from_secs(1), "{first_done:?}");
    // The order of arrivals, not a time bound (a loaded machine can take
    // most of a second over two round trips): the second call is queued for
    // the permit before the first's 429 is read, so it goes ahead of the
    // retry unless the sleeping retry kept the permit.
    assert_eq!(
        *paths.lock().unwrap(),
        ["/first", "/second", "/first"],
        "the second call waited for the sleeper"
    );
    assert_eq!(client.host_limits().in_flight(&key), 0);
}

/// A refusal made after name resolution names the refused address, not
/// only hyper-util's "client error (Connect)".
#[tokio::test]
async fn refused_spellings_of_private_addresses_name_the_address() {
    let client = tower_fanout_http::Client::builder()
        .address_guard(true)
        .no_retry()
        .build()
        .unwrap();
    // The system resolver turns these spellings into 127.0.0.1 locally
    // (decimal, octal, hex, short form), and `localhost` too.
    for host in [
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f.1",
        "127.1",
        "localhost",
    ] {
        let err = client.get(&format!("http://{host}:1/")).await.unwrap_err();
        assert!(err.is_refused_address(), "{host}: {err:?}");
        assert!(
            err.to_string().contains("127.0.0.1") || err.to_string().contains("::1"),
            "{host}: {err}"
        );
    }
    // Unspecified addresses, and IPv6 literals (plain, mapped, NAT64 and
    // 6to4 forms embedding 127.0.0.1) are refused before any connection.
    for host in [
        "0.0.0.0",
        "0",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::ffff:a9fe:a9fe]",
        "[::1]",
        "[fd00:ec2::254]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::1]",
    ] {
        let err = client.get(&format!("http://{host}:1/")).await.unwrap_err();
        assert!(err.is_refused_address(), "{host}: {err:?}");
    }
}

/// A request dropped while it waits for its answer gives its host's permit
/// back at once: the next request goes, and nothing stays counted in flight.
#[tokio::test]
async fn a_dropped_request_gives_its_permit_back() {
    let (counting, hits) = counted(move |n| {
        async move {
            if n == 0 {
                // The first request is never answered.
                std::future::pending::<()>().await;
            }
            respond(200).body(Chunks::full("ok")).unwrap()
        }
    });
    let addr = serve(counting).await;
    let client = Client::builder()
        .host_default(KeyLimit::new().concurrency(1))
        .build()
        .unwrap();
    let url = format!("http://{addr}/");
    let key = addr.to_string();
    let first = tokio::spawn({
        let (c, u) = (client.clone(), url.clone());
        async move { c.get(&u).await }
    });
    until("the first request reaches the server", || {
        hits.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(client.host_limits().in_flight(&key), 1);
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(client.host_limits().in_flight(&key), 0);
    let second = tokio::time::timeout(Duration::from_secs(5), client.get(&url))
        .await
        .expect("the permit came back")
        .unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(client.host_limits().in_flight(&key), 0);
}
