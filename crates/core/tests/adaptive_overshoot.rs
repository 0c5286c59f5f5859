//! The adaptive limit under a steady demand below any capacity: it grows to
//! the demand and stops a third above it, whatever the controller.
//!
//! A user trial: 40 closed-loop callers against a downstream that answers
//! every call after 50 ms (no cap, no refusal) took Vegas to 160 (and it
//! stayed there), AIMD to 82, the gradient to 160 on the paused clock; 100
//! callers behind a queueing server took AIMD to 233. A later burst then
//! met a limit four times the demand it had seen, and a capped server
//! answered it with hundreds of 429s.
#![cfg(feature = "adaptive")]
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::{self, Instant};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::adaptive::controller::Controller;
use tower_fanout_core::adaptive::{
    AdaptiveLimitLayer, AimdController, GradientController, VegasController,
};

const RTT: Duration = Duration::from_millis(50);

fn controllers() -> [(&'static str, Box<dyn Controller>); 3] {
    [
        ("gradient", Box::new(GradientController::default())),
        ("aimd", Box::new(AimdController::builder().build().unwrap())),
        (
            "vegas",
            Box::new(VegasController::builder().build().unwrap()),
        ),
    ]
}

/// What a run saw: the highest limit any call ran under, and the limit at
/// the end of each phase.
#[derive(Debug)]
struct Run {
    peak: Vec<usize>,
    end: Vec<usize>,
}

/// Runs `phases` of closed-loop callers, (callers, round trips) each,
/// against a downstream that answers every call after `latency(calls in
/// service)`.
async fn closed_loop(
    controller: Box<dyn Controller>,
    phases: &[(usize, u32)],
    latency: fn(usize) -> Duration,
) -> Run {
    let layer = AdaptiveLimitLayer::new(controller);
    let handle = layer.handle();
    let peak = Arc::new(AtomicUsize::new(0));
    let in_service = Arc::new(AtomicUsize::new(0));
    let svc = {
        let (handle, peak) = (handle.clone(), peak.clone());
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |()| {
                // The limit this call was let in under (or a higher one it
                // moved to meanwhile).
                peak.fetch_max(handle.limit(), Ordering::SeqCst);
                let in_service = in_service.clone();
                async move {
                    let n = in_service.fetch_add(1, Ordering::SeqCst) + 1;
                    time::sleep(latency(n)).await;
                    in_service.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(http::Response::new(()))
                }
            }))
    };
    let mut run = Run {
        peak: Vec::new(),
        end: Vec::new(),
    };
    for &(callers, round_trips) in phases {
        peak.store(0, Ordering::SeqCst);
        let until = Instant::now() + RTT * round_trips;
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    while Instant::now() < until {
                        svc.clone().oneshot(()).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        run.peak
            .push(peak.load(Ordering::SeqCst).max(handle.limit()));
        run.end.push(handle.limit());
    }
    run
}

fn unloaded(_: usize) -> Duration {
    RTT
}

/// A third above the demand, as `Sample::saturated` promises.
fn bound(demand: usize) -> usize {
    demand * 4 / 3
}

/// The trial's case, on the paused clock: 40 callers, 50 ms answers. Every
/// controller lets all 40 in, and none goes past 53 (it went to 160).
#[tokio::test(start_paused = true)]
async fn a_steady_demand_keeps_every_limit_within_a_third_above_it() {
    let mut wrong = Vec::new();
    for demand in [40, 25, 100] {
        for (name, controller) in controllers() {
            let run = closed_loop(controller, &[(demand, 60)], unloaded).await;
            // Past the bound, or holding callers back.
            if run.peak[0] > bound(demand) || run.end[0] < demand {
                wrong.push(format!("{name}, {demand} callers: {run:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A demand that grows is followed at slow start's pace: 40 callers, then
/// 400. The limit doubles per round trip to them, and again stops a third
/// above.
#[tokio::test(start_paused = true)]
async fn a_demand_that_grows_is_followed_fast() {
    let mut wrong = Vec::new();
    for (name, controller) in controllers() {
        let run = closed_loop(controller, &[(40, 40), (400, 8)], unloaded).await;
        // From about 53 to 400: three doublings, and a round trip or two
        // each for the rounds to end.
        if run.peak[0] > bound(40) || run.end[1] < 400 || run.peak[1] > bound(400) {
            wrong.push(format!("{name}: {run:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Behind a server that queues (latency grows past 30 in service), AIMD,
/// which reads no latency, climbs only as far as the callers go: 100
/// callers took it to 233.
#[tokio::test(start_paused = true)]
async fn aimd_behind_a_queueing_server_stops_a_third_above_its_callers() {
    fn queueing(n: usize) -> Duration {
        RTT.mul_f64((n as f64 / 30.0).max(1.0))
    }
    let aimd = Box::new(AimdController::builder().build().unwrap());
    let run = closed_loop(aimd, &[(100, 60)], queueing).await;
    assert!(run.peak[0] <= bound(100), "{run:?}");
    assert!(run.end[0] >= 100, "{run:?}");
}
