//! A numerical review of the adaptive controllers against their own docs:
//! each test drives a controller (or the layer) with a deterministic
//! sequence of answers on the paused clock.
#![cfg(feature = "adaptive")]
#![allow(clippy::unwrap_used)]

mod support;
use support::{aimd, answer};

use std::time::Duration;

use tokio::time::{self, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_fanout_core::adaptive::controller::{Controller, Sample};
use tower_fanout_core::adaptive::{AdaptiveLimitLayer, GradientController, VegasController};
use tower_fanout_core::classify::Outcome;
use tower_test::mock;

type Res = http::Response<()>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn success(rtt: Duration, in_flight: usize, limit: usize) -> Sample {
    Sample {
        outcome: Outcome::Success,
        rtt,
        in_flight,
        limit,
        retry_after: None,
    }
}

/// A closed loop of `demand` callers in lock step: each round trip the
/// calls the limit admits (at most `demand`) start together and come back
/// together after `latency(t)`, all successes. Returns the limit after each
/// round trip.
fn lock_step(
    c: &mut dyn Controller,
    demand: usize,
    round_trips: usize,
    latency: impl Fn(usize) -> Duration,
) -> Vec<usize> {
    let mut now = Instant::now();
    let mut limit = c.initial_limit();
    let mut out = Vec::with_capacity(round_trips);
    for i in 0..round_trips {
        let n = limit.min(demand);
        let rtt = latency(i);
        now += rtt;
        for _ in 0..n {
            if let Some(change) = c.update(&success(rtt, n, limit), now) {
                limit = change.limit;
            }
        }
        out.push(limit);
    }
    out
}

/// Starts `n` calls through clones of `svc` and answers them all with
/// `code` after 100 ms.
async fn burst<S>(svc: &S, upstream: &mut mock::Handle<(), Res>, n: usize, code: u16)
where
    S: tower::Service<(), Response = Res, Error = tower_fanout_core::BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    // Every caller takes its permit before any calls: each call then
    // starts with the limit in use.
    let mut ready = Vec::new();
    for _ in 0..n {
        let mut s = svc.clone();
        s.ready().await.unwrap();
        ready.push(s);
    }
    let calls: Vec<_> = ready
        .into_iter()
        .map(|mut s| tokio::spawn(s.call(())))
        .collect();
    let mut pending = Vec::new();
    for _ in 0..n {
        pending.push(upstream.next_request().await.unwrap().1);
    }
    time::advance(ms(100)).await;
    for send in pending {
        send.send_response(answer(code, None));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

/// "Caller errors (other 4xx) neither raise nor lower the limit", for every
/// controller. The round-based ones put them into their rounds: a round of
/// 404s alone ended on time and, the limit being in use, the gradient
/// doubled (slow start), then decayed it (8, 16, then 14, 12).
#[tokio::test(start_paused = true)]
async fn caller_errors_do_not_move_the_round_based_controllers() {
    let controllers: Vec<(&str, Box<dyn Controller>)> = vec![
        (
            "gradient",
            Box::new(GradientController::builder().initial(8).build().unwrap()),
        ),
        (
            "vegas",
            Box::new(VegasController::builder().initial(8).build().unwrap()),
        ),
    ];
    for (name, controller) in controllers {
        let layer = AdaptiveLimitLayer::new(controller);
        let handle = layer.handle();
        let (svc, mut upstream) = mock::pair::<(), Res>();
        let svc = ServiceBuilder::new().layer(layer).service(svc);
        let mut limits = Vec::new();
        for _ in 0..20 {
            burst(&svc, &mut upstream, 8, 404).await;
            limits.push(handle.limit());
        }
        assert!(limits.iter().all(|&l| l == 8), "{name}: {limits:?}");
    }
}

/// A downstream that becomes slower for good (4× its old latency): the
/// gradient comes down, and, its baseline being "the lowest over the last
/// 128 rounds", it takes the new latency as normal once 128 rounds have
/// passed and grows back to the demand. It stayed at its minimum (1) for
/// good: at a limit of 1 or 2, eight rounds hold fewer than the 20 answers
/// a pooled median needs, so the baseline never moved again.
#[test]
fn gradient_follows_a_downstream_that_got_slower_for_good() {
    let mut c = GradientController::default();
    let latency = |i: usize| if i < 100 { ms(100) } else { ms(400) };
    let limits = lock_step(&mut c, 20, 1000, latency);
    assert!(limits[90..100].iter().all(|&l| l >= 20), "{limits:?}");
    assert!(limits[100..120].iter().any(|&l| l < 10), "{limits:?}");
    // Stuck at 1 for all 900 round trips before (no pooled median is
    // taken over rounds of one answer); back within ~260 now.
    assert!(limits[500..].iter().all(|&l| l >= 20), "{limits:?}");
}

/// A `Failure` (a 500) is "counted as an error, but not as overload": a
/// round of nothing but failures is no evidence the limit has room. The
/// gradient doubled on it (8 to 16), as on caller errors.
#[tokio::test(start_paused = true)]
async fn a_round_of_failures_does_not_raise_the_gradient() {
    let layer = AdaptiveLimitLayer::new(GradientController::builder().initial(8).build().unwrap());
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    let mut limits = Vec::new();
    for _ in 0..20 {
        burst(&svc, &mut upstream, 8, 500).await;
        limits.push(handle.limit());
    }
    assert!(limits.iter().all(|&l| l <= 8), "{limits:?}");
}

/// "An overload that carries a long `Retry-After` ... is a quota spent: no
/// new call goes out until the wait is over". The layer dropped such an
/// answer unread when its call was admitted before the last decrease (one
/// decrease per episode), so a cut just before the quota ran out (a 503
/// here) let new calls go out into the spent quota.
#[tokio::test(start_paused = true)]
async fn a_spent_quota_holds_even_when_its_calls_predate_a_cut() {
    let layer = AdaptiveLimitLayer::new(aimd(4));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(upstream.next_request().await.unwrap().1);
    }
    time::advance(ms(100)).await;
    let mut pending = pending.into_iter();
    // A timeout-like refusal first: one cut for the episode.
    pending.next().unwrap().send_response(answer(503, None));
    time::advance(ms(1)).await;
    // Then the quota runs out: the other calls come back 429 + 30 s.
    for send in pending {
        send.send_response(answer(429, Some(30)));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(handle.limit(), 3);
    let mut next = svc.clone();
    let mut ready = tokio_test::task::spawn(async move { next.ready().await.map(|_| ()) });
    tokio_test::assert_pending!(ready.poll(), "held: the quota is spent");
    time::advance(Duration::from_secs(29)).await;
    tokio_test::assert_pending!(ready.poll());
    // For the 30 s asked, not longer.
    time::advance(Duration::from_secs(1)).await;
    assert!(ready.is_woken());
    assert!(ready.poll().is_ready());
}

/// The windowed rule at its boundaries: "under 1 %" and "under 500 ms"
/// are strict, as are "over 10 %" and "over 2 s"; one decision per
/// `window` answers, caller errors left out of the count.
#[test]
fn windowed_thresholds_are_strict_and_decide_once_per_window() {
    use tower_fanout_core::adaptive::WindowedController;
    let now = Instant::now();
    // Feeds one window of `n` answers, `errors` of them overloads, the
    // successes at `rtt`; returns the changes seen (the last is the decision).
    let window = |c: &mut WindowedController, n: usize, errors: usize, rtt: Duration| {
        let mut changes = Vec::new();
        for i in 0..n {
            let mut s = success(rtt, 10, 10);
            if i < errors {
                s.outcome = Outcome::Overload;
            }
            changes.extend(c.update(&s, now).map(|ch| (i, ch.limit, ch.reason)));
        }
        changes
    };
    let build = |n: u32| {
        WindowedController::builder()
            .window(n)
            .initial(10)
            .build()
            .unwrap()
    };
    // Exactly 1 % errors (1 in 100): not under 1 %, so no increase.
    assert_eq!(window(&mut build(100), 100, 1, ms(100)), vec![]);
    assert_eq!(
        window(&mut build(100), 100, 0, ms(100)),
        vec![(99, 12, "increase")]
    );
    // Exactly 10 % (2 in 20): not over 10 %; 3 in 20 is.
    assert_eq!(window(&mut build(20), 20, 2, ms(100)), vec![]);
    assert_eq!(
        window(&mut build(20), 20, 3, ms(100)),
        vec![(19, 7, "errors")]
    );
    // A mean of exactly 500 ms: not under it; exactly 2 s: not over it.
    assert_eq!(window(&mut build(20), 20, 0, ms(500)), vec![]);
    assert_eq!(
        window(&mut build(20), 20, 0, ms(499)),
        vec![(19, 12, "increase")]
    );
    assert_eq!(window(&mut build(20), 20, 0, ms(2000)), vec![]);
    assert_eq!(
        window(&mut build(20), 20, 0, ms(2001)),
        vec![(19, 7, "latency")]
    );
    // Caller errors do not count towards the window.
    let mut c = build(20);
    for _ in 0..50 {
        let s = Sample {
            outcome: Outcome::CallerError,
            ..success(ms(100), 10, 10)
        };
        assert_eq!(c.update(&s, now), None);
    }
    assert_eq!(window(&mut c, 19, 0, ms(100)), vec![]);
    assert_eq!(window(&mut c, 1, 0, ms(100)), vec![(0, 12, "increase")]);
}

/// `Sample::retry_after` is "the wait the downstream asked for with an
/// overload answer; always `None` for other outcomes": a `202 Accepted`
/// with a `Retry-After` (poll again later) is a success and asks for no
/// wait, and a 429's is passed on. (The first 429 with a `Retry-After`
/// turns pacing on and reaches no controller; the next one does.)
#[tokio::test(start_paused = true)]
async fn only_an_overload_answer_passes_its_retry_after_on() {
    use std::sync::{Arc, Mutex};
    use tower_fanout_core::adaptive::controller::Change;

    struct Recorder(Arc<Mutex<Vec<Sample>>>);
    impl Controller for Recorder {
        fn initial_limit(&self) -> usize {
            4
        }
        fn update(&mut self, sample: &Sample, _now: Instant) -> Option<Change> {
            self.0.lock().unwrap().push(*sample);
            None
        }
        fn name(&self) -> &'static str {
            "recorder"
        }
    }

    let samples = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(AdaptiveLimitLayer::new(Recorder(samples.clone())))
        .service(tower::service_fn(|code: u16| async move {
            let answer = http::Response::builder()
                .status(code)
                .header("retry-after", "0.5")
                .body(())?;
            Ok::<_, tower_fanout_core::BoxError>(answer)
        }));
    for code in [202, 429, 429] {
        svc.clone().oneshot(code).await.unwrap();
        time::advance(ms(10)).await;
    }
    let seen: Vec<_> = samples
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.outcome, s.retry_after))
        .collect();
    assert_eq!(
        seen,
        [(Outcome::Success, None), (Outcome::Overload, Some(ms(500)))]
    );
}

/// A controller setting refused when built says what was given, beside
/// what it takes: "backoff must be between 0 and 1" left a user with a
/// computed value to find which one it was.
#[test]
fn a_refused_controller_setting_names_the_value_given() {
    use tower_fanout_core::adaptive::{AimdController, WindowedController};

    let messages = [
        (
            AimdController::builder().backoff(1.5).build().unwrap_err(),
            "got 1.5",
        ),
        (
            AimdController::builder()
                .increase(-2.0)
                .build()
                .unwrap_err(),
            "got -2",
        ),
        (
            GradientController::builder()
                .tolerance(0.5)
                .build()
                .unwrap_err(),
            "got 0.5",
        ),
        (
            VegasController::builder().backoff(0.0).build().unwrap_err(),
            "got 0",
        ),
        (
            WindowedController::builder()
                .latency(Duration::from_secs(3), Duration::from_secs(1))
                .build()
                .unwrap_err(),
            "got 3s above 1s",
        ),
    ];
    for (err, says) in messages {
        let text = err.to_string();
        assert!(text.contains(says), "{text}");
    }
}
