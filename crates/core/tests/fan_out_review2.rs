//! Second review of the batch fan-out API, from a batch user's side: each
//! test showed a defect before its fix; on tokio's paused clock.
#![cfg(feature = "fan-out")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};

use support::sleeper;
use tower_fanout_core::fan_out::{FanOut, Progress, fan_out};

/// Runs `fan` to its end and returns every progress report its callback got.
async fn reports<S, I>(fan: FanOut<S, I>) -> Vec<Progress>
where
    I: Iterator<Item = u64>,
    S: tower::Service<u64, Response = u64, Error = std::io::Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let batch = fan
        .on_progress({
            let seen = seen.clone();
            move |p| seen.lock().unwrap().push(p.clone())
        })
        .collect()
        .await;
    assert_eq!(batch.summary().succeeded, batch.items().len());
    seen.lock().unwrap().clone()
}

/// A batch of unknown size (a `filter`, lines read as they come) run one at
/// a time, or in chunks that divide it exactly, never told its progress
/// callback the end: the iterator was found exhausted only when the
/// consumer asked for the item after the last, so the last report read
/// `total: None` ("5 done") and a callback waiting for `completed == total`
/// (the module's own example prints its final line so) never fired. With a
/// wider window the exhaustion was seen while items were still in flight,
/// which is why the earlier test of unknown sizes (window 3) passed.
#[tokio::test(start_paused = true)]
async fn the_last_progress_report_of_an_unknown_size_batch_has_its_total() {
    let unknown = |n: u64| (0..n).map(|i| 10 + i).filter(|_| true);
    let one_at_a_time = fan_out(sleeper(), unknown(5)).concurrency(1).unwrap();
    check("one at a time", reports(one_at_a_time).await, 5);
    let exact_chunks = fan_out(sleeper(), unknown(10)).chunked(5).unwrap();
    check("chunks dividing the batch", reports(exact_chunks).await, 10);
    let single = fan_out(sleeper(), unknown(1)).concurrency(4).unwrap();
    check("a single item", reports(single).await, 1);
}

/// The reports of a batch of `n` items: one per item, monotone, the last
/// (and only the last) showing the end.
fn check(name: &str, seen: Vec<Progress>, n: usize) {
    assert_eq!(seen.len(), n, "{name}: one report per item");
    let end = seen.last().unwrap();
    assert_eq!(end.total, Some(n), "{name}: {end}");
    assert_eq!((end.completed, end.in_flight), (n, 0), "{name}: {end}");
    assert_eq!(
        seen.iter().filter(|p| p.total == Some(p.completed)).count(),
        1,
        "{name}: the end is reported once"
    );
    assert!(
        seen.windows(2)
            .all(|w| w[1].completed == w[0].completed + 1 && w[1].started >= w[0].started),
        "{name}: monotone"
    );
}
