use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{ConcurrencyLimitHandle, ResponseFuture};
use crate::BoxError;
use crate::error::{NotReady, Overloaded};
use crate::future::{Cold, Never};
use crate::semaphore::{Acquire, Permit, Semaphore};

/// Holds a permit from a shared limit for each call in flight.
///
/// Built by [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer).
#[derive(Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    acquire: Acquire,
    permit: Option<Permit>,
    fail_fast: bool,
    shed: bool,
}

impl<S> ConcurrencyLimit<S> {
    pub(super) fn from_shared(inner: S, semaphore: Arc<Semaphore>, fail_fast: bool) -> Self {
        Self {
            inner,
            acquire: Acquire::new(semaphore),
            permit: None,
            fail_fast,
            shed: false,
        }
    }

    /// A live view of the shared limit.
    pub fn handle(&self) -> ConcurrencyLimitHandle {
        ConcurrencyLimitHandle {
            semaphore: self.acquire.semaphore().clone(),
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

    /// Consumes the limit, returning the inner service; a permit it held goes
    /// back to the limit.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            // Spelled out rather than through `Acquire::poll_or_shed` (which
            // the other layers use): through it the bench read 1.03–1.07 of
            // tower's added time uncontended, this way 0.99–1.03.
            if self.fail_fast {
                match self.acquire.try_acquire() {
                    Some(permit) => self.permit = Some(permit),
                    None => {
                        // Like tower's LoadShed: stay ready and answer the
                        // call with an error, since an error from poll_ready
                        // would mean this service is broken for good.
                        self.shed = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            } else {
                match self.acquire.poll_acquire(cx) {
                    Poll::Ready(permit) => self.permit = Some(permit),
                    Poll::Pending => return self.waiting(),
                }
            }
        }
        self.shed = false;
        let ready = self.inner.poll_ready(cx);
        if let Poll::Ready(Err(_)) = ready {
            self.inner_failed();
        }
        ready.map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.permit.take() {
            Some(permit) => ResponseFuture::called(self.inner.call(req), permit),
            // The refusal is built out of line and only its thin pointer
            // comes back: a whole future returned through memory met the
            // fast path's in a stack slot, written as two 8-byte stores and
            // read back as one 16-byte load (a store-forwarding stall).
            None => ResponseFuture::cold(self.refuse()),
        }
    }
}

// The slow paths are kept out of line so that `poll_ready` and `call` stay
// small enough to inline into the caller: the benches showed a non-inlined
// `call` costing more than the permit itself.
impl<S> ConcurrencyLimit<S> {
    #[cold]
    #[inline(never)]
    fn waiting(&self) -> Poll<Result<(), BoxError>> {
        tracing::trace!(
            waiting = self.acquire.semaphore().waiting(),
            "waiting for a permit"
        );
        Poll::Pending
    }

    /// The inner service failed its `poll_ready`: it is broken (tower), so
    /// the permit goes back rather than stay with a service that may be
    /// kept around and never called, holding up every other clone.
    #[cold]
    #[inline(never)]
    fn inner_failed(&mut self) {
        self.permit = None;
    }

    #[cold]
    #[inline(never)]
    fn refuse(&mut self) -> Box<Cold<Never>> {
        let error: BoxError = if std::mem::take(&mut self.shed) {
            tracing::debug!(
                limit = self.acquire.semaphore().limit(),
                "concurrency limit reached; shed"
            );
            Overloaded::new().into()
        } else {
            NotReady::new().into()
        };
        Box::new(Cold::Refused(error))
    }
}

impl<S: Clone> Clone for ConcurrencyLimit<S> {
    /// The clone shares the limit but holds no permit of its own.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            acquire: self.acquire.clone(),
            permit: None,
            fail_fast: self.fail_fast,
            shed: false,
        }
    }
}
