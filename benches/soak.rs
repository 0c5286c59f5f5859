//! A bounded soak (issue 8): the full stack (backpressure → rate → adaptive →
//! concurrency) over the simulated downstream for 100 000 requests, and the
//! same 100 000 through the bare downstream with no limits.
//!
//! The downstream is `tower_fanout::sim::Sim` used as a tower `Service`
//! directly (no sockets), on a real-time 2-worker runtime: it serves 256
//! requests at once (beyond that, 429 after 1 ms), each in 2 ms plus an
//! exponential 3 ms. A fixed crowd of callers (5 000 tasks) loops until all
//! requests are sent, so both runs see the same offered load.
//!
//! Each run is its own child process (the binary re-runs itself with
//! `SOAK_PHASE` set), so each has its own peak RSS: memory the allocator
//! kept from one run cannot hide in the other. Every 10 000 answers a row is
//! printed: RSS, calls outstanding at the callers, in flight at the
//! downstream, the queue and the limits. A sampler thread reads VmRSS every
//! 5 ms; the last quarter's highest RSS is compared with the second
//! quarter's to say whether RSS levelled off.
//!
//! The downstream's own latency log is read and reset every 1 000 answers,
//! so its growth (16 bytes per answer) does not count as the stack's.
//!
//! Run: `cargo bench --bench soak --features full` (`SOAK_REQUESTS=400000`
//! for a longer soak). Under `cargo test
//! --all-targets` (no `--bench` argument) it does a run of 2 000 requests.
//! Nothing is asserted on time or memory; a phase fails (and with it the
//! bench, exit 1) when an answer is missing, the full stack answers with a
//! refusal or an error of its own, its handles do not all read 0 after the
//! run, or the run outlasts its deadline.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout::BoxError;
use tower_fanout::adaptive::{AdaptiveLimitHandle, AdaptiveLimitLayer, GradientController};
use tower_fanout::backpressure::{BackpressureHandle, BackpressureLayer};
use tower_fanout::concurrency::{ConcurrencyLimitHandle, ConcurrencyLimitLayer};
use tower_fanout::error::{Closed, Overloaded, QueueFull, RateLimited};
use tower_fanout::rate::{RateLimitHandle, RateLimitLayer};
use tower_fanout::sim::{Body, Jitter, Model, Sim};

type Req = http::Request<()>;
type Resp = http::Response<Body>;
type Svc = BoxCloneService<Req, Resp, BoxError>;

/// The stack's settings.
const WORKERS: usize = 64;
const RATE_PER_SEC: u32 = 10_000;
const BURST: u32 = 200;
const CONCURRENCY: usize = 48;

struct Size {
    requests: usize,
    callers: usize,
    step: usize,
}

fn size() -> Size {
    if std::env::args().any(|a| a == "--bench") {
        // `SOAK_REQUESTS` makes a longer (or shorter) soak.
        let requests = std::env::var("SOAK_REQUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        Size {
            requests,
            callers: 5_000,
            step: (requests / 10).max(1),
        }
    } else {
        Size {
            requests: 2_000,
            callers: 200,
            step: 500,
        }
    }
}

fn model() -> Model {
    Model::new()
        .concurrency(256)
        .latency(
            Duration::from_millis(2),
            Jitter::Exponential {
                mean: Duration::from_millis(3),
            },
        )
        .refusal_latency(Duration::from_millis(1))
}

fn main() {
    match std::env::var("SOAK_PHASE").as_deref() {
        Ok("limited") => phase(true),
        Ok("unlimited") => phase(false),
        _ => parent(),
    }
}

