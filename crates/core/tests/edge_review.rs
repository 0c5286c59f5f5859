//! Defects found in a review of the core layers at extreme values and
//! across runtimes, each with the test that showed it; time on tokio's
//! paused clock.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::controller::{Controller, Sample};
use tower_fanout_core::adaptive::{
    AimdController, GradientController, VegasController, WindowedController,
};
use tower_fanout_core::classify::Outcome;
use tower_fanout_core::error::RateLimited;
use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};
use tower_fanout_core::rate::RateLimitLayer;

type Echo =
    tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, std::convert::Infallible>>>;

fn echo() -> Echo {
    service_fn(|n: u32| std::future::ready(Ok(n)))
}

const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn refused_for(result: Result<u32, BoxError>) -> Duration {
    let error = result.expect_err("refused");
    error
        .downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("not a rate limit: {error}"))
        .retry_after()
}

/// A period past the u64 nanosecond clock (584 years; `Duration::MAX`)
/// whose refill still fits it, because the rate divides it down, passed
/// the build check, and the bucket then saturated the period before
/// dividing: `u32::MAX` tokens per `Duration::MAX` (one every 136 years)
/// gave one every 4.3 s, and 1000 per 1000 years (one a year) one every
/// 213 days. The bound of burst + rate × t was broken by that factor.
#[tokio::test(start_paused = true)]
async fn a_period_beyond_the_u64_clock_keeps_its_rate() {
    for (rate, period, interval) in [
        (u32::MAX, Duration::MAX, Duration::MAX / u32::MAX),
        (1000, YEAR * 1000, YEAR),
    ] {
        let layer = RateLimitLayer::builder(rate, period)
            .burst(1)
            .fail_fast()
            .build()
            .unwrap();
        let handle = layer.handle();
        // Rounded up to a whole nanosecond.
        let off = handle.refill_interval().abs_diff(interval);
        assert!(
            off <= Duration::from_nanos(1),
            "{:?}",
            handle.refill_interval()
        );
        let svc = ServiceBuilder::new().layer(layer).service(echo());
        svc.clone().oneshot(1).await.unwrap();
        tokio::time::advance(DAY * 300).await;
        let wait = refused_for(svc.clone().oneshot(2).await);
        assert!(
            wait > interval - DAY * 301,
            "{rate} per {period:?}: {wait:?}"
        );
    }
}

/// The same for a keyed limit's per-key bucket.
#[tokio::test(start_paused = true)]
async fn a_keyed_period_beyond_the_u64_clock_keeps_its_rate() {
    let limits = KeyedLimitLayer::builder_with_key(
        |_: &u32| 0u8,
        KeyLimit::new().rate(1000, YEAR * 1000).burst(1),
    )
    .fail_fast()
    .build()
    .unwrap();
    let handle = limits.handle();
    let svc = ServiceBuilder::new().layer(limits).service(echo());
    svc.clone().oneshot(1).await.unwrap();
    tokio::time::advance(DAY * 300).await;
    assert_eq!(handle.tokens(&0), Some(0));
    let wait = refused_for(svc.clone().oneshot(2).await);
    assert!(wait > DAY * 64, "{wait:?}");
}

/// Controllers are public and take any `Sample`: a huge RTT (a harness
/// marking a call that never answered with `Duration::MAX`, say) panicked
/// in the gradient and Vegas controllers (`rtt × 4` for the round's length,
/// and their moving average) and in the windowed one (the window's sum of
/// latencies).
#[test]
fn huge_latency_samples_do_not_panic_the_controllers() {
    let start = Instant::now();
    let rtts = [
        Duration::MAX,
        Duration::ZERO,
        Duration::from_millis(50),
        Duration::MAX / 3,
    ];
    let controllers: [(&str, Box<dyn Controller>); 4] = [
        ("gradient", Box::new(GradientController::default())),
        (
            "vegas",
            Box::new(VegasController::builder().build().unwrap()),
        ),
        ("aimd", Box::new(AimdController::builder().build().unwrap())),
        ("windowed", Box::new(WindowedController::preset())),
    ];
    for (name, mut c) in controllers {
        for i in 0..400u32 {
            let sample = Sample {
                outcome: if i % 37 == 36 {
                    Outcome::Overload
                } else {
                    Outcome::Success
                },
                rtt: rtts[(i as usize / 50) % rtts.len()],
                in_flight: 5,
                limit: 5,
                retry_after: None,
            };
            let now = start + Duration::from_millis(u64::from(i) * 10);
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.update(&sample, now);
                c.rtt()
            }));
            assert!(answer.is_ok(), "{name} panicked at sample {i} ({sample:?})");
        }
    }
}

/// A waiting rate limit keeps one timer for its waits. It was reset in
/// place for each new wait, so it stayed on the runtime of the first: a
/// service that waited on a runtime since shut down (a test's, a start-up
/// runtime's) panicked at its next wait on another ("A Tokio 1.x context
/// was found, but it is being shutdown"). Each new wait now takes a timer
/// of the runtime it runs on.
#[test]
fn a_rate_limit_used_on_a_second_runtime_waits_there() {
    let layer = RateLimitLayer::builder(10, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(echo());
    for round in 0..3u32 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let start = Instant::now();
            for i in 0..3 {
                let answer = svc.ready().await.unwrap().call(i).await;
                assert_eq!(answer.unwrap(), i, "round {round}");
            }
            // Two waits of 100 ms at least (the first call of a round may
            // wait too: the paused clocks of two runtimes differ).
            assert!(start.elapsed() >= Duration::from_millis(200));
        });
    }
}

