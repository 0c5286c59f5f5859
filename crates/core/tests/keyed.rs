//! Contract tests for per-key limits, on the paused clock.
#![cfg(feature = "keyed")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Meter, at_once};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::error::{Overloaded, RateLimited};
use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer, TooManyKeys};

type Req = http::Request<()>;

fn get(host: &str) -> Req {
    http::Request::get(format!("http://{host}/x"))
        .body(())
        .unwrap()
}

/// `concurrency` in flight, and one token a second with a burst of one.
fn one_a_second(concurrency: usize) -> KeyLimit {
    KeyLimit::new()
        .concurrency(concurrency)
        .rate(1, Duration::from_secs(1))
        .burst(1)
}

/// A backend where each call takes 100 ms.
fn slow_backend(
    meter: Meter,
) -> impl Service<Req, Response = Instant, Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: Req| {
        let meter = meter.clone();
        async move {
            let host = req.uri().host().unwrap().to_string();
            meter.enter(&host);
            tokio::time::sleep(Duration::from_millis(100)).await;
            meter.leave(&host);
            Ok::<_, BoxError>(Instant::now())
        }
    })
}

/// A backend whose first call (to `host`, or to any host with `None`) waits
/// until the returned sender fires or is dropped; every other call answers at
/// once.
fn gated_backend(
    host: Option<&'static str>,
) -> (
    oneshot::Sender<()>,
    impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone,
) {
    let (tx, rx) = oneshot::channel::<()>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let svc = service_fn(move |req: Req| {
        let rx = if host.is_none_or(|h| req.uri().host() == Some(h)) {
            rx.lock().unwrap().take()
        } else {
            None
        };
        async move {
            if let Some(rx) = rx {
                let _ = rx.await;
            }
            Ok::<_, BoxError>(())
        }
    });
    (tx, svc)
}

#[tokio::test(start_paused = true)]
async fn per_key_concurrency_holds_with_overrides() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
        .limit_for("a.test", KeyLimit::new().concurrency(3))
        .build()
        .unwrap();
    let meter = Meter::default();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(slow_backend(meter.clone()));
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..12 {
        let host = if i % 2 == 0 { "a.test" } else { "b.test" };
        calls.push(tokio::spawn(svc.clone().oneshot(get(host))));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(meter.peak("a.test"), 3);
    assert_eq!(meter.peak("b.test"), 1);
    // b.test: 6 calls one at a time; a.test's 6 go 3 at a time alongside.
    assert_eq!(start.elapsed(), Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn per_key_rate_waits_without_slowing_other_keys() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new())
        .limit_for(
            "slow.test",
            KeyLimit::new().rate(2, Duration::from_secs(1)).burst(1),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Req| async {
            Ok::<_, BoxError>(Instant::now())
        }));
    let start = Instant::now();
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(svc.clone().oneshot(get("slow.test")).await.unwrap() - start);
    }
    assert_eq!(
        times,
        [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_secs(1)
        ]
    );
    let fast = svc.clone().oneshot(get("fast.test")).await.unwrap();
    assert_eq!(
        fast - start,
        Duration::from_secs(1),
        "no wait for an unlimited key"
    );
    assert_eq!(handle.tokens(&"slow.test".to_string()), Some(0));
    assert_eq!(handle.tokens(&"fast.test".to_string()), None);
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_give_back_permit_and_token() {
    let layer = KeyedLimitLayer::builder(one_a_second(2)).build().unwrap();
    let handle = layer.handle();
    let key = "h.test".to_string();
    let (tx, backend) = gated_backend(None);
    let svc = ServiceBuilder::new().layer(layer).service(backend);

    // First call takes a permit and the only token, and hangs.
    let mut first = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(first.poll());
    assert_eq!(handle.in_flight(&key), 1);
    assert_eq!(handle.tokens(&key), Some(0));

    // Second call takes the other permit and books the next token (due in
    // 1 s): it holds a permit but waits at the gate still.
    let mut second = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(second.poll());
    assert_eq!(handle.in_flight(&key), 1);
    assert_eq!(handle.waiting(&key), 1);

    // A third call waits for a permit, booking nothing; it leaves the queue.
    let mut third = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(third.poll());
    assert_eq!(handle.waiting(&key), 2);
    drop(third);
    assert_eq!(handle.waiting(&key), 1);

    // Dropping the second returns its permit and its booking, which was the
    // latest, so exactly: the token due in 1 s is in the bucket then.
    drop(second);
    assert_eq!(handle.waiting(&key), 0);
    assert_eq!(handle.in_flight(&key), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.tokens(&key), Some(1));

    // Dropping the call in flight returns its permit.
    drop(first);
    assert_eq!(handle.in_flight(&key), 0);
    drop(tx);
}

