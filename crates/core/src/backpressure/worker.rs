use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use tower_service::Service;
use tracing::Instrument;

use super::message::Message;
use crate::BoxError;
use crate::error::ServicePanicked;
use crate::semaphore::Semaphore;
// The shim's, so that loom sees the queue's critical sections.
use crate::sync::{Mutex, MutexGuard};

/// Queue entries allocated when the queue is built, whatever its bound.
const PREALLOCATE_AT_MOST: usize = 1024;

/// The queue shared by a service's clones, its response futures and its workers.
///
/// The requests, the idle workers' wakers and the closed flag sit under one
/// lock, so a push or a pop is one short critical section: a producer that
/// finds a worker idle takes its waker in the same section as the push, and a
/// worker that finds the queue empty registers in the same section as the
/// look. (With a `Notify` beside the lock, each hand-over took its waiter
/// list's lock two or three times more, which dominated under contention.)
#[derive(Debug)]
pub(super) struct Queue<Req, Resp> {
    inner: Mutex<State<Req, Resp>>,
    depth: AtomicUsize,
    pub(super) slots: Arc<Semaphore>,
    pub(super) busy: AtomicUsize,
    pub(super) workers: usize,
    /// Worker tasks not yet dropped (see [`Alive`]).
    alive: AtomicUsize,
    /// A [`Lifecycle`], read by every `poll_ready`.
    lifecycle: OwnLine,
}

/// A flag on a cache line of its own: every `poll_ready` reads it, and the
/// queue's other fields are written on every push and pop.
#[derive(Debug)]
#[repr(align(128))]
struct OwnLine(AtomicU8);

/// Where a queue's workers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Not spawned yet (no `poll_ready` so far).
    New = 0,
    /// Spawned, and at least one is still there.
    Running = 1,
    /// All gone, with their runtime or after the last service: nobody will
    /// take a request again.
    Abandoned = 2,
}

#[derive(Debug)]
struct State<Req, Resp> {
    items: VecDeque<Message<Req, Resp>>,
    /// Each worker's waker while it waits for a request, by worker number.
    wakers: Vec<Option<Waker>>,
    /// The workers whose waker is in `wakers`, the latest to wait last.
    idle: Vec<usize>,
    closed: bool,
}

impl<Req, Resp> State<Req, Resp> {
    /// Takes a waiting worker's waker, to wake once the lock is released.
    fn take_idle(&mut self) -> Option<Waker> {
        let worker = self.idle.pop()?;
        self.wakers[worker].take()
    }

    /// Forgets a worker's registration (it found work without being woken).
    fn unregister(&mut self, worker: usize) {
        if self.wakers[worker].take().is_some() {
            self.idle.retain(|&w| w != worker);
        }
    }
}

