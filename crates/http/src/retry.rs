//! Retry that honours the server: `Retry-After` on 429 and 503, jittered
//! exponential backoff on connection failures and 502/503/504, a cap on any
//! wait, and a budget so retries cannot become a storm.
//!
//! # Decisions
//! | outcome | method | action |
//! |---|---|---|
//! | 429 or 503 with `Retry-After` ≤ the cap | any | wait that long, retry |
//! | 429 or 503 with `Retry-After` > the cap | any | fail at once with [`RateLimited`] |
//! | 429 without `Retry-After` | any | backoff, retry |
//! | 502, 503, 504 | idempotent | backoff, retry |
//! | no connection (the request never left) | any | backoff, retry |
//! | an HTTP/2 stream refused (`REFUSED_STREAM`) or past the server's graceful `GOAWAY` | any | backoff, retry |
//! | a connection lost mid-request (response body included) | idempotent | backoff, retry |
//! | a TLS failure (a certificate not trusted or not for the host, no common protocol, a fatal alert) | | return it |
//! | a response head that cannot be read (too many or too large headers, a malformed status line) | | return it |
//! | refused address, body cap, timeout, anything else | | return it |
//! | any outcome after the client preset followed a redirect | not idempotent | return it |
//! | a wait that would end at or past the request's [`Deadline`] (the client preset sets it from its [`deadline`](crate::ClientBuilder::deadline)) | any | `Retry-After`: fail at once with [`RateLimited`]; backoff: return the outcome |
//!
//! A 429 or a 503 with `Retry-After` says the server did not act on the
//! request, so any method is retried; 502/503/504 without it may hide a
//! request that ran, so only idempotent methods are. An HTTP/2 server
//! that resets a stream with `REFUSED_STREAM`, or whose graceful `GOAWAY`
//! (`NO_ERROR`) names a last stream below it, says it did not process it
//! (RFC 9113 §8.7), so any method is retried; any other reset, or an error
//! `GOAWAY` (which hyper may also hand to a stream the server read), may
//! come after the work, so only idempotent methods are. Once the client
//! preset has followed a redirect, the server has acted on the request (a
//! POST answered 303 has run), and a retry would start it again from the
//! original: a non-idempotent request is then not retried at all. A timeout is not
//! retried: a slow server does not need more load.
//!
//! When the retries run out, the last response (say a 429) or error is
//! returned as it is.
//!
//! # Under an adaptive limit
//! A response that came after a retry carries the waits its earlier
//! attempts noted as a [`DeliberateWait`] (their time at a per-host gate),
//! added to its own. The sleeps between attempts are not noted: a
//! `Retry-After` or a failure to back off from is the downstream's word on
//! its capacity, which an adaptive limit above should hear as latency (it
//! sees no other sign of the attempts the retry hid). Nor is the failed
//! attempts' time at the server (a 503 after two seconds says it is slow).
//! An error carries no wait.
//!
//! # Where it goes
//! Outside the limits: a request sleeping before its next attempt holds no
//! permit and no token, and each attempt pays for its own. The request is
//! cloned for each attempt, so its body must be `Clone` (the client preset
//! buffers request bodies up to a bound for this).
//!
//! # Budget
//! Each request deposits into a budget and each retry withdraws (the window
//! of tower's `TpsBudget`, with exact fractions); with the budget empty, the
//! outcome is returned instead of retried. By default
//! 20 % of requests may be retried, plus 10 retries a second at any load.
//!
//! # Example
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_fanout_http::retry::RetryLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_fanout_http::BoxError> {
//! // A server that says "come back in 2 s" once, then answers.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let server = service_fn(move |_req: Request<String>| {
//!     let n = calls.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let resp = if n == 0 {
//!             Response::builder().status(429).header("retry-after", "2").body(())?
//!         } else {
//!             Response::new(())
//!         };
//!         Ok::<_, http::Error>(resp)
//!     }
//! });
//! let retry = RetryLayer::builder().max_wait(Duration::from_secs(30)).build()?;
//! let start = tokio::time::Instant::now();
//! let resp = retry.layer(server).oneshot(Request::new(String::from("hi"))).await?;
//! assert_eq!(resp.status(), 200);
//! assert_eq!(start.elapsed(), Duration::from_secs(2));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode, header::RETRY_AFTER};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_fanout_core::DeliberateWait;
use tower_fanout_core::error::RateLimited;
use tower_layer::Layer;
use tower_service::Service;

use crate::Deadline;
use crate::redirect::{AfterRedirect, Hop};
use crate::timeout::TimedOut;
use crate::{BoxError, Error, error, headers};

/// Configures a [`RetryLayer`]; made by [`RetryLayer::builder`].
#[derive(Debug, Clone)]
pub struct RetryBuilder {
    max_retries: u32,
    max_wait: Duration,
    base_backoff: Duration,
    max_backoff: Duration,
    min_per_sec: u32,
    retry_percent: f32,
}

impl RetryBuilder {
    /// Retries after the first attempt (default 3). With 0, every answer is
    /// returned as it is, a 429 included.
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The longest `Retry-After` to wait (default 60 s). A longer one fails
    /// the request at once with [`RateLimited`], so the caller can decide.
    #[must_use]
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.max_wait = max;
        self
    }

    /// The first backoff and its ceiling (default 100 ms doubling up to 10 s).
    /// Each wait is drawn uniformly from the upper half of the current step.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max;
        self
    }

    /// The retry budget: `retry_percent` retries per request (0.2 = one in
    /// five) plus `min_per_sec` retries a second at any load (defaults 0.2, 10).
    /// Both are counted over the last 10 s: `min_per_sec` is a reserve of
    /// ten times as many retries, refilled as the retries taken age out.
    #[must_use]
    pub fn budget(mut self, min_per_sec: u32, retry_percent: f32) -> Self {
        self.min_per_sec = min_per_sec;
        self.retry_percent = retry_percent;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// A zero base backoff, a ceiling below the base, or a `retry_percent`
    /// outside 0..=1000.
    pub fn build(self) -> Result<RetryLayer, Error> {
        if self.base_backoff.is_zero() || self.max_backoff < self.base_backoff {
            return Err(Error::config(format!(
                "retry backoff must start above zero and its ceiling must be at least the base (got {:?} up to {:?})",
                self.base_backoff, self.max_backoff
            )));
        }
        if !(0.0..=1000.0).contains(&self.retry_percent) {
            return Err(Error::config(format!(
                "the retry budget's retry_percent (`RetryBuilder::budget`) is a ratio of retries to \
                 requests within 0..=1000 (0.2 = one retry per five requests); got {}",
                self.retry_percent
            )));
        }
        Ok(RetryLayer::from_checked(self))
    }
}

