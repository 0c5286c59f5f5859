//! Learn each host's budget from its rate-limit response headers, and hold
//! requests while a host says nothing remains.
//!
//! Every response is read with [`headers::budget`](crate::headers::budget)
//! (the IETF `RateLimit` fields and the `X-RateLimit-*` forms) and, for a
//! 429 or 503, `Retry-After`. The host's entry then holds what remains and
//! when the window resets. Each request sent takes one from what remains;
//! when nothing does, requests to that host wait for the reset instead of
//! drawing 429s. When the host has also said how large its window is
//! (`X-RateLimit-Limit`, `RateLimit-Policy`'s `q`, ...), a new window
//! starts at the reset with that many requests, and once they are sent the
//! rest wait for the first answer of the window to say when it ends; so a
//! crowd waiting for the reset does not overrun the new window. Without a
//! known size, requests flow freely after the reset until an answer says
//! otherwise, and a crowd larger than the window can still draw a few 429s
//! (which the retry layer then honours).
//!
//! Counting is conservative: a response's `remaining` is lowered by the
//! requests still in flight to that host, since the server may not have
//! counted them yet when it answered. That can cost a short wait, never a 429
//! (as long as this process is the host's only client). Within a window that
//! has not reset, what remains only goes down: answers overtake each other,
//! and one saying more than the client holds is taken for an older one. When
//! an answer states several budgets (policies, or OpenAI's requests and
//! tokens), the tightest holds, and the next tightest that outlasts it binds
//! once it resets.
//!
//! Entries are kept per host (core's `AuthorityKey`: host and port, not the
//! path) in a map bounded by `max_hosts`; when it is full, hosts with nothing
//! in flight and no wait ahead are forgotten first, and a host that finds no
//! room is simply not tracked.
//!
//! A wait longer than the retry layer's cap (`max_wait`; with `no_retry`,
//! the retry defaults' 60 s), or one ending at or past the call's deadline
//! (the client's `deadline`), is not slept: the request fails at once with
//! `RateLimited`, as a long `Retry-After` does, wrapped in [`HostHeld`] so
//! the client's message can say the host was held by an earlier answer.
//!
//! A hold is not noted as a [`DeliberateWait`](tower_fanout_core::DeliberateWait):
//! it is the host's own word on its capacity, which an adaptive limit above
//! the client should hear (as latency), like a `Retry-After`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode, header::RETRY_AFTER};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use tower_fanout_core::error::{RateLimited, WaitDisplay};
use tower_fanout_core::keyed::{AuthorityKey, KeyFn};

use crate::{BoxError, Deadline, headers};

/// The longest a host is held for, however long it asks: a day, the bound
/// the header parsers put on resets (a bogus value, an epoch sent as
/// `Retry-After`, holds the host no longer than that).
const LONGEST_HOLD: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default)]
struct Host {
    /// What remains, and until when the figure holds: `None` for a window
    /// begun at a reset whose end no answer has told yet.
    window: Option<(u64, Option<Instant>)>,
    /// The window's size, when the host has said it.
    limit: Option<u64>,
    /// What remains once `window` resets, and until when, when the host's
    /// answer stated a budget that outlasts the tightest one.
    after: Option<(u64, Instant)>,
    in_flight: u32,
    /// Requests waiting for the host's reset or for news of its window.
    held: u32,
}

impl Host {
    /// Nothing in flight and no wait ahead: the entry can be forgotten. A
    /// window begun at a reset whose end no answer told (`None`) holds
    /// nobody once nothing is in flight: a host that stopped sending the
    /// fields left such an entry for ever.
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self
                .window
                .is_none_or(|(_, until)| until.is_none_or(|u| u <= now))
            && self.after.is_none_or(|(_, until)| until <= now)
    }
}

/// One host's entry. Requests in flight hold it, so answers and finished
/// requests reach it without a second lookup in the map.
#[derive(Debug, Default)]
pub(crate) struct Entry(Mutex<Host>);

