//! Several OS processes sharing one limit on a real redis-server.
//!
//! The workers are this test binary, re-executed to run only
//! `worker_entry` with `TF_REDIS_WORKER` set; in a normal run that test
//! does nothing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis::AsyncCommands;
use support::{
    CountingServer, RedisServer, WORKER_ENV, Worker, env_str, env_u64, field, wait_for_go,
};
use tower::{Layer, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::error::{Overloaded, RateLimited};
use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisRateLimitLayer, RedisStore};

const ENTRY: &str = "worker_entry";

// ---------------------------------------------------------------- workers

#[test]
fn worker_entry() {
    let Ok(mode) = std::env::var(WORKER_ENV) else {
        return; // A normal test run: nothing to do.
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match mode.as_str() {
            "rate" => rate_worker().await,
            "concurrency" => concurrency_worker().await,
            "hold" => hold_worker().await,
            other => panic!("unknown worker mode {other}"),
        }
    });
}

/// A hyper client calling the counting server, as a cloneable service.
fn http_service(
    target: String,
) -> impl tower::Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{target}/").parse().unwrap();
    service_fn(move |()| {
        let client = client.clone();
        let uri = uri.clone();
        async move {
            let response = client.get(uri).await?;
            response.into_body().collect().await?;
            Ok::<_, BoxError>(())
        }
    })
}

fn worker_store() -> RedisStore {
    let timeout = std::env::var("TIMEOUT_MS").map_or(500, |ms| ms.parse().unwrap());
    RedisStore::builder(env_str("REDIS_URL"))
        .timeout(Duration::from_millis(timeout))
        .build()
        .unwrap()
}

#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    refused: AtomicU64,
    /// Calls refused with the crate's `Error` (`is_unavailable`).
    unavailable: AtomicU64,
    /// The longest such a refusal took, in ms.
    unavailable_max_ms: AtomicU64,
    /// Calls admitted after the first `unavailable`: recovery.
    admitted_after_unavailable: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn report(&self) -> String {
        format!(
            "admitted={} refused={} unavailable={} unavailable_max_ms={} admitted_after_unavailable={} other={}",
            self.admitted.load(Ordering::SeqCst),
            self.refused.load(Ordering::SeqCst),
            self.unavailable.load(Ordering::SeqCst),
            self.unavailable_max_ms.load(Ordering::SeqCst),
            self.admitted_after_unavailable.load(Ordering::SeqCst),
            self.other.load(Ordering::SeqCst)
        )
    }
}

