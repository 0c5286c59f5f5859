//! An agent runtime whose tool calls fan out through one shared stack.
//!
//! Two "APIs" run on 127.0.0.1 (simulated downstreams): a search API that
//! takes 5 calls at once (more get a 429) and a records API that takes 20 a
//! second (more get a 429 with `Retry-After`). The agent plans three turns
//! of tool calls; each turn's calls run concurrently through one
//!
//! ```text
//! RateLimitLayer (40/s overall) → AdaptiveLimitLayer → http Client
//!     (per-host: search 4 in flight, records 18/s; Retry-After honoured)
//! ```
//!
//! shared by every turn, each call under a deadline of its own (5 s, waits
//! included), and the example prints each call's outcome.
//! Run it with `cargo run --example agent_tools --features full`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_fanout::BoxError;
use tower_fanout::adaptive::{AdaptiveLimitLayer, AimdController};
use tower_fanout::http::{Client, Deadline};
use tower_fanout::keyed::KeyLimit;
use tower_fanout::rate::RateLimitLayer;
use tower_fanout::sim::{Jitter, Model, Overflow, Sim};

/// One tool call the agent wants made.
struct ToolCall {
    tool: &'static str,
    url: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let search = Sim::new(
        Model::new()
            .concurrency(5)
            .overflow(Overflow::Refuse(StatusCode::TOO_MANY_REQUESTS))
            .latency(
                Duration::from_millis(80),
                Jitter::Exponential {
                    mean: Duration::from_millis(40),
                },
            ),
        1,
    );
    let records = Sim::new(
        Model::new()
            .rate(20.0, 5)
            .latency(Duration::from_millis(20), Jitter::None),
        2,
    );
    let (search_server, records_server) = (search.serve().await?, records.serve().await?);
    let (search_host, records_host) = (
        search_server.addr().to_string(),
        records_server.addr().to_string(),
    );

    // One stack for the whole runtime: every turn and every tool shares its limits.
    let client = Client::builder()
        .host_limit(&search_host, KeyLimit::new().concurrency(4))
        .host_limit(
            &records_host,
            KeyLimit::new().rate(18, Duration::from_secs(1)).burst(5),
        )
        .build()?;
    // AIMD, not the default gradient controller: one limit spans two hosts
    // whose normal latencies differ (80-150 ms search, 20 ms records), and
    // a controller that reads RTT would take the slower host's normal for
    // queueing against the faster one's baseline. Both answer overload with
    // a 429, which is what AIMD reads.
    let adaptive = AdaptiveLimitLayer::new(AimdController::builder().initial(8).max(32).build()?);
    let limit = adaptive.handle();
    let stack = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(40, Duration::from_secs(1))
                .burst(10)
                .build()?,
        )
        .layer(adaptive)
        .service(client);

    for turn in 1..=3 {
        // What a model would plan: a few searches and a batch of record lookups.
        let mut calls: Vec<ToolCall> = (0..6)
            .map(|i| ToolCall {
                tool: "search",
                url: format!("http://{search_host}/q?turn={turn}&n={i}"),
            })
            .collect();
        calls.extend((0..14).map(|i| ToolCall {
            tool: "get_record",
            url: format!("http://{records_host}/records/{}", turn * 100 + i),
        }));
        println!("turn {turn}: {} tool calls", calls.len());
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for (n, call) in calls.into_iter().enumerate() {
            let stack = stack.clone();
            running.spawn(async move {
                let t = Instant::now();
                // Each tool call gets 5 s, waits included: set once here, it
                // holds through every layer below (a call that reaches the
                // client past it is not sent, a Retry-After or a host's
                // token that would pass it fails the call at once).
                let req = Request::get(&call.url)
                    .extension(Deadline::after(Duration::from_secs(5)))
                    .body(Full::new(Bytes::new()))?;
                let outcome = stack.oneshot(req).await;
                Ok::<_, BoxError>((n, call.tool, outcome.map(|r| r.status()), t.elapsed()))
            });
        }
        let mut lines = Vec::new();
        while let Some(done) = running.join_next().await {
            let (n, tool, outcome, took) = done??;
            let what = match outcome {
                Ok(status) => format!("HTTP {}", status.as_u16()),
                Err(e) => format!("error: {e}"),
            };
            lines.push((
                n,
                format!(
                    "  call {n:>2} {tool:<10} {what:<10} {:>5} ms",
                    took.as_millis()
                ),
            ));
        }
        lines.sort();
        for (_, line) in lines {
            println!("{line}");
        }
        println!(
            "turn {turn} done in {} ms; adaptive limit now {}",
            started.elapsed().as_millis(),
            limit.limit()
        );
    }
    let (s, r) = (search.stats(), records.stats());
    println!(
        "search API: {} calls, {} refused, at most {} at once (capacity 5)",
        s.arrivals, s.refused_429, s.peak_in_service
    );
    println!(
        "records API: {} calls, {} refused with 429 (capacity 20/s)",
        r.arrivals, r.refused_429
    );
    search_server.shutdown().await;
    records_server.shutdown().await;
    Ok(())
}
