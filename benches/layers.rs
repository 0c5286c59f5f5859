//! Per-call overhead of the core layers next to their tower and governor
//! counterparts, over a service that answers at once (issue 3).
//!
//! Two cases, each with every variant in one process:
//! - `uncontended`: one task on a current-thread runtime, `ready().await`
//!   then `call().await` in a loop;
//! - `contended`: a 2-worker multi-thread runtime, 64 tasks each making a
//!   fixed share of the calls through its own clone of one shared service
//!   (tower's `RateLimit` is not `Clone`, so each task gets its own; that is
//!   how it would be used).
//!
//! Criterion measures each variant in turn. Because contended figures swing
//! several times between runs on a busy machine, the run ends with an
//! interleaved pass: for 101 rounds, every variant makes a ~5 ms slice of
//! calls (in a rotating order), so the bare baseline and each layer are
//! measured moments apart. The tables printed at the end give, per variant,
//! ns per call and the ns it adds over the bare service (median of the
//! per-round differences, and the difference of low quartiles), and the ratio
//! of our added ns to the counterpart's (median of per-round ratios with its
//! interquartile range, the ratio of low-quartile estimates, and the ratio
//! from criterion's passes: ns per call over every call criterion timed,
//! its warm-up included).
//!
//! Rate limits are configured so they never wait (about 10^9 tokens a second,
//! a burst of `u32::MAX`): what is measured is the bookkeeping per call.
//!
//! The adaptive limit (AIMD, limit 64) and the keyed limit (one key, 64 in
//! flight) have no tower counterpart: they are measured for their own
//! figures, against the bare service only.
//!
//! Run: `cargo bench --bench layers -- --warm-up-time 1 --measurement-time 2`
//! (`LAYERS_SUMMARY=0` skips the interleaved pass, e.g. with a filter.)
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::Criterion;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::runtime::{Builder, Runtime};
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer, RateLimit, rate::Rate};
use tower::{Layer, Service, ServiceExt, buffer::Buffer, service_fn, util::ServiceFn};
use tower_fanout::adaptive::{AdaptiveLimitLayer, AimdController};
use tower_fanout::backpressure::BackpressureLayer;
use tower_fanout::classify::Outcome;
use tower_fanout::concurrency::ConcurrencyLimitLayer;
use tower_fanout::keyed::{KeyLimit, KeyedLimitLayer};
use tower_fanout::rate::RateLimitLayer;

/// Tasks in the contended case.
const TASKS: u64 = 64;
/// Concurrency limit for both ours and tower's: at least `TASKS`, so nobody waits.
const LIMIT: usize = 64;
/// Queue bound for both `Buffer` and our backpressure queue: nobody waits for a slot.
const QUEUE: usize = 64;
/// Length of one variant's slice in the interleaved pass.
const SLICE: Duration = Duration::from_millis(5);
/// Rounds of the interleaved pass.
const ROUNDS: usize = 101;

type Echo = ServiceFn<fn(u64) -> Ready<Result<u64, Infallible>>>;

/// The trivial service every variant wraps.
fn bare() -> Echo {
    fn echo(x: u64) -> Ready<Result<u64, Infallible>> {
        ready(Ok(x))
    }
    service_fn(echo as fn(u64) -> Ready<Result<u64, Infallible>>)
}

/// governor's direct limiter checked in `poll_ready`, before the call.
///
/// A real layer around it would also need a timer for the wait; here it never
/// waits, so this is a lower bound of what such a layer would add.
struct Governed<S, K: Clock> {
    limiter: Arc<RateLimiter<NotKeyed, InMemoryState, K, NoOpMiddleware<K::Instant>>>,
    inner: S,
}

impl<S: Clone, K: Clock> Clone for Governed<S, K> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S: Service<u64>, K: Clock> Service<u64> for Governed<S, K> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        assert!(
            self.limiter.check().is_ok(),
            "the bench quota never runs out"
        );
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.inner.call(req)
    }
}