struct Config {
    settings: RetryBuilder,
    budget: RetryBudget,
    rng: AtomicU64,
}

/// Millionths of a retry: a deposit of `retry_percent` is exact to six
/// places, where tower's `TpsBudget` withdrew a whole number of deposits
/// for each retry (`floor(1 / retry_percent)`: 0.6 allowed one retry a
/// request, 0.35 one in two).
const RETRY: i64 = 1_000_000;

/// One second each: deposits and withdrawals count for 10 s.
const BUDGET_SLOTS: usize = 10;
const BUDGET_SLOT: Duration = Duration::from_secs(1);

/// The retry budget: deposits of `retry_percent` retries for each request,
/// less the retries taken, over the last 10 s, plus a reserve of
/// `min_per_sec` × 10. The window is tower's `TpsBudget`'s, kept as it was
/// (the current second's tally is committed to its slot when the second
/// is over); only the amounts are exact. One lock a call, as there.
struct RetryBudget {
    window: Mutex<Window>,
    deposit: i64,
    reserve: i64,
}

struct Window {
    slots: [i64; BUDGET_SLOTS],
    index: usize,
    since: tokio::time::Instant,
    current: i64,
}

impl RetryBudget {
    fn new(min_per_sec: u32, retry_percent: f32) -> Self {
        RetryBudget {
            window: Mutex::new(Window {
                slots: [0; BUDGET_SLOTS],
                index: 0,
                since: tokio::time::Instant::now(),
                current: 0,
            }),
            // Checked at build: 0..=1000, so at most 10⁹.
            deposit: (f64::from(retry_percent) * RETRY as f64).round() as i64,
            reserve: i64::from(min_per_sec)
                .saturating_mul(BUDGET_SLOTS as i64)
                .saturating_mul(RETRY),
        }
    }