/// Calls that give up while they wait for their key's token leave their
/// slots to the calls after them: the latest booking goes back, and an
/// earlier one goes to the next call that would wait longer.
#[tokio::test(start_paused = true)]
async fn calls_giving_up_at_the_gate_leave_their_tokens() {
    let layer = KeyedLimitLayer::builder(one_a_second(10)).build().unwrap();
    let handle = layer.handle();
    let key = "h.test".to_string();
    let (tx, backend) = gated_backend(None);
    let svc = ServiceBuilder::new().layer(layer).service(backend);
    let mut first = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(first.poll());
    // Three calls book the tokens due at 1, 2 and 3 s.
    let mut waiting: Vec<_> = (0..3)
        .map(|_| tokio_test::task::spawn(svc.clone().oneshot(get("h.test"))))
        .collect();
    for call in &mut waiting {
        assert_pending!(call.poll());
    }
    assert_eq!(handle.waiting(&key), 3);
    // The two first to book leave; the one at 3 s stays.
    let mut last = waiting.pop().unwrap();
    drop(waiting);
    // A newcomer would book 4 s, and takes the 1 s slot instead.
    let mut newcomer = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(newcomer.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready_ok!(newcomer.poll(), "the newcomer is called at 1 s");
    assert_pending!(last.poll());
    assert_eq!(handle.waiting(&key), 1);
    // The last leaves too: with it, the 2 s slot nobody took goes back, so
    // the bucket is full again at 2 s.
    drop(last);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.tokens(&key), Some(1));
    drop((first, tx));
}

/// The handle counts calls: one holding its permit while it waits for its
/// token is waiting, and in flight once the token is in.
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_its_token_counts_as_waiting_until_it_goes_out() {
    let layer = KeyedLimitLayer::builder(one_a_second(2)).build().unwrap();
    let handle = layer.handle();
    let key = "h.test".to_string();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Req| {
            std::future::pending::<Result<(), BoxError>>()
        }));
    let mut first = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(first.poll());
    let mut second = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(second.poll());
    assert_eq!((handle.in_flight(&key), handle.waiting(&key)), (1, 1));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(second.is_woken());
    assert_pending!(second.poll());
    assert_eq!((handle.in_flight(&key), handle.waiting(&key)), (2, 0));
    drop((first, second));
    assert_eq!((handle.in_flight(&key), handle.waiting(&key)), (0, 0));
}

