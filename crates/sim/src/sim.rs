//! The simulated downstream: shared state, admission, and the tower `Service`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::model::{Model, Overflow};
use crate::rng::Rng;
use crate::stats::{Recorder, Stats};

/// The longest wait the rate capacity computes (its interval, its burst
/// tolerance), so that the times it adds stay within the clock's range.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The response body of the simulated downstream.
pub type Body = Full<Bytes>;

/// A simulated downstream: clone it freely, every clone is the same server.
///
/// As a tower `Service<http::Request<B>>` it never fails: overload is
/// answered with a status (429 or 503), a silent drop never answers.
/// Construct it inside a Tokio runtime (its clock starts then); with a
/// paused clock, everything it does is deterministic for a given seed.
#[derive(Debug, Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    model: Model,
    start: Instant,
    state: Mutex<State>,
}

/// Begins a new measurement window at `now`; the recorder of the window
/// that ends is given back.
fn begin_window(state: &mut State, now: Instant) -> Recorder {
    let (in_service, queued, open) = (state.in_service, state.queue.len(), state.open);
    // The calls in service load the new window, but were admitted before
    // it; the calls queued are in its queue; all those open count in its
    // peak.
    let fresh = Recorder::new(now).carrying(in_service, queued, open);
    std::mem::replace(&mut state.stats, fresh)
}

#[derive(Debug)]
struct State {
    rng: Rng,
    concurrency: Option<usize>,
    rate: Option<f64>,
    next_change: usize,
    in_service: usize,
    /// Requests arrived and not yet answered (queued, in service, being
    /// refused, or dropped and still held by their caller).
    open: usize,
    queue: VecDeque<oneshot::Sender<()>>,
    /// GCRA: when the next request would be admitted were there no burst.
    tat: Tat,
    quota_window: u64,
    quota_used: u32,
    stats: Recorder,
}

/// The rate capacity's theoretical arrival time (GCRA), kept as `booked`
/// intervals after `anchor` so that it is computed, not summed: the `k`th
/// interval ends at exactly `k / per_second` (no nanosecond rounding adds up
/// over a run), and a change of rate re-books what is owed at the new rate.
#[derive(Debug)]
struct Tat {
    anchor: Instant,
    /// Intervals booked after `anchor` (fractional after a change of rate).
    booked: f64,
}

impl Tat {
    /// `anchor` plus `intervals` at `per_second`; a wait past what a
    /// `Duration` holds (a rate too low) is a century, not a panic.
    fn after(&self, intervals: f64, per_second: f64) -> Instant {
        let wait = Duration::try_from_secs_f64(intervals / per_second)
            .unwrap_or(CENTURY)
            .min(CENTURY);
        self.anchor + wait
    }

    /// The theoretical arrival time at `per_second`.
    fn at(&self, per_second: f64) -> Instant {
        if self.booked > 0.0 {
            self.after(self.booked, per_second)
        } else {
            self.anchor
        }
    }

    /// At `at` the rate changes from `from`: what is owed then (in
    /// requests) stays owed, at the new rate, so a rise takes effect at once
    /// and a fall brings no fresh burst.
    fn change_rate(&mut self, at: Instant, from: f64) {
        let owed = if self.at(from) > at {
            self.booked - at.saturating_duration_since(self.anchor).as_secs_f64() * from
        } else {
            0.0
        };
        self.anchor = at;
        self.booked = if owed > 0.0 { owed } else { 0.0 };
    }
}

/// What the admission step decided for one request.
enum Admission {
    Refuse {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    Drop,
    Serve,
    Queue(oneshot::Receiver<()>),
}

impl Sim {
    /// A downstream following `model`, its randomness drawn from `seed`.
    pub fn new(model: Model, seed: u64) -> Self {
        let now = Instant::now();
        let state = State {
            rng: Rng::new(seed),
            concurrency: model.concurrency,
            rate: model.rate.map(|r| r.per_second),
            next_change: 0,
            in_service: 0,
            open: 0,
            queue: VecDeque::new(),
            tat: Tat {
                anchor: now,
                booked: 0.0,
            },
            quota_window: 0,
            quota_used: 0,
            stats: Recorder::new(now),
        };
        Self {
            inner: Arc::new(Inner {
                model,
                start: now,
                state: Mutex::new(state),
            }),
        }
    }

    /// The model this downstream follows.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// What it recorded since it started (or since the last [`reset_stats`](Self::reset_stats)).
    pub fn stats(&self) -> Stats {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let in_service = state.in_service;
        state.stats.snapshot(now, in_service)
    }

    /// Starts a new measurement window (e.g. after a warm-up).
    pub fn reset_stats(&self) {
        begin_window(&mut self.inner.lock(), Instant::now());
    }

