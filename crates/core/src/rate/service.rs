use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::sleep::ReusableSleep;
use tower_service::Service;

use super::layer::{Cost, Shared};
use super::{RateLimitHandle, ResponseFuture};
use crate::BoxError;
use crate::error::{CostExceedsBurst, NotReady, RateLimited};
use crate::future::Cold;

/// Takes tokens from a shared bucket for each request.
///
/// Built by [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, C> {
    inner: S,
    booking: Booking,
    cost: C,
    fail_fast: bool,
    sleep: ReusableSleep,
}

/// This service's standing with the bucket; gives a booked token back when dropped.
#[derive(Debug)]
struct Booking {
    shared: Arc<Shared>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Holds no token.
    Idle,
    /// Has booked `tokens` (the booking ends at `end`) that are there at `at`.
    Waiting { end: u64, at: u64, tokens: u32 },
    /// May call. `booked` is the booking a waiting limiter made (its end and
    /// tokens: one, or the layer's estimate of a cost when it had to wait);
    /// a fail-fast limiter books nothing until `call`, when the cost is known.
    Ready { booked: Option<(u64, u32)> },
}

impl Booking {
    fn give_back(&mut self) {
        if let State::Waiting { end, tokens, .. }
        | State::Ready {
            booked: Some((end, tokens)),
        } = std::mem::replace(&mut self.state, State::Idle)
        {
            self.shared.bucket.release(end, tokens);
        }
    }
}

impl Drop for Booking {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<S, C> RateLimit<S, C> {
    pub(super) fn from_shared(inner: S, shared: Arc<Shared>, cost: C, fail_fast: bool) -> Self {
        Self {
            inner,
            booking: Booking {
                shared,
                state: State::Idle,
            },
            cost,
            fail_fast,
            sleep: ReusableSleep::default(),
        }
    }

    /// A live view of the shared bucket.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: self.booking.shared.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the limiter, returning the inner service; a booked token is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn poll_sleep(&mut self, cx: &mut Context<'_>, until: u64) -> Poll<()> {
        let deadline = self.booking.shared.clock.instant(until);
        self.sleep.poll_until(deadline, cx)
    }
}

impl<S, C, Req> Service<Req> for RateLimit<S, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Cost<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Fast path, kept small so it inlines into the caller: book one token
        // and find it already there.
        if let State::Idle = self.booking.state
            && !self.fail_fast
        {
            let shared = &self.booking.shared;
            let now = shared.clock.now();
            let (end, at) = shared.bucket.take_queued(now, 1);
            if at <= now {
                self.booking.state = State::Ready {
                    booked: Some((end, 1)),
                };
                return self.poll_inner(cx);
            }
            self.start_waiting(end, at, now);
        }
        ready!(self.poll_booking(cx));
        self.poll_inner(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let State::Ready { booked } = self.booking.state else {
            return ResponseFuture::cold(not_ready());
        };
        // The booking stays until the call is made: if the cost function or
        // the inner service's `call` panics, dropping this service gives
        // the token back.
        let cost = self.cost.cost(&req);
        // When the tokens booked in poll_ready are the whole cost (one, or
        // the estimate a waiting caller booked; never more than the burst),
        // there is nothing more to check. Otherwise the cold path settles the
        // cost and returns only a refusal (a thin pointer), so that both
        // paths build the future here, in registers, rather than merging two
        // futures through memory.
        let req = if booked.is_none_or(|(_, tokens)| tokens != cost) {
            // Settling consumes the booking (its tokens are counted there).
            self.booking.state = State::Idle;
            match self.settle(booked, cost, req) {
                Ok(req) => req,
                Err(cold) => return ResponseFuture::cold(cold),
            }
        } else {
            req
        };
        let future = self.inner.call(req);
        // The call is made: from here on nothing is given back.
        self.booking.state = State::Idle;
        ResponseFuture::called(future, ())
    }
}

/// How the cost of a call was settled.
enum Settled {
    /// Every token is there: call now.
    Now,
    /// The call may not go ahead.
    Refused(BoxError),
    /// The rest of the cost is booked and arrives later: call then.
    Later(Later),
}

/// The rest of a call's cost, booked but not there yet.
#[derive(Debug, Clone, Copy)]
struct Later {
    /// When the tokens are there.
    at: u64,
    /// The end of their booking, and how many they are: given back if the
    /// caller leaves before the call.
    end: u64,
    tokens: u32,
}

impl<S, C> RateLimit<S, C> {
    /// Settles a cost other than the one token booked in `poll_ready`:
    /// gives the request back if the call goes ahead now, or the refusal or
    /// deferred call, boxed, for the response future (out of line, so the
    /// common path of `call` stays small).
    #[inline(never)]
    fn settle<Req>(
        &mut self,
        booked: Option<(u64, u32)>,
        cost: u32,
        req: Req,
    ) -> Result<Req, Box<Cold<DeferredCall<S, Req>>>>
    where
        S: Service<Req> + Clone,
    {
        match self.settle_cost(booked, cost) {
            Settled::Now => Ok(req),
            Settled::Refused(refusal) => {
                // Kept, a refused service that its caller kept (or tower's
                // `Buffer`, which keeps one for good) held a permit of a
                // limit below with nothing in flight, and other callers
                // waited on it without end.
                self.drop_readiness();
                Err(Box::new(Cold::Refused(refusal)))
            }
            Settled::Later(later) => Err(self.defer(req, later)),
        }
    }

