//! Defects found in the review of the core layers (rate, concurrency,
//! keyed, adaptive, backpressure), each with the test that showed it; on
//! tokio's paused clock.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

/// A bucket whose refill does not fit the nanosecond clock (a period of
/// `Duration::MAX`, the natural way to write "a budget that never
/// refills") saturated its arithmetic and admitted every call after the
/// first: the bound of burst + rate × t was gone. Such a setting is now
/// refused when the layer is built, with what to change.
#[cfg(feature = "rate")]
#[tokio::test(start_paused = true)]
async fn a_refill_beyond_the_clock_is_refused_at_build() {
    use tower::{ServiceExt, service_fn};
    use tower_fanout_core::error::RateLimited;
    use tower_fanout_core::rate::RateLimitLayer;

    for (rate, period, burst) in [
        (1, Duration::MAX, 1),
        (2, Duration::MAX, 2),
        (1, Duration::from_secs(400 * 365 * 86_400), 1),
        (1, Duration::from_secs(100 * 365 * 86_400), 10),
    ] {
        match RateLimitLayer::builder(rate, period)
            .burst(burst)
            .fail_fast()
            .build()
        {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("shorter period") && msg.contains("smaller burst"),
                    "{msg}"
                );
            }
            Ok(layer) => {
                // What the old code did: every call admitted.
                let svc = tower::ServiceBuilder::new()
                    .layer(layer)
                    .service(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));
                let mut admitted = 0u32;
                for _ in 0..10 {
                    match svc.clone().oneshot(()).await {
                        Ok(()) => admitted += 1,
                        Err(e) => assert!(e.is::<RateLimited>(), "{e}"),
                    }
                }
                panic!(
                    "{rate} per {period:?}, burst {burst}: built, and admitted {admitted} of 10 at once"
                );
            }
        }
    }

    // A century's refill still fits: one call, then a refusal that says a century.
    let layer = RateLimitLayer::builder(1, Duration::from_secs(100 * 365 * 86_400))
        .fail_fast()
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));
    svc.clone().oneshot(()).await.unwrap();
    let e = svc.clone().oneshot(()).await.unwrap_err();
    let limited = e.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(
        limited.retry_after(),
        Duration::from_secs(100 * 365 * 86_400)
    );
}

/// The same bound for a keyed limit's per-key bucket.
#[cfg(feature = "keyed")]
#[test]
fn a_keyed_refill_beyond_the_clock_is_refused_at_build() {
    use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};

    let err = KeyedLimitLayer::builder(KeyLimit::new().rate(1, Duration::MAX))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("keyed limit default"), "{err}");
    assert!(err.contains("shorter period"), "{err}");
    let err = KeyedLimitLayer::builder(KeyLimit::new())
        .limit_for("quota.example", KeyLimit::new().rate(3, Duration::MAX))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("quota.example"), "{err}");
}

/// A windowed controller whose step up is `usize::MAX` ("straight to the
/// max") overflowed `limit + step`: a panic in a debug build, and in a
/// release build a limit that wrapped round to below where it was.
#[cfg(feature = "adaptive")]
#[test]
fn a_huge_windowed_step_goes_to_the_max() {
    use tokio::time::Instant;
    use tower_fanout_core::adaptive::WindowedController;
    use tower_fanout_core::adaptive::controller::{Change, Controller, Sample};
    use tower_fanout_core::classify::Outcome;

    let mut c = WindowedController::builder()
        .steps(usize::MAX, usize::MAX)
        .build()
        .unwrap();
    let now = Instant::now();
    let fast = Sample {
        outcome: Outcome::Success,
        rtt: Duration::from_millis(10),
        in_flight: 5,
        limit: 5,
        retry_after: None,
    };
    let mut last = None;
    for _ in 0..20 {
        last = c.update(&fast, now);
    }
    assert_eq!(
        last,
        Some(Change {
            limit: 50,
            reason: "increase"
        })
    );
    let refused = Sample {
        outcome: Outcome::Overload,
        ..fast
    };
    for _ in 0..20 {
        last = c.update(&refused, now);
    }
    assert_eq!(
        last,
        Some(Change {
            limit: 2,
            reason: "errors"
        })
    );
}

