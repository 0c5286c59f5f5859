//! Defects found in a user trial of the batch fan-out API, each with the
//! test that showed it; on tokio's paused clock.
#![cfg(feature = "fan-out")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::sleeper;
use tokio::time::{Instant, sleep};
use tower::service_fn;
use tower_fanout_core::BoxError;
use tower_fanout_core::fan_out::{Progress, fan_out};

/// `chunked` and `concurrency` both set how many requests run at once, and
/// each silently undid the other (`.chunked(20)?.concurrency(4)?` ran a
/// plain window of 4; `.concurrency(4)?.chunked(20)?` dropped the 4). Both,
/// in either order, are refused with a message that says to pick one; one
/// of them called twice is fine, the last value holding.
#[tokio::test(start_paused = true)]
async fn chunked_and_concurrency_together_are_refused() {
    let chunks_then_window = fan_out(sleeper(), 0..100u64)
        .chunked(20)
        .unwrap()
        .concurrency(4)
        .unwrap_err();
    let window_then_chunks = fan_out(sleeper(), 0..100u64)
        .concurrency(4)
        .unwrap()
        .chunked(20)
        .unwrap_err();
    for err in [chunks_then_window, window_then_chunks] {
        let message = err.to_string();
        for says in ["chunked", "concurrency", "at once", "pick one"] {
            assert!(message.contains(says), "{message}");
        }
    }

    // Twice the same: the last holds. Chunks of 2 for 10 ms each: five
    // rounds; a window of 5: two.
    let start = Instant::now();
    let batch = fan_out(sleeper(), vec![10u64; 10])
        .chunked(5)
        .unwrap()
        .chunked(2)
        .unwrap()
        .collect()
        .await;
    assert_eq!(batch.summary().succeeded, 10);
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    let start = Instant::now();
    let batch = fan_out(sleeper(), vec![10u64; 10])
        .concurrency(2)
        .unwrap()
        .concurrency(5)
        .unwrap()
        .collect()
        .await;
    assert_eq!(batch.summary().succeeded, 10);
    assert_eq!(start.elapsed(), Duration::from_millis(20));
}

/// A retry cut short by a timeout threw away the retries it had finished:
/// the batch still listed every failure, and `attempts` did not count the
/// requests that went out again. Now each retried item goes into the batch
/// as it finishes; the ones still in flight when the retry is dropped stay
/// as they were.
#[tokio::test(start_paused = true)]
async fn a_retry_cut_short_keeps_the_retries_it_finished() {
    let failing = service_fn(|i: usize| async move {
        Err::<usize, BoxError>(std::io::Error::other(format!("item {i} failed")).into())
    });
    let mut batch = fan_out(failing, 0..10usize).collect().await;
    assert_eq!(batch.summary().failed, 10);

    // Even items answer in 10 ms, odd ones in 1 s; the retry is given 100 ms.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let fixed = service_fn({
        let sent = sent.clone();
        move |i: usize| {
            sent.lock().unwrap().push(i);
            async move {
                let ms = if i.is_multiple_of(2) { 10 } else { 1000 };
                sleep(Duration::from_millis(ms)).await;
                Ok::<_, BoxError>(i * 10)
            }
        }
    });
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        batch.retry_failed(fixed, 10, |i| i),
    )
    .await;
    assert!(cut.is_err(), "the slow retries outlast the timeout");
    assert_eq!(
        sent.lock().unwrap().len(),
        10,
        "every failure went out again"
    );

    assert_eq!(batch.failed_indices(), vec![1, 3, 5, 7, 9]);
    for item in batch.items() {
        if item.index.is_multiple_of(2) {
            assert_eq!(*item.result.as_ref().unwrap(), item.index * 10);
            assert_eq!(item.attempts, 2, "item {}", item.index);
            assert_eq!(item.latency, Duration::from_millis(10));
        } else {
            let err = item.result.as_ref().unwrap_err();
            assert!(err.to_string().contains("failed"), "{err}");
            assert_eq!(item.attempts, 1, "item {}", item.index);
        }
    }

    // The next retry runs only what is left.
    let instant = service_fn(|i: usize| async move { Ok::<_, BoxError>(i * 10) });
    let retried = batch.retry_failed(instant, 10, |i| i).await.unwrap();
    assert_eq!(retried, 5);
    assert_eq!(batch.summary().succeeded, 10);
    assert!(batch.items().iter().all(|item| item.attempts == 2));
}

/// An iterator whose `size_hint` says an exact size it does not keep.
struct Claims<I> {
    inner: I,
    claim: usize,
}

impl<I: Iterator> Iterator for Claims<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claim, Some(self.claim))
    }
}

/// Runs `n` requests of 10 ms that claim to be `claim`, `window` at a time,
/// and returns every progress report and the watch's last value.
async fn run(n: u64, claim: usize, window: usize) -> (Vec<Progress>, Progress) {
    let requests = Claims {
        inner: (0..n).map(|_| 10u64),
        claim,
    };
    let reports = Arc::new(Mutex::new(Vec::new()));
    let mut fan = fan_out(sleeper(), requests)
        .concurrency(window)
        .unwrap()
        .on_progress({
            let reports = reports.clone();
            move |p: &Progress| reports.lock().unwrap().push(p.clone())
        });
    let watch = fan.watch_progress();
    assert_eq!(watch.borrow().total, Some(claim), "the claim, at first");
    let batch = fan.collect().await;
    assert_eq!(batch.items().len() as u64, n);
    let last = watch.borrow().clone();
    (reports.lock().unwrap().clone(), last)
}

/// `Progress.total` came from the iterator's `size_hint` and was never
/// corrected: an iterator claiming 10 and yielding 15 ended at total 10,
/// completed 15 (and its tenth report read "10/10 done" with five to come).
/// Once the iterator is exhausted, the total is the number it yielded.
#[tokio::test(start_paused = true)]
async fn the_total_is_what_the_iterator_yielded_not_what_it_claimed() {
    for window in [1, 3, 20] {
        let (reports, last) = run(15, 10, window).await;
        assert_eq!(reports.len(), 15);
        let end = reports.last().unwrap();
        assert_eq!(
            (end.total, end.completed),
            (Some(15), 15),
            "window {window}"
        );
        assert_eq!(
            (last.total, last.completed),
            (Some(15), 15),
            "window {window}"
        );
        assert_eq!(
            reports
                .iter()
                .filter(|p| p.total == Some(p.completed))
                .count(),
            1,
            "window {window}: the end is reported once, at the end"
        );
        assert!(
            reports
                .iter()
                .all(|p| p.total.is_none_or(|t| t >= p.completed)),
            "window {window}: never more done than the total"
        );

        // Claiming more than it yields: the watch ends at what it yielded.
        let (reports, last) = run(10, 15, window).await;
        assert_eq!(reports.len(), 10);
        assert_eq!(
            (last.total, last.completed),
            (Some(10), 10),
            "window {window}"
        );
    }
}

/// A fan-out spawns each request on the Tokio runtime: run outside one, it
/// panics when first polled (as its docs say), not when it is set up.
#[test]
#[should_panic(expected = "Tokio")]
fn a_fan_out_outside_a_tokio_runtime_panics_when_polled() {
    use std::future::Future;
    use std::task::{Context, Waker};

    let mut stream = fan_out(sleeper(), vec![10u64]).stream();
    let next = std::pin::pin!(stream.next());
    let _ = next.poll(&mut Context::from_waker(Waker::noop()));
}
