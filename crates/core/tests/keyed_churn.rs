//! The keyed limit's bounded map under key churn, on the paused clock: a key
//! that is busy or refilling is never forgotten (so churning other keys can
//! neither free its permits nor refill its bucket), a flood of keys keeps the
//! map bounded and answers every call, a saturated key holds up no other,
//! and a key without limits takes no room in the map.
#![cfg(feature = "keyed")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::Meter;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer, TooManyKeys};

type Req = http::Request<()>;

fn get(host: &str) -> Req {
    http::Request::get(format!("http://{host}/x"))
        .body(())
        .unwrap()
}

fn key(host: &str) -> String {
    host.to_string()
}

/// A backend where calls to `slow` hosts wait for `release` and every other
/// call answers at once; `meter` sees every call.
fn backend(
    meter: Meter,
    slow: &'static [&'static str],
    release: Arc<Notify>,
) -> impl Service<Req, Response = Instant, Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: Req| {
        let (meter, release) = (meter.clone(), release.clone());
        async move {
            let host = req.uri().host().unwrap().to_string();
            meter.enter(&host);
            if slow.contains(&host.as_str()) {
                release.notified().await;
            }
            meter.leave(&host);
            Ok::<_, BoxError>(Instant::now())
        }
    })
}

/// A backend where every call takes a second.
fn one_second() -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(|_: Req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    })
}

/// Calls `n` fresh keys one after another, each answered at once.
async fn churn<S>(svc: &S, round: usize, n: usize)
where
    S: Service<Req, Response = Instant, Error = BoxError> + Clone,
{
    for i in 0..n {
        svc.clone()
            .oneshot(get(&format!("churn-{round}-{i}.test")))
            .await
            .unwrap();
    }
}

/// Concurrency 1 per key: a key with a call in flight and one waiting keeps
/// its state through any churn of other keys, so it never gets a second
/// permit while the first is out.
#[tokio::test(start_paused = true)]
async fn churning_other_keys_never_frees_a_busy_key() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
        .max_keys(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (meter, release) = (Meter::default(), Arc::new(Notify::new()));
    let svc = ServiceBuilder::new().layer(layer).service(backend(
        meter.clone(),
        &["a.test"],
        release.clone(),
    ));

    let mut first = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(first.poll());
    let mut second = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(second.poll());
    for round in 0..10 {
        churn(&svc, round, 100).await;
        assert_pending!(second.poll());
        assert_eq!(handle.in_flight(&key("a.test")), 1);
        assert_eq!(handle.waiting(&key("a.test")), 1);
        assert!(handle.keys() <= 2);
    }
    // Calls to a.test after the churn queue behind the same permit.
    let mut third = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(third.poll());
    assert_eq!(meter.peak("a.test"), 1);

    release.notify_one();
    assert_ready!(first.poll()).unwrap();
    assert!(second.is_woken());
    assert_pending!(second.poll());
    assert_eq!(handle.in_flight(&key("a.test")), 1);
    release.notify_one();
    assert_ready!(second.poll()).unwrap();
    assert_pending!(third.poll());
    release.notify_one();
    assert_ready!(third.poll()).unwrap();
    assert_eq!(meter.peak("a.test"), 1);
}

/// One token per 10 s, burst 1: a key whose bucket is refilling is kept
/// through any churn, so churning cannot hand it a fresh, full bucket.
#[tokio::test(start_paused = true)]
async fn churning_other_keys_never_refills_a_bucket() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(4))
        .limit_for(
            "a.test",
            KeyLimit::new().rate(1, Duration::from_secs(10)).burst(1),
        )
        .max_keys(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(backend(
        Meter::default(),
        &[],
        Arc::new(Notify::new()),
    ));
    let start = Instant::now();

    svc.clone().oneshot(get("a.test")).await.unwrap();
    assert_eq!(handle.tokens(&key("a.test")), Some(0));
    for round in 0..10 {
        churn(&svc, round, 100).await;
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(handle.tokens(&key("a.test")), Some(0));
    }
    // 5 s in, after 1 000 other keys: the next call still waits for 10 s.
    let sent = svc.clone().oneshot(get("a.test")).await.unwrap();
    assert_eq!(sent - start, Duration::from_secs(10));
    assert_eq!(handle.tokens(&key("a.test")), Some(0));
    // Once full again it may be forgotten: a fresh bucket is a full one.
    tokio::time::advance(Duration::from_secs(10)).await;
    churn(&svc, 99, 3).await;
    assert_eq!(handle.tokens(&key("a.test")), None);
    assert_eq!(handle.in_flight(&key("a.test")), 0);
    assert_eq!(handle.waiting(&key("a.test")), 0);
    let sent = svc.clone().oneshot(get("a.test")).await.unwrap();
    assert_eq!(sent - start, Duration::from_secs(20));
    let mut next = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(next.poll());
}

