//! Defects found in the review of the batch fan-out API, each with the test
//! that showed it; on tokio's paused clock.
#![cfg(feature = "fan-out")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::sleeper;
use tower_fanout_core::fan_out::{Progress, fan_out};

/// A batch whose iterator does not know its size (a `filter`, lines read
/// as they come) reports its total once the iterator is exhausted, so the
/// progress shows the end (`completed == total`) to a callback and to a
/// watch. The total stayed `None`: a callback could not tell the last
/// report, and a watcher waiting for the end of a stream still held waited
/// forever.
#[tokio::test(start_paused = true)]
async fn progress_of_a_batch_of_unknown_size_reports_its_end() {
    let requests = || (0..10u64).map(|i| 10 + i).filter(|_| true);
    assert_eq!(
        fan_out(sleeper(), requests()).stream().progress().total,
        None
    );

    let reports = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let mut fan = fan_out(sleeper(), requests())
        .concurrency(3)
        .unwrap()
        .on_progress({
            let reports = reports.clone();
            move |p| reports.lock().unwrap().push(p.clone())
        });
    let mut watch = fan.watch_progress();
    let mut stream = fan.stream();
    let watcher = tokio::spawn(async move {
        watch
            .wait_for(|p| p.total == Some(p.completed))
            .await
            .map(|p| p.clone())
    });
    let mut done = 0;
    while let Some(item) = stream.next().await {
        assert!(item.result.is_ok());
        done += 1;
    }
    assert_eq!(done, 10);
    // The stream is still held: the watch is not closed, its value says
    // the batch is over.
    let last = tokio::time::timeout(Duration::from_secs(1), watcher)
        .await
        .expect("the watch reported the end")
        .unwrap()
        .unwrap();
    assert_eq!(
        (last.total, last.completed, last.in_flight),
        (Some(10), 10, 0)
    );
    {
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 10);
        let end = reports.last().unwrap();
        assert_eq!(end.total, Some(end.completed));
        assert_eq!(end.to_string(), "10/10 done (10 ok, 0 failed, 0 in flight)");
    }
    drop(stream);

    // Empty, and of unknown size: the watch says so once it is run.
    let mut fan = fan_out(sleeper(), std::iter::empty::<u64>().filter(|_| true));
    let watch = fan.watch_progress();
    let batch = fan.collect().await;
    assert_eq!(batch.summary().total, 0);
    assert_eq!(watch.borrow().total, Some(0));
}