    /// The window, moved on to the present.
    fn now(&self) -> std::sync::MutexGuard<'_, Window> {
        // The lock guards plain integers: a panic elsewhere leaves them usable.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        let mut elapsed = now.saturating_duration_since(w.since);
        if elapsed < BUDGET_SLOT {
            return w;
        }
        let (i, tally) = (w.index, w.current);
        w.slots[i] = tally;
        w.current = 0;
        let mut i = (i + 1) % BUDGET_SLOTS;
        // Past ten slots every one is clear: no need to count the rest.
        let mut cleared = 0;
        while elapsed > BUDGET_SLOT && cleared < BUDGET_SLOTS {
            w.slots[i] = 0;
            elapsed -= BUDGET_SLOT;
            i = (i + 1) % BUDGET_SLOTS;
            cleared += 1;
        }
        w.index = i;
        w.since = now;
        w
    }

    fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        let mut w = self.now();
        w.current = w.current.saturating_add(self.deposit);
    }

    fn withdraw(&self) -> bool {
        let mut w = self.now();
        let balance = w
            .slots
            .iter()
            .fold(self.reserve.saturating_add(w.current), |sum, slot| {
                sum.saturating_add(*slot)
            });
        if balance < RETRY {
            return false;
        }
        w.current -= RETRY;
        true
    }
}

impl Config {
    /// A jittered backoff for retry number `n` (0-based): uniform in the upper
    /// half of `min(max, base × 2ⁿ)`, so waits spread out but never collapse to zero.
    fn backoff(&self, n: u32) -> Duration {
        let s = &self.settings;
        let step = s
            .base_backoff
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(s.max_backoff);
        let half = step / 2;
        let span = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        let r = self.next_random();
        // Uniform in 0..=span; a span of u64::MAX takes any `r` (`span + 1`
        // overflowed there, and `r % 0` panicked in release builds).
        half + Duration::from_nanos(r.checked_rem(span.wrapping_add(1)).unwrap_or(r))
    }

    fn next_random(&self) -> u64 {
        // xorshift64*: quality is ample for jitter, and no dependency.
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y >> 12;
            y ^= y << 25;
            y ^= y >> 27;
            match self
                .rng
                .compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return y.wrapping_mul(0x2545_f491_4f6c_dd1d),
                Err(actual) => x = actual,
            }
        }
    }
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

/// Retries requests as the server asks; see the [module docs](self).
///
/// The budget is held in an `Arc` inside the layer: every service the
/// layer wraps, and every clone, draws on the same budget.
#[derive(Clone)]
pub struct RetryLayer {
    config: Arc<Config>,
}

impl RetryLayer {
    /// Starts from the defaults: 3 retries, waits up to 60 s, backoff 100 ms
    /// to 10 s, budget 20 % plus 10 a second.
    pub fn builder() -> RetryBuilder {
        RetryBuilder {
            max_retries: 3,
            max_wait: Duration::from_secs(60),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            min_per_sec: 10,
            retry_percent: 0.2,
        }
    }
}

impl RetryLayer {
    /// Settings already checked by [`RetryBuilder::build`] (or the defaults).
    fn from_checked(settings: RetryBuilder) -> Self {
        RetryLayer {
            config: Arc::new(Config {
                budget: RetryBudget::new(settings.min_per_sec, settings.retry_percent),
                settings,
                rng: AtomicU64::new(seed()),
            }),
        }
    }
}

impl RetryLayer {
    /// A layer that sends each request once.
    pub(crate) fn never() -> Self {
        Self::from_checked(Self::builder().max_retries(0))
    }

    /// The longest wait this layer sleeps.
    pub(crate) fn max_wait(&self) -> Duration {
        self.config.settings.max_wait
    }
}