    /// What it recorded since the last window began, and a new window
    /// begun, at one instant: no request falls between the two (as one can
    /// between [`stats`](Self::stats) and [`reset_stats`](Self::reset_stats)
    /// while calls run on other threads), and two callers never read one
    /// window twice.
    pub fn take_stats(&self) -> Stats {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let mut ended = begin_window(&mut state, now);
        ended.snapshot(now, state.in_service)
    }

    /// The concurrency capacity in force now (after any scheduled change).
    pub fn concurrency_now(&self) -> Option<usize> {
        let mut guard = self.inner.lock();
        self.inner.apply_changes(&mut guard, Instant::now());
        guard.concurrency
    }

    /// Answers one request, as the `Service` and the HTTP server do.
    ///
    /// The request is admitted (or refused) here, at the call; the slot it
    /// takes is held by the returned future, which gives it back when it
    /// ends or is dropped, polled or not. The request counts as open
    /// ([`Stats::peak_open`](crate::Stats::peak_open)) until then too.
    pub fn respond(&self) -> impl Future<Output = Response<Body>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        let arrived = Instant::now();
        let admission = inner.admit(arrived);
        let open = Open {
            inner: inner.clone(),
        };
        let admission = match admission {
            Admission::Serve => Admitted::Serve(Slot {
                inner: inner.clone(),
            }),
            Admission::Queue(go) => Admitted::Queue(Waiting {
                inner: inner.clone(),
                go,
            }),
            Admission::Refuse {
                status,
                retry_after,
            } => Admitted::Refuse {
                status,
                retry_after,
            },
            Admission::Drop => Admitted::Drop,
        };
        async move {
            let _open = open;
            match admission {
                Admitted::Refuse {
                    status,
                    retry_after,
                } => {
                    tokio::time::sleep(inner.model.refusal_latency).await;
                    refusal(status, retry_after)
                }
                Admitted::Drop => std::future::pending().await,
                Admitted::Serve(slot) => inner.serve(arrived, slot).await,
                Admitted::Queue(waiting) => match waiting.slot().await {
                    Some(slot) => inner.serve(arrived, slot).await,
                    None => refusal(StatusCode::SERVICE_UNAVAILABLE, None),
                },
            }
        }
    }
}