/// A key's rate bounds what reaches the downstream, not only admissions:
/// only a call holding the key's permit books a token, so calls queued for
/// permits that free together still go out a token apart. (With tokens
/// booked first, the last three calls below went out together at 1 s: they
/// had booked theirs at 300, 400 and 500 ms while the permits were busy.)
#[tokio::test(start_paused = true)]
async fn calls_go_out_a_token_apart_when_permits_free_together() {
    let layer = KeyedLimitLayer::builder(
        KeyLimit::new()
            .concurrency(3)
            .rate(10, Duration::from_secs(1))
            .burst(1),
    )
    .build()
    .unwrap();
    let start = Instant::now();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new().layer(layer).service(service_fn({
        let sent = sent.clone();
        move |_: Req| {
            let now = start.elapsed();
            sent.lock().unwrap().push(now);
            // Every answer comes at the next whole second, so permits free together.
            let end = Duration::from_secs(now.as_secs() + 1);
            async move {
                tokio::time::sleep(end - now).await;
                Ok::<_, BoxError>(())
            }
        }
    }));
    let calls: Vec<_> = (0..9)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("h.test"))))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let ms = |v: u64| Duration::from_millis(v);
    assert_eq!(
        sent,
        [0, 100, 200, 1000, 1100, 1200, 2000, 2100, 2200].map(ms)
    );
    // Over every window, at most burst + rate × length went out.
    for (i, a) in sent.iter().enumerate() {
        for (j, b) in sent.iter().enumerate().skip(i) {
            let allowed = 1 + (*b - *a).as_millis() / 100;
            assert!(
                (j - i + 1) as u128 <= allowed,
                "{a:?}..{b:?}: {} sent",
                j - i + 1
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn map_evicts_idle_keys_only() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
        .max_keys(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (tx, backend) = gated_backend(Some("busy.test"));
    let svc = ServiceBuilder::new().layer(layer).service(backend);

    let mut busy = tokio_test::task::spawn(svc.clone().oneshot(get("busy.test")));
    assert_pending!(busy.poll());
    at_once("another key", svc.clone().oneshot(get("idle1.test")))
        .await
        .unwrap();
    assert_eq!(handle.keys(), 2);
    // A new key pushes out the idle one, never the busy one.
    svc.clone().oneshot(get("idle2.test")).await.unwrap();
    assert_eq!(handle.keys(), 2);
    assert_eq!(handle.in_flight(&"busy.test".to_string()), 1);

    // With a second busy key, no key is idle: a new key is refused.
    let (tx2, backend) = gated_backend(None);
    let hold = ServiceBuilder::new()
        .layer(
            KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
                .max_keys(1)
                .build()
                .unwrap(),
        )
        .service(backend);
    let mut held = tokio_test::task::spawn(hold.clone().oneshot(get("one.test")));
    assert_pending!(held.poll());
    let err = hold.clone().oneshot(get("two.test")).await.unwrap_err();
    assert_eq!(err.downcast_ref::<TooManyKeys>().unwrap().max_keys(), 1);
    tx2.send(()).unwrap();
    assert_ready!(held.poll()).unwrap();
    // Once idle, the key can make room.
    hold.clone().oneshot(get("two.test")).await.unwrap();

    tx.send(()).unwrap();
    assert_ready!(busy.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_key_with_a_refilling_bucket_is_not_forgotten() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().rate(1, Duration::from_secs(10)).burst(1))
        .max_keys(1)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Req| async { Ok::<_, BoxError>(()) }));
    svc.clone().oneshot(get("a.test")).await.unwrap();
    // Forgetting a.test now would hand it a fresh bucket: refuse instead.
    let err = svc.clone().oneshot(get("b.test")).await.unwrap_err();
    assert!(err.is::<TooManyKeys>());
    tokio::time::advance(Duration::from_secs(10)).await;
    svc.clone().oneshot(get("b.test")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fail_fast_refuses_with_typed_errors() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().rate(1, Duration::from_secs(2)).burst(1))
        .limit_for("c.test", KeyLimit::new().concurrency(1))
        .fail_fast()
        .build()
        .unwrap();
    let (tx, backend) = gated_backend(None);
    let svc = ServiceBuilder::new().layer(layer).service(backend);
    let mut held = tokio_test::task::spawn(svc.clone().oneshot(get("c.test")));
    assert_pending!(held.poll());
    let err = svc.clone().oneshot(get("c.test")).await.unwrap_err();
    assert!(err.is::<Overloaded>());
    tx.send(()).unwrap();
    assert_ready!(held.poll()).unwrap();

    svc.clone().oneshot(get("r.test")).await.unwrap();
    let err = svc.clone().oneshot(get("r.test")).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        Duration::from_secs(2)
    );
}

