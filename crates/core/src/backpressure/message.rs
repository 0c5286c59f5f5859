use tokio::sync::oneshot;

use crate::BoxError;
use crate::semaphore::Permit;

/// A queued request and the way back to its caller.
#[derive(Debug)]
pub(super) struct Message<Req, Resp> {
    pub(super) request: Req,
    pub(super) reply: oneshot::Sender<Result<Resp, BoxError>>,
    /// The caller's span, re-entered by the worker so its events nest there.
    pub(super) span: tracing::Span,
    /// The queue slot; freed when a worker takes the message or it is removed.
    pub(super) _slot: Permit,
}
