//! The keyed limit's response future: wait for the key's permit and token, then call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_service::Service;

use super::map::KeyState;
use crate::clock::Clock;
use crate::error::{Overloaded, RateLimited, polled_after_completion};
use crate::semaphore::{Acquire, Permit};
use crate::sleep::ReusableSleep;
use crate::{BoxError, Deadline};

pin_project! {
    /// Waits for the key's permit, then its token, then runs the inner call
    /// while holding the permit.
    ///
    /// Dropping it while it waits leaves the permit queue, or returns the
    /// permit and gives back the booked token; dropping it while the call
    /// runs returns the permit.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        kind: Kind<S, Req, S::Future>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, F> {
        Waiting { wait: Option<Box<Wait<S, Req>>> },
        Admitted { svc: Option<S>, req: Option<Req>, guard: Option<Guard> },
        Called { #[pin] future: F, guard: Option<Guard> },
        Refused { error: Option<BoxError> },
        // Answered after the call: still admitted (a layer above reads
        // `is_admitted` after the poll that finished the call).
        Done,
    }
}

/// Held while the call runs: the permit, and the key's state so the map
/// does not forget a key that is in use.
#[derive(Debug)]
struct Guard {
    _permit: Option<Permit>,
    _state: Arc<KeyState>,
}

struct Wait<S, Req> {
    svc: Option<S>,
    req: Option<Req>,
    state: Arc<KeyState>,
    clock: Clock,
    fail_fast: bool,
    /// The end of the booked token, while it can still be given back.
    booking: Option<u64>,
    /// When the booked token arrives, if it was not there at once; while
    /// it is awaited the call is counted in the key's `awaiting_token`.
    token_at: Option<u64>,
    /// When the call must be done ([`KeyFn::deadline`](super::KeyFn::deadline)):
    /// a token due at or after it is not waited for.
    deadline: Option<Deadline>,
    token_done: bool,
    sleep: ReusableSleep,
    acquire: Option<Acquire>,
    /// The key's permit once granted (`Some(None)` for a key without a
    /// concurrency limit), held while the token is awaited and then while
    /// the inner service gets ready.
    permit: Option<Option<Permit>>,
}