/// 10 000 distinct hosts at once against a map of 100: the map never holds
/// more than 100 keys, and every call is answered, by the backend or with
/// `TooManyKeys`, none left hanging. Then 10 000 one after another, each
/// making room for itself.
#[tokio::test(start_paused = true)]
async fn a_flood_of_keys_stays_bounded_and_every_call_is_answered() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(2))
        .max_keys(100)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(one_second());

    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let (svc, ok, refused) = (svc.clone(), ok.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            match svc.oneshot(get(&format!("h{i}.test"))).await {
                Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                Err(e) => {
                    assert!(e.is::<TooManyKeys>(), "{e}");
                    refused.fetch_add(1, Ordering::SeqCst)
                }
            };
        }));
    }
    tokio::task::yield_now().await;
    let start = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(ok.load(Ordering::SeqCst), 100);
    assert_eq!(refused.load(Ordering::SeqCst), 9_900);
    assert_eq!(handle.keys(), 100);

    for i in 0..10_000 {
        svc.clone()
            .oneshot(get(&format!("s{i}.test")))
            .await
            .unwrap();
        assert!(handle.keys() <= 100);
    }
    // Room is made twelve keys (an eighth) at a time, so the map ends
    // between 89 and 100 keys.
    assert!((89..=100).contains(&handle.keys()), "{}", handle.keys());
}

/// A full map of 16 makes room for two keys (an eighth) at once: the two
/// least recently used *idle* keys go, a busy key older than both stays,
/// and the next new key fits without forgetting anything. Tracked keys are
/// seen through the handle (a forgotten key has no bucket to read).
#[tokio::test(start_paused = true)]
async fn a_full_map_forgets_an_eighth_of_its_keys_at_once_least_recently_used_idle_first() {
    let layer = KeyedLimitLayer::builder(
        KeyLimit::new()
            .concurrency(1)
            .rate(1000, Duration::from_secs(1))
            .burst(1),
    )
    .max_keys(16)
    .build()
    .unwrap();
    let handle = layer.handle();
    let (meter, release) = (Meter::default(), Arc::new(Notify::new()));
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(backend(meter, &["k0.test"], release.clone()));
    let tracked = |host: &str| handle.tokens(&key(host)).is_some();

    // k0 (used first) stays in flight; k1..k15 answer at once.
    let mut busy = tokio_test::task::spawn(svc.clone().oneshot(get("k0.test")));
    assert_pending!(busy.poll());
    for i in 1..16 {
        svc.clone()
            .oneshot(get(&format!("k{i}.test")))
            .await
            .unwrap();
    }
    // k1 used again: now the most recent.
    svc.clone().oneshot(get("k1.test")).await.unwrap();
    // Every bucket full again (1 ms a token): all keys but k0 idle.
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(handle.keys(), 16);

    svc.clone().oneshot(get("new1.test")).await.unwrap();
    assert_eq!(handle.keys(), 15, "two forgotten, one added");
    assert!(tracked("k0.test"), "oldest, but busy: kept");
    assert!(tracked("k1.test"), "used again since: kept");
    assert!(
        !tracked("k2.test") && !tracked("k3.test"),
        "least recently used idle: forgotten"
    );
    assert!((4..16).all(|i| tracked(&format!("k{i}.test"))));

    svc.clone().oneshot(get("new2.test")).await.unwrap();
    assert_eq!(handle.keys(), 16, "room was left for it");
    assert!((4..16).all(|i| tracked(&format!("k{i}.test"))));

    release.notify_one();
    assert_ready!(busy.poll()).unwrap();
}