impl Default for RetryLayer {
    /// The defaults of [`RetryLayer::builder`].
    fn default() -> Self {
        Self::from_checked(Self::builder())
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("settings", &self.config.settings)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service built by [`RetryLayer`].
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Done,
    After(Duration),
    Backoff,
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
pub(crate) fn decide<B>(
    outcome: &Result<Response<B>, BoxError>,
    method: &Method,
    now: SystemTime,
) -> Decision {
    decide_lazily(outcome, is_idempotent(method), || now)
}

/// [`decide`], reading the clock only for a `Retry-After` to read.
/// A `RateLimited` for a wait a server's answer asked for, with its status
/// (callers that report statuses, such as the CLI's records, keep it).
fn server_asked<B>(limited: RateLimited, outcome: &Result<Response<B>, BoxError>) -> RateLimited {
    match outcome {
        Ok(response) => limited.with_status(response.status().as_u16()),
        Err(_) => limited,
    }
}

fn decide_lazily<B>(
    outcome: &Result<Response<B>, BoxError>,
    idempotent: bool,
    now: impl FnOnce() -> SystemTime,
) -> Decision {
    // A non-idempotent request that was redirected has been acted on (a
    // POST answered 303 has run): a retry would start it again.
    if !idempotent && redirected(outcome) {
        return Decision::Done;
    }
    match outcome {
        Ok(resp) => {
            let status = resp.status();
            // Unbounded: a wait past the cap, however long, is `RateLimited`.
            let after = || {
                resp.headers().get(RETRY_AFTER).and_then(|v| {
                    // An HTTP-date is on the server's clock.
                    headers::retry_after_unbounded(v, headers::server_clock(resp.headers(), now()))
                })
            };
            match status {
                StatusCode::TOO_MANY_REQUESTS => after().map_or(Decision::Backoff, Decision::After),
                StatusCode::SERVICE_UNAVAILABLE => match after() {
                    Some(d) => Decision::After(d),
                    None if idempotent => Decision::Backoff,
                    None => Decision::Done,
                },
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT if idempotent => {
                    Decision::Backoff
                }
                _ => Decision::Done,
            }
        }
        Err(err) => {
            // A TLS failure (a certificate not trusted, or not for this
            // host; no common protocol; a fatal alert such as a missing
            // client certificate) comes back the same on every attempt.
            if error::is_final(&**err) || error::is_tls_failure(&**err) {
                return Decision::Done;
            }
            // A response head hyper cannot read (too large, malformed) is the
            // server's answer: it would send it again.
            if error::find_in_chain::<hyper::Error>(&**err).is_some_and(hyper::Error::is_parse) {
                return Decision::Done;
            }
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
            while let Some(e) = next {
                if e.is::<TimedOut>() {
                    return Decision::Done;
                }
                if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                    // A connect error means the request never left; an h2
                    // stream the server refused was never processed.
                    return if h.is_connect() || idempotent || unprocessed(h) {
                        Decision::Backoff
                    } else {
                        Decision::Done
                    };
                }
                // hyper's own error outside hyper-util's: the connection
                // failed while the response body was read (a reset, a close
                // short of its length). A corrupt encoding is an io error
                // of the decoder instead, and is not retried.
                if e.is::<hyper::Error>() {
                    return if idempotent {
                        Decision::Backoff
                    } else {
                        Decision::Done
                    };
                }
                next = e.source();
            }
            // Not a transport error (a local limit's refusal, a bad URI...).
            Decision::Done
        }
    }
}

/// Whether the server said, before any response, that it did not process
/// the request's HTTP/2 stream: a reset with `REFUSED_STREAM`, or a
/// graceful `GOAWAY` (`NO_ERROR`) whose last stream id is below it (h2
/// gives such streams the remote `GOAWAY` as their error; a stream the
/// server took and then lost to the connection closing gets an I/O error).
/// An error `GOAWAY` is left out, as reqwest leaves it out: hyper can hand
/// a connection's error to a stream it had just sent, which the server may
/// have read, and a non-idempotent request must not go twice.
fn unprocessed(err: &(dyn std::error::Error + 'static)) -> bool {
    error::find_in_chain::<h2::Error>(err).is_some_and(|e| {
        e.is_remote()
            && match e.reason() {
                Some(h2::Reason::NO_ERROR) => e.is_go_away(),
                Some(h2::Reason::REFUSED_STREAM) => e.is_reset(),
                _ => false,
            }
    })
}

/// Notes `waited` more on the outcome's response as a [`DeliberateWait`]
/// (an error carries none). In place: the outcome moved through here was
/// copied whole, twice, on every request.
#[inline]
fn note<B>(outcome: &mut Result<Response<B>, BoxError>, waited: Duration) {
    if !waited.is_zero()
        && let Ok(resp) = outcome
    {
        DeliberateWait::add_to(resp.extensions_mut(), waited);
    }
}

/// Whether the outcome is that of a request sent by following a redirect
/// (marked by the client preset's redirect policy).
fn redirected<B>(outcome: &Result<Response<B>, BoxError>) -> bool {
    match outcome {
        Ok(resp) => resp.extensions().get::<Hop>().is_some(),
        Err(err) => crate::error::find_in_chain::<AfterRedirect>(&**err).is_some(),
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Clone + Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt waits for the inner service's readiness in the
        // future, so nothing is reserved here (and nothing held while sleeping).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(RetryFuture::new(
            self.config.clone(),
            self.inner.clone(),
            req,
        ))
    }
}

