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
//! watch channel ([`FanOut::watch_progress`]). It counts the results handed
//! to the consumer of the stream, so a slow consumer sees it lag: the
//! requests finished meanwhile wait in the window, which is what keeps
//! memory bounded. The collected [`Batch`] keeps each item's result, so a
//! caller can run only the failed items again with [`Batch::retry_failed`],
//! or with [`Batch::retry_failed_with`] through a fan-out set up as the
//! first run's (a [`per_key`](FanOut::per_key) bound).
//!
//! # Chunks
//! [`FanOut::chunked`] runs the batch in fixed chunks, each finished before
//! the next starts — the classic "batches of N with a progress line". A
//! sliding window (the default) keeps the downstream busier; chunks are
//! there for APIs that bill or rate-limit per chunk.
//!
//! # Keys: one slow host must not hold the window
//! A call waiting at a per-key limit underneath (a per-host
//! [`KeyedLimitLayer`](crate::keyed::KeyedLimitLayer), whose `poll_ready`
//! cannot know the key) holds its window slot while it waits, so a list
//! that names one host's URLs before another's runs only that host's limit
//! at a time, and a slow host's items pile up in the window as the fast
//! ones finish. [`FanOut::per_key`] gives the window the same key and
//! bound: a request whose key is full is set aside and the ones after it
//! start in its place, up to [`lookahead`](FanOut::lookahead) set aside
//! (4 × the concurrency by default), so a stream still holds at most
//! concurrency + lookahead requests. Use it whenever the service limits
//! each key; results come out as without it.
//!
//! # HTTP answers are results, whatever their status
//! An HTTP client's service answers `Ok(response)` for a 404 or a 500 as for
//! a 200 (tower-fanout-http's client first retries what its retry layer
//! does: 429s, and 502/503/504 of idempotent methods), so a batch counts
//! them as succeeded and [`Batch::retry_failed`] leaves them. To count a status as a failure, turn it into an error before the
//! fan-out, with tower's `ServiceExt::map_result`:
//!
//! ```
//! use tower::{ServiceExt, service_fn};
//! use tower_fanout_core::{BoxError, fan_out::fan_out};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Stands in for an HTTP client: item 7 draws a 503.
//! let client = service_fn(|n: u16| async move {
//!     let status = if n == 7 { 503 } else { 200 };
//!     Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
//! });
//! let counted = client.map_result(|answer: Result<http::Response<()>, BoxError>| {
//!     let response = answer?;
//!     if response.status().is_success() {
//!         Ok(response)
//!     } else {
//!         Err(BoxError::from(format!("answered {}", response.status())))
//!     }
//! });
//! let batch = fan_out(counted, 0..10u16).collect().await;
//! assert_eq!(batch.summary().failed, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Cancellation
//! Each request runs in its own Tokio task (so a fan-out run outside a Tokio
//! runtime panics). Dropping the stream (or the `collect` future) aborts the
//! tasks in flight, which drops their response futures and gives back any
//! capacity the layers underneath hold. A [`Batch::retry_failed`] cut short
//! keeps the retries it finished.
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
mod per_key;
mod stream;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::watch;

pub use self::batch::{Batch, ItemResult, Progress, Summary, error_kind};
pub use self::per_key::{Admission, PerKey, Unkeyed};
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
        concurrency_set: false,
        on_progress: None,
        watch: None,
        error_kind,
        admission: Unkeyed,
        keyed: false,
    }
}

/// A configured fan-out, run by [`collect`](FanOut::collect) or [`stream`](FanOut::stream).
///
/// `W` is how the window admits requests: [`Unkeyed`] (each in turn) unless
/// [`per_key`](FanOut::per_key) made it a [`PerKey`].
#[must_use = "a fan-out does nothing until it is run with `.collect()` or `.stream()`"]
pub struct FanOut<S, I, W = Unkeyed> {
    service: S,
    requests: I,
    total: Option<usize>,
    window: usize,
    chunked: bool,
    /// Set by `concurrency`, which a chunked run refuses (and the reverse).
    concurrency_set: bool,
    on_progress: Option<ProgressFn>,
    watch: Option<watch::Sender<Progress>>,
    error_kind: fn(&crate::BoxError) -> &'static str,
    admission: W,
    /// Set by `per_key`, which a chunked run refuses.
    keyed: bool,
}

impl<S, I, W> FanOut<S, I, W> {
    /// At most `n` requests in flight at once (a sliding window). Called
    /// again, the last `n` holds.
    ///
    /// # Errors
    /// Zero: nothing would ever run. A [`chunked`](Self::chunked) fan-out:
    /// both set how many requests run at once, so only one may be called.
    pub fn concurrency(mut self, n: usize) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::new(
                "fan-out concurrency must be at least 1 (0 would run nothing)",
            ));
        }
        if self.chunked {
            return Err(ConfigError::new(CHUNKED_CONCURRENCY));
        }
        self.window = n;
        self.concurrency_set = true;
        Ok(self)
    }

    /// Runs the batch in chunks of `size`, each finished before the next
    /// starts: a chunk's `size` requests run at once, so this sets the
    /// concurrency too. Called again, the last `size` holds.
    ///
    /// # Errors
    /// A chunk size of zero; a fan-out with
    /// [`concurrency`](Self::concurrency) (each sets how many requests run
    /// at once: pick one) or with [`per_key`](Self::per_key) (see there).
    pub fn chunked(mut self, size: usize) -> Result<Self, ConfigError> {
        if size == 0 {
            return Err(ConfigError::new("fan-out chunk size must be at least 1"));
        }
        if self.keyed {
            return Err(ConfigError::new(CHUNKED_PER_KEY));
        }
        if self.concurrency_set {
            return Err(ConfigError::new(CHUNKED_CONCURRENCY));
        }
        self.window = size;
        self.chunked = true;
        Ok(self)
    }

    /// Calls `f` with the progress after every completed request, as the
    /// consumer is handed its result (see [`Progress`]: a slow consumer
    /// sees the counts lag). A second call replaces the first `f`.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// A channel that always holds the latest progress, updated as the
    /// consumer is handed each result (see [`Progress`]: a slow consumer
    /// sees the counts lag). Every call subscribes to the same channel.
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