/// A gradient controller built with a huge tolerance ("never cut on
/// latency": the builder takes any finite tolerance of at least 1)
/// panicked at its first round with a baseline, in
/// `Duration::mul_f64` (baseline × tolerance overflows a `Duration`),
/// inside the response future of the call that ended the round.
#[cfg(feature = "adaptive")]
#[tokio::test(start_paused = true)]
async fn a_huge_gradient_tolerance_never_cuts_on_latency() {
    use tokio::time::Instant;
    use tower_fanout_core::adaptive::GradientController;
    use tower_fanout_core::adaptive::controller::{Controller, Sample};
    use tower_fanout_core::classify::Outcome;

    for tolerance in [1e300, f64::MAX] {
        let mut c = GradientController::builder()
            .tolerance(tolerance)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let mut limit = c.initial_limit();
        let mut changes = Vec::new();
        for i in 0..400u64 {
            // Quick answers, then ten times slower: no latency cut ever.
            let rtt = Duration::from_millis(if i < 200 { 10 } else { 100 });
            let sample = Sample {
                outcome: Outcome::Success,
                rtt,
                in_flight: limit,
                limit,
                retry_after: None,
            };
            if let Some(change) = c.update(&sample, t0 + Duration::from_millis(10 * (i + 1))) {
                changes.push(change);
                limit = change.limit;
            }
        }
        assert!(c.rtt().long.is_some(), "a baseline was learnt");
        assert!(changes.iter().all(|c| c.reason != "latency"), "{changes:?}");
    }
}

/// A waiting limiter with costs above one keeps the bound however many
/// services were ready together: each books a token in `poll_ready`, and
/// a call whose rest of the cost is not there yet waits for it before the
/// inner service sees it. Before, four services ready together on a bucket
/// of 4 each called at once with a cost of 4: 16 tokens in no time.
#[cfg(feature = "rate")]
#[tokio::test(start_paused = true)]
async fn services_ready_together_keep_the_bound_with_costs() {
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;
    use tower::{Service, ServiceExt, service_fn};

    let layer = support::one_token_every(Duration::from_secs(1), 4);
    let start = Instant::now();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |cost: u32| {
            seen.lock().unwrap().push((start.elapsed(), cost));
            async { Ok::<_, std::io::Error>(()) }
        }));
    let mut ready = Vec::new();
    for _ in 0..4 {
        let mut s = svc.clone();
        s.ready().await.unwrap();
        ready.push(s);
    }
    let calls: Vec<_> = ready.iter_mut().map(|s| s.call(4)).collect();
    for call in futures_util_join(calls).await {
        call.unwrap();
    }
    // Each call gives up the token it booked in `poll_ready` and books its
    // whole cost in one stretch: 4 tokens every 4 s, after the 4 tokens
    // booked for 0-3 s (given up behind later bookings) went unused,
    // at most burst + rate x t between any two arrivals, to the token. (It
    // was 3, 6, 9 and 12 s: each call spent its first token, booked for
    // 0 s, seconds later beside three new ones, 16 tokens in 9 s where 13
    // were allowed.)
    let secs = |n| Duration::from_secs(n);
    assert_eq!(
        *arrivals.lock().unwrap(),
        [(secs(4), 4), (secs(8), 4), (secs(12), 4), (secs(16), 4)]
    );
    // A caller that has to wait books the cost the calls repeat, 4: a call
    // of cost 1 after them waits for 4 tokens (at 20 s, where one token
    // was there at 17 s), takes one and gives three back.
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(start.elapsed(), secs(20));
}

