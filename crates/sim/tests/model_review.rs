//! A review of the capacity model against what it states: rates counted
//! over ten simulated seconds, `Retry-After` against the real wait, the
//! concurrency cap, the latency distributions, silent drops, the counters
//! under threads, and the HTTP server's heads. On the paused clock, but for
//! the multi-thread and HTTP tests. The first three tests failed before the
//! rate capacity was re-kept (see the changelog).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{self, Instant};
use tower::ServiceExt;
use tower_fanout_sim::{Jitter, Model, Overflow, Sim};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A downstream with only a rate capacity, answering at once.
fn rated(per_second: f64, burst: u32) -> Model {
    Model::new()
        .rate(per_second, burst)
        .latency(Duration::ZERO, Jitter::None)
        .refusal_latency(Duration::ZERO)
}

/// One arrival every millisecond from now to `span` later, both ends
/// included; how many of them were admitted.
async fn admitted_over(sim: &Sim, span: Duration) -> u64 {
    let before = sim.stats().admitted;
    let end = Instant::now() + span;
    loop {
        drop(sim.respond());
        if Instant::now() >= end {
            break;
        }
        time::advance(ms(1)).await;
    }
    sim.stats().admitted - before
}

/// The `Retry-After` of a refusal now, in seconds.
async fn retry_after(sim: &Sim) -> u64 {
    let refused = sim.respond().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// N per second with a burst of B admits B + 10 N over ten seconds of
/// arrivals every millisecond (both ends counted: the last token is due at
/// exactly 10 s). The interval was rounded to a whole nanosecond and summed,
/// so at 7/s (142 857 142.86 ns, rounded up) the 70th token came 10 ns after
/// 10 s and the count read 73 instead of 74; 13/s likewise.
#[tokio::test(start_paused = true)]
async fn stated_rates_hold_exactly_over_ten_seconds() {
    for (per_second, burst) in [
        (5.0, 3),
        (7.0, 4),
        (13.0, 2),
        (3.0, 2),
        (100.0, 20),
        (0.5, 5),
        (10.0, 1),
    ] {
        let sim = Sim::new(rated(per_second, burst), 1);
        let admitted = admitted_over(&sim, secs(10)).await;
        assert_eq!(
            admitted as f64,
            f64::from(burst) + 10.0 * per_second,
            "{per_second}/s, burst {burst}"
        );
    }
}

/// A capacity change is in force from its very instant, not just after it:
/// a queued call sleeps until that instant to be started, and a change not
/// yet applied then would wake it again and again without the clock moving.
#[tokio::test(start_paused = true)]
async fn a_change_is_in_force_from_its_instant() {
    let sim = Sim::new(
        Model::new()
            .concurrency(1)
            .change_at(secs(1), Some(5), None),
        1,
    );
    time::advance(ms(999)).await;
    assert_eq!(sim.concurrency_now(), Some(1));
    time::advance(ms(1)).await;
    assert_eq!(sim.concurrency_now(), Some(5));
}

/// A rate that rises takes effect at its time. The bucket's debt was kept
/// in intervals of the old rate, so after a burst of 10 at 1/s, a rise to
/// 100/s at 1 s admitted nothing for another 8.9 s (`Retry-After: 9`)
/// instead of 100 a second at once.
#[tokio::test(start_paused = true)]
async fn a_rate_rise_takes_effect_at_its_time() {
    let sim = Sim::new(rated(1.0, 10).change_at(secs(1), None, Some(100.0)), 1);
    assert_eq!(admitted_over(&sim, ms(999)).await, 10, "the burst");
    time::advance(ms(1)).await;
    // At 1 s: one token refilled at 1/s, and 100/s from now on.
    assert_eq!(admitted_over(&sim, ms(999)).await, 100);
    assert_eq!(retry_after(&sim).await, 1);
}

/// A rate that falls brings no fresh burst. Saturated at 100/s with a burst
/// of 10, the bucket is empty at the fall to 1/s; the debt was read in
/// intervals of the new rate, so 10 were admitted at once after the change
/// instead of the one token due then.
#[tokio::test(start_paused = true)]
async fn a_rate_fall_brings_no_fresh_burst() {
    let sim = Sim::new(rated(100.0, 10).change_at(secs(1), None, Some(1.0)), 1);
    assert_eq!(admitted_over(&sim, ms(999)).await, 10 + 99);
    time::advance(ms(1)).await;
    assert_eq!(admitted_over(&sim, ms(999)).await, 1);
    assert_eq!(admitted_over(&sim, ms(1)).await, 1, "the next token at 2 s");
}

/// `Retry-After` is the real wait until a token rounded up to whole seconds
/// (never less, so a client that honours it is admitted; never a second
/// more), and at least 1; the wait is found by stepping the clock 1 ms at a
/// time (refusals take no token) and every case's wait is a whole number of
/// milliseconds.
#[tokio::test(start_paused = true)]
async fn retry_after_is_the_wait_until_a_token_rounded_up() {
    for (per_second, burst) in [(0.5, 1), (0.25, 3), (0.1, 2), (2.0, 1)] {
        for offset in [0, 1, 500, 999, 1000, 1001, 2000, 2999, 3000, 7000] {
            let sim = Sim::new(rated(per_second, burst), 1);
            for _ in 0..burst {
                assert_eq!(sim.respond().await.status(), StatusCode::OK);
            }
            time::advance(ms(offset)).await;
            if sim.respond().await.status() == StatusCode::OK {
                continue;
            }
            let said = retry_after(&sim).await;
            let refused_at = Instant::now();
            for _ in 0..20_000 {
                time::advance(ms(1)).await;
                if sim.respond().await.status() == StatusCode::OK {
                    break;
                }
            }
            let wait = refused_at.elapsed();
            let case = format!("{per_second}/s burst {burst}, {offset} ms after the burst");
            assert!(wait < secs(20), "{case}: never admitted");
            assert_eq!(
                said,
                wait.as_millis().div_ceil(1000) as u64,
                "{case}: {wait:?}"
            );
        }
    }
}

/// With arrivals every 30 ms and 100 ms of service, a call is refused with
/// 429 exactly when the capacity is in service at its arrival, and the
/// counters agree call for call.
#[tokio::test(start_paused = true)]
async fn a_429_comes_exactly_when_the_capacity_is_in_service() {
    let cap = 3;
    let sim = Sim::new(
        Model::new()
            .concurrency(cap)
            .latency(ms(100), Jitter::None)
            .refusal_latency(Duration::ZERO),
        1,
    );
    let start = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..200 {
        let at = start.elapsed();
        calls.push((at, tokio::spawn(sim.respond())));
        // Slept, not advanced: the clock stops at each call's end on the
        // way, so the call ends (and frees its slot) before the next arrives.
        time::sleep(ms(30)).await;
    }
    let mut ends: Vec<Duration> = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for (at, call) in calls {
        let status = call.await.unwrap().status();
        let in_service = ends.iter().filter(|end| **end > at).count();
        if in_service == cap {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "at {at:?}");
            refused += 1;
        } else {
            assert_eq!(status, StatusCode::OK, "at {at:?}, {in_service} in service");
            ends.push(at + ms(100));
            ok += 1;
        }
    }
    assert!(refused > 0 && ok > 0);
    let s = sim.stats();
    assert_eq!(
        (s.arrivals, s.admitted, s.successes, s.refused_429),
        (200, ok, ok, refused)
    );
    assert_eq!(s.peak_in_service, cap);
}

