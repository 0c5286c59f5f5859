//! Cancellation in the adaptive limit, state by state: a service dropped
//! while it waits for a permit, while it sleeps out a long `Retry-After`'s
//! hold, while it waits for its pacing slot, when ready but unused (and its
//! clones); a response future dropped in flight, paced or not, during a
//! hold or not. Each must give its permit back and report nothing to the
//! controller (the module docs: "a call whose future is dropped gives its
//! permit back and reports nothing"), and leave later calls to go as they
//! would have.
#![cfg(feature = "adaptive")]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::controller::{Change, Controller, Sample};
use tower_fanout_core::adaptive::{AdaptiveLimitHandle, AdaptiveLimitLayer};

type Res = http::Response<()>;

/// What the inner service does with a call.
#[derive(Debug, Clone, Copy)]
enum Req {
    /// 200 after this long.
    Ok(Duration),
    /// 429 at once, with a `Retry-After` of this many seconds.
    TooMany(u64),
    /// Never answers.
    Never,
}

/// A controller that keeps its limit and records every sample it is given.
struct Recording {
    limit: usize,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Controller for Recording {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample, _now: Instant) -> Option<Change> {
        self.samples.lock().unwrap().push(*sample);
        None
    }

    fn name(&self) -> &'static str {
        "recording"
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Svc = tower_fanout_core::adaptive::AdaptiveLimit<
    tower::util::ServiceFn<
        fn(Req) -> std::pin::Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>,
    >,
    tower_fanout_core::classify::HttpClassify,
>;

fn inner(req: Req) -> std::pin::Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>> {
    Box::pin(async move {
        let resp = match req {
            Req::Ok(after) => {
                time::sleep(after).await;
                http::Response::new(())
            }
            Req::TooMany(secs) => http::Response::builder()
                .status(429)
                .header("retry-after", secs.to_string())
                .body(())?,
            Req::Never => std::future::pending().await,
        };
        Ok(resp)
    })
}

/// A limit of `limit` over [`inner`], its handle, and the samples its
/// controller is given.
fn limited(limit: usize) -> (Svc, AdaptiveLimitHandle, Arc<Mutex<Vec<Sample>>>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let layer = AdaptiveLimitLayer::new(Recording {
        limit,
        samples: samples.clone(),
    });
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(inner as fn(Req) -> _));
    (svc, handle, samples)
}

fn sampled(samples: &Mutex<Vec<Sample>>) -> usize {
    samples.lock().unwrap().len()
}

/// A clone of `svc` getting ready, as a task the test polls.
fn ready_task(svc: &Svc) -> tokio_test::task::Spawn<impl Future<Output = Svc>> {
    let svc = svc.clone();
    tokio_test::task::spawn(async move { svc.ready_oneshot().await.unwrap() })
}

/// A call through a clone of `svc`, as a task the test polls.
fn call_task(
    svc: &Svc,
    req: Req,
) -> tokio_test::task::Spawn<impl Future<Output = Result<Res, BoxError>>> {
    let svc = svc.clone();
    tokio_test::task::spawn(svc.oneshot(req))
}