    /// Drops the inner service readied for a call that will not be made on
    /// it, a clone in its place: the readied one holds what its readiness
    /// took below (a concurrency permit, a queue slot, another rate limit's
    /// token) until it is called or dropped.
    #[cold]
    fn drop_readiness(&mut self)
    where
        S: Clone,
    {
        let fresh = self.inner.clone();
        drop(std::mem::replace(&mut self.inner, fresh));
    }

    /// Hands the call to the response future, which makes it once its cost
    /// is there, on a clone of the inner service that it readies then. The
    /// inner service readied for this call is dropped now, a clone in its
    /// place: what its readiness took below (a token of another rate limit,
    /// a concurrency permit) would be held through the wait, and spent late:
    /// a rate limit below, its token booked at the readiness and spent at
    /// the deferred call, let two calls through 67 ms apart where its bound
    /// allowed one (a randomised trial).
    #[cold]
    fn defer<Req>(&mut self, req: Req, later: Later) -> Box<Cold<DeferredCall<S, Req>>>
    where
        S: Service<Req> + Clone,
    {
        self.drop_readiness();
        let unready = self.inner.clone();
        let now = self.booking.shared.clock.now();
        tracing::debug!(
            tokens = later.tokens,
            wait_ms = Duration::from_nanos(later.at.saturating_sub(now)).as_millis() as u64,
            "rate limited; the call waits for the rest of its cost"
        );
        Box::new(Cold::Deferred(DeferredCall(Waiting {
            svc: Some(unready),
            req: Some(req),
            shared: self.booking.shared.clone(),
            later: Some(later),
            slept: false,
            sleep: ReusableSleep::default(),
        })))
    }
}

/// A call whose cost is not all there yet, held by its response future until
/// it is: a clone of the inner service, readied once the tokens are there,
/// and the request (in the future's box for rare states, so the response
/// future of every other call stays small).
pub struct DeferredCall<S, Req>(Waiting<S, Req>);

struct Waiting<S, Req> {
    svc: Option<S>,
    req: Option<Req>,
    shared: Arc<Shared>,
    /// `None` once the call is made (nothing to give back then).
    later: Option<Later>,
    /// The tokens are there: the inner service is being readied.
    slept: bool,
    sleep: ReusableSleep,
}

impl<S, Req> Drop for Waiting<S, Req> {
    fn drop(&mut self) {
        // Left before the call: the tokens go back, or to the next caller
        // that would wait for later ones.
        if let Some(later) = self.later.take() {
            self.shared.bucket.release(later.end, later.tokens);
        }
    }
}

impl<S, Req> crate::future::Deferred<S::Future, ()> for DeferredCall<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Result<(S::Future, ()), BoxError>> {
        let waiting = &mut self.0;
        let Some(later) = waiting.later else {
            return Poll::Ready(Err(crate::error::polled_after_completion()));
        };
        if !waiting.slept {
            let deadline = waiting.shared.clock.instant(later.at);
            ready!(waiting.sleep.poll_until(deadline, cx));
            waiting.slept = true;
        }
        let Some(svc) = waiting.svc.as_mut() else {
            waiting.later = None;
            return Poll::Ready(Err(crate::error::polled_after_completion()));
        };
        if let Err(err) = ready!(svc.poll_ready(cx)) {
            // No call: the tokens go back when this is dropped.
            waiting.svc = None;
            return Poll::Ready(Err(err.into()));
        }
        match (waiting.svc.take(), waiting.req.take()) {
            (Some(mut svc), Some(req)) => {
                // The tokens are spent once the call is made: a panic in
                // `call` leaves them booked for the drop to give back.
                let future = svc.call(req);
                waiting.later = None;
                Poll::Ready(Ok((future, ())))
            }
            _ => {
                waiting.later = None;
                Poll::Ready(Err(crate::error::polled_after_completion()))
            }
        }
    }
}

impl<S, Req> fmt::Debug for DeferredCall<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredCall")
            .field("later", &self.0.later)
            .finish_non_exhaustive()
    }
}

impl<S, C> RateLimit<S, C> {
    /// The inner service's readiness, once this service may call.
    #[inline]
    fn poll_inner<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let ready = self.inner.poll_ready(cx);
        if let Poll::Ready(Err(_)) = ready {
            self.inner_failed();
        }
        ready.map_err(Into::into)
    }
}

// Everything but the fast paths, out of line so that `poll_ready` and `call`
// stay small enough to inline into the caller.
impl<S, C> RateLimit<S, C> {
    /// The inner service failed its `poll_ready`: it is broken (tower), so
    /// the booked token goes back (if nothing was booked behind it) and the
    /// service is no longer ready, rather than the token being spent on a
    /// call that never happens.
    #[cold]
    #[inline(never)]
    fn inner_failed(&mut self) {
        self.booking.give_back();
    }

