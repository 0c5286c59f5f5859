//! Contract tests for the adaptive limit: reservations, episodes, holds,
//! classification and configuration (the tracing events: `adaptive_events.rs`).
#![cfg(feature = "adaptive")]
#![allow(clippy::unwrap_used)]

mod support;
use support::{aimd, answer, status};

use std::sync::Arc;
use std::time::Duration;

use tokio::time;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::adaptive::controller::{Change, Controller, RttEstimate, Sample};
use tower_fanout_core::adaptive::{
    AdaptiveLimitLayer, AimdController, GradientController, VegasController, WindowedController,
};
use tower_fanout_core::classify::{GrpcClassify, Outcome};
use tower_fanout_core::error::Overloaded;
use tower_test::mock;

type Res = http::Response<()>;

#[tokio::test(start_paused = true)]
async fn drop_releases_permit_and_reports_nothing() {
    let layer = AdaptiveLimitLayer::new(aimd(1));
    let handle = layer.handle();
    let (mut svc, mut upstream) = mock::spawn_layer::<(), Res, _>(layer);

    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.in_flight(), 1);
    let fut = svc.call(());
    let _req = upstream.next_request().await.unwrap();
    // The limit is full: a second caller waits.
    let mut other = mock::Spawn::new(svc.get_ref().clone());
    assert_pending!(other.poll_ready());
    drop(fut);
    assert!(other.is_woken());
    assert_ready_ok!(other.poll_ready());
    drop(other);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.limit(), 1, "a cancelled call moves nothing");
}

#[tokio::test(start_paused = true)]
async fn dropped_ready_service_gives_its_permit_back() {
    let layer = AdaptiveLimitLayer::new(aimd(2));
    let handle = layer.handle();
    let (mut svc, _upstream) = mock::spawn_layer::<(), Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.in_flight(), 1);
    drop(svc);
    assert_eq!(handle.in_flight(), 0);
}

/// Starts `n` calls through clones of `svc` and answers them all with `code`
/// after 100 ms, optionally with a `Retry-After`.
async fn burst<S>(
    svc: &S,
    upstream: &mut mock::Handle<(), Res>,
    n: usize,
    code: u16,
    retry_after: Option<u64>,
) where
    S: tower::Service<(), Response = Res, Error = tower_fanout_core::BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    burst_after(
        svc,
        upstream,
        n,
        code,
        retry_after,
        Duration::from_millis(100),
    )
    .await;
}

/// [`burst`], answered after `rtt`.
async fn burst_after<S>(
    svc: &S,
    upstream: &mut mock::Handle<(), Res>,
    n: usize,
    code: u16,
    retry_after: Option<u64>,
    rtt: Duration,
) where
    S: tower::Service<(), Response = Res, Error = tower_fanout_core::BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let (calls, pending) = start(svc, upstream, n).await;
    time::advance(rtt).await;
    for send in pending {
        send.send_response(answer(code, retry_after));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

/// Starts `n` calls through clones of `svc`; returns them and the handles
/// that answer them, in the order they reached `upstream`.
async fn start<S>(
    svc: &S,
    upstream: &mut mock::Handle<(), Res>,
    n: usize,
) -> (
    Vec<tokio::task::JoinHandle<Result<Res, tower_fanout_core::BoxError>>>,
    Vec<mock::SendResponse<Res>>,
)
where
    S: tower::Service<(), Response = Res, Error = tower_fanout_core::BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let calls = (0..n)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        pending.push(upstream.next_request().await.unwrap().1);
    }
    (calls, pending)
}

#[tokio::test(start_paused = true)]
async fn one_decrease_per_congestion_episode() {
    let layer = AdaptiveLimitLayer::new(aimd(20));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    // Twenty calls in flight all fail together: one signal, one cut.
    burst(&svc, &mut upstream, 20, 429, None).await;
    assert_eq!(handle.limit(), 18);
    // Calls started after the cut fail again: a new episode, a new cut.
    // (Calls started at the very instant of the cut count as before it.)
    time::advance(Duration::from_millis(1)).await;
    burst(&svc, &mut upstream, 18, 503, None).await;
    assert_eq!(handle.limit(), 16);
}

#[tokio::test(start_paused = true)]
async fn caller_errors_neither_raise_nor_lower() {
    let layer = AdaptiveLimitLayer::new(aimd(8));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    for _ in 0..5 {
        burst(&svc, &mut upstream, 8, 404, None).await;
    }
    assert_eq!(handle.limit(), 8);
    // The same load answered with 200s raises it (+1 per round trip).
    for _ in 0..5 {
        burst(&svc, &mut upstream, 8, 200, None).await;
    }
    assert!(handle.limit() > 8);
}