/// Sixteen tasks on four threads, 300 calls each against a capacity of 7:
/// the peak never passes the capacity, and the counters are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_exact_and_the_cap_holds_under_threads() {
    let sim = Sim::new(
        Model::new()
            .concurrency(7)
            .latency(ms(2), Jitter::Exponential { mean: ms(3) })
            .refusal_latency(Duration::ZERO),
        3,
    );
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let sim = sim.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0u64, 0u64);
                for _ in 0..300 {
                    let answer = sim.clone().oneshot(Request::new(())).await.unwrap();
                    match answer.status() {
                        StatusCode::OK => ok += 1,
                        StatusCode::TOO_MANY_REQUESTS => refused += 1,
                        other => panic!("{other}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (o, r) = time::timeout(secs(60), task).await.unwrap().unwrap();
        ok += o;
        refused += r;
    }
    let s = sim.stats();
    assert_eq!(
        (s.arrivals, s.admitted, s.successes, s.refused_429),
        (4800, ok, ok, refused),
        "{s:?}"
    );
    assert!(s.peak_in_service <= 7, "{s:?}");
}

/// 20 000 latencies of each distribution: the mean, median and p99 are those
/// documented (exponential: mean as given; log-normal: median as given, p99
/// e^(2.326 σ) times it, mean e^(σ²/2) times it), and a seed replays the
/// same latencies.
#[tokio::test(start_paused = true)]
async fn latencies_follow_the_documented_distributions() {
    async fn latencies(model: &Model, seed: u64) -> Vec<Duration> {
        let sim = Sim::new(model.clone(), seed);
        let start = Instant::now();
        let calls: Vec<_> = (0..20_000)
            .map(|_| {
                let answer = sim.respond();
                tokio::spawn(async move {
                    assert_eq!(answer.await.status(), StatusCode::OK);
                    start.elapsed()
                })
            })
            .collect();
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.unwrap());
        }
        out
    }
    let base = ms(20);
    let within = |what: &str, got: Duration, want: f64, tolerance: f64| {
        let got = got.as_secs_f64();
        assert!(
            (got - want).abs() <= want * tolerance,
            "{what}: {got} s, documented {want} s"
        );
    };
    for jitter in [
        Jitter::Exponential { mean: ms(300) },
        Jitter::LogNormal {
            median: ms(200),
            sigma: 1.0,
        },
        Jitter::LogNormal {
            median: ms(50),
            sigma: 0.5,
        },
    ] {
        let model = Model::new().latency(base, jitter);
        let mut got = latencies(&model, 9).await;
        assert_eq!(got, latencies(&model, 9).await, "{jitter:?}: the same seed");
        assert_ne!(got, latencies(&model, 10).await, "{jitter:?}: another seed");
        let mean = got.iter().sum::<Duration>() / 20_000;
        got.sort_unstable();
        let (p50, p99) = (got[10_000], got[19_800]);
        let b = base.as_secs_f64();
        match jitter {
            Jitter::Exponential { mean: m } => {
                let m = m.as_secs_f64();
                within("exponential mean", mean, b + m, 0.03);
                within("exponential median", p50, b + m * 2f64.ln(), 0.04);
                within("exponential p99", p99, b + m * 100f64.ln(), 0.08);
            }
            Jitter::LogNormal { median, sigma } => {
                let m = median.as_secs_f64();
                within(
                    "log-normal mean",
                    mean,
                    b + m * (sigma * sigma / 2.0).exp(),
                    0.04,
                );
                within("log-normal median", p50, b + m, 0.04);
                within("log-normal p99", p99, b + m * (2.326 * sigma).exp(), 0.08);
            }
            // `Jitter` is non-exhaustive; `None` is not among the cases here.
            _ => unreachable!(),
        }
        within(
            "unloaded_mean",
            model.unloaded_mean(),
            mean.as_secs_f64(),
            0.04,
        );
    }
}

