//! The redirect step of the client preset: a cap on hops, credentials
//! stripped on a cross-origin hop, and http/https targets only.
//!
//! It follows tower-http's `FollowRedirect` rule for rule (301/302 turn a
//! POST into a GET without a body, 303 turns anything but HEAD into a GET
//! without a body, 307/308 resend the request as it was; `Location` is
//! resolved against the current URI as tower-http resolves it;
//! `Authorization`, `Cookie` and `Proxy-Authorization` are removed from a
//! hop that leaves the origin, as tower-http's `FilterCredentials` does, and
//! stay removed on later hops). It runs inside the retry loop, on the copy of
//! the request the loop keeps anyway, so a request that is not redirected
//! costs no second copy of its headers and no response extension: tower-http's
//! layer copies both on every request. A response reached through redirects
//! carries its URI as tower-http's [`RequestUri`] extension.

use std::fmt;

use http::header::{self, HeaderName};
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode, Uri};
use tower_http::follow_redirect::RequestUri;

use crate::BoxError;

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
        write!(f, "more than {} redirects", self.max)
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

/// Headers a cross-origin hop does not carry (tower-http's `FilterCredentials` list).
const CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// Headers that describe a body, dropped when a hop drops the body.
const PAYLOAD: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
];

/// What the retry loop does after each answer, before deciding on a retry.
pub(crate) trait Hops<B, ResB> {
    /// Whether a request may be followed elsewhere: if so, the loop keeps its
    /// copy of the request to the end.
    fn enabled(&self) -> bool;

    /// After `resp` to `current`: the next hop's request, `None` to keep the
    /// answer, or an error (too many hops, a bad target).
    fn follow(
        &mut self,
        current: &Request<B>,
        resp: &mut Response<ResB>,
    ) -> Result<Option<Request<B>>, BoxError>;

    /// A retry starts the chain again from the original request.
    fn restart(&mut self);
}

/// No redirects: answers are kept as they are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoHops;

impl<B, ResB> Hops<B, ResB> for NoHops {
    fn enabled(&self) -> bool {
        false
    }

    fn follow(
        &mut self,
        _current: &Request<B>,
        _resp: &mut Response<ResB>,
    ) -> Result<Option<Request<B>>, BoxError> {
        Ok(None)
    }

    fn restart(&mut self) {}
}

/// Follows redirects up to a cap.
#[derive(Clone, Debug)]
pub(crate) struct Redirects {
    max: usize,
    remaining: usize,
    /// Whether this chain has left the first request.
    hopped: bool,
}

impl Redirects {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            remaining: max,
            hopped: false,
        }
    }
}

/// `Location` resolved against `base`, as tower-http resolves it.
fn resolve(location: &str, base: &Uri) -> Option<Uri> {
    let base = url::Url::parse(&base.to_string()).ok()?;
    let resolved = base.join(location).ok()?;
    Uri::try_from(String::from(resolved)).ok()
}

/// Same scheme, host and port (tower-http's rule).
fn same_origin(a: &Uri, b: &Uri) -> bool {
    let default_port = match (a.scheme(), b.scheme()) {
        (Some(l), Some(r)) if l == r => {
            if l == &Scheme::HTTP {
                80
            } else if l == &Scheme::HTTPS {
                443
            } else {
                return false;
            }
        }
        _ => return false,
    };
    match (a.host(), b.host()) {
        (Some(l), Some(r)) if l == r => {}
        _ => return false,
    }
    a.port_u16().unwrap_or(default_port) == b.port_u16().unwrap_or(default_port)
}

impl<B: Clone + Default, ResB> Hops<B, ResB> for Redirects {
    fn enabled(&self) -> bool {
        self.max > 0
    }