impl Entry {
    fn lock(&self) -> MutexGuard<'_, Host> {
        // Each critical section leaves the entry consistent; poisoning is harmless.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a request may not go yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Until the window resets.
    Until(Instant),
    /// Until an answer of the new window says how it stands.
    Answer,
}

#[derive(Debug)]
pub(crate) struct Learned {
    hosts: Mutex<HashMap<Box<str>, Arc<Entry>>>,
    /// Woken by every answer and every finished request while some request
    /// holds on [`Hold::Answer`].
    news: tokio::sync::Notify,
    /// Requests that may hold on [`Hold::Answer`]: news is sent only while
    /// there are some. Raised before the holder looks at its entry, so a
    /// request that finishes after it looked sees the mark.
    holding: AtomicUsize,
    max_hosts: usize,
    /// A wait for a host's reset longer than this fails with `RateLimited`
    /// instead (the retry layer's cap, so both waits are bounded alike).
    max_wait: Duration,
    /// Whether the client retries: without, `max_wait` is no setting of the
    /// user's, and the refusal must not name a retry layer.
    retries: bool,
}

impl Learned {
    pub(crate) fn new(max_hosts: usize, max_wait: Duration) -> Self {
        Self {
            hosts: Mutex::new(HashMap::new()),
            news: tokio::sync::Notify::new(),
            holding: AtomicUsize::new(0),
            max_hosts,
            max_wait,
            retries: true,
        }
    }