/// Runs both phases as child processes and compares them.
fn parent() {
    let size = size();
    println!(
        "soak: {} requests, {} callers, stack = backpressure({WORKERS} workers, queue {}) -> rate({RATE_PER_SEC}/s, burst {BURST}) -> adaptive(gradient 4..128) -> concurrency({CONCURRENCY}) -> Sim",
        size.requests,
        size.callers,
        WORKERS * 3
    );
    println!(
        "downstream: Sim, 256 in service (429 beyond, after 1 ms), latency 2 ms + exp(3 ms); real time, 2 worker threads\n"
    );
    let exe = std::env::current_exe().unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut peaks = Vec::new();
    for phase in ["limited", "unlimited"] {
        let out = Command::new(&exe)
            .args(&args)
            .env("SOAK_PHASE", phase)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            // A failed phase fails the bench (and `cargo test --all-targets`).
            eprintln!("phase {phase} failed: {}", out.status);
            std::process::exit(1);
        }
        let peak = stdout
            .lines()
            .find_map(|l| l.strip_prefix("PEAK_RSS_KB "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        peaks.push((phase, peak));
    }
    println!("\n== peak RSS, same requests and callers ==");
    for (phase, peak) in &peaks {
        let name = if *phase == "limited" {
            "full stack"
        } else {
            "no limits"
        };
        println!("{name:<12} {:>8.1} MiB", *peak as f64 / 1024.0);
    }
}

/// RSS now and its high-water mark, in kB, from /proc/self/status.
fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The stack's live state, for the rows.
struct Handles {
    backpressure: BackpressureHandle,
    rate: RateLimitHandle,
    adaptive: AdaptiveLimitHandle,
    concurrency: ConcurrencyLimitHandle,
}

/// What one row shows.
struct Row {
    done: usize,
    elapsed: Duration,
    rss_kb: u64,
    outstanding: usize,
    downstream: usize,
    state: Option<(usize, usize, u32, usize, usize)>,
}

#[derive(Default)]
struct Counts {
    kinds: Mutex<BTreeMap<&'static str, u64>>,
    sim_arrivals: AtomicU64,
    sim_successes: AtomicU64,
    sim_429: AtomicU64,
    sim_other: AtomicU64,
    sim_peak: AtomicUsize,
}

/// Answers between two reads of the downstream's counters.
const HARVEST: usize = 1_000;

/// Adds the downstream's counters to `counts` and starts it a new window, so
/// its latency log (16 bytes per answer) stays small and does not count as
/// the stack's memory. One take under the downstream's lock: no request is
/// lost between a read and a reset, none counted by two harvests.
fn harvest(sim: &Sim, counts: &Counts) {
    let stats = sim.take_stats();
    counts
        .sim_arrivals
        .fetch_add(stats.arrivals, Ordering::Relaxed);
    counts
        .sim_successes
        .fetch_add(stats.successes, Ordering::Relaxed);
    counts
        .sim_429
        .fetch_add(stats.refused_429, Ordering::Relaxed);
    counts
        .sim_other
        .fetch_add(stats.refused_other, Ordering::Relaxed);
    counts
        .sim_peak
        .fetch_max(stats.peak_in_service, Ordering::Relaxed);
}

fn kind(result: &Result<Resp, BoxError>) -> &'static str {
    match result {
        Ok(r) if r.status().is_success() => "ok (200)",
        Ok(r) if r.status() == http::StatusCode::TOO_MANY_REQUESTS => "429 from downstream",
        Ok(_) => "other status from downstream",
        Err(e) if e.is::<Overloaded>() => "Overloaded",
        Err(e) if e.is::<RateLimited>() => "RateLimited",
        Err(e) if e.is::<QueueFull>() => "QueueFull",
        Err(e) if e.is::<Closed>() => "Closed",
        Err(_) => "other error",
    }
}

