//! The scenario table and its runner, shared by the scenario suite
//! (`tests/scenarios.rs`) and the bench binary (`benches/scenarios.rs`).
//!
//! Each run gets its own current-thread runtime on a paused clock and a
//! fixed seed, so a run is deterministic and a minute of traffic costs
//! milliseconds of real time.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::{
    AdaptiveLimitLayer, AimdController, GradientController, VegasController, WindowedController,
};
use tower_fanout_core::classify::{Classify, HttpClassify, Outcome};
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_sim::{Body, Jitter, Model, Overflow, Sim};

/// The fixed seed of every run.
pub(crate) const SEED: u64 = 0x000F_A40A;

/// How a scenario loads the downstream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    /// `workers` callers in a closed loop, each retrying after an overload
    /// (after the `Retry-After`, or one unloaded RTT without one).
    Saturating { workers: usize },
    /// Open loop: a new call every 1/`per_second`, no retry.
    Open { per_second: f64 },
}

/// The capacity a limit should find from `from` on: in calls at once and
/// in calls per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch {
    pub from: Duration,
    pub concurrency: f64,
    pub per_second: f64,
}

/// One scenario: a downstream model, a load, and the capacity to find.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub model: Model,
    pub load: Load,
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Option<Duration>,
    pub epochs: Vec<Epoch>,
}

impl Scenario {
    /// The unloaded round trip: the unit of "round trips".
    pub(crate) fn rtt(&self) -> Duration {
        self.model.unloaded_mean()
    }

    fn epoch_at(&self, t: Duration) -> Epoch {
        let mut e = self.epochs[0];
        for x in &self.epochs {
            if x.from <= t {
                e = *x;
            }
        }
        e
    }

    /// Whether the limit should settle at the capacity in calls. Not under
    /// a light load (it should follow the demand, with headroom) nor under a
    /// quota (a budget per window, not a number of calls at once).
    pub(crate) fn settles(&self) -> bool {
        !matches!(self.name, "low-load" | "quota-long-retry-after")
    }

