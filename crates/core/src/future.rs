//! The response future shared by the layers that hold capacity per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// The inner service's response future plus the guard that holds the
    /// call's capacity, or a refusal made before the inner service was called.
    ///
    /// The guard is dropped as soon as the inner future completes, and with
    /// the future if the caller drops it first: capacity never leaks.
    #[derive(Debug)]
    pub struct ResponseFuture<F, G> {
        #[pin]
        kind: Kind<F, G>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, G> {
        Called { #[pin] future: F, guard: Option<G> },
        Refused { error: Option<BoxError> },
    }
}

impl<F, G> ResponseFuture<F, G> {
    pub(crate) fn called(future: F, guard: G) -> Self {
        Self {
            kind: Kind::Called {
                future,
                guard: Some(guard),
            },
        }
    }

    pub(crate) fn refused(error: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Refused {
                error: Some(error.into()),
            },
        }
    }
}

impl<F, G, T, E> Future for ResponseFuture<F, G>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, guard } => {
                let output = ready!(future.poll(cx));
                // Free the capacity as soon as the answer is in, not when the
                // caller gets round to dropping this future.
                guard.take();
                Poll::Ready(output.map_err(Into::into))
            }
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "response future polled after completion".into()))),
        }
    }
}