/// Fail fast with both limits: the permit is taken first and goes back
/// with a `RateLimited` refusal, so an empty bucket never holds a permit.
#[tokio::test(start_paused = true)]
async fn fail_fast_rate_refusal_returns_the_permit() {
    let layer = KeyedLimitLayer::builder(one_a_second(1))
        .fail_fast()
        .build()
        .unwrap();
    let handle = layer.handle();
    let key = "h.test".to_string();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Req| async { Ok::<_, BoxError>(()) }));
    svc.clone().oneshot(get("h.test")).await.unwrap();
    let err = svc.clone().oneshot(get("h.test")).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        Duration::from_secs(1)
    );
    assert_eq!(handle.in_flight(&key), 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(get("h.test")).await.unwrap();
    assert_eq!(handle.in_flight(&key), 0);
}

/// A call that would wait for its token until or past its request's
/// `Deadline` is refused at once with `RateLimited` and the wait, not held
/// until then (a token there now is taken, whatever the deadline);
/// its booked token and its permit go back, so the next call waits for
/// the same token, not one after it. A token due before the deadline is
/// waited for as usual.
#[tokio::test(start_paused = true)]
async fn a_token_due_past_the_requests_deadline_is_refused_at_once() {
    use tower_fanout_core::Deadline;
    let limit = KeyLimit::new()
        .concurrency(1)
        .rate(1, Duration::from_secs(10))
        .burst(1);
    let layer = KeyedLimitLayer::builder(limit).build().unwrap();
    let handle = layer.handle();
    let key = "d.test".to_string();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Req| async {
            Ok::<_, BoxError>(Instant::now())
        }));
    let with_deadline = |secs| {
        let mut req = get("d.test");
        req.extensions_mut()
            .insert(Deadline::after(Duration::from_secs(secs)));
        req
    };
    // Not at the clock's epoch, so a wait measured from it would show.
    tokio::time::advance(Duration::from_secs(1)).await;
    let start = Instant::now();
    // A token there now is taken whatever the deadline: only waits are refused.
    let late = with_deadline(0);
    assert_eq!(svc.clone().oneshot(late).await.unwrap(), start);

    // The next token is 10 s away: past a 5 s deadline, and exactly at a
    // 10 s one (which leaves the call no time).
    for secs in [5, 10] {
        let asked = Instant::now();
        let err = at_once(
            "past the deadline",
            svc.clone().oneshot(with_deadline(secs)),
        )
        .await
        .unwrap_err();
        assert_eq!(asked.elapsed(), Duration::ZERO, "refused without waiting");
        let limited = err
            .downcast_ref::<RateLimited>()
            .unwrap_or_else(|| panic!("{err}"));
        assert_eq!(limited.retry_after(), Duration::from_secs(10), "{secs} s");
        assert!(limited.is_past_deadline(), "{secs} s");
        assert!(
            err.to_string().contains("past the call's deadline"),
            "{err}"
        );
        assert_eq!(handle.in_flight(&key), 0);
        assert_eq!(handle.waiting(&key), 0);
    }
    // The token was given back each time: a call without a deadline gets
    // the one due at 10 s, and one whose deadline is later gets the next.
    let plain = tokio::spawn(svc.clone().oneshot(get("d.test")));
    let later = tokio::spawn(svc.clone().oneshot(with_deadline(25)));
    assert_eq!(
        plain.await.unwrap().unwrap() - start,
        Duration::from_secs(10)
    );
    assert_eq!(
        later.await.unwrap().unwrap() - start,
        Duration::from_secs(20)
    );
}

/// A deadline too far for the clock is taken as a century away rather
/// than overflowing; `at` keeps its instant.
#[tokio::test(start_paused = true)]
async fn a_deadline_too_far_for_the_clock_is_a_century_away() {
    use tower_fanout_core::Deadline;
    let now = Instant::now();
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    assert_eq!(Deadline::after(Duration::MAX).instant() - now, century);
    assert_eq!(
        Deadline::after(Duration::from_secs(3)).instant() - now,
        Duration::from_secs(3)
    );
    assert_eq!(Deadline::at(now).instant(), now);
}

