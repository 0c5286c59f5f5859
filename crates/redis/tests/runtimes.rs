//! A store belongs to the Tokio runtime its connection first ran on: used
//! from another one after that runtime is gone, its first call fails, and
//! the error says why a healthy Redis looks unreachable.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use support::{RedisServer, echo_unit};
use tower::{Layer, ServiceExt};
use tower_fanout_redis::{Error, RedisConcurrencyLimitLayer, RedisStore};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_store_that_outlived_its_runtime_says_so() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let svc = RedisConcurrencyLimitLayer::builder(store, "runtimes", 4)
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo_unit());

    // As one `#[tokio::test]` after another, or a sync wrapper making a
    // runtime per call: the connection's driver dies with the first one.
    runtime().block_on(svc.clone().oneshot(())).unwrap();
    let err = runtime().block_on(svc.oneshot(())).unwrap_err();
    let err = err.downcast_ref::<Error>().unwrap();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        err.to_string().contains("outlived the Tokio runtime"),
        "{err}"
    );
}