impl RetryLayer {
    /// The retry loop over `inner` for a request still to come, without
    /// boxing: the client preset keeps it inside its own response future and
    /// gives it the request with [`RetryFuture::start`].
    pub(crate) fn unstarted<S, B>(&self, inner: S) -> RetryFuture<S, Request<B>>
    where
        S: Service<Request<B>>,
    {
        RetryFuture {
            config: self.config.clone(),
            inner,
            original: None,
            idempotent: false,
            retries: 0,
            waited: Duration::ZERO,
            deadline: None,
            step: RetryStep::Ready,
        }
    }
}

pin_project! {
    /// The retry loop for one request: attempts, and the waits between them.
    pub(crate) struct RetryFuture<S, Req>
    where
        S: Service<Req>,
    {
        config: Arc<Config>,
        inner: S,
        // The request, kept for the next attempt; the last one takes it.
        original: Option<Req>,
        idempotent: bool,
        retries: u32,
        // What earlier attempts noted as waits on purpose (`DeliberateWait`:
        // their time at a per-host gate), to add to the last one's.
        waited: Duration,
        // The whole call's deadline (the request's `Deadline`): a wait
        // that would end at or past it is not slept.
        deadline: Option<Instant>,
        #[pin]
        step: RetryStep<S::Future>,
    }
}

