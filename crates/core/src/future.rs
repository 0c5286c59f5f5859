//! The response future shared by the layers that hold capacity per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::BoxError;
use crate::error::polled_after_completion;

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
    // `Called` holds the guard itself, not an `Option`: finishing replaces the
    // whole variant with `Done`, which drops the guard just as early. With no
    // flag of its own, a zero-sized guard (the rate limit's) adds no byte, and
    // `Refused` keeps its error behind one thin pointer, so the enum can
    // usually hide its tag in a niche of the inner future. A separate tag
    // byte cost about 8 ns a call in the benches (a narrow store read back
    // wide when the caller moves the future).
    #[project = KindProj]
    #[project_replace = KindReplace]
    #[derive(Debug)]
    enum Kind<F, G> {
        Called { #[pin] future: F, guard: G },
        Refused { error: Box<BoxError> },
        Done,
    }
}

impl<F, G> ResponseFuture<F, G> {
    #[inline]
    pub(crate) fn called(future: F, guard: G) -> Self {
        Self {
            kind: Kind::Called { future, guard },
        }
    }

    // The rate limit boxes its refusals itself (`refused_boxed`).
    #[cfg_attr(not(feature = "concurrency"), allow(dead_code))]
    pub(crate) fn refused(error: impl Into<BoxError>) -> Self {
        Self::refused_boxed(Box::new(error.into()))
    }

    /// A refusal boxed by the caller (typically in a cold path that returns
    /// just the thin pointer), so building the future inlines to two stores.
    #[inline]
    pub(crate) fn refused_boxed(error: Box<BoxError>) -> Self {
        Self {
            kind: Kind::Refused { error },
        }
    }
}

impl<F, G, T, E> Future for ResponseFuture<F, G>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        match kind.as_mut().project() {
            KindProj::Called { future, .. } => {
                let output = ready!(future.poll(cx));
                // Free the capacity as soon as the answer is in, not when the
                // caller gets round to dropping this future.
                // Moving the guard out (rather than `set`, which calls the
                // whole enum's drop glue) lets its drop inline.
                if let KindReplace::Called { guard, .. } = kind.project_replace(Kind::Done) {
                    drop(guard);
                }
                Poll::Ready(output.map_err(Into::into))
            }
            KindProj::Refused { .. } => match kind.project_replace(Kind::Done) {
                KindReplace::Refused { error } => Poll::Ready(Err(*error)),
                _ => Poll::Ready(Err(polled_after_completion())),
            },
            KindProj::Done => Poll::Ready(Err(polled_after_completion())),
        }
    }
}
