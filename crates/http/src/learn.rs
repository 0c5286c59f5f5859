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
//! (as long as this process is the host's only client).
//!
//! Entries are kept per host in a map bounded by `max_hosts`; when it is
//! full, hosts with nothing in flight and no wait ahead are forgotten first,
//! and a host that finds no room is simply not tracked.
//!
//! A wait longer than the retry layer's cap (`max_wait`) is not slept: the
//! request fails at once with `RateLimited`, as a long `Retry-After` does.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode, header::RETRY_AFTER};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use tower_fanout_core::error::RateLimited;

use crate::{BoxError, headers};

#[derive(Debug, Default)]
struct Host {
    /// What remains, and until when the figure holds: `None` for a window
    /// begun at a reset whose end no answer has told yet.
    window: Option<(u64, Option<Instant>)>,
    /// The window's size, when the host has said it.
    limit: Option<u64>,
    in_flight: u32,
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
    hosts: Mutex<HashMap<String, Host>>,
    /// Woken by every answer and every finished request, for requests
    /// holding on [`Hold::Answer`].
    news: tokio::sync::Notify,
    max_hosts: usize,
    /// A wait for a host's reset longer than this fails with `RateLimited`
    /// instead (the retry layer's cap, so both waits are bounded alike).
    max_wait: Duration,
}

