use std::fmt;
use std::marker::PhantomData;

use tower_layer::Layer;
use tower_service::Service;

use super::Backpressure;
use crate::BoxError;
use crate::error::ConfigError;

/// Puts a bounded queue and a pool of workers in front of a service.
///
/// Like tower's `BufferLayer`, it is generic over the request type, because
/// the queue holds requests. Unlike it, it needs a `Clone` inner service:
/// each worker drives its requests to completion with a clone of its own
/// (a `BoxService` will not do; a `BoxCloneService` will).
pub struct BackpressureLayer<Req> {
    workers: usize,
    queue: usize,
    fail_fast: bool,
    _request: PhantomData<fn(Req)>,
}

impl<Req> BackpressureLayer<Req> {
    /// The most workers a layer may have. Every worker is a task spawned
    /// on first use, with a slot in the queue's state, so the pool is
    /// allocated whole: bound the calls in flight beyond this with a
    /// [`ConcurrencyLimitLayer`](crate::concurrency::ConcurrencyLimitLayer)
    /// instead.
    pub const MAX_WORKERS: usize = 1 << 16;

    /// `workers` calls in flight at most, and a queue of `3 × workers`.
    ///
    /// Three per worker keeps every worker fed between a caller's wake-up
    /// and its next request, while memory stays a small multiple of the
    /// in-flight bound.
    ///
    /// # Errors
    /// Zero workers (nothing would ever drain the queue), or more than
    /// [`MAX_WORKERS`](Self::MAX_WORKERS).
    pub fn new(workers: usize) -> Result<Self, ConfigError> {
        Self::with_queue(workers, workers.saturating_mul(3))
    }

    /// `workers` calls in flight at most, and at most `queue` waiting.
    ///
    /// # Errors
    /// Zero workers, more than [`MAX_WORKERS`](Self::MAX_WORKERS), or a
    /// zero queue bound.
    pub fn with_queue(workers: usize, queue: usize) -> Result<Self, ConfigError> {
        if workers == 0 {
            return Err(ConfigError::new(
                "backpressure needs at least 1 worker (0 workers would never drain the queue)",
            ));
        }
        if workers > Self::MAX_WORKERS {
            return Err(ConfigError::new(format!(
                "backpressure workers must be at most {} (each is a task spawned up front); \
                 bound more calls in flight with a ConcurrencyLimitLayer",
                Self::MAX_WORKERS
            )));
        }
        if queue == 0 {
            return Err(ConfigError::new(
                "backpressure queue bound must be at least 1 (a queue of 0 admits nothing)",
            ));
        }
        Ok(Self {
            workers,
            queue,
            fail_fast: false,
            _request: PhantomData,
        })
    }

    /// Refuse with [`QueueFull`](crate::error::QueueFull) instead of waiting
    /// when the queue is full (load shedding).
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }
}

impl<S, Req> Layer<S> for BackpressureLayer<Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Service = Backpressure<S, Req>;

    fn layer(&self, inner: S) -> Self::Service {
        Backpressure::new(inner, self.workers, self.queue, self.fail_fast)
    }
}

impl<Req> Clone for BackpressureLayer<Req> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req> Copy for BackpressureLayer<Req> {}

impl<Req> fmt::Debug for BackpressureLayer<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackpressureLayer")
            .field("workers", &self.workers)
            .field("queue", &self.queue)
            .field("fail_fast", &self.fail_fast)
            .finish()
    }
}