/// An admission with the guard of what it holds, made before the response
/// future is first polled.
enum Admitted {
    Refuse {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    Drop,
    Serve(Slot),
    Queue(Waiting),
}

/// A queued request: the queue sends on `go` when it hands the request a
/// slot (already counted in service).
struct Waiting {
    inner: Arc<Inner>,
    go: oneshot::Receiver<()>,
}

impl Waiting {
    /// Waits for a slot, applying scheduled capacity changes at their time
    /// (a rise starts queued requests then, not at the next arrival or
    /// departure). `None` if the queue went away without a slot.
    async fn slot(mut self) -> Option<Slot> {
        loop {
            let change = self.inner.next_change_at();
            tokio::select! {
                biased;
                handed = &mut self.go => {
                    if handed.is_err() {
                        return None;
                    }
                    return Some(Slot {
                        inner: self.inner.clone(),
                    });
                }
                () = sleep_until_some(change) => {
                    let mut state = self.inner.lock();
                    self.inner.apply_changes(&mut state, Instant::now());
                }
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Closed, the queue can no longer hand us a slot; one it handed us
        // before (and we never took) goes back, to the next in the queue.
        // Otherwise we leave the queue: a caller that gave up holds no place.
        self.go.close();
        if self.go.try_recv().is_ok() {
            self.inner.release(Instant::now());
        } else {
            self.inner.lock().queue.retain(|tx| !tx.is_closed());
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn refusal(status: StatusCode, retry_after: Option<Duration>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up, at least 1, as real servers send it.
        let secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(secs.max(1)),
        );
    }
    response
}

/// Counts the request as answered when its response future ends or is
/// dropped.
struct Open {
    inner: Arc<Inner>,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.open = state.open.saturating_sub(1);
    }
}

/// Gives the service slot back when the request finishes or is dropped.
struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.release(Instant::now());
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few infallible steps.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the next scheduled capacity change is due, if one is left.
    fn next_change_at(&self) -> Option<Instant> {
        let next = self.lock().next_change;
        let change = self.model.changes.get(next)?;
        self.start.checked_add(change.at)
    }

    fn apply_changes(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        while let Some(change) = self.model.changes.get(state.next_change) {
            if change.at > elapsed {
                break;
            }
            if let Some(c) = change.concurrency {
                state.concurrency = Some(c);
            }
            if let Some(r) = change.rate {
                if let (Some(from), Some(_)) = (state.rate, self.model.rate) {
                    let at = self.start.checked_add(change.at).unwrap_or(now).min(now);
                    state.tat.change_rate(at, from);
                }
                state.rate = Some(r);
            }
            state.next_change += 1;
        }
        self.start_queued(state, now);
    }

    fn admit(&self, now: Instant) -> Admission {
        let mut guard = self.lock();
        let state = &mut *guard;
        self.apply_changes(state, now);
        state.open += 1;
        state.stats.arrival(state.open);
        let refuse = |state: &mut State, status: StatusCode, retry_after| {
            state.stats.refusal(status);
            Admission::Refuse {
                status,
                retry_after,
            }
        };
        if let Some(quota) = self.model.quota {
            let elapsed = now.saturating_duration_since(self.start);
            let window = quota.window.as_nanos().max(1);
            let index = u64::try_from(elapsed.as_nanos() / window).unwrap_or(u64::MAX);
            if index != state.quota_window {
                state.quota_window = index;
                state.quota_used = 0;
            }
            if state.quota_used >= quota.limit {
                // The rest of the window, exact for any window and any run.
                let rest = window - elapsed.as_nanos() % window;
                let wait = Duration::new(
                    u64::try_from(rest / 1_000_000_000).unwrap_or(u64::MAX),
                    (rest % 1_000_000_000) as u32,
                );
                return refuse(state, StatusCode::TOO_MANY_REQUESTS, Some(wait));
            }
            state.quota_used += 1;
        }
        if let (Some(per_second), Some(cap)) = (state.rate, self.model.rate)
            && per_second > 0.0
        {
            // Idle long enough, the bucket is full: booking restarts now.
            if state.tat.at(per_second) <= now {
                state.tat = Tat {
                    anchor: now,
                    booked: 0.0,
                };
            }
            // Admitted once the theoretical arrival time is at most
            // `burst - 1` intervals ahead of now.
            let ahead = state.tat.booked - f64::from(cap.burst.saturating_sub(1));
            if ahead > 0.0 {
                let allowed_at = state.tat.after(ahead, per_second);
                if allowed_at > now {
                    let wait = allowed_at - now;
                    return refuse(state, StatusCode::TOO_MANY_REQUESTS, Some(wait));
                }
            }
            state.tat.booked += 1.0;
        }
        if self.model.drop_rate > 0.0 && state.rng.unit() <= self.model.drop_rate {
            state.stats.drop();
            return Admission::Drop;
        }
        let free = state.concurrency.is_none_or(|c| state.in_service < c);
        if free && state.queue.is_empty() {
            state.in_service += 1;
            state.stats.admission();
            state.stats.set_in_service(now, state.in_service);
            return Admission::Serve;
        }
        match self.model.overflow {
            Overflow::Refuse(status) => refuse(state, status, None),
            Overflow::Queue { max } if state.queue.len() < max => {
                let (tx, rx) = oneshot::channel();
                state.queue.push_back(tx);
                state.stats.set_queued(state.queue.len());
                Admission::Queue(rx)
            }
            Overflow::Queue { .. } => refuse(state, StatusCode::SERVICE_UNAVAILABLE, None),
        }
    }

    /// Serves an admitted request in the slot it holds.
    async fn serve(self: Arc<Self>, arrived: Instant, slot: Slot) -> Response<Body> {
        let latency = {
            let mut state = self.lock();
            let base = self.model.latency.sample(&mut state.rng);
            let factor = self.model.knee.map_or(1.0, |k| k.factor(state.in_service));
            crate::model::scale(base, factor)
        };
        tokio::time::sleep(latency).await;
        let now = Instant::now();
        drop(slot);
        self.lock()
            .stats
            .success(now.saturating_duration_since(arrived));
        let body = if self.model.body_bytes == 0 {
            Bytes::new()
        } else {
            Bytes::from(vec![b'x'; self.model.body_bytes])
        };
        Response::new(Full::new(body))
    }

    fn release(&self, now: Instant) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.in_service = state.in_service.saturating_sub(1);
        self.apply_changes(state, now);
        state.stats.set_in_service(now, state.in_service);
    }

    /// Moves queued requests into service while there is room.
    fn start_queued(&self, state: &mut State, now: Instant) {
        while state.concurrency.is_none_or(|c| state.in_service < c) {
            let Some(tx) = state.queue.pop_front() else {
                break;
            };
            if tx.send(()).is_ok() {
                state.in_service += 1;
                state.stats.admission();
                state.stats.set_in_service(now, state.in_service);
            }
        }
        state.stats.set_queued(state.queue.len());
    }
}

/// The future of [`Sim`]'s `Service` implementation.
pub type SimFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> tower_service::Service<Request<B>> for Sim {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = SimFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let response = self.respond();
        Box::pin(async move { Ok(response.await) })
    }
}