/// A closure's keys say nothing of a deadline (the default
/// `KeyFn::deadline`): its calls wait for their token as before.
#[tokio::test(start_paused = true)]
async fn a_closure_key_waits_whatever_the_deadline() {
    use tower_fanout_core::Deadline;
    let layer = KeyedLimitLayer::builder_with_key(
        |r: &Req| r.uri().host().unwrap().to_string(),
        KeyLimit::new().rate(1, Duration::from_secs(10)).burst(1),
    )
    .build()
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Req| async {
            Ok::<_, BoxError>(Instant::now())
        }));
    let start = Instant::now();
    svc.clone().oneshot(get("c.test")).await.unwrap();
    let mut req = get("c.test");
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_secs(1)));
    let at = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(at - start, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn custom_key_function() {
    #[derive(Debug)]
    struct Job {
        tenant: u32,
    }
    let layer =
        KeyedLimitLayer::builder_with_key(|j: &Job| j.tenant, KeyLimit::new().concurrency(2))
            .limit_for(7u32, KeyLimit::new().concurrency(1))
            .build()
            .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|j: Job| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(j.tenant)
        }));
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(Job { tenant: 7 })))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 7);
    }
    assert_eq!(start.elapsed(), Duration::from_millis(40));
    assert_eq!(handle.max_in_flight(&7), Some(1));
    assert_eq!(handle.max_in_flight(&8), Some(2));
}

