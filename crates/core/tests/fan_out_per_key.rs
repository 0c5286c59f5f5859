//! A fan-out window over a per-key limit: head-of-line blocking across keys,
//! and the key-aware window that removes it; on tokio's paused clock.
#![cfg(all(feature = "fan-out", feature = "keyed"))]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::InFlight;
use tokio::time::{Instant, sleep};
use tower::{Layer, service_fn};
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::fan_out::{Progress, fan_out};
use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};

/// A request: its key (`'A'` slow, `'B'` fast) and its number.
type Req = (char, usize);

/// A downstream answering key A in 1 s and key B in 10 ms, counting calls
/// in flight (past the keyed limit's gate), behind a limit of 2 per key.
fn two_speed_downstream(
    seen: Arc<InFlight>,
) -> impl tower::Service<Req, Response = Req, Error = tower_fanout_core::BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let inner = service_fn(move |req: Req| {
        let guard = seen.enter();
        async move {
            let ms = if req.0 == 'A' { 1000 } else { 10 };
            sleep(Duration::from_millis(ms)).await;
            drop(guard);
            Ok::<_, std::io::Error>(req)
        }
    });
    KeyedLimitLayer::builder_with_key(|req: &Req| req.0, KeyLimit::new().concurrency(2))
        .build()
        .unwrap()
        .layer(inner)
}

/// `grouped()` through `svc`, 8 at a time and 2 per key.
async fn keyed_batch<S>(svc: S) -> tower_fanout_core::fan_out::Batch<Req>
where
    S: tower::Service<Req, Response = Req, Error = std::io::Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    fan_out(svc, grouped())
        .concurrency(8)
        .unwrap()
        .per_key(|req: &Req| req.0, 2)
        .unwrap()
        .collect()
        .await
}

/// 20 requests of slow key A, then 20 of fast key B.
fn grouped() -> Vec<Req> {
    (0..20)
        .map(|i| ('A', i))
        .chain((0..20).map(|i| ('B', i)))
        .collect()
}

/// The input lists a slow key's items before a fast key's, as lists grouped
/// by site do. A plain window of 8 fills with A's items: 2 pass A's gate
/// and 6 wait there, holding their window slots, so B's items start only
/// as A's drain (its last item finished at ≈ 7.1 s, with 2 calls in flight
/// for the first 7 s). A key-aware window sets A's extra items aside and
/// starts B's in their place: B is done in 10 rounds of 10 ms, and both
/// keys run their 2 calls at once from the start.
#[tokio::test(start_paused = true)]
async fn a_slow_key_does_not_hold_the_window_from_a_fast_one() {
    let seen = Arc::new(InFlight::default());
    let start = Instant::now();
    // The peak while A's first two calls still run (they end at 1 s).
    let early_peak = tokio::spawn({
        let seen = seen.clone();
        async move {
            sleep(Duration::from_millis(900)).await;
            seen.peak()
        }
    });
    let mut stream = fan_out(two_speed_downstream(seen.clone()), grouped())
        .concurrency(8)
        .unwrap()
        .per_key(|req: &Req| req.0, 2)
        .unwrap()
        .stream();
    let mut last_b = Duration::ZERO;
    let mut last_a = Duration::ZERO;
    let mut order = Vec::new();
    while let Some(item) = stream.next().await {
        let (key, _) = item.result.unwrap();
        match key {
            'A' => last_a = start.elapsed(),
            _ => last_b = start.elapsed(),
        }
        order.push(item.index);
    }
    let early_peak = early_peak.await.unwrap();
    println!(
        "last B done at {last_b:?}, last A at {last_a:?}; peak in flight in the first second {early_peak}, overall {}",
        seen.peak()
    );
    assert_eq!(order.len(), 40);
    assert_eq!(last_b, Duration::from_millis(100), "B waited behind A");
    assert_eq!(early_peak, 4, "only A's calls ran at first");
    assert_eq!(seen.peak(), 4, "a key ran more than its limit");
    // A is bound by its own limit only: 10 rounds of 1 s.
    assert_eq!(last_a, Duration::from_secs(10));
}

