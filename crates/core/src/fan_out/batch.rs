use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tower_service::Service;

use super::per_key::Admission;
use super::{FanOut, fan_out};
use crate::BoxError;
use crate::error::{
    Closed, ConfigError, CostExceedsBurst, NotReady, Overloaded, QueueFull, RateLimited,
    ServicePanicked, TowerError,
};

/// One request's outcome. New fields may be added: read them by name.
#[derive(Debug)]
#[non_exhaustive]
pub struct ItemResult<T> {
    /// The request's position in the input.
    pub index: usize,
    /// The response, or why there is none.
    pub result: Result<T, BoxError>,
    /// From the start of the (last) attempt to its end, waits in the layers included.
    pub latency: Duration,
    /// How many times the item ran: 1, plus one per [`Batch::retry_failed`]
    /// that re-sent it and saw it finish (not one cut short with it in
    /// flight).
    pub attempts: u32,
}

/// Where a fan-out stands. New fields may be added: read them by name.
///
/// The counts follow the consumer of the results: a result counts as
/// completed when [`Completions::next`](super::Completions::next) (or
/// [`collect`](super::FanOut::collect)) hands it over, and the next
/// requests start in that call. A request that has finished while the
/// consumer is busy still counts as in flight, and its slot stays taken;
/// so a slow consumer sees the counts lag, which is what keeps memory
/// bounded by the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The batch size: from the start when the iterator's `size_hint` is
    /// exact, and once the iterator is exhausted the number of requests it
    /// yielded (whatever the hint said). `None` until then if the hint was
    /// not exact, or from when the iterator yields more than it said.
    pub total: Option<usize>,
    /// Requests started so far.
    pub started: usize,
    /// Requests finished and handed to the consumer so far.
    pub completed: usize,
    /// Finished with a response.
    pub succeeded: usize,
    /// Finished with an error.
    pub failed: usize,
    /// Started and not handed to the consumer yet (finished or not).
    pub in_flight: usize,
    /// Read but not started: set aside until their key has room (only with
    /// [`per_key`](super::FanOut::per_key); at most its lookahead).
    pub waiting_for_key: usize,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.total {
            Some(total) => write!(f, "{}/{} done", self.completed, total)?,
            None => write!(f, "{} done", self.completed)?,
        }
        write!(
            f,
            " ({} ok, {} failed, {} in flight",
            self.succeeded, self.failed, self.in_flight
        )?;
        if self.waiting_for_key > 0 {
            write!(f, ", {} waiting for their key", self.waiting_for_key)?;
        }
        f.write_str(")")
    }
}

/// Counts of a finished batch. New fields may be added: read them by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Items in the batch.
    pub total: usize,
    /// Items with a response.
    pub succeeded: usize,
    /// Items with an error.
    pub failed: usize,
    /// Failed items by error kind (see [`error_kind`]).
    pub by_kind: BTreeMap<&'static str, usize>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} total, {} succeeded, {} failed",
            self.total, self.succeeded, self.failed
        )?;
        for (kind, n) in &self.by_kind {
            write!(f, ", {kind}: {n}")?;
        }
        Ok(())
    }
}

/// Every result of a fan-out, in input order.
#[derive(Debug)]
pub struct Batch<T> {
    items: Vec<ItemResult<T>>,
    error_kind: fn(&BoxError) -> &'static str,
}

impl<T> Batch<T> {
    pub(super) fn new(
        items: Vec<ItemResult<T>>,
        error_kind: fn(&BoxError) -> &'static str,
    ) -> Self {
        Self { items, error_kind }
    }

    /// The results, in input order.
    pub fn items(&self) -> &[ItemResult<T>] {
        &self.items
    }

    /// Takes the results out.
    pub fn into_items(self) -> Vec<ItemResult<T>> {
        self.items
    }