fn governor_quota() -> Quota {
    Quota::with_period(Duration::from_nanos(1))
        .unwrap()
        .allow_burst(NonZeroU32::MAX)
}

/// governor as it comes: its default clock reads the TSC through quanta.
fn governed() -> Governed<Echo, governor::clock::DefaultClock> {
    Governed {
        limiter: Arc::new(RateLimiter::direct(governor_quota())),
        inner: bare(),
    }
}

/// The same limiter on the operating system's monotonic clock
/// (`std::time::Instant`), the clock tokio's reads: the same design as ours
/// (one GCRA state in an atomic shared by every clone) on the same clock.
fn governed_std_clock() -> Governed<Echo, MonotonicClock> {
    Governed {
        limiter: Arc::new(RateLimiter::direct_with_clock(
            governor_quota(),
            MonotonicClock,
        )),
        inner: bare(),
    }
}

fn ours_rate() -> RateLimitLayer {
    RateLimitLayer::builder(u32::MAX, Duration::from_secs(1))
        .burst(u32::MAX)
        .build()
        .unwrap()
}

fn tower_rate() -> Rate {
    Rate::new(u64::MAX, Duration::from_secs(1))
}

/// Every answer is a success: the limit stays at its maximum.
type Classifier = fn(Result<&u64, &(dyn std::error::Error + 'static)>) -> Outcome;

fn ours_adaptive() -> AdaptiveLimitLayer<Classifier> {
    let controller = AimdController::builder()
        .min(1)
        .max(LIMIT)
        .initial(LIMIT)
        .build()
        .unwrap();
    let success: Classifier = |_| Outcome::Success;
    AdaptiveLimitLayer::new(controller).classify(success)
}

/// Every call under one key.
type OneKey = fn(&u64) -> u8;

fn ours_keyed() -> KeyedLimitLayer<OneKey, u8> {
    let key: OneKey = |_| 0;
    KeyedLimitLayer::builder_with_key(key, KeyLimit::new().concurrency(LIMIT))
        .build()
        .unwrap()
}

/// One variant in one case, with the samples criterion took of it.
trait Variant {
    fn name(&self) -> &'static str;
    /// Makes `calls` calls and returns the time they took.
    fn run(&mut self, calls: u64) -> Duration;
    fn samples(&mut self) -> &mut Vec<(u64, Duration)>;
}

async fn drive<S>(svc: &mut S, calls: u64, first: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    for i in first..first + calls {
        let svc = ServiceExt::<u64>::ready(&mut *svc).await.unwrap();
        black_box(svc.call(i).await.unwrap());
    }
}

struct Uncontended<S> {
    name: &'static str,
    rt: &'static Runtime,
    svc: S,
    samples: Vec<(u64, Duration)>,
}

impl<S> Variant for Uncontended<S>
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, calls: u64) -> Duration {
        let svc = &mut self.svc;
        self.rt.block_on(async {
            let start = Instant::now();
            drive(svc, calls, 0).await;
            start.elapsed()
        })
    }

    fn samples(&mut self) -> &mut Vec<(u64, Duration)> {
        &mut self.samples
    }
}

struct Contended<F> {
    name: &'static str,
    rt: &'static Runtime,
    make: F,
    samples: Vec<(u64, Duration)>,
}