// Refused in either order: each would quietly undo the other.
const CHUNKED_CONCURRENCY: &str = "fan-out `chunked(n)` and `concurrency(n)` both set how many \
     requests run at once: a chunk of n runs whole (n at once, the next chunk after its slowest \
     item); pick one: `.chunked(n)` for chunks, `.concurrency(n)` for a sliding window";

const CHUNKED_PER_KEY: &str = "fan-out per_key needs a sliding window, not chunks: a chunk \
     waits for its slowest item before the next starts, so a request set aside for a busy key \
     could not start in its place; drop `.chunked(n)` (use `.concurrency(n)`) or `.per_key(..)`";

impl<S, I, Req> FanOut<S, I, Unkeyed>
where
    I: Iterator<Item = Req>,
{
    /// Starts at most `max_per_key` requests of one key at once, the key
    /// being `key_fn(&request)`: a request whose key has that many started
    /// and unfinished is set aside, and the requests after it start in its
    /// place; it starts as soon as its key has room, before any request
    /// read after it (oldest first).
    ///
    /// Use it when the service limits each key underneath (a per-host
    /// limit, [`KeyedLimitLayer`](crate::keyed::KeyedLimitLayer)) with the
    /// same `max_per_key`: without it, a call waiting at its key's gate
    /// holds a window slot, so one busy or slow key can fill the window
    /// while other keys sit idle.
    ///
    /// Requests are read ahead of the window at most
    /// [`lookahead`](FanOut::lookahead) (4 × the concurrency by default):
    /// when that many are set aside, the fan-out waits for a request to
    /// finish instead of reading further, so a stream holds at most
    /// concurrency + lookahead requests, and one key's requests can still
    /// fill the window if more than that are in a row. Results are not
    /// held back: [`stream`](FanOut::stream) yields them as they finish,
    /// [`collect`](FanOut::collect) returns them in input order.
    ///
    /// # Errors
    /// A `max_per_key` of zero; a [`chunked`](Self::chunked) fan-out (a
    /// chunk waits for its slowest item, so nothing could start in a
    /// set-aside request's place).
    ///
    /// # Panics
    /// `key_fn` runs as each request is read, inside
    /// [`Completions::next`] (and so [`collect`](FanOut::collect)): a panic
    /// there comes out of that call, as a panic of the request iterator
    /// does, unlike a panic of the service's call, which fails only its
    /// item. Dropping the stream as it unwinds cancels the requests in
    /// flight as usual.
    #[allow(
        clippy::type_complexity,
        reason = "the keyed fan-out's type, spelt out once so the docs show it"
    )]
    pub fn per_key<F, K>(
        self,
        key_fn: F,
        max_per_key: usize,
    ) -> Result<FanOut<S, I, PerKey<F, K, Req>>, ConfigError>
    where
        F: Fn(&Req) -> K,
        K: Hash + Eq + Clone,
    {
        if max_per_key == 0 {
            return Err(ConfigError::new(
                "fan-out max_per_key must be at least 1 (0 would start no request); \
                 to leave keys unbounded, do not call `per_key`",
            ));
        }
        if self.chunked {
            return Err(ConfigError::new(CHUNKED_PER_KEY));
        }
        Ok(FanOut {
            service: self.service,
            requests: self.requests,
            total: self.total,
            window: self.window,
            chunked: false,
            concurrency_set: self.concurrency_set,
            on_progress: self.on_progress,
            watch: self.watch,
            error_kind: self.error_kind,
            admission: PerKey::new(key_fn, max_per_key),
            keyed: true,
        })
    }
}

impl<S, I, F, K, Req> FanOut<S, I, PerKey<F, K, Req>> {
    /// Sets aside at most `n` requests whose key is busy (4 × the
    /// concurrency by default): when `n` are, the fan-out waits for a
    /// request to finish instead of reading further. Memory holds at most
    /// concurrency + `n` requests.
    ///
    /// # Errors
    /// Zero: a request read while its key is busy has to wait somewhere.
    pub fn lookahead(mut self, n: usize) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::new(
                "fan-out lookahead must be at least 1: a request read while its key is busy \
                 is held there until the key has room",
            ));
        }
        self.admission.set_lookahead(n);
        Ok(self)
    }
}

impl<S, I, W: fmt::Debug> fmt::Debug for FanOut<S, I, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("total", &self.total)
            .field("window", &self.window)
            .field("chunked", &self.chunked)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}
