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

/// Holds a permit from an adaptive limit for each call in flight and reports
/// each finished call to the limit's controller.
///
/// Built by [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer).
#[derive(Debug)]
pub struct AdaptiveLimit<S, K> {
    inner: S,
    shared: Arc<Shared>,
    acquire: Acquire,
    permit: Option<Permit>,
    classify: K,
    fail_fast: bool,
    shed: bool,
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
            shed: false,
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
            if self.fail_fast {
                match self.acquire.try_acquire() {
                    Some(permit) => self.permit = Some(permit),
                    None => {
                        // Stay ready and answer the call with the refusal, as
                        // the concurrency layer does.
                        self.shed = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            } else {
                match self.acquire.poll_acquire(cx) {
                    Poll::Ready(permit) => self.permit = Some(permit),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        self.shed = false;
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.permit.take() {
            Some(permit) => {
                let guard = Guard {
                    in_flight: self.shared.semaphore.in_use(),
                    limit: self.shared.semaphore.limit(),
                    started: Instant::now(),
                    shared: self.shared.clone(),
                    _permit: permit,
                };
                ResponseFuture::called(self.inner.call(req), guard, self.classify.clone())
            }
            None if std::mem::take(&mut self.shed) => {
                tracing::debug!(
                    limit = self.shared.semaphore.limit(),
                    "adaptive limit reached; shed"
                );
                ResponseFuture::refused(Overloaded::new())
            }
            None => ResponseFuture::refused(NotReady::new()),
        }
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
            shed: false,
        }
    }
}
