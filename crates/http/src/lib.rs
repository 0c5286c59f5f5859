//! An HTTP client preset for agent runtimes: hyper-util's pooled client
//! (HTTP/1 and HTTP/2: by ALPN over TLS through rustls, or by prior
//! knowledge, in cleartext too) under per-host limits, with retries that
//! honour `Retry-After`, budgets learned from rate-limit headers, timeouts,
//! a response body cap and an address guard.
//!
//! ```text
//! Client::call ─► http_request span, request body buffered (bounded),
//!                  the whole call under its deadline (if set)
//!   retry            429/503 wait for Retry-After (capped), backoff on 502/503/504
//!                    and connection failures, a retry budget; sleeps hold nothing
//!   follow redirects tower-http's FollowRedirect: hop cap, credentials dropped
//!                    on a cross-origin hop, http/https targets only
//!   learned budgets  a host that says nothing remains is waited for, not hammered
//!   per-host limits  concurrency and rate per host (tower-fanout-core's keyed limit)
//!   attempt          timeout (the host's own, if set) over connect + headers +
//!                    body; gzip/br; body cap
//!   hyper-util       pool per host; resolver and connector behind the address guard
//! ```
//!
//! Each piece is also usable alone: [`retry::RetryLayer`] over any service of
//! `http::Request`, the header parsers in [`headers`], and the address
//! checks in [`guard`].
//!
//! What it does not do: it connects to every host directly (no proxy;
//! `HTTP_PROXY` and `HTTPS_PROXY` are not read), and it collects each
//! response body whole and drops its trailers, so it is no gRPC client
//! (tonic over tower-fanout-core's layers, with `GrpcClassify`, is).
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use tower_fanout_http::{Client, KeyLimit};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_fanout_http::Error> {
//! let client = Client::builder()
//!     .host_default(KeyLimit::new().concurrency(8))
//!     .host_limit("api.github.com", KeyLimit::new().concurrency(3))
//!     .host_limit("api.stripe.com", KeyLimit::new().concurrency(5).rate(25, Duration::from_secs(1)))
//!     .timeout(Some(Duration::from_secs(20)))
//!     .deadline(Some(Duration::from_secs(90)))
//!     .max_response_body(2 * 1024 * 1024)
//!     .address_guard(true)
//!     .build()?;
//!
//! let resp = client.get("https://api.github.com/zen").await?;
//! println!("{}: {}", resp.status(), String::from_utf8_lossy(resp.body()));
//! # Ok(())
//! # }
//! ```
//!
//! # A held host
//! With [`learn_rate_limits`](ClientBuilder::learn_rate_limits) on (the
//! default), a 429 or 503 with `Retry-After`, or rate-limit headers that say
//! no budget remains, hold every request to that host (its authority: host
//! and port), not only to the path answered, until the time they give. A
//! hold up to the retry layer's [`max_wait`](retry::RetryBuilder::max_wait)
//! (60 s by default, with [`no_retry`](ClientBuilder::no_retry) too) is
//! waited out; a longer one, or one ending past the call's
//! [`deadline`](ClientBuilder::deadline), fails the call at once, unsent:
//! [`Error::is_rate_limited`], with the wait as [`Error::retry_after`] and a
//! message naming the held host and the earlier answer.
//! `.learn_rate_limits(false)` turns holding off.
//!
//! # Under an adaptive limit
//! A call's wait at its host's gate (the permit or token of a
//! [`host_limit`](ClientBuilder::host_limit) you configured) is your
//! policy, not the downstream's latency: a response that waited there
//! carries the wait as a [`DeliberateWait`](tower_fanout_core::DeliberateWait)
//! extension, which core's adaptive limit takes off the latency it records,
//! so one host's configured limit does not lower the limit for the calls to
//! every other host. A response that waited for nothing carries none. The
//! waits the downstream asked for (a learned budget's hold, a retry's sleep
//! on `Retry-After` or after a failure) are not noted: they are its word on
//! its capacity, and an adaptive limit above should hear them as latency.
//!
//! Give that limit [`ClientClassify`] rather than core's default
//! `HttpClassify`, which does not know this crate's errors: the attempt
//! timeout is overload to it only through [`ClientClassify`] (to
//! `HttpClassify` a plain failure), and the caller's own mistakes (a URL the
//! address guard refuses, a body over a cap) leave the limit alone.
//!
//! # Errors
//! Every failure is one [`Error`] with a predicate for its kind
//! (`is_timeout`, `is_connect`, `is_body_too_large`, `is_rate_limited`,
//! `is_refused_address`, ..., and `is_request` for an exchange that failed
//! after the request went out) and the underlying error as its source.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
#[cfg(test)]
mod cancel_tests;
mod classify;
mod client;
mod error;
pub mod guard;
pub mod headers;
mod learn;
mod redirect;
pub mod retry;
mod timeout;

pub use self::body::{BodyTooLarge, RequestBodyTooLarge};
pub use self::classify::ClientClassify;
pub use self::client::{Client, ClientBuilder};
pub use self::error::Error;
pub use self::redirect::TooManyRedirects;
pub use self::timeout::TimedOut;
/// The name a [`ClientBuilder::resolver`] resolves: hyper-util's, the
/// version this crate is built with.
pub use hyper_util::client::legacy::connect::dns::Name;
/// The rustls version the client uses, for [`ClientBuilder::tls_config`].
pub use rustls;
/// A host's limit, as [`ClientBuilder::host_limit`] and
/// [`ClientBuilder::host_default`] take it (tower-fanout-core's, named here
/// so a user of this crate alone can write one).
pub use tower_fanout_core::keyed::KeyLimit;
/// The live view of the per-host limits that [`Client::host_limits`]
/// returns (tower-fanout-core's keyed limit's handle).
pub use tower_fanout_core::keyed::KeyedLimitHandle;
pub use tower_fanout_core::{BoxError, Deadline};

/// Names a failure for counting, as [`fan_out`'s `error_kind`](tower_fanout_core::fan_out::error_kind)
/// does, but knowing this crate's [`Error`]: pass it to `FanOut::error_kinds` so a
/// batch's summary counts `timeout`, `connect`, `body_too_large`, ... instead of `other`.
pub fn error_kind(error: &BoxError) -> &'static str {
    match error::find_in_chain::<Error>(error.as_ref()) {
        Some(http) => http.kind_name(),
        None => tower_fanout_core::fan_out::error_kind(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kind_names_the_clients_errors_then_falls_back_to_core() {
        let invalid: BoxError = Box::new(Error::invalid_request("no host"));
        assert_eq!(error_kind(&invalid), "invalid_request");
        let core: BoxError = Box::new(tower_fanout_core::error::Overloaded::new());
        assert_eq!(error_kind(&core), "overloaded");
        let other: BoxError = "something else".into();
        assert_eq!(error_kind(&other), "other");
    }

    /// The client's refusals name the client's settings and keep a wait's
    /// fraction of a millisecond: "raise max_keys" named a setting the
    /// client does not have (its map is bounded by `max_hosts`), and a wait
    /// under a millisecond read "retry after 0 ms".
    #[test]
    fn refusals_name_the_clients_settings() {
        use std::time::Duration;
        use tower_fanout_core::error::RateLimited;
        use tower_fanout_core::keyed::TooManyKeys;

        let full = Error::from_box(Box::new(TooManyKeys::new(4))).to_string();
        assert!(
            full.contains("max_hosts") && !full.contains("max_keys"),
            "{full}"
        );
        assert!(full.contains("all 4 tracked hosts"), "{full}");
        let soon = Error::from_box(Box::new(RateLimited::new(Duration::from_micros(200))));
        assert!(soon.to_string().contains("retry after 0.2 ms"), "{soon}");
        let late = Error::from_box(Box::new(RateLimited::past_deadline(Duration::from_secs(2))));
        assert!(
            late.to_string()
                .contains("retry after 2 s, which would end past"),
            "{late}"
        );
    }
}