#[test]
fn bad_config_fails_at_build_with_a_reason() {
    let zero = KeyedLimitLayer::builder(KeyLimit::new().concurrency(0)).build();
    assert!(
        zero.unwrap_err()
            .to_string()
            .contains("concurrency must be at least 1")
    );
    let burst_only = KeyedLimitLayer::builder(KeyLimit::new())
        .limit_for("x", KeyLimit::new().burst(3))
        .build();
    assert!(burst_only.unwrap_err().to_string().contains("\"x\""));
    let no_keys = KeyedLimitLayer::builder(KeyLimit::new())
        .max_keys(0)
        .build();
    assert!(no_keys.unwrap_err().to_string().contains("max_keys"));
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_on_its_key_reserves_nothing_downstream() {
    use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
    // Global limit 2 inside, per-key limit 1 outside.
    let global = ConcurrencyLimitLayer::new(2).unwrap();
    let global_handle = global.handle();
    let (tx, backend) = gated_backend(Some("a.test"));
    let svc = ServiceBuilder::new()
        .layer(
            KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
                .build()
                .unwrap(),
        )
        .layer(global)
        .service(backend);
    let mut a1 = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(a1.poll());
    let mut a2 = tokio_test::task::spawn(svc.clone().oneshot(get("a.test")));
    assert_pending!(a2.poll());
    assert_eq!(
        global_handle.in_flight(),
        1,
        "a2 waits on its key, holding no global permit"
    );
    // b1 gets the second global permit although a2 is waiting.
    at_once("another key", svc.clone().oneshot(get("b.test")))
        .await
        .unwrap();
    tx.send(()).unwrap();
    assert_ready!(a1.poll()).unwrap();
    assert!(a2.is_woken());
    assert_ready!(a2.poll()).unwrap();
    assert_eq!(global_handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_free_permit_admits_in_call_without_overtaking_a_queued_call() {
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let key = "h.test".to_string();
    let (tx, backend) = gated_backend(None);
    let mut svc = ServiceBuilder::new().layer(layer).service(backend);

    // A free permit is taken at the call; an unpolled call gives it back when dropped.
    let unpolled = svc.ready().await.unwrap().call(get("h.test"));
    assert_eq!(handle.in_flight(&key), 1);
    drop(unpolled);
    assert_eq!(handle.in_flight(&key), 0);

    // The first call holds the permit; the second queues for it.
    let mut first = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(first.poll());
    let mut second = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(second.poll());
    assert_eq!(handle.waiting(&key), 1);
    // The first ends: its permit goes to the queued call, not to a newcomer.
    drop(first);
    let mut third = tokio_test::task::spawn(svc.clone().oneshot(get("h.test")));
    assert_pending!(third.poll());
    assert_eq!(handle.in_flight(&key), 1);
    assert_ready!(second.poll()).unwrap();
    assert_ready!(third.poll()).unwrap();
    assert_eq!(handle.in_flight(&key), 0);
    drop(tx);
}

#[test]
fn the_default_key_is_the_host_in_lower_case_without_credentials_or_default_port() {
    use tower_fanout_core::keyed::{AuthorityKey, KeyFn};
    for (uri, key) in [
        ("http://api.example.com/a", "api.example.com"),
        ("https://API.Example.com:8443/a", "api.example.com:8443"),
        ("http://user:secret@api.example.com/a", "api.example.com"),
        ("http://a@b@API.example.com:81/", "api.example.com:81"),
        ("http://[::1]:8080/", "[::1]:8080"),
        ("/relative", ""),
        // The scheme's default port and a fully qualified name's trailing
        // dot name the same host: they must not split its limit.
        ("https://api.example.com:443/a", "api.example.com"),
        ("http://api.example.com:80/a", "api.example.com"),
        ("https://API.example.com.:443/", "api.example.com"),
        ("http://api.example.com./a", "api.example.com"),
        ("http://u@api.example.com.:8080/", "api.example.com:8080"),
        ("https://[::1]:443/", "[::1]"),
        // Other ports stay, and a default port of the other scheme too.
        ("http://api.example.com:443/", "api.example.com:443"),
        ("https://api.example.com:80/", "api.example.com:80"),
        ("http://[::443]/", "[::443]"),
    ] {
        let req = http::Request::get(uri).body(()).unwrap();
        assert_eq!(AuthorityKey.key(&req), key, "{uri}");
    }
}

proptest::proptest! {
    /// The default key agrees with http's own reading of the authority
    /// (`Authority::host`, `Authority::port_u16`), lower-cased, without a
    /// trailing dot or the scheme's default port.
    #[test]
    fn the_default_key_agrees_with_http_on_host_and_port(
        https in proptest::bool::ANY,
        userinfo in proptest::option::of("[a-zA-Z0-9:]{0,6}"),
        host in "([a-zA-Z0-9-]{1,8}\\.){0,3}[a-zA-Z0-9-]{1,8}\\.?|\\[::[0-9a-fA-F]{1,4}\\]|[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        port in proptest::option::of(proptest::sample::select(vec![80u16, 443, 8080, 1, 65535])),
    ) {
        use tower_fanout_core::keyed::{AuthorityKey, KeyFn};
        let scheme = if https { "https" } else { "http" };
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
        let uri = format!("{scheme}://{userinfo}{host}{port_part}/x");
        let req = http::Request::get(uri.as_str()).body(()).unwrap();
        let authority = req.uri().authority().unwrap();
        let mut expected = authority.host().to_ascii_lowercase();
        if expected.ends_with('.') {
            expected.pop();
        }
        let default = if https { 443 } else { 80 };
        if let Some(p) = authority.port_u16().filter(|&p| p != default) {
            expected.push_str(&format!(":{p}"));
        }
        proptest::prop_assert_eq!(AuthorityKey.key(&req).into_owned(), expected, "{}", uri);
    }
}

/// The handle looks a key up in any form it borrows as, as `HashMap::get`
/// does: a host as a `&str`, not only as a `&String` built for the call.
#[tokio::test(start_paused = true)]
async fn handle_reads_a_key_by_str() {
    let layer = KeyedLimitLayer::builder(one_a_second(2))
        .limit_for("api.example.com", KeyLimit::new().concurrency(3))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: Req| async { Ok::<_, BoxError>(()) }));
    svc.oneshot(get("other.example.com")).await.unwrap();

    assert_eq!(handle.max_in_flight("api.example.com"), Some(3));
    assert_eq!(handle.max_in_flight("other.example.com"), Some(2));
    assert_eq!(handle.tokens("other.example.com"), Some(0));
    assert_eq!(handle.in_flight("other.example.com"), 0);
    assert_eq!(handle.waiting("other.example.com"), 0);
    // The owned form still works.
    assert_eq!(handle.tokens(&"other.example.com".to_owned()), Some(0));
}

/// An override is named as requests are keyed: its case and a trailing dot
/// do not matter. What can never match a request's key (a URL, a path,
/// credentials, nothing) and a key given twice are refused when the layer
/// is built, instead of leaving the host at the default without a word.
#[tokio::test(start_paused = true)]
async fn overrides_are_keyed_as_requests_are_and_bad_ones_refused() {
    let layer = KeyedLimitLayer::builder(one_a_second(2))
        .limit_for("API.Example.com.", KeyLimit::new().concurrency(3))
        .limit_for("API.example.com.:8443", KeyLimit::new().concurrency(4))
        .limit_for("[::1]:8080", KeyLimit::new().concurrency(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: Req| async { Ok::<_, BoxError>(()) }));
    svc.clone().oneshot(get("api.example.com")).await.unwrap();
    assert_eq!(handle.max_in_flight("api.example.com"), Some(3));
    assert_eq!(handle.max_in_flight("api.example.com:8443"), Some(4));
    assert_eq!(handle.max_in_flight("[::1]:8080"), Some(5));

    for (written, says) in [
        ("https://api.example.com", "not a URI authority"),
        ("api.example.com/v3", "not a URI authority"),
        ("api.example.com?x=1", "not a URI authority"),
        ("api example.com", "not a URI authority"),
        ("user:secret@api.example.com", "user:password@"),
        ("", "is empty"),
        // A user trial: accepted, and no request's key could match them.
        ("api.example.com:0", "1 to 65535"),
        ("api.example.com:99999", "1 to 65535"),
        ("münchen.de", "punycode"),
    ] {
        let err = KeyedLimitLayer::builder(one_a_second(2))
            .limit_for(written, KeyLimit::new().concurrency(3))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{written:?}: {err}");
        assert!(err.contains("\"api.github.com\""), "{written:?}: {err}");
    }
    let err = KeyedLimitLayer::builder(one_a_second(2))
        .limit_for("api.example.com", KeyLimit::new().concurrency(3))
        .limit_for("API.example.com", KeyLimit::new().concurrency(5))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"api.example.com\" given twice"), "{err}");
    // The scheme's default port, which requests' keys leave out: the
    // override was accepted and never applied (a user trial: "a.com:80"
    // copied from a URL left http://a.com/ under the default limit).
    for (written, host) in [
        ("api.example.com:443", "api.example.com"),
        ("API.example.com:80", "API.example.com"),
        ("[::1]:443", "[::1]"),
    ] {
        let err = KeyedLimitLayer::builder(one_a_second(2))
            .limit_for(written, KeyLimit::new().concurrency(3))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("write \"{host}\"")),
            "{written}: {err}"
        );
    }
    // Keys of a function of your own are taken as given, twice refused too.
    let err = KeyedLimitLayer::<_, u32>::builder_with_key(|r: &u32| *r, one_a_second(2))
        .limit_for(7u32, KeyLimit::new().concurrency(1))
        .limit_for(7u32, KeyLimit::new().concurrency(2))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("7 given twice"), "{err}");
}

