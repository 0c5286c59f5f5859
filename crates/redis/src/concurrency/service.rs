use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_fanout_core::BoxError;
use tower_fanout_core::error::NotReady;
use tower_service::Service;

use super::layer::Shared;
use super::permit::Permit;

/// The acquire in progress. In a `Mutex` only to make the service `Sync`
/// (Redis's futures are not, and a `!Sync` service cannot go into a
/// `BoxCloneSyncService`); it is reached through `get_mut`, never locked.
type Acquire = Mutex<Pin<Box<dyn Future<Output = Result<Permit, BoxError>> + Send>>>;

/// Holds a permit of a limit kept on Redis for each call in flight.
///
/// Built by [`RedisConcurrencyLimitLayer`](super::RedisConcurrencyLimitLayer).
pub struct RedisConcurrencyLimit<S> {
    inner: S,
    shared: Arc<Shared>,
    state: State,
}

enum State {
    Idle,
    Acquiring(Acquire),
    Ready(Permit),
    /// The permit was refused (or Redis failed, failing closed): `call`
    /// answers with this error. Kept out of `poll_ready`, since tower reads
    /// an error there as a broken service. (This limit's own `fail_fast`
    /// is how it sheds: a `LoadShed` above it sheds every request, reading
    /// the round trip to Redis as overload; see the layer's docs.)
    Refused(BoxError),
}

impl<S> RedisConcurrencyLimit<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            state: State::Idle,
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

    /// Consumes the limit, returning the inner service; a held permit is released.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for RedisConcurrencyLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if matches!(self.state, State::Refused(_)) {
            // Polled again after a refusal without a call in between: the
            // refusal is stale; ask again, as the core limit does.
            self.state = State::Idle;
        }
        loop {
            match &mut self.state {
                State::Idle => {
                    let acquire = Box::pin(self.shared.clone().acquire());
                    self.state = State::Acquiring(Mutex::new(acquire));
                }
                State::Acquiring(acquire) => {
                    let acquire = acquire.get_mut().unwrap_or_else(PoisonError::into_inner);
                    self.state = match ready!(acquire.as_mut().poll(cx)) {
                        Ok(permit) => State::Ready(permit),
                        Err(error) => State::Refused(error),
                    };
                }
                State::Ready(_) => {
                    let ready = self.inner.poll_ready(cx);
                    if let Poll::Ready(Err(_)) = ready {
                        // The inner service is broken (tower): the permit
                        // goes back rather than stay, renewed, with a
                        // service that may be kept and never called,
                        // holding up every process sharing the limit.
                        self.state = State::Idle;
                    }
                    return ready.map_err(Into::into);
                }
                State::Refused(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Ready(permit) => ResponseFuture::called(self.inner.call(req), permit),
            State::Refused(error) => ResponseFuture::refused(error),
            other => {
                self.state = other;
                ResponseFuture::refused(NotReady::new().into())
            }
        }
    }
}

impl<S: Clone> Clone for RedisConcurrencyLimit<S> {
    /// The clone shares the limit but holds no permit of its own.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for RedisConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Idle => "idle",
            State::Acquiring(_) => "acquiring",
            State::Ready(_) => "ready",
            State::Refused(_) => "refused",
        };
        f.debug_struct("RedisConcurrencyLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    /// The inner service's response future plus the call's permit, or a
    /// refusal made before the inner service was called.
    ///
    /// The permit is released as soon as the inner future completes, and
    /// with the future if the caller drops it first.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F, permit: Option<Permit> },
        Refused { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    fn called(future: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
            },
        }
    }

    fn refused(error: BoxError) -> Self {
        Self {
            kind: Kind::Refused { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        match kind.as_mut().project() {
            KindProj::Called { future, permit } => {
                let output = ready!(future.poll(cx));
                permit.take();
                // Done: a poll after this one answers an error instead of
                // polling the finished future (an `async` one panics).
                kind.set(Kind::Refused { error: None });
                Poll::Ready(output.map_err(Into::into))
            }
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(crate::future::polled_after_completion))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