/// Whether a clone of `svc` gets ready now, polled as a task (so that the
/// test can advance the clock and poll it again).
fn ready_task<S>(svc: &S) -> tokio_test::task::Spawn<impl Future<Output = ()>>
where
    S: tower::Service<(), Response = Res, Error = tower_fanout_core::BoxError> + Clone,
{
    let mut svc = svc.clone();
    tokio_test::task::spawn(async move {
        svc.ready().await.unwrap();
    })
}

#[tokio::test(start_paused = true)]
async fn long_retry_after_holds_new_calls_then_resumes() {
    let layer = AdaptiveLimitLayer::new(aimd(20));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    burst(&svc, &mut upstream, 20, 429, Some(30)).await;
    let answered = time::Instant::now();
    // A quota spent: a lower limit would not bring it back sooner, so the
    // limit stays where it was (it neither collapses nor moves) ...
    assert_eq!(handle.limit(), 20);
    // ... and the handle says until when (a user trial read "in flight 0,
    // waiting 0" while every caller was held, and could not tell a pause
    // from an idle limit).
    assert_eq!(
        handle.held_until(),
        Some(answered + Duration::from_secs(30))
    );
    // ... and no call goes out until the wait is over: each would only be
    // refused.
    let mut ready = ready_task(&svc);
    assert_pending!(ready.poll());
    time::advance(Duration::from_secs(29)).await;
    assert_pending!(ready.poll());
    time::advance(Duration::from_secs(1)).await;
    assert!(ready.is_woken());
    assert!(ready.poll().is_ready());
    assert_eq!(handle.held_until(), None);
    drop(ready);
    // After the wait the controller listens again: not frozen for good.
    burst(&svc, &mut upstream, 20, 429, None).await;
    assert_eq!(handle.limit(), 18);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_sheds_during_a_hold() {
    let layer = AdaptiveLimitLayer::new(aimd(20)).fail_fast();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    burst(&svc, &mut upstream, 20, 429, Some(30)).await;
    // Held: a fail-fast service refuses at once instead of waiting 30 s.
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<Overloaded>());
    time::advance(Duration::from_secs(30)).await;
    burst(&svc, &mut upstream, 1, 200, None).await;
}

#[tokio::test(start_paused = true)]
async fn max_hold_caps_a_very_long_retry_after() {
    let layer = AdaptiveLimitLayer::new(aimd(20)).max_hold(Duration::from_secs(10));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    // An hour's Retry-After: new calls are held for ten seconds, not the hour.
    burst(&svc, &mut upstream, 20, 429, Some(3600)).await;
    assert_eq!(handle.limit(), 20);
    let mut ready = ready_task(&svc);
    time::advance(Duration::from_secs(9)).await;
    assert_pending!(ready.poll());
    time::advance(Duration::from_secs(1)).await;
    assert!(ready.poll().is_ready(), "held no longer than max_hold");
    drop(ready);
    burst(&svc, &mut upstream, 20, 429, None).await;
    assert_eq!(handle.limit(), 18, "listening again");
}

/// `max_hold` of zero turns holds off: a long `Retry-After` is then
/// congestion the controller hears. It was taken as a hold ending at once,
/// which held nothing and kept the overload from the controller, so a spent
/// quota answered every call with 429 while the limit stayed put.
#[tokio::test(start_paused = true)]
async fn a_zero_max_hold_leaves_long_retry_afters_to_the_controller() {
    let layer = AdaptiveLimitLayer::new(aimd(20)).max_hold(Duration::ZERO);
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    burst(&svc, &mut upstream, 20, 200, None).await;
    let limit = handle.limit();
    // The first `Retry-After` turns pacing on (its refusals are answered
    // by that); the next episode's are congestion.
    burst(&svc, &mut upstream, limit, 429, Some(3600)).await;
    assert_eq!(handle.limit(), limit);
    time::advance(Duration::from_millis(1)).await;
    burst(&svc, &mut upstream, limit, 429, Some(3600)).await;
    assert!(handle.limit() < limit, "{} from {limit}", handle.limit());
    // Nothing is held.
    let mut ready = ready_task(&svc);
    assert!(ready.poll().is_ready());
}

