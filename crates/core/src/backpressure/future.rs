use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;

use super::worker::Queue;
use crate::BoxError;
use crate::error::{Closed, polled_after_completion};

/// Takes requests whose callers left out of the queue, whatever its types.
pub(super) trait Unqueue: Send + Sync {
    fn unqueue(&self);
}

impl<Req: Send, Resp: Send> Unqueue for Queue<Req, Resp> {
    fn unqueue(&self) {
        self.remove_abandoned();
    }
}

/// The response of a [`Backpressure`](super::Backpressure) service.
///
/// Dropping it before a worker has started the request takes the request out
/// of the queue; dropping it later cancels the running call.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct ResponseFuture<T> {
    state: State<T>,
}

enum State<T> {
    Queued {
        response: oneshot::Receiver<Result<T, BoxError>>,
        queue: Arc<dyn Unqueue>,
    },
    Failed(Option<BoxError>),
    Done,
}

impl<T> ResponseFuture<T> {
    pub(super) fn queued(
        response: oneshot::Receiver<Result<T, BoxError>>,
        queue: Arc<dyn Unqueue>,
    ) -> Self {
        Self {
            state: State::Queued { response, queue },
        }
    }

    pub(super) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Queued { response, .. } => {
                let result = ready!(Pin::new(response).poll(cx));
                self.state = State::Done;
                // A dropped sender means the worker is gone (runtime shutdown).
                Poll::Ready(result.unwrap_or_else(|_| Err(Closed::new().into())))
            }
            State::Failed(error) => {
                let error = error.take().unwrap_or_else(polled_after_completion);
                self.state = State::Done;
                Poll::Ready(Err(error))
            }
            State::Done => Poll::Ready(Err(polled_after_completion())),
        }
    }
}

impl<T> Drop for ResponseFuture<T> {
    fn drop(&mut self) {
        if let State::Queued { response, queue } = std::mem::replace(&mut self.state, State::Done) {
            // Closing the receiver first marks this request abandoned, which
            // is how the queue tells it from the others.
            drop(response);
            queue.unqueue();
        }
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Queued { .. } => "queued",
            State::Failed(_) => "failed",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