impl<F, S> Variant for Contended<F>
where
    F: FnMut() -> S,
    S: Service<u64, Response = u64> + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, calls: u64) -> Duration {
        let per_task = calls.div_ceil(TASKS).max(1);
        // Built outside the timed part: tower's RateLimit allocates a timer.
        let guard = self.rt.enter();
        let services: Vec<S> = (0..TASKS).map(|_| (self.make)()).collect();
        drop(guard);
        let elapsed = self.rt.block_on(async move {
            let start = Instant::now();
            let tasks: Vec<_> = services
                .into_iter()
                .enumerate()
                .map(|(t, mut svc)| {
                    tokio::spawn(
                        async move { drive(&mut svc, per_task, t as u64 * per_task).await },
                    )
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            start.elapsed()
        });
        // Report the time for `calls` calls, as criterion expects.
        elapsed.mul_f64(calls as f64 / (per_task * TASKS) as f64)
    }

    fn samples(&mut self) -> &mut Vec<(u64, Duration)> {
        &mut self.samples
    }
}

fn uncontended_variants(rt: &'static Runtime) -> Vec<Box<dyn Variant>> {
    fn v<S>(name: &'static str, rt: &'static Runtime, svc: S) -> Box<dyn Variant>
    where
        S: Service<u64, Response = u64> + 'static,
        S::Error: Debug,
    {
        Box::new(Uncontended {
            name,
            rt,
            svc,
            samples: Vec::new(),
        })
    }
    // Buffer and our queue spawn their workers on the runtime they start in.
    let _guard = rt.enter();
    vec![
        v(BARE, rt, bare()),
        v(
            OURS_CONC,
            rt,
            ConcurrencyLimitLayer::new(LIMIT).unwrap().layer(bare()),
        ),
        v(TOWER_CONC, rt, ConcurrencyLimit::new(bare(), LIMIT)),
        v(
            TOWER_GLOBAL,
            rt,
            GlobalConcurrencyLimitLayer::new(LIMIT).layer(bare()),
        ),
        v(OURS_ADAPTIVE, rt, ours_adaptive().layer(bare())),
        v(OURS_KEYED, rt, ours_keyed().layer(bare())),
        v(OURS_RATE, rt, ours_rate().layer(bare())),
        v(TOWER_RATE, rt, RateLimit::new(bare(), tower_rate())),
        v(GOVERNOR, rt, governed()),
        v(GOVERNOR_STD, rt, governed_std_clock()),
        v(
            OURS_BP,
            rt,
            BackpressureLayer::with_queue(1, QUEUE)
                .unwrap()
                .layer(bare()),
        ),
        v(
            OURS_BP4,
            rt,
            BackpressureLayer::with_queue(4, QUEUE)
                .unwrap()
                .layer(bare()),
        ),
        v(TOWER_BUFFER, rt, Buffer::new(bare(), QUEUE)),
    ]
}

fn contended_variants(rt: &'static Runtime) -> Vec<Box<dyn Variant>> {
    fn shared<S>(name: &'static str, rt: &'static Runtime, svc: S) -> Box<dyn Variant>
    where
        S: Service<u64, Response = u64> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Debug + Send,
    {
        Box::new(Contended {
            name,
            rt,
            make: move || svc.clone(),
            samples: Vec::new(),
        })
    }
    let _guard = rt.enter();
    vec![
        shared(BARE, rt, bare()),
        shared(
            OURS_CONC,
            rt,
            ConcurrencyLimitLayer::new(LIMIT).unwrap().layer(bare()),
        ),
        shared(TOWER_CONC, rt, ConcurrencyLimit::new(bare(), LIMIT)),
        shared(
            TOWER_GLOBAL,
            rt,
            GlobalConcurrencyLimitLayer::new(LIMIT).layer(bare()),
        ),
        shared(OURS_ADAPTIVE, rt, ours_adaptive().layer(bare())),
        shared(OURS_KEYED, rt, ours_keyed().layer(bare())),
        shared(OURS_RATE, rt, ours_rate().layer(bare())),
        // Not `Clone`: one limiter per task, so this one is never contended.
        Box::new(Contended {
            name: TOWER_RATE,
            rt,
            make: || RateLimit::new(bare(), tower_rate()),
            samples: Vec::new(),
        }),
        shared(GOVERNOR, rt, governed()),
        shared(GOVERNOR_STD, rt, governed_std_clock()),
        shared(
            OURS_BP,
            rt,
            BackpressureLayer::with_queue(1, QUEUE)
                .unwrap()
                .layer(bare()),
        ),
        shared(
            OURS_BP4,
            rt,
            BackpressureLayer::with_queue(4, QUEUE)
                .unwrap()
                .layer(bare()),
        ),
        shared(TOWER_BUFFER, rt, Buffer::new(bare(), QUEUE)),
    ]
}

const BARE: &str = "bare service_fn";
const OURS_CONC: &str = "ours ConcurrencyLimit";
const TOWER_CONC: &str = "tower ConcurrencyLimit";
const TOWER_GLOBAL: &str = "tower GlobalConcurrencyLimit";
const OURS_ADAPTIVE: &str = "ours AdaptiveLimit (AIMD)";
const OURS_KEYED: &str = "ours KeyedLimit (one key)";
const OURS_RATE: &str = "ours RateLimit";
const TOWER_RATE: &str = "tower RateLimit";
const GOVERNOR: &str = "governor direct check";
const GOVERNOR_STD: &str = "governor direct check (std clock)";
const OURS_BP: &str = "ours Backpressure (1 worker)";
const OURS_BP4: &str = "ours Backpressure (4 workers)";
const TOWER_BUFFER: &str = "tower Buffer";

/// Our layer against each counterpart, by variant name.
const PAIRS: &[(&str, &str)] = &[
    (OURS_CONC, TOWER_CONC),
    (OURS_CONC, TOWER_GLOBAL),
    (OURS_RATE, TOWER_RATE),
    (OURS_RATE, GOVERNOR),
    (OURS_RATE, GOVERNOR_STD),
    (OURS_BP, TOWER_BUFFER),
    (OURS_BP4, TOWER_BUFFER),
];

fn measure(c: &mut Criterion, group: &str, variants: &mut [Box<dyn Variant>]) {
    let mut g = c.benchmark_group(group);
    for variant in variants.iter_mut() {
        g.bench_function(variant.name(), |b| {
            b.iter_custom(|iters| {
                let took = variant.run(iters);
                variant.samples().push((iters, took));
                took
            })
        });
    }
    g.finish();
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn quartiles(xs: &mut [f64]) -> (f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    (xs[n / 4], xs[(3 * n) / 4])
}

/// ns per call over everything criterion timed, its warm-up included
/// (`iter_custom` cannot tell the warm-up's calls from the samples').
fn criterion_ns(variant: &mut Box<dyn Variant>) -> f64 {
    let (iters, nanos) = variant
        .samples()
        .iter()
        .fold((0u64, 0f64), |(i, n), (it, d)| {
            (i + it, n + d.as_nanos() as f64)
        });
    if iters == 0 {
        f64::NAN
    } else {
        nanos / iters as f64
    }
}

/// Round after round, every variant makes a slice of calls; prints the table.
fn interleaved(case: &str, variants: &mut [Box<dyn Variant>]) {
    let min_calls = if case == "contended" {
        TASKS * 16
    } else {
        1_000
    };
    // Size each variant's slice from a first short run (which also warms it).
    let calls: Vec<u64> = variants
        .iter_mut()
        .map(|v| {
            let probe = min_calls * 4;
            let per_call = v.run(probe).as_nanos() as f64 / probe as f64;
            ((SLICE.as_nanos() as f64 / per_call.max(1.0)) as u64).clamp(min_calls, 20_000_000)
        })
        .collect();
    let n = variants.len();
    let mut ns = vec![Vec::with_capacity(ROUNDS); n];
    for round in 0..ROUNDS {
        // Rotate the order so no variant always runs right after another.
        for k in 0..n {
            let i = (k + round) % n;
            let took = variants[i].run(calls[i]);
            ns[i].push(took.as_nanos() as f64 / calls[i] as f64);
        }
    }
    let bare = variants.iter().position(|v| v.name() == BARE).unwrap();
    let added: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..ROUNDS).map(|r| ns[i][r] - ns[bare][r]).collect())
        .collect();
    let crit: Vec<f64> = variants.iter_mut().map(criterion_ns).collect();
    // Another process taking a core only ever adds time, so each variant's
    // low quartile is a second estimate, less exposed to that than pairs.
    let low: Vec<f64> = ns.iter().map(|v| quartiles(&mut v.clone()).0).collect();

    println!(
        "\n### {case}: ns per call (interleaved: median and low quartile of {ROUNDS} rounds; criterion: mean of its samples)\n"
    );
    println!(
        "| variant | ns/call | added ns | added ns p25–p75 | ns/call p25 | added ns (p25s) | criterion ns/call | criterion added ns |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for i in 0..n {
        let (lo, hi) = quartiles(&mut added[i].clone());
        println!(
            "| {} | {:.1} | {:.1} | {:.1}–{:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            variants[i].name(),
            median(&mut ns[i].clone()),
            median(&mut added[i].clone()),
            lo,
            hi,
            low[i],
            low[i] - low[bare],
            crit[i],
            crit[i] - crit[bare],
        );
    }
    println!("\n### {case}: ratio of added ns, ours / counterpart (goal ≤ 1.0)\n");
    println!(
        "| ours | counterpart | ratio (median of rounds) | p25–p75 | ratio of p25s | ratio from criterion's passes (warm-up included) |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let index = |name: &str| variants.iter().position(|v| v.name() == name);
    for (ours, theirs) in PAIRS {
        let (Some(o), Some(t)) = (index(ours), index(theirs)) else {
            continue;
        };
        let mut ratios: Vec<f64> = (0..ROUNDS).map(|r| added[o][r] / added[t][r]).collect();
        let (lo, hi) = quartiles(&mut ratios);
        println!(
            "| {ours} | {theirs} | {:.2} | {:.2}–{:.2} | {:.2} | {:.2} |",
            median(&mut ratios),
            lo,
            hi,
            (low[o] - low[bare]) / (low[t] - low[bare]),
            (crit[o] - crit[bare]) / (crit[t] - crit[bare]),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The interleaved summary runs under `cargo bench` unless `LAYERS_SUMMARY=0`
    // (handy with a filter, when profiling one variant).
    let bench_mode = args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--test" || a == "--list")
        && std::env::var("LAYERS_SUMMARY").map_or(true, |v| v != "0");

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args();

    let single: &'static Runtime = Box::leak(Box::new(
        Builder::new_current_thread().enable_all().build().unwrap(),
    ));
    let multi: &'static Runtime = Box::leak(Box::new(
        Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ));
    let mut uncontended = uncontended_variants(single);
    let mut contended = contended_variants(multi);
    // `LAYERS_VARIANTS=ours RateLimit,tower RateLimit` keeps those (and the
    // bare baseline) only: a quick interleaved A/B while working on one layer.
    if let Ok(keep) = std::env::var("LAYERS_VARIANTS") {
        let keep: Vec<&str> = keep.split(',').map(str::trim).collect();
        let wanted = |v: &dyn Variant| v.name() == BARE || keep.contains(&v.name());
        uncontended.retain(|v| wanted(&**v));
        contended.retain(|v| wanted(&**v));
    }

    // `LAYERS_CASE=contended` (or `uncontended`) runs one case only, in
    // criterion's pass and in the summary's.
    let case = std::env::var("LAYERS_CASE").unwrap_or_default();
    if case != "contended" {
        measure(&mut c, "uncontended", &mut uncontended);
    }
    if case != "uncontended" {
        measure(&mut c, "contended", &mut contended);
    }
    c.final_summary();

    if bench_mode {
        println!("\n## Summary (one run; host has {} CPUs)", num_cpus());
        if case != "contended" {
            interleaved("uncontended", &mut uncontended);
        }
        if case != "uncontended" {
            interleaved("contended", &mut contended);
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