#[tokio::test(start_paused = true)]
async fn short_retry_after_paces_then_is_ordinary_congestion() {
    let layer = AdaptiveLimitLayer::new(aimd(20));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    // Retry-After 0: shorter than four RTTs, no hold. The first one turns
    // pacing on, which answers the refusals of calls sent unpaced; later
    // ones are one episode, one cut, as without a Retry-After.
    burst(&svc, &mut upstream, 20, 429, Some(0)).await;
    assert_eq!(handle.limit(), 20);
    time::advance(Duration::from_millis(1)).await;
    burst(&svc, &mut upstream, 20, 429, Some(0)).await;
    assert_eq!(handle.limit(), 18);
    time::advance(Duration::from_millis(1)).await;
    burst(&svc, &mut upstream, 18, 429, Some(0)).await;
    assert_eq!(handle.limit(), 16);
}

#[tokio::test(start_paused = true)]
async fn retry_after_paces_new_calls() {
    let layer = AdaptiveLimitLayer::new(aimd(8));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    // Unpaced, calls go out together.
    burst(&svc, &mut upstream, 8, 200, None).await;
    let limit = handle.limit();
    let ready: Vec<_> = (0..3).map(|_| ready_task(&svc)).collect();
    for mut r in ready {
        assert!(r.poll().is_ready());
    }
    // A rate cap answers a burst with 429 + Retry-After: from then on
    // admissions are paced at 1.25 × limit per lowest RTT (100 ms here).
    burst(&svc, &mut upstream, limit, 429, Some(0)).await;
    assert_eq!(handle.limit(), limit, "pacing answers it, not a cut");
    let gap = Duration::from_millis(100).div_f64(limit as f64 * 1.25);
    let mut ready: Vec<_> = (0..3).map(|_| ready_task(&svc)).collect();
    assert!(ready[0].poll().is_ready());
    assert_pending!(ready[1].poll());
    assert_pending!(ready[2].poll());
    time::advance(gap + Duration::from_millis(1)).await;
    assert!(ready[1].poll().is_ready());
    assert_pending!(ready[2].poll());
    time::advance(gap).await;
    assert!(ready[2].poll().is_ready());
}

/// Calls waiting for their pacing slots when a long `Retry-After` starts a
/// hold are held too: their slots came and they went out into the spent
/// quota, the hold checked only by calls without a permit yet.
#[tokio::test(start_paused = true)]
async fn a_hold_begun_while_calls_wait_for_their_pace_holds_them_too() {
    let layer = AdaptiveLimitLayer::new(aimd(8));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    burst(&svc, &mut upstream, 8, 200, None).await;
    let limit = handle.limit();
    // Pacing on.
    burst(&svc, &mut upstream, limit, 429, Some(0)).await;
    let gap = Duration::from_millis(100).div_f64(limit as f64 * 1.25);
    // One call goes out in its slot, two more wait for theirs.
    let (calls, mut pending) = start(&svc, &mut upstream, 1).await;
    let mut waiting: Vec<_> = (0..2).map(|_| ready_task(&svc)).collect();
    for w in &mut waiting {
        assert_pending!(w.poll());
    }
    // The one out is answered: the quota is spent for 30 s.
    pending.pop().unwrap().send_response(answer(429, Some(30)));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // Their slots come and go: they stay held, their permits back.
    time::advance(gap * 3).await;
    for w in &mut waiting {
        assert_pending!(w.poll());
    }
    assert_eq!(handle.in_flight(), 0);
    time::advance(Duration::from_secs(30)).await;
    // After the hold they go out, paced again.
    assert!(waiting[0].poll().is_ready());
    time::advance(gap + Duration::from_millis(1)).await;
    assert!(waiting[1].poll().is_ready());
}

