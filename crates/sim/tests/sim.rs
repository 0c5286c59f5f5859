//! The simulated downstream's model, each part on its own, on the paused
//! clock; and the same downstream over real HTTP on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::{Request, StatusCode};
use tokio::time::{self, Instant};
use tower::ServiceExt;
use tower_fanout_sim::{Jitter, Model, Overflow, Sim};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One call, answered within a minute of the paused clock: a call left
/// queued for ever fails the test at once (the clock jumps when nothing else
/// can run) instead of hanging it.
async fn call(sim: &Sim) -> http::Response<tower_fanout_sim::Body> {
    let answer = time::timeout(
        Duration::from_secs(60),
        sim.clone().oneshot(Request::new(())),
    );
    answer.await.expect("no answer within a minute").unwrap()
}

/// Fires `n` calls at once; returns (status, latency) of each.
async fn burst(sim: &Sim, n: usize) -> Vec<(StatusCode, Duration, Option<String>)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let sim = sim.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = call(&sim).await;
                let ra = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.status(), t.elapsed(), ra)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn concurrency_cap_refuses_beyond_capacity() {
    let sim = Sim::new(
        Model::new().concurrency(5).latency(ms(100), Jitter::None),
        1,
    );
    let out = burst(&sim, 8).await;
    let ok = out.iter().filter(|o| o.0 == StatusCode::OK).count();
    assert_eq!(ok, 5);
    assert!(
        out.iter()
            .filter(|o| o.0 == StatusCode::TOO_MANY_REQUESTS)
            .all(|o| o.1 == ms(1))
    );
    let s = sim.stats();
    assert_eq!(
        (s.arrivals, s.admitted, s.successes, s.refused_429),
        (8, 5, 5, 3)
    );
    assert_eq!(s.peak_in_service, 5);
}