/// Polls every future to completion, together.
#[cfg(feature = "rate")]
async fn futures_util_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// A call waiting for the rest of its cost that the caller drops gives the
/// tokens back: the next caller does not wait for them.
#[cfg(feature = "rate")]
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_waiting_for_its_cost_gives_the_tokens_back() {
    use tokio::time::Instant;
    use tower::{Service, ServiceExt, service_fn};

    let layer = support::one_token_every(Duration::from_secs(1), 4);
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: u32| async { Ok::<_, std::io::Error>(()) }));
    let start = Instant::now();
    // Spend 3 of the 4 tokens.
    svc.clone().oneshot(3).await.unwrap();
    // A call of 4 has 1 token there and waits 3 s for the rest; dropped.
    let mut s = svc.clone();
    s.ready().await.unwrap();
    let call = s.call(4);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), call)
            .await
            .is_err()
    );
    // Its 4 tokens went back: 1 is there now (at 0.5 s), so a call of 1 goes at once.
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

/// Above 1000 calls a second a fail-fast refusal's wait is under a
/// millisecond, and the message said "retry after 0 ms".
#[test]
fn a_sub_millisecond_retry_after_is_not_shown_as_zero() {
    use tower_fanout_core::error::RateLimited;

    let msg = RateLimited::new(Duration::from_micros(200)).to_string();
    assert_eq!(msg, "rate limited: retry after 0.2 ms");
    let msg = RateLimited::new(Duration::from_millis(100)).to_string();
    assert_eq!(msg, "rate limited: retry after 100 ms");
}

/// From a second on the wait is said in seconds to the millisecond: a user
/// read "retry after 9999.988884 ms" for a ten-second wait.
#[test]
fn a_wait_of_seconds_is_said_in_seconds() {
    use tower_fanout_core::error::RateLimited;

    let said = |wait: Duration| RateLimited::new(wait).to_string();
    assert_eq!(
        said(Duration::from_nanos(9_999_988_884)),
        "rate limited: retry after 10 s"
    );
    assert_eq!(
        said(Duration::from_millis(1500)),
        "rate limited: retry after 1.5 s"
    );
    assert_eq!(
        said(Duration::from_millis(61_234)),
        "rate limited: retry after 61.234 s"
    );
    assert_eq!(
        said(Duration::from_millis(999)),
        "rate limited: retry after 999 ms"
    );
    assert_eq!(
        RateLimited::past_deadline(Duration::from_secs(2)).to_string(),
        "rate limited: retry after 2 s, which would end past the call's deadline"
    );
    // Exact in whole seconds however long (through an f64, u64::MAX
    // seconds read 18446744073709551616).
    assert_eq!(
        RateLimited::new(Duration::from_secs(u64::MAX)).to_string(),
        "rate limited: retry after 18446744073709551615 s"
    );
    // A wait the downstream asked for says so, with its answer's status.
    let asked = RateLimited::past_deadline(Duration::from_secs(2)).with_status(503);
    assert_eq!(asked.status(), Some(503));
    assert_eq!(RateLimited::new(Duration::from_secs(2)).status(), None);
    assert_eq!(
        asked.to_string(),
        "rate limited by the downstream (its answer: status 503): retry after 2 s, which would \
         end past the call's deadline"
    );
}

/// A downstream whose quota is spent: every call answers 429 with a 30 s
/// `Retry-After`, a wait long enough for an adaptive limit to hold.
#[cfg(feature = "adaptive")]
fn quota_spent() -> impl tower::Service<
    (),
    Response = http::Response<()>,
    Error = std::io::Error,
    Future = impl Future<Output = Result<http::Response<()>, std::io::Error>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|()| async {
        Ok::<_, std::io::Error>(
            http::Response::builder()
                .status(429)
                .header("retry-after", "30")
                .body(())
                .unwrap(),
        )
    })
}