impl<Req, Resp> Queue<Req, Resp> {
    pub(super) fn new(workers: usize, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(State {
                // Room for a usual bound up front; a huge one (`usize::MAX`
                // for "unbounded") is a cap to grow to, not to allocate.
                items: VecDeque::with_capacity(capacity.min(PREALLOCATE_AT_MOST)),
                wakers: vec![None; workers],
                idle: Vec::with_capacity(workers),
                closed: false,
            }),
            depth: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(capacity)),
            busy: AtomicUsize::new(0),
            workers,
            alive: AtomicUsize::new(0),
            lifecycle: OwnLine(AtomicU8::new(Lifecycle::New as u8)),
        }
    }

    pub(super) fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.0.load(Ordering::Acquire) {
            0 => Lifecycle::New,
            1 => Lifecycle::Running,
            _ => Lifecycle::Abandoned,
        }
    }

    /// The workers are spawned; unless they are already gone (a runtime
    /// shutting down can drop them before this is called).
    pub(super) fn set_running(&self) {
        let _ = self.lifecycle.0.compare_exchange(
            Lifecycle::New as u8,
            Lifecycle::Running as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(super) fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State<Req, Resp>> {
        // Critical sections are single VecDeque or Vec operations: a poisoned
        // lock still guards a consistent queue.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `message`, or hands it back if no worker is left to take it.
    pub(super) fn push(&self, message: Message<Req, Resp>) -> Result<(), Message<Req, Resp>> {
        let idle = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(message);
            }
            inner.items.push_back(message);
            self.depth.store(inner.items.len(), Ordering::Relaxed);
            inner.take_idle()
        };
        // Woken outside the lock, so the worker does not wake into it.
        if let Some(worker) = idle {
            worker.wake();
        }
        Ok(())
    }

    /// Takes the requests whose callers have left (their reply channel is
    /// closed) out of the queue before any worker starts them.
    pub(super) fn remove_abandoned(&self) {
        let mut removed = Vec::new();
        {
            let mut inner = self.lock();
            let mut at = 0;
            while at < inner.items.len() {
                if inner.items[at].reply.is_closed() {
                    removed.extend(inner.items.remove(at));
                } else {
                    at += 1;
                }
            }
            self.depth.store(inner.items.len(), Ordering::Relaxed);
        }
        // Dropped outside the lock: each frees its slot, which wakes a producer.
        drop(removed);
    }

    /// No more producers: workers drain what is queued, then stop.
    pub(super) fn close(&self) {
        let idle: Vec<Waker> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.idle.clear();
            inner.wakers.iter_mut().filter_map(Option::take).collect()
        };
        idle.into_iter().for_each(Waker::wake);
    }

    /// The last worker is gone (normally after `close`, with nothing left;
    /// or its runtime shut down): fail what is still queued, and refuse
    /// what comes later, since nobody will ever take it.
    fn abandon(&self) {
        self.lifecycle
            .0
            .store(Lifecycle::Abandoned as u8, Ordering::Release);
        let orphans = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.idle.clear();
            inner.wakers.iter_mut().for_each(|w| *w = None);
            self.depth.store(0, Ordering::Relaxed);
            std::mem::take(&mut inner.items)
        };
        // Dropped outside the lock: each drops its reply sender (the caller
        // gets `Closed`) and frees its slot (a waiting producer wakes).
        drop(orphans);
    }

    /// The next request for `worker`, or `None` once the queue is closed and
    /// empty.
    fn poll_next(&self, worker: usize, cx: &mut Context<'_>) -> Poll<Option<Message<Req, Resp>>> {
        let mut inner = self.lock();
        if let Some(message) = inner.items.pop_front() {
            self.depth.store(inner.items.len(), Ordering::Relaxed);
            inner.unregister(worker);
            return Poll::Ready(Some(message));
        }
        if inner.closed {
            return Poll::Ready(None);
        }
        match &mut inner.wakers[worker] {
            Some(waker) => waker.clone_from(cx.waker()),
            slot @ None => {
                *slot = Some(cx.waker().clone());
                inner.idle.push(worker);
            }
        }
        Poll::Pending
    }
}

/// Held by each worker task, even before its first poll, so that it is
/// dropped with the task however the task ends: returning, or dropped by a
/// runtime shutting down. The last one to go abandons the queue.
pub(super) struct Alive<Req, Resp>(Arc<Queue<Req, Resp>>);

impl<Req, Resp> Alive<Req, Resp> {
    /// One guard for each of the queue's workers.
    pub(super) fn workers(queue: &Arc<Queue<Req, Resp>>) -> impl Iterator<Item = Self> + '_ {
        // Counted all at once, so a worker dropped while the others are
        // still being spawned does not find itself the last.
        queue.alive.fetch_add(queue.workers, Ordering::AcqRel);
        (0..queue.workers).map(|_| Self(queue.clone()))
    }
}

impl<Req, Resp> Drop for Alive<Req, Resp> {
    fn drop(&mut self) {
        if self.0.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.abandon();
        }
    }
}