    #[cold]
    #[inline(never)]
    fn start_waiting(&mut self, end: u64, at: u64, now: u64) {
        let shared = &self.booking.shared;
        let bucket = &shared.bucket;
        // A caller that waits books the cost the layer's calls repeat, if
        // they do, not one token: a call whose cost its booking does not
        // cover gives the booking up and books its cost behind everyone
        // else's, and under contention the slot it gave up went unused (20
        // callers of cost 2 got 0.61 of the rate).
        let tokens = shared
            .estimate
            .load(Ordering::Relaxed)
            .clamp(1, bucket.burst());
        let (end, at) = if tokens > 1 {
            bucket.release(end, 1);
            bucket.take_queued(now, tokens)
        } else {
            (end, at)
        };
        // A slot given up by a caller that left comes sooner, maybe.
        let (end, at) = bucket.rebook(now, end, at, tokens);
        if at <= now {
            self.booking.state = State::Ready {
                booked: Some((end, tokens)),
            };
            return;
        }
        tracing::debug!(
            tokens = 0,
            wait_ms = Duration::from_nanos(at - now).as_millis() as u64,
            "rate limited; waiting for a token"
        );
        self.booking.state = State::Waiting { end, at, tokens };
    }

    /// Drives the booking until this service may call.
    #[inline(never)]
    fn poll_booking(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.booking.state {
                State::Ready { .. } => return Poll::Ready(()),
                State::Idle => {
                    // A waiting limiter books its token in `poll_ready`'s fast
                    // path and comes here ready or waiting: only a fail-fast
                    // one is idle here, and it books at `call`, by the cost.
                    debug_assert!(self.fail_fast);
                    self.booking.state = State::Ready { booked: None };
                }
                State::Waiting { end, at, tokens } => {
                    ready!(self.poll_sleep(cx, at));
                    self.booking.state = State::Ready {
                        booked: Some((end, tokens)),
                    };
                }
            }
        }
    }

    /// Settles a cost other than the tokens booked in `poll_ready`.
    #[inline]
    fn settle_cost(&mut self, booked: Option<(u64, u32)>, cost: u32) -> Settled {
        let shared = &self.booking.shared;
        let bucket = &shared.bucket;
        if cost > bucket.burst() {
            if let Some((end, tokens)) = booked {
                bucket.release(end, tokens);
            }
            tracing::debug!(
                cost,
                burst = bucket.burst(),
                "request costs more than the burst"
            );
            return Settled::Refused(CostExceedsBurst::new(cost, bucket.burst()).into());
        }
        match booked {
            Some((first, tokens)) => {
                // What the next caller to wait books: a cost that calls
                // repeat; one token while they vary (each booking that is
                // too large or too small costs its caller a wait or, under
                // contention, the slots it gives up: one token, not a
                // whole estimate, for costs that vary). A free call says
                // nothing of the others' costs.
                if cost > 0 {
                    let before = shared.last_cost.swap(cost, Ordering::Relaxed);
                    let estimate = if before == cost { cost } else { 1 };
                    shared.estimate.store(estimate, Ordering::Relaxed);
                }
                if cost < tokens {
                    // The tokens were all there (this service waited for
                    // them): the call takes the first `cost`, the rest go
                    // back (the booking's last ones).
                    bucket.release(first, tokens - cost);
                } else if cost > tokens {
                    // The whole cost is booked now, in one stretch, and the
                    // booking made in `poll_ready` given up; if the tokens
                    // are not there yet, the call waits for them (in its
                    // response future), so the bound holds whatever the
                    // cost and however many services were ready together.
                    // Booking only the rest, behind every other caller's
                    // booking, spent the first ones long after their slot,
                    // beside the rest: ten callers of cost 2 ready together
                    // went out at twice the rate, 18 tokens in a window
                    // that allowed 10.
                    let now = shared.clock.now();
                    bucket.release(first, tokens);
                    let (end, at) = bucket.take_queued(now, cost);
                    let (end, at) = bucket.rebook(now, end, at, cost);
                    if at > now {
                        return Settled::Later(Later {
                            at,
                            end,
                            tokens: cost,
                        });
                    }
                }
            }
            None if cost == 0 => {}
            None => {
                if let Err(wait) = bucket.try_take(shared.clock.now(), cost) {
                    let retry_after = Duration::from_nanos(wait);
                    tracing::debug!(
                        cost,
                        retry_after_ms = retry_after.as_millis() as u64,
                        "rate limited; refused"
                    );
                    return Settled::Refused(RateLimited::new(retry_after).into());
                }
            }
        }
        Settled::Now
    }
}

#[cold]
#[inline(never)]
fn not_ready<D>() -> Box<Cold<D>> {
    Box::new(Cold::Refused(NotReady::new().into()))
}

impl<S: Clone, C: Clone> Clone for RateLimit<S, C> {
    /// The clone shares the bucket but holds no booking of its own.
    fn clone(&self) -> Self {
        Self::from_shared(
            self.inner.clone(),
            self.booking.shared.clone(),
            self.cost.clone(),
            self.fail_fast,
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for RateLimit<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("state", &self.booking.state)
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}
