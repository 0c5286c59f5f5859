//! What the reliability suite's leak checks cannot see. `tests/faults.rs`
//! checks the rate limiter's bookings by waiting a full refill and reading
//! the burst back, but a booking that is never given back is only a token
//! spent: time pays it off, and the check reads the same either way (a
//! `Booking` whose drop gave nothing back passed all 13 fault tests). Here,
//! on the paused clock with the simulated downstream, an abandoned booking
//! shows as a later token for the next caller.
#![cfg(all(
    feature = "sim",
    feature = "fan-out",
    feature = "rate",
    feature = "backpressure"
))]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::time::{self, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_fanout::backpressure::BackpressureLayer;
use tower_fanout::fan_out::fan_out;
use tower_fanout::rate::RateLimitLayer;
use tower_fanout::sim::{Jitter, Model, Sim};

/// A batch dropped while its second request waits for a token gives that
/// booking back: with one token per 10 s, the first request took the token
/// of 0 s and the second booked the one of 10 s; once the batch is gone the
/// next caller gets the token of 10 s, not the one of 20 s. Fails if the
/// rate limiter's `Booking` gives nothing back when dropped.
#[tokio::test(start_paused = true)]
async fn a_dropped_batch_gives_its_booked_token_back() {
    let start = Instant::now();
    let sim = Sim::new(
        Model::new().latency(Duration::from_secs(3600), Jitter::None),
        1,
    );
    let rate = RateLimitLayer::builder(1, Duration::from_secs(10))
        .burst(1)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(2).unwrap())
        .layer(rate.clone())
        .service(sim.clone());
    let requests = (0..2).map(|_| http::Request::new(()));
    let mut batch = fan_out(svc, requests).concurrency(2).unwrap().stream();
    assert!(
        time::timeout(Duration::from_secs(1), batch.next())
            .await
            .is_err()
    );
    assert_eq!(sim.stats().arrivals, 1, "the second waits for its token");
    drop(batch);
    // The batch's tasks are aborted, not dropped on the spot: a caller that
    // books before they are gone finds the abandoned booking behind its own,
    // which then stays booked (the strict side, as the bucket documents).
    time::sleep(Duration::from_millis(1)).await;

    let next = ServiceBuilder::new().layer(rate).service(sim.clone());
    let call = tokio::spawn(next.oneshot(http::Request::new(())));
    time::sleep_until(start + Duration::from_secs(10) + Duration::from_millis(1)).await;
    assert_eq!(
        sim.stats().arrivals,
        2,
        "the next caller got the token of 10 s (the dropped booking came back)"
    );
    call.abort();
}