    fn follow(
        &mut self,
        current: &Request<B>,
        resp: &mut Response<ResB>,
    ) -> Result<Option<Request<B>>, BoxError> {
        let keep = |resp: &mut Response<ResB>, hopped: bool| {
            if hopped {
                resp.extensions_mut()
                    .insert(RequestUri(current.uri().clone()));
            }
            Ok(None)
        };
        let method = current.method();
        let (method, drop_body) = match resp.status() {
            // User agents may turn a POST into a GET (RFC 9110 15.4.2, 15.4.3).
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND if method == Method::POST => {
                (Method::GET, true)
            }
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND => (method.clone(), false),
            // A GET or a HEAD (RFC 9110 15.4.4).
            StatusCode::SEE_OTHER if method == Method::HEAD => (Method::HEAD, true),
            StatusCode::SEE_OTHER => (Method::GET, true),
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
                (method.clone(), false)
            }
            _ => return keep(resp, self.hopped),
        };
        let Some(location) = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| resolve(v, current.uri()))
        else {
            return keep(resp, self.hopped);
        };
        if self.max == 0 {
            return keep(resp, self.hopped);
        }
        match location.scheme_str() {
            Some("http" | "https") => {}
            other => return Err(BadRedirectScheme(other.unwrap_or("").to_string()).into()),
        }
        if self.remaining == 0 {
            return Err(TooManyRedirects { max: self.max }.into());
        }
        self.remaining -= 1;
        let cross_origin = !same_origin(current.uri(), &location);
        let body = if drop_body {
            B::default()
        } else {
            current.body().clone()
        };
        let mut next = Request::new(body);
        *next.method_mut() = method;
        *next.version_mut() = current.version();
        let headers = next.headers_mut();
        *headers = current.headers().clone();
        if drop_body {
            for name in &PAYLOAD {
                headers.remove(name);
            }
        }
        if cross_origin {
            for name in &CREDENTIALS {
                headers.remove(name);
            }
        }
        *next.uri_mut() = location;
        self.hopped = true;
        Ok(Some(next))
    }

    fn restart(&mut self) {
        self.remaining = self.max;
        self.hopped = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(status: u16, location: &str) -> Response<()> {
        Response::builder()
            .status(status)
            .header("location", location)
            .body(())
            .unwrap()
    }

    fn post() -> Request<String> {
        Request::post("https://a.test/form")
            .header("authorization", "Bearer x")
            .header("cookie", "s=1")
            .header("content-type", "text/plain")
            .body("hi".to_string())
            .unwrap()
    }

    #[test]
    fn methods_and_bodies_follow_tower_http() {
        let mut r = Redirects::new(5);
        let next = r
            .follow(&post(), &mut answer(302, "/next"))
            .unwrap()
            .unwrap();
        assert_eq!(next.method(), Method::GET);
        assert_eq!(next.body(), "");
        assert!(!next.headers().contains_key("content-type"));
        assert_eq!(next.uri(), "https://a.test/next");
        assert!(next.headers().contains_key("authorization"), "same origin");

        let next = r
            .follow(&post(), &mut answer(307, "/again"))
            .unwrap()
            .unwrap();
        assert_eq!(next.method(), Method::POST);
        assert_eq!(next.body(), "hi");
        assert!(next.headers().contains_key("content-type"));

        let head = Request::head("https://a.test/")
            .body(String::new())
            .unwrap();
        let next = r.follow(&head, &mut answer(303, "/see")).unwrap().unwrap();
        assert_eq!(next.method(), Method::HEAD);

        let next = r
            .follow(&post(), &mut answer(308, "https://b.test/x?y=1"))
            .unwrap()
            .unwrap();
        assert_eq!(next.uri(), "https://b.test/x?y=1");
        assert!(!next.headers().contains_key("authorization"));
        assert!(!next.headers().contains_key("cookie"));
        assert_eq!(next.body(), "hi");
    }

    #[test]
    fn answers_that_are_not_redirects_are_kept_and_marked_after_a_hop() {
        let mut r = Redirects::new(1);
        let mut ok = Response::new(());
        assert!(r.follow(&post(), &mut ok).unwrap().is_none());
        assert!(ok.extensions().get::<RequestUri>().is_none());
        // Without a usable Location, a 3xx is the answer.
        let mut no_location = Response::builder().status(302).body(()).unwrap();
        assert!(r.follow(&post(), &mut no_location).unwrap().is_none());

        let next = r
            .follow(&post(), &mut answer(301, "/moved"))
            .unwrap()
            .unwrap();
        let mut ok = Response::new(());
        assert!(r.follow(&next, &mut ok).unwrap().is_none());
        assert_eq!(
            ok.extensions().get::<RequestUri>().unwrap().0,
            "https://a.test/moved"
        );
    }

    #[test]
    fn hops_are_capped_schemes_checked_and_zero_turns_it_off() {
        let mut r = Redirects::new(1);
        assert!(r.follow(&post(), &mut answer(307, "/1")).unwrap().is_some());
        let err = r.follow(&post(), &mut answer(307, "/2")).unwrap_err();
        assert_eq!(err.downcast_ref::<TooManyRedirects>().unwrap().max(), 1);
        Hops::<String, ()>::restart(&mut r);
        assert!(r.follow(&post(), &mut answer(307, "/3")).unwrap().is_some());

        let mut r = Redirects::new(3);
        let err = r
            .follow(&post(), &mut answer(302, "ftp://files.test/secret"))
            .unwrap_err();
        assert!(err.is::<BadRedirectScheme>(), "{err}");

        let mut off = Redirects::new(0);
        assert!(!Hops::<String, ()>::enabled(&off));
        let kept = Hops::<String, ()>::follow(&mut off, &post(), &mut answer(302, "/x"));
        assert!(kept.unwrap().is_none());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert!(same_origin(
            &u("https://a.test/1"),
            &u("https://a.test:443/2")
        ));
        assert!(!same_origin(&u("https://a.test/"), &u("http://a.test/")));
        assert!(!same_origin(
            &u("https://a.test/"),
            &u("https://a.test:8443/")
        ));
        assert!(!same_origin(&u("https://a.test/"), &u("https://b.test/")));
    }
}
