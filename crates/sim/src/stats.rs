//! What the downstream recorded: time-weighted load, rates, latency percentiles.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

/// A snapshot of what the downstream saw over a measurement window.
///
/// Read through [`Sim::stats`](crate::Sim::stats); new measures may be added.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The window's length.
    pub elapsed: Duration,
    /// Requests that arrived.
    pub arrivals: u64,
    /// Requests admitted into service (now or after queueing).
    pub admitted: u64,
    /// Requests answered with a success.
    pub successes: u64,
    /// Requests refused with 429.
    pub refused_429: u64,
    /// Requests refused with 503 (or another status).
    pub refused_other: u64,
    /// Requests silently dropped.
    pub dropped: u64,
    /// Mean requests in service, weighted by time.
    pub mean_in_service: f64,
    /// Most requests in service at once.
    pub peak_in_service: usize,
    /// Most requests queued at once.
    pub peak_queued: usize,
    /// Most requests open at once: arrived and not yet answered, whether
    /// queued, in service, being refused or silently dropped (until their
    /// caller gives up). What the server saw of the client's fan-out.
    pub peak_open: usize,
    /// Successes per second: the goodput.
    pub goodput: f64,
    /// Admissions per second.
    pub admitted_rate: f64,
    /// Latency of successes (arrival to answer, queueing included): p50.
    pub p50: Duration,
    /// p90.
    pub p90: Duration,
    /// p99.
    pub p99: Duration,
    /// The slowest success.
    pub max: Duration,
}

#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    last: Instant,
    in_service: usize,
    area: f64,
    peak: usize,
    peak_queued: usize,
    peak_open: usize,
    arrivals: u64,
    admitted: u64,
    refused_429: u64,
    refused_other: u64,
    dropped: u64,
    latencies: Vec<Duration>,
}

impl Recorder {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            start: now,
            last: now,
            in_service: 0,
            area: 0.0,
            peak: 0,
            peak_queued: 0,
            peak_open: 0,
            arrivals: 0,
            admitted: 0,
            refused_429: 0,
            refused_other: 0,
            dropped: 0,
            latencies: Vec::new(),
        }
    }

    /// A window that starts with `in_service` calls already in service,
    /// `queued` waiting and `open` in all: their load, queue depth and
    /// number count, their arrival and admission (before the window) do not.
    pub(crate) fn carrying(mut self, in_service: usize, queued: usize, open: usize) -> Self {
        self.in_service = in_service;
        self.peak = in_service;
        self.peak_queued = queued;
        self.peak_open = open;
        self
    }

    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.area += dt * self.in_service as f64;
        self.last = now.max(self.last);
    }

    pub(crate) fn set_in_service(&mut self, now: Instant, n: usize) {
        self.advance(now);
        self.in_service = n;
        self.peak = self.peak.max(n);
    }

    pub(crate) fn set_queued(&mut self, n: usize) {
        self.peak_queued = self.peak_queued.max(n);
    }

    /// A call went into service, at once or from the queue. Counted here,
    /// not from rises of the in-service count: a queued call that takes the
    /// slot of one that ended leaves that count as it was.
    pub(crate) fn admission(&mut self) {
        self.admitted += 1;
    }

    /// A request arrived, and `open` are now open with it.
    pub(crate) fn arrival(&mut self, open: usize) {
        self.arrivals += 1;
        self.peak_open = self.peak_open.max(open);
    }

    pub(crate) fn refusal(&mut self, status: StatusCode) {
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.refused_429 += 1;
        } else {
            self.refused_other += 1;
        }
    }

    pub(crate) fn drop(&mut self) {
        self.dropped += 1;
    }

    pub(crate) fn success(&mut self, latency: Duration) {
        self.latencies.push(latency);
    }

    pub(crate) fn snapshot(&mut self, now: Instant, in_service: usize) -> Stats {
        self.advance(now);
        self.in_service = in_service;
        let elapsed = now.saturating_duration_since(self.start);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let q = |q: f64| quantile(&sorted, q);
        Stats {
            elapsed,
            arrivals: self.arrivals,
            admitted: self.admitted,
            successes: self.latencies.len() as u64,
            refused_429: self.refused_429,
            refused_other: self.refused_other,
            dropped: self.dropped,
            mean_in_service: self.area / secs,
            peak_in_service: self.peak,
            peak_queued: self.peak_queued,
            peak_open: self.peak_open,
            goodput: self.latencies.len() as f64 / secs,
            admitted_rate: self.admitted as f64 / secs,
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// The quantile `q` (0..=1) of sorted latencies; zero when there are none.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let Some(last) = sorted.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    sorted[((sorted.len() as f64 * q) as usize).min(last)]
}
