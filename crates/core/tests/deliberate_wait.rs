//! The adaptive limit takes a response's `DeliberateWait` off the latency it
//! gives its controller: time a layer below spent waiting on purpose is not
//! the downstream's.
#![cfg(feature = "adaptive")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{self, Instant};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::DeliberateWait;
use tower_fanout_core::adaptive::AdaptiveLimitLayer;
use tower_fanout_core::adaptive::controller::{Change, Controller, Sample};
use tower_fanout_core::classify::Outcome;

type Res = http::Response<()>;
type Samples = Arc<Mutex<Vec<(Outcome, Duration)>>>;

/// A controller that never moves the limit and keeps every sample it reads.
struct Recorder(Samples);

impl Controller for Recorder {
    fn initial_limit(&self) -> usize {
        4
    }
    fn update(&mut self, sample: &Sample, _now: Instant) -> Option<Change> {
        self.0.lock().unwrap().push((sample.outcome, sample.rtt));
        None
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
}

fn recorder() -> (AdaptiveLimitLayer, Samples) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    (AdaptiveLimitLayer::new(Recorder(samples.clone())), samples)
}

/// A call that takes `took` and answers `status`, noting `waited` of it as
/// spent waiting on purpose.
async fn answer(took: Duration, waited: Duration, status: u16) -> Result<Res, &'static str> {
    time::sleep(took).await;
    let mut response = http::Response::builder().status(status).body(()).unwrap();
    DeliberateWait::add_to(response.extensions_mut(), waited);
    Ok(response)
}

#[tokio::test(start_paused = true)]
async fn a_deliberate_wait_is_taken_off_the_sample() {
    let (layer, samples) = recorder();
    let ms = Duration::from_millis;
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|(took, waited, status)| {
            answer(took, waited, status)
        }));

    // 1 s, 900 ms of it queued at a gate below: the downstream took 100 ms.
    svc.clone().oneshot((ms(1000), ms(900), 200)).await.unwrap();
    // No wait noted: the whole second is the downstream's.
    svc.clone().oneshot((ms(1000), ms(0), 200)).await.unwrap();
    // An overload answer after a wait at a gate: the wait is not its latency either.
    svc.clone().oneshot((ms(700), ms(500), 429)).await.unwrap();
    // A wait noted longer than the call (a clock that disagrees) gives zero, not a panic.
    svc.clone().oneshot((ms(10), ms(50), 200)).await.unwrap();

    assert_eq!(
        *samples.lock().unwrap(),
        [
            (Outcome::Success, ms(100)),
            (Outcome::Success, ms(1000)),
            (Outcome::Overload, ms(200)),
            (Outcome::Success, ms(0)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_keeps_the_whole_time() {
    let (layer, samples) = recorder();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|()| async {
            time::sleep(Duration::from_millis(300)).await;
            Err::<Res, _>(std::io::Error::other("boom"))
        }));
    svc.oneshot(()).await.unwrap_err();
    assert_eq!(
        *samples.lock().unwrap(),
        [(Outcome::Failure, Duration::from_millis(300))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_classifier_of_your_own_reads_no_wait_unless_it_says_so() {
    // A closure answers only `classify`: `waited` keeps its default, zero.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let layer = AdaptiveLimitLayer::new(Recorder(samples.clone()))
        .classify(|_: Result<&Res, &(dyn std::error::Error + 'static)>| Outcome::Success);
    let svc = ServiceBuilder::new().layer(layer).service(service_fn(|()| {
        answer(Duration::from_millis(400), Duration::from_millis(300), 200)
    }));
    svc.oneshot(()).await.unwrap();
    assert_eq!(
        *samples.lock().unwrap(),
        [(Outcome::Success, Duration::from_millis(400))]
    );
}

#[test]
fn waits_add_up_and_a_zero_wait_inserts_nothing() {
    let mut response = http::Response::new(());
    DeliberateWait::add_to(response.extensions_mut(), Duration::ZERO);
    assert!(response.extensions().get::<DeliberateWait>().is_none());
    DeliberateWait::add_to(response.extensions_mut(), Duration::from_millis(40));
    DeliberateWait::add_to(response.extensions_mut(), Duration::from_millis(2));
    assert_eq!(
        response.extensions().get::<DeliberateWait>(),
        Some(&DeliberateWait::new(Duration::from_millis(42)))
    );
}
