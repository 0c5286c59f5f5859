//! Contract tests for the token-bucket rate limit, on tokio's paused clock.
#![cfg(feature = "rate")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Service, ServiceExt, service_fn};
use tower_fanout_core::error::{CostExceedsBurst, NotReady, RateLimited};
use tower_fanout_core::rate::RateLimitLayer;
use tower_test::mock;

/// When each request reached the inner service, and its cost.
type Log = Arc<Mutex<Vec<(Duration, u32)>>>;

/// An inner service that records each request in the [`Log`].
fn recorder() -> (
    Log,
    impl Service<u32, Response = (), Error = std::io::Error, Future: Send> + Clone + Send,
) {
    let start = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = service_fn({
        let log = log.clone();
        move |cost: u32| {
            log.lock().unwrap().push((start.elapsed(), cost));
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    (log, svc)
}

fn units_by(log: &Mutex<Vec<(Duration, u32)>>, t: Duration) -> u64 {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at <= t)
        .map(|(_, cost)| u64::from(*cost))
        .sum()
}

/// One token a second, a burst of one.
fn one_a_second() -> RateLimitLayer {
    RateLimitLayer::builder(1, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap()
}

/// Over 10 simulated seconds a saturating caller gets burst + rate × t.
#[tokio::test(start_paused = true)]
async fn admits_burst_plus_rate_times_t_exactly() {
    let (log, inner) = recorder();
    let layer = RateLimitLayer::builder(10, Duration::from_secs(1))
        .burst(5)
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new().layer(layer).service(inner);
    let ten = Duration::from_secs(10);
    let start = Instant::now();
    while start.elapsed() <= ten {
        svc.clone().oneshot(1).await.unwrap();
    }
    assert_eq!(units_by(&log, ten), 5 + 10 * 10);
}

/// Fifty callers racing for the same bucket get no more, and are served in turn.
#[tokio::test(start_paused = true)]
async fn many_callers_share_one_bucket() {
    let (log, inner) = recorder();
    let layer = RateLimitLayer::builder(20, Duration::from_secs(1))
        .burst(10)
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new().layer(layer).service(inner);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                svc.clone().oneshot(1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ten = Duration::from_secs(10);
    assert_eq!(units_by(&log, ten), 10 + 20 * 10);
    // 500 requests: 10 from the burst, the other 490 at 20 a second.
    let last = log.lock().unwrap().last().unwrap().0;
    assert_eq!(last, Duration::from_millis(490 * 50));
}

/// Each request pays its cost; over 10 s the units stay within one request of
/// burst + rate × t.
#[tokio::test(start_paused = true)]
async fn costs_are_respected() {
    let (log, inner) = recorder();
    let layer = RateLimitLayer::builder(10, Duration::from_secs(1))
        .burst(10)
        .cost(|cost: &u32| *cost)
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new().layer(layer).service(inner);
    let ten = Duration::from_secs(10);
    let start = Instant::now();
    while start.elapsed() <= ten {
        svc.clone().oneshot(5).await.unwrap();
    }
    let units = units_by(&log, ten);
    let bound = 10 + 10 * 10;
    assert!(
        units <= bound + 4,
        "{units} units over the bound {bound} by more than one request"
    );
    assert!(units >= bound - 5, "{units} units, bound {bound}");
    // Steady state: one 5-token request every half second.
    let log = log.lock().unwrap();
    let gaps: Vec<_> = log.windows(2).skip(3).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter().all(|g| *g == Duration::from_millis(500)),
        "{gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_fast_checks_the_full_cost_and_says_when() {
    let (_log, inner) = recorder();
    let layer = RateLimitLayer::builder(10, Duration::from_secs(1))
        .burst(5)
        .cost(|cost: &u32| *cost)
        .fail_fast()
        .build()
        .unwrap();
    let mut svc = tower::ServiceBuilder::new().layer(layer).service(inner);
    svc.ready().await.unwrap().call(3).await.unwrap();
    let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    // Two tokens left, one more needed: 100 ms.
    assert_eq!(limited.retry_after(), Duration::from_millis(100));
    assert!(err.to_string().contains("retry after 100 ms"), "{err}");
    tokio::time::advance(limited.retry_after()).await;
    svc.ready().await.unwrap().call(3).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cost_above_burst_fails_at_once() {
    for fail_fast in [false, true] {
        let (log, inner) = recorder();
        let builder = RateLimitLayer::builder(10, Duration::from_secs(1))
            .burst(4)
            .cost(|cost: &u32| *cost);
        let layer = if fail_fast {
            builder.fail_fast()
        } else {
            builder
        }
        .build()
        .unwrap();
        let handle = layer.handle();
        let mut svc = tower::ServiceBuilder::new().layer(layer).service(inner);
        let err = svc.ready().await.unwrap().call(5).await.unwrap_err();
        let e = err
            .downcast_ref::<CostExceedsBurst>()
            .expect("CostExceedsBurst");
        assert_eq!((e.cost(), e.burst()), (5, 4));
        assert!(err.to_string().contains("raise the burst"), "{err}");
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(handle.tokens(), 4, "the refused request took nothing");
    }
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_bucket() {
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .burst(2)
        .build()
        .unwrap();
    let (mut a, _ha) = mock::spawn_layer::<(), (), _>(layer.clone());
    let mut b = mock::Spawn::new(a.get_ref().clone());
    let (mut c, _hc) = mock::spawn_layer::<(), (), _>(layer.clone());
    assert_ready_ok!(a.poll_ready());
    assert_ready_ok!(b.poll_ready());
    assert_pending!(c.poll_ready());
    assert_eq!(layer.handle().tokens(), 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(c.is_woken());
    assert_ready_ok!(c.poll_ready());
}

/// A caller that gives up while waiting hands its booked slot back, so the
/// next caller does not wait for a token nobody used.
#[tokio::test(start_paused = true)]
async fn dropped_waiter_gives_its_token_back() {
    let layer = one_a_second();
    let (mut a, _ha) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut b, _hb) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut c, _hc) = mock::spawn_layer::<(), (), _>(layer.clone());
    assert_ready_ok!(a.poll_ready());
    assert_pending!(b.poll_ready());
    drop(b);
    assert_pending!(c.poll_ready());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready_ok!(c.poll_ready(), "c waits one interval, not two");
}

/// A batch of callers, each bounded by one timeout, queue for a bucket of
/// ten a second (burst 1) and all but the first two give up at 150 ms, in
/// the order they booked, so each but the last leaves with later bookings
/// behind it. All their tokens come back: at 300 ms the bucket is full and
/// the next call goes at once. Before, only the last booking came back and
/// the next call waited until 1.9 s for tokens nobody used.
#[tokio::test(start_paused = true)]
async fn callers_timing_out_in_a_queue_give_their_tokens_back() {
    let (log, inner) = recorder();
    let layer = RateLimitLayer::builder(10, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = tower::ServiceBuilder::new().layer(layer).service(inner);
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(tokio::time::timeout(
                Duration::from_millis(150),
                svc.oneshot(1),
            ))
        })
        .collect();
    let mut timed_out = 0;
    for caller in callers {
        if caller.await.unwrap().is_err() {
            timed_out += 1;
        }
    }
    assert_eq!((units_by(&log, Duration::MAX), timed_out), (2, 18));
    tokio::time::sleep_until(Instant::now() + Duration::from_millis(150)).await;
    assert_eq!(handle.tokens(), 1, "full again at 300 ms");
    let start = Instant::now();
    svc.oneshot(1).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the next call waits for nothing"
    );
}

/// A caller that would wait takes the slot of one who booked before it and
/// left, when that slot comes sooner than its own.
#[tokio::test(start_paused = true)]
async fn a_slot_given_up_goes_to_the_next_caller_that_would_wait() {
    let layer = one_a_second();
    let (mut a, _ha) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut b, _hb) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut c, _hc) = mock::spawn_layer::<(), (), _>(layer.clone());
    let (mut d, _hd) = mock::spawn_layer::<(), (), _>(layer.clone());
    assert_ready_ok!(a.poll_ready());
    assert_pending!(b.poll_ready(), "b's slot at 1 s");
    assert_pending!(c.poll_ready(), "c's slot at 2 s");
    drop(b);
    assert_pending!(d.poll_ready(), "d would book 3 s, and takes b's 1 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready_ok!(d.poll_ready(), "d goes at 1 s");
    assert_pending!(c.poll_ready(), "c keeps its 2 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready_ok!(c.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn dropped_ready_service_gives_its_token_back() {
    let layer = one_a_second();
    let handle = layer.handle();
    let (mut a, _ha) = mock::spawn_layer::<(), (), _>(layer.clone());
    assert_ready_ok!(a.poll_ready());
    assert_eq!(handle.tokens(), 0);
    drop(a);
    assert_eq!(handle.tokens(), 1);
}

#[tokio::test(start_paused = true)]
async fn call_without_poll_ready_is_an_error() {
    let layer = RateLimitLayer::per_second(1).unwrap();
    let (mut svc, _h) = mock::spawn_layer::<(), (), _>(layer);
    let err = svc.call(()).await.unwrap_err();
    assert!(err.is::<NotReady>());
}

#[test]
fn zero_rate_burst_or_period_is_refused() {
    let rate = RateLimitLayer::new(0, Duration::from_secs(1)).unwrap_err();
    assert!(rate.to_string().contains("rate"), "{rate}");
    let burst = RateLimitLayer::builder(5, Duration::from_secs(1))
        .burst(0)
        .build()
        .unwrap_err();
    assert!(
        burst.to_string().contains("burst must be at least 1"),
        "{burst}"
    );
    let period = RateLimitLayer::new(5, Duration::ZERO).unwrap_err();
    assert!(period.to_string().contains("period"), "{period}");
}

/// The most units `log` admitted over any window, less what the bucket
/// allows over that window (`burst + rate × t / period`): positive means
/// the bound was broken.
fn worst_excess(log: &[(Duration, u32)], burst: u32, rate: u32, period: Duration) -> f64 {
    let mut worst = f64::MIN;
    for i in 0..log.len() {
        let mut units = 0u32;
        for later in &log[i..] {
            units += later.1;
            let t = (later.0 - log[i].0).as_secs_f64();
            let bound = f64::from(burst) + f64::from(rate) * t / period.as_secs_f64();
            worst = worst.max(f64::from(units) - bound);
        }
    }
    worst
}

/// Callers of cost 2 ready together: each booked one token in `poll_ready`
/// (at its slot) and the other in `call`, behind every other caller's first,
/// and went out when that one came: the first token spent long after its
/// slot, beside the second. Ten such callers at 2 per 100 ms, burst 2,
/// went out one every 50 ms from 500 ms on, 18 tokens where a window
/// allowed 10. Found by a randomised trial of stacks; its shrunk case too.
#[tokio::test(start_paused = true)]
async fn callers_with_costs_ready_together_keep_the_bound_over_every_window() {
    let (burst, rate, period) = (2, 2, Duration::from_millis(100));
    let workloads: [Vec<(u64, u32)>; 3] = [
        (0..10).map(|_| (0, 2)).collect(),
        vec![(215, 2), (228, 1), (289, 2), (294, 1), (385, 2), (465, 2)],
        (0..20).map(|i| (i * 7, 1 + (i % 2) as u32)).collect(),
    ];
    for calls in workloads {
        let (log, inner) = recorder();
        let layer = RateLimitLayer::builder(rate, period)
            .burst(burst)
            .cost(|cost: &u32| *cost)
            .build()
            .unwrap();
        let svc = tower::ServiceBuilder::new().layer(layer).service(inner);
        let tasks: Vec<_> = calls
            .iter()
            .map(|&(start_ms, cost)| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(start_ms)).await;
                    svc.oneshot(cost).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let log = log.lock().unwrap();
        assert_eq!(log.len(), calls.len());
        let excess = worst_excess(&log, burst, rate, period);
        assert!(
            excess <= 1e-9,
            "over the bound by {excess}: {calls:?} went out at {log:?}"
        );
    }
}

/// A refusal in `call` (fail-fast, or a cost over the burst) left the inner
/// service as `poll_ready` had readied it, holding what that took: here
/// the only permit of a concurrency limit below, kept by a caller that
/// keeps its service (as tower's `Buffer` does), so another caller waited
/// without end with nothing in flight. Found by a randomised trial.
#[cfg(feature = "concurrency")]
#[tokio::test(start_paused = true)]
async fn a_refusal_gives_back_what_readying_the_inner_service_took() {
    use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
    for fail_fast in [true, false] {
        let (_log, inner) = recorder();
        let builder = RateLimitLayer::builder(1, Duration::from_secs(1))
            .burst(1)
            .cost(|cost: &u32| *cost);
        let rate = if fail_fast {
            builder.fail_fast()
        } else {
            builder
        }
        .build()
        .unwrap();
        let permits = ConcurrencyLimitLayer::new(1).unwrap();
        let handle = permits.handle();
        let mut kept = tower::ServiceBuilder::new()
            .layer(rate)
            .layer(permits)
            .service(inner);
        let refused = if fail_fast {
            kept.ready().await.unwrap().call(1).await.unwrap();
            kept.ready().await.unwrap().call(1).await.unwrap_err()
        } else {
            kept.ready().await.unwrap().call(2).await.unwrap_err()
        };
        assert!(
            refused.is::<RateLimited>() || refused.is::<CostExceedsBurst>(),
            "{refused}"
        );
        assert_eq!(handle.in_flight(), 0, "fail_fast {fail_fast}: nothing runs");
        tokio::time::advance(Duration::from_secs(5)).await;
        let other = tokio::time::timeout(Duration::from_secs(1), kept.clone().oneshot(1)).await;
        assert!(
            matches!(other, Ok(Ok(()))),
            "fail_fast {fail_fast}: {other:?}"
        );
        drop(kept);
    }
}

/// Callers of one cost contending for a waiting limit get its whole rate
/// once a few calls have shown the cost, within the bound: a caller that waits books the layer's recent cost in
/// `poll_ready`, not one token. Booking one, each call gave it up to book
/// its whole cost behind everyone else's, and the slot given up went
/// unused: 20 callers of cost 2 got 0.61 of the rate (a randomised trial).
#[tokio::test(start_paused = true)]
async fn contending_callers_with_costs_get_the_whole_rate() {
    let (burst, rate, period) = (2, 2, Duration::from_millis(100));
    for cost in [2, 3] {
        let (log, inner) = recorder();
        let layer = RateLimitLayer::builder(rate, period)
            .burst(burst.max(cost))
            .cost(|cost: &u32| *cost)
            .build()
            .unwrap();
        let svc = tower::ServiceBuilder::new().layer(layer).service(inner);
        let ten = Duration::from_secs(10);
        let start = Instant::now();
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    while start.elapsed() < ten {
                        svc.clone().oneshot(cost).await.unwrap();
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        let log = log.lock().unwrap();
        // Past the first calls, which booked one token (no cost seen yet):
        // the rate of the 8 s from 2 s on.
        let two = Duration::from_secs(2);
        let units: u64 = log
            .iter()
            .filter(|(at, _)| *at > two && *at <= ten)
            .map(|(_, c)| u64::from(*c))
            .sum();
        let rated = u64::from(rate) * 80;
        assert!(
            units * 100 >= rated * 97,
            "cost {cost}: {units} tokens from 2 s to 10 s, at the rate {rated}"
        );
        let excess = worst_excess(&log, burst.max(cost), rate, period);
        assert!(excess <= 1e-9, "cost {cost}: over the bound by {excess}");
    }
}

/// A call deferred for the rest of its cost held the inner service readied
/// for it, and what readying took below, through the wait: under a second
/// rate limit (3 per 250 ms, burst 1) its token, booked at the readiness
/// (240 ms) and spent at the deferred call (257 ms), let two calls through
/// 67 ms apart where the inner bound allowed one. The deferred call now
/// readies a clone of the inner service once its tokens are there. Found
/// by a randomised trial (seed 34834, shrunk).
#[tokio::test(start_paused = true)]
async fn a_deferred_call_holds_nothing_below_while_it_waits() {
    let (log, inner) = recorder();
    let outer = RateLimitLayer::builder(1, Duration::from_millis(50))
        .burst(3)
        .cost(|cost: &u32| *cost)
        .build()
        .unwrap();
    let below = RateLimitLayer::builder(3, Duration::from_millis(250))
        .burst(1)
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(outer)
        .layer(below)
        .service(inner);
    let calls = [(157, 1), (190, 2), (238, 1)];
    let tasks: Vec<_> = calls
        .iter()
        .map(|&(start_ms, cost)| {
            let svc = svc.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(start_ms)).await;
                svc.oneshot(cost).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Each call counts one against the limit below.
    let mut arrivals: Vec<(Duration, u32)> =
        log.lock().unwrap().iter().map(|&(at, _)| (at, 1)).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 3);
    let excess = worst_excess(&arrivals, 1, 3, Duration::from_millis(250));
    assert!(excess <= 1e-9, "the limit below let through {arrivals:?}");
}
