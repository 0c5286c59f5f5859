//! A store's connection belongs to the Tokio runtime it first ran on: used
//! from another one after that runtime is gone, it finds the connection
//! closed and dials again on the new runtime.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use support::{RedisServer, echo_unit};
use tower::{Layer, ServiceExt};
use tower_fanout_redis::{RedisConcurrencyLimitLayer, RedisStore};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Its first call there failed, as an outage ("redis limit unavailable",
/// with the outage warning and a probe interval of refusals behind it),
/// until a decision that finds its connection closed was asked again on a
/// new one.
#[test]
fn a_store_that_outlived_its_runtime_dials_again_on_the_next() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let svc = RedisConcurrencyLimitLayer::builder(store, "runtimes", 4)
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo_unit());

    // As one `#[tokio::test]` after another, or a sync wrapper making a
    // runtime per call: the connection's driver dies with each runtime.
    // (So do the releases spawned as each call ends: those permits stay
    // taken until their leases end, as the crate docs say.)
    for round in 0..3 {
        let answer = runtime().block_on(svc.clone().oneshot(()));
        assert!(answer.is_ok(), "round {round}: {:?}", answer.unwrap_err());
    }
}
