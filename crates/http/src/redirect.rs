//! The redirect policy: a cap on hops, credentials stripped on a cross-origin
//! hop (tower-http's `FilterCredentials`, plus API-key headers), and
//! http/https targets only.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response, StatusCode, Uri};
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

/// API-key headers removed on a cross-origin hop besides tower-http's
/// `Authorization`, `Cookie` and `Proxy-Authorization`: Anthropic's and
/// many gateways' `x-api-key`, Azure OpenAI's `api-key`, Google's
/// `x-goog-api-key`.
pub(crate) const API_KEY_HEADERS: [&str; 3] = ["x-api-key", "api-key", "x-goog-api-key"];

/// A redirect the client cannot follow: its `Location` names a scheme
/// other than http or https, or is no URI at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadRedirect {
    Scheme(String),
    /// The `Location` as sent (cut short), or `None` when it is not UTF-8.
    Location(Option<String>),
}

impl fmt::Display for BadRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme(scheme) => write!(f, "redirect to the unsupported scheme {scheme:?}")?,
            Self::Location(Some(location)) => write!(
                f,
                "redirect to a Location that is not a valid URI: {location:?}"
            )?,
            Self::Location(None) => f.write_str("redirect to a Location that is not UTF-8")?,
        }
        f.write_str(
            ": only http and https URIs are followed (with `max_redirects(0)` the 3xx is returned as it is)",
        )
    }
}

impl std::error::Error for BadRedirect {}

impl BadRedirect {
    /// The scheme a `Location` starts with (`javascript` in
    /// `javascript:alert(1)`), if it starts with one.
    fn scheme_of(location: &str) -> Option<&str> {
        let (scheme, _) = location.split_once(':')?;
        let mut chars = scheme.chars();
        let first = chars.next()?;
        (first.is_ascii_alphabetic()
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .then_some(scheme)
    }

    /// The error for a `Location` the client does not follow: its scheme
    /// named as the `Location` writes it, when it has one other than http
    /// and https, or else the `Location` itself.
    fn of(location: &str) -> Self {
        if let Some(scheme) = Self::scheme_of(location).map(str::to_ascii_lowercase)
            && !matches!(scheme.as_str(), "http" | "https")
        {
            return Self::Scheme(scheme);
        }
        // A server's text, into a message: kept short.
        const SHOWN: usize = 120;
        let mut shown: String = location.chars().take(SHOWN).collect();
        if shown.len() < location.len() {
            shown.push_str("...");
        }
        Self::Location(Some(shown))
    }
}

/// Why a response that `FollowRedirect` handed back is a redirect it did
/// not follow, or `None` when it is an answer. The preset's policy follows
/// every hop it is asked about (or fails), so a 301/302/303/307/308 with a
/// `Location` that comes out of `FollowRedirect` is one whose `Location`
/// tower-http could not resolve to a URI (`file:///etc/passwd`,
/// `http://[::1`), which it returns as if it were the answer; a caller
/// would read the 3xx as the server's reply and an unsupported scheme
/// (`ftp:`) already fails, so these fail the same way.
pub(crate) fn unfollowed<B>(response: &Response<B>) -> Option<BadRedirect> {
    if !matches!(
        response.status(),
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    ) {
        return None;
    }
    let location = response.headers().get(http::header::LOCATION)?;
    // As tower-http reads it (UTF-8, where `to_str` takes visible ASCII only).
    let Ok(location) = std::str::from_utf8(location.as_bytes()) else {
        return Some(BadRedirect::Location(None));
    };
    Some(BadRedirect::of(location))
}

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
/// [`TooManyRedirects`] instead; the credential filtering is tower-http's,
/// with the headers in `strip` removed beside it.
#[derive(Clone, Debug)]
pub(crate) struct RedirectPolicy {
    max: usize,
    remaining: usize,
    credentials: FilterCredentials,
    /// Removed once a hop has left the origin ([`API_KEY_HEADERS`] and the
    /// builder's additions). Shared: every call clones the policy.
    strip: Arc<[HeaderName]>,
    /// A hop has left the origin: `strip` stays removed on every later hop,
    /// back to the first origin included.
    left_origin: bool,
}

impl RedirectPolicy {
    pub(crate) fn new(max: usize, strip: Arc<[HeaderName]>) -> Self {
        Self {
            max,
            remaining: max,
            credentials: FilterCredentials::new(),
            strip,
            left_origin: false,
        }
    }
}

/// Whether `a` and `b` share scheme, host and port (a port left out is the
/// scheme's default), as tower-http's `FilterCredentials` compares them.
fn same_origin(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| {
        u.port_u16().or_else(|| match u.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        })
    };
    a.scheme().is_some()
        && a.scheme() == b.scheme()
        && a.host().is_some()
        && a.host() == b.host()
        && port(a) == port(b)
}

impl Policy<Full<Bytes>, BoxError> for RedirectPolicy {
    fn redirect(&mut self, attempt: &Attempt<'_>) -> Result<Action, BoxError> {
        // The only `Stop`: the client reads any other 3xx that comes out
        // of the redirect layer as one it could not follow (`unfollowed`).
        if self.max == 0 {
            return Ok(Action::Stop);
        }
        let location = attempt.location();
        match location.scheme_str() {
            Some("http" | "https") => {}
            // `http::Uri` reads `javascript:alert(1)` as an authority with
            // no scheme: the scheme is named from the text.
            Some(scheme) => return Err(BadRedirect::Scheme(scheme.to_ascii_lowercase()).into()),
            None => return Err(BadRedirect::of(&location.to_string()).into()),
        }
        if self.remaining == 0 {
            return Err(TooManyRedirects { max: self.max }.into());
        }
        self.remaining -= 1;
        if !same_origin(attempt.previous(), location) {
            self.left_origin = true;
        }
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
        if self.left_origin {
            for name in self.strip.iter() {
                request.headers_mut().remove(name);
            }
        }
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