#[tokio::test(start_paused = true)]
async fn pacing_lasts_256_round_trips_when_they_are_long() {
    // Pacing stays on for 256 RTTs after the last `Retry-After`, and at
    // least a minute: with 1 s round trips, 256 s.
    let rtt = Duration::from_secs(1);
    let layer = AdaptiveLimitLayer::new(aimd(8));
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    burst_after(&svc, &mut upstream, 8, 200, None, rtt).await;
    let limit = handle.limit();
    burst_after(&svc, &mut upstream, limit, 429, Some(0), rtt).await;
    let paced = |svc: &_| {
        let mut ready: Vec<_> = (0..2).map(|_| ready_task(svc)).collect();
        assert!(ready[0].poll().is_ready());
        ready[1].poll().is_pending()
    };
    // Past the minute, a finished call sets the pace again: still on.
    time::advance(Duration::from_secs(100)).await;
    burst_after(&svc, &mut upstream, 1, 200, None, rtt).await;
    assert!(paced(&svc), "paced 102 s after the Retry-After");
    // At the 256th round trip it is off.
    time::advance(Duration::from_secs(154)).await;
    burst_after(&svc, &mut upstream, 1, 200, None, rtt).await;
    assert!(!paced(&svc), "unpaced 256 s after it");
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_is_past_four_round_trips_and_a_second() {
    // With 1 s round trips, a 4 s wait is a rate cap's (paced, not held),
    // a 5 s wait a quota's (new calls held).
    let rtt = Duration::from_secs(1);
    for (wait, held) in [(4, false), (5, true)] {
        let layer = AdaptiveLimitLayer::new(aimd(8));
        let (svc, mut upstream) = mock::pair::<(), Res>();
        let svc = ServiceBuilder::new().layer(layer).service(svc);
        burst_after(&svc, &mut upstream, 8, 200, None, rtt).await;
        burst_after(&svc, &mut upstream, 1, 429, Some(wait), rtt).await;
        let mut ready = ready_task(&svc);
        assert_eq!(ready.poll().is_pending(), held, "Retry-After: {wait}");
    }
}

/// Records the outcomes it is told of; answers a success with the limit
/// it has (a change that changes nothing, as a controller at its bound
/// gives) and an overload by halving it.
struct Recorder {
    limit: usize,
    told: Arc<std::sync::Mutex<Vec<Outcome>>>,
    last_rtt: Option<Duration>,
}

impl Controller for Recorder {
    fn initial_limit(&self) -> usize {
        self.limit
    }
    fn update(&mut self, sample: &Sample, _now: time::Instant) -> Option<Change> {
        self.told.lock().unwrap().push(sample.outcome);
        self.last_rtt = Some(sample.rtt);
        if sample.outcome == Outcome::Overload {
            self.limit = (self.limit / 2).max(1);
        }
        Some(Change {
            limit: self.limit,
            reason: "recorder",
        })
    }
    fn rtt(&self) -> RttEstimate {
        RttEstimate {
            short: self.last_rtt,
            long: None,
        }
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
}

fn recorder(limit: usize) -> (AdaptiveLimitLayer, Arc<std::sync::Mutex<Vec<Outcome>>>) {
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = AdaptiveLimitLayer::new(Recorder {
        limit,
        told: told.clone(),
        last_rtt: None,
    });
    (layer, told)
}

#[tokio::test(start_paused = true)]
async fn only_a_decrease_answers_the_overloads_before_it() {
    // A change to the same limit is no decrease: an overload of a call sent
    // before it is news, told to the controller, and cuts.
    let (layer, told) = recorder(4);
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    let (calls, sends) = start(&svc, &mut upstream, 2).await;
    let mut sends = sends.into_iter();
    time::advance(Duration::from_millis(100)).await;
    sends.next().unwrap().send_response(status(200));
    time::advance(Duration::from_millis(1)).await;
    sends.next().unwrap().send_response(status(503));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(*told.lock().unwrap(), [Outcome::Success, Outcome::Overload]);
    assert_eq!(handle.limit(), 2);
    // The handle shows what the controller reports.
    let rtt = Some(Duration::from_millis(101));
    assert_eq!(
        handle.rtt(),
        RttEstimate {
            short: rtt,
            long: None
        }
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_reaches_the_controller_during_a_hold() {
    let (layer, told) = recorder(4);
    let handle = layer.handle();
    let (svc, mut upstream) = mock::pair::<(), Res>();
    let svc = ServiceBuilder::new().layer(layer).service(svc);
    let (calls, sends) = start(&svc, &mut upstream, 3).await;
    let mut sends = sends.into_iter();
    // A spent quota: held for 30 s from now.
    time::advance(Duration::from_millis(100)).await;
    sends.next().unwrap().send_response(answer(429, Some(30)));
    // The calls still out come back within the hold: a success and an
    // overload move nothing and are told nothing.
    time::advance(Duration::from_secs(1)).await;
    sends.next().unwrap().send_response(status(200));
    time::advance(Duration::from_secs(1)).await;
    sends.next().unwrap().send_response(status(503));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(*told.lock().unwrap(), []);
    assert_eq!(handle.limit(), 4);
    // The hold ends at its instant: a call let in then and answered at once
    // is heard.
    time::advance(Duration::from_secs(28)).await;
    let call = tokio::spawn(svc.clone().oneshot(()));
    let (_, send) = upstream.next_request().await.unwrap();
    send.send_response(status(200));
    call.await.unwrap().unwrap();
    assert_eq!(*told.lock().unwrap(), [Outcome::Success]);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_overload() {
    let layer = AdaptiveLimitLayer::new(aimd(10));
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|()| async {
            time::timeout(Duration::from_millis(50), std::future::pending::<Res>()).await
        }));
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<time::error::Elapsed>());
    assert_eq!(handle.limit(), 9);
}

#[tokio::test(start_paused = true)]
async fn custom_classifier_is_used() {
    // Everything is overload, whatever the status.
    let classify = |_: Result<&Res, &(dyn std::error::Error + 'static)>| Outcome::Overload;
    let layer = AdaptiveLimitLayer::new(aimd(10)).classify(classify);
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|()| async {
            Ok::<_, std::convert::Infallible>(status(200))
        }));
    svc.oneshot(()).await.unwrap();
    assert_eq!(handle.limit(), 9);
}

/// gRPC says "overloaded" in an HTTP 200: `grpc-status: 8` in a
/// trailers-only answer. `GrpcClassify` reads it as overload; the default
/// reads the 200 (a gRPC user's limit rose on refusals before it existed).
#[tokio::test(start_paused = true)]
async fn grpc_classify_reads_resource_exhausted_in_a_200_as_overload() {
    fn grpc(code: &'static str) -> Res {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
            .body(())
            .unwrap()
    }
    let server = |code: &'static str| {
        service_fn(move |()| async move { Ok::<_, std::convert::Infallible>(grpc(code)) })
    };

    let layer = AdaptiveLimitLayer::new(aimd(10)).classify(GrpcClassify);
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(server("8"));
    svc.oneshot(()).await.unwrap();
    assert_eq!(handle.limit(), 9, "RESOURCE_EXHAUSTED is an overload");

    let layer = AdaptiveLimitLayer::new(aimd(10)).classify(GrpcClassify);
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(server("0"));
    svc.oneshot(()).await.unwrap();
    assert_eq!(handle.limit(), 10, "OK is no overload");

    let layer = AdaptiveLimitLayer::new(aimd(10));
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(server("8"));
    svc.oneshot(()).await.unwrap();
    assert_eq!(handle.limit(), 10, "the HTTP classifier sees only the 200");
}

