//! Defects found in the review of the simulated downstream, each with the
//! test that showed it; on the paused clock, but for the one over real HTTP
//! on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::{Request, StatusCode};
use tokio::time::{self, Instant};
use tower::{Service, ServiceExt};
use tower_fanout_sim::{Jitter, Model, Overflow, Sim};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One call, answered within `within` or reported as `None`.
async fn status_within(sim: &Sim, within: Duration) -> Option<StatusCode> {
    time::timeout(within, sim.clone().oneshot(Request::new(())))
        .await
        .ok()
        .map(|r| r.unwrap().status())
}

/// The status of a spawned call, answered within a minute of the paused
/// clock: a call left queued for ever fails the test at once (the clock
/// jumps when nothing else can run) instead of hanging it.
async fn answered(
    call: tokio::task::JoinHandle<
        Result<http::Response<tower_fanout_sim::Body>, std::convert::Infallible>,
    >,
) -> StatusCode {
    let answer = time::timeout(Duration::from_secs(60), call).await;
    let response = answer.expect("a call still unanswered after a minute");
    response.unwrap().unwrap().status()
}

/// Starts `n` calls at once and checks that each is answered 200 within 10 s:
/// when each ended, counted from the start, earliest first.
async fn ends_of_calls(sim: &Sim, n: usize) -> Vec<Duration> {
    let start = Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let sim = sim.clone();
            tokio::spawn(async move {
                let status = status_within(&sim, Duration::from_secs(10)).await;
                (status, Instant::now())
            })
        })
        .collect();
    let mut ends = Vec::new();
    for call in calls {
        let (status, at) = call.await.unwrap();
        assert_eq!(status, Some(StatusCode::OK));
        ends.push(at - start);
    }
    ends.sort();
    ends
}

/// A call's future dropped before it is ever polled gives its slot back: it
/// was taken at the call, and the guard that gives it back was only made on
/// the first poll, so the slot stayed taken for good (every later call was
/// refused with 429).
#[tokio::test(start_paused = true)]
async fn a_call_dropped_unpolled_gives_its_slot_back() {
    let sim = Sim::new(
        Model::new().concurrency(1).latency(ms(100), Jitter::None),
        1,
    );
    for _ in 0..3 {
        drop(sim.clone().call(Request::new(())));
    }
    assert_eq!(status_within(&sim, ms(200)).await, Some(StatusCode::OK));
    assert_eq!(sim.stats().peak_in_service, 1);
}