pin_project! {
    #[project = RetryStepProj]
    enum RetryStep<F> {
        // Waiting for the inner service, then sending.
        Ready,
        Sent { #[pin] future: F },
        Waiting { #[pin] sleep: tokio::time::Sleep },
        // Answered.
        Done,
    }
}

impl<S, B> RetryFuture<S, Request<B>>
where
    S: Service<Request<B>>,
{
    fn new(config: Arc<Config>, inner: S, req: Request<B>) -> Self {
        let (idempotent, deadline) = admit(&config, &req);
        Self {
            idempotent,
            config,
            inner,
            original: Some(req),
            retries: 0,
            waited: Duration::ZERO,
            deadline,
            step: RetryStep::Ready,
        }
    }

    /// The attempts sent so far: the first and each retry taken.
    pub(crate) fn attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// Gives an [`unstarted`](RetryLayer::unstarted) loop its request (and
    /// with it the call's deadline, if it has one).
    pub(crate) fn start(self: Pin<&mut Self>, req: Request<B>) {
        let this = self.project();
        (*this.idempotent, *this.deadline) = admit(this.config, &req);
        *this.original = Some(req);
    }
}

/// What a loop learns of a new request, once: whether it is idempotent and
/// its deadline. The request also pays into the retry budget (when retries
/// are on), which is what lets later requests' retries spend from it.
fn admit<B>(config: &Config, req: &Request<B>) -> (bool, Option<Instant>) {
    if config.settings.max_retries > 0 {
        config.budget.deposit();
    }
    let deadline = req.extensions().get::<Deadline>().map(|d| d.instant());
    (is_idempotent(req.method()), deadline)
}

impl<S, B, ResB> Future for RetryFuture<S, Request<B>>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let settings = &this.config.settings;
        // An answer ends the loop: its inner future is done, and a poll
        // after this one must not poll that future again (an `async` one
        // panics), so it finds `Done`.
        macro_rules! finish {
            ($answer:expr) => {{
                let answer = $answer;
                this.step.set(RetryStep::Done);
                return Poll::Ready(answer);
            }};
        }
        loop {
            match this.step.as_mut().project() {
                RetryStepProj::Ready => {
                    if let Err(e) = ready!(this.inner.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    // Each attempt sends the request it has and keeps a copy
                    // while retries remain. Sending the original rather than
                    // a copy matters: its header map has room for the headers
                    // added below it (`Accept-Encoding`), a copy's has none
                    // and would grow on every call.
                    let Some(req) = this.original.take() else {
                        return Poll::Ready(Err("retry: request already sent".into()));
                    };
                    if *this.retries < settings.max_retries {
                        *this.original = Some(req.clone());
                    }
                    let future = this.inner.call(req);
                    this.step.set(RetryStep::Sent { future });
                }
                RetryStepProj::Sent { future } => {
                    let mut outcome = ready!(future.poll(cx)).map_err(Into::into);
                    if settings.max_retries == 0 {
                        // Retrying is off: the answer, whatever it is, goes back as it is.
                        finish!(outcome);
                    }
                    let waited = *this.waited;
                    let decision = decide_lazily(&outcome, *this.idempotent, SystemTime::now);
                    let wait = match decision {
                        Decision::Done => {
                            note(&mut outcome, waited);
                            finish!(outcome);
                        }
                        Decision::After(d) if d > settings.max_wait => {
                            tracing::debug!(
                                retry_after_ms = d.as_millis() as u64,
                                max_wait_ms = settings.max_wait.as_millis() as u64,
                                "retry-after above the cap; returning rate limited"
                            );
                            finish!(Err(server_asked(RateLimited::new(d), &outcome).into()));
                        }
                        Decision::After(d) => d,
                        Decision::Backoff => this.config.backoff(*this.retries),
                    };
                    if *this.retries >= settings.max_retries {
                        note(&mut outcome, waited);
                        finish!(outcome);
                    }
                    // A wait that would end at or past the call's deadline is
                    // not slept: it would leave the retry no time, and the
                    // call could only time out at its end. A server's
                    // `Retry-After` goes back as `RateLimited` (as one past
                    // the cap does), a backoff's outcome as it is.
                    if let Some(deadline) = *this.deadline
                        && Instant::now()
                            .checked_add(wait)
                            .is_none_or(|end| end >= deadline)
                    {
                        tracing::debug!(
                            wait_ms = wait.as_millis() as u64,
                            "the wait would end at or past the call's deadline; not retrying"
                        );
                        if let Decision::After(d) = decision {
                            let limited = RateLimited::past_deadline(d);
                            finish!(Err(server_asked(limited, &outcome).into()));
                        }
                        note(&mut outcome, waited);
                        finish!(outcome);
                    }
                    if !this.config.budget.withdraw() {
                        tracing::debug!("retry budget spent; returning the outcome");
                        note(&mut outcome, waited);
                        finish!(outcome);
                    }
                    *this.retries += 1;
                    // The attempt's own waits at a gate are no part of the
                    // downstream's latency; its time at the server and the
                    // sleep ahead are (the downstream asked for the sleep).
                    let noted = match &outcome {
                        Ok(r) => r.extensions().get::<DeliberateWait>().copied(),
                        Err(_) => None,
                    };
                    *this.waited = waited.saturating_add(noted.unwrap_or_default().duration());
                    tracing::debug!(
                        retry = *this.retries,
                        wait_ms = wait.as_millis() as u64,
                        status = outcome.as_ref().map(|r| r.status().as_u16()).ok(),
                        "retrying"
                    );
                    // The outcome (and with it any connection or permit) goes
                    // before the sleep, not after.
                    drop(outcome);
                    this.step.set(RetryStep::Waiting {
                        sleep: tokio::time::sleep(wait),
                    });
                }
                RetryStepProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.step.set(RetryStep::Ready);
                }
                RetryStepProj::Done => {
                    return Poll::Ready(Err(crate::error::polled_after_completion()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::guard::RefusedAddress;

    fn resp(status: u16, retry_after: Option<&str>) -> Result<Response<()>, BoxError> {
        let mut b = Response::builder().status(status);
        if let Some(v) = retry_after {
            b = b.header(RETRY_AFTER, v);
        }
        Ok(b.body(()).unwrap())
    }

    #[test]
    fn decisions_follow_the_table() {
        let now = SystemTime::now();
        let (get, post) = (Method::GET, Method::POST);
        assert_eq!(
            decide(&resp(429, Some("2")), &post, now),
            Decision::After(Duration::from_secs(2))
        );
        assert_eq!(decide(&resp(429, None), &post, now), Decision::Backoff);
        assert_eq!(
            decide(&resp(503, Some("1")), &post, now),
            Decision::After(Duration::from_secs(1))
        );
        assert_eq!(decide(&resp(503, None), &post, now), Decision::Done);
        assert_eq!(decide(&resp(503, None), &get, now), Decision::Backoff);
        assert_eq!(decide(&resp(502, None), &get, now), Decision::Backoff);
        assert_eq!(decide(&resp(504, None), &post, now), Decision::Done);
        assert_eq!(decide(&resp(500, None), &get, now), Decision::Done);
        assert_eq!(decide(&resp(200, None), &get, now), Decision::Done);
        let refused: Result<Response<()>, BoxError> = Err(RefusedAddress::new("x", None).into());
        assert_eq!(decide(&refused, &get, now), Decision::Done);
    }

    /// A `Retry-After` HTTP-date is read against the answer's `Date` (the
    /// server's clock): with the client's clock three minutes fast, a
    /// two-minute wait read as one already past, and the request was sent
    /// again at once.
    #[test]
    fn a_retry_after_date_is_read_on_the_servers_clock() {
        let local = SystemTime::now();
        let server = local - Duration::from_secs(180);
        let mut answer = resp(
            429,
            Some(&httpdate::fmt_http_date(server + Duration::from_secs(120))),
        );
        answer.as_mut().unwrap().headers_mut().insert(
            http::header::DATE,
            http::HeaderValue::from_str(&httpdate::fmt_http_date(server)).unwrap(),
        );
        assert_eq!(
            decide(&answer, &Method::GET, local),
            Decision::After(Duration::from_secs(120))
        );
    }

    /// After the client preset followed a redirect, the server has acted on
    /// the request: a POST is not retried, whatever the answer; a GET still
    /// is. (An error after a hop needs a real connection: `review.rs`.)
    #[test]
    fn a_redirected_request_is_retried_only_if_idempotent() {
        let now = SystemTime::now();
        let after_2s = Decision::After(Duration::from_secs(2));
        // (status, Retry-After, method, decision without a hop, after one)
        let cases = [
            (429, Some("2"), Method::POST, after_2s, Decision::Done),
            (429, None, Method::POST, Decision::Backoff, Decision::Done),
            (503, Some("2"), Method::POST, after_2s, Decision::Done),
            (429, Some("2"), Method::GET, after_2s, after_2s),
            (503, None, Method::GET, Decision::Backoff, Decision::Backoff),
        ];
        for (status, retry_after, method, direct, redirected) in cases {
            let mut hopped = resp(status, retry_after);
            hopped.as_mut().unwrap().extensions_mut().insert(Hop);
            let case = format!("{method} answered {status} {retry_after:?}");
            assert_eq!(
                decide(&resp(status, retry_after), &method, now),
                direct,
                "{case}"
            );
            assert_eq!(
                decide(&hopped, &method, now),
                redirected,
                "{case} after a hop"
            );
        }
    }

    /// The request is copied only while a later attempt may need it: with
    /// retries off, or on the last attempt, it is sent as it is (a large
    /// body is not copied for nothing).
    #[tokio::test(start_paused = true)]
    async fn only_an_attempt_that_may_be_retried_keeps_a_copy() {
        use std::sync::atomic::AtomicUsize;
        use tower::{ServiceExt, service_fn};

        struct Counted(Arc<AtomicUsize>);
        impl Clone for Counted {
            fn clone(&self) -> Self {
                self.0.fetch_add(1, Ordering::SeqCst);
                Counted(self.0.clone())
            }
        }
        let server = service_fn(|_req: Request<Counted>| async {
            Ok::<_, std::convert::Infallible>(Response::builder().status(503).body(()).unwrap())
        });
        for retries in [0, 1, 3] {
            let copies = Arc::new(AtomicUsize::new(0));
            let layer = RetryLayer::builder().max_retries(retries).build().unwrap();
            let req = Request::new(Counted(copies.clone()));
            let resp = layer.layer(server).oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 503);
            assert_eq!(
                copies.load(Ordering::SeqCst),
                retries as usize,
                "{retries} retries: one copy for each attempt followed by another"
            );
        }
    }

    fn backoff_100ms_to_1s() -> RetryLayer {
        RetryLayer::builder()
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .build()
            .unwrap()
    }

    #[test]
    fn backoff_is_jittered_within_the_upper_half_and_capped() {
        let layer = backoff_100ms_to_1s();
        let c = &layer.config;
        for n in 0..10 {
            let step = (Duration::from_millis(100) * 2u32.pow(n)).min(Duration::from_secs(1));
            for _ in 0..50 {
                let d = c.backoff(n);
                assert!(
                    d >= step / 2 && d <= step,
                    "retry {n}: {d:?} outside [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
    }

    #[test]
    fn backoff_does_not_overflow_with_huge_settings() {
        // The upper half of the step is more than u64::MAX nanoseconds wide.
        let layer = RetryLayer::builder()
            .backoff(Duration::MAX, Duration::MAX)
            .build()
            .unwrap();
        for n in [0, 1, 31, 40] {
            let d = layer.config.backoff(n);
            assert!(d >= Duration::MAX / 2, "retry {n}: {d:?}");
        }
    }

    /// The reserve of `min_per_sec` × 10 retries: the retries taken in one
    /// second count until that second's slot is written again, ten
    /// rotations on (at 11 s when the window moves every whole second).
    #[tokio::test(start_paused = true)]
    async fn retries_taken_count_until_their_slot_comes_round() {
        let budget = RetryBudget::new(1, 0.0);
        for _ in 0..10 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw(), "a reserve of 10 allows 10 retries");
        for s in 1..=10 {
            tokio::time::advance(BUDGET_SLOT).await;
            assert!(!budget.withdraw(), "{s} s on, the 10 retries still count");
        }
        tokio::time::advance(BUDGET_SLOT).await;
        assert!(budget.withdraw(), "11 s on, their slot is written again");
    }

    /// After an idle gap the window clears the seconds the gap spanned, and
    /// no more: retries taken just before a short gap still count, and after
    /// a gap of any length (ages, on the paused clock) none do.
    #[tokio::test(start_paused = true)]
    async fn an_idle_gap_clears_the_seconds_it_spans() {
        let spent = || {
            let budget = RetryBudget::new(1, 0.0);
            while budget.withdraw() {}
            budget
        };
        let budget = spent();
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert!(!budget.withdraw(), "2.5 s on, the retries still count");

        let budget = spent();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(budget.withdraw(), "30 s on, the window is clear");

        // Clearing stops after the ten slots: a gap of 35 000 years is one
        // pass, not one step per second.
        let budget = spent();
        tokio::time::advance(Duration::from_secs(1 << 40)).await;
        assert!(budget.withdraw(), "after ages, the window is clear");
    }

    /// Deposits count as retries: 0.5 per request is one retry per two.
    #[tokio::test(start_paused = true)]
    async fn deposits_add_to_the_reserve() {
        let budget = RetryBudget::new(0, 0.5);
        assert!(!budget.withdraw(), "no reserve, no deposits");
        budget.deposit();
        assert!(!budget.withdraw(), "half a retry is not one");
        budget.deposit();
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    /// Backoff waits spread evenly over the upper half of the step, and do
    /// not repeat: a generator stuck on one value, or cycling through a
    /// few, would send every retry of a batch at the same moments.
    #[test]
    fn backoff_jitter_spreads_evenly_and_does_not_repeat() {
        let layer = backoff_100ms_to_1s();
        let c = &layer.config;
        for seed in [1, 0x9e37_79b9_7f4a_7c15, u64::MAX] {
            c.rng.store(seed, Ordering::Relaxed);
            let draws: Vec<Duration> = (0..1000).map(|_| c.backoff(0)).collect();
            let distinct: std::collections::HashSet<_> = draws.iter().collect();
            assert!(
                distinct.len() > 990,
                "seed {seed}: {} distinct waits of 1000",
                distinct.len()
            );
            // Ten bins of 5 ms over 50..=100 ms: about 100 each.
            let mut bins = [0u32; 10];
            for d in draws {
                let at = (d - Duration::from_millis(50)).as_nanos() / 5_000_000;
                bins[usize::try_from(at).unwrap().min(9)] += 1;
            }
            assert!(
                bins.iter().all(|n| (60..=140).contains(n)),
                "seed {seed}: waits in 5 ms bins from 50 ms: {bins:?}"
            );
        }
    }

    /// Each layer seeds its own generator: two clients (or processes) that
    /// back off at the same moment do not draw the same waits.
    #[test]
    fn each_layer_draws_its_own_waits() {
        let draw = |layer: &RetryLayer| -> Vec<Duration> {
            (0..8).map(|_| layer.config.backoff(0)).collect()
        };
        let (a, b) = (draw(&RetryLayer::default()), draw(&RetryLayer::default()));
        assert_ne!(a, b, "two layers drew the same waits");
        for waits in [a, b] {
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert_eq!(distinct.len(), 8, "{waits:?}");
        }
    }

    #[test]
    fn bad_settings_fail_at_build() {
        assert!(
            RetryLayer::builder()
                .backoff(Duration::ZERO, Duration::from_secs(1))
                .build()
                .is_err()
        );
        let err = RetryLayer::builder().budget(1, -1.0).build().unwrap_err();
        assert!(err.to_string().contains("0..=1000"));
    }
}