/// Runs `tasks` loops calling `svc` until `run` has passed since the go.
async fn drive<S>(svc: S, tasks: u64, run: Duration) -> Arc<Tally>
where
    S: tower::Service<(), Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    println!("WORKER READY");
    wait_for_go().await;
    let deadline = Instant::now() + run;
    let tally = Arc::new(Tally::default());
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let svc = svc.clone();
        let tally = tally.clone();
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let start = Instant::now();
                match svc.clone().oneshot(()).await {
                    Ok(()) => {
                        tally.admitted.fetch_add(1, Ordering::SeqCst);
                        if tally.unavailable.load(Ordering::SeqCst) > 0 {
                            tally
                                .admitted_after_unavailable
                                .fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(err)
                        if err
                            .downcast_ref::<tower_fanout_redis::Error>()
                            .is_some_and(tower_fanout_redis::Error::is_unavailable) =>
                    {
                        let ms = start.elapsed().as_millis() as u64;
                        tally.unavailable_max_ms.fetch_max(ms, Ordering::SeqCst);
                        tally.unavailable.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(err) if err.is::<RateLimited>() || err.is::<Overloaded>() => {
                        tally.refused.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(err) => {
                        eprintln!("worker call failed: {err}");
                        tally.other.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    tally
}

async fn rate_worker() {
    let builder = RedisRateLimitLayer::builder(
        worker_store(),
        env_str("NAME"),
        env_u64("RATE") as u32,
        Duration::from_millis(env_u64("PERIOD_MS")),
    )
    .burst(env_u64("BURST") as u32);
    let builder = match std::env::var("FAIL_OPEN") {
        Ok(share) => builder.fail_open(share.parse().unwrap()),
        Err(_) => builder.fail_closed(),
    };
    let builder = if env_u64("FAIL_FAST") == 1 {
        builder.fail_fast()
    } else {
        builder
    };
    let svc = builder
        .build()
        .unwrap()
        .layer(http_service(env_str("TARGET")));
    let tally = drive(
        svc,
        env_u64("TASKS"),
        Duration::from_millis(env_u64("RUN_MS")),
    )
    .await;
    println!("WORKER DONE {}", tally.report());
}

async fn concurrency_worker() {
    let layer = RedisConcurrencyLimitLayer::builder(
        worker_store(),
        env_str("NAME"),
        env_u64("LIMIT") as usize,
    )
    .lease(Duration::from_millis(env_u64("LEASE_MS")))
    .fail_closed()
    .build()
    .unwrap();
    let svc = layer.layer(http_service(env_str("TARGET")));
    let tally = drive(
        svc,
        env_u64("TASKS"),
        Duration::from_millis(env_u64("RUN_MS")),
    )
    .await;
    println!("WORKER DONE {}", tally.report());
}

/// Takes `LIMIT` permits with calls that never end, says so, and waits to
/// be killed.
async fn hold_worker() {
    let limit = env_u64("LIMIT");
    let layer =
        RedisConcurrencyLimitLayer::builder(worker_store(), env_str("NAME"), limit as usize)
            .lease(Duration::from_millis(env_u64("LEASE_MS")))
            .fail_closed()
            .build()
            .unwrap();
    let called = Arc::new(AtomicU64::new(0));
    let inner = {
        let called = called.clone();
        service_fn(move |()| {
            called.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), BoxError>>()
        })
    };
    let svc = layer.layer(inner);
    let mut calls = Vec::new();
    for _ in 0..limit {
        calls.push(tokio::spawn(svc.clone().oneshot(())));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while called.load(Ordering::SeqCst) < limit {
        assert!(
            Instant::now() < deadline,
            "hold worker could not take its permits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("WORKER HELD");
    tokio::time::sleep(Duration::from_secs(60)).await;
    panic!("hold worker was not killed");
}

// ------------------------------------------------------------------ tests

const RATE: u64 = 40;
const BURST: u64 = 5;
const PERIOD_MS: u64 = 1000;
const RUN_MS: u64 = 1500;

/// `processes` workers share one rate limit; the server under test counts
/// what was admitted, which must stay within rate × t + burst over the
/// whole run (t measured from before the go to after the last exit).
async fn shared_rate_limit(processes: usize, fail_fast: bool) {
    let redis = RedisServer::start();
    let server = CountingServer::start(Duration::ZERO).await;
    let name = format!("rate-{processes}-{fail_fast}");
    let mut workers: Vec<Worker> = (0..processes)
        .map(|_| {
            Worker::spawn(
                ENTRY,
                &[
                    (WORKER_ENV, "rate".to_owned()),
                    ("REDIS_URL", redis.url()),
                    ("TARGET", server.addr.to_string()),
                    ("NAME", name.clone()),
                    ("RATE", RATE.to_string()),
                    ("BURST", BURST.to_string()),
                    ("PERIOD_MS", PERIOD_MS.to_string()),
                    ("FAIL_FAST", u8::from(fail_fast).to_string()),
                    ("TASKS", "4".to_owned()),
                    ("RUN_MS", RUN_MS.to_string()),
                ],
            )
        })
        .collect();
    for worker in &mut workers {
        worker.expect("READY").await;
    }
    let start = Instant::now();
    for worker in &mut workers {
        worker.send("go").await;
    }
    let mut admitted = 0;
    let mut per_worker = Vec::new();
    for worker in &mut workers {
        let report = worker.expect("DONE").await;
        assert_eq!(field(&report, "other"), 0, "unexpected errors: {report}");
        assert_eq!(field(&report, "unavailable"), 0, "redis was up: {report}");
        admitted += field(&report, "admitted");
        per_worker.push(field(&report, "admitted"));
        worker.wait().await;
    }
    let elapsed = start.elapsed();

    assert_eq!(
        server.total(),
        admitted,
        "every admitted call reached the server"
    );
    eprintln!("{processes} processes admitted {admitted} ({per_worker:?}) over {elapsed:?}");
    let bound = BURST + (RATE as f64 * elapsed.as_secs_f64() * 1000.0 / PERIOD_MS as f64) as u64;
    assert!(
        admitted <= bound,
        "{admitted} admitted over {elapsed:?} by {processes} processes; the limit allows {bound}"
    );
    // And the limit was used, not just refused: most of rate × run.
    let floor = RATE * RUN_MS / PERIOD_MS / 2;
    assert!(
        admitted >= floor,
        "only {admitted} admitted (per worker {per_worker:?}); expected at least {floor}"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "every process got a share: {per_worker:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_rate_limit_waiting() {
    shared_rate_limit(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_rate_limit_failing_fast() {
    shared_rate_limit(4, true).await;
}

const LIMIT: u64 = 3;

/// `processes` workers share one concurrency limit; the server under test
/// tracks the most calls it ever had in flight at once.
async fn shared_concurrency_limit(processes: usize) {
    let redis = RedisServer::start();
    let server = CountingServer::start(Duration::from_millis(30)).await;
    let name = format!("sem-{processes}");
    let mut workers: Vec<Worker> = (0..processes)
        .map(|_| {
            Worker::spawn(
                ENTRY,
                &[
                    (WORKER_ENV, "concurrency".to_owned()),
                    ("REDIS_URL", redis.url()),
                    ("TARGET", server.addr.to_string()),
                    ("NAME", name.clone()),
                    ("LIMIT", LIMIT.to_string()),
                    ("LEASE_MS", "2000".to_owned()),
                    ("TASKS", "4".to_owned()),
                    ("RUN_MS", "1200".to_owned()),
                ],
            )
        })
        .collect();
    for worker in &mut workers {
        worker.expect("READY").await;
    }
    for worker in &mut workers {
        worker.send("go").await;
    }
    let mut admitted = 0;
    for worker in &mut workers {
        let report = worker.expect("DONE").await;
        assert_eq!(field(&report, "other"), 0, "unexpected errors: {report}");
        assert_eq!(field(&report, "unavailable"), 0, "redis was up: {report}");
        admitted += field(&report, "admitted");
        worker.wait().await;
    }
    assert_eq!(server.total(), admitted);
    let max = server.max_in_flight();
    eprintln!("{processes} processes made {admitted} calls, at most {max} at once");
    assert!(
        (1..=LIMIT).contains(&max),
        "{max} calls in flight at once across {processes} processes; the limit is {LIMIT}"
    );
    assert!(admitted >= 10, "only {admitted} calls made");

    // Every holder is gone within a lease (released, or expired if the
    // process exited before its release was sent).
    let key = format!("tower-fanout:{{{name}}}:holders");
    let mut conn = redis.connection().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now_ms: u64 = {
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            secs * 1000 + micros / 1000
        };
        let live: u64 = conn.zcount(&key, now_ms, "+inf").await.unwrap();
        if live == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{live} holders still live after the run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_concurrency_limit() {
    shared_concurrency_limit(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_concurrency_limit() {
    shared_concurrency_limit(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_of_a_killed_holder_come_back_after_the_lease() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(2);
    let mut holder = Worker::spawn(
        ENTRY,
        &[
            (WORKER_ENV, "hold".to_owned()),
            ("REDIS_URL", redis.url()),
            ("NAME", "killed".to_owned()),
            ("LIMIT", LIMIT.to_string()),
            ("LEASE_MS", lease.as_millis().to_string()),
        ],
    );
    holder.expect("HELD").await;

    let store = RedisStore::open(&redis.url()).unwrap();
    let layer = RedisConcurrencyLimitLayer::builder(store, "killed", LIMIT as usize)
        .lease(lease)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap();
    // Each call holds its permit a moment, so that LIMIT calls at once
    // succeed only if LIMIT permits are free at once.
    let svc = layer.layer(service_fn(|()| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, BoxError>(())
    }));
    let all_at_once = || {
        let calls: Vec<_> = (0..LIMIT)
            .map(|_| tokio::spawn(svc.clone().oneshot(())))
            .collect();
        async move {
            let mut admitted = 0;
            for call in calls {
                match call.await.unwrap() {
                    Ok(()) => admitted += 1,
                    Err(err) => assert!(err.is::<Overloaded>(), "{err}"),
                }
            }
            admitted
        }
    };
    assert_eq!(all_at_once().await, 0, "the holder has every permit");

    holder.kill().await;
    let killed_at = Instant::now();
    // Nothing was released: the permits are still held right after the kill...
    let admitted = all_at_once().await;
    assert!(
        // A lease is renewed every third of it, so it may end 2/3 of a
        // lease after the kill.
        admitted == 0 || killed_at.elapsed() >= lease * 2 / 3,
        "{admitted} permits free right after the kill"
    );
    // ...and all of them come back once the leases run out.
    let deadline = killed_at + lease + Duration::from_secs(5);
    loop {
        let admitted = all_at_once().await;
        if admitted == LIMIT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {admitted} permits back {:?} after the kill",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Four processes (two failing closed, two failing open at half the limit
/// each) run while Redis is killed and restarted on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_ride_out_a_redis_restart() {
    // A store timeout of 1 s with 900 ms of slack on the bound below (they
    // were 200 ms and 300 ms): a loaded machine's delays fit, and an
    // Unavailable that waited out two timeouts still fails it.
    const TIMEOUT_MS: u64 = 1000;
    const SLACK_MS: u64 = 900;
    let (rate, burst, share) = (40u64, 10u64, 0.5);
    let mut redis = RedisServer::start();
    let closed_server = CountingServer::start(Duration::ZERO).await;
    let open_server = CountingServer::start(Duration::ZERO).await;
    let worker = |server: &CountingServer, name: &str, fail_open: bool| {
        let mut env = vec![
            (WORKER_ENV, "rate".to_owned()),
            ("REDIS_URL", redis.url()),
            ("TARGET", server.addr.to_string()),
            ("NAME", name.to_owned()),
            ("RATE", rate.to_string()),
            ("BURST", burst.to_string()),
            ("PERIOD_MS", "1000".to_owned()),
            ("FAIL_FAST", "1".to_owned()),
            ("TASKS", "2".to_owned()),
            // Redis is killed 600 ms in and restarted about 800 ms later: the
            // workers go on 2.5 s after that to see it back, however slowly
            // it restarts on a loaded machine (they stopped at 2.5 s in all,
            // which left a slow restart about one second).
            ("RUN_MS", "4000".to_owned()),
            ("TIMEOUT_MS", TIMEOUT_MS.to_string()),
        ];
        if fail_open {
            env.push(("FAIL_OPEN", share.to_string()));
        }
        Worker::spawn(ENTRY, &env)
    };
    let mut closed = vec![
        worker(&closed_server, "outage-closed", false),
        worker(&closed_server, "outage-closed", false),
    ];
    let mut open = vec![
        worker(&open_server, "outage-open", true),
        worker(&open_server, "outage-open", true),
    ];
    for w in closed.iter_mut().chain(open.iter_mut()) {
        w.expect("READY").await;
    }
    for w in closed.iter_mut().chain(open.iter_mut()) {
        w.send("go").await;
    }

    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.kill();
    let killed_at = Instant::now();
    // Calls Redis admitted before the kill have landed after this margin;
    // from here on only the local shares admit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let local_from = open_server.total();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let local_to = open_server.total();
    let outage = killed_at.elapsed();
    redis.restart();

    let mut closed_admitted = 0;
    for w in &mut closed {
        let report = w.expect("DONE").await;
        eprintln!("fail-closed worker: {report}");
        assert_eq!(field(&report, "other"), 0, "{report}");
        assert!(
            field(&report, "unavailable") > 0,
            "saw the outage: {report}"
        );
        assert!(
            field(&report, "unavailable_max_ms") <= TIMEOUT_MS + SLACK_MS,
            "an Unavailable took longer than the timeout: {report}"
        );
        assert!(
            field(&report, "admitted_after_unavailable") > 0,
            "recovered after the restart, same client: {report}"
        );
        closed_admitted += field(&report, "admitted");
        w.wait().await;
    }
    assert_eq!(closed_server.total(), closed_admitted);

    for w in &mut open {
        let report = w.expect("DONE").await;
        eprintln!("fail-open worker: {report}");
        assert_eq!(field(&report, "other"), 0, "{report}");
        assert_eq!(
            field(&report, "unavailable"),
            0,
            "failing open never refuses for it: {report}"
        );
        w.wait().await;
    }
    // During the outage the two processes went on, each within its local
    // half: burst 5 plus 20 a second.
    let local = local_to - local_from;
    let local_burst = (burst as f64 * share).floor() as u64;
    let bound = 2 * (local_burst + (rate as f64 * share * outage.as_secs_f64()) as u64);
    eprintln!("fail-open processes admitted {local} locally in {outage:?} (bound {bound})");
    assert!(
        local > 0,
        "the fail-open processes stopped during the outage"
    );
    assert!(
        local <= bound,
        "{local} admitted locally; the local shares allow {bound}"
    );
}