#[tokio::test(start_paused = true)]
async fn fail_fast_sheds_when_full() {
    let layer = AdaptiveLimitLayer::new(aimd(1)).fail_fast();
    let (mut svc, mut upstream) = mock::spawn_layer::<(), Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let first = svc.call(());
    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(()).await.unwrap_err();
    assert!(err.is::<Overloaded>());
    let (_, send) = upstream.next_request().await.unwrap();
    send.send_response(status(200));
    first.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn slow_start_finds_a_large_capacity_fast() {
    let layer = AdaptiveLimitLayer::default();
    let handle = layer.handle();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |()| {
            let in_flight = in_flight.clone();
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let n = in_flight.fetch_add(1, SeqCst) + 1;
                time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, SeqCst);
                Ok::<_, std::convert::Infallible>(status(if n > 200 { 429 } else { 200 }))
            }
        }));
    // A closed loop of 400 workers for 20 round trips.
    let start = time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..400 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < Duration::from_secs(2) {
                let _ = svc.clone().oneshot(()).await;
            }
        }));
    }
    let mut first_near = None;
    for rtt in 1..=20 {
        time::sleep(Duration::from_millis(100)).await;
        let l = handle.limit();
        if first_near.is_none() && (160..=240).contains(&l) {
            first_near = Some(rtt);
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let first_near = first_near.unwrap();
    assert!(
        first_near <= 10,
        "reached ±20 % of 200 after {first_near} round trips"
    );
    assert!(handle.rtt().long.is_some());
    assert_eq!(handle.in_flight(), 0);
}

#[test]
fn bad_config_fails_at_build_time() {
    let err = GradientController::builder()
        .min(10)
        .max(5)
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("min limit 10 is above max limit 5"),
        "{err}"
    );
    assert!(AimdController::builder().min(0).build().is_err());
    assert!(VegasController::builder().initial(0).build().is_err());
    assert!(WindowedController::builder().initial(100).build().is_err());
}