/// Counts a worker as busy for as long as it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker: takes requests in order and drives each to completion.
pub(super) async fn run<S, Req>(alive: Alive<Req, S::Response>, worker: usize, template: S)
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    let queue = &*alive.0;
    let mut service = template.clone();
    // Only where waking a parked worker may mean waking another thread, and
    // only in a pool: a lone worker measured faster without it (contended
    // bench 1.02–1.08 of `Buffer`'s added time without, 1.10–1.16 with).
    let yield_when_empty = queue.workers > 1
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    loop {
        if yield_when_empty && queue.depth() == 0 {
            // Let the callers this worker has just answered run first: the
            // next request is often one of theirs, taken then without this
            // worker parking and being woken for it (from another thread,
            // maybe, which costs a system call on each side).
            tokio::task::yield_now().await;
        }
        let Some(message) = poll_fn(|cx| queue.poll_next(worker, cx)).await else {
            break;
        };
        let Message {
            request,
            mut reply,
            span,
            _slot,
            ..
        } = message;
        // Running now, so the slot goes to the next producer.
        drop(_slot);
        if reply.is_closed() {
            // The caller gave up while the request was queued.
            continue;
        }
        let _busy = Busy::enter(&queue.busy);
        let mut called = false;
        let outcome = async {
            // The call first: one that finishes at its first poll never
            // registers for the caller's drop (the check above has just
            // seen the caller still there). A pending one polls `closed`
            // each time, so a caller that leaves still cancels it.
            tokio::select! {
                biased;
                result = serve(&mut service, request, &mut called) => Some(result),
                () = reply.closed() => None,
            }
        }
        .instrument(span)
        .await;
        match outcome {
            Some(Ok(response)) => {
                let _ = reply.send(Ok(response));
            }
            Some(Err(error)) => {
                // The service may be broken (tower: an error from poll_ready
                // is final; a panic may leave it anywhere): start afresh.
                service = template.clone();
                let _ = reply.send(Err(error));
            }
            None => {
                tracing::debug!("caller dropped a running request; cancelled");
                if !called {
                    // Cancelled in `poll_ready`: the service may be queued
                    // for something (a permit of an inner limit) that it
                    // would be granted while this worker idles, and hold
                    // against every other caller. Drop it; start afresh.
                    service = template.clone();
                }
            }
        }
    }
}

/// Readies `service` and calls it; `called` is set once `poll_ready` is over.
async fn serve<S, Req>(
    service: &mut S,
    request: Req,
    called: &mut bool,
) -> Result<S::Response, BoxError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    let ready = poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| service.poll_ready(cx))) {
            Ok(poll) => poll.map_err(|e| Inner::Error(e.into())),
            Err(_) => Poll::Ready(Err(Inner::Panicked)),
        },
    )
    .await;
    *called = true;
    let future = ready
        .and_then(|()| {
            catch_unwind(AssertUnwindSafe(|| service.call(request))).map_err(|_| Inner::Panicked)
        })
        .map_err(Inner::into_error)?;
    CatchUnwind { future }.await
}

enum Inner {
    Error(BoxError),
    Panicked,
}

impl Inner {
    fn into_error(self) -> BoxError {
        match self {
            Inner::Error(e) => e,
            Inner::Panicked => {
                tracing::debug!("inner service panicked; answering with an error");
                ServicePanicked::new().into()
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Turns a panic inside the inner future into a `ServicePanicked` error.
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F, T, E> Future for CatchUnwind<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll.map(|r| r.map_err(Into::into)),
            Err(_) => Poll::Ready(Err(Inner::Panicked.into_error())),
        }
    }
}

/// Model checks of the queue's hand-over (`scripts/loom`): a push wakes an
/// idle worker, a worker registers in the same critical section as its
/// look, and a close reaches every idle worker. Only the queue: the worker
/// loop runs on tokio, which is not modelled. A lost wakeup shows as a
/// deadlock of `block_on`.
#[cfg(all(test, tower_fanout_loom))]
mod loom_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sync::model;
    use loom::thread;

    type TestQueue = Queue<u32, ()>;

