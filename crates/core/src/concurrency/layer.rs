use std::sync::Arc;

use tower_layer::Layer;

use super::ConcurrencyLimit;
use crate::error::ConfigError;
use crate::semaphore::Semaphore;

/// Limits the calls in flight through every service it wraps to one shared maximum.
///
/// Cloning the layer, or calling [`layer`](Layer::layer) more than once,
/// shares the same permits.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    semaphore: Arc<Semaphore>,
    fail_fast: bool,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls in flight.
    ///
    /// # Errors
    /// A limit of zero is refused: no call could ever start.
    pub fn new(max: usize) -> Result<Self, ConfigError> {
        if max == 0 {
            return Err(ConfigError::new(
                "concurrency limit must be at least 1 (a limit of 0 admits no call)",
            ));
        }
        Ok(Self {
            semaphore: Arc::new(Semaphore::new(max)),
            fail_fast: false,
        })
    }

    /// Refuse with [`Overloaded`](crate::error::Overloaded) instead of waiting
    /// when no permit is free.
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// A live view of the shared limit.
    pub fn handle(&self) -> ConcurrencyLimitHandle {
        ConcurrencyLimitHandle {
            semaphore: self.semaphore.clone(),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::from_shared(inner, self.semaphore.clone(), self.fail_fast)
    }
}

/// Reads a concurrency limit's live state; every read is one atomic load.
#[derive(Clone)]
pub struct ConcurrencyLimitHandle {
    pub(super) semaphore: Arc<Semaphore>,
}

impl ConcurrencyLimitHandle {
    /// The configured maximum.
    pub fn limit(&self) -> usize {
        self.semaphore.limit()
    }

    /// Permits held now: calls in flight plus ready services not yet called.
    pub fn in_flight(&self) -> usize {
        self.semaphore.in_use()
    }

    /// Permits free now. At most `i64::MAX / 4`: a larger limit (`usize::MAX`
    /// for "no limit") is counted as that many, so `available() +
    /// in_flight()` falls short of [`limit`](Self::limit) there.
    pub fn available(&self) -> usize {
        self.semaphore.available()
    }

    /// Callers queued for a permit.
    pub fn waiting(&self) -> usize {
        self.semaphore.waiting()
    }
}

impl std::fmt::Debug for ConcurrencyLimitHandle {
    /// The state the accessors read, not the semaphore's packed words.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimitHandle")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("available", &self.available())
            .field("waiting", &self.waiting())
            .finish()
    }
}
