//! Bad settings fail when the layer is built, saying what to fix.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use tower_fanout_redis::{Error, RedisConcurrencyLimitLayer, RedisRateLimitLayer, RedisStore};

fn store() -> RedisStore {
    // No connection is made while building.
    RedisStore::open("redis://127.0.0.1:1/").unwrap()
}

fn config_message(err: Error) -> String {
    assert!(err.is_config(), "{err:?}");
    assert!(!err.is_unavailable());
    err.to_string()
}

#[test]
fn the_outage_choice_must_be_stated() {
    let err = RedisRateLimitLayer::builder(store(), "a", 10, Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(config_message(err).contains(".fail_closed()"));
    let err = RedisConcurrencyLimitLayer::builder(store(), "a", 10)
        .build()
        .unwrap_err();
    assert!(config_message(err).contains(".fail_open(share)"));
}

#[test]
fn rate_settings_are_checked() {
    let rate = |rate, period, burst| {
        RedisRateLimitLayer::builder(store(), "a", rate, period)
            .burst(burst)
            .fail_closed()
            .build()
    };
    assert!(config_message(rate(0, Duration::from_secs(1), 1).unwrap_err()).contains("rate"));
    assert!(config_message(rate(1, Duration::ZERO, 1).unwrap_err()).contains("period"));
    assert!(config_message(rate(1, Duration::from_secs(1), 0).unwrap_err()).contains("burst"));
    assert!(
        config_message(rate(1, Duration::from_secs(3600 * 24 * 365), 100).unwrap_err())
            .contains("30 years")
    );
    // The longest allowed: period × burst / rate of exactly 10^15 µs (the
    // times the script handles stay exact in a Lua double); 1 µs more is refused.
    let longest = Duration::from_secs(1_000_000_000);
    assert!(rate(1, longest, 1).is_ok());
    assert!(rate(2, longest * 2, 1).is_ok());
    assert!(
        config_message(rate(1, longest + Duration::from_micros(1), 1).unwrap_err())
            .contains("30 years")
    );
    assert!(rate(1, Duration::from_secs(1), 1).is_ok());
}

#[test]
fn fail_open_share_is_checked() {
    for share in [0.0, -0.5, 1.5, f64::NAN] {
        let err = RedisRateLimitLayer::builder(store(), "a", 10, Duration::from_secs(1))
            .fail_open(share)
            .build()
            .unwrap_err();
        assert!(config_message(err).contains("share"));
        let err = RedisConcurrencyLimitLayer::builder(store(), "a", 10)
            .fail_open(share)
            .build()
            .unwrap_err();
        assert!(config_message(err).contains("share"), "{share}");
    }
    assert!(
        RedisConcurrencyLimitLayer::builder(store(), "a", 10)
            .fail_open(1.0)
            .build()
            .is_ok()
    );
}

#[test]
fn names_must_keep_the_hash_tag_intact() {
    let err = RedisRateLimitLayer::builder(store(), "a{b}", 10, Duration::from_secs(1))
        .fail_closed()
        .build()
        .unwrap_err();
    assert!(config_message(err).contains("hash tag"));
    let err = RedisConcurrencyLimitLayer::builder(store(), "", 10)
        .fail_closed()
        .build()
        .unwrap_err();
    assert!(config_message(err).contains("empty"));
}

#[test]
fn concurrency_settings_are_checked() {
    let err = RedisConcurrencyLimitLayer::builder(store(), "a", 0)
        .fail_closed()
        .build()
        .unwrap_err();
    assert!(config_message(err).contains("at least 1"));
    // The default timeout is 250 ms: a lease must be at least 750 ms.
    let err = RedisConcurrencyLimitLayer::builder(store(), "a", 1)
        .lease(Duration::from_millis(500))
        .fail_closed()
        .build()
        .unwrap_err();
    assert!(config_message(err).contains("lease"));
    let lease = |lease| {
        RedisConcurrencyLimitLayer::builder(store(), "a", 1)
            .lease(lease)
            .fail_closed()
            .build()
    };
    assert!(lease(Duration::from_millis(750)).is_ok());
    assert!(config_message(lease(Duration::from_micros(749_999)).unwrap_err()).contains("3 ×"));
    let err = RedisConcurrencyLimitLayer::builder(store(), "a", 1)
        .retry_interval(Duration::ZERO)
        .fail_closed()
        .build()
        .unwrap_err();
    assert!(config_message(err).contains("retry interval"));
}

#[test]
fn layers_services_and_errors_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn clone<T: Clone>() {}
    send_sync::<Error>();
    send_sync::<RedisStore>();
    send_sync::<RedisRateLimitLayer>();
    send_sync::<RedisConcurrencyLimitLayer>();
    clone::<RedisRateLimitLayer>();
    clone::<RedisConcurrencyLimitLayer>();
    send_sync::<
        tower_fanout_redis::RedisRateLimit<
            (),
            tower_fanout_redis::rate::UnitCost,
            tower_fanout_redis::SingleKey,
        >,
    >();
    fn send<T: Send>() {}
    send::<tower_fanout_redis::RedisConcurrencyLimit<()>>();
    send::<tower_fanout_redis::rate::ResponseFuture<()>>();
}

