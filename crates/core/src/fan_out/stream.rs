use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tower_service::Service;

use super::batch::{Batch, ItemResult, Progress};
use super::per_key::{Admission, Unkeyed};
use super::{FanOut, ProgressFn};
use crate::BoxError;
use crate::error::ServicePanicked;

/// The answer of a request whose task the runtime cancelled (it shut down
/// while the batch ran).
const CANCELLED: &str = "fan-out request cancelled: the Tokio runtime its task ran on shut down \
                         before it finished; keep that runtime alive until the batch is done";

impl<S, I, Req, W> FanOut<S, I, W>
where
    I: Iterator<Item = Req>,
    W: Admission<Req>,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    /// Runs the batch and yields each result as it finishes.
    ///
    /// # Panics
    /// Its [`next`](Completions::next) panics outside a Tokio runtime: each
    /// request runs in a Tokio task.
    pub fn stream(mut self) -> Completions<S, I, S::Response, W> {
        let progress = Progress {
            total: self.total,
            ..Progress::default()
        };
        self.admission.start(self.window);
        Completions {
            service: self.service,
            requests: self.requests,
            next_index: 0,
            tasks: JoinSet::new(),
            stopped: Arc::new(AtomicBool::new(false)),
            running: HashMap::new(),
            window: self.window,
            chunked: self.chunked,
            exhausted: false,
            progress,
            on_progress: self.on_progress,
            watch: self.watch,
            error_kind: self.error_kind,
            admission: self.admission,
        }
    }

    /// Runs the batch and returns every result, in input order.
    ///
    /// # Panics
    /// Polled outside a Tokio runtime: each request runs in a Tokio task.
    pub async fn collect(self) -> Batch<S::Response> {
        let error_kind = self.error_kind;
        let mut stream = self.stream();
        let mut slots: Vec<Option<ItemResult<S::Response>>> = Vec::new();
        while let Some(item) = stream.next().await {
            let index = item.index;
            if slots.len() <= index {
                slots.resize_with(index + 1, || None);
            }
            slots[index] = Some(item);
        }
        Batch::new(slots.into_iter().flatten().collect(), error_kind)
    }
}

/// The results of a fan-out as they finish; made by [`FanOut::stream`].
///
/// Call [`next`](Completions::next) until it returns `None`. Dropping it
/// aborts the requests still in flight.
#[must_use = "a fan-out runs only while its completions are read with `.next()`"]
pub struct Completions<S, I, T, W = Unkeyed> {
    service: S,
    requests: I,
    next_index: usize,
    tasks: JoinSet<ItemResult<T>>,
    /// Set when the stream is dropped, before its tasks are aborted: a task
    /// polled after that goes no further. The `JoinSet` aborts its tasks one
    /// at a time while other workers run, so an aborted task's permit could
    /// wake a sibling not yet aborted, which then sent its request.
    stopped: Arc<AtomicBool>,
    /// Which item a task runs and since when, to answer for it if it panics.
    running: HashMap<Id, (usize, Instant)>,
    window: usize,
    chunked: bool,
    exhausted: bool,
    progress: Progress,
    on_progress: Option<ProgressFn>,
    watch: Option<tokio::sync::watch::Sender<Progress>>,
    error_kind: fn(&BoxError) -> &'static str,
    /// Holds the requests set aside for a busy key, with `per_key`.
    admission: W,
}