/// A call waiting on a saturated key delays no call for another key.
#[tokio::test(start_paused = true)]
async fn a_saturated_key_holds_up_no_other() {
    let layer = KeyedLimitLayer::builder(
        KeyLimit::new()
            .concurrency(1)
            .rate(1, Duration::from_secs(60))
            .burst(1),
    )
    .max_keys(4)
    .build()
    .unwrap();
    let release = Arc::new(Notify::new());
    let svc = ServiceBuilder::new().layer(layer).service(backend(
        Meter::default(),
        &["a.test"],
        release.clone(),
    ));
    let start = Instant::now();
    let mut held = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(held.poll());
    let mut queued: Vec<_> = (0..8)
        .map(|_| tokio_test::task::spawn(svc.clone().oneshot(get("a.test"))))
        .collect();
    for q in &mut queued {
        assert_pending!(q.poll());
    }
    let sent = svc.clone().oneshot(get("b.test")).await.unwrap();
    assert_eq!(sent, start);
    release.notify_one();
    assert_ready!(held.poll()).unwrap();
}

/// A key without any limit (the default `KeyLimit::new()`, as the CLI's demo
/// configures its client, with overrides for the hosts that have limits)
/// has nothing for the map to keep: it takes no room there, and is never
/// refused with `TooManyKeys` however many such hosts have calls in flight.
/// It was tracked like any other, so a map full of busy unlimited hosts
/// refused the next host, unlimited or not.
#[tokio::test(start_paused = true)]
async fn a_key_without_limits_takes_no_room_and_is_never_refused() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new())
        .limit_for("a.test", KeyLimit::new().concurrency(1))
        .max_keys(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (meter, release) = (Meter::default(), Arc::new(Notify::new()));
    let slow = &["a.test", "b.test", "c.test", "d.test"];
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(backend(meter.clone(), slow, release.clone()));

    // b.test, with no limit, in flight: the limited a.test still finds room.
    let mut b = tokio_test::task::spawn(svc.clone().oneshot(get("b.test")));
    assert_pending!(b.poll());
    let mut a = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(a.poll());
    assert_eq!(handle.in_flight(&key("a.test")), 1);
    // a.test in flight fills the map: more unlimited hosts go out anyway.
    let mut c = tokio_test::task::spawn(svc.clone().oneshot(get("c.test")));
    assert_pending!(c.poll());
    let mut d = tokio_test::task::spawn(svc.clone().oneshot(get("d.test")));
    assert_pending!(d.poll());
    for i in 0..100 {
        svc.clone()
            .oneshot(get(&format!("u{i}.test")))
            .await
            .unwrap();
    }
    assert_eq!(handle.keys(), 1);
    assert_eq!(handle.in_flight(&key("b.test")), 0);
    assert_eq!(handle.tokens(&key("b.test")), None);
    assert_eq!(handle.max_in_flight(&key("b.test")), None);
    // The override still binds.
    let mut a2 = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(a2.poll());
    assert_eq!(handle.waiting(&key("a.test")), 1);

    for _ in 0..4 {
        release.notify_one();
    }
    assert_ready!(b.poll()).unwrap();
    assert_ready!(a.poll()).unwrap();
    assert_ready!(c.poll()).unwrap();
    assert_ready!(d.poll()).unwrap();
    assert_pending!(a2.poll());
    release.notify_one();
    assert_ready!(a2.poll()).unwrap();
    assert_eq!(meter.peak("a.test"), 1);
}

/// The same for an override without limits under a limited default.
#[tokio::test(start_paused = true)]
async fn an_override_without_limits_takes_no_room() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
        .limit_for("free.test", KeyLimit::new())
        .max_keys(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let release = Arc::new(Notify::new());
    let svc = ServiceBuilder::new().layer(layer).service(backend(
        Meter::default(),
        &["a.test"],
        release.clone(),
    ));
    let mut a = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(a.poll());
    for _ in 0..3 {
        svc.clone().oneshot(get("free.test")).await.unwrap();
    }
    let err = svc.clone().oneshot(get("b.test")).await.unwrap_err();
    assert!(err.is::<TooManyKeys>());
    assert_eq!(handle.keys(), 1);
    release.notify_one();
    assert_ready!(a.poll()).unwrap();
}