/// Records when each request starts (its key and number, in start order)
/// and answers after `ms(req)` milliseconds.
fn recorder(
    starts: Arc<Mutex<Vec<Req>>>,
    ms: fn(&Req) -> u64,
) -> impl tower::Service<Req, Response = Req, Error = std::io::Error, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |req: Req| {
        starts.lock().unwrap().push(req);
        async move {
            sleep(Duration::from_millis(ms(&req))).await;
            Ok::<_, std::io::Error>(req)
        }
    })
}

/// Collected, the results are in input order; every progress report counts
/// right, and the last one shows the end.
#[tokio::test(start_paused = true)]
async fn collect_keeps_input_order_and_progress_counts() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let reports = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let mut fan = fan_out(
        recorder(starts, |r| if r.0 == 'A' { 100 } else { 3 }),
        grouped(),
    )
    .concurrency(6)
    .unwrap()
    .per_key(|req: &Req| req.0, 2)
    .unwrap()
    .on_progress({
        let reports = reports.clone();
        move |p| reports.lock().unwrap().push(p.clone())
    });
    let watch = fan.watch_progress();
    let batch = fan.collect().await;
    let got: Vec<Req> = batch
        .items()
        .iter()
        .map(|item| *item.result.as_ref().unwrap())
        .collect();
    assert_eq!(got, grouped());
    assert!(
        batch
            .items()
            .iter()
            .enumerate()
            .all(|(i, item)| item.index == i)
    );
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 40);
    for (n, p) in reports.iter().enumerate() {
        assert_eq!(p.completed, n + 1, "{p}");
        assert_eq!(p.succeeded, n + 1, "{p}");
        assert!(p.in_flight <= 4, "two keys of 2 each: {p}");
        assert_eq!(p.started, p.completed + p.in_flight, "{p}");
        assert!(p.started + p.waiting_for_key <= 40, "{p}");
    }
    // A's 18 extra items and 6 of B's fill the lookahead (4 × 6) at once:
    // the first report, at B's first answer, says so.
    assert_eq!(reports[0].waiting_for_key, 24, "{}", reports[0]);
    assert_eq!(
        reports[0].to_string(),
        "1/40 done (1 ok, 0 failed, 3 in flight, 24 waiting for their key)"
    );
    assert!(reports.iter().all(|p| p.waiting_for_key <= 24));
    // Built field by field: `Progress` may gain fields.
    let mut end = Progress::default();
    end.total = Some(40);
    (end.started, end.completed, end.succeeded) = (40, 40, 40);
    assert_eq!(reports.last(), Some(&end));
    assert_eq!(*watch.borrow(), end);
}

/// A set-aside request starts as soon as its key has room, before any
/// request of that key read after it, and at the same instant its key's
/// earlier request ends.
#[tokio::test(start_paused = true)]
async fn a_set_aside_request_starts_first_when_its_key_frees() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let origin = Instant::now();
    let timed = Arc::new(Mutex::new(Vec::new()));
    let svc = service_fn({
        let timed = timed.clone();
        let starts = starts.clone();
        move |req: Req| {
            starts.lock().unwrap().push(req);
            timed.lock().unwrap().push((req, origin.elapsed()));
            async move {
                // A's requests take 50 ms, 10 ms, 50 ms...; B's and C's 7 ms.
                let ms = match req {
                    ('A', i) if !i.is_multiple_of(2) => 10,
                    ('A', _) => 50,
                    _ => 7,
                };
                sleep(Duration::from_millis(ms)).await;
                Ok::<_, std::io::Error>(req)
            }
        }
    });
    // Keys interleaved, A the most frequent.
    let requests: Vec<Req> = (0..30)
        .map(|i| (['A', 'A', 'B', 'A', 'C'][i % 5], i))
        .collect();
    let batch = fan_out(svc, requests.clone())
        .concurrency(5)
        .unwrap()
        .per_key(|req: &Req| req.0, 2)
        .unwrap()
        .collect()
        .await;
    assert_eq!(batch.summary().succeeded, 30);
    let starts = starts.lock().unwrap();
    assert_eq!(starts.len(), 30);
    for key in ['A', 'B', 'C'] {
        let order: Vec<usize> = starts.iter().filter(|r| r.0 == key).map(|r| r.1).collect();
        let input: Vec<usize> = requests
            .iter()
            .filter(|r| r.0 == key)
            .map(|r| r.1)
            .collect();
        assert_eq!(order, input, "key {key} started out of order");
    }
    // A's third request (index 3) was set aside for A's first two; it
    // starts when A's second (10 ms) ends.
    let timed = timed.lock().unwrap();
    let at = |i: usize| timed.iter().find(|(r, _)| r.1 == i).unwrap().1;
    assert_eq!(at(0), Duration::ZERO);
    assert_eq!(at(1), Duration::ZERO);
    assert_eq!(at(3), Duration::from_millis(10));
}

