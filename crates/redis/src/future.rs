//! The boxed response future of the rate limit.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_fanout_core::BoxError;

/// The response future of [`RedisRateLimit`](crate::RedisRateLimit): the
/// decision on Redis, the wait for tokens, then the inner call.
///
/// Dropping it before the inner service is called gives the tokens it
/// booked back.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct ResponseFuture<T> {
    // `None` once answered: a poll after that answers an error instead of
    // resuming a finished `async` block (a panic).
    inner: Option<Boxed<T>>,
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<T> ResponseFuture<T> {
    pub(crate) fn new(future: impl Future<Output = Result<T, BoxError>> + Send + 'static) -> Self {
        Self {
            inner: Some(Box::pin(future)),
        }
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(polled_after_completion()));
        };
        let output = std::task::ready!(inner.as_mut().poll(cx));
        self.inner = None;
        Poll::Ready(output)
    }
}

/// The answer of a response future polled again after it answered (a
/// caller's bug; `async` blocks panic there, this crate's futures answer
/// this).
pub(crate) fn polled_after_completion() -> BoxError {
    "response future polled after completion".into()
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
