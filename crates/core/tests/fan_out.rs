//! Contract tests for the batch fan-out API, on tokio's paused clock.
#![cfg(feature = "fan-out")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::InFlight;
use tokio::time::{Instant, sleep};
use tower::service_fn;
use tower_fanout_core::BoxError;
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::fan_out::{Progress, fan_out};

/// Sleeps `ms` milliseconds and answers with the request; counts in flight.
fn sleeper(
    seen: Arc<InFlight>,
) -> impl tower::Service<u64, Response = u64, Error = std::io::Error, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |ms: u64| {
        let guard = seen.enter();
        async move {
            sleep(Duration::from_millis(ms)).await;
            drop(guard);
            Ok::<_, std::io::Error>(ms)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn window_bounds_in_flight_and_keeps_the_downstream_busy() {
    let seen = Arc::new(InFlight::default());
    let start = Instant::now();
    let batch = fan_out(sleeper(seen.clone()), std::iter::repeat_n(10u64, 200))
        .concurrency(8)
        .unwrap()
        .collect()
        .await;
    assert_eq!(batch.summary().succeeded, 200);
    assert_eq!(seen.peak(), 8);
    // 200 calls of 10 ms, 8 at a time: 25 rounds.
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn collect_keeps_input_order() {
    let seen = Arc::new(InFlight::default());
    let delays: Vec<u64> = (0..50).map(|i| (i * 37 % 11) + 1).collect();
    let batch = fan_out(sleeper(seen), delays.clone())
        .concurrency(5)
        .unwrap()
        .collect()
        .await;
    let got: Vec<u64> = batch
        .items()
        .iter()
        .map(|i| *i.result.as_ref().unwrap())
        .collect();
    assert_eq!(got, delays);
    assert!(
        batch
            .items()
            .iter()
            .enumerate()
            .all(|(i, item)| item.index == i)
    );
}

#[tokio::test(start_paused = true)]
async fn stream_yields_as_completed_and_pulls_lazily() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let requests = {
        let pulled = pulled.clone();
        (0..1000u64).map(move |i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            if i % 2 == 0 { 30 } else { 10 }
        })
    };
    let seen = Arc::new(InFlight::default());
    let mut stream = fan_out(sleeper(seen), requests)
        .concurrency(4)
        .unwrap()
        .stream();
    let first = stream.next().await.unwrap();
    assert_eq!(first.result.unwrap(), 10, "the fast one finishes first");
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        4,
        "only a window's worth pulled"
    );
    let mut done = 1;
    while let Some(_item) = stream.next().await {
        done += 1;
        let p = stream.progress();
        assert!(p.started - p.completed <= 4, "{p}");
    }
    assert_eq!(done, 1000);
    assert_eq!(stream.progress().total, Some(1000));
}