#[test]
fn a_tiny_fail_open_share_does_not_panic() {
    // The local bucket's period is the shared period over the share: a
    // share this small overflows a `Duration`, which must be a config error,
    // not a panic in `build`.
    let built = std::panic::catch_unwind(|| {
        RedisRateLimitLayer::builder(store(), "a", 10, Duration::from_secs(1))
            .fail_open(1e-300)
            .build()
    });
    let err = built.expect("build panicked").unwrap_err();
    assert!(config_message(err).contains("share"));
    // A small but workable share still builds.
    assert!(
        RedisRateLimitLayer::builder(store(), "a", 10, Duration::from_secs(1))
            .fail_open(1e-6)
            .build()
            .is_ok()
    );
}

#[test]
fn leases_redis_cannot_hold_are_refused() {
    let store = || {
        RedisStore::builder("redis://127.0.0.1:1/")
            .timeout(Duration::from_micros(100))
            .build()
            .unwrap()
    };
    // Under a millisecond the lease rounded to 0 ms: the script then
    // expired the holders' key at once and every caller was admitted.
    let err = RedisConcurrencyLimitLayer::builder(store(), "a", 1)
        .lease(Duration::from_micros(900))
        .fail_closed()
        .build()
        .unwrap_err();
    assert!(config_message(err).contains("lease"));
    // Past what Redis's PEXPIRE (and Lua's doubles) take, every acquire
    // failed with a Redis error, as if Redis were down.
    let err = RedisConcurrencyLimitLayer::builder(store(), "a", 1)
        .lease(Duration::MAX)
        .fail_closed()
        .build()
        .unwrap_err();
    assert!(config_message(err).contains("lease"));
    assert!(
        RedisConcurrencyLimitLayer::builder(store(), "a", 1)
            .lease(Duration::from_millis(1))
            .fail_closed()
            .build()
            .is_ok()
    );
    // The longest: 10^15 ms; a millisecond more is refused.
    let longest = Duration::from_millis(1_000_000_000_000_000);
    for (lease, ok) in [(longest, true), (longest + Duration::from_millis(1), false)] {
        let built = RedisConcurrencyLimitLayer::builder(store(), "a", 1)
            .lease(lease)
            .fail_closed()
            .build();
        assert_eq!(built.is_ok(), ok, "{lease:?}");
    }
}

/// An error and its sources, each read once: a config error's message was
/// both in its `Display` and its `source()`, so an error-chain printer
/// (anyhow's `{:#}`, a log's "caused by") said it twice.
#[test]
fn a_config_message_appears_once_in_the_error_chain() {
    let errors = [
        RedisStore::open("not a url").unwrap_err(),
        RedisConcurrencyLimitLayer::builder(store(), "a", 0)
            .fail_closed()
            .build()
            .unwrap_err(),
        RedisRateLimitLayer::builder(store(), "a", 10, Duration::from_secs(1))
            .build()
            .unwrap_err(),
    ];
    for err in errors {
        let chain: Vec<String> =
            std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        let message = err.to_string();
        let message = message.trim_start_matches("invalid configuration: ");
        let said = chain.iter().filter(|text| text.contains(message)).count();
        assert_eq!(said, 1, "{chain:?}");
    }
}
