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

/// A host named as a URL, with a path or with credentials, or named twice,
/// was taken and never matched a request (`"https://api.stripe.com"`'s limit
/// of 5 never applied, its calls ran at the default): refused when built.
#[test]
fn a_host_override_no_request_can_match_is_refused() {
    let limit = || KeyLimit::new().concurrency(5);
    let second = Some(Duration::from_secs(1));
    for (what, builder, says) in [
        (
            "a URL",
            Client::builder().host_limit("https://api.stripe.com", limit()),
            "not a URI authority",
        ),
        (
            "a path",
            Client::builder().host_timeout("api.stripe.com/v1", second),
            "not a URI authority",
        ),
        (
            "credentials",
            Client::builder().host_limit("key@api.stripe.com", limit()),
            "user:password@",
        ),
        (
            "a host limit twice",
            Client::builder()
                .host_limit("api.stripe.com", limit())
                .host_limit("API.Stripe.com.", limit()),
            "\"api.stripe.com\" given twice",
        ),
        (
            "a host timeout twice",
            Client::builder()
                .host_timeout("api.stripe.com", second)
                .host_timeout("API.stripe.com", None),
            "\"api.stripe.com\" given twice",
        ),
    ] {
        let err = builder.build().expect_err(what);
        assert!(err.is_config(), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
        let text = err.to_string();
        assert_eq!(text.matches("invalid configuration").count(), 1, "{text}");
    }
    // Written in another case or with the trailing dot, a host is still
    // the one requests are counted under.
    let client = Client::builder()
        .host_limit("API.Stripe.com.", limit())
        .build()
        .unwrap();
    assert_eq!(
        client.host_limits().max_in_flight("api.stripe.com"),
        Some(5)
    );
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

/// A builder is `Clone` and `Default`: two clients that differ in one
/// setting (the address guard, say) start from one chain of settings.
#[test]
fn a_builder_clones_into_a_second_client() {
    let base = tower_fanout_http::ClientBuilder::default()
        .host_limit("api.example.com", KeyLimit::new().concurrency(3));
    let guarded = base.clone().address_guard(true).build().unwrap();
    let open = base.build().unwrap();
    assert!(
        format!("{guarded:?}").contains("address_guard: true"),
        "{guarded:?}"
    );
    assert!(
        format!("{open:?}").contains("address_guard: false"),
        "{open:?}"
    );
    for client in [&guarded, &open] {
        assert_eq!(
            client.host_limits().max_in_flight("api.example.com"),
            Some(3)
        );
    }
}