fn assert_at_rest(handle: &AdaptiveLimitHandle, when: &str) {
    assert_eq!(
        (handle.in_flight(), handle.waiting()),
        (0, 0),
        "{when}: (in flight, waiting)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_in_any_state_gives_its_permit_back_and_reports_nothing() {
    let (svc, handle, samples) = limited(2);
    // A lowest RTT of 100 ms, for the pace to come.
    svc.clone().oneshot(Req::Ok(ms(100))).await.unwrap();
    assert_eq!(sampled(&samples), 1);

    // In flight.
    let mut call = call_task(&svc, Req::Ok(ms(100)));
    assert_pending!(call.poll());
    assert_eq!(handle.in_flight(), 1);
    time::advance(ms(50)).await;
    drop(call);
    assert_at_rest(&handle, "dropped in flight");

    // Waiting for a permit, behind two calls in flight; then those two.
    let (mut a, mut b) = (call_task(&svc, Req::Never), call_task(&svc, Req::Never));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    let mut queued = ready_task(&svc);
    assert_pending!(queued.poll());
    let mut queued_call = call_task(&svc, Req::Ok(ms(1)));
    assert_pending!(queued_call.poll());
    assert_eq!((handle.in_flight(), handle.waiting()), (2, 2));
    drop(queued);
    drop(queued_call);
    assert_eq!((handle.in_flight(), handle.waiting()), (2, 0));
    drop((a, b));
    assert_at_rest(&handle, "dropped waiting for a permit");

    // Ready and never called; its clone holds nothing.
    let ready = svc.clone().ready_oneshot().await.unwrap();
    let clone = ready.clone();
    assert_eq!(handle.in_flight(), 1);
    drop(ready);
    drop(clone);
    assert_at_rest(&handle, "ready, dropped unused");

    // Pacing: a Retry-After of 1 s (not a quota) turns it on, at 1.25 ×
    // limit per lowest RTT: one call each 40 ms.
    let before = sampled(&samples);
    assert_eq!(
        svc.clone().oneshot(Req::TooMany(1)).await.unwrap().status(),
        429
    );
    let mut first = ready_task(&svc);
    let first = assert_ready!(first.poll());
    let mut paced = ready_task(&svc);
    assert_pending!(paced.poll());
    assert_eq!(handle.in_flight(), 2, "the paced call holds its permit");
    drop(paced);
    drop(first);
    assert_at_rest(&handle, "dropped waiting for its pacing slot");
    // A paced call in flight.
    time::advance(ms(100)).await;
    let mut call = call_task(&svc, Req::Ok(ms(100)));
    assert_pending!(call.poll());
    time::advance(ms(50)).await;
    assert_pending!(call.poll());
    drop(call);
    assert_at_rest(&handle, "a paced call dropped in flight");

    // A quota: a Retry-After of 30 s holds new calls. A call in flight
    // when it came, and one held, are dropped.
    time::advance(ms(100)).await;
    let mut in_flight = call_task(&svc, Req::Never);
    assert_pending!(in_flight.poll());
    time::advance(ms(100)).await;
    svc.clone().oneshot(Req::TooMany(30)).await.unwrap();
    let mut held = ready_task(&svc);
    assert_pending!(held.poll());
    assert_eq!((handle.in_flight(), handle.waiting()), (1, 0));
    time::advance(Duration::from_secs(10)).await;
    assert_pending!(held.poll());
    drop(held);
    drop(in_flight);
    assert_at_rest(&handle, "dropped during a hold");

    assert_eq!(
        sampled(&samples),
        before,
        "a dropped call is no sample (and the 429s were answered by pacing and the hold)"
    );
    assert_eq!(handle.limit(), 2);

    // After the hold, a call goes at once and is the next sample.
    time::advance(Duration::from_secs(20)).await;
    let start = Instant::now();
    svc.clone().oneshot(Req::Ok(ms(10))).await.unwrap();
    assert_eq!(start.elapsed(), ms(10));
    assert_eq!(sampled(&samples), before + 1);
    let last = *samples.lock().unwrap().last().unwrap();
    assert_eq!((last.rtt, last.in_flight), (ms(10), 1));
    assert_at_rest(&handle, "at the end");
}

/// A reservation dropped while it waits for its pacing slot gives the slot
/// back: callers that give up (a timeout around `ready`) must not push
/// every later call's slot further out. Before, each dropped reservation
/// kept its slot, and after 50 of them, each given up after 1 ms, a call on
/// the idle limit waited 0.95 s (50 slots of 20 ms) for its turn.
#[tokio::test(start_paused = true)]
async fn dropped_paced_reservations_do_not_delay_later_calls() {
    let (svc, handle, _samples) = limited(4);
    svc.clone().oneshot(Req::Ok(ms(100))).await.unwrap();
    svc.clone().oneshot(Req::TooMany(1)).await.unwrap();
    // Paced: 4 × 1.25 calls per 100 ms, one each 20 ms.
    let gap = ms(20);
    let given_up = Arc::new(AtomicUsize::new(0));
    for _ in 0..50 {
        match time::timeout(ms(1), svc.clone().ready_oneshot()).await {
            Ok(ready) => drop(ready.unwrap()),
            Err(_) => {
                given_up.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    assert!(given_up.load(Ordering::Relaxed) >= 25, "the pace held them");
    assert_at_rest(&handle, "after the reservations given up");
    let start = Instant::now();
    let mut ready = svc.clone().ready_oneshot().await.unwrap();
    assert!(
        start.elapsed() <= gap,
        "an idle limit held a call {:?} for slots nobody used",
        start.elapsed()
    );
    drop(ready.call(Req::Ok(ms(1))));
    assert_at_rest(&handle, "at the end");
}
