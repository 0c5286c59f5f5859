//! Settings a client cannot work with are refused when it is built, with a
//! message naming the setting, once; and a built client shows its settings.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_http::Client;

/// A zero timeout was accepted and then failed every request ("no complete
/// response within 0 ms"); a zero request-body cap refused every body at
/// request time although the builder's docs call a zero body cap an error.
#[test]
fn zero_timeouts_and_body_caps_are_refused_when_built() {
    for (what, builder) in [
        ("timeout", Client::builder().timeout(Some(Duration::ZERO))),
        (
            "connect_timeout",
            Client::builder().connect_timeout(Some(Duration::ZERO)),
        ),
        ("deadline", Client::builder().deadline(Some(Duration::ZERO))),
        (
            "host_timeout for \"slow.example\"",
            Client::builder().host_timeout("Slow.Example", Some(Duration::ZERO)),
        ),
        ("max_request_body", Client::builder().max_request_body(0)),
        ("max_response_body", Client::builder().max_response_body(0)),
    ] {
        let err = builder.build().expect_err(what);
        assert!(err.is_config(), "{what}: {err}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    // `None` is the way to say "no limit", and stays accepted.
    Client::builder()
        .timeout(None)
        .connect_timeout(None)
        .deadline(None)
        .host_timeout("slow.example", None)
        .build()
        .unwrap();
}

/// A bad per-host limit read "invalid configuration: invalid configuration:
/// keyed limit for ...": the client's kind above core's own message.
#[test]
fn a_bad_host_limit_says_invalid_configuration_once() {
    let err = Client::builder()
        .host_limit("a.test", KeyLimit::new().concurrency(0))
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(text.matches("invalid configuration").count(), 1, "{text}");
    assert!(text.contains("a.test"), "{text}");
}

/// A client's `Debug` says whether the address guard is on: what an
/// operator checks first when a URL an agent supplied is refused, or is not.
#[test]
fn debug_shows_whether_the_address_guard_is_on() {
    for on in [true, false] {
        let client = Client::builder().address_guard(on).build().unwrap();
        let shown = format!("{client:?}");
        assert!(shown.contains(&format!("address_guard: {on}")), "{shown}");
    }
}
