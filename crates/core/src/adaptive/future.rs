//! The response future of [`AdaptiveLimit`](super::AdaptiveLimit).

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::layer::Shared;
use crate::BoxError;
use crate::classify::{Classify, Outcome};
use crate::error::polled_after_completion;
use crate::semaphore::Permit;

/// The permit of one call plus what the controller needs to know about its start.
pub(super) struct Guard {
    pub(super) shared: Arc<Shared>,
    pub(super) started: Instant,
    /// When the permit was taken (before `started` when pacing delayed it).
    pub(super) admitted: Instant,
    /// Permits in use plus callers queued for one, when the call started.
    pub(super) in_flight: usize,
    pub(super) limit: usize,
    pub(super) _permit: Permit,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("started", &self.started)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The inner response future plus the call's permit; reports the outcome
    /// to the controller when it completes.
    ///
    /// Dropped before completion, it gives the permit back and reports
    /// nothing: a cancelled call says nothing about the downstream's load.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<F, K> {
        #[pin]
        kind: Kind<F, K>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, K> {
        Called { #[pin] future: F, guard: Option<Guard>, classify: K },
        Refused { error: Option<BoxError> },
    }
}

// By hand: a classifier is often a closure, which is never `Debug`.
impl<F: fmt::Debug, K> fmt::Debug for ResponseFuture<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.kind {
            Kind::Called { future, guard, .. } => d.field("future", future).field("guard", guard),
            Kind::Refused { error } => d.field("error", error),
        };
        d.finish_non_exhaustive()
    }
}

impl<F, K> ResponseFuture<F, K> {
    pub(super) fn called(future: F, guard: Guard, classify: K) -> Self {
        Self {
            kind: Kind::Called {
                future,
                guard: Some(guard),
                classify,
            },
        }
    }

    pub(super) fn refused(error: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Refused {
                error: Some(error.into()),
            },
        }
    }
}

impl<F, K, T, E> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    K: Classify<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        match kind.as_mut().project() {
            KindProj::Called {
                future,
                guard,
                classify,
            } => {
                let output = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(guard) = guard.take() {
                    let outcome = classify
                        .classify(output.as_ref().map_err(|e| &**e as &(dyn Error + 'static)));
                    // Only a refusal's `Retry-After` is used: other answers skip the header lookup.
                    let retry_after = match &output {
                        Ok(response) if outcome == Outcome::Overload => {
                            classify.retry_after(response)
                        }
                        _ => None,
                    };
                    // What layers below spent waiting on purpose is not the
                    // downstream's latency. An error carries no such note:
                    // its sample keeps the whole time (only its outcome counts).
                    let waited = match &output {
                        Ok(response) => classify.waited(response),
                        Err(_) => Duration::ZERO,
                    };
                    let Guard {
                        shared,
                        started,
                        admitted,
                        in_flight,
                        limit,
                        _permit,
                    } = guard;
                    // Decide first, then give the permit back: a decrease
                    // is then paid off by this very permit, instead of the
                    // permit admitting one more call into the overload.
                    shared.record(
                        started,
                        admitted,
                        waited,
                        in_flight,
                        limit,
                        outcome,
                        retry_after,
                    );
                    drop(_permit);
                }
                // Done: a poll after this one answers an error rather than
                // polling the finished inner future again.
                kind.set(Kind::Refused { error: None });
                Poll::Ready(output)
            }
            KindProj::Refused { error } => {
                Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)))
            }
        }
    }
}
