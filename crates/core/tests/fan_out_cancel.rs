//! Dropping a fan-out stream sends nothing more, on a multi-thread runtime.
//!
//! The stream's tasks live in a `JoinSet`, whose drop aborts them one at a
//! time while the other worker runs: an aborted task holding a permit gave
//! it to a waiter not yet aborted, which then went out (the `fanout mcp`
//! cancel test saw a fourth request one run in ~600 under load).
#![cfg(all(feature = "fan-out", feature = "concurrency"))]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{Layer, service_fn};
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::fan_out::fan_out;

const WAITERS: usize = 1000;

/// One round: a limit of 1, one call holding it for ever, the rest waiting;
/// then the stream is dropped. Returns the calls made in all.
async fn one_round() -> usize {
    let calls = Arc::new(AtomicUsize::new(0));
    let limit = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = limit.handle();
    let counting = {
        let calls = calls.clone();
        service_fn(move |_: usize| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), std::io::Error>>()
        })
    };
    let mut stream = fan_out(limit.layer(counting), 0..WAITERS)
        .concurrency(WAITERS)
        .unwrap()
        .stream();
    // Every item started: one call in, the rest waiting for the permit.
    let all_started = async {
        for _ in 0..10_000 {
            if calls.load(Ordering::SeqCst) == 1 && handle.waiting() == WAITERS - 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the batch never started");
    };
    tokio::select! {
        _ = stream.next() => panic!("a call that never ends ended"),
        () = all_started => {}
    }
    drop(stream);
    // Every task is gone once the service clones they held are.
    for _ in 0..10_000 {
        if Arc::strong_count(&calls) == 1 {
            return calls.load(Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the batch's tasks outlived its stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_sends_nothing_more() {
    for round in 0..50 {
        assert_eq!(
            one_round().await,
            1,
            "round {round}: a waiter went out after the drop"
        );
    }
}
