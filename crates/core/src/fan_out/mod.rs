//! Run a batch of requests through a service, a bounded number at a time.
//!
//! # What it bounds
//! [`fan_out`] keeps at most `concurrency` requests of a batch in flight
//! (16 unless set), pulling the next request from the iterator only when one
//! finishes. As a stream ([`FanOut::stream`]) memory is bounded by the
//! concurrency, not the batch size; [`FanOut::collect`] keeps every result,
//! in input order.
//!
//! The bound here is the batch's own; the service's layers (a rate limit, a
//! shared concurrency limit across batches) still apply underneath.
//!
//! # Progress and retries
//! Progress is reported through a callback ([`FanOut::on_progress`]) or a
//! watch channel ([`FanOut::watch_progress`]). The collected [`Batch`] keeps
//! each item's result, so a caller can run only the failed items again with
//! [`Batch::retry_failed`].
//!
//! # Chunks
//! [`FanOut::chunked`] runs the batch in fixed chunks, each finished before
//! the next starts — the classic "batches of N with a progress line". A
//! sliding window (the default) keeps the downstream busier; chunks are
//! there for APIs that bill or rate-limit per chunk.
//!
//! # Cancellation
//! Each request runs in its own Tokio task. Dropping the stream (or the
//! `collect` future) aborts the tasks in flight, which drops their response
//! futures and gives back any capacity the layers underneath hold.
//!
//! # Example
//! ```
//! use tower::service_fn;
//! use tower_fanout_core::fan_out::fan_out;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_fanout_core::BoxError> {
//! let svc = service_fn(|n: u32| async move {
//!     if n % 10 == 3 { Err("flaky".into()) } else { Ok::<_, tower_fanout_core::BoxError>(n * 2) }
//! });
//! let mut batch = fan_out(svc.clone(), 0..100u32)
//!     .concurrency(8)?
//!     .on_progress(|p| if p.completed == p.total.unwrap_or(0) { println!("{p}") })
//!     .collect()
//!     .await;
//! assert_eq!(batch.summary().failed, 10);
//!
//! // Run only the ten failures again (here with a service that succeeds).
//! let fixed = service_fn(|n: u32| async move { Ok::<_, tower_fanout_core::BoxError>(n * 2) });
//! batch.retry_failed(fixed, 8, |index| index as u32).await?;
//! assert_eq!(batch.summary().succeeded, 100);
//! assert_eq!(batch.items()[3].attempts, 2);
//! # Ok(())
//! # }
//! ```

mod batch;
mod stream;

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

pub use self::batch::{Batch, ItemResult, Progress, Summary, error_kind};
pub use self::stream::Completions;
use crate::error::ConfigError;

type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Starts a fan-out of `requests` through `service`; see the [module docs](self).
pub fn fan_out<S, I>(service: S, requests: I) -> FanOut<S, I::IntoIter>
where
    I: IntoIterator,
{
    let requests = requests.into_iter();
    let (lower, upper) = requests.size_hint();
    FanOut {
        service,
        requests,
        total: (Some(lower) == upper).then_some(lower),
        window: 16,
        chunked: false,
        on_progress: None,
        watch: None,
        error_kind,
    }
}

/// A configured fan-out, run by [`collect`](FanOut::collect) or [`stream`](FanOut::stream).
#[must_use = "a fan-out does nothing until it is run with `.collect()` or `.stream()`"]
pub struct FanOut<S, I> {
    service: S,
    requests: I,
    total: Option<usize>,
    window: usize,
    chunked: bool,
    on_progress: Option<ProgressFn>,
    watch: Option<watch::Sender<Progress>>,
    error_kind: fn(&crate::BoxError) -> &'static str,
}

impl<S, I> FanOut<S, I> {
    /// At most `n` requests in flight at once (a sliding window).
    ///
    /// # Errors
    /// Zero: nothing would ever run.
    pub fn concurrency(mut self, n: usize) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::new(
                "fan-out concurrency must be at least 1 (0 would run nothing)",
            ));
        }
        self.window = n;
        self.chunked = false;
        Ok(self)
    }

    /// Runs the batch in chunks of `size`, each finished before the next starts.
    ///
    /// # Errors
    /// A chunk size of zero.
    pub fn chunked(mut self, size: usize) -> Result<Self, ConfigError> {
        if size == 0 {
            return Err(ConfigError::new("fan-out chunk size must be at least 1"));
        }
        self.window = size;
        self.chunked = true;
        Ok(self)
    }

    /// Calls `f` with the progress after every completed request.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// A channel that always holds the latest progress.
    pub fn watch_progress(&mut self) -> watch::Receiver<Progress> {
        let sender = self.watch.get_or_insert_with(|| {
            watch::Sender::new(Progress {
                total: self.total,
                ..Progress::default()
            })
        });
        sender.subscribe()
    }

    /// Names errors in the [`Summary`]'s `by_kind` counts; [`error_kind`] by default.
    pub fn error_kinds(mut self, classify: fn(&crate::BoxError) -> &'static str) -> Self {
        self.error_kind = classify;
        self
    }
}

impl<S, I> fmt::Debug for FanOut<S, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("total", &self.total)
            .field("window", &self.window)
            .field("chunked", &self.chunked)
            .finish_non_exhaustive()
    }
}