    /// Queues `n` with a slot, as the service does; `false` if refused.
    fn push(queue: &TestQueue, n: u32) -> bool {
        queue.push(super::tests::message(queue, n)).is_ok()
    }

    /// A worker: takes requests until the queue is closed and empty.
    fn drain(queue: &TestQueue, worker: usize) -> Vec<u32> {
        let mut taken = Vec::new();
        while let Some(message) = loom::future::block_on(poll_fn(|cx| queue.poll_next(worker, cx)))
        {
            taken.push(message.request);
        }
        taken
    }

    fn assert_done(queue: &TestQueue) {
        assert_eq!(queue.depth(), 0);
        assert_eq!(queue.slots.in_use(), 0, "a message was kept or lost");
        let inner = queue.lock();
        assert!(inner.items.is_empty() && inner.idle.is_empty());
        assert!(inner.wakers.iter().all(Option::is_none));
    }

    /// A push racing the close, an idle worker waiting: the request is
    /// either taken by the worker or handed back to the producer, and the
    /// worker stops.
    #[test]
    fn push_racing_close_is_taken_or_refused() {
        model(|| {
            let queue = Arc::new(TestQueue::new(1, 2));
            let worker = {
                let queue = queue.clone();
                thread::spawn(move || drain(&queue, 0))
            };
            let producer = {
                let queue = queue.clone();
                thread::spawn(move || push(&queue, 1))
            };
            queue.close();
            let queued = producer.join().unwrap();
            let taken = worker.join().unwrap();
            assert_eq!(taken, if queued { vec![1] } else { vec![] });
            assert!(!push(&queue, 2), "queued after the close");
            assert_done(&queue);
        });
    }

    /// Two workers going idle while two requests come in: each request is
    /// taken once, by whichever worker, and the close then stops both.
    #[test]
    fn two_pushes_two_workers() {
        model(|| {
            let queue = Arc::new(TestQueue::new(2, 2));
            let workers: Vec<_> = (0..2)
                .map(|worker| {
                    let queue = queue.clone();
                    thread::spawn(move || drain(&queue, worker))
                })
                .collect();
            assert!(push(&queue, 1));
            assert!(push(&queue, 2));
            queue.close();
            let mut taken: Vec<u32> = workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect();
            taken.sort_unstable();
            assert_eq!(taken, [1, 2]);
            assert_done(&queue);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semaphore::Permit;
    use tokio::sync::oneshot;

    /// `request` queued with a slot, as the service queues it (its caller
    /// already gone: nobody reads the reply).
    pub(super) fn message(queue: &Queue<u32, ()>, request: u32) -> Message<u32, ()> {
        assert!(queue.slots.try_acquire());
        Message {
            request,
            reply: oneshot::channel().0,
            span: tracing::Span::none(),
            _slot: Permit::taken(queue.slots.clone()),
        }
    }

    /// A worker that finds work without being woken for it (polled while
    /// another was woken for the request) leaves the idle list, so a later
    /// request wakes a worker that waits rather than this busy one. Found
    /// surviving in a mutation pass (`unregister` doing nothing).
    #[test]
    fn a_worker_that_finds_work_unwoken_leaves_the_idle_list() {
        let queue = Queue::<u32, ()>::new(2, 4);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(queue.poll_next(0, &mut cx).is_pending());
        assert!(queue.poll_next(1, &mut cx).is_pending());
        // Wakes worker 1, the latest to wait ...
        assert!(queue.push(message(&queue, 7)).is_ok());
        // ... but worker 0 is polled first and takes the request.
        match queue.poll_next(0, &mut cx) {
            Poll::Ready(Some(message)) => assert_eq!(message.request, 7),
            other => panic!("expected the request, got {:?}", other.map(|m| m.is_some())),
        }
        let state = queue.lock();
        assert!(state.idle.is_empty(), "idle: {:?}", state.idle);
        assert!(state.wakers.iter().all(Option::is_none));
    }
}