impl<S, Req> Drop for Wait<S, Req> {
    fn drop(&mut self) {
        if let (Some(end), Some(bucket)) = (self.booking.take(), self.state.bucket.as_ref()) {
            bucket.release(end, 1);
        }
        if self.token_at.is_some() && !self.token_done {
            self.state.awaiting_token.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<S, Req> Wait<S, Req> {
    /// Past the key's gate: permit and token both granted.
    fn admitted(&self) -> bool {
        self.permit.is_some() && self.token_done
    }

    /// Waits for the key's token; `Err` is a fail-fast refusal.
    fn poll_token(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.token_done {
            return Poll::Ready(Ok(()));
        }
        let Some(bucket) = self.state.bucket.as_ref() else {
            self.token_done = true;
            return Poll::Ready(Ok(()));
        };
        if self.token_at.is_none() && self.booking.is_none() {
            let now = self.clock.now();
            if self.fail_fast {
                match bucket.try_take(now, 1) {
                    Ok(end) => self.booking = Some(end),
                    Err(wait) => {
                        let retry_after = Duration::from_nanos(wait);
                        tracing::debug!(
                            retry_after_ms = retry_after.as_millis() as u64,
                            "keyed rate limit; refused"
                        );
                        return Poll::Ready(Err(RateLimited::new(retry_after).into()));
                    }
                }
            } else {
                let (end, at) = bucket.take_queued(now, 1);
                // A slot given up by a caller that left comes sooner, maybe.
                let (end, at) = bucket.rebook(now, end, at, 1);
                // Given back with the wait if the call is refused below.
                self.booking = Some(end);
                if at > now {
                    if let Some(deadline) = self.deadline
                        && at >= self.clock.nanos(deadline.instant())
                    {
                        let retry_after = Duration::from_nanos(at - now);
                        tracing::debug!(
                            retry_after_ms = retry_after.as_millis() as u64,
                            "keyed rate limit; the token would come past the call's deadline; refused"
                        );
                        return Poll::Ready(Err(RateLimited::past_deadline(retry_after).into()));
                    }
                    tracing::debug!(
                        wait_ms = Duration::from_nanos(at - now).as_millis() as u64,
                        "keyed rate limit; waiting for a token"
                    );
                    self.token_at = Some(at);
                    self.state.awaiting_token.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(at) = self.token_at {
            let deadline = self.clock.instant(at);
            ready!(self.sleep.poll_until(deadline, cx));
            self.state.awaiting_token.fetch_sub(1, Ordering::Relaxed);
        }
        self.token_done = true;
        Poll::Ready(Ok(()))
    }

    /// Waits for the key's permit (none when the key has no concurrency limit).
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Permit>, BoxError>> {
        let Some(semaphore) = self.state.semaphore.as_ref() else {
            return Poll::Ready(Ok(None));
        };
        let acquire = self
            .acquire
            .get_or_insert_with(|| Acquire::new(semaphore.clone()));
        if self.fail_fast {
            return Poll::Ready(match acquire.try_acquire() {
                Some(permit) => Ok(Some(permit)),
                None => {
                    tracing::debug!(
                        limit = semaphore.limit(),
                        "keyed concurrency limit reached; shed"
                    );
                    Err(Overloaded::new().into())
                }
            });
        }
        match acquire.poll_acquire(cx) {
            Poll::Ready(permit) => Poll::Ready(Ok(Some(permit))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(super) fn new(
        svc: S,
        req: Req,
        state: Arc<KeyState>,
        clock: Clock,
        fail_fast: bool,
        deadline: Option<Deadline>,
    ) -> Self {
        Self {
            kind: Kind::Waiting {
                wait: Some(Box::new(Wait {
                    svc: Some(svc),
                    req: Some(req),
                    state,
                    clock,
                    fail_fast,
                    booking: None,
                    token_at: None,
                    deadline,
                    token_done: false,
                    sleep: ReusableSleep::default(),
                    acquire: None,
                    permit: None,
                })),
            },
        }
    }

    /// A call the key admitted at once (no token to wait for, a permit
    /// free): nothing to wait for but the inner service, so no wait state.
    pub(super) fn admitted(svc: S, req: Req, state: Arc<KeyState>, permit: Option<Permit>) -> Self {
        Self {
            kind: Kind::Admitted {
                svc: Some(svc),
                req: Some(req),
                guard: Some(Guard {
                    _permit: permit,
                    _state: state,
                }),
            },
        }
    }

    pub(super) fn refused(error: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Refused {
                error: Some(error.into()),
            },
        }
    }

    /// Whether the call is past its key's gate: its permit and token are
    /// granted, so a `Pending` from here on is the inner service's. A layer
    /// above can time the gate's wait alone with it (the http client notes
    /// it as a [`DeliberateWait`](crate::DeliberateWait)).
    pub fn is_admitted(&self) -> bool {
        match &self.kind {
            Kind::Waiting { wait } => wait.as_ref().is_some_and(|w| w.admitted()),
            Kind::Admitted { .. } | Kind::Called { .. } | Kind::Done => true,
            Kind::Refused { .. } => false,
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().kind.project() {
                KindProj::Waiting { wait } => {
                    let Some(w) = wait.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if !w.admitted() {
                        // The permit first: only calls holding one book
                        // tokens, so a call goes out as its token arrives
                        // and the key's rate bounds what reaches the
                        // downstream. Tokens booked before a permit wait
                        // would let calls that got theirs apart go out
                        // together when permits free together.
                        if w.permit.is_none() {
                            match ready!(w.poll_permit(cx)) {
                                Ok(permit) => w.permit = Some(permit),
                                Err(e) => {
                                    wait.take();
                                    return Poll::Ready(Err(e));
                                }
                            }
                        }
                        if let Err(e) = ready!(w.poll_token(cx)) {
                            // Dropping the wait returns the permit.
                            wait.take();
                            return Poll::Ready(Err(e));
                        }
                    }
                    // Only an admitted call asks the inner service for
                    // readiness, so a waiting one reserves nothing downstream.
                    let Some(svc) = w.svc.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        wait.take();
                        return Poll::Ready(Err(e.into()));
                    }
                    let permit = w.permit.take().flatten();
                    let (svc, req) = (w.svc.take(), w.req.take());
                    let state = w.state.clone();
                    let (Some(mut svc), Some(req)) = (svc, req) else {
                        wait.take();
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    // The call consumes the token once it is made: a panic
                    // in the inner service's `call` drops the wait with its
                    // booking, which gives the token back (and the permit,
                    // a local here, goes back too).
                    let future = svc.call(req);
                    w.booking = None;
                    wait.take();
                    self.as_mut().project().kind.set(Kind::Called {
                        future,
                        guard: Some(Guard {
                            _permit: permit,
                            _state: state,
                        }),
                    });
                }
                KindProj::Admitted { svc, req, guard } => {
                    let Some(inner) = svc.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if let Err(e) = ready!(inner.poll_ready(cx)) {
                        // The permit goes back with the failure.
                        guard.take();
                        svc.take();
                        return Poll::Ready(Err(e.into()));
                    }
                    let (svc, req, guard) = (svc.take(), req.take(), guard.take());
                    let (Some(mut svc), Some(req)) = (svc, req) else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = svc.call(req);
                    self.as_mut()
                        .project()
                        .kind
                        .set(Kind::Called { future, guard });
                }
                KindProj::Called { future, guard } => {
                    let output = ready!(future.poll(cx));
                    // Free the permit as soon as the answer is in.
                    guard.take();
                    // Done: a poll after this one answers an error rather
                    // than polling the finished inner future again.
                    self.as_mut().project().kind.set(Kind::Done);
                    return Poll::Ready(output.map_err(Into::into));
                }
                KindProj::Refused { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)));
                }
                KindProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