/// As a stream, the fan-out reads at most concurrency + lookahead requests
/// ahead of those finished: with one key only, it waits for a request to
/// finish rather than read the whole batch into its set-aside buffer.
#[tokio::test(start_paused = true)]
async fn lookahead_bounds_the_requests_read() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let requests = {
        let pulled = pulled.clone();
        (0..1000).map(move |i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            ('A', i)
        })
    };
    let seen = Arc::new(InFlight::default());
    let svc = {
        let seen = seen.clone();
        service_fn(move |req: Req| {
            let guard = seen.enter();
            async move {
                sleep(Duration::from_millis(10)).await;
                drop(guard);
                Ok::<_, std::io::Error>(req)
            }
        })
    };
    let mut stream = fan_out(svc, requests)
        .concurrency(8)
        .unwrap()
        .per_key(|req: &Req| req.0, 2)
        .unwrap()
        .lookahead(3)
        .unwrap()
        .stream();
    let mut done = 0;
    while let Some(item) = stream.next().await {
        assert_eq!(item.index, done, "one key runs in input order");
        done += 1;
        let read = pulled.load(Ordering::SeqCst);
        assert!(read <= done + 2 + 3, "{read} read, {done} done");
    }
    assert_eq!(done, 1000);
    assert_eq!(seen.peak(), 2);
    assert_eq!(stream.progress().total, Some(1000));

    // The default: 4 × the concurrency.
    let pulled = Arc::new(AtomicUsize::new(0));
    let requests = {
        let pulled = pulled.clone();
        (0..1000).map(move |i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            ('A', i)
        })
    };
    let mut stream = fan_out(recorder(Arc::default(), |_| 10), requests)
        .concurrency(8)
        .unwrap()
        .per_key(|req: &Req| req.0, 2)
        .unwrap()
        .stream();
    stream.next().await.unwrap();
    assert_eq!(pulled.load(Ordering::SeqCst), 2 + 32);
}

/// A panicking request frees its key: the key's set-aside requests still
/// run.
#[tokio::test(start_paused = true)]
async fn a_panicking_request_frees_its_key() {
    let svc = service_fn(|req: Req| async move {
        if req.1 == 0 {
            panic!("the first request panics");
        }
        sleep(Duration::from_millis(5)).await;
        Ok::<_, std::io::Error>(req)
    });
    let batch = fan_out(svc, (0..10).map(|i| ('A', i)))
        .concurrency(4)
        .unwrap()
        .per_key(|req: &Req| req.0, 1)
        .unwrap()
        .collect()
        .await;
    let summary = batch.summary();
    assert_eq!((summary.total, summary.succeeded), (10, 9));
    assert_eq!(summary.by_kind.get("panicked"), Some(&1));
}

/// The failed items of a keyed batch are retried alone, as with any batch.
#[tokio::test(start_paused = true)]
async fn retry_runs_only_the_failed_items_of_a_keyed_batch() {
    let svc = service_fn(|req: Req| async move {
        if req.1.is_multiple_of(4) {
            Err::<Req, std::io::Error>(std::io::Error::other("fails"))
        } else {
            Ok(req)
        }
    });
    let mut batch = keyed_batch(svc).await;
    assert_eq!(batch.summary().failed, 10);
    let requests = grouped();
    let fixed = service_fn(|req: Req| async move { Ok::<_, std::io::Error>(req) });
    let retried = batch
        .retry_failed(fixed, 8, |index| requests[index])
        .await
        .unwrap();
    assert_eq!(retried, 10);
    assert_eq!(batch.summary().succeeded, 40);
    assert_eq!(batch.items()[4].attempts, 2);
    assert_eq!(batch.items()[5].attempts, 1);
}