/// The error for a full map names its bound and what to change. Found
/// surviving in a mutation pass (`max_keys` answering 1, an empty message).
#[test]
fn too_many_keys_names_its_bound() {
    let err = TooManyKeys::new(5);
    assert_eq!(err.max_keys(), 5);
    let message = err.to_string();
    assert!(message.contains("all 5 keys are busy"), "{message}");
    assert!(message.contains("raise max_keys"), "{message}");
}

/// A key limit reads back the concurrency it was given. Found surviving in
/// a mutation pass (`KeyLimit::max_in_flight` answering None, 0 or 1).
#[test]
fn a_key_limit_reads_back_its_concurrency() {
    assert_eq!(KeyLimit::new().max_in_flight(), None);
    assert_eq!(KeyLimit::new().concurrency(3).max_in_flight(), Some(3));
    assert_eq!(one_a_second(2).max_in_flight(), Some(2));
}

/// A zero rate or a zero period is refused for what it is, even with a
/// burst that would make the bucket look valid. Found surviving in a
/// mutation pass (the check needing both zero: a zero rate with a burst,
/// or a zero period, was built into a bucket refilling every nanosecond).
#[test]
fn a_zero_rate_or_period_is_refused_with_a_reason() {
    for limit in [
        KeyLimit::new().rate(0, Duration::from_secs(1)).burst(5),
        KeyLimit::new().rate(5, Duration::ZERO),
        KeyLimit::new().rate(0, Duration::ZERO),
    ] {
        let err = KeyedLimitLayer::builder(limit).build().unwrap_err();
        assert!(
            err.to_string().contains("rate and period must be non-zero"),
            "{limit:?}: {err}"
        );
    }
}

