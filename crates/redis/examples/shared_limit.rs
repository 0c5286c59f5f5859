//! One rate limit and one concurrency limit shared by every process that
//! runs this example against the same Redis.
//!
//! ```sh
//! redis-server --port 6379 --save '' --appendonly no &
//! # run it in two terminals at once: together they still make 20 calls a second
//! cargo run -p tower-fanout-redis --example shared_limit
//! # another Redis: REDIS_URL=redis://127.0.0.1:7000/ cargo run ...
//! ```
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisRateLimitLayer, RedisStore};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let store = RedisStore::builder(url.as_str())
        .timeout(Duration::from_millis(200))
        .build()?;
    let rate = RedisRateLimitLayer::builder(store.clone(), "example", 20, Duration::from_secs(1))
        .burst(5)
        .fail_closed()
        .build()?;
    let concurrency = RedisConcurrencyLimitLayer::builder(store, "example", 4)
        .lease(Duration::from_secs(5))
        .fail_open(0.5)
        .build()?;
    let (tokens, in_flight) = (rate.handle(), concurrency.handle());

    // Stands in for an HTTP client: a call takes 50 ms.
    let svc = ServiceBuilder::new()
        .layer(rate)
        .layer(concurrency)
        .service(service_fn(|i: u32| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, BoxError>(i)
        }));

    let start = Instant::now();
    let calls: Vec<_> = (0..40)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for call in calls {
        match call.await? {
            Ok(_) => ok += 1,
            Err(err) => {
                failed += 1;
                eprintln!("call failed: {err}");
            }
        }
    }
    println!(
        "{ok} calls done, {failed} failed, in {:.2?} (20/s shared by every process on {url})",
        start.elapsed()
    );
    match (tokens.tokens().await, in_flight.in_flight().await) {
        (Ok(tokens), Ok(in_flight)) => {
            println!("now: {tokens} tokens, {in_flight} calls in flight")
        }
        (Err(err), _) | (_, Err(err)) => println!("redis unavailable: {err}"),
    }
    Ok(())
}
