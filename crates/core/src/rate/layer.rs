use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::RateLimit;
use super::bucket::TokenBucket;
use crate::clock::Clock;
use crate::error::ConfigError;

/// How many tokens a request costs.
///
/// Implemented for every `Fn(&Req) -> u32`, so a closure will do.
pub trait Cost<Req> {
    /// The tokens `req` takes from the bucket.
    fn cost(&self, req: &Req) -> u32;
}

impl<Req, F> Cost<Req> for F
where
    F: Fn(&Req) -> u32,
{
    fn cost(&self, req: &Req) -> u32 {
        self(req)
    }
}

/// Every request costs one token (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCost;

impl<Req> Cost<Req> for UnitCost {
    fn cost(&self, _: &Req) -> u32 {
        1
    }
}

/// The shared part of a rate limit: the bucket and the clock it reads.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) bucket: TokenBucket,
    pub(super) clock: Clock,
    /// The tokens a waiting caller books in `poll_ready`, before its
    /// request's cost is known: the cost the last two calls whose bookings
    /// did not match them agreed on, else 1 (always 1 with [`UnitCost`]).
    pub(super) estimate: std::sync::atomic::AtomicU32,
    /// The cost of the last call whose booking did not match it.
    pub(super) last_cost: std::sync::atomic::AtomicU32,
}

/// Configures a [`RateLimitLayer`]; made by [`RateLimitLayer::builder`].
#[derive(Clone)]
pub struct RateLimitBuilder<C = UnitCost> {
    rate: u32,
    period: Duration,
    burst: Option<u32>,
    cost: C,
    fail_fast: bool,
}

impl<C> fmt::Debug for RateLimitBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("rate", &self.rate)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}

impl<C> RateLimitBuilder<C> {
    /// The most tokens the bucket holds, so the most requests admitted at
    /// once after a quiet spell. Defaults to `rate`.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Charges each request the tokens `cost` returns for it.
    #[must_use]
    pub fn cost<C2>(self, cost: C2) -> RateLimitBuilder<C2> {
        RateLimitBuilder {
            rate: self.rate,
            period: self.period,
            burst: self.burst,
            cost,
            fail_fast: self.fail_fast,
        }
    }

    /// Refuse with [`RateLimited`](crate::error::RateLimited) instead of
    /// waiting when the bucket is short.
    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// A zero rate, period or burst: such a bucket would never admit
    /// anything. A bucket that takes more than 292 years to refill
    /// (`period / rate × burst`): its clock cannot count that far.
    pub fn build(self) -> Result<RateLimitLayer<C>, ConfigError> {
        if self.rate == 0 {
            return Err(ConfigError::new(
                "rate limit rate must be at least 1 token per period",
            ));
        }
        if self.period.is_zero() {
            return Err(ConfigError::new(
                "rate limit period must be longer than zero",
            ));
        }
        let burst = self.burst.unwrap_or(self.rate);
        if burst == 0 {
            return Err(ConfigError::new(
                "rate limit burst must be at least 1 token (a bucket of 0 admits nothing)",
            ));
        }
        super::bucket::check_refill(self.rate, self.period, burst)
            .map_err(|e| ConfigError::new(format!("rate limit: {e}")))?;
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                bucket: TokenBucket::new(self.rate, self.period, burst),
                clock: Clock::start(),
                estimate: std::sync::atomic::AtomicU32::new(1),
                last_cost: std::sync::atomic::AtomicU32::new(1),
            }),
            cost: self.cost,
            fail_fast: self.fail_fast,
        })
    }
}

/// Admits requests at `rate` tokens per `period`, with bursts of up to `burst`.
///
/// Cloning the layer, or calling [`layer`](Layer::layer) more than once,
/// shares one bucket.
#[derive(Clone)]
pub struct RateLimitLayer<C = UnitCost> {
    shared: Arc<Shared>,
    cost: C,
    fail_fast: bool,
}

impl<C> fmt::Debug for RateLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("bucket", &self.shared.bucket)
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// `rate` requests per `period`, with a burst of `rate`.
    ///
    /// # Errors
    /// A zero rate or period, or a period longer than 292 years (see
    /// [`RateLimitBuilder::build`]).
    pub fn new(rate: u32, period: Duration) -> Result<Self, ConfigError> {
        Self::builder(rate, period).build()
    }

    /// `rate` requests per second, with a burst of `rate`.
    ///
    /// # Errors
    /// A zero rate.
    pub fn per_second(rate: u32) -> Result<Self, ConfigError> {
        Self::new(rate, Duration::from_secs(1))
    }

    /// Starts a configuration of `rate` tokens per `period`.
    pub fn builder(rate: u32, period: Duration) -> RateLimitBuilder {
        RateLimitBuilder {
            rate,
            period,
            burst: None,
            cost: UnitCost,
            fail_fast: false,
        }
    }
}

impl<C> RateLimitLayer<C> {
    /// A live view of the shared bucket.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for RateLimitLayer<C> {
    type Service = RateLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(
            inner,
            self.shared.clone(),
            self.cost.clone(),
            self.fail_fast,
        )
    }
}

/// Reads a rate limit's live state without locking.
#[derive(Debug, Clone)]
pub struct RateLimitHandle {
    pub(super) shared: Arc<Shared>,
}

impl RateLimitHandle {
    /// Whole tokens in the bucket now.
    pub fn tokens(&self) -> u32 {
        self.shared.bucket.tokens(self.shared.clock.now())
    }

    /// The most tokens the bucket holds.
    pub fn burst(&self) -> u32 {
        self.shared.bucket.burst()
    }

    /// The time it takes to refill one token.
    pub fn refill_interval(&self) -> Duration {
        Duration::from_nanos(self.shared.bucket.interval())
    }
}
