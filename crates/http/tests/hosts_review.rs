//! The client's per-host settings against real servers on 127.0.0.1: hosts
//! without limits never run out of room, per-host overrides match the way
//! requests are keyed, and the pool keeps the idle connections it is told to.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Chunks, handler, respond, serve, serve_counting, table_resolver};
use tokio::sync::{Barrier, Semaphore};
use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_http::Client;

/// With no limit for hosts by default (as `fanout demo` configures it) and
/// room for one tracked host, as many hosts as like go out at once: a host
/// without limits is not tracked. Each of them took a slot before, and the
/// second host in flight was refused as overloaded (`TooManyKeys`).
#[tokio::test]
async fn hosts_without_limits_never_run_out_of_room() {
    let (arrived, go) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let (a, g) = (arrived.clone(), go.clone());
    let addr = serve(handler(move |_| {
        let (a, g) = (a.clone(), g.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            g.acquire().await.unwrap().forget();
            respond(200).body(Chunks::full("ok")).unwrap()
        }
    }))
    .await;
    let hosts = ["a.test", "b.test", "c.test", "d.test"];
    let table: Vec<_> = hosts.iter().map(|h| (*h, addr)).collect();
    let client = Client::builder()
        .resolver(table_resolver(&table))
        .host_default(KeyLimit::new())
        .host_limit(
            format!("a.test:{}", addr.port()),
            KeyLimit::new().concurrency(1),
        )
        .max_hosts(1)
        .no_retry()
        .build()
        .unwrap();

    let calls: Vec<_> = hosts
        .iter()
        .map(|h| {
            let (client, uri) = (client.clone(), format!("http://{h}:{}/", addr.port()));
            tokio::spawn(async move { client.get(&uri).await })
        })
        .collect();
    // Every host reaches the server (none refused at the gate).
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while arrived.load(Ordering::SeqCst) < hosts.len() && tokio::time::Instant::now() < give_up {
        for c in &calls {
            assert!(
                !c.is_finished(),
                "a host was answered before the server let it go"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(arrived.load(Ordering::SeqCst), hosts.len());
    assert_eq!(client.host_limits().keys(), 1);
    go.add_permits(hosts.len());
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().status(), 200);
    }
}

/// A per-host override written as a fully qualified name (`"api.example.com."`)
/// binds the host: requests are keyed without the trailing dot, so the
/// override was never matched and the host got the default.
#[test]
fn an_override_written_with_a_trailing_dot_binds_its_host() {
    let client = Client::builder()
        .host_limit("API.Example.com.", KeyLimit::new().concurrency(3))
        .host_limit("other.example.:8443", KeyLimit::new().concurrency(5))
        .host_limit("[::1]:8080", KeyLimit::new().concurrency(7))
        .build()
        .unwrap();
    let limits = client.host_limits();
    assert_eq!(
        limits.max_in_flight(&"api.example.com".to_string()),
        Some(3)
    );
    assert_eq!(
        limits.max_in_flight(&"other.example:8443".to_string()),
        Some(5)
    );
    assert_eq!(limits.max_in_flight(&"[::1]:8080".to_string()), Some(7));
    assert_eq!(
        limits.max_in_flight(&"elsewhere.test".to_string()),
        Some(16)
    );
}

/// Sends `n` requests to `uri` at once; the server holds each until all `n`
/// are in, so each needs a connection of its own.
async fn batch(client: &Client, uri: &str, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (client, uri) = (client.clone(), uri.to_string());
            tokio::spawn(async move { client.get(&uri).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().status(), 200);
    }
    // The pool takes a connection back in a task of its own, once the
    // connection is ready again: let it. On the paused clock this sleep ends
    // only when the runtime has nothing else to run (no task ready, no I/O
    // ready), so after every such task has run, however slow the machine.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// `pool_max_idle_per_host(1)`: of 3 connections opened for 3 requests at
/// once, one is kept, so the next 3 at once reuse it and open exactly 2
/// more; the default keeps all 3 (found fine: the setting reaches
/// hyper-util's pool). Client and server share the one thread of the
/// runtime, on the paused clock (see [`batch`]).
#[tokio::test(start_paused = true)]
async fn the_pool_keeps_at_most_max_idle_per_host() {
    for max_idle in [Some(1), None] {
        let barrier = Arc::new(Barrier::new(3));
        let (addr, accepted) = serve_counting(handler(move |_| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                respond(200).body(Chunks::full("ok")).unwrap()
            }
        }))
        .await;
        let mut builder = Client::builder().no_retry();
        if let Some(max) = max_idle {
            builder = builder.pool_max_idle_per_host(max);
        }
        let client = builder.build().unwrap();
        let uri = format!("http://{addr}/");
        batch(&client, &uri, 3).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        batch(&client, &uri, 3).await;
        let opened = accepted.load(Ordering::SeqCst);
        match max_idle {
            Some(_) => assert_eq!(opened, 5),
            None => assert_eq!(opened, 3),
        }
    }
}