    /// The nominal concurrency capacity at the start (for fixed-limit sweeps).
    pub(crate) fn nominal(&self) -> f64 {
        self.epochs[0].concurrency
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn flat(concurrency: f64, per_second: f64) -> Vec<Epoch> {
    vec![Epoch {
        from: Duration::ZERO,
        concurrency,
        per_second,
    }]
}

/// The table. Capacities are computed from each model: calls at once C and
/// calls per second C / mean latency (or the rate, or the offered load).
pub(crate) fn table() -> Vec<Scenario> {
    let exp = |m| Jitter::Exponential { mean: ms(m) };
    let cap = |c: usize| Model::new().concurrency(c).latency(ms(100), exp(20));
    let m = 0.120;
    let saturating = |c: usize| Load::Saturating {
        workers: (c * 3).max(60),
    };
    let mut t = Vec::new();
    for c in [5usize, 50, 200] {
        t.push(Scenario {
            name: match c {
                5 => "cap-5-429",
                50 => "cap-50-429",
                _ => "cap-200-429",
            },
            what: "concurrency cap answered with 429",
            model: cap(c),
            load: saturating(c),
            clients: 1,
            duration: secs(12),
            warmup: secs(2),
            timeout: None,
            epochs: flat(c as f64, c as f64 / m),
        });
    }
    t.push(Scenario {
        name: "rate-20-retry-after",
        what: "rate cap 20/s (burst 5), 429 with Retry-After, 1.1 s latency",
        model: Model::new().rate(20.0, 5).latency(ms(1000), exp(100)),
        load: Load::Saturating { workers: 100 },
        clients: 1,
        duration: secs(60),
        warmup: secs(10),
        timeout: None,
        epochs: flat(22.0, 20.0),
    });
    let knee = Model::new()
        .concurrency(40)
        .overflow(Overflow::Queue { max: 10_000 })
        .knee(30, 0.5)
        .latency(ms(100), exp(10));
    // At 40 in service: latency ×(1 + 0.5 × 10/30).
    let knee_rps = 40.0 / (0.110 * (1.0 + 0.5 * 10.0 / 30.0));
    t.push(Scenario {
        name: "queue-knee",
        what: "server queues beyond 40, latency knee at 30",
        model: knee,
        load: Load::Saturating { workers: 200 },
        clients: 1,
        duration: secs(12),
        warmup: secs(2),
        timeout: None,
        epochs: flat(40.0, knee_rps),
    });
    t.push(Scenario {
        name: "drops-timeout",
        what: "1 % silent drops, client timeout 500 ms, cap 50",
        model: cap(50).drop_rate(0.01),
        load: saturating(50),
        clients: 1,
        duration: secs(12),
        warmup: secs(2),
        timeout: Some(ms(500)),
        epochs: flat(50.0, 50.0 / m * 0.99),
    });
    let lognormal = Model::new().concurrency(50).latency(
        ms(20),
        Jitter::LogNormal {
            median: ms(200),
            sigma: 1.0,
        },
    );
    let lognormal_mean = lognormal.unloaded_mean().as_secs_f64();
    t.push(Scenario {
        name: "lognormal-tail",
        what: "cap 50, log-normal latency (p99 ≈ 10× median)",
        model: lognormal,
        load: saturating(50),
        clients: 1,
        duration: secs(40),
        warmup: secs(5),
        timeout: None,
        epochs: flat(50.0, 50.0 / lognormal_mean),
    });
    t.push(Scenario {
        name: "halve-then-double",
        what: "cap 100, halved at 10 s, doubled back at 20 s",
        model: cap(100)
            .change_at(secs(10), Some(50), None)
            .change_at(secs(20), Some(100), None),
        load: saturating(100),
        clients: 1,
        duration: secs(30),
        warmup: secs(2),
        timeout: None,
        epochs: vec![
            Epoch {
                from: Duration::ZERO,
                concurrency: 100.0,
                per_second: 100.0 / m,
            },
            Epoch {
                from: secs(10),
                concurrency: 50.0,
                per_second: 50.0 / m,
            },
            Epoch {
                from: secs(20),
                concurrency: 100.0,
                per_second: 100.0 / m,
            },
        ],
    });
    t.push(Scenario {
        name: "low-load",
        what: "cap 200, offered 200/s (needs ~24 at once): the limit must not run away",
        model: cap(200),
        load: Load::Open { per_second: 200.0 },
        clients: 1,
        duration: secs(12),
        warmup: secs(2),
        timeout: None,
        epochs: flat(200.0 * m, 200.0),
    });
    t.push(Scenario {
        name: "two-clients",
        what: "two clients, each its own limit, sharing cap 100",
        model: cap(100),
        load: Load::Saturating { workers: 300 },
        clients: 2,
        duration: secs(12),
        warmup: secs(2),
        timeout: None,
        epochs: flat(100.0, 100.0 / m),
    });
    t.push(Scenario {
        name: "quota-long-retry-after",
        what: "quota 1000 per 10 s window (100/s), past it 429 + Retry-After up to 10 s",
        model: Model::new().quota(1000, secs(10)).latency(ms(100), exp(20)),
        load: Load::Saturating { workers: 200 },
        clients: 1,
        duration: secs(60),
        warmup: secs(10),
        timeout: None,
        epochs: flat(100.0 * m, 100.0),
    });
    t
}

/// Which limit a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctl {
    Gradient,
    Aimd,
    Vegas,
    Windowed,
    Fixed(usize),
}

impl Ctl {
    pub(crate) const ADAPTIVE: [Ctl; 4] = [Ctl::Windowed, Ctl::Gradient, Ctl::Aimd, Ctl::Vegas];