fn phase(limited: bool) {
    let size = size();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Peak RSS of this process only; clear_refs "5" resets VmHWM (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss_start, _) = rss_kb();

    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let sampler = {
        let (done, stop, samples) = (done.clone(), stop.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (rss, _) = rss_kb();
                samples
                    .lock()
                    .unwrap()
                    .push((done.load(Ordering::Relaxed), rss));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let rows: Arc<Mutex<Vec<Row>>> = Arc::default();
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    // Bounded in time: a hang (a lost wakeup, a leaked permit the callers
    // wait for) fails the phase instead of stalling it. 100 000 requests take
    // about 13 s; this allows over ten times that.
    let deadline = Duration::from_secs(60 + (size.requests / 1_000) as u64);
    rt.block_on(async {
      tokio::time::timeout(deadline, async {
        let sim = Sim::new(model(), 8);
        let downstream_now = Arc::new(AtomicUsize::new(0));
        // The Sim, counting what it has in hand (in service or refusing).
        let down = {
            let (sim, now) = (sim.clone(), downstream_now.clone());
            service_fn(move |req: Req| {
                let mut sim = sim.clone();
                let now = now.clone();
                now.fetch_add(1, Ordering::Relaxed);
                async move {
                    let r = tower::Service::call(&mut sim, req).await;
                    now.fetch_sub(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(r.unwrap())
                }
            })
        };
        let (svc, handles): (Svc, Option<Handles>) = if limited {
            let rate = RateLimitLayer::builder(RATE_PER_SEC, Duration::from_secs(1))
                .burst(BURST)
                .build()
                .unwrap();
            let controller = GradientController::builder()
                .min(4)
                .max(128)
                .initial(16)
                .build()
                .unwrap();
            let adaptive = AdaptiveLimitLayer::new(controller);
            let concurrency = ConcurrencyLimitLayer::new(CONCURRENCY).unwrap();
            let (rate_h, adaptive_h, concurrency_h) =
                (rate.handle(), adaptive.handle(), concurrency.handle());
            let svc = ServiceBuilder::new()
                .layer(BackpressureLayer::new(WORKERS).unwrap())
                .layer(rate)
                .layer(adaptive)
                .layer(concurrency)
                .service(down);
            let handles = Handles {
                backpressure: svc.handle(),
                rate: rate_h,
                adaptive: adaptive_h,
                concurrency: concurrency_h,
            };
            (BoxCloneService::new(svc), Some(handles))
        } else {
            (
                BoxCloneService::new(down.map_err(|e: Infallible| -> BoxError { match e {} })),
                None,
            )
        };
        let handles = Arc::new(handles);

        let next = Arc::new(AtomicUsize::new(0));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(size.callers);
        for _ in 0..size.callers {
            let (svc, next, done, outstanding) =
                (svc.clone(), next.clone(), done.clone(), outstanding.clone());
            let (rows, counts, handles, sim, downstream_now) = (
                rows.clone(),
                counts.clone(),
                handles.clone(),
                sim.clone(),
                downstream_now.clone(),
            );
            let step = size.step;
            let total = size.requests;
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    outstanding.fetch_add(1, Ordering::Relaxed);
                    let result = svc.clone().oneshot(http::Request::new(())).await;
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    *counts
                        .kinds
                        .lock()
                        .unwrap()
                        .entry(kind(&result))
                        .or_default() += 1;
                    drop(result);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % HARVEST == 0 {
                        harvest(&sim, &counts);
                    }
                    if n % step == 0 {
                        let state = handles.as_ref().as_ref().map(|h| {
                            (
                                h.backpressure.queue_depth(),
                                h.backpressure.in_flight(),
                                h.rate.tokens(),
                                h.adaptive.limit(),
                                h.concurrency.in_flight(),
                            )
                        });
                        rows.lock().unwrap().push(Row {
                            done: n,
                            elapsed: started.elapsed(),
                            rss_kb: rss_kb().0,
                            outstanding: outstanding.load(Ordering::Relaxed),
                            downstream: downstream_now.load(Ordering::Relaxed),
                            state,
                        });
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // What is left after the last harvest.
        harvest(&sim, &counts);
        if let Some(h) = handles.as_ref() {
            let left = || {
                [
                    h.backpressure.queue_depth(),
                    h.backpressure.slots_in_use(),
                    h.backpressure.in_flight(),
                    h.adaptive.in_flight(),
                    h.concurrency.in_flight(),
                ]
            };
            // A worker gives its slot back just after its caller has the
            // answer: wait for the last ones (within the phase's deadline).
            while left() != [0; 5] {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let [queue, slots, busy, adaptive, concurrency] = left();
            println!(
                "after the run: backpressure queue {queue} / slots {slots} / workers busy {busy}, adaptive in flight {adaptive}, concurrency in flight {concurrency}",
            );
        }
      })
      .await
      .unwrap_or_else(|_| {
          panic!(
              "the run did not finish within {deadline:?} (a hang, or permits, slots or \
               queue places never given back: the handles never read 0)"
          )
      });
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (_, hwm) = rss_kb();
    drop(rt);

    let title = if limited {
        "full stack (backpressure -> rate -> adaptive -> concurrency -> Sim)"
    } else {
        "no limits (bare Sim)"
    };
    println!("== {title} ==");
    println!(
        "{:>8} {:>8} {:>9} {:>12} {:>11} {:>6} {:>7} {:>7} {:>9} {:>9}",
        "answers",
        "time s",
        "RSS MiB",
        "outstanding",
        "downstream",
        "queue",
        "busy",
        "tokens",
        "adaptive",
        "conc.in"
    );
    let mut rows = std::mem::take(&mut *rows.lock().unwrap());
    rows.sort_by_key(|r| r.done);
    for r in &rows {
        let (q, busy, tokens, limit, conc) = match r.state {
            Some((q, b, t, l, c)) => (
                q.to_string(),
                b.to_string(),
                t.to_string(),
                l.to_string(),
                c.to_string(),
            ),
            None => Default::default(),
        };
        println!(
            "{:>8} {:>8.2} {:>9.1} {:>12} {:>11} {:>6} {:>7} {:>7} {:>9} {:>9}",
            r.done,
            r.elapsed.as_secs_f64(),
            r.rss_kb as f64 / 1024.0,
            r.outstanding,
            r.downstream,
            q,
            busy,
            tokens,
            limit,
            conc
        );
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let n = size.requests;
    let quarter_max = |from: usize, to: usize| {
        samples
            .iter()
            .filter(|(d, _)| *d >= from && *d < to)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    };
    let q2 = quarter_max(n / 4, n / 2);
    let q4 = quarter_max(3 * n / 4, n + 1);
    let peak = samples.iter().map(|(_, r)| *r).max().unwrap_or(0).max(hwm);
    let levelled = q4 <= q2 + (q2 / 20).max(1024);
    println!(
        "requests {n}, {:.2} s ({:.0} answers/s); RSS at start {:.1} MiB, peak {:.1} MiB (VmHWM {:.1} MiB)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        rss_start as f64 / 1024.0,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "RSS max, 2nd quarter {:.1} MiB, last quarter {:.1} MiB: {}",
        q2 as f64 / 1024.0,
        q4 as f64 / 1024.0,
        if levelled {
            "levelled off (last <= 2nd + max(5 %, 1 MiB))"
        } else {
            "STILL GROWING (last > 2nd + max(5 %, 1 MiB))"
        }
    );
    println!("answers by kind:");
    let kinds = counts.kinds.lock().unwrap().clone();
    for (kind, count) in &kinds {
        println!("  {kind:<30} {count:>8}");
    }
    // Every request got an answer, once.
    let answered: u64 = kinds.values().sum();
    assert_eq!(
        answered, n as u64,
        "answers by kind do not add up to the requests"
    );
    if limited {
        // Every layer of the stack waits (none fails fast), and nothing in it
        // closes: a refusal or an error of its own is a fault.
        for kind in [
            "Overloaded",
            "RateLimited",
            "QueueFull",
            "Closed",
            "other error",
        ] {
            assert!(
                !kinds.contains_key(kind),
                "the stack answered {kind}: {kinds:?}"
            );
        }
    }
    println!(
        "downstream saw: {} arrivals, {} served, {} refused 429, {} refused other, peak {} in service",
        counts.sim_arrivals.load(Ordering::Relaxed),
        counts.sim_successes.load(Ordering::Relaxed),
        counts.sim_429.load(Ordering::Relaxed),
        counts.sim_other.load(Ordering::Relaxed),
        counts.sim_peak.load(Ordering::Relaxed),
    );
    println!("PEAK_RSS_KB {peak}\n");
}