/// The same, for a wait cut short: a caller gave up waiting for its token
/// on the first runtime (a timeout), so the service kept its booking and
/// came back on the second runtime with the same deadline. The timer was
/// made anew only when the deadline changed, so it stayed the first
/// runtime's: a panic ("... being shutdown") once that runtime was gone,
/// a wait without end while it lived but was no longer driven. Found by a
/// user trial. The adaptive limit's holds and pacing share the timer.
#[test]
fn a_wait_cut_short_on_one_runtime_ends_on_the_next() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    for keep_first_alive in [false, true] {
        let layer = RateLimitLayer::builder(1, Duration::from_millis(500))
            .burst(1)
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(echo());
        let first = paused();
        first.block_on(async {
            assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
            let gave_up = tokio::time::timeout(Duration::from_millis(50), svc.ready()).await;
            assert!(gave_up.is_err(), "the second token is 500 ms away");
        });
        // Gone, or alive and never driven again.
        let kept = keep_first_alive.then_some(first);
        let second = paused();
        let answer = second.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                svc.ready().await.unwrap().call(2).await.unwrap()
            })
            .await
        });
        assert_eq!(
            answer.ok(),
            Some(2),
            "first runtime kept: {keep_first_alive}"
        );
        drop(kept);
    }

    // The adaptive limit's hold (a 429 with a long `Retry-After`).
    for keep_first_alive in [false, true] {
        let layer = tower_fanout_core::adaptive::AdaptiveLimitLayer::default();
        let handle = layer.handle();
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let server = {
            let answered = answered.clone();
            service_fn(move |()| {
                let first = answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
                let status = if first { 429 } else { 200 };
                let response = http::Response::builder()
                    .status(status)
                    .header("retry-after", "2")
                    .body(())
                    .unwrap();
                std::future::ready(Ok::<_, std::convert::Infallible>(response))
            })
        };
        let mut svc = ServiceBuilder::new().layer(layer).service(server);
        let first = paused();
        first.block_on(async {
            let refused = svc.ready().await.unwrap().call(()).await.unwrap();
            assert_eq!(refused.status(), 429);
            assert!(handle.held_until().is_some(), "a 2 s Retry-After holds");
            let gave_up = tokio::time::timeout(Duration::from_millis(50), svc.ready()).await;
            assert!(gave_up.is_err(), "held for 2 s");
        });
        let kept = keep_first_alive.then_some(first);
        let second = paused();
        let answer = second.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                svc.ready().await.unwrap().call(()).await.unwrap()
            })
            .await
        });
        let status = answer.ok().map(|r| r.status().as_u16());
        assert_eq!(status, Some(200), "first runtime kept: {keep_first_alive}");
        drop(kept);
    }
}

/// Polls `future` until it is ready, then once more: the second answer.
async fn poll_after_completion<F>(future: F) -> F::Output
where
    F: std::future::Future,
{
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| future.as_mut().poll(cx)).await;
    std::future::poll_fn(|cx| future.as_mut().poll(cx)).await
}

/// An inner future that may be polled only until it is ready (an `async`
/// block, which panics after).
fn once_only()
-> impl Service<u32, Response = http::Response<u32>, Error = BoxError, Future: Send> + Clone {
    service_fn(|n: u32| async move { Ok::<_, BoxError>(http::Response::new(n)) })
}

/// The crate's response futures answer a poll after completion with an
/// error (tower's panic there). The keyed and adaptive ones polled the
/// finished inner future again instead: a panic with an `async` inner
/// future ("`async fn` resumed after completion").
#[tokio::test(start_paused = true)]
async fn keyed_and_adaptive_futures_polled_after_completion_answer_an_error() {
    let keyed = KeyedLimitLayer::builder_with_key(|_: &u32| 0u8, KeyLimit::new().concurrency(2))
        .build()
        .unwrap();
    let rated = KeyedLimitLayer::builder_with_key(
        |_: &u32| 0u8,
        KeyLimit::new().rate(10, Duration::from_secs(1)),
    )
    .build()
    .unwrap();
    let adaptive = tower_fanout_core::adaptive::AdaptiveLimitLayer::default();
    for (name, svc) in [
        (
            "keyed, admitted at once",
            ServiceBuilder::new()
                .layer(keyed)
                .service(once_only())
                .boxed_clone(),
        ),
        (
            "keyed, with a wait state",
            ServiceBuilder::new()
                .layer(rated)
                .service(once_only())
                .boxed_clone(),
        ),
        (
            "adaptive",
            ServiceBuilder::new()
                .layer(adaptive)
                .service(once_only())
                .boxed_clone(),
        ),
    ] {
        let mut svc = svc;
        let future = svc.ready().await.unwrap().call(7);
        let again = tokio::spawn(poll_after_completion(future)).await;
        let error = again
            .unwrap_or_else(|_| panic!("{name}: panicked"))
            .expect_err(name);
        assert!(
            error.to_string().contains("after completion"),
            "{name}: {error}"
        );
    }
}

/// A finished keyed call still reads as admitted: the http client reads
/// `is_admitted` after the poll that finished the call, to note the gate's
/// wait on the response.
#[tokio::test(start_paused = true)]
async fn a_finished_keyed_call_still_reads_as_admitted() {
    let limits = KeyedLimitLayer::builder_with_key(
        |_: &u32| 0u8,
        KeyLimit::new()
            .concurrency(1)
            .rate(10, Duration::from_secs(1))
            .burst(1),
    )
    .build()
    .unwrap();
    let mut svc = ServiceBuilder::new().layer(limits).service(once_only());
    for n in 0..2 {
        let mut future = std::pin::pin!(svc.ready().await.unwrap().call(n));
        let answer = std::future::poll_fn(|cx| future.as_mut().poll(cx)).await;
        assert_eq!(*answer.unwrap().body(), n);
        assert!(future.is_admitted(), "call {n}");
    }
}
