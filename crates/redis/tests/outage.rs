//! Redis killed mid-run and restarted: fail closed, fail open, recover.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::{BlackholeProxy, RedisServer, at_once, echo_unit, outage_store};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::error::{Overloaded, RateLimited};
use tower_fanout_redis::{Error, RedisConcurrencyLimitLayer, RedisRateLimitLayer, RedisStore};

const TIMEOUT: Duration = support::OUTAGE_TIMEOUT;
/// Scheduling slack on top of the timeout on a loaded machine: under the
/// timeout, so that a bound of one timeout plus slack still fails when a
/// caller waits out two (300 ms, with a 200 ms timeout, was little for a
/// loaded machine).
const SLACK: Duration = Duration::from_millis(900);
/// The leases of these tests: the least the store timeout allows (three
/// timeouts), so that a renewal is due every timeout.
const LEASE: Duration = Duration::from_secs(3);

fn is_unavailable(err: &BoxError) -> bool {
    err.downcast_ref::<Error>()
        .is_some_and(Error::is_unavailable)
}

/// Retries `call` (bounded) until it succeeds: the layer's way back after
/// Redis restarts, with the same store and services.
async fn until_ok<F, Fut>(what: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(()) => return,
            Err(err) => assert!(
                Instant::now() < deadline,
                "{what} did not recover after the restart: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_fails_closed_or_open_and_recovers_after_a_restart() {
    let mut redis = RedisServer::start();
    let store = outage_store(&redis);
    let closed =
        RedisRateLimitLayer::builder(store.clone(), "closed", 1000, Duration::from_secs(1))
            .fail_fast()
            .fail_closed()
            .build()
            .unwrap()
            .layer(echo_unit());
    // A local share of a half: burst 10 → 5, 10 per second → 5 per second.
    let open = RedisRateLimitLayer::builder(store, "open", 10, Duration::from_secs(1))
        .burst(10)
        .fail_fast()
        .fail_open(0.5)
        .build()
        .unwrap()
        .layer(echo_unit());
    closed.clone().oneshot(()).await.unwrap();
    open.clone().oneshot(()).await.unwrap();

    redis.kill();

    // Fail closed: a typed Unavailable, never later than the timeout.
    for _ in 0..3 {
        let start = Instant::now();
        let err = closed.clone().oneshot(()).await.unwrap_err();
        assert!(is_unavailable(&err), "{err}");
        assert!(start.elapsed() <= TIMEOUT + SLACK, "{:?}", start.elapsed());
    }

    // Fail open: the local share, then RateLimited from the local bucket.
    let start = Instant::now();
    let mut admitted = 0u64;
    for _ in 0..20 {
        match open.clone().oneshot(()).await {
            Ok(()) => admitted += 1,
            Err(err) => assert!(err.is::<RateLimited>(), "{err}"),
        }
    }
    let elapsed = start.elapsed();
    let bound = 5 + (5.0 * elapsed.as_secs_f64()) as u64;
    assert!(
        (5..=bound).contains(&admitted),
        "{admitted} admitted locally in {elapsed:?}; the local share allows 5 + 5/s"
    );

    redis.restart();

    until_ok("fail-closed limit", || closed.clone().oneshot(())).await;
    until_ok("fail-open limit", || open.clone().oneshot(())).await;
    // (A fail-closed call can only succeed through Redis.) The fail-open
    // limit's state is on the fresh Redis again: its decisions went there.
    let conn = redis.connection().await;
    until_ok("the shared bucket", || {
        let svc = open.clone();
        let mut conn = conn.clone();
        async move {
            svc.oneshot(()).await?;
            let exists: bool = conn.exists("tower-fanout:{open}:gcra").await?;
            if exists {
                Ok(())
            } else {
                Err("no key in redis".into())
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_fails_closed_or_open_and_recovers_after_a_restart() {
    let mut redis = RedisServer::start();
    let store = outage_store(&redis);
    let never_ends = || service_fn(|()| std::future::pending::<Result<(), BoxError>>());
    let closed = RedisConcurrencyLimitLayer::builder(store.clone(), "closed", 4)
        .lease(LEASE)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(never_ends());
    // A local share of a half: 2 of the 4 permits.
    let open = RedisConcurrencyLimitLayer::builder(store, "open", 4)
        .lease(LEASE)
        .fail_fast()
        .fail_open(0.5)
        .build()
        .unwrap()
        .layer(never_ends());

    redis.kill();

    let start = Instant::now();
    let err = closed.clone().oneshot(()).await.unwrap_err();
    assert!(is_unavailable(&err), "{err}");
    assert!(start.elapsed() <= TIMEOUT + SLACK, "{:?}", start.elapsed());

    // Two ready services hold the local share; the third is refused.
    let mut a = open.clone();
    let mut b = open.clone();
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    let err = at_once(open.clone().oneshot(())).await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");
    drop((a, b));

    redis.restart();

    // Both take permits on Redis again, with the same services. (A
    // fail-fast service is always ready; whether it got a permit shows in
    // Redis, so the ready services are kept while we look.)
    let mut ready = Vec::new();
    let mut conn = redis.connection().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut c, mut o) = (closed.clone(), open.clone());
        c.ready().await.unwrap();
        o.ready().await.unwrap();
        ready.push((c, o));
        let closed: u64 = conn.zcard("tower-fanout:{closed}:holders").await.unwrap();
        let open: u64 = conn.zcard("tower-fanout:{open}:holders").await.unwrap();
        if closed >= 1 && open >= 1 {
            assert!(closed <= 4 && open <= 4);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the restart: holders closed {closed}, open {open}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_keeps_one_local_share_per_key() {
    let mut redis = RedisServer::start();
    // Local share of a quarter: burst 8 → 2 per host, refilled every 4 s.
    let svc =
        RedisRateLimitLayer::builder(outage_store(&redis), "hosts", 1, Duration::from_secs(1))
            .burst(8)
            .key_fn(|host: &&'static str| (*host).to_owned())
            .fail_fast()
            .fail_open(0.25)
            .build()
            .unwrap()
            .layer(service_fn(|host: &'static str| async move {
                Ok::<_, Infallible>(host)
            }));
    redis.kill();
    for host in ["a.example", "b.example"] {
        let mut admitted = 0;
        for _ in 0..5 {
            match svc.clone().oneshot(host).await {
                Ok(_) => admitted += 1,
                Err(err) => assert!(err.is::<RateLimited>(), "{err}"),
            }
        }
        assert_eq!(admitted, 2, "{host}: the local share per key is 2");
    }
    // Each key keeps its bucket while others come: a.example's next local
    // token is about 4 s away, not handed out again because b.example's
    // bucket was added.
    let err = svc.clone().oneshot("a.example").await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_callers_at_most_the_timeout() {
    let redis = RedisServer::start();
    let store = outage_store(&redis);
    let closed =
        RedisRateLimitLayer::builder(store.clone(), "frozen-closed", 1000, Duration::from_secs(1))
            .fail_closed()
            .build()
            .unwrap()
            .layer(echo_unit());
    let open = RedisConcurrencyLimitLayer::builder(store, "frozen-open", 4)
        .lease(LEASE)
        .fail_open(0.5)
        .build()
        .unwrap()
        .layer(echo_unit());
    closed.clone().oneshot(()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), open.clone().oneshot(()))
        .await
        .expect("no place granted within 10 s while Redis was up")
        .unwrap();

    // Connections stay up but nothing answers: only the timeout can help.
    redis.pause();
    let start = Instant::now();
    let err = closed.clone().oneshot(()).await.unwrap_err();
    let elapsed = start.elapsed();
    let err = err.downcast_ref::<Error>().unwrap();
    assert!(err.is_unavailable() && err.is_timeout(), "{err:?}");
    assert!(
        elapsed >= TIMEOUT - Duration::from_millis(20) && elapsed <= TIMEOUT + SLACK,
        "{elapsed:?}"
    );
    // Fail open: at most one timeout, then the local share at once.
    let start = Instant::now();
    for _ in 0..5 {
        open.clone().oneshot(()).await.unwrap();
    }
    assert!(
        start.elapsed() <= TIMEOUT * 2 + SLACK,
        "{:?}",
        start.elapsed()
    );

    redis.resume();
    until_ok("fail-closed limit", || closed.clone().oneshot(())).await;
    let mut conn = redis.connection().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut svc = open.clone();
        svc.ready().await.unwrap();
        let held: u64 = conn
            .zcard("tower-fanout:{frozen-open}:holders")
            .await
            .unwrap();
        if held >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no holder on redis after the thaw"
        );
        drop(svc);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_take_their_place_back_after_a_restart() {
    let mut redis = RedisServer::start();
    let layer = RedisConcurrencyLimitLayer::builder(outage_store(&redis), "restored", 2)
        .lease(LEASE)
        .fail_closed()
        .build()
        .unwrap();
    let handle = layer.handle();
    // The call runs until the test ends it, not for a fixed 3 s that a slow
    // restart on a loaded machine could use up before the check below.
    let end = Arc::new(Notify::new());
    let svc = layer.layer(service_fn({
        let end = end.clone();
        move |()| {
            let end = end.clone();
            async move {
                end.notified().await;
                Ok::<_, BoxError>(())
            }
        }
    }));
    let call = tokio::spawn(svc.oneshot(()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.in_flight().await.unwrap() != 1 {
        assert!(Instant::now() < deadline, "the call never took its permit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A fresh Redis knows no holder; the running call's next renewal (every
    // third of the lease) puts it back.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(1) = handle.in_flight().await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running call was not counted again"
        );
        assert!(!call.is_finished());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    end.notify_one();
    call.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_probe_interval_is_over_one_caller_probes_a_frozen_redis() {
    let redis = RedisServer::start();
    let limit = RedisRateLimitLayer::builder(
        outage_store(&redis),
        "probe-once",
        1000,
        Duration::from_secs(1),
    )
    .fail_closed()
    .build()
    .unwrap()
    .layer(echo_unit());
    limit.clone().oneshot(()).await.unwrap();

    redis.pause();
    // The first failure starts the probe interval (100 ms in `outage_store`).
    let err = limit.clone().oneshot(()).await.unwrap_err();
    let err = err.downcast_ref::<Error>().unwrap();
    assert!(err.is_timeout(), "{err:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Twenty callers once it is over: one asks Redis and waits out the
    // timeout; the others are answered "unavailable" at once, not each
    // after its own timeout.
    let start = Instant::now();
    let callers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(limit.clone().oneshot(())))
        .collect();
    let mut timeouts = 0;
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        let err = err.downcast_ref::<Error>().unwrap();
        assert!(err.is_unavailable(), "{err:?}");
        timeouts += usize::from(err.is_timeout());
    }
    assert_eq!(timeouts, 1, "callers that asked the frozen Redis");
    assert!(start.elapsed() <= TIMEOUT + SLACK, "{:?}", start.elapsed());

    redis.resume();
    until_ok("fail-closed limit", || limit.clone().oneshot(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_connection_is_replaced_after_a_timeout() {
    // The connection goes silent without an error (a NAT drops the flow, a
    // host vanishes): redis-rs never sees an I/O error, so only the store
    // can decide to dial again, which a fresh connection then serves.
    const PROBE: Duration = Duration::from_millis(100);
    let redis = RedisServer::start();
    let proxy = BlackholeProxy::start(redis.port()).await;
    let store = RedisStore::builder(proxy.url())
        .timeout(TIMEOUT)
        .probe_interval(PROBE)
        .build()
        .unwrap();
    let rate =
        RedisRateLimitLayer::builder(store.clone(), "blackholed", 1000, Duration::from_secs(1))
            .fail_closed()
            .build()
            .unwrap()
            .layer(echo_unit());
    let concurrency = RedisConcurrencyLimitLayer::builder(store, "blackholed", 4)
        .lease(LEASE)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo_unit());
    for _ in 0..3 {
        rate.clone().oneshot(()).await.unwrap();
        concurrency.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(proxy.accepted(), 1, "one multiplexed connection");

    proxy.blackhole();
    // Several decisions in flight on the silent connection: each times out.
    let start = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(rate.clone().oneshot(())))
        .collect();
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        let err = err.downcast_ref::<Error>().unwrap();
        assert!(err.is_unavailable() && err.is_timeout(), "{err:?}");
    }
    assert!(start.elapsed() <= TIMEOUT + SLACK, "{:?}", start.elapsed());

    // Once the probe interval is over, decisions go through a new
    // connection. (Before the fix every probe timed out on the old one.)
    tokio::time::sleep(PROBE).await;
    // A few store timeouts of 1 s fit in this bound, as 15 of 200 ms did.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rate.clone().oneshot(()).await {
            Ok(()) => break,
            Err(err) => {
                assert!(is_unavailable(&err), "{err}");
                assert!(
                    Instant::now() < deadline,
                    "no decision through a fresh connection 10 s after the blackhole: {err}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy.accepted() >= 2, "{} connections", proxy.accepted());
    concurrency.clone().oneshot(()).await.unwrap();
}

/// Redis (or a proxy before it) closes connections idle past its `timeout`:
/// a routine close, not an outage. The first call after it failed ("broken
/// pipe") and opened the skip window, so a fail-closed limit refused the
/// calls right behind it too: 0 of 20 went through after each idle gap in
/// a user trial (`CONFIG SET timeout 2`). A decision that finds its
/// connection closed is asked again, once, on a new one. `CLIENT KILL`
/// closes the store's connection from the server's side at once, as the
/// idle timeout does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_dialled_again_not_an_outage() {
    let redis = RedisServer::start();
    let store = outage_store(&redis);
    let rate =
        RedisRateLimitLayer::builder(store.clone(), "idle-rate", 1000, Duration::from_secs(1))
            .fail_fast()
            .fail_closed()
            .build()
            .unwrap()
            .layer(echo_unit());
    let permits = RedisConcurrencyLimitLayer::builder(store.clone(), "idle-conc", 5)
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo_unit());
    let mut admin = redis.connection().await;
    for round in 0..3 {
        rate.clone().oneshot(()).await.unwrap();
        permits.clone().oneshot(()).await.unwrap();
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(
            killed >= 1,
            "round {round}: the store's connection was closed"
        );
        let calls: Vec<_> = (0..20)
            .map(|_| tokio::spawn(rate.clone().oneshot(())))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let answer = call.await.unwrap();
            assert!(
                answer.is_ok(),
                "round {round}, rate call {i}: {}",
                answer.unwrap_err()
            );
        }
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async::<u64>(&mut admin)
            .await
            .unwrap();
        let calls: Vec<_> = (0..5)
            .map(|_| tokio::spawn(permits.clone().oneshot(())))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let answer = call.await.unwrap();
            assert!(
                answer.is_ok(),
                "round {round}, permit {i}: {}",
                answer.unwrap_err()
            );
        }
    }
}
