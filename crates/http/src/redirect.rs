//! The redirect policy: a cap on hops, credentials stripped on a cross-origin
//! hop (tower-http's `FilterCredentials`), and http/https targets only.

use std::fmt;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower_http::follow_redirect::policy::{Action, Attempt, FilterCredentials, Policy};

use crate::{BoxError, Deadline};

/// The redirect chain was longer than the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyRedirects {
    max: usize,
}

impl TooManyRedirects {
    /// The cap on hops.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "more than {} redirects: a redirect loop, or a chain longer than the cap (raise `max_redirects`)",
            self.max
        )
    }
}

impl std::error::Error for TooManyRedirects {}

/// A redirect to a scheme other than http or https.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRedirectScheme(String);

impl fmt::Display for BadRedirectScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redirect to the unsupported scheme {:?}", self.0)
    }
}

impl std::error::Error for BadRedirectScheme {}

/// Marks a request sent by following a redirect (in its extensions), and
/// the answer it got (in the response's): the retry layer must not start a
/// non-idempotent request again once it has been redirected, since the
/// server acted on it (a POST answered 303 has run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop;

/// An error met on a redirected request (see [`Hop`]); its source is the error.
#[derive(Debug)]
pub(crate) struct AfterRedirect(pub(crate) BoxError);

impl fmt::Display for AfterRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("after a redirect")
    }
}

impl std::error::Error for AfterRedirect {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// tower-http's `FollowRedirect` policy for the preset. It counts hops itself
/// rather than composing tower-http's `Limited`, because `Limited` stops by
/// returning the last 3xx as if it were the answer, and a caller should see
/// [`TooManyRedirects`] instead; the credential filtering is tower-http's.
#[derive(Clone, Debug)]
pub(crate) struct RedirectPolicy {
    max: usize,
    remaining: usize,
    credentials: FilterCredentials,
}

impl RedirectPolicy {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            remaining: max,
            credentials: FilterCredentials::new(),
        }
    }
}

impl Policy<Full<Bytes>, BoxError> for RedirectPolicy {
    fn redirect(&mut self, attempt: &Attempt<'_>) -> Result<Action, BoxError> {
        if self.max == 0 {
            return Ok(Action::Stop);
        }
        match attempt.location().scheme_str() {
            Some("http" | "https") => {}
            other => return Err(BadRedirectScheme(other.unwrap_or("").to_string()).into()),
        }
        if self.remaining == 0 {
            return Err(TooManyRedirects { max: self.max }.into());
        }
        self.remaining -= 1;
        Policy::<Full<Bytes>, BoxError>::redirect(&mut self.credentials, attempt)
    }

    fn on_request(&mut self, request: &mut Request<Full<Bytes>>) {
        // Cross-origin, the filter drops every extension: the call's
        // deadline is no credential, and the hop's waits (a learned hold,
        // the host's token) must see it. Put back by hand rather than
        // through the filter's allowlist, a `Vec` that every call's copy
        // of this policy would clone.
        let deadline = request.extensions().get::<Deadline>().copied();
        Policy::<Full<Bytes>, BoxError>::on_request(&mut self.credentials, request);
        if let Some(deadline) = deadline
            && request.extensions().get::<Deadline>().is_none()
        {
            request.extensions_mut().insert(deadline);
        }
        // Called for the first request too; a hop follows a redirect taken.
        // Marked after the filter, which may drop extensions cross-origin.
        if self.remaining < self.max {
            request.extensions_mut().insert(Hop);
        }
    }

    fn clone_body(&self, body: &Full<Bytes>) -> Option<Full<Bytes>> {
        Some(body.clone())
    }
}