impl Learned {
    pub(crate) fn new(max_hosts: usize, max_wait: Duration) -> Self {
        Self {
            hosts: Mutex::new(HashMap::new()),
            news: tokio::sync::Notify::new(),
            max_hosts,
            max_wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Host>> {
        // Each critical section leaves the map consistent; poisoning is harmless.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one from the host's budget, or says what to wait for. `Ok(false)`:
    /// admitted but not tracked (the map is full of busy hosts).
    fn admit(&self, host: &str, now: Instant) -> Result<bool, Hold> {
        let mut hosts = self.lock();
        if !hosts.contains_key(host) {
            if hosts.len() >= self.max_hosts {
                hosts.retain(|_, h| {
                    h.in_flight > 0
                        || h.window
                            .is_some_and(|(_, until)| until.is_none_or(|u| u > now))
                });
            }
            if hosts.len() >= self.max_hosts {
                return Ok(false);
            }
            hosts.insert(host.to_string(), Host::default());
        }
        let Some(entry) = hosts.get_mut(host) else {
            return Ok(false);
        };
        // A window that has reset starts again at its known size, or ends.
        if let Some((_, Some(until))) = entry.window
            && until <= now
        {
            entry.window = entry.limit.map(|n| (n, None));
        }
        match entry.window {
            Some((0, Some(until))) => return Err(Hold::Until(until)),
            // Nothing in flight can bring an answer: stop holding.
            Some((0, None)) if entry.in_flight == 0 => entry.window = None,
            Some((0, None)) => return Err(Hold::Answer),
            Some((n, until)) => entry.window = Some((n - 1, until)),
            None => {}
        }
        entry.in_flight += 1;
        Ok(true)
    }

    fn done(&self, host: &str) {
        if let Some(entry) = self.lock().get_mut(host) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        self.news.notify_waiters();
    }

    /// Records what a response says; called before the request counts as done.
    fn learn(&self, host: &str, status: StatusCode, headers: &http::HeaderMap) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut budget = headers::budget(headers, wall);
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) && let Some(wait) = headers
            .get(RETRY_AFTER)
            .and_then(|v| headers::retry_after(v, wall))
        {
            budget = Some(headers::Budget {
                remaining: 0,
                reset: wait,
            });
        }
        let Some(budget) = budget else {
            return;
        };
        let limit = headers::limit(headers);
        {
            let mut hosts = self.lock();
            let Some(entry) = hosts.get_mut(host) else {
                return;
            };
            let others = u64::from(entry.in_flight.saturating_sub(1));
            let remaining = budget.remaining.saturating_sub(others);
            if remaining == 0 {
                tracing::debug!(
                    host,
                    wait_ms = budget.reset.as_millis() as u64,
                    "host budget spent; holding its requests until the reset"
                );
            }
            entry.window = Some((remaining, Some(now + budget.reset)));
            entry.limit = limit.or(entry.limit);
        }
        self.news.notify_waiters();
    }
}

/// Counts a request in flight until dropped.
struct InFlight {
    learned: Arc<Learned>,
    host: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.learned.done(&self.host);
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
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The host is known only with the request; the wait is in the future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let Some(learned) = self.learned.clone() else {
            return Box::pin(async move { inner.oneshot(req).await.map_err(Into::into) });
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .unwrap_or_default();
        Box::pin(async move {
            let tracked = loop {
                // Registered before looking, so news that lands in between is not missed.
                let news = learned.news.notified();
                let now = Instant::now();
                match learned.admit(&host, now) {
                    Ok(tracked) => break tracked,
                    Err(Hold::Until(until)) if until - now > learned.max_wait => {
                        let wait = until - now;
                        tracing::warn!(
                            host = %host,
                            retry_after_ms = wait.as_millis() as u64,
                            "host budget resets after the wait cap; returning rate limited"
                        );
                        return Err(RateLimited::new(wait).into());
                    }
                    Err(Hold::Until(until)) => tokio::time::sleep_until(until).await,
                    Err(Hold::Answer) => news.await,
                }
            };
            let _in_flight = tracked.then(|| InFlight {
                learned: learned.clone(),
                host: host.clone(),
            });
            let outcome = inner.oneshot(req).await.map_err(Into::into);
            if tracked && let Ok(resp) = &outcome {
                learned.learn(&host, resp.status(), resp.headers());
            }
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spent_budget_holds_until_reset() {
        let l = Learned::new(8, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(l.admit("h", now), Ok(true));
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "1".parse().unwrap());
        h.insert("x-ratelimit-reset", "2".parse().unwrap());
        l.learn("h", StatusCode::OK, &h);
        l.done("h");
        assert_eq!(l.admit("h", now), Ok(true));
        l.done("h");
        assert_eq!(
            l.admit("h", now),
            Err(Hold::Until(now + Duration::from_secs(2)))
        );
        assert_eq!(l.admit("h", now + Duration::from_secs(2)), Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_lower_what_remains() {
        let l = Learned::new(8, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit("h", now), Ok(true));
        }
        let mut h = http::HeaderMap::new();
        h.insert("ratelimit", "\"default\";r=2;t=5".parse().unwrap());
        l.learn("h", StatusCode::OK, &h);
        l.done("h");
        // Two others are still in flight: nothing is left for a new one.
        assert!(l.admit("h", now).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_window_size_holds_the_crowd_after_the_reset() {
        let l = Learned::new(8, Duration::from_secs(60));
        let second = Duration::from_secs(1);
        assert_eq!(l.admit("h", Instant::now()), Ok(true));
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-limit", "2".parse().unwrap());
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", "1".parse().unwrap());
        l.learn("h", StatusCode::OK, &h);
        l.done("h");
        let reset = Instant::now() + second;
        assert_eq!(l.admit("h", Instant::now()), Err(Hold::Until(reset)));
        // At the reset: a new window of 2, then hold for its first answer.
        tokio::time::advance(second).await;
        let now = Instant::now();
        assert_eq!(l.admit("h", now), Ok(true));
        assert_eq!(l.admit("h", now), Ok(true));
        assert_eq!(l.admit("h", now), Err(Hold::Answer));
        // The first answer: one left (before the other call in flight) in a
        // window ending in 1 s.
        h.insert("x-ratelimit-remaining", "1".parse().unwrap());
        l.learn("h", StatusCode::OK, &h);
        l.done("h");
        assert_eq!(l.admit("h", now), Err(Hold::Until(now + second)));
    }

    #[tokio::test(start_paused = true)]
    async fn holding_for_an_answer_ends_when_nothing_is_in_flight() {
        let l = Learned::new(8, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(l.admit("h", now), Ok(true));
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-limit", "1".parse().unwrap());
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", "1".parse().unwrap());
        l.learn("h", StatusCode::OK, &h);
        l.done("h");
        let reset = now + Duration::from_secs(1);
        assert_eq!(l.admit("h", reset), Ok(true));
        assert_eq!(l.admit("h", reset), Err(Hold::Answer));
        // The one in flight fails without an answer: nobody is left to wait for.
        l.done("h");
        assert_eq!(l.admit("h", reset), Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn map_stays_bounded() {
        let l = Learned::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(l.admit("a", now), Ok(true));
        assert_eq!(l.admit("b", now), Ok(true));
        assert_eq!(
            l.admit("c", now),
            Ok(false),
            "no room: not tracked, not refused"
        );
        l.done("a");
        assert_eq!(l.admit("c", now), Ok(true));
        assert_eq!(l.lock().len(), 2);
    }
}
