//! `fanout demo`: the same batch through each bound, against a real
//! (embedded) downstream, with what happened measured.
//!
//! The downstream is the simulated server from `tower-fanout-sim` on
//! 127.0.0.1: at most 20 requests in service (more get a 429), at most 100 a
//! second with a burst of 20 (more get a 429 with `Retry-After: 1`), 50 ms
//! plus an exponential 20 ms per request, 32 KiB bodies. Each
//! configuration gets a fresh server and client; the one without a limit
//! runs first, alone (see [`run`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::{AdaptiveLimitLayer, GradientController};
use tower_fanout_core::backpressure::BackpressureLayer;
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::fan_out::{Progress, fan_out};
use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_core::rate::RateLimitLayer;
use tower_fanout_http::retry::RetryLayer;
use tower_fanout_sim::{Jitter, Model, Overflow, Sim};

use crate::engine::{Req, Stack, layered};

/// The downstream's capacity, which the demo's limits are set just under.
const CAPACITY: usize = 20;
const RATE: f64 = 100.0;
const BODY: usize = 32 * 1024;
/// How long the caller spends on each response (parsing, say): responses
/// that arrive faster than this pile up in memory unless the fan-out is bounded.
const PROCESS: Duration = Duration::from_millis(2);

/// One configuration's measured figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) strategy: &'static str,
    pub(crate) requests: usize,
    pub(crate) succeeded: usize,
    /// 429 answers the server gave (retried ones included).
    pub(crate) http_429: u64,
    /// Items that ended without a 2xx for another reason.
    pub(crate) other_errors: usize,
    pub(crate) retries: u64,
    pub(crate) wall_ms: u64,
    /// Most requests in flight at once, seen by the client.
    pub(crate) peak_in_flight: usize,
    /// Most requests the server held at once (arrived, not yet answered):
    /// the bound as the downstream saw it, limits inside the client too.
    pub(crate) peak_at_server: usize,
    /// Most response bytes held at once between arrival and processing.
    pub(crate) peak_response_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    NoLimit,
    Concurrency,
    Chunked,
    TokenBucket,
    PerHost,
    Backpressure,
    Adaptive,
    Recommended,
}

impl Strategy {
    const ALL: [Strategy; 8] = [
        Strategy::NoLimit,
        Strategy::Concurrency,
        Strategy::Chunked,
        Strategy::TokenBucket,
        Strategy::PerHost,
        Strategy::Backpressure,
        Strategy::Adaptive,
        Strategy::Recommended,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::NoLimit => "no limit",
            Strategy::Concurrency => "concurrency limit (16)",
            Strategy::Chunked => "chunks of 20 + progress",
            Strategy::TokenBucket => "token bucket (90/s)",
            Strategy::PerHost => "per-host limits (16, 90/s)",
            Strategy::Backpressure => "backpressure (16 workers)",
            Strategy::Adaptive => "adaptive + retry",
            Strategy::Recommended => "recommended stack",
        }
    }
}

/// Gauges shared by the stack and the consumer.
#[derive(Debug, Default)]
struct Gauges {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    held: AtomicUsize,
    peak_held: AtomicUsize,
    attempts: AtomicU32,
}

fn raise(peak: &AtomicUsize, now: usize) {
    peak.fetch_max(now, Ordering::Relaxed);
}

/// A response kept by the caller; its bytes count as held until dropped.
struct Held {
    response: Response<Bytes>,
    gauges: Arc<Gauges>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauges
            .held
            .fetch_sub(self.response.body().len(), Ordering::Relaxed);
    }
}

/// Counts attempts and calls in flight right above the client.
fn gauged(client: tower_fanout_http::Client, gauges: Arc<Gauges>) -> Stack {
    BoxCloneSyncService::new(tower::service_fn(move |req: Req| {
        let mut client = client.clone();
        let gauges = gauges.clone();
        async move {
            gauges.attempts.fetch_add(1, Ordering::Relaxed);
            let now = gauges.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            raise(&gauges.peak_in_flight, now);
            let result = client.call(req).await;
            gauges.in_flight.fetch_sub(1, Ordering::Relaxed);
            result.map_err(BoxError::from)
        }
    }))
}

fn retry() -> anyhow::Result<RetryLayer> {
    Ok(RetryLayer::builder()
        .max_retries(5)
        .max_wait(Duration::from_secs(5))
        .build()?)
}

fn rate_90() -> anyhow::Result<RateLimitLayer> {
    Ok(RateLimitLayer::builder(90, Duration::from_secs(1))
        .burst(10)
        .build()?)
}

/// The stack for `strategy`, and the fan-out window it runs with.
fn build(
    strategy: Strategy,
    host: &str,
    gauges: &Arc<Gauges>,
    requests: usize,
) -> anyhow::Result<(Stack, usize)> {
    let mut client = tower_fanout_http::Client::builder()
        .timeout(Some(Duration::from_secs(10)))
        .pool_max_idle_per_host(64)
        .host_default(KeyLimit::new())
        .no_retry();
    if strategy == Strategy::PerHost {
        client = client.host_limit(
            host,
            KeyLimit::new()
                .concurrency(16)
                .rate(90, Duration::from_secs(1))
                .burst(10),
        );
    }
    let base = gauged(client.build()?, gauges.clone());
    let adaptive = || -> anyhow::Result<AdaptiveLimitLayer> {
        Ok(AdaptiveLimitLayer::new(
            GradientController::builder()
                .initial(8)
                .max(CAPACITY)
                .build()?,
        ))
    };
    Ok(match strategy {
        Strategy::NoLimit | Strategy::PerHost => (base, requests),
        Strategy::Concurrency => (layered(ConcurrencyLimitLayer::new(16)?, base), requests),
        Strategy::Chunked => (base, 20),
        Strategy::TokenBucket => (layered(rate_90()?, base), requests),
        Strategy::Backpressure => (layered(BackpressureLayer::new(16)?, base), requests),
        Strategy::Adaptive => (layered(retry()?, layered(adaptive()?, base)), requests),
        Strategy::Recommended => {
            let inner = layered(adaptive()?, base);
            let inner = layered(rate_90()?, inner);
            let inner = layered(retry()?, inner);
            (layered(BackpressureLayer::new(16)?, inner), 32)
        }
    })
}