#[tokio::test(start_paused = true)]
async fn chunks_finish_before_the_next_starts() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let origin = Instant::now();
    let svc = service_fn({
        let starts = starts.clone();
        move |(i, ms): (usize, u64)| {
            starts.lock().unwrap().push((i, origin.elapsed()));
            async move {
                sleep(Duration::from_millis(ms)).await;
                Ok::<_, std::io::Error>(i)
            }
        }
    });
    // In each chunk of 5, one item is slow (50 ms), the others fast (10 ms).
    let requests = (0..20).map(|i| (i, if i % 5 == 0 { 50 } else { 10 }));
    let batch = fan_out(svc, requests).chunked(5).unwrap().collect().await;
    assert_eq!(batch.summary().succeeded, 20);
    for (i, at) in starts.lock().unwrap().iter() {
        assert_eq!(*at, Duration::from_millis(50 * (*i as u64 / 5)), "item {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn progress_goes_to_callback_and_watch() {
    let seen = Arc::new(InFlight::default());
    let calls = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let mut fan = fan_out(sleeper(seen), vec![5u64; 30])
        .concurrency(3)
        .unwrap()
        .on_progress({
            let calls = calls.clone();
            move |p| calls.lock().unwrap().push(p.clone())
        });
    let watch = fan.watch_progress();
    let batch = fan.collect().await;
    assert_eq!(batch.summary().total, 30);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 30);
    assert!(
        calls
            .windows(2)
            .all(|w| w[1].completed == w[0].completed + 1)
    );
    let last = watch.borrow().clone();
    // Built field by field: `Progress` may gain fields.
    let mut end = Progress::default();
    end.total = Some(30);
    (end.started, end.completed, end.succeeded) = (30, 30, 30);
    assert_eq!(last, end);
    assert_eq!(
        last.to_string(),
        "30/30 done (30 ok, 0 failed, 0 in flight)"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_runs_only_the_failed_items() {
    let calls = Arc::new(Mutex::new(vec![0u32; 40]));
    let svc = service_fn({
        let calls = calls.clone();
        move |i: usize| {
            let attempt = {
                let mut calls = calls.lock().unwrap();
                calls[i] += 1;
                calls[i]
            };
            async move {
                // Every seventh item fails on its first attempt only.
                if i.is_multiple_of(7) && attempt == 1 {
                    Err::<usize, BoxError>(Box::new(std::io::Error::other("first try fails")))
                } else {
                    Ok(i)
                }
            }
        }
    });
    let mut batch = fan_out(svc.clone(), 0..40usize)
        .concurrency(6)
        .unwrap()
        .collect()
        .await;
    let summary = batch.summary();
    assert_eq!((summary.succeeded, summary.failed), (34, 6));
    assert_eq!(summary.by_kind.get("io"), Some(&6));
    assert_eq!(batch.failed_indices(), vec![0, 7, 14, 21, 28, 35]);
    let retried = batch.retry_failed(svc, 6, |index| index).await.unwrap();
    assert_eq!(retried, 6);
    assert_eq!(batch.summary().succeeded, 40);
    let calls = calls.lock().unwrap();
    for (i, n) in calls.iter().enumerate() {
        assert_eq!(*n, if i.is_multiple_of(7) { 2 } else { 1 }, "item {i}");
        assert_eq!(batch.items()[i].attempts, *n);
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_item_is_answered_not_lost() {
    let svc = service_fn(|i: u32| async move {
        if i == 3 {
            panic!("item 3 panics");
        }
        Ok::<_, std::io::Error>(i)
    });
    let batch = fan_out(svc, 0..10u32)
        .concurrency(4)
        .unwrap()
        .collect()
        .await;
    let summary = batch.summary();
    assert_eq!(summary.total, 10);
    assert_eq!(
        summary.to_string(),
        "10 total, 9 succeeded, 1 failed, panicked: 1"
    );
    assert_eq!(summary.by_kind.get("panicked"), Some(&1));
    assert!(batch.items()[3].result.is_err());
}

/// Dropping the stream mid-batch aborts the calls in flight, and the layers
/// underneath get their capacity back.
#[tokio::test(start_paused = true)]
async fn dropping_the_stream_gives_capacity_back() {
    let limit = ConcurrencyLimitLayer::new(3).unwrap();
    let handle = limit.handle();
    let seen = Arc::new(InFlight::default());
    let svc = tower::ServiceBuilder::new()
        .layer(limit)
        .service(sleeper(seen.clone()));
    let mut stream = fan_out(svc, vec![100u64; 50])
        .concurrency(10)
        .unwrap()
        .stream();
    let _ = tokio::time::timeout(Duration::from_millis(150), async {
        while stream.next().await.is_some() {}
    })
    .await;
    assert_eq!(handle.in_flight(), 3);
    drop(stream);
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.waiting(), 0);
    assert_eq!(seen.now(), 0);
}

#[test]
fn zero_concurrency_or_chunk_is_refused() {
    let svc = service_fn(|i: u32| async move { Ok::<_, std::io::Error>(i) });
    let err = fan_out(svc, 0..1u32).concurrency(0).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
    assert!(fan_out(svc, 0..1u32).chunked(0).is_err());
}

/// An input whose size is known (a `Vec`, an exact-size iterator) gives its
/// total from the first report, so a progress bar has its end before the
/// first item finishes, not only at the last one.
#[tokio::test(start_paused = true)]
async fn a_sized_input_reports_its_total_from_the_start() {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let fan = fan_out(sleeper(Arc::default()), vec![10u64; 12])
        .concurrency(3)
        .unwrap()
        .on_progress({
            let reports = reports.clone();
            move |p: &Progress| reports.lock().unwrap().push(p.clone())
        });
    let mut stream = fan.stream();
    assert_eq!(stream.progress().total, Some(12), "before anything ran");
    stream.next().await.unwrap();
    let first = reports.lock().unwrap()[0].clone();
    assert_eq!((first.total, first.completed), (Some(12), 1));
    assert_eq!(first.to_string(), "1/12 done (1 ok, 0 failed, 2 in flight)");
}

/// The stream refills its window when the caller asks for the next item,
/// not when one finishes, whether or not the input's size is known: a
/// caller that stops pulling starts nothing more.
#[tokio::test(start_paused = true)]
async fn an_unsized_input_is_pulled_lazily_too() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let requests = {
        let pulled = pulled.clone();
        // `filter` hides the size: the total is unknown until the end.
        (0..100u64).filter(|_| true).map(move |i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            if i == 0 { 10 } else { 30 }
        })
    };
    let mut stream = fan_out(sleeper(Arc::default()), requests)
        .concurrency(4)
        .unwrap()
        .stream();
    assert_eq!(stream.progress().total, None);
    let first = stream.next().await.unwrap();
    assert_eq!(first.result.unwrap(), 10);
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        4,
        "nothing pulled before the next call"
    );
    assert_eq!(stream.progress().in_flight, 3);
    stream.next().await.unwrap();
    assert_eq!(pulled.load(Ordering::SeqCst), 5);
}

/// Failures are counted in the progress as they come, not only in the
/// final summary.
#[tokio::test(start_paused = true)]
async fn progress_counts_failures() {
    let svc = service_fn(|i: u32| async move {
        if i.is_multiple_of(3) {
            Err(BoxError::from("refused"))
        } else {
            Ok(i)
        }
    });
    let mut fan = fan_out(svc, 0..9u32).concurrency(2).unwrap();
    let watch = fan.watch_progress();
    let batch = fan.collect().await;
    let last = watch.borrow().clone();
    assert_eq!((last.succeeded, last.failed, last.completed), (6, 3, 9));
    assert_eq!(last.to_string(), "9/9 done (6 ok, 3 failed, 0 in flight)");
    assert_eq!(batch.summary().failed, 3);
}
