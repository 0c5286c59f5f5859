//! How core's adaptive limit should read the client's answers.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use tower_fanout_core::classify::{Classify, HttpClassify, Outcome};

use crate::error;

/// Core's [`HttpClassify`], knowing this crate's errors: give it to an
/// [`AdaptiveLimitLayer`](tower_fanout_core::adaptive::AdaptiveLimitLayer)
/// stacked over a [`Client`](crate::Client).
///
/// hyper-util wraps a refusal the address guard makes after DNS in its
/// connect error, which `HttpClassify` reads as a failure (as it reads a
/// refused connection: a host down, not busy). Here a refused
/// address, an invalid request, a body over a cap, too many redirects and a
/// configuration error are the caller's mistake
/// ([`Outcome::CallerError`]): they say nothing of the downstream's load. An
/// attempt that ran past the client's `timeout` ([`TimedOut`](crate::TimedOut),
/// which `HttpClassify` does not know) is overload, as a timeout is in core,
/// and so is a call that ran past its deadline once its request was sent
/// (against a downstream slower than the deadline, the only signal a limit
/// gets). A deadline that passed before the request was sent (the request
/// reached the client too late, having waited at a limit above it, or its
/// streamed body did not end in time) and a request body that did not end
/// within the `timeout` say nothing of the downstream's load: the caller's
/// ([`Outcome::CallerError`]). Everything else is answered as `HttpClassify` answers it, except that
/// [`retry_after`](Classify::retry_after) also reads an HTTP-date
/// (through [`headers::retry_after`](crate::headers::retry_after)).
///
/// ```
/// use tower_fanout_core::adaptive::{AdaptiveLimitLayer, GradientController};
/// use tower_fanout_http::ClientClassify;
///
/// let layer = AdaptiveLimitLayer::new(GradientController::default()).classify(ClientClassify);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientClassify;

impl<B> Classify<http::Response<B>> for ClientClassify {
    fn classify(&self, result: Result<&http::Response<B>, &(dyn StdError + 'static)>) -> Outcome {
        match result {
            Err(err) => error::outcome(err).unwrap_or_else(|| HttpClassify.classify(result)),
            Ok(_) => HttpClassify.classify(result),
        }
    }

    fn retry_after(&self, response: &http::Response<B>) -> Option<Duration> {
        let value = response.headers().get(http::header::RETRY_AFTER)?;
        let now = crate::headers::server_clock(response.headers(), SystemTime::now());
        crate::headers::retry_after(value, now)
    }

    fn waited(&self, response: &http::Response<B>) -> Duration {
        HttpClassify.waited(response)
    }
}
