//! What a tower user expects of every public type, checked at compile time:
//! layers, handles and the store are `Clone + Debug + Send + Sync`, the
//! services are so when their inner service is (so a stack boxes into
//! `BoxCloneSyncService`, as axum and tonic users box their clients), their
//! futures are `Send`, and `Error` is `Error + Send + Sync + 'static`.
//! Nothing here needs a Redis: a store connects on its first decision.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_redis::concurrency::RedisConcurrencyLimitHandle;
use tower_fanout_redis::rate::RedisRateLimitHandle;
use tower_fanout_redis::{
    Error, RedisConcurrencyLimit, RedisConcurrencyLimitLayer, RedisRateLimit, RedisRateLimitLayer,
    RedisStore, SingleKey,
};

fn store() -> RedisStore {
    RedisStore::open("redis://127.0.0.1:1/").unwrap()
}

fn inner() -> impl Service<u32, Response = u32, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ Debug
+ 'static {
    service_fn(|n: u32| async move { Ok(n) })
}

#[test]
fn values_are_clone_debug_send_sync() {
    fn value<T: Clone + Debug + Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    value::<RedisStore>();
    value::<RedisConcurrencyLimitLayer>();
    value::<RedisRateLimitLayer>();
    value::<RedisConcurrencyLimitHandle>();
    value::<RedisRateLimitHandle>();
    error::<Error>();
}

/// `RedisConcurrencyLimit` kept its acquire future as a `dyn Future + Send`,
/// which made the service `!Sync`: it could not go into a
/// `BoxCloneSyncService` (nor be shared by reference across threads),
/// unlike tower's `ConcurrencyLimit` and every other layer here.
#[test]
fn services_are_clone_send_sync_when_the_inner_service_is() {
    fn check<S>()
    where
        S: Service<u32> + Clone + Send + Sync + 'static,
    {
        fn all<T: Clone + Send + Sync>() {}
        all::<RedisConcurrencyLimit<S>>();
        all::<RedisRateLimit<S, tower_fanout_redis::rate::UnitCost, SingleKey>>();
    }
    fn with<S: Service<u32> + Clone + Send + Sync + 'static>(_: &S) {
        check::<S>();
    }
    with(&inner());
}

/// Both layers, stacked over a `service_fn`, box into a
/// `BoxCloneSyncService` and answer from a spawned task (here from their
/// local fail-open share: nothing listens on the store's port).
#[tokio::test]
async fn a_stack_boxes_into_a_clone_sync_service_and_spawns() {
    let stack = ServiceBuilder::new()
        .layer(
            RedisRateLimitLayer::builder(store(), "api-traits", 100, Duration::from_secs(1))
                .fail_open(1.0)
                .build()
                .unwrap(),
        )
        .layer(
            RedisConcurrencyLimitLayer::builder(store(), "api-traits", 4)
                .fail_open(1.0)
                .build()
                .unwrap(),
        )
        .service(inner());
    let boxed: BoxCloneSyncService<u32, u32, BoxError> = BoxCloneSyncService::new(stack);
    let answer = tokio::time::timeout(Duration::from_secs(10), tokio::spawn(boxed.oneshot(7)))
        .await
        .expect("no answer from the local share within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(answer, 7);
}
