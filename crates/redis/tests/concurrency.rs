//! The Redis concurrency limit against a real redis-server, from one process.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use support::{RedisServer, at_once, never_ends, take_place};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::error::Overloaded;
use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisStore};

fn layer(
    redis: &RedisServer,
    name: &str,
    limit: usize,
    lease: Duration,
) -> RedisConcurrencyLimitLayer {
    // A sixth of the lease (at most 2 s): a renewal that times out leaves
    // time for the next before the lease ends, and Redis may take more than
    // the default 250 ms on a loaded machine. None of these tests is about
    // an outage.
    let timeout = (lease / 6).min(Duration::from_secs(2));
    let store = RedisStore::builder(redis.url())
        .timeout(timeout)
        .build()
        .unwrap();
    RedisConcurrencyLimitLayer::builder(store, name, limit)
        .lease(lease)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
}

#[tokio::test]
async fn permits_are_taken_in_poll_ready_and_bounded() {
    let redis = RedisServer::start();
    let layer = layer(&redis, "bounded", 2, Duration::from_secs(30));
    let svc = layer.layer(never_ends());
    let mut a = svc.clone();
    let mut b = svc.clone();
    take_place(&mut a).await;
    take_place(&mut b).await;
    assert_eq!(redis.holders("bounded").await, 2);
    // Fail fast: the third gets Overloaded from its call.
    let third = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(()));
    let err = third
        .await
        .expect("the third call was let through")
        .unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");
}

#[tokio::test]
async fn a_dropped_response_future_releases_its_permit() {
    let redis = RedisServer::start();
    // A long lease: the permit must come back by release, not by expiry.
    let layer = layer(&redis, "drop-future", 1, Duration::from_secs(30));
    let mut svc = layer.layer(never_ends());
    svc.ready().await.unwrap();
    let future = svc.call(());
    redis.until_holders("drop-future", 1).await;
    drop(future);
    redis.until_holders("drop-future", 0).await;
    svc.ready().await.unwrap();
    assert_eq!(redis.holders("drop-future").await, 1);
}

#[tokio::test]
async fn a_dropped_ready_service_releases_its_permit() {
    let redis = RedisServer::start();
    let layer = layer(&redis, "drop-ready", 1, Duration::from_secs(30));
    let mut svc = layer.layer(never_ends());
    svc.ready().await.unwrap();
    redis.until_holders("drop-ready", 1).await;
    drop(svc);
    redis.until_holders("drop-ready", 0).await;
}

