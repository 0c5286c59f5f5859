use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{KeyFn, KeyedLimitHandle};
use super::map::Keys;
use crate::BoxError;
use crate::semaphore::Permit;

/// Limits each key's calls separately; built by [`KeyedLimitLayer`](super::KeyedLimitLayer).
///
/// The key is known only once the request is, so `poll_ready` is always
/// ready (as tower's `Buffer` is) and the whole wait happens in the response
/// future, which owns a clone of the inner service: first the key's permit,
/// then its token, then the inner service's readiness, then the call. A
/// call still waiting on its key reserves nothing in the inner service.
pub struct KeyedLimit<S, F, K> {
    inner: S,
    key_fn: F,
    keys: Arc<Keys<K>>,
}

impl<S, F, K> KeyedLimit<S, F, K> {
    pub(super) fn from_shared(inner: S, key_fn: F, keys: Arc<Keys<K>>) -> Self {
        Self {
            inner,
            key_fn,
            keys,
        }
    }

    /// A live view of the per-key state.
    pub fn handle(&self) -> KeyedLimitHandle<K> {
        KeyedLimitHandle {
            keys: self.keys.clone(),
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

impl<S, F, Req> Service<Req> for KeyedLimit<S, F, F::Key>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    F: KeyFn<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let state = match self.keys.get(self.key_fn.key(&req)) {
            Ok(state) => state,
            Err(e) => {
                tracing::debug!(
                    max_keys = e.max_keys(),
                    "keyed limit: every key is busy, none to evict; refused"
                );
                return ResponseFuture::refused(e);
            }
        };
        // No token to wait for and a permit free with nobody queued: admitted
        // now, without a wait state.
        if state.bucket.is_none() {
            let admitted = match state.semaphore.as_ref() {
                None => Some(None),
                Some(semaphore) if semaphore.try_acquire() => {
                    Some(Some(Permit::taken(semaphore.clone())))
                }
                Some(_) => None,
            };
            if let Some(permit) = admitted {
                return ResponseFuture::admitted(self.inner.clone(), req, state, permit);
            }
        }
        // A deadline matters only to a wait for a token.
        let deadline = state
            .bucket
            .as_ref()
            .and_then(|_| self.key_fn.deadline(&req));
        ResponseFuture::new(
            self.inner.clone(),
            req,
            state,
            self.keys.clock(),
            self.keys.fail_fast,
            deadline,
        )
    }
}

impl<S: Clone, F: Clone, K> Clone for KeyedLimit<S, F, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key_fn: self.key_fn.clone(),
            keys: self.keys.clone(),
        }
    }
}

impl<S: fmt::Debug, F, K> fmt::Debug for KeyedLimit<S, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