#[tokio::test(start_paused = true)]
async fn refusal_status_is_configurable() {
    let model = Model::new()
        .concurrency(1)
        .overflow(Overflow::Refuse(StatusCode::SERVICE_UNAVAILABLE));
    let sim = Sim::new(model, 1);
    let out = burst(&sim, 2).await;
    assert!(out.iter().any(|o| o.0 == StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(sim.stats().refused_other, 1);
}

#[tokio::test(start_paused = true)]
async fn queueing_server_serves_in_order_and_bounds_the_queue() {
    let model = Model::new()
        .concurrency(2)
        .overflow(Overflow::Queue { max: 2 })
        .latency(ms(100), Jitter::None);
    let sim = Sim::new(model, 1);
    let mut out = burst(&sim, 5).await;
    out.sort_by_key(|o| o.1);
    let latencies: Vec<_> = out
        .iter()
        .map(|o| (o.0.as_u16(), o.1.as_millis()))
        .collect();
    assert_eq!(
        latencies,
        [(503, 1), (200, 100), (200, 100), (200, 200), (200, 200)]
    );
    assert_eq!(sim.stats().peak_queued, 2);
}

#[tokio::test(start_paused = true)]
async fn rate_cap_answers_429_with_retry_after() {
    let sim = Sim::new(Model::new().rate(10.0, 2).latency(ms(10), Jitter::None), 1);
    let out = burst(&sim, 4).await;
    let refused: Vec<_> = out
        .iter()
        .filter(|o| o.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(refused.len(), 2, "burst of 2");
    assert!(refused.iter().all(|o| o.2.as_deref() == Some("1")));
    // A token every 100 ms.
    time::advance(ms(100)).await;
    assert_eq!(call(&sim).await.status(), StatusCode::OK);
    assert_eq!(call(&sim).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn quota_sends_the_rest_of_the_window() {
    let sim = Sim::new(
        Model::new()
            .quota(3, Duration::from_secs(30))
            .latency(ms(10), Jitter::None),
        1,
    );
    let out = burst(&sim, 4).await;
    let refused: Vec<_> = out
        .iter()
        .filter(|o| o.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].2.as_deref(), Some("30"));
    time::advance(Duration::from_secs(30)).await;
    assert_eq!(call(&sim).await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn knee_slows_everybody_above_it() {
    let sim = Sim::new(Model::new().knee(4, 1.0).latency(ms(100), Jitter::None), 1);
    let out = burst(&sim, 8).await;
    // The last four started with 5..8 in service: ×1.25 .. ×2.
    let max = out.iter().map(|o| o.1).max().unwrap();
    assert_eq!(max, ms(200));
    let fast = out.iter().filter(|o| o.1 == ms(100)).count();
    assert_eq!(fast, 4);
}

#[tokio::test(start_paused = true)]
async fn silent_drops_never_answer() {
    let sim = Sim::new(Model::new().drop_rate(1.0), 1);
    let r = time::timeout(Duration::from_secs(5), call(&sim)).await;
    assert!(
        r.is_err(),
        "a dropped request must leave the client to its timeout"
    );
    let s = sim.stats();
    assert_eq!((s.dropped, s.successes, s.mean_in_service), (1, 0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn capacity_changes_at_the_given_time() {
    let model = Model::new()
        .concurrency(4)
        .latency(ms(100), Jitter::None)
        .change_at(Duration::from_secs(30), Some(2), None)
        .change_at(Duration::from_secs(60), Some(8), None);
    let sim = Sim::new(model, 1);
    let ok = |v: Vec<(StatusCode, Duration, Option<String>)>| {
        v.iter().filter(|o| o.0 == StatusCode::OK).count()
    };
    assert_eq!(ok(burst(&sim, 10).await), 4);
    time::advance(Duration::from_secs(30)).await;
    assert_eq!(ok(burst(&sim, 10).await), 2);
    time::advance(Duration::from_secs(30)).await;
    assert_eq!(ok(burst(&sim, 10).await), 8);
    assert_eq!(sim.concurrency_now(), Some(8));
}

#[tokio::test(start_paused = true)]
async fn stats_weight_in_service_by_time() {
    let sim = Sim::new(Model::new().latency(ms(100), Jitter::None), 1);
    burst(&sim, 4).await; // 4 in service for 100 ms
    time::advance(ms(300)).await; // then idle for 300 ms
    let s = sim.stats();
    assert!(
        (s.mean_in_service - 1.0).abs() < 1e-6,
        "{}",
        s.mean_in_service
    );
    assert_eq!(s.p99, ms(100));
    assert!((s.goodput - 10.0).abs() < 1e-6, "{}", s.goodput);
    sim.reset_stats();
    assert_eq!(sim.stats().arrivals, 0);
}

#[tokio::test(start_paused = true)]
async fn log_normal_tail_and_seeded_determinism() {
    let model = Model::new().latency(
        ms(20),
        Jitter::LogNormal {
            median: ms(200),
            sigma: 1.0,
        },
    );
    let run = |seed| {
        let model = model.clone();
        async move {
            let sim = Sim::new(model, seed);
            burst(&sim, 2000).await;
            sim.stats()
        }
    };
    let (a, b, c) = (run(7).await, run(7).await, run(8).await);
    assert_eq!(a, b, "same seed, same run");
    assert_ne!(a.p99, c.p99);
    // Median 220 ms; p99 about e^(2.33) ≈ 10× the jitter's median.
    assert!(a.p50 > ms(180) && a.p50 < ms(260), "{:?}", a.p50);
    assert!(a.p99 > ms(1500) && a.p99 < ms(3000), "{:?}", a.p99);
    let unloaded = model.unloaded_quantile(0.99);
    assert!(unloaded > ms(1500) && unloaded < ms(3000), "{unloaded:?}");
}

#[tokio::test(start_paused = true)]
async fn dropped_client_frees_its_slot() {
    let sim = Sim::new(
        Model::new().concurrency(1).latency(ms(100), Jitter::None),
        1,
    );
    let r = time::timeout(ms(10), call(&sim)).await;
    assert!(r.is_err());
    assert_eq!(call(&sim).await.status(), StatusCode::OK);
}

/// The downstream over real HTTP on loopback: a request over the cap is
/// refused with a 429 while another is in service, an admitted one is
/// answered in full, and a shut-down server answers nothing.
#[tokio::test]
async fn serves_real_http_on_loopback() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    // The first request is held in service (an hour) and the second sent
    // only once the first is admitted, so they overlap whatever the
    // scheduling. (Both sent at once with 20 ms of service, a loaded
    // machine could finish the first before the second arrived: two 200s.)
    let held = Sim::new(
        Model::new()
            .concurrency(1)
            .latency(Duration::from_secs(3600), Jitter::None),
        1,
    );
    let server = held.serve().await.unwrap();
    assert!(server.addr().ip().is_loopback());
    let uri: http::Uri = format!("http://{}/item", server.addr()).parse().unwrap();
    let first = tokio::spawn(client.get(uri.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.stats().admitted == 0 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        time::sleep(ms(5)).await;
    }
    let second = client.get(uri.clone()).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let s = held.stats();
    assert_eq!(
        (s.arrivals, s.admitted, s.refused_429, s.successes),
        (2, 1, 1, 0)
    );
    server.shutdown().await;
    assert!(
        first.await.unwrap().is_err(),
        "the shutdown cut the request in service"
    );
    assert!(client.get(uri).await.is_err(), "the server is gone");

    let quick = Sim::new(
        Model::new()
            .concurrency(1)
            .latency(ms(20), Jitter::None)
            .body_bytes(1024),
        1,
    );
    let server = quick.serve().await.unwrap();
    let uri: http::Uri = format!("http://{}/item", server.addr()).parse().unwrap();
    let ok = client.get(uri).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body = ok.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 1024);
    assert_eq!(quick.stats().successes, 1);
    server.shutdown().await;
}

/// `peak_open` counts every request the server holds at once, refusals
/// while they are being answered and silent drops until their caller gives
/// up; an answered or abandoned request is open no more.
#[tokio::test(start_paused = true)]
async fn peak_open_counts_what_the_server_holds_at_once() {
    let sim = Sim::new(
        Model::new()
            .concurrency(2)
            .refusal_latency(ms(10))
            .latency(ms(100), Jitter::None),
        1,
    );
    let out = burst(&sim, 5).await;
    assert_eq!(out.iter().filter(|o| o.0 == StatusCode::OK).count(), 2);
    let s = sim.stats();
    assert_eq!((s.peak_in_service, s.peak_open), (2, 5), "{s:?}");
    // All five were answered: a new window starts with none open.
    sim.reset_stats();
    call(&sim).await;
    call(&sim).await;
    assert_eq!(sim.stats().peak_open, 1);

    let dropping = Sim::new(Model::new().drop_rate(1.0), 1);
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(dropping.clone().oneshot(Request::new(()))))
        .collect();
    time::sleep(ms(50)).await;
    assert_eq!(dropping.stats().peak_open, 3);
    // Still open at a reset: they count in the new window's peak.
    dropping.reset_stats();
    assert_eq!(dropping.stats().peak_open, 3);
    for call in &calls {
        call.abort();
    }
    for call in calls {
        assert!(call.await.unwrap_err().is_cancelled());
    }
    dropping.reset_stats();
    let again = tokio::spawn(dropping.clone().oneshot(Request::new(())));
    time::sleep(ms(50)).await;
    assert_eq!(dropping.stats().peak_open, 1, "the abandoned three left");
    again.abort();
}