/// One call in ten is dropped: never answered, its caller left to its
/// timeout, holding no slot; the others are served.
#[tokio::test(start_paused = true)]
async fn silent_drops_never_answer_and_come_at_the_stated_rate() {
    let sim = Sim::new(
        Model::new()
            .drop_rate(0.1)
            .concurrency(10_000)
            .latency(ms(10), Jitter::None),
        5,
    );
    let calls: Vec<_> = (0..10_000)
        .map(|_| tokio::spawn(time::timeout(secs(3600), sim.respond())))
        .collect();
    let mut unanswered = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(answer) => assert_eq!(answer.status(), StatusCode::OK),
            Err(_) => unanswered += 1,
        }
    }
    let s = sim.stats();
    assert_eq!((s.dropped, s.successes), (unanswered, 10_000 - unanswered));
    assert!((900..=1100).contains(&unanswered), "{unanswered} dropped");
    assert_eq!(s.peak_in_service as u64, 10_000 - unanswered);
}

/// Sends `request` on a new connection; what came back until the server
/// closed it or `quiet` passed with nothing more ("<held>" then).
async fn exchange(addr: SocketAddr, request: &str, quiet: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => {
                got.extend_from_slice(b"<held>");
                break;
            }
        }
    }
    String::from_utf8(got).unwrap()
}

/// The head's fields, lower-cased names, and the body.
fn parse(answer: &str) -> (String, Vec<(String, String)>, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let fields = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    (status, fields, body.to_owned())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Over HTTP: a success with the body's exact `content-length`, a rate
/// refusal with `Retry-After` as delay-seconds (RFC 9110: digits only), a
/// quota refusal with the rest of its window, a 503 with no `Retry-After`,
/// and a silent drop that holds the connection open without a byte.
#[tokio::test]
async fn http_answers_carry_real_statuses_and_heads() {
    const GET: &str = "GET /item HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\r\n";
    let quiet = secs(2);

    let rated = Sim::new(
        Model::new()
            .rate(0.5, 1)
            .latency(ms(5), Jitter::None)
            .body_bytes(10),
        1,
    );
    let server = rated.serve().await.unwrap();
    let (status, fields, body) = parse(&exchange(server.addr(), GET, quiet).await);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(field(&fields, "content-length"), Some("10"));
    assert_eq!(body, "x".repeat(10));
    let (status, fields, body) = parse(&exchange(server.addr(), GET, quiet).await);
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests");
    assert_eq!(field(&fields, "retry-after"), Some("2"));
    assert_eq!(field(&fields, "content-length"), Some("0"));
    assert_eq!(body, "");
    server.shutdown().await;

    let quota = Sim::new(Model::new().quota(0, secs(90)), 1);
    let server = quota.serve().await.unwrap();
    let (status, fields, _) = parse(&exchange(server.addr(), GET, quiet).await);
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests");
    assert_eq!(field(&fields, "retry-after"), Some("90"));
    server.shutdown().await;

    let full = Sim::new(
        Model::new()
            .concurrency(0)
            .overflow(Overflow::Refuse(StatusCode::SERVICE_UNAVAILABLE)),
        1,
    );
    let server = full.serve().await.unwrap();
    let (status, fields, _) = parse(&exchange(server.addr(), GET, quiet).await);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(field(&fields, "retry-after"), None);
    assert_eq!(field(&fields, "content-length"), Some("0"));
    server.shutdown().await;

    let silent = Sim::new(Model::new().drop_rate(1.0), 1);
    let server = silent.serve().await.unwrap();
    assert_eq!(exchange(server.addr(), GET, ms(500)).await, "<held>");
    let s = silent.stats();
    assert_eq!((s.arrivals, s.dropped, s.successes), (1, 1, 0));
    server.shutdown().await;
}