    /// For a client built with `no_retry`: `max_wait` is then the retry
    /// defaults', which the refusal names as such.
    pub(crate) fn without_retries(mut self) -> Self {
        self.retries = false;
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Entry>>> {
        // Each critical section leaves the map consistent; poisoning is harmless.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of `host` (lower case), made if needed. `None`: the map is
    /// full of busy hosts, and this one is not tracked.
    fn entry(&self, host: &str) -> Option<Arc<Entry>> {
        let mut hosts = self.lock();
        if let Some(entry) = hosts.get(host) {
            return Some(entry.clone());
        }
        if hosts.len() >= self.max_hosts {
            let now = Instant::now();
            // Held by a request (in flight or waiting), or a wait ahead: kept.
            hosts.retain(|_, e| Arc::strong_count(e) > 1 || !e.lock().idle(now));
        }
        if hosts.len() >= self.max_hosts {
            return None;
        }
        let entry = Arc::new(Entry::default());
        hosts.insert(host.into(), entry.clone());
        Some(entry)
    }

    /// Requests to `host` (a key as [`AuthorityKey`] writes it) waiting for
    /// its budget: 0 for a host not tracked.
    pub(crate) fn held(&self, host: &str) -> usize {
        let entry = self.lock().get(host).cloned();
        entry.map_or(0, |e| e.lock().held as usize)
    }

    /// Takes one from the host's budget, or says what to wait for.
    fn admit(&self, entry: &Entry, now: impl FnOnce() -> Instant) -> Result<(), Hold> {
        let mut host = entry.lock();
        if host.window.is_some() {
            let now = now();
            // A window that has reset starts again at its known size, or ends;
            // unless a budget that outlasts it binds tighter.
            if let Some((_, Some(until))) = host.window
                && until <= now
            {
                host.window = match (host.after.take(), host.limit) {
                    (Some((n, end)), limit) if end > now && limit.is_none_or(|l| n <= l) => {
                        Some((n, Some(end)))
                    }
                    (_, limit) => limit.map(|n| (n, None)),
                };
            }
            match host.window {
                Some((0, Some(until))) => return Err(Hold::Until(until)),
                // Nothing in flight can bring an answer: stop holding.
                Some((0, None)) if host.in_flight == 0 => host.window = None,
                Some((0, None)) => return Err(Hold::Answer),
                Some((n, until)) => {
                    host.window = Some((n - 1, until));
                    // The request counts against the budget that binds after
                    // the reset too: answers that only confirm the tighter
                    // one's count bring no news of it.
                    if let Some((after, _)) = &mut host.after {
                        *after = after.saturating_sub(1);
                    }
                }
                None => {}
            }
        }
        host.in_flight += 1;
        Ok(())
    }

    fn notify(&self) {
        if self.holding.load(Ordering::SeqCst) > 0 {
            self.news.notify_waiters();
        }
    }

    fn done(&self, entry: &Entry) {
        {
            let mut host = entry.lock();
            host.in_flight = host.in_flight.saturating_sub(1);
        }
        self.notify();
    }

    /// Records what a response says; called before the request counts as done.
    fn learn(&self, entry: &Entry, status: StatusCode, headers: &http::HeaderMap) {
        let limited = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        if !limited && !headers::may_carry_budget(headers) {
            // Most answers say nothing: no clock is read.
            return;
        }
        // Dates and epoch resets are on the server's clock.
        let (now, wall) = (
            Instant::now(),
            headers::server_clock(headers, SystemTime::now()),
        );
        let retry_after = headers
            .get(RETRY_AFTER)
            .filter(|_| limited)
            .and_then(|v| headers::retry_after_unbounded(v, wall))
            .map(|wait| headers::Budget {
                remaining: 0,
                reset: wait,
            });
        let Some((budget, after)) = headers::budget_and_after(headers, wall, retry_after) else {
            return;
        };
        let limit = headers::limit(headers);
        {
            let mut host = entry.lock();
            let others = u64::from(host.in_flight.saturating_sub(1));
            let remaining = budget.remaining.saturating_sub(others);
            if remaining == 0 {
                tracing::debug!(
                    wait_ms = budget.reset.as_millis() as u64,
                    "host budget spent; holding its requests until the reset"
                );
            }
            // A `Retry-After` past a day is still held, and answered with
            // `RateLimited`, for a day at most (the instant cannot overflow).
            let until = now + budget.reset.min(LONGEST_HOLD);
            let after = after.map(|b| {
                (
                    b.remaining.saturating_sub(others),
                    now + b.reset.min(LONGEST_HOLD),
                )
            });
            let (remaining, until) = match host.window {
                // Within a window that has not reset, what remains only goes
                // down: answers overtake each other, and one that says more
                // is older than one already heard (or of a window that
                // cannot be told apart). A lower figure is taken with its
                // reset, unless that reset is already past.
                Some((held, Some(end))) if end > now => {
                    if remaining < held && until > now {
                        host.after = after;
                        (remaining, until)
                    } else {
                        // The budget after the reset only goes down too: the
                        // lower count, and the later end of the two.
                        host.after = match (host.after, after) {
                            (Some((n, e)), Some((m, f))) => Some((n.min(m), e.max(f))),
                            (held_after, answered) => held_after.or(answered),
                        };
                        if remaining == held {
                            (held, end.max(until))
                        } else {
                            (held, end)
                        }
                    }
                }
                _ => {
                    host.after = after;
                    (remaining, until)
                }
            };
            host.window = Some((remaining, Some(until)));
            host.limit = limit.or(host.limit);
        }
        self.notify();
    }
}

/// The key of a request's host, the one the per-host limits use (core's
/// [`AuthorityKey`]): the authority without userinfo, so `http://x@host/` is
/// the same host and does not escape its budget, in lower case, borrowed
/// when it already is.
fn host_of<B>(req: &Request<B>) -> Cow<'_, str> {
    AuthorityKey.key(req)
}

/// A call refused because its host is held by an earlier answer: core's
/// [`RateLimited`] (its source), with what the client's message names. The
/// client's [`Error`](crate::Error) takes the `RateLimited` out as its own
/// source, which callers downcast.
#[derive(Debug)]
pub(crate) struct HostHeld {
    pub(crate) limited: RateLimited,
    host: Box<str>,
    max_wait: Duration,
    retries: bool,
}

impl HostHeld {
    pub(crate) fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Display for HostHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The call itself drew no answer: name the host and the earlier
        // answer as the cause, then the limit that chose not to wait.
        write!(
            f,
            "rate limited: {} is held for another {} by an earlier answer's Retry-After or rate-limit headers",
            self.host,
            WaitDisplay(self.limited.retry_after())
        )?;
        let max_wait = WaitDisplay(self.max_wait);
        if self.limited.is_past_deadline() {
            f.write_str(
                ", which would end past the call's deadline (a later deadline would let it wait it out, or turn learn_rate_limits off)",
            )
        } else if self.retries {
            write!(
                f,
                " (longer than the retry layer's max_wait of {max_wait}; raise max_wait to wait it out, or turn learn_rate_limits off)"
            )
        } else {
            // `no_retry` leaves the retry defaults' cap on the hold, which
            // only a retry layer of no retries can change.
            write!(
                f,
                " (longer than the {max_wait} a held host is waited for with no_retry; to wait longer, pass `retry(RetryLayer::builder().max_retries(0).max_wait(..))` instead, or turn learn_rate_limits off)"
            )
        }
    }
}

