use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{KeyFn, KeyedLimitHandle};
use super::map::Keys;
use crate::BoxError;

/// Limits each key's calls separately; built by [`KeyedLimitLayer`](super::KeyedLimitLayer).
///
/// The key is known only once the request is, so `poll_ready` waits for the
/// inner service alone, and the per-key wait (for a token, then for a
/// permit) happens in the response future, which owns a ready clone of the
/// inner service until the key admits the call.
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
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
        // The ready service goes with the call; this one keeps a fresh clone,
        // as tower's docs recommend for a service that is driven elsewhere.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::new(ready, req, state, self.keys.epoch(), self.keys.fail_fast)
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
