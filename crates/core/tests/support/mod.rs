//! Helpers shared by the contract tests.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

/// Counts calls in flight and remembers the highest count seen.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A small seeded generator (SplitMix64), so failures can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls a future once with a waker that does nothing.
pub fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    future.poll(&mut cx)
}

/// Awaits `future` for at most a minute of the paused clock: a call that
/// should go through at once but waits on a regression fails the test at
/// once (the clock jumps when nothing else can run) instead of hanging it.
pub async fn at_once<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(std::time::Duration::from_secs(60), future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: still waiting after a minute"),
    }
}

/// The seed for randomised tests: `TEST_SEED` if set, else a fixed one.
pub fn seed() -> u64 {
    std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_F00D)
}

/// Calls in flight per key (host), and the peak of each: for the keyed tests.
#[derive(Clone, Default)]
pub struct Meter(Arc<std::sync::Mutex<std::collections::HashMap<String, (usize, usize)>>>);

impl Meter {
    pub fn enter(&self, host: &str) {
        let mut m = self.0.lock().unwrap();
        let e = m.entry(host.to_string()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    pub fn leave(&self, host: &str) {
        self.0.lock().unwrap().get_mut(host).unwrap().0 -= 1;
    }
    pub fn peak(&self, host: &str) -> usize {
        self.0.lock().unwrap().get(host).map_or(0, |e| e.1)
    }
}

/// A service that sleeps the number of milliseconds it is given, then
/// answers it: for the fan-out tests, on the paused clock.
pub fn sleeper() -> impl tower::Service<u64, Response = u64, Error = std::io::Error, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|ms: u64| async move {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        Ok::<_, std::io::Error>(ms)
    })
}

/// An answer with `code` and an empty body.
pub fn status(code: u16) -> http::Response<()> {
    http::Response::builder().status(code).body(()).unwrap()
}

/// An answer with `code` and, when given, a `Retry-After` of that many seconds.
pub fn answer(code: u16, retry_after: Option<u64>) -> http::Response<()> {
    let mut b = http::Response::builder().status(code);
    if let Some(secs) = retry_after {
        b = b.header("retry-after", secs.to_string());
    }
    b.body(()).unwrap()
}

/// A waiting rate limit of one token every `period`, holding `burst`, where
/// a request (a number) costs its value in tokens.
#[cfg(feature = "rate")]
pub fn one_token_every(
    period: std::time::Duration,
    burst: u32,
) -> tower_fanout_core::rate::RateLimitLayer<impl Fn(&u32) -> u32 + Clone> {
    tower_fanout_core::rate::RateLimitLayer::builder(1, period)
        .burst(burst)
        .cost(|c: &u32| *c)
        .build()
        .unwrap()
}

/// An AIMD controller starting at `initial`, without slow start (+1 per
/// round trip from the first answer).
#[cfg(feature = "adaptive")]
pub fn aimd(initial: usize) -> tower_fanout_core::adaptive::AimdController {
    tower_fanout_core::adaptive::AimdController::builder()
        .initial(initial)
        .slow_start(false)
        .build()
        .unwrap()
}