impl<S, I, Req, W> Completions<S, I, S::Response, W>
where
    I: Iterator<Item = Req>,
    W: Admission<Req>,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    /// The next finished request, or `None` when the batch is done.
    ///
    /// # Panics
    /// Polled outside a Tokio runtime: each request runs in a Tokio task,
    /// spawned here. A panic of the request iterator (or of a
    /// [`per_key`](FanOut::per_key) key function) comes out of here too.
    pub async fn next(&mut self) -> Option<ItemResult<S::Response>> {
        self.fill();
        let item = match self.tasks.join_next_with_id().await? {
            Ok((id, item)) => {
                self.running.remove(&id);
                self.admission.finished(item.index);
                item
            }
            Err(error) => {
                let (index, started) = self
                    .running
                    .remove(&error.id())
                    .unwrap_or((usize::MAX, Instant::now()));
                self.admission.finished(index);
                // Not every failed task panicked: a runtime shutting down
                // cancels the tasks it holds.
                let result = if error.is_cancelled() {
                    Err(CANCELLED.into())
                } else {
                    Err(ServicePanicked::new().into())
                };
                ItemResult {
                    index,
                    result,
                    latency: started.elapsed(),
                    attempts: 1,
                }
            }
        };
        // Nothing left in flight and the size unknown, or all the size said
        // read: this may be the last item (a window of 1, a chunk that ended
        // the batch). Refill now, so the iterator is found exhausted before
        // this item's report and the report shows the end; otherwise that
        // was only seen on the call after the last item, which reports
        // nothing.
        if self.tasks.is_empty()
            && !self.exhausted
            && self
                .progress
                .total
                .is_none_or(|total| self.next_index >= total)
        {
            self.fill();
        }
        self.record(&item);
        Some(item)
    }

    /// The progress so far.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Starts requests until the window is full (or, in chunks, the chunk):
    /// first those set aside whose key has room now, then new ones, as long
    /// as there is room to set one aside.
    fn fill(&mut self) {
        if self.chunked && !self.tasks.is_empty() {
            return;
        }
        while self.tasks.len() < self.window {
            if let Some((index, request)) = self.admission.take_ready() {
                self.spawn(index, request);
                continue;
            }
            if self.exhausted || !self.admission.can_read() {
                break;
            }
            let Some(request) = self.requests.next() else {
                self.exhausted = true;
                // The size is known now: say it, so that the progress
                // shows the end (`completed == total`) to a callback or a
                // watch even when the iterator did not know its size, or
                // said a wrong one (`size_hint` is only a hint).
                self.set_total(Some(self.next_index));
                break;
            };
            let index = self.next_index;
            self.next_index += 1;
            // More than the iterator said: its size is unknown after all,
            // lest a report show the end (`completed == total`) too soon.
            if self
                .progress
                .total
                .is_some_and(|total| self.next_index > total)
            {
                self.set_total(None);
            }
            if let Some(request) = self.admission.offer(index, request) {
                self.spawn(index, request);
            }
        }
        self.progress.in_flight = self.tasks.len();
        // Only `fill` changes what the window holds (a finished request
        // hands its slot to a held one, which stays held until started here).
        self.progress.waiting_for_key = self.admission.held();
    }

    /// Sets the batch size in the progress, and in the watch at once: the
    /// next report may be a while.
    fn set_total(&mut self, total: Option<usize>) {
        if self.progress.total != total {
            self.progress.total = total;
            if let Some(watch) = &self.watch {
                watch.send_modify(|p| p.total = total);
            }
        }
    }

    /// Starts the request read at `index`.
    fn spawn(&mut self, index: usize, request: Req) {
        let mut service = self.service.clone();
        let started = Instant::now();
        let stopped = self.stopped.clone();
        let handle = self.tasks.spawn(async move {
            let mut call = std::pin::pin!(call(&mut service, request));
            let result = poll_fn(|cx| {
                if stopped.load(Ordering::Acquire) {
                    // The abort that follows drops this task.
                    return Poll::Pending;
                }
                call.as_mut().poll(cx)
            })
            .await;
            ItemResult {
                index,
                result,
                latency: started.elapsed(),
                attempts: 1,
            }
        });
        self.running.insert(handle.id(), (index, started));
        self.progress.started += 1;
    }

    fn record(&mut self, item: &ItemResult<S::Response>) {
        let progress = &mut self.progress;
        progress.completed += 1;
        progress.in_flight = self.tasks.len();
        match &item.result {
            Ok(_) => progress.succeeded += 1,
            Err(error) => {
                progress.failed += 1;
                tracing::debug!(
                    index = item.index,
                    kind = (self.error_kind)(error),
                    "fan-out item failed"
                );
            }
        }
        if let Some(f) = &self.on_progress {
            f(progress);
        }
        if let Some(watch) = &self.watch {
            watch.send_replace(progress.clone());
        }
    }
}

async fn call<S, Req>(service: &mut S, request: Req) -> Result<S::Response, BoxError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(request).await.map_err(Into::into)
}

impl<S, I, T, W> Drop for Completions<S, I, T, W> {
    fn drop(&mut self) {
        // Before the fields drop (and the `JoinSet` aborts the tasks).
        self.stopped.store(true, Ordering::Release);
    }
}

impl<S, I, T, W: fmt::Debug> fmt::Debug for Completions<S, I, T, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completions")
            .field("progress", &self.progress)
            .field("window", &self.window)
            .field("chunked", &self.chunked)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}