    /// Totals, and failures by kind.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            total: self.items.len(),
            ..Summary::default()
        };
        for item in &self.items {
            match &item.result {
                Ok(_) => summary.succeeded += 1,
                Err(error) => {
                    summary.failed += 1;
                    *summary.by_kind.entry((self.error_kind)(error)).or_default() += 1;
                }
            }
        }
        summary
    }

    /// The input positions of the items that failed.
    pub fn failed_indices(&self) -> Vec<usize> {
        self.items
            .iter()
            .filter(|item| item.result.is_err())
            .map(|item| item.index)
            .collect()
    }

    /// Runs the failed items again through `service`, `concurrency` at a time,
    /// building each request anew with `make_request(index)`; successes are
    /// kept as they are. Returns how many items were retried. For a retry
    /// with the first run's other settings (a [`per_key`](FanOut::per_key)
    /// bound, progress), see [`retry_failed_with`](Self::retry_failed_with).
    ///
    /// # Cancel safety
    /// Each retried item's result, and its attempt, goes into the batch as
    /// it finishes. A retry cut short (dropped, as by
    /// `tokio::time::timeout`) keeps the retries it finished; the ones
    /// still in flight are cancelled (their requests may have gone out) and
    /// their items stay as they were: failed, attempts unchanged.
    ///
    /// # Errors
    /// A concurrency of zero.
    ///
    /// # Panics
    /// Polled outside a Tokio runtime: each request runs in a Tokio task.
    pub async fn retry_failed<S, Req, F>(
        &mut self,
        service: S,
        concurrency: usize,
        make_request: F,
    ) -> Result<usize, ConfigError>
    where
        F: FnMut(usize) -> Req,
        S: Service<Req, Response = T> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        T: Send + 'static,
        Req: Send + 'static,
    {
        self.retry_failed_with(service, make_request, |fan| fan.concurrency(concurrency))
            .await
    }

    /// Runs the failed items again through a fan-out that `configure` sets
    /// up, as the first run's was: `configure` is handed the fan-out of
    /// the failed items' requests (built anew with `make_request(index)`,
    /// in input order) and returns it configured, with
    /// [`concurrency`](FanOut::concurrency), [`per_key`](FanOut::per_key)
    /// (so a retry of one host's failures keeps its per-host bound),
    /// progress and the rest. Successes are kept as they are. Returns how
    /// many items were retried. The retry's progress counts the retried
    /// items only.
    ///
    /// ```
    /// use tower::service_fn;
    /// use tower_fanout_core::fan_out::fan_out;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_fanout_core::error::ConfigError> {
    /// let hosts = ["a.test", "a.test", "b.test", "a.test"];
    /// let flaky = service_fn(|(n, _): (usize, &str)| async move {
    ///     if n % 2 == 1 { Err(std::io::Error::other("reset")) } else { Ok(n) }
    /// });
    /// let mut batch = fan_out(flaky, hosts.iter().copied().enumerate())
    ///     .concurrency(8)?
    ///     .per_key(|(_, host): &(usize, &str)| *host, 2)?
    ///     .collect()
    ///     .await;
    /// let fixed = service_fn(|(n, _): (usize, &str)| async move { Ok::<_, std::io::Error>(n) });
    /// let retried = batch
    ///     .retry_failed_with(fixed, |i| (i, hosts[i]), |fan| {
    ///         fan.concurrency(8)?.per_key(|(_, host): &(usize, &str)| *host, 2)
    ///     })
    ///     .await?;
    /// assert_eq!(retried, 2);
    /// assert_eq!(batch.summary().succeeded, 4);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// As [`retry_failed`](Self::retry_failed)'s: a retry cut short keeps
    /// the retries it finished, and leaves the items still in flight as
    /// they were.
    ///
    /// # Errors
    /// What `configure` returns (a bad setting).
    ///
    /// # Panics
    /// Polled outside a Tokio runtime: each request runs in a Tokio task.
    pub async fn retry_failed_with<S, Req, F, C, W>(
        &mut self,
        service: S,
        make_request: F,
        configure: C,
    ) -> Result<usize, ConfigError>
    where
        F: FnMut(usize) -> Req,
        C: FnOnce(
            FanOut<S, std::vec::IntoIter<Req>>,
        ) -> Result<FanOut<S, std::vec::IntoIter<Req>, W>, ConfigError>,
        W: Admission<Req>,
        S: Service<Req, Response = T> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        T: Send + 'static,
        Req: Send + 'static,
    {
        let failed = self.failed_indices();
        let requests: Vec<Req> = failed.iter().copied().map(make_request).collect();
        let mut retried = configure(fan_out(service, requests))?.stream();
        // Each result goes into the batch as it comes, with no await in
        // between: a retry dropped half-way keeps the requests it re-sent
        // and saw answered.
        while let Some(outcome) = retried.next().await {
            // `outcome.index` is the position among the retried items.
            let Some(&index) = failed.get(outcome.index) else {
                continue;
            };
            // Items are in input order (see `collect`): a binary search, not
            // a scan per retried item.
            if let Ok(at) = self.items.binary_search_by_key(&index, |item| item.index) {
                let item = &mut self.items[at];
                item.result = outcome.result;
                item.latency = outcome.latency;
                item.attempts += 1;
            }
        }
        Ok(failed.len())
    }
}

