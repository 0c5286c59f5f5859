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

/// A runtime that shuts down while a batch runs cancels its requests'
/// tasks: their items say so, where they read "inner service panicked".
#[test]
fn requests_cancelled_by_a_runtime_shutdown_are_not_called_panics() {
    use tower_fanout_core::error::ServicePanicked;

    let first = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let svc = service_fn(|i: u32| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, std::io::Error>(i)
    });
    let mut stream = first.block_on(async {
        let mut stream = fan_out(svc, 0..2u32).concurrency(2).unwrap().stream();
        // Starts both; neither ends within the first runtime's life.
        let polled = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
        assert!(polled.is_err(), "nothing finishes in a second");
        stream
    });
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        let mut ended = 0;
        while let Some(item) = stream.next().await {
            let err = item.result.unwrap_err();
            assert!(!err.is::<ServicePanicked>(), "{err}");
            assert!(err.to_string().contains("runtime"), "{err}");
            ended += 1;
        }
        assert_eq!(ended, 2);
    });
}
