//! Decisions per second and latency per decision of the Redis limits,
//! against a local redis-server, with the core (in-process) limiter measured
//! in the same run as the baseline.
//!
//! `cargo bench -p tower-fanout-redis --bench decisions`
//!
//! Env: `TF_BENCH_DECISIONS` (per case, default 20000), `TF_BENCH_TASKS`
//! (concurrent callers sharing one multiplexed connection, default 64).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_fanout_core::rate::RateLimitLayer;
use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisRateLimitLayer, RedisStore};

struct Run {
    decisions: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.decisions as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }
}

/// `tasks` callers make `total` calls between them through clones of `svc`.
async fn measure<S>(svc: S, total: u64, tasks: u64) -> Run
where
    S: Service<(), Response = ()> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let per_task = total / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task as usize);
                for _ in 0..per_task {
                    let t = Instant::now();
                    svc.clone().oneshot(()).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Run {
        decisions: per_task * tasks,
        elapsed,
        latencies,
    }
}

fn noop()
-> impl Service<(), Response = (), Error = Infallible, Future: Send> + Clone + Send + 'static {
    service_fn(|()| async { Ok::<_, Infallible>(()) })
}

fn row(name: &str, run: &Run, baseline: &Run) {
    println!(
        "| {name} | {} | {:.0} | {:.3} | {:.1} | {:.1} | {:.1} |",
        run.decisions,
        run.per_second(),
        run.per_second() / baseline.per_second(),
        run.mean().as_secs_f64() * 1e6,
        run.percentile(0.5).as_secs_f64() * 1e6,
        run.percentile(0.99).as_secs_f64() * 1e6,
    );
}

async fn info_field(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim_start_matches([':', '='])
                .split([',', '\r'])
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn env(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once, small.
    let quick = !std::env::args().any(|a| a == "--bench");
    let total = if quick {
        200
    } else {
        env("TF_BENCH_DECISIONS", 20_000)
    };
    let tasks = env("TF_BENCH_TASKS", 64);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let redis = support::RedisServer::start();
        let store = RedisStore::open(&redis.url()).unwrap();
        let mut conn = redis.connection().await;

        // A limit far above what we can reach: every decision is made, none waits.
        let huge = u32::MAX;
        let local = RateLimitLayer::builder(huge, Duration::from_secs(1))
            .burst(huge)
            .fail_fast()
            .build()
            .unwrap()
            .layer(noop());
        let remote = RedisRateLimitLayer::builder(store.clone(), "bench", huge, Duration::from_secs(1))
            .burst(huge / 4096)
            .fail_fast()
            .fail_closed()
            .build()
            .unwrap()
            .layer(noop());
        let semaphore = RedisConcurrencyLimitLayer::builder(store, "bench", 1 << 20)
            .fail_fast()
            .fail_closed()
            .build()
            .unwrap()
            .layer(noop());

        // Warm up: connect, load the scripts.
        measure(remote.clone(), 100, 4).await;
        measure(semaphore.clone(), 100, 4).await;

        let local_seq = measure(local.clone(), total, 1).await;
        let local_par = measure(local, total, tasks).await;

        let calls_before = info_field(&mut conn, "commandstats", "cmdstat_evalsha:calls").await;
        let remote_seq = measure(remote.clone(), total / 4, 1).await;
        let remote_par = measure(remote, total, tasks).await;
        let calls = info_field(&mut conn, "commandstats", "cmdstat_evalsha:calls").await - calls_before;

        let sem_par = measure(semaphore, total, tasks).await;
        // Let the spawned releases land before counting.
        tokio::time::sleep(Duration::from_millis(200)).await;

        println!();
        println!("tower-fanout-redis decisions ({} decisions per case, {tasks} tasks on one connection; ratio = decisions/s ÷ local rate limit, {tasks} tasks)", total);
        println!();
        println!("| case | decisions | decisions/s | ratio | mean µs | p50 µs | p99 µs |");
        println!("|---|---|---|---|---|---|---|");
        row("local RateLimit (core), 1 task", &local_seq, &local_par);
        row(&format!("local RateLimit (core), {tasks} tasks"), &local_par, &local_par);
        row("RedisRateLimit, 1 task", &remote_seq, &local_par);
        row(&format!("RedisRateLimit, {tasks} tasks"), &remote_par, &local_par);
        row(
            &format!("RedisConcurrencyLimit acquire + release, {tasks} tasks"),
            &sem_par,
            &local_par,
        );
        println!();
        println!(
            "EVALSHA calls per rate decision: {:.3} ({} calls for {} decisions)",
            calls as f64 / (remote_seq.decisions + remote_par.decisions) as f64,
            calls,
            remote_seq.decisions + remote_par.decisions
        );
    });
}