/// A fail-fast adaptive limit holding new calls after a long Retry-After
/// refused with the message of a full limit ("no permit free ... raise the
/// limit"), which sends a user to the wrong remedy: the hold is named now.
#[cfg(feature = "adaptive")]
#[tokio::test(start_paused = true)]
async fn a_refusal_during_a_hold_names_the_hold() {
    use tower::ServiceExt;
    use tower_fanout_core::adaptive::{AdaptiveLimitLayer, AimdController};
    use tower_fanout_core::error::Overloaded;

    let controller = AimdController::builder().initial(4).build().unwrap();
    let layer = AdaptiveLimitLayer::new(controller).fail_fast();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(quota_spent());
    let answer = svc.clone().oneshot(()).await.unwrap();
    assert_eq!(answer.status(), 429);
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let refusal = err.downcast_ref::<Overloaded>().expect("Overloaded");
    // A caller can tell the hold from a full limit without reading the text.
    assert!(refusal.is_held(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("Retry-After") && msg.contains("max_hold"),
        "{msg}"
    );
    // A full limit still says so.
    assert!(!Overloaded::new().is_held());
    let full = Overloaded::new().to_string();
    assert!(full.contains("no permit free"), "{full}");
}

/// What the rate module's docs now say of a rate limit over a concurrency
/// limit: tokens are taken as services get ready, so callers that took
/// theirs 100 ms apart and then queued for permits go out together when
/// the permits free together (10/s with a burst of 1 here, and three calls
/// at the same instant).
#[cfg(all(feature = "rate", feature = "concurrency"))]
#[tokio::test(start_paused = true)]
async fn tokens_taken_before_a_permit_wait_go_out_together() {
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;
    use tower::{ServiceExt, service_fn};
    use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
    use tower_fanout_core::rate::RateLimitLayer;

    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let svc = tower::ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(10, Duration::from_secs(1))
                .burst(1)
                .build()
                .unwrap(),
        )
        .layer(ConcurrencyLimitLayer::new(3).unwrap())
        .service(service_fn({
            let calls = calls.clone();
            move |_: u32| {
                let now = start.elapsed();
                calls.lock().unwrap().push(now.as_millis());
                // Every answer comes at the next whole second.
                let end = Duration::from_secs(now.as_secs() + 1);
                async move {
                    tokio::time::sleep(end - now).await;
                    Ok::<_, std::io::Error>(())
                }
            }
        }));
    let tasks: Vec<_> = (0..6)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(*calls.lock().unwrap(), [0, 100, 200, 1000, 1000, 1000]);
}

/// A backpressure service first used on one runtime (a start-up or test
/// runtime) spawns its workers there; once that runtime is gone every call
/// is refused with `Closed`, whose message said only "its workers have
/// stopped", not why nor what to do.
#[cfg(feature = "backpressure")]
#[test]
fn closed_says_the_workers_runtime_is_gone_and_what_to_do() {
    use tower::{ServiceExt, service_fn};
    use tower_fanout_core::backpressure::BackpressureLayer;
    use tower_fanout_core::error::Closed;

    let svc = tower::ServiceBuilder::new()
        .layer(BackpressureLayer::new(1).unwrap())
        .service(service_fn(
            |n: u32| async move { Ok::<_, std::io::Error>(n) },
        ));
    // Paused clocks, so a call that waits instead of answering fails the
    // test through `at_once` rather than hanging it.
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = runtime();
    let answer = first.block_on(support::at_once("the first call", svc.clone().oneshot(1)));
    assert_eq!(answer.unwrap(), 1);
    drop(first);
    let second = runtime();
    let err = second
        .block_on(support::at_once("the call after", svc.clone().oneshot(2)))
        .unwrap_err();
    assert!(err.is::<Closed>(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("runtime") && msg.contains("build the service"),
        "{msg}"
    );
}

/// A closure classifier reads no `Retry-After`: a spent quota (429 with a
/// 30 s wait) was congestion to it, so new calls went straight out into
/// the quota. Wrapped in `HttpClassify::with_outcome`, the closure decides
/// the outcomes and the hold is kept.
#[cfg(feature = "adaptive")]
#[tokio::test(start_paused = true)]
async fn a_closure_classifier_keeps_the_retry_after_hold_when_wrapped() {
    use tower::ServiceExt;
    use tower_fanout_core::adaptive::{AdaptiveLimitLayer, AimdController};
    use tower_fanout_core::classify::HttpClassify;
    use tower_fanout_core::error::Overloaded;

    type Res = http::Response<()>;
    let rules = |result: Result<&Res, &(dyn std::error::Error + 'static)>| match result {
        Ok(r) => HttpClassify::status(r.status()),
        Err(e) => HttpClassify::error(e),
    };
    let controller = || AimdController::builder().initial(4).build().unwrap();

    let wrapped = AdaptiveLimitLayer::new(controller())
        .classify(HttpClassify::with_outcome(rules))
        .fail_fast();
    let svc = tower::ServiceBuilder::new()
        .layer(wrapped)
        .service(quota_spent());
    assert_eq!(svc.clone().oneshot(()).await.unwrap().status(), 429);
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let refusal = err.downcast_ref::<Overloaded>().expect("held");
    assert!(refusal.is_held(), "{err}");

    // The bare closure: no hold, the second call goes out.
    let bare = AdaptiveLimitLayer::new(controller())
        .classify(rules)
        .fail_fast();
    let svc = tower::ServiceBuilder::new()
        .layer(bare)
        .service(quota_spent());
    assert_eq!(svc.clone().oneshot(()).await.unwrap().status(), 429);
    assert_eq!(svc.clone().oneshot(()).await.unwrap().status(), 429);
}

/// An inner service whose `call` panics (a bug below the limit).
#[cfg(any(feature = "rate", feature = "keyed"))]
#[derive(Clone)]
struct PanicsInCall;

#[cfg(any(feature = "rate", feature = "keyed"))]
impl<Req> tower::Service<Req> for PanicsInCall {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<(), std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        panic!("a bug in the inner service's call");
    }
}