    pub(crate) fn name(&self) -> String {
        match self {
            Ctl::Gradient => "gradient".into(),
            Ctl::Aimd => "aimd".into(),
            Ctl::Vegas => "vegas".into(),
            Ctl::Windowed => "windowed".into(),
            Ctl::Fixed(n) => format!("fixed {n}"),
        }
    }
}

type Svc = BoxCloneService<Request<()>, Response<Body>, BoxError>;
type LimitReader = Arc<dyn Fn() -> usize + Send + Sync>;

fn client(ctl: Ctl, sim: &Sim, timeout: Option<Duration>) -> (Svc, LimitReader) {
    let sim = sim.clone();
    let downstream = service_fn(move |req: Request<()>| {
        let sim = sim.clone();
        async move {
            let call = sim.oneshot(req);
            match timeout {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .map_err(BoxError::from)?
                    .map_err(|e: Infallible| BoxError::from(e.to_string())),
                None => Ok(call.await.unwrap_or_else(|e: Infallible| match e {})),
            }
        }
    });
    let adaptive = |layer: AdaptiveLimitLayer| {
        let handle = layer.handle();
        let svc = BoxCloneService::new(layer.layer(downstream.clone()));
        let reader: LimitReader = Arc::new(move || handle.limit());
        (svc, reader)
    };
    match ctl {
        Ctl::Gradient => adaptive(AdaptiveLimitLayer::new(GradientController::default())),
        Ctl::Aimd => adaptive(AdaptiveLimitLayer::new(
            AimdController::builder().build().unwrap(),
        )),
        Ctl::Vegas => adaptive(AdaptiveLimitLayer::new(
            VegasController::builder().build().unwrap(),
        )),
        // The preset's rules with the others' ceiling (1000, not the
        // preset's 50): the baseline compares how limits move, not where a
        // setting stops one.
        Ctl::Windowed => adaptive(AdaptiveLimitLayer::new(
            WindowedController::builder().max(1000).build().unwrap(),
        )),
        Ctl::Fixed(n) => {
            let layer = ConcurrencyLimitLayer::new(n).unwrap();
            let svc = BoxCloneService::new(layer.layer(downstream));
            (svc, Arc::new(move || n))
        }
    }
}

/// Counters one client keeps.
#[derive(Debug, Default)]
struct Counters {
    attempts: AtomicU64,
    overloads: AtomicU64,
    successes_after_warmup: AtomicU64,
}

/// What happened to one call, and how long to wait before retrying it.
fn outcome(result: &Result<Response<Body>, BoxError>, rtt: Duration) -> (Outcome, Duration) {
    let outcome = HttpClassify.classify(result.as_ref().map_err(|e| &**e as _));
    let wait = result
        .as_ref()
        .ok()
        .and_then(|r| HttpClassify.retry_after(r))
        .unwrap_or(rtt);
    (outcome, wait)
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Figures {
    /// Goodput after the warm-up over the capacity (or the offered load).
    pub goodput: f64,
    /// Overload answers over attempts.
    pub overload_rate: f64,
    /// Round trips until the limit is within ±20 % of the capacity, worst
    /// over the capacity's epochs; `None`: never.
    pub rtts_to_capacity: Option<f64>,
    /// Highest limit after reaching the capacity, over the capacity, minus 1.
    pub overshoot: f64,
    /// p99 latency at the downstream over its unloaded p99.
    pub p99_ratio: f64,
    /// Lowest and highest limit after the warm-up.
    pub min_limit: usize,
    pub max_limit: usize,
    /// Two clients: the smaller goodput over the larger.
    pub fairness: Option<f64>,
}

/// Runs one scenario with one kind of limit, on its own paused runtime.
pub(crate) fn run(s: &Scenario, ctl: Ctl) -> Figures {
    run_seeded(s, ctl, SEED)
}

/// [`run`] with another seed for the downstream's randomness (latencies,
/// drops): to check that a result is not one seed's luck.
pub(crate) fn run_seeded(s: &Scenario, ctl: Ctl, seed: u64) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(run_async(s, ctl, seed))
}

async fn run_async(s: &Scenario, ctl: Ctl, seed: u64) -> Figures {
    let sim = Sim::new(s.model.clone(), seed);
    let rtt = s.rtt();
    let start = Instant::now();
    let end = start + s.duration;
    let warm = start + s.warmup;
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..s.clients {
        let (svc, limit) = client(ctl, &sim, s.timeout);
        let counters = Arc::new(Counters::default());
        match s.load {
            Load::Saturating { workers } => {
                for _ in 0..workers / s.clients {
                    let (svc, c) = (svc.clone(), counters.clone());
                    tasks.push(tokio::spawn(async move {
                        // Calls answered in no time would spin this loop
                        // forever: the paused clock only moves when every
                        // task waits. Every call here takes time (latency,
                        // a refusal's, or the sleep after it), so a long run
                        // of them that do not is a broken downstream.
                        let mut timeless = 0u32;
                        while Instant::now() < end {
                            let before = Instant::now();
                            let result = svc.clone().oneshot(Request::new(())).await;
                            let (o, wait) = outcome(&result, rtt);
                            c.attempts.fetch_add(1, Ordering::Relaxed);
                            match o {
                                Outcome::Success => {
                                    if Instant::now() >= warm {
                                        c.successes_after_warmup.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Outcome::Overload => {
                                    c.overloads.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(wait).await;
                                }
                                _ => tokio::time::sleep(rtt).await,
                            }
                            timeless = if Instant::now() == before {
                                timeless + 1
                            } else {
                                0
                            };
                            assert!(
                                timeless < 10_000,
                                "{timeless} calls in a row took no time: the downstream answers \
                                 without latency, and the paused clock can never reach the end"
                            );
                        }
                    }));
                }
            }
            Load::Open { per_second } => {
                let (svc, c) = (svc.clone(), counters.clone());
                tasks.push(tokio::spawn(async move {
                    let every = Duration::from_secs_f64(1.0 / per_second);
                    let mut next = Instant::now();
                    let mut calls = Vec::new();
                    while next < end {
                        tokio::time::sleep_until(next).await;
                        next += every;
                        let (svc, c) = (svc.clone(), c.clone());
                        calls.push(tokio::spawn(async move {
                            // Counted by when it was offered: a backlog
                            // from the warm-up drained after it is not
                            // goodput of the window (it read above 1).
                            let offered = Instant::now();
                            let result = svc.oneshot(Request::new(())).await;
                            let (o, _) = outcome(&result, rtt);
                            c.attempts.fetch_add(1, Ordering::Relaxed);
                            match o {
                                Outcome::Success if offered >= warm => {
                                    c.successes_after_warmup.fetch_add(1, Ordering::Relaxed);
                                }
                                Outcome::Overload => {
                                    c.overloads.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {}
                            }
                        }));
                    }
                    for call in calls {
                        let _ = call.await;
                    }
                }));
            }
        }
        clients.push((limit, counters));
    }
    // Watch the limits four times per round trip.
    let readers: Vec<LimitReader> = clients.iter().map(|c| c.0.clone()).collect();
    let monitor = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(rtt / 4);
        while Instant::now() < end {
            tick.tick().await;
            let total: usize = readers.iter().map(|r| r()).sum();
            samples.push((Instant::now() - start, total));
        }
        samples
    });
    tokio::time::sleep_until(warm).await;
    sim.reset_stats();
    // The window ends at `end` sharp: callers still queued then are cut
    // off (their futures dropped), not let through to pad the figures.
    tokio::time::sleep_until(end).await;
    let stats = sim.stats();
    let counted: Vec<(u64, u64, u64)> = clients
        .iter()
        .map(|c| {
            (
                c.1.successes_after_warmup.load(Ordering::Relaxed),
                c.1.attempts.load(Ordering::Relaxed),
                c.1.overloads.load(Ordering::Relaxed),
            )
        })
        .collect();
    for t in &tasks {
        t.abort();
    }
    // A worker that panicked fails the scenario (its figures are missing).
    for t in tasks {
        if let Err(e) = t.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let samples = monitor.await.unwrap();
    if std::env::var_os("SIM_TRACE").is_some() {
        let trace: Vec<usize> = samples.iter().step_by(4).map(|x| x.1).collect();
        eprintln!("{} {}: {trace:?}", s.name, ctl.name());
    }
    if std::env::var_os("SIM_DEBUG").is_some() {
        eprintln!("{stats:?}");
    }

    let window = s.duration - s.warmup;
    let mean_rps = mean_capacity(s, s.warmup, s.duration);
    let goods: Vec<f64> = counted.iter().map(|c| c.0 as f64).collect();
    let goodput = goods.iter().sum::<f64>() / window.as_secs_f64() / mean_rps;
    let attempts: u64 = counted.iter().map(|c| c.1).sum();
    let overloads: u64 = counted.iter().map(|c| c.2).sum();
    let (rtts_to_capacity, overshoot) = convergence(s, &samples);
    let after: Vec<usize> = samples
        .iter()
        .filter(|(t, _)| *t >= s.warmup)
        .map(|x| x.1)
        .collect();
    Figures {
        goodput,
        overload_rate: overloads as f64 / attempts.max(1) as f64,
        rtts_to_capacity,
        overshoot,
        p99_ratio: stats.p99.as_secs_f64() / s.model.unloaded_quantile(0.99).as_secs_f64(),
        min_limit: after.iter().copied().min().unwrap_or(0),
        max_limit: after.iter().copied().max().unwrap_or(0),
        fairness: (goods.len() == 2)
            .then(|| goods[0].min(goods[1]) / goods[0].max(goods[1]).max(1.0)),
    }
}

/// The time-weighted capacity (calls per second) over [from, to).
fn mean_capacity(s: &Scenario, from: Duration, to: Duration) -> f64 {
    let step = ms(10);
    let mut t = from;
    let (mut sum, mut n) = (0.0, 0.0);
    while t < to {
        sum += s.epoch_at(t).per_second;
        n += 1.0;
        t += step;
    }
    sum / n
}

/// Round trips until the limit settles within ±20 % of each epoch's
/// capacity (enters the band and stays in it for ten round trips, or to the
/// epoch's end), the worst epoch; and the overshoot after settling.
fn convergence(s: &Scenario, samples: &[(Duration, usize)]) -> (Option<f64>, f64) {
    if !s.settles() {
        return (None, 0.0);
    }
    let rtt = s.rtt();
    let mut worst: Option<f64> = Some(0.0);
    let mut overshoot: f64 = 0.0;
    for (i, e) in s.epochs.iter().enumerate() {
        let until = s.epochs.get(i + 1).map_or(s.duration, |n| n.from);
        let in_epoch: Vec<_> = samples
            .iter()
            .filter(|(t, _)| *t >= e.from && *t < until)
            .collect();
        let near = |l: usize| (l as f64 - e.concurrency).abs() <= 0.2 * e.concurrency;
        let settled = (0..in_epoch.len()).find(|&p| {
            let t0 = in_epoch[p].0;
            in_epoch[p..]
                .iter()
                .take_while(|(t, _)| *t < t0 + rtt * 10)
                .all(|(_, l)| near(*l))
        });
        match settled {
            Some(p) => {
                let rtts = (in_epoch[p].0 - e.from).as_secs_f64() / rtt.as_secs_f64();
                worst = worst.map(|w| w.max(rtts));
                for (_, l) in &in_epoch[p..] {
                    overshoot = overshoot.max(*l as f64 / e.concurrency - 1.0);
                }
            }
            None => worst = None,
        }
    }
    (worst, overshoot)
}

/// Makespan of a batch of `items` calls, all wanting to start at once, each
/// retried until it succeeds (after its `Retry-After`, or one round trip);
/// a call still failing after ten minutes of simulated time gives up, and
/// the makespan is then `None`.
pub(crate) fn makespan(s: &Scenario, ctl: Ctl, items: usize) -> Option<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = Sim::new(s.model.clone(), SEED);
        let rtt = s.rtt();
        let (svc, _) = client(ctl, &sim, s.timeout);
        let start = Instant::now();
        let give_up = start + Duration::from_secs(600);
        let tasks: Vec<_> = (0..items)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    while Instant::now() < give_up {
                        // Bounded too: a call the downstream never answers
                        // (and no client timeout ends) gives up with the rest.
                        let call = svc.clone().oneshot(Request::new(()));
                        let Ok(result) = tokio::time::timeout_at(give_up, call).await else {
                            return false;
                        };
                        match outcome(&result, rtt) {
                            (Outcome::Success, _) => return true,
                            (_, wait) => tokio::time::sleep(wait).await,
                        }
                    }
                    false
                })
            })
            .collect();
        let mut all = true;
        for t in tasks {
            all &= t.await.unwrap();
        }
        all.then(|| start.elapsed())
    })
}

/// The best makespan of a fixed limit, swept from half to eight times the
/// nominal capacity.
pub(crate) fn best_fixed_makespan(s: &Scenario, items: usize) -> (usize, Duration) {
    [0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0]
        .iter()
        .map(|f| (s.nominal() * f).round().max(1.0) as usize)
        .filter_map(|n| makespan(s, Ctl::Fixed(n), items).map(|m| (n, m)))
        .min_by_key(|x| x.1)
        .unwrap()
}

/// Whether this status is an overload (for the assertions' messages).
pub(crate) fn is_overload(status: StatusCode) -> bool {
    HttpClassify::status(status) == Outcome::Overload
}