/// Names an error for counting: the refusals of this crate's layers by
/// their kind (`overloaded`, `rate_limited`, `queue_full`, `too_many_keys`,
/// ...), a timeout (tokio's or tower's `Elapsed`, tonic's `TimeoutExpired`) as `timeout`, tower's
/// `LoadShed` refusal as `overloaded`, an I/O error as `io`, anything else
/// as `other`. The error's `source()` chain is searched too.
pub fn error_kind(error: &BoxError) -> &'static str {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = current {
        #[cfg(feature = "keyed")]
        if e.is::<crate::keyed::TooManyKeys>() {
            return "too_many_keys";
        }
        let kind = if e.is::<Overloaded>() {
            "overloaded"
        } else if e.is::<RateLimited>() {
            "rate_limited"
        } else if e.is::<QueueFull>() {
            "queue_full"
        } else if e.is::<Closed>() {
            "closed"
        } else if e.is::<CostExceedsBurst>() {
            "cost_exceeds_burst"
        } else if e.is::<ServicePanicked>() {
            "panicked"
        } else if e.is::<NotReady>() {
            "not_ready"
        } else if e.is::<tokio::time::error::Elapsed>() {
            "timeout"
        } else if e.is::<std::io::Error>() {
            "io"
        } else {
            match crate::error::tower_error(e) {
                Some(TowerError::Elapsed) => "timeout",
                Some(TowerError::Overloaded) => "overloaded",
                None => "",
            }
        };
        if !kind.is_empty() {
            return kind;
        }
        current = e.source();
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kind_names_each_refusal_and_looks_through_sources() {
        let kinds: [(BoxError, &str); 6] = [
            (Overloaded::new().into(), "overloaded"),
            (
                RateLimited::new(Duration::from_secs(1)).into(),
                "rate_limited",
            ),
            (Closed::new().into(), "closed"),
            (ServicePanicked::new().into(), "panicked"),
            (std::io::Error::other("reset").into(), "io"),
            ("something else".into(), "other"),
        ];
        for (error, kind) in kinds {
            assert_eq!(error_kind(&error), kind, "{error}");
        }
        // Wrapped by another layer's error: found through `source()`.
        #[derive(Debug)]
        struct Wrapper(QueueFull);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped: BoxError = Wrapper(QueueFull::new(8)).into();
        assert_eq!(error_kind(&wrapped), "queue_full");
    }

    #[cfg(feature = "keyed")]
    #[test]
    fn error_kind_names_a_full_key_map() {
        let error: BoxError = crate::keyed::TooManyKeys::new(4).into();
        assert_eq!(error_kind(&error), "too_many_keys");
    }
}