/// A panic in the inner service's `call` spent the token the call had
/// booked (the booking was cleared before the call): with 1 an hour, an
/// hour without calls. It is given back now, by the rate limit and by the
/// keyed one, as the Redis rate limit always did.
#[cfg(all(feature = "rate", feature = "keyed"))]
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_call_gives_the_token_back() {
    use std::panic::AssertUnwindSafe;
    use tower::{Layer, Service, ServiceExt};
    use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};
    use tower_fanout_core::rate::RateLimitLayer;

    let hour = Duration::from_secs(3600);
    let layer = RateLimitLayer::builder(1, hour).burst(1).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(PanicsInCall);
    ServiceExt::<()>::ready(&mut svc).await.unwrap();
    assert_eq!(handle.tokens(), 0, "booked");
    let called = std::panic::catch_unwind(AssertUnwindSafe(|| drop(svc.call(()))));
    assert!(called.is_err());
    drop(svc);
    assert_eq!(handle.tokens(), 1, "the rate limit's token is back");

    let keyed = KeyedLimitLayer::builder_with_key(
        |_: &u8| 0u8,
        KeyLimit::new().concurrency(1).rate(1, hour).burst(1),
    )
    .build()
    .unwrap();
    let keys = keyed.handle();
    let svc = keyed.layer(PanicsInCall);
    let call = tokio::spawn(svc.clone().oneshot(0u8)).await;
    assert!(call.unwrap_err().is_panic());
    assert_eq!(keys.tokens(&0), Some(1), "the keyed limit's token is back");
    assert_eq!(keys.in_flight(&0), 0, "and its permit");
}

/// A handle's `Debug` shows what its accessors read (a user trial found
/// the concurrency limit's printing the semaphore's packed state word).
#[cfg(all(feature = "concurrency", feature = "backpressure"))]
#[tokio::test]
async fn handles_debug_as_their_accessors_read() {
    use tower::ServiceExt;
    let layer = tower_fanout_core::concurrency::ConcurrencyLimitLayer::new(5).unwrap();
    let handle = layer.handle();
    let mut svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|x: u32| async move { Ok::<_, tower_fanout_core::BoxError>(x) }),
    );
    svc.ready().await.unwrap();
    assert_eq!(
        format!("{handle:?}"),
        "ConcurrencyLimitHandle { limit: 5, in_flight: 1, available: 4, waiting: 0 }"
    );
    let queued = tower::Layer::layer(
        &tower_fanout_core::backpressure::BackpressureLayer::<u32>::with_queue(1, 2).unwrap(),
        tower::service_fn(|x: u32| async move { Ok::<_, tower_fanout_core::BoxError>(x) }),
    );
    let text = format!("{:?}", queued.handle());
    assert!(
        text.contains("waiting: 0") && text.contains("slots_in_use: 0"),
        "{text}"
    );
}