#[tokio::test]
async fn a_finished_call_releases_its_permit() {
    let redis = RedisServer::start();
    let layer = layer(&redis, "finished", 1, Duration::from_secs(30));
    let svc = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
    for _ in 0..5 {
        // Each call waits for the previous release to land.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match svc.clone().oneshot(()).await {
                Ok(()) => break,
                Err(err) => assert!(err.is::<Overloaded>() && Instant::now() < deadline, "{err}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    redis.until_holders("finished", 0).await;
}

#[tokio::test]
async fn a_long_call_renews_its_lease() {
    let redis = RedisServer::start();
    // Renewed every 400 ms with a 200 ms timeout: one renewal may fail (a
    // stall of the loaded machine) and the next still lands in time. With a
    // lease of 600 ms and a timeout of 200 ms, one slow answer lost it.
    let lease = Duration::from_millis(1200);
    let layer = layer(&redis, "renew", 1, lease);
    let long = layer.layer(service_fn(|()| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok::<_, BoxError>(())
    }));
    let call = tokio::spawn(long.oneshot(()));
    redis.until_holders("renew", 1).await;

    // For more than two leases, nobody else gets the permit.
    let probe = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
    while !call.is_finished() {
        if let Ok(()) = probe.clone().oneshot(()).await {
            assert!(
                call.is_finished(),
                "the permit was free while the long call ran"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call.await.unwrap().unwrap();
    // Then it is free again.
    redis.until_holders("renew", 0).await;
    probe.oneshot(()).await.unwrap();
}

#[tokio::test]
async fn waiting_callers_get_permits_as_they_free_up() {
    let redis = RedisServer::start();
    // Not the default 250 ms timeout: this test is not about outages.
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let layer = RedisConcurrencyLimitLayer::builder(store, "wait", 2)
        .lease(Duration::from_secs(30))
        .retry_interval(Duration::from_millis(5))
        .fail_closed()
        .build()
        .unwrap();
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let max = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = {
        let (in_flight, max) = (in_flight.clone(), max.clone());
        layer.layer(service_fn(move |()| {
            let (in_flight, max) = (in_flight.clone(), max.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = in_flight.fetch_add(1, SeqCst) + 1;
                max.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                in_flight.fetch_sub(1, SeqCst);
                Ok::<_, BoxError>(())
            }
        }))
    };
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    // About 100 ms of work; a place that came back only when its 30 s lease
    // ended (no release) would take minutes.
    let all = async {
        for call in calls {
            call.await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("the callers waited 10 s: places were not released");
    assert!(max.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    redis.until_holders("wait", 0).await;
}

#[tokio::test]
async fn the_handle_counts_live_holders_over_all_services() {
    let redis = RedisServer::start();
    let layer = layer(&redis, "handle", 3, Duration::from_secs(30));
    let handle = layer.handle();
    assert_eq!(
        (handle.limit(), handle.lease()),
        (3, Duration::from_secs(30))
    );
    assert_eq!(handle.in_flight().await.unwrap(), 0);
    let mut a = layer.layer(never_ends());
    let mut b = a.clone();
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    assert_eq!(handle.in_flight().await.unwrap(), 2);
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(3);
    while handle.in_flight().await.unwrap() != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls of each of `commands` Redis has run since its statistics were
/// reset, summed (scripts run as `evalsha`, or `eval` when not cached).
async fn calls(conn: &mut redis::aio::MultiplexedConnection, commands: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            commands.contains(&name).then_some(stats)
        })
        .map(|stats| {
            let calls = stats.strip_prefix("calls=").unwrap();
            calls.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

const SCRIPTS: &[&str] = &["evalsha", "eval"];

/// Takes the only place of `svc`'s limit, then resets Redis's statistics:
/// what [`calls`] counts on the connection returned is the other callers'.
async fn hold_the_only_place<S>(
    redis: &RedisServer,
    svc: &S,
) -> (S, redis::aio::MultiplexedConnection)
where
    S: Service<()> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut holder = svc.clone();
    take_place(&mut holder).await;
    let mut conn = redis.connection().await;
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    (holder, conn)
}

#[tokio::test]
async fn a_waiting_caller_asks_redis_again_once_per_retry_interval() {
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let interval = Duration::from_millis(100);
    let svc = RedisConcurrencyLimitLayer::builder(store, "paced", 1)
        .lease(Duration::from_secs(30))
        .retry_interval(interval)
        .fail_closed()
        .build()
        .unwrap()
        .layer(never_ends());
    let (holder, mut conn) = hold_the_only_place(&redis, &svc).await;

    let started = Instant::now();
    let mut waiter = svc.clone();
    let waited = tokio::time::timeout(Duration::from_millis(600), waiter.ready()).await;
    assert!(waited.is_err(), "the only place is held");
    let elapsed = started.elapsed();
    let asked = calls(&mut conn, SCRIPTS).await;
    // Each wait is between half and all of the interval: it asks again
    // (several times in 600 ms), but never sooner than 50 ms after the last.
    let most = u64::try_from(elapsed.as_millis() / (interval / 2).as_millis()).unwrap() + 1;
    assert!(
        (2..=most).contains(&asked),
        "{asked} asks in {elapsed:?}, expected 2..={most}"
    );
    drop((waiter, holder));
}

#[tokio::test]
async fn a_refused_caller_sends_nothing_to_take_back() {
    // Redis said no: no holder was added, so no release follows the refusal.
    let redis = RedisServer::start();
    let svc = layer(&redis, "refused", 1, Duration::from_secs(30)).layer(never_ends());
    let (holder, mut conn) = hold_the_only_place(&redis, &svc).await;
    for _ in 0..5 {
        let err = at_once(svc.clone().oneshot(())).await.unwrap_err();
        assert!(err.is::<Overloaded>(), "{err}");
    }
    // A release would be sent from a task of its own: give it time to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        calls(&mut conn, SCRIPTS).await,
        5,
        "one acquire per refusal"
    );
    assert_eq!(
        calls(&mut conn, &["zrem"]).await,
        0,
        "a release after a refusal"
    );
    drop(holder);
}