/// A key already in the form the map keeps (lower case, no default port,
/// no trailing dot) is borrowed from the request, port and all: looking it
/// up copies nothing. Other schemes have no default port to drop. Found
/// surviving in a mutation pass (a key with a port always built; `:80`
/// dropped for any scheme but https).
#[test]
fn the_default_key_is_borrowed_when_written_as_kept() {
    use std::borrow::Cow;
    use tower_fanout_core::keyed::{AuthorityKey, KeyFn};
    for (uri, key, borrowed) in [
        ("http://api.example.com/a", "api.example.com", true),
        (
            "http://api.example.com:8080/a",
            "api.example.com:8080",
            true,
        ),
        (
            "http://u@api.example.com:8080/a",
            "api.example.com:8080",
            true,
        ),
        (
            "http://api.example.com.:8080/a",
            "api.example.com:8080",
            false,
        ),
        (
            "http://API.example.com:8080/a",
            "api.example.com:8080",
            false,
        ),
        ("ftp://api.example.com:80/a", "api.example.com:80", true),
        ("ws://api.example.com:443/a", "api.example.com:443", true),
    ] {
        let req = http::Request::get(uri).body(()).unwrap();
        let got = AuthorityKey.key(&req);
        assert_eq!(got, key, "{uri}");
        assert_eq!(matches!(got, Cow::Borrowed(_)), borrowed, "{uri}");
    }
}

/// `is_admitted` tells the key's gate from the inner service: false while
/// the call waits for its key's permit or token, true once both are in and
/// only the inner service keeps it waiting. Found surviving in a mutation
/// pass (`is_admitted` always true; admitted as soon as either the permit
/// or the token was in; never admitted before the call).
#[tokio::test(start_paused = true)]
async fn is_admitted_reads_the_keys_gate_not_the_inner_service() {
    use std::task::Poll;
    use support::poll_once as poll;
    let layer = KeyedLimitLayer::builder(one_a_second(1)).build().unwrap();
    let (mock, mut inner) = tower_test::mock::pair::<Req, ()>();
    let mut svc = ServiceBuilder::new().layer(layer).service(mock);
    inner.allow(1);
    // The first call takes the key's permit and token, and is answered later.
    let mut first = std::pin::pin!(svc.ready().await.unwrap().call(get("a.test")));
    assert!(poll(first.as_mut()).is_pending());
    assert!(first.is_admitted());
    let mut second = std::pin::pin!(svc.ready().await.unwrap().call(get("a.test")));
    assert!(poll(second.as_mut()).is_pending());
    assert!(!second.is_admitted(), "waiting for the key's permit");
    let (_, answer) = inner.next_request().await.unwrap();
    answer.send_response(());
    assert!(poll(first.as_mut()).is_ready());
    assert!(poll(second.as_mut()).is_pending());
    assert!(!second.is_admitted(), "permit in, waiting for the token");
    tokio::time::advance(Duration::from_secs(1)).await;
    // Permit and token in; the inner service has no room yet.
    assert!(poll(second.as_mut()).is_pending());
    assert!(
        second.is_admitted(),
        "past the gate, waiting on the inner service"
    );
    inner.allow(1);
    assert!(poll(second.as_mut()).is_pending());
    let (_, answer) = inner.next_request().await.unwrap();
    answer.send_response(());
    assert!(matches!(poll(second.as_mut()), Poll::Ready(Ok(()))));
}
