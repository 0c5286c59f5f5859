use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::future::{Guard, ResponseFuture};
use super::layer::{AdaptiveLimitHandle, Shared};
use crate::BoxError;
use crate::classify::Classify;
use crate::error::{NotReady, Overloaded};
use crate::semaphore::{Acquire, Permit};
use crate::sleep::ReusableSleep;

/// Holds a permit from an adaptive limit for each call in flight and reports
/// each finished call to the limit's controller.
///
/// Built by [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer).
pub struct AdaptiveLimit<S, K> {
    inner: S,
    shared: Arc<Shared>,
    acquire: Acquire,
    permit: Option<Permit>,
    classify: K,
    fail_fast: bool,
    /// The refusal `call` answers with, when `poll_ready` shed (fail-fast).
    shed: Option<Overloaded>,
    /// Waits out a hold (no permit yet) or a pacing slot (with a permit).
    sleep: ReusableSleep,
    /// The pacing slot of the permit held, until it has come.
    pace_slot: Option<PaceSlot>,
    /// When the permit was taken, if pacing then delayed the call: the call
    /// belongs to the limit of then.
    admitted: Option<Instant>,
}

/// A pacing slot booked with a permit, until it has come. A service dropped
/// before then (its caller gave up) gives it back, or each caller that gave
/// up would push every later call's slot one interval further out.
#[derive(Debug)]
struct PaceSlot {
    at: Instant,
    shared: Arc<Shared>,
}

impl Drop for PaceSlot {
    fn drop(&mut self) {
        self.shared.give_back_slot(self.at);
    }
}

impl<S, K> AdaptiveLimit<S, K> {
    pub(super) fn from_shared(inner: S, shared: Arc<Shared>, classify: K, fail_fast: bool) -> Self {
        Self {
            inner,
            acquire: Acquire::new(shared.semaphore.clone()),
            shared,
            permit: None,
            classify,
            fail_fast,
            shed: None,
            sleep: ReusableSleep::default(),
            pace_slot: None,
            admitted: None,
        }
    }

    /// A live view of the shared limit.
    pub fn handle(&self) -> AdaptiveLimitHandle {
        AdaptiveLimitHandle {
            shared: self.shared.clone(),
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

    /// Consumes the limit, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, Req> Service<Req> for AdaptiveLimit<S, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            // After a long Retry-After no call goes out until it is over:
            // each would only be refused.
            if let Some(until) = self.shared.held_until() {
                if self.fail_fast {
                    self.shed = Some(Overloaded::held());
                    return Poll::Ready(Ok(()));
                }
                if self.sleep.poll_until(until, cx).is_pending() {
                    return Poll::Pending;
                }
            }
            match self.acquire.poll_or_shed(self.fail_fast, cx) {
                Poll::Ready(Some(permit)) => self.permit = Some(permit),
                Poll::Ready(None) => {
                    // Stay ready and answer the call with the refusal, as
                    // the concurrency layer does.
                    self.shed = Some(Overloaded::new());
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
            self.admitted = None;
            if let Some((now, slot)) = self.shared.pace() {
                // The slot is taken now, with the permit, so that permits
                // freed together go out one slot apart.
                self.admitted = Some(now);
                self.pace_slot = Some(PaceSlot {
                    at: slot,
                    shared: self.shared.clone(),
                });
            }
        }
        if let Some(slot) = &self.pace_slot {
            if self.sleep.poll_until(slot.at, cx).is_pending() {
                return Poll::Pending;
            }
            self.pace_slot = None;
            // A hold begun while this call waited for its slot (a long
            // Retry-After answered meanwhile) holds it too: its permit goes
            // back, and it waits for the hold's end as a new call would.
            if self.shared.held_until().is_some() {
                self.permit = None;
                self.admitted = None;
                return self.poll_ready(cx);
            }
        }
        self.shed = None;
        let ready = self.inner.poll_ready(cx);
        if let Poll::Ready(Err(_)) = ready {
            // Broken for good (tower): the permit goes back rather than stay
            // with a service that may be kept around and never called.
            self.permit = None;
            self.admitted = None;
        }
        ready.map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // A permit whose pacing slot has not come is not readiness (nor has
        // the inner service been asked): such a call would skip the pace and
        // reach an inner service not ready. It keeps the permit and the slot.
        if self.pace_slot.is_some() {
            return ResponseFuture::refused(NotReady::new());
        }
        match self.permit.take() {
            Some(permit) => {
                let started = Instant::now();
                let semaphore = &self.shared.semaphore;
                let guard = Guard {
                    // The callers queued for a permit count too: they are the
                    // demand the limit holds back, which a full limit alone
                    // does not tell from a demand it just meets.
                    in_flight: semaphore.in_use().saturating_add(semaphore.waiting()),
                    limit: self.shared.semaphore.limit(),
                    started,
                    admitted: self.admitted.take().unwrap_or(started),
                    shared: self.shared.clone(),
                    _permit: permit,
                };
                ResponseFuture::called(self.inner.call(req), guard, self.classify.clone())
            }
            None => match self.shed.take() {
                Some(refusal) => {
                    tracing::debug!(
                        limit = self.shared.semaphore.limit(),
                        "adaptive limit reached; shed"
                    );
                    ResponseFuture::refused(refusal)
                }
                None => ResponseFuture::refused(NotReady::new()),
            },
        }
    }
}

// By hand: a classifier is often a closure, which is never `Debug`.
impl<S: fmt::Debug, K> fmt::Debug for AdaptiveLimit<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .field("holds_permit", &self.permit.is_some())
            .field("classify", &std::any::type_name::<K>())
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, K: Clone> Clone for AdaptiveLimit<S, K> {
    /// The clone shares the limit but holds no permit of its own.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            acquire: self.acquire.clone(),
            permit: None,
            classify: self.classify.clone(),
            fail_fast: self.fail_fast,
            shed: None,
            sleep: ReusableSleep::default(),
            pace_slot: None,
            admitted: None,
        }
    }
}
