use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_fanout_core::BoxError;
use tower_fanout_core::rate::Cost;
use tower_service::Service;

use super::layer::Shared;
use crate::future::ResponseFuture;
use crate::key::LimitKey;

/// Takes tokens from a limit kept on Redis for each request.
///
/// Built by [`RedisRateLimitLayer`](super::RedisRateLimitLayer).
///
/// The decision needs the request (its cost and its key), so it is made
/// in the response future, not in `poll_ready`: `poll_ready` is always
/// ready, and the future asks Redis, waits for the tokens if it must, then
/// drives a clone of the inner service to readiness and calls it. A caller
/// waiting for tokens holds nothing of the inner service (no concurrency
/// permit, no connection).
///
/// It does not read a request's `Deadline` (tower-fanout-core's, which the
/// http client and the keyed limit read): it serves any request type, not
/// only `http::Request`, so a wait for tokens runs to its end. To bound it,
/// put a timeout above the limiter (`tower::timeout::TimeoutLayer`, or the
/// caller's own): a call dropped while it waits gives its tokens back when
/// no later call has booked after it. Under a sustained overload of callers
/// that give up, the later ones have: set
/// [`max_wait`](super::RedisRateLimitBuilder::max_wait) no longer than that
/// timeout, so a caller that would give up is refused instead of booking.
/// With [`fail_fast`](super::RedisRateLimitBuilder::fail_fast) nothing
/// waits: the call is refused with the wait instead.
pub struct RedisRateLimit<S, C, K> {
    inner: S,
    shared: Arc<Shared>,
    cost: C,
    key: K,
}

impl<S, C, K> RedisRateLimit<S, C, K> {
    pub(super) fn new(inner: S, shared: Arc<Shared>, cost: C, key: K) -> Self {
        Self {
            inner,
            shared,
            cost,
            key,
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

    /// Consumes the limiter, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, K, Req> Service<Req> for RedisRateLimit<S, C, K>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    Req: Send + 'static,
    C: Cost<Req>,
    K: LimitKey<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let cost = self.cost.cost(&req);
        let key = self.key.key(&req);
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(async move {
            // Until the call is made, dropping the booking gives its tokens back.
            let booking = shared.admit(key, cost).await?;
            poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = inner.call(req);
            if let Some(booking) = booking {
                booking.spend();
            }
            response.await.map_err(Into::into)
        })
    }
}

impl<S: Clone, C: Clone, K: Clone> Clone for RedisRateLimit<S, C, K> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.shared.clone(),
            self.cost.clone(),
            self.key.clone(),
        )
    }
}

impl<S: fmt::Debug, C, K> fmt::Debug for RedisRateLimit<S, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}