/// A retry keeps the first run's per-key window: `retry_failed_with` takes
/// the same `per_key` bound, so the slow key's failures do not hold the
/// retry's window from the fast key's, as they do in `retry_failed`'s
/// plain window (the last of B's calls passes its gate at ≈ 7 s there).
#[tokio::test(start_paused = true)]
async fn a_retry_keeps_the_per_key_window() {
    let requests = grouped();
    for keyed in [true, false] {
        let failing = service_fn(|_: Req| async { Err::<Req, _>(std::io::Error::other("down")) });
        let mut batch = keyed_batch(failing).await;
        assert_eq!(batch.summary().failed, 40);
        // When each of B's calls got past its key's gate.
        let passed = Arc::new(Mutex::new(Vec::new()));
        let inner = service_fn({
            let passed = passed.clone();
            move |req: Req| {
                if req.0 == 'B' {
                    passed.lock().unwrap().push(Instant::now());
                }
                async move {
                    let ms = if req.0 == 'A' { 1000 } else { 10 };
                    sleep(Duration::from_millis(ms)).await;
                    Ok::<_, std::io::Error>(req)
                }
            }
        });
        let downstream =
            KeyedLimitLayer::builder_with_key(|req: &Req| req.0, KeyLimit::new().concurrency(2))
                .build()
                .unwrap()
                .layer(inner);
        let start = Instant::now();
        let retried = if keyed {
            batch
                .retry_failed_with(
                    downstream,
                    |index| requests[index],
                    |fan| fan.concurrency(8)?.per_key(|req: &Req| req.0, 2),
                )
                .await
        } else {
            batch
                .retry_failed(downstream, 8, |index| requests[index])
                .await
        };
        assert_eq!(retried.unwrap(), 40);
        assert_eq!(batch.summary().succeeded, 40);
        assert!(batch.items().iter().all(|item| item.attempts == 2));
        let last_b = passed.lock().unwrap().iter().max().copied().unwrap() - start;
        if keyed {
            assert_eq!(last_b, Duration::from_millis(90), "ten rounds of two");
        } else {
            assert!(last_b > Duration::from_secs(6), "{last_b:?}");
        }
    }
}

/// A bad setting in the retry's fan-out is the retry's error, and nothing
/// is run or changed.
#[tokio::test(start_paused = true)]
async fn a_retry_with_a_bad_setting_runs_nothing() {
    let failing = service_fn(|_: Req| async { Err::<Req, _>(std::io::Error::other("down")) });
    let mut batch = fan_out(failing, grouped())
        .concurrency(8)
        .unwrap()
        .collect()
        .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counting = service_fn({
        let calls = calls.clone();
        move |req: Req| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(req) }
        }
    });
    let requests = grouped();
    let err = batch
        .retry_failed_with(
            counting,
            |index| requests[index],
            |fan| fan.concurrency(8)?.per_key(|req: &Req| req.0, 0),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_per_key"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(batch.summary().failed, 40);
    assert!(batch.items().iter().all(|item| item.attempts == 1));
}

/// One at a time, a keyed window is a plain one: input order, one call
/// after another; and a batch of unknown size reports its end.
#[tokio::test(start_paused = true)]
async fn concurrency_one_runs_in_input_order_and_reports_the_end() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let reports = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let unknown = grouped().into_iter().filter(|_| true);
    let start = Instant::now();
    let batch = fan_out(recorder(starts.clone(), |_| 10), unknown)
        .concurrency(1)
        .unwrap()
        .per_key(|req: &Req| req.0, 2)
        .unwrap()
        .on_progress({
            let reports = reports.clone();
            move |p| reports.lock().unwrap().push(p.clone())
        })
        .collect()
        .await;
    assert_eq!(batch.summary().succeeded, 40);
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    assert_eq!(*starts.lock().unwrap(), grouped());
    let reports = reports.lock().unwrap();
    let end = reports.last().unwrap();
    assert_eq!((end.total, end.completed, end.in_flight), (Some(40), 40, 0));
}