impl std::error::Error for HostHeld {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.limited)
    }
}

/// Counts a request in flight until dropped.
struct InFlight {
    learned: Arc<Learned>,
    entry: Arc<Entry>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.learned.done(&self.entry);
    }
}

/// Counts a request held by its host's budget, until dropped.
struct Held<'a>(&'a Entry);

impl<'a> Held<'a> {
    fn new(entry: &'a Entry) -> Self {
        entry.lock().held += 1;
        Self(entry)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut host = self.0.lock();
        host.held = host.held.saturating_sub(1);
    }
}

/// Marks a request that may wait for news, until dropped.
struct Holding<'a>(&'a Learned);

impl<'a> Holding<'a> {
    fn new(learned: &'a Learned) -> Self {
        learned.holding.fetch_add(1, Ordering::SeqCst);
        Self(learned)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.holding.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The learning service: waits for the host's reset when its budget is
/// spent, then calls the inner service and reads the answer's headers.
#[derive(Clone)]
pub(crate) struct Learn<S> {
    inner: S,
    /// `None` when learning is off: requests pass straight through.
    learned: Option<Arc<Learned>>,
}

impl<S> Learn<S> {
    pub(crate) fn new(inner: S, learned: Option<Arc<Learned>>) -> Self {
        Self { inner, learned }
    }
}

impl<S> fmt::Debug for Learn<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learn").finish_non_exhaustive()
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Learn`]: the inner call, and the host's
    /// entry to report to when it ends. Only a request that must wait first
    /// is boxed.
    #[project = LearnProj]
    pub(crate) enum LearnFuture<F, T> {
        Call {
            #[pin]
            future: F,
            in_flight: Option<InFlight>,
        },
        Wait { future: Boxed<T> },
    }
}

impl<F, ResB, E> Future for LearnFuture<F, Response<ResB>>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LearnProj::Call { future, in_flight } => {
                let outcome = ready!(future.poll(cx)).map_err(Into::into);
                if let (Some(tracked), Ok(resp)) = (in_flight.as_ref(), &outcome) {
                    tracked
                        .learned
                        .learn(&tracked.entry, resp.status(), resp.headers());
                }
                // Done only once the answer is read.
                in_flight.take();
                Poll::Ready(outcome)
            }
            LearnProj::Wait { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B, ResB> Service<Request<B>> for Learn<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = LearnFuture<S::Future, Response<ResB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A request that may go at once is sent with this service; one that
        // must wait is sent later with a clone.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(learned) = self.learned.as_ref() else {
            return LearnFuture::Call {
                future: self.inner.call(req),
                in_flight: None,
            };
        };
        let host = host_of(&req);
        let Some(entry) = learned.entry(&host) else {
            // No room to track this host: it is admitted, untracked.
            return LearnFuture::Call {
                future: self.inner.call(req),
                in_flight: None,
            };
        };
        if learned.admit(&entry, Instant::now).is_ok() {
            // The guard first: counted in flight by `admit`, the call is
            // uncounted by its drop even if the inner `call` panics.
            let in_flight = InFlight {
                learned: learned.clone(),
                entry,
            };
            return LearnFuture::Call {
                future: self.inner.call(req),
                in_flight: Some(in_flight),
            };
        }
        let host = host.into_owned();
        LearnFuture::Wait {
            future: Box::pin(wait_then_call(
                learned.clone(),
                entry,
                host,
                self.inner.clone(),
                req,
            )),
        }
    }
}

#[cfg(test)]
impl Learned {
    /// Requests counted in flight, over every host, and requests marked
    /// as holding for news: both zero at rest.
    pub(crate) fn counts(&self) -> (u64, usize) {
        let in_flight = self
            .lock()
            .values()
            .map(|e| u64::from(e.lock().in_flight))
            .sum();
        (in_flight, self.holding.load(Ordering::SeqCst))
    }
}

/// The path of a request whose host has no budget left: wait for the reset
/// (or the window's first answer), then call.
async fn wait_then_call<S, B, ResB>(
    learned: Arc<Learned>,
    entry: Arc<Entry>,
    host: String,
    inner: S,
    req: Request<B>,
) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    let holding = Holding::new(&learned);
    let held = Held::new(&entry);
    let deadline = req.extensions().get::<Deadline>().map(|d| d.instant());
    loop {
        // Registered before looking, so news that lands in between is not missed.
        let news = learned.news.notified();
        let now = Instant::now();
        match learned.admit(&entry, || now) {
            Ok(()) => break,
            // Past the cap, or at or past the call's deadline (leaving the
            // call no time, only a timeout at its end): not slept.
            Err(Hold::Until(until))
                if until - now > learned.max_wait || deadline.is_some_and(|d| until >= d) =>
            {
                let wait = until - now;
                tracing::debug!(
                    host = %host,
                    retry_after_ms = wait.as_millis() as u64,
                    "host budget resets after the wait cap or the call's deadline; returning rate limited"
                );
                let limited = if wait > learned.max_wait {
                    RateLimited::new(wait)
                } else {
                    RateLimited::past_deadline(wait)
                };
                return Err(HostHeld {
                    limited,
                    host: host.into(),
                    max_wait: learned.max_wait,
                    retries: learned.retries,
                }
                .into());
            }
            Err(Hold::Until(until)) => tokio::time::sleep_until(until).await,
            Err(Hold::Answer) => news.await,
        }
    }
    drop(held);
    drop(holding);
    // From here on, the path of a request admitted at once.
    LearnFuture::Call {
        future: inner.oneshot(req),
        in_flight: Some(InFlight { learned, entry }),
    }
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::headers::tests::map;

    fn admit(l: &Learned, e: &Entry, now: Instant) -> Result<(), Hold> {
        l.admit(e, || now)
    }

    /// A request's answer arrives: what a `status` answer with `fields`
    /// says is learned, and the request is no longer in flight.
    fn answer(l: &Learned, e: &Entry, status: StatusCode, fields: &[(&'static str, &str)]) {
        l.learn(e, status, &map(fields));
        l.done(e);
    }

    /// A window of one request, spent, resetting in 1 s.
    const SPENT_WINDOW_OF_ONE: &[(&str, &str)] = &[
        ("x-ratelimit-limit", "1"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1"),
    ];

    /// A map of `max_hosts` in which host `a` made one request, now, and
    /// got a `status` answer with `fields`; the entry and that instant.
    fn after_one_answer(
        max_hosts: usize,
        status: StatusCode,
        fields: &[(&'static str, &str)],
    ) -> (Learned, Arc<Entry>, Instant) {
        let l = Learned::new(max_hosts, Duration::from_secs(60));
        let start = Instant::now();
        let a = l.entry("a").unwrap();
        assert_eq!(admit(&l, &a, start), Ok(()));
        answer(&l, &a, status, fields);
        (l, a, start)
    }

    #[tokio::test(start_paused = true)]
    async fn spent_budget_holds_until_reset() {
        let l = Learned::new(8, Duration::from_secs(60));
        let h = l.entry("h").unwrap();
        let now = Instant::now();
        assert_eq!(admit(&l, &h, now), Ok(()));
        answer(
            &l,
            &h,
            StatusCode::OK,
            &[("x-ratelimit-remaining", "1"), ("x-ratelimit-reset", "2")],
        );
        assert_eq!(admit(&l, &h, now), Ok(()));
        l.done(&h);
        assert_eq!(
            admit(&l, &h, now),
            Err(Hold::Until(now + Duration::from_secs(2)))
        );
        assert_eq!(admit(&l, &h, now + Duration::from_secs(2)), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_lower_what_remains() {
        let l = Learned::new(8, Duration::from_secs(60));
        let h = l.entry("h").unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(admit(&l, &h, now), Ok(()));
        }
        answer(
            &l,
            &h,
            StatusCode::OK,
            &[("ratelimit", "\"default\";r=2;t=5")],
        );
        // Two others are still in flight: nothing is left for a new one.
        assert!(admit(&l, &h, now).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_window_size_holds_the_crowd_after_the_reset() {
        let l = Learned::new(8, Duration::from_secs(60));
        let h = l.entry("h").unwrap();
        let second = Duration::from_secs(1);
        assert_eq!(admit(&l, &h, Instant::now()), Ok(()));
        answer(
            &l,
            &h,
            StatusCode::OK,
            &[
                ("x-ratelimit-limit", "2"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1"),
            ],
        );
        let reset = Instant::now() + second;
        assert_eq!(admit(&l, &h, Instant::now()), Err(Hold::Until(reset)));
        // At the reset: a new window of 2, then hold for its first answer.
        tokio::time::advance(second).await;
        let now = Instant::now();
        assert_eq!(admit(&l, &h, now), Ok(()));
        assert_eq!(admit(&l, &h, now), Ok(()));
        assert_eq!(admit(&l, &h, now), Err(Hold::Answer));
        // The first answer: one left (before the other call in flight) in a
        // window ending in 1 s.
        answer(
            &l,
            &h,
            StatusCode::OK,
            &[
                ("x-ratelimit-limit", "2"),
                ("x-ratelimit-remaining", "1"),
                ("x-ratelimit-reset", "1"),
            ],
        );
        assert_eq!(admit(&l, &h, now), Err(Hold::Until(now + second)));
    }

    #[tokio::test(start_paused = true)]
    async fn holding_for_an_answer_ends_when_nothing_is_in_flight() {
        let l = Learned::new(8, Duration::from_secs(60));
        let h = l.entry("h").unwrap();
        let now = Instant::now();
        assert_eq!(admit(&l, &h, now), Ok(()));
        answer(&l, &h, StatusCode::OK, SPENT_WINDOW_OF_ONE);
        let reset = now + Duration::from_secs(1);
        assert_eq!(admit(&l, &h, reset), Ok(()));
        assert_eq!(admit(&l, &h, reset), Err(Hold::Answer));
        // The one in flight fails without an answer: nobody is left to wait for.
        l.done(&h);
        assert_eq!(admit(&l, &h, reset), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_without_rate_limit_fields_change_nothing() {
        let l = Learned::new(8, Duration::from_secs(60));
        let h = l.entry("h").unwrap();
        let now = Instant::now();
        assert_eq!(admit(&l, &h, now), Ok(()));
        let fields = &[("content-type", "text/plain"), ("retry-after", "5")];
        // Retry-After counts on a 429 or a 503 only.
        answer(&l, &h, StatusCode::OK, fields);
        assert_eq!(h.lock().window, None);
        assert_eq!(admit(&l, &h, now), Ok(()));
        answer(&l, &h, StatusCode::TOO_MANY_REQUESTS, fields);
        assert_eq!(
            admit(&l, &h, now),
            Err(Hold::Until(now + Duration::from_secs(5)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn map_stays_bounded() {
        let l = Learned::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let a = l.entry("a").unwrap();
        let b = l.entry("b").unwrap();
        assert_eq!(admit(&l, &a, now), Ok(()));
        assert_eq!(admit(&l, &b, now), Ok(()));
        assert!(l.entry("c").is_none(), "no room: not tracked, not refused");
        l.done(&a);
        drop(a);
        assert!(l.entry("c").is_some());
        assert_eq!(l.lock().len(), 2);
        // The same host, whatever its case, is one entry.
        let req = Request::get("http://B/").body(()).unwrap();
        assert_eq!(host_of(&req), "b");
        assert!(Arc::ptr_eq(&l.entry(&host_of(&req)).unwrap(), &b));
    }

    /// A long `Retry-After` is held for its whole length, up to a day (the
    /// cap is there only so the instant cannot overflow).
    #[tokio::test(start_paused = true)]
    async fn a_two_hour_retry_after_holds_the_host_two_hours() {
        let (l, h, start) =
            after_one_answer(8, StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "7200")]);
        let later = start + Duration::from_secs(3700);
        assert_eq!(
            admit(&l, &h, later),
            Err(Hold::Until(start + Duration::from_secs(7200)))
        );
    }

    /// A second budget that outlasts the spent one binds from its reset
    /// until its own end, and only when it is tighter than the window's
    /// known size (3 here): past its end, or when it allows more, the
    /// window starts again at its size (and then holds for an answer).
    #[tokio::test(start_paused = true)]
    async fn a_second_budget_binds_until_its_end_when_tighter() {
        let (tighter, looser) = (
            "\"s\";r=0;t=1, \"m\";r=2;t=10",
            "\"s\";r=0;t=1, \"m\";r=100;t=10",
        );
        // `Some(n)`: held until n s from the start; `None`: for an answer.
        let held_until = |n| Err(Some(n));
        for (m, at, expect) in [
            (tighter, 5, [Ok(()), Ok(()), held_until(10), held_until(10)]),
            (tighter, 10, [Ok(()), Ok(()), Ok(()), Err(None)]),
            (looser, 2, [Ok(()), Ok(()), Ok(()), Err(None)]),
        ] {
            let fields = [("x-ratelimit-limit", "3"), ("ratelimit", m)];
            let (l, h, start) = after_one_answer(8, StatusCode::OK, &fields);
            let now = start + Duration::from_secs(at);
            let got: Vec<_> = (0..4).map(|_| admit(&l, &h, now)).collect();
            let want: Vec<_> = expect
                .iter()
                .map(|e| {
                    e.map_err(|until: Option<u64>| match until {
                        Some(s) => Hold::Until(start + Duration::from_secs(s)),
                        None => Hold::Answer,
                    })
                })
                .collect();
            assert_eq!(got, want, "{m} at {at} s");
        }
    }

    /// Within a window that has not reset, an answer saying less is taken
    /// with its reset; one saying as much keeps the later of the two resets;
    /// one saying more is an older answer and changes nothing. An answer
    /// that arrives when the window's end has come starts a new window.
    #[tokio::test(start_paused = true)]
    async fn answers_within_a_window_only_lower_it() {
        let budget = |remaining: &'static str, reset: &'static str| {
            [
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", reset),
            ]
        };
        // One request at 0 s is answered `first`; a second, sent at 1 s (or
        // at 0 s with the first, `early`), is answered `second` at 1 s. Then
        // four requests at `asked` s: `go` of them go, the rest are held
        // until `until` s. (Each request sent takes one from what is held.)
        for (first, second, early, asked, go, until) in [
            (budget("5", "10"), budget("3", "8"), false, 2, 3, 9),
            (budget("3", "10"), budget("2", "5"), false, 7, 2, 10),
            (budget("3", "5"), budget("2", "10"), false, 6, 2, 11),
            (budget("3", "5"), budget("9", "10"), false, 2, 2, 5),
            (budget("0", "1"), budget("3", "10"), true, 1, 3, 11),
        ] {
            let l = Learned::new(8, Duration::from_secs(60));
            let start = Instant::now();
            let a = l.entry("a").unwrap();
            for _ in 0..1 + usize::from(early) {
                assert_eq!(admit(&l, &a, start), Ok(()));
            }
            answer(&l, &a, StatusCode::OK, &first);
            tokio::time::sleep_until(start + Duration::from_secs(1)).await;
            if !early {
                assert_eq!(admit(&l, &a, Instant::now()), Ok(()), "{first:?}");
            }
            answer(&l, &a, StatusCode::OK, &second);
            let now = start + Duration::from_secs(asked);
            let got: Vec<_> = (0..4).map(|_| admit(&l, &a, now)).collect();
            let mut want = vec![Ok(()); go];
            want.resize(4, Err(Hold::Until(start + Duration::from_secs(until))));
            assert_eq!(got, want, "{first:?} then {second:?}");
        }
    }

    /// A full map forgets only hosts with nothing ahead: a spent budget is
    /// remembered until its reset, and a second budget that outlasts it
    /// until that one's, or the host's next request would go out into a
    /// spent window.
    #[tokio::test(start_paused = true)]
    async fn a_full_map_keeps_hosts_with_a_wait_ahead() {
        for (fields, kept_for) in [
            (SPENT_WINDOW_OF_ONE, 1),
            (&[("ratelimit", "\"s\";r=0;t=1, \"m\";r=5;t=10")][..], 10),
        ] {
            let (l, a, start) = after_one_answer(1, StatusCode::OK, fields);
            drop(a);
            tokio::time::sleep_until(start + Duration::from_millis(kept_for * 1000 - 1)).await;
            assert!(l.entry("b").is_none(), "{fields:?}: a's wait is ahead");
            tokio::time::sleep_until(start + Duration::from_secs(kept_for)).await;
            assert!(l.entry("b").is_some(), "{fields:?}: a's wait is over");
            assert!(!l.lock().contains_key("a"));
        }
        // An entry a request still holds (it looked the host up and has not
        // been admitted yet) is kept, though nothing is in flight: its
        // answer must reach the entry later requests see.
        let l = Learned::new(1, Duration::from_secs(60));
        let held = l.entry("a").unwrap();
        assert!(l.entry("b").is_none());
        drop(held);
        assert!(l.entry("b").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn news_reaches_a_request_holding_for_an_answer() {
        let l = Arc::new(Learned::new(8, Duration::from_secs(60)));
        let h = l.entry("h").unwrap();
        let now = Instant::now();
        assert_eq!(admit(&l, &h, now), Ok(()));
        answer(&l, &h, StatusCode::OK, SPENT_WINDOW_OF_ONE);
        tokio::time::advance(Duration::from_secs(1)).await;
        // The new window's one request is in flight; the next one holds.
        assert_eq!(admit(&l, &h, Instant::now()), Ok(()));
        let svc =
            tower::service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(())) });
        let waiter = tokio::spawn(wait_then_call(
            l.clone(),
            h.clone(),
            "h".into(),
            svc,
            Request::new(()),
        ));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(l.holding.load(Ordering::SeqCst), 1);
        // The one in flight ends without an answer: the holder goes.
        l.done(&h);
        waiter.await.unwrap().unwrap();
        assert_eq!(l.holding.load(Ordering::SeqCst), 0);
    }
}
