//! The keyed limit's cost per call when every call brings a key the map has
//! not seen (a crawler over many hosts, a key per tenant), against calls on
//! keys it tracks, measured in the same run.
//!
//! For each `max_keys`, two variants over a service that answers at once,
//! one task on a current-thread runtime:
//! - `tracked`: calls cycle over 64 keys the map holds;
//! - `new key`: every call has a key never seen, so once the map is full
//!   idle keys are forgotten to make room, an eighth of `max_keys` at a
//!   time.
//!
//! The variants alternate for 31 rounds of ~5 ms each; the table gives the
//! median ns per call and the ratio `new key` / `tracked`. A map that scans
//! all its keys for each new one shows a ratio that grows with `max_keys`.
//!
//! Run: `cargo bench --bench keyed`
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_fanout::keyed::{KeyLimit, KeyedLimitLayer};

const ROUNDS: usize = 31;
const SLICE: Duration = Duration::from_millis(5);
const TRACKED: u64 = 64;

fn echo(x: u64) -> Ready<Result<u64, Infallible>> {
    ready(Ok(x))
}

/// `calls` calls through `svc`, keys `first..first + calls` mapped by `key`.
fn run<S>(rt: &Runtime, svc: &mut S, calls: u64, first: u64, key: fn(u64) -> u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in first..first + calls {
            let k = key(i);
            let got = svc.ready().await.unwrap().call(k).await.unwrap();
            assert_eq!(got, k);
        }
        start.elapsed()
    })
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = Builder::new_current_thread().enable_all().build().unwrap();
    println!("| max_keys | tracked ns/call | new key ns/call | ratio new key / tracked |");
    println!("|---:|---:|---:|---:|");
    for max_keys in [1024usize, 16_384] {
        let layer = KeyedLimitLayer::builder_with_key(|k: &u64| *k, KeyLimit::new().concurrency(8))
            .max_keys(max_keys)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(service_fn(echo));
        // Fill the map, so every new key has to make room.
        let mut next = 1_000_000u64;
        run(&rt, &mut svc, max_keys as u64, next, |i| i);
        next += max_keys as u64;
        assert_eq!(handle.keys(), max_keys);
        let tracked = |i: u64| 1_000_000 + i % TRACKED;
        // Size each variant's slice from a probe (which also warms it).
        let probe = 2_000;
        let t = run(&rt, &mut svc, probe, 0, tracked).as_nanos() as f64 / probe as f64;
        let n = run(&rt, &mut svc, probe, next, |i| i).as_nanos() as f64 / probe as f64;
        next += probe;
        let slice = |per_call: f64| ((SLICE.as_nanos() as f64 / per_call) as u64).max(200);
        let (t_calls, n_calls) = (slice(t), slice(n));
        let (mut ts, mut ns) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate which goes first, so neither always follows the other.
            for first in [round % 2 == 0, round % 2 == 1] {
                if first {
                    let took = run(&rt, &mut svc, t_calls, 0, tracked);
                    ts.push(took.as_nanos() as f64 / t_calls as f64);
                } else {
                    let took = run(&rt, &mut svc, n_calls, next, |i| i);
                    ns.push(took.as_nanos() as f64 / n_calls as f64);
                    next += n_calls;
                }
            }
        }
        assert!(handle.keys() <= max_keys);
        let (t, n) = (median(&mut ts), median(&mut ns));
        println!("| {max_keys} | {t:.0} | {n:.0} | {:.1} |", n / t);
    }
}
