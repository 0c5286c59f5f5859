use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tower_service::Service;

use super::future::{ResponseFuture, Unqueue};
use super::message::Message;
use super::worker::{self, Alive, Lifecycle, Queue};
use crate::BoxError;
use crate::error::{Closed, NoRuntime, NotReady, QueueFull};
use crate::semaphore::{Acquire, Permit};

/// Queues requests for a fixed pool of workers that drive them to completion.
///
/// Built by [`BackpressureLayer`](super::BackpressureLayer).
pub struct Backpressure<S, Req>
where
    S: Service<Req>,
{
    shared: Arc<Shared<S, Req>>,
    acquire: Acquire,
    slot: Option<Permit>,
    fail_fast: bool,
    shed: bool,
}

/// What every clone of one service holds; closes the queue when the last goes.
struct Shared<S, Req>
where
    S: Service<Req>,
{
    queue: Arc<Queue<Req, S::Response>>,
    /// The service the workers clone, until they are spawned.
    template: Mutex<Option<S>>,
}

impl<S, Req> Drop for Shared<S, Req>
where
    S: Service<Req>,
{
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl<S, Req> Backpressure<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    pub(super) fn new(inner: S, workers: usize, capacity: usize, fail_fast: bool) -> Self {
        let queue = Arc::new(Queue::new(workers, capacity));
        let acquire = Acquire::new(queue.slots.clone());
        Self {
            shared: Arc::new(Shared {
                queue,
                template: Mutex::new(Some(inner)),
            }),
            acquire,
            slot: None,
            fail_fast,
            shed: false,
        }
    }

    /// A live view of the queue and the workers.
    pub fn handle(&self) -> BackpressureHandle {
        BackpressureHandle {
            queue: self.shared.queue.clone(),
        }
    }

    /// Spawns the workers on the current runtime, once; `Closed` once they
    /// are gone with their runtime (the service can never serve again).
    fn start(&self) -> Result<(), BoxError> {
        match self.shared.queue.lifecycle() {
            Lifecycle::Running => return Ok(()),
            Lifecycle::Abandoned => return Err(Closed::new().into()),
            Lifecycle::New => {}
        }
        let mut template = self
            .shared
            .template
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(inner) = template.as_ref() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Err(NoRuntime::new().into());
            };
            // Every worker's clone first: a `clone` that panics leaves the
            // template, and no worker counted as alive, for the next
            // `poll_ready` to start again (counted and never spawned, the
            // workers kept the queue open and unread: every call hung).
            let services: Vec<S> = (0..self.shared.queue.workers())
                .map(|_| inner.clone())
                .collect();
            template.take();
            for ((worker, alive), svc) in
                Alive::workers(&self.shared.queue).enumerate().zip(services)
            {
                runtime.spawn(worker::run(alive, worker, svc));
            }
            self.shared.queue.set_running();
        }
        Ok(())
    }
}

impl<S, Req> Service<Req> for Backpressure<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.start()?;
        if self.slot.is_some() {
            return Poll::Ready(Ok(()));
        }
        let Poll::Ready(permit) = self.acquire.poll_or_shed(self.fail_fast, cx) else {
            tracing::trace!(
                queue_depth = self.shared.queue.depth(),
                "backpressure queue full; waiting"
            );
            return Poll::Pending;
        };
        self.shed = permit.is_none();
        self.slot = permit;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let Some(slot) = self.slot.take() else {
            if std::mem::take(&mut self.shed) {
                let capacity = self.shared.queue.slots.limit();
                tracing::debug!(queue_capacity = capacity, "backpressure queue full; shed");
                return ResponseFuture::failed(QueueFull::new(capacity).into());
            }
            return ResponseFuture::failed(NotReady::new().into());
        };
        let queue = &self.shared.queue;
        let (reply, response) = oneshot::channel();
        let message = Message {
            request,
            reply,
            span: tracing::Span::current(),
            _slot: slot,
        };
        if queue.push(message).is_err() {
            // The workers are gone with their runtime; the message (and its
            // slot) is dropped here.
            return ResponseFuture::failed(Closed::new().into());
        }
        let unqueue: Arc<dyn Unqueue> = queue.clone();
        ResponseFuture::queued(response, unqueue)
    }
}

impl<S, Req> Clone for Backpressure<S, Req>
where
    S: Service<Req>,
{
    /// The clone shares the queue and workers but holds no slot of its own.
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            acquire: self.acquire.clone(),
            slot: None,
            fail_fast: self.fail_fast,
            shed: false,
        }
    }
}

impl<S, Req> fmt::Debug for Backpressure<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backpressure")
            .field("workers", &self.shared.queue.workers)
            .field("queue_depth", &self.shared.queue.depth())
            .field("holds_slot", &self.slot.is_some())
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}

/// Reads a backpressure queue's live state; every read is one atomic load.
#[derive(Clone)]
pub struct BackpressureHandle {
    queue: Arc<dyn QueueStats>,
}

impl BackpressureHandle {
    /// Requests waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    /// Queue slots held: requests waiting plus ready services not yet called.
    pub fn slots_in_use(&self) -> usize {
        self.queue.slots_in_use()
    }

    /// The queue's bound.
    pub fn queue_capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Producers waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.queue.waiting()
    }

    /// Workers running a request now.
    pub fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }

    /// The size of the worker pool.
    pub fn workers(&self) -> usize {
        self.queue.workers()
    }
}

impl fmt::Debug for BackpressureHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackpressureHandle")
            .field("queue_depth", &self.queue_depth())
            .field("queue_capacity", &self.queue_capacity())
            .field("in_flight", &self.in_flight())
            .field("workers", &self.workers())
            .field("waiting", &self.waiting())
            .field("slots_in_use", &self.slots_in_use())
            .finish()
    }
}

/// The queue's counters, without its request and response types.
trait QueueStats: Send + Sync {
    fn depth(&self) -> usize;
    fn slots_in_use(&self) -> usize;
    fn capacity(&self) -> usize;
    fn waiting(&self) -> usize;
    fn in_flight(&self) -> usize;
    fn workers(&self) -> usize;
}

impl<Req: Send, Resp: Send> QueueStats for Queue<Req, Resp> {
    fn depth(&self) -> usize {
        Queue::depth(self)
    }
    fn slots_in_use(&self) -> usize {
        self.slots.in_use()
    }
    fn capacity(&self) -> usize {
        self.slots.limit()
    }
    fn waiting(&self) -> usize {
        self.slots.waiting()
    }
    fn in_flight(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }
    fn workers(&self) -> usize {
        self.workers
    }
}