/// A queued call handed the slot of a finished one, then dropped before its
/// next poll, passes the slot on: it kept it for good, and with a capacity of
/// one the next call waited in the queue forever.
#[tokio::test(start_paused = true)]
async fn a_queued_call_dropped_after_its_turn_came_passes_the_slot_on() {
    let sim = Sim::new(
        Model::new()
            .concurrency(1)
            .overflow(Overflow::Queue { max: 4 })
            .latency(ms(100), Jitter::None),
        1,
    );
    let first = tokio::spawn(sim.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    let queued = sim.clone().call(Request::new(()));
    // The first call ends at 100 ms and hands its slot to the queued one,
    // which is never polled again.
    assert_eq!(answered(first).await, StatusCode::OK);
    drop(queued);
    let start = Instant::now();
    assert_eq!(status_within(&sim, ms(500)).await, Some(StatusCode::OK));
    assert_eq!(start.elapsed(), ms(100), "served at once, not queued");
}

/// A scheduled capacity change starts queued calls at its time. It was
/// applied only when a call arrived or ended, so after a change from 0 to 2
/// (an outage ending) the queued calls waited forever, and after a rise from
/// 1 to 4 they waited for the one call in service to end.
#[tokio::test(start_paused = true)]
async fn queued_calls_start_when_the_capacity_rises() {
    let outage = Sim::new(
        Model::new()
            .concurrency(0)
            .overflow(Overflow::Queue { max: 8 })
            .latency(ms(100), Jitter::None)
            .change_at(Duration::from_secs(1), Some(2), None),
        1,
    );
    assert_eq!(
        ends_of_calls(&outage, 3).await,
        [ms(1100), ms(1100), ms(1200)]
    );

    let rise = Sim::new(
        Model::new()
            .concurrency(1)
            .overflow(Overflow::Queue { max: 8 })
            .latency(Duration::from_secs(1), Jitter::None)
            .change_at(ms(100), Some(4), None),
        1,
    );
    assert_eq!(
        ends_of_calls(&rise, 4).await,
        [ms(1000), ms(1100), ms(1100), ms(1100)]
    );
}

/// Odd but representable models answer (or, for a latency past any wait,
/// keep the call waiting) instead of panicking in the call: a negative or
/// NaN knee slope ("cannot convert float seconds to Duration: value is
/// negative" once the knee was passed), a rate so low its interval is past
/// what a `Duration` holds, a latency of `Duration::MAX` plus jitter
/// ("overflow when adding durations").
#[tokio::test(start_paused = true)]
async fn odd_models_answer_instead_of_panicking() {
    for slope in [-2.0, f64::NAN, f64::NEG_INFINITY] {
        let sim = Sim::new(
            Model::new().knee(1, slope).latency(ms(100), Jitter::None),
            1,
        );
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let sim = sim.clone();
                tokio::spawn(async move { status_within(&sim, ms(200)).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Some(StatusCode::OK), "slope {slope}");
        }
    }

    let model = Model::new()
        .rate(1e-300, 1)
        .latency(ms(10), Jitter::None)
        .change_at(Duration::from_secs(5), None, Some(1e-310));
    let slow = Sim::new(model.clone(), 1);
    assert_eq!(slow.model(), &model);
    assert_eq!(status_within(&slow, ms(100)).await, Some(StatusCode::OK));
    let refused = slow.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The wait is capped at a century (less the 10 ms since the first
    // call was booked), rounded up to whole seconds.
    assert_eq!(refused.headers()["retry-after"], "3153600000");
    time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        status_within(&slow, ms(100)).await,
        Some(StatusCode::TOO_MANY_REQUESTS)
    );

    let never = Sim::new(
        Model::new().latency(
            Duration::MAX,
            Jitter::Exponential {
                mean: Duration::from_secs(1),
            },
        ),
        1,
    );
    assert_eq!(status_within(&never, Duration::from_secs(10)).await, None);
    assert_eq!(never.stats().admitted, 1);
}

/// After `reset_stats` (a warm-up's end), the calls still in service count
/// for load in the new window but not as admitted in it: they were counted
/// as admitted again, so `admitted` could exceed `arrivals` and the
/// admission rate after a warm-up read high.
#[tokio::test(start_paused = true)]
async fn reset_stats_does_not_count_calls_in_service_as_admitted_again() {
    let sim = Sim::new(Model::new().latency(ms(100), Jitter::None), 1);
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(sim.clone().oneshot(Request::new(()))))
        .collect();
    time::sleep(ms(50)).await;
    sim.reset_stats();
    for call in calls {
        assert_eq!(answered(call).await, StatusCode::OK);
    }
    assert_eq!(status_within(&sim, ms(200)).await, Some(StatusCode::OK));
    let s = sim.stats();
    assert_eq!((s.arrivals, s.admitted, s.successes), (1, 1, 6), "{s:?}");
    assert_eq!(s.peak_in_service, 5);
}

/// A queued call started when a slot frees counts as admitted, as `Stats`
/// documents ("admitted into service (now or after queueing)"): the slot's
/// release and the queued call's start were one step, the in-service count
/// did not move, and the admission went uncounted.
#[tokio::test(start_paused = true)]
async fn queued_calls_count_as_admitted_when_they_start() {
    let sim = Sim::new(
        Model::new()
            .concurrency(2)
            .overflow(Overflow::Queue { max: 8 })
            .latency(ms(100), Jitter::None),
        1,
    );
    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(sim.clone().oneshot(Request::new(()))))
        .collect();
    for call in calls {
        assert_eq!(answered(call).await, StatusCode::OK);
    }
    let s = sim.stats();
    assert_eq!((s.arrivals, s.admitted, s.successes), (6, 6, 6), "{s:?}");
    assert_eq!(s.peak_queued, 4);
    assert!((s.admitted_rate - 20.0).abs() < 1e-9, "{s:?}");
}

/// The quota's `Retry-After` is the rest of the window in whole seconds,
/// rounded up, however long the window or the run: rounding up the rest of
/// a `Duration::MAX` window overflowed ("attempt to add with overflow" in a
/// debug build, `Retry-After: 1` in a release one), and past `u32::MAX`
/// windows the window's end was taken as `u32::MAX` windows, already past,
/// so a 10 s window sent `Retry-After: 1`.
#[tokio::test(start_paused = true)]
async fn quota_retry_after_is_the_rest_of_any_window() {
    let retry_after = |response: http::Response<tower_fanout_sim::Body>| {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .to_owned()
    };

    let endless = Sim::new(Model::new().quota(0, Duration::MAX), 1);
    let refused = endless.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(retry_after(refused), u64::MAX.to_string());

    let sim = Sim::new(
        Model::new()
            .quota(1, Duration::from_secs(10))
            .latency(ms(10), Jitter::None)
            .refusal_latency(Duration::ZERO),
        1,
    );
    // The start of window number 2^32 + 1, some 1361 years in.
    time::advance(Duration::from_secs(10 * ((1 << 32) + 1))).await;
    assert_eq!(
        status_within(&sim, Duration::from_secs(1)).await,
        Some(StatusCode::OK)
    );
    time::advance(ms(2490)).await;
    let refused = sim.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(retry_after(refused), "8", "7.5 s rounded up");
}