async fn run_one(
    strategy: Strategy,
    requests: usize,
    progress: impl Fn(&Progress) + Send + Sync + 'static,
) -> anyhow::Result<Row> {
    let model = Model::new()
        .concurrency(CAPACITY)
        .overflow(Overflow::Refuse(StatusCode::TOO_MANY_REQUESTS))
        .rate(RATE, 20)
        .latency(
            Duration::from_millis(50),
            Jitter::Exponential {
                mean: Duration::from_millis(20),
            },
        )
        .body_bytes(BODY);
    let sim = Sim::new(model, 7);
    let server = sim.serve().await?;
    let host = server.addr().to_string();
    let gauges = Arc::new(Gauges::default());
    let (stack, window) = build(strategy, &host, &gauges, requests)?;
    let url = format!("http://{host}/item");
    let service = tower::service_fn({
        let gauges = gauges.clone();
        move |req: Req| {
            let stack = stack.clone();
            let gauges = gauges.clone();
            async move {
                let response = stack.oneshot(req).await?;
                let now = gauges
                    .held
                    .fetch_add(response.body().len(), Ordering::Relaxed)
                    + response.body().len();
                raise(&gauges.peak_held, now);
                Ok::<_, BoxError>(Held { response, gauges })
            }
        }
    });
    let requests_iter = (0..requests).map(move |i| {
        Request::get(format!("{url}/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    });
    let fan = fan_out(service, requests_iter).on_progress(progress);
    let fan = if strategy == Strategy::Chunked {
        fan.chunked(window)?
    } else {
        fan.concurrency(window)?
    };
    let started = Instant::now();
    let mut stream = fan.stream();
    let (mut succeeded, mut other_errors) = (0, 0);
    while let Some(item) = stream.next().await {
        match item.result {
            Ok(held) if held.response.status().is_success() => {
                succeeded += 1;
                // The caller's own work on the response, while it is held.
                tokio::time::sleep(PROCESS).await;
            }
            Ok(held) if held.response.status() == StatusCode::TOO_MANY_REQUESTS => {}
            Ok(_) | Err(_) => other_errors += 1,
        }
    }
    let wall = started.elapsed();
    let stats = sim.stats();
    server.shutdown().await;
    let attempts = u64::from(gauges.attempts.load(Ordering::Relaxed));
    Ok(Row {
        strategy: strategy.name(),
        requests,
        succeeded,
        http_429: stats.refused_429,
        other_errors,
        retries: attempts.saturating_sub(requests as u64),
        wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
        peak_in_flight: gauges.peak_in_flight.load(Ordering::Relaxed),
        peak_at_server: stats.peak_open,
        peak_response_bytes: gauges.peak_held.load(Ordering::Relaxed),
    })
}

/// Runs the configuration without a limit, then every other one at once,
/// each against its own downstream and with its own client; `progress(name)`
/// makes the progress callback of each.
///
/// The unbounded run goes alone: its hundreds of sockets at once (client
/// and server ends in this one process) took file descriptors from the
/// runs beside it, so under a low `ulimit -n` (512) the bounded rows showed
/// its `EMFILE` errors as their own. The bounded runs share nothing but the
/// process (a few dozen sockets each) and spend their time waiting on the
/// downstream's latency, so together they take as long as the slowest.
pub(crate) async fn run<P>(
    requests: usize,
    progress: impl Fn(&'static str) -> P,
) -> anyhow::Result<Vec<Row>>
where
    P: Fn(&Progress) + Send + Sync + 'static,
{
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for strategy in Strategy::ALL {
        let run = run_one(strategy, requests, progress(strategy.name()));
        if strategy == Strategy::NoLimit {
            rows.push(run.await?);
        } else {
            runs.push(tokio::spawn(run));
        }
    }
    for run in runs {
        rows.push(run.await??);
    }
    Ok(rows)
}

/// The table printed by `fanout demo`.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<28} {:>9} {:>6} {:>7} {:>8} {:>8} {:>9} {:>11} {:>12}\n",
        "strategy",
        "succeeded",
        "429s",
        "errors",
        "retries",
        "wall ms",
        "peak busy",
        "server peak",
        "peak held KiB"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<28} {:>5}/{:<3} {:>6} {:>7} {:>8} {:>8} {:>9} {:>11} {:>12}\n",
            r.strategy,
            r.succeeded,
            r.requests,
            r.http_429,
            r.other_errors,
            r.retries,
            r.wall_ms,
            r.peak_in_flight,
            r.peak_at_server,
            r.peak_response_bytes / 1024
        ));
    }
    out
}
