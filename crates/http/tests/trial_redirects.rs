//! Findings of a user trial of the client preset, against real servers on
//! 127.0.0.1: API-key headers across origins, `Location`s the client cannot
//! follow, relative URIs under the address guard, and retried connects.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{Chunks, handler, respond};
use tower::ServiceExt;
use tower_fanout_http::Client;

/// The headers a request below carries: three API keys the client strips
/// on its own, one named by `redirect_strip_header`, and one that goes on.
const SENT: [&str; 5] = [
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-auth-token",
    "x-trace",
];

/// Each request a server saw: its path and which of [`SENT`] it carried.
type Seen = Arc<Mutex<Vec<(String, Vec<&'static str>)>>>;

fn record(seen: &Seen, req: &Request<hyper::body::Incoming>) -> String {
    let path = req.uri().path().to_string();
    let carried = SENT
        .into_iter()
        .filter(|h| req.headers().contains_key(*h))
        .collect();
    seen.lock().unwrap().push((path.clone(), carried));
    path
}

fn redirect(status: u16, location: &str) -> http::Response<Chunks> {
    respond(status)
        .header("location", location)
        .body(Chunks::empty())
        .unwrap()
}

/// A redirect to another origin (another port of 127.0.0.1) took
/// `x-api-key`, `api-key` and `x-goog-api-key` with it (only
/// `Authorization`, `Cookie` and `Proxy-Authorization` were removed). They
/// are removed now, with any header named by `redirect_strip_header`, and
/// stay removed on the hops after it (one within the new origin, then one
/// back to the first); a redirect within the origin keeps them all, and
/// other headers go on everywhere.
#[tokio::test]
async fn a_cross_origin_redirect_strips_api_keys_and_named_headers() {
    let seen: Seen = Arc::default();
    let a_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (s, a) = (seen.clone(), a_addr.clone());
    let b = support::serve(handler(move |req| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            match record(&s, &req).as_str() {
                "/back" => redirect(302, "/b-again"),
                "/b-again" => redirect(302, &format!("http://{}/home", a.lock().unwrap().unwrap())),
                _ => respond(200).body(Chunks::full("b")).unwrap(),
            }
        }
    }))
    .await;
    let s = seen.clone();
    let a = support::serve(handler(move |req| {
        let s = s.clone();
        async move {
            match record(&s, &req).as_str() {
                "/cross" => redirect(302, &format!("http://{b}/landing")),
                "/there-and-back" => redirect(302, &format!("http://{b}/back")),
                "/same" => redirect(307, "/same-landing"),
                _ => respond(200).body(Chunks::full("a")).unwrap(),
            }
        }
    }))
    .await;
    *a_addr.lock().unwrap() = Some(a);
    let client = Client::builder()
        .redirect_strip_header("X-Auth-Token")
        .build()
        .unwrap();
    for path in ["/cross", "/same", "/there-and-back"] {
        let mut req = Request::get(format!("http://{a}{path}"));
        for name in SENT {
            req = req.header(name, "secret");
        }
        let resp = client
            .clone()
            .oneshot(req.body(Full::<Bytes>::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let all = SENT.to_vec();
    let kept = vec!["x-trace"];
    let expected: Vec<(String, Vec<&str>)> = [
        ("/cross", &all),
        ("/landing", &kept),
        ("/same", &all),
        ("/same-landing", &all),
        ("/there-and-back", &all),
        ("/back", &kept),
        ("/b-again", &kept),
        ("/home", &kept),
    ]
    .into_iter()
    .map(|(p, h)| (p.to_string(), h.clone()))
    .collect();
    assert_eq!(*seen.lock().unwrap(), expected);
}

/// `redirect_strip_header` takes a string: one that is no header name fails
/// the build, naming it.
#[test]
fn a_header_to_strip_must_be_a_header_name() {
    for bad in ["x auth", "x-auth:", "", "x-auth\n"] {
        let err = Client::builder()
            .redirect_strip_header(bad)
            .build()
            .unwrap_err();
        assert!(err.is_config(), "{bad:?}: {err}");
        assert!(err.to_string().contains("redirect_strip_header"), "{err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

/// Every 301/302/303/307/308 whose `Location` the client cannot follow fails
/// the call, naming the scheme the `Location` gave, or the `Location` when
/// it is no URI. `javascript:` was named as the scheme `""`, and `file:`,
/// `data:` and malformed `Location`s came back as if the 3xx were the
/// answer, while `ftp:` failed. Not sent anywhere: the server sees only the
/// first request. A 3xx without a `Location`, or one the client does not
/// follow (300), is still the answer, as is any 3xx with redirects off.
#[tokio::test]
async fn a_location_that_cannot_be_followed_fails_naming_it() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = support::serve(handler(move |req| {
        h.fetch_add(1, Ordering::SeqCst);
        async move {
            let location = req.headers().get("x-location").unwrap().clone();
            let status: u16 = req.uri().path()[1..].parse().unwrap();
            let mut resp = respond(status);
            if !location.is_empty() {
                resp = resp.header("location", location);
            }
            resp.body(Chunks::empty()).unwrap()
        }
    }))
    .await;
    let client = Client::builder().build().unwrap();
    let call = |client: &Client, status: u16, location: &str| {
        let req = Request::get(format!("http://{addr}/{status}"))
            .header("x-location", location)
            .body(Full::<Bytes>::default())
            .unwrap();
        client.clone().oneshot(req)
    };
    for (status, location, says) in [
        (
            302,
            "javascript:alert(1)",
            r#"unsupported scheme "javascript""#,
        ),
        (302, "file:///etc/passwd", r#"unsupported scheme "file""#),
        (301, "data:text/plain,hi", r#"unsupported scheme "data""#),
        (307, "FTP://files.test/x", r#"unsupported scheme "ftp""#),
        (303, "http://", r#"not a valid URI: "http://""#),
        (308, "http://[::1", r#"not a valid URI: "http://[::1""#),
        (302, "http://127.0.0.1:70000/", "not a valid URI"),
    ] {
        let before = hits.load(Ordering::SeqCst);
        let err = call(&client, status, location).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(says), "{location}: {text}");
        assert!(text.contains("only http and https"), "{location}: {text}");
        assert_eq!(err.kind_name(), "request", "{location}: {err:?}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            before + 1,
            "{location}: sent once, not retried, nothing followed"
        );
    }
    for (status, location) in [(302, ""), (300, "/elsewhere"), (304, "/elsewhere")] {
        let resp = call(&client, status, location).await.unwrap();
        assert_eq!(resp.status(), status, "{location:?}");
    }
    let off = Client::builder().max_redirects(0).build().unwrap();
    let resp = call(&off, 302, "file:///etc/passwd").await.unwrap();
    assert_eq!(resp.status(), 302, "with redirects off a 3xx is the answer");
}

/// A relative URI is an invalid request with the guard on as with it off.
/// The guard reported it as a refused address ("address guard refused
/// ://: only http and https are allowed"). A scheme other than http and
/// https is still the guard's refusal when it is on.
#[tokio::test]
async fn a_relative_uri_is_an_invalid_request_whether_guarded_or_not() {
    for guard in [false, true] {
        let client = Client::builder().address_guard(guard).build().unwrap();
        for uri in ["/relative", "relative"] {
            let err = client.get(uri).await.unwrap_err();
            assert!(err.is_invalid_request(), "guard {guard}, {uri}: {err:?}");
            assert!(
                err.to_string().contains("the URI must be absolute"),
                "guard {guard}, {uri}: {err}"
            );
        }
        let err = client.get("ftp://example.com/x").await.unwrap_err();
        assert_eq!(err.is_refused_address(), guard, "{err:?}");
        assert_eq!(err.is_invalid_request(), !guard, "{err:?}");
    }
}

/// A failure to connect is retried (3 retries by default), and the error
/// says how many attempts were made: each had its own connect timeout, so
/// a call can take several times `connect_timeout` or `timeout`.
#[tokio::test(start_paused = true)]
async fn a_retried_connect_failure_says_how_many_attempts_were_made() {
    let (addr, _socket) = support::closed_port();
    let client = Client::builder().build().unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(err.to_string().ends_with(" (after 4 attempts)"), "{err}");

    let once = Client::builder().no_retry().build().unwrap();
    let err = once.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(!err.to_string().contains("attempts"), "{err}");
}