/// A queued call whose caller gave up (a client timeout, a closed
/// connection) leaves the queue: it kept its place, so a queue of callers
/// that had all given up refused the next with 503 as if full, and
/// `peak_queued` counted them.
#[tokio::test(start_paused = true)]
async fn queued_calls_that_give_up_leave_the_queue() {
    let sim = Sim::new(
        Model::new()
            .concurrency(1)
            .overflow(Overflow::Queue { max: 2 })
            .latency(Duration::from_secs(1), Jitter::None),
        1,
    );
    let first = tokio::spawn(sim.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    for _ in 0..3 {
        assert_eq!(status_within(&sim, ms(100)).await, None, "queued");
    }
    assert_eq!(sim.stats().refused_other, 0, "{:?}", sim.stats());
    assert_eq!(sim.stats().peak_queued, 1);
    // Two wait their turn: the first ends at 1 s, the next at 2 s.
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(sim.clone().oneshot(Request::new(()))))
        .collect();
    assert_eq!(answered(first).await, StatusCode::OK);
    for call in waiting {
        assert_eq!(answered(call).await, StatusCode::OK);
    }
    let s = sim.stats();
    assert_eq!(
        (s.arrivals, s.admitted, s.successes, s.refused_other),
        (6, 3, 3, 0),
        "{s:?}"
    );
    assert_eq!(s.peak_queued, 2);
}

/// A client that hangs up while its request body is still on the way gives
/// its slot back over HTTP, as one that hangs up after sending it does. The
/// server never read request bodies, and hyper stops reading a connection
/// whose body is left unread, so it never saw the hang-up: the slot stayed
/// taken to the end of the latency (for a silent drop, until shutdown), and
/// every later request was refused.
#[tokio::test]
async fn a_client_that_hangs_up_mid_body_gives_its_slot_back() {
    use tokio::io::AsyncWriteExt;

    let heads_and_bodies: [(&str, &str); 3] = [
        ("content-length: 10", "01234"),
        ("content-length: 10", ""),
        ("transfer-encoding: chunked", "5\r\nhello\r\n"),
    ];
    for (header, sent) in heads_and_bodies {
        let sim = Sim::new(
            Model::new()
                .concurrency(1)
                .latency(Duration::from_secs(3600), Jitter::None),
            1,
        );
        let server = sim.serve().await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let request = format!("POST /item HTTP/1.1\r\nhost: sim\r\n{header}\r\n\r\n{sent}");
        stream.write_all(request.as_bytes()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim.stats().admitted == 0 {
            assert!(Instant::now() < deadline, "the request never arrived");
            time::sleep(ms(5)).await;
        }
        drop(stream);
        // Free again once the server sees the hang-up: a call then gets in
        // (and is held), instead of a 429 after the refusal's 1 ms.
        loop {
            let status = status_within(&sim, ms(100)).await;
            if status.is_none() {
                break;
            }
            assert_eq!(status, Some(StatusCode::TOO_MANY_REQUESTS));
            assert!(
                Instant::now() < deadline,
                "{header} with {sent:?} sent: the slot is still taken"
            );
            time::sleep(ms(20)).await;
        }
        server.shutdown().await;
    }
}

/// `peak_queued` after `reset_stats` counts the calls still queued at the
/// reset, as `peak_in_service` counts the calls still in service: the new
/// window started at 0 queued, so with two queued at the reset it read 1
/// (the depth after the first of them started).
#[tokio::test(start_paused = true)]
async fn reset_stats_counts_the_calls_still_queued() {
    let sim = Sim::new(
        Model::new()
            .concurrency(1)
            .overflow(Overflow::Queue { max: 4 })
            .latency(ms(100), Jitter::None),
        1,
    );
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(sim.clone().oneshot(Request::new(()))))
        .collect();
    time::sleep(ms(50)).await;
    sim.reset_stats();
    for call in calls {
        assert_eq!(answered(call).await, StatusCode::OK);
    }
    let s = sim.stats();
    assert_eq!((s.peak_in_service, s.peak_queued), (1, 2), "{s:?}");
    assert_eq!((s.arrivals, s.admitted, s.successes), (0, 2, 3), "{s:?}");
}