/// Dropping a keyed stream sends nothing more: not the requests in flight
/// waiting underneath, not the ones set aside; and the layers underneath
/// get their capacity back.
#[tokio::test(start_paused = true)]
async fn dropping_a_keyed_stream_sends_nothing_more() {
    let limit = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = limit.handle();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let svc = limit.layer(recorder(starts.clone(), |_| 100));
    let mut stream = fan_out(svc, grouped())
        .concurrency(8)
        .unwrap()
        .per_key(|req: &Req| req.0, 2)
        .unwrap()
        .stream();
    let none = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(none.is_err(), "nothing finishes in 50 ms");
    // Two of A and two of B started: A0 is called, the others wait on the
    // limit of 1 underneath; the rest of A and B are set aside.
    assert_eq!(stream.progress().in_flight, 4);
    assert_eq!((handle.in_flight(), handle.waiting()), (1, 3));
    drop(stream);
    tokio::task::yield_now().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!((handle.in_flight(), handle.waiting()), (0, 0));
    assert_eq!(*starts.lock().unwrap(), vec![('A', 0)]);
}

/// A panicking `key_fn` comes out of `collect` (here in a task of its
/// own), as its doc says, and the requests already in flight are cancelled
/// with the stream: the limit underneath gets its permits back.
#[tokio::test(start_paused = true)]
async fn a_panicking_key_fn_panics_the_caller_and_cancels_the_rest() {
    let limit = ConcurrencyLimitLayer::new(8).unwrap();
    let handle = limit.handle();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let svc = limit.layer(recorder(starts.clone(), |_| 1000));
    let fan = fan_out(svc, grouped())
        .concurrency(8)
        .unwrap()
        .per_key(
            |req: &Req| {
                assert_ne!(req.1, 3, "key_fn panics on the fourth");
                req.0
            },
            8,
        )
        .unwrap();
    let err = tokio::spawn(fan.collect()).await.unwrap_err();
    assert!(err.is_panic());
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.waiting()), (0, 0));
    sleep(Duration::from_secs(2)).await;
    assert!(starts.lock().unwrap().len() <= 3);
}

#[test]
fn a_zero_per_key_or_lookahead_and_chunks_with_keys_are_refused() {
    let svc = service_fn(|req: Req| async move { Ok::<_, std::io::Error>(req) });
    let err = fan_out(svc, grouped())
        .per_key(|r: &Req| r.0, 0)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_per_key must be at least 1"), "{text}");
    assert!(text.contains("do not call `per_key`"), "{text}");

    let err = fan_out(svc, grouped())
        .chunked(5)
        .unwrap()
        .per_key(|r: &Req| r.0, 2)
        .unwrap_err();
    assert!(err.to_string().contains("drop `.chunked(n)`"), "{err}");
    let err = fan_out(svc, grouped())
        .per_key(|r: &Req| r.0, 2)
        .unwrap()
        .chunked(5)
        .unwrap_err();
    assert!(err.to_string().contains("needs a sliding window"), "{err}");
    // A window set after chunks does not replace them: both is refused.
    let err = fan_out(svc, grouped())
        .chunked(5)
        .unwrap()
        .concurrency(5)
        .unwrap_err();
    assert!(err.to_string().contains("pick one"), "{err}");

    let err = fan_out(svc, grouped())
        .per_key(|r: &Req| r.0, 2)
        .unwrap()
        .lookahead(0)
        .unwrap_err();
    assert!(
        err.to_string().contains("lookahead must be at least 1"),
        "{err}"
    );
}

/// Code over any fan-out, keyed or not, names its window's admission: a
/// helper a user writes once (here, one that counts the failures) takes
/// both.
#[tokio::test(start_paused = true)]
async fn a_helper_takes_a_keyed_and_a_plain_fan_out() {
    use tower_fanout_core::fan_out::{Admission, FanOut};

    async fn failures<S, I, W>(batch: FanOut<S, I, W>) -> usize
    where
        W: Admission<Req>,
        I: Iterator<Item = Req> + Send + 'static,
        S: tower::Service<Req, Response = Req> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<tower_fanout_core::BoxError>,
    {
        batch.collect().await.summary().failed
    }

    let seen = Arc::new(InFlight::default());
    let plain = fan_out(two_speed_downstream(seen.clone()), grouped().into_iter());
    let keyed = fan_out(two_speed_downstream(seen), grouped().into_iter())
        .per_key(|req: &Req| req.0, 2)
        .unwrap();
    assert_eq!(failures(plain).await, 0);
    assert_eq!(failures(keyed).await, 0);
}
