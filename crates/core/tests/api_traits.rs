//! The common traits a tower user expects of every public type, checked at
//! compile time (C-COMMON-TRAITS, C-DEBUG, C-SEND-SYNC): layers and handles
//! are `Clone + Debug + Send + Sync`, services are so when their parts are,
//! response futures are `Send` whenever the inner future and the request
//! are (so a call goes into `tokio::spawn` and a stack into
//! `BoxCloneSyncService`), and refusals are `Error + Send + Sync + 'static`.
//!
//! The request here is `Send` but neither `Sync` nor `Clone`, like a request
//! with hyper's or http-body-util's unsync bodies: no layer may ask more of
//! it than it needs.
// The features `[[test]] required-features` names for this file in
// Cargo.toml: with `full`, the file compiled to nothing under them.
#![cfg(all(
    feature = "adaptive",
    feature = "backpressure",
    feature = "concurrency",
    feature = "fan-out",
    feature = "keyed",
    feature = "rate"
))]
#![allow(clippy::unwrap_used)]

mod support;
use support::at_once;

use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Ready;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::controller::{Change, RttEstimate, Sample};
use tower_fanout_core::adaptive::{
    AdaptiveLimit, AdaptiveLimitHandle, AdaptiveLimitLayer, AimdController, GradientController,
    VegasController, WindowedController,
};
use tower_fanout_core::backpressure::{Backpressure, BackpressureHandle, BackpressureLayer};
use tower_fanout_core::classify::{HttpClassify, Outcome};
use tower_fanout_core::concurrency::{
    ConcurrencyLimit, ConcurrencyLimitHandle, ConcurrencyLimitLayer,
};
use tower_fanout_core::error::{
    Closed, ConfigError, CostExceedsBurst, NoRuntime, NotReady, Overloaded, QueueFull, RateLimited,
    ServicePanicked,
};
use tower_fanout_core::fan_out::{Batch, FanOut, ItemResult, Progress, Summary, fan_out};
use tower_fanout_core::keyed::{
    AuthorityKey, KeyLimit, KeyedLimit, KeyedLimitHandle, KeyedLimitLayer, TooManyKeys,
};
use tower_fanout_core::rate::{RateLimit, RateLimitHandle, RateLimitLayer, UnitCost};

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}
fn assert_clone<T: Clone>() {}
fn assert_clone_of<T: Clone>(_: &T) {}
fn assert_debug<T: Debug>() {}
fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
fn assert_layer<L: Clone + Debug + Send + Sync + 'static>(_: &L) {}

/// A body that is `Send` but neither `Sync` nor `Clone`.
#[derive(Debug, Default)]
struct UnsyncBody(Cell<u32>);

type Req = http::Request<UnsyncBody>;

fn request() -> Req {
    http::Request::get("https://api.example.com/")
        .body(UnsyncBody::default())
        .unwrap()
}

/// A client-like inner service: `Clone + Send + Sync`, a `Send` future.
fn client()
-> impl Service<Req, Response = http::Response<()>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ Debug
+ 'static {
    service_fn(|req: Req| async move {
        req.body().0.set(1);
        Ok(http::Response::new(()))
    })
}

/// What `tokio::spawn`, `BoxCloneService` and `BoxCloneSyncService` ask of a
/// stack, checked on the value.
fn assert_boxable<S>(svc: &S)
where
    S: Service<Req> + Clone + Send + Sync + Debug + 'static,
    S::Future: Send + 'static,
{
    let _ = svc;
}

type Boxed = BoxCloneSyncService<Req, http::Response<()>, BoxError>;

#[test]
fn refusals_are_small_comparable_errors() {
    fn refusal<T: std::error::Error + Send + Sync + 'static + Clone + PartialEq + Debug>() {}
    refusal::<Overloaded>();
    refusal::<RateLimited>();
    refusal::<CostExceedsBurst>();
    refusal::<QueueFull>();
    refusal::<Closed>();
    refusal::<NotReady>();
    refusal::<NoRuntime>();
    refusal::<ServicePanicked>();
    refusal::<ConfigError>();
    refusal::<TooManyKeys>();
    assert_error::<ConfigError>();
}

#[test]
fn handles_and_config_values_are_clone_debug_send_sync() {
    fn value<T: Clone + Debug + Send + Sync + 'static>() {}
    value::<ConcurrencyLimitHandle>();
    value::<RateLimitHandle>();
    value::<BackpressureHandle>();
    value::<AdaptiveLimitHandle>();
    value::<KeyedLimitHandle<String>>();
    value::<KeyLimit>();
    value::<AuthorityKey>();
    value::<UnitCost>();
    value::<HttpClassify>();
    value::<Outcome>();
    value::<Sample>();
    value::<Change>();
    value::<RttEstimate>();
    value::<AimdController>();
    value::<GradientController>();
    value::<VegasController>();
    value::<WindowedController>();
    value::<Progress>();
    value::<Summary>();
    assert_debug::<ItemResult<u32>>();
    assert_debug::<Batch<u32>>();
    assert_send::<Batch<u32>>();
    assert_sync::<Batch<u32>>();
}

#[test]
fn builders_are_debug_and_send() {
    fn builder<T: Debug + Send>(_: &T) {}
    builder(&RateLimitLayer::builder(1, Duration::from_secs(1)));
    builder(&RateLimitLayer::builder(1, Duration::from_secs(1)).cost(|_: &Req| 1));
    builder(&KeyedLimitLayer::builder(KeyLimit::new()));
    builder(&KeyedLimitLayer::<_, u8>::builder_with_key(
        |_: &u32| 0u8,
        KeyLimit::new(),
    ));
    // A keyed builder is `Clone` too, as the others are: two layers that
    // differ in one setting start from one.
    assert_clone_of(&KeyedLimitLayer::builder(KeyLimit::new()));
    assert_clone_of(&KeyedLimitLayer::<_, u8>::builder_with_key(
        |_: &u32| 0u8,
        KeyLimit::new(),
    ));
    builder(&AimdController::builder());
    builder(&GradientController::builder());
    builder(&VegasController::builder());
    builder(&WindowedController::builder());
    let batch: FanOut<_, _> = fan_out(client(), std::iter::empty::<Req>());
    builder(&batch);
    // Keyed, it holds requests set aside: still `Send`, of a request that
    // is not `Sync`, and so is its stream.
    let keyed = batch
        .per_key(|req: &Req| req.uri().host().map(str::to_owned), 2)
        .unwrap();
    builder(&keyed);
    let stream = keyed.stream();
    builder(&stream);
}

/// Every layer, with the options a user passes as closures (a cost, a key,
/// a classifier), is a `Clone + Debug + Send + Sync` value, as tower's are.
#[test]
fn layers_are_clone_debug_send_sync_whatever_their_closures() {
    let by_tenant = |req: &Req| req.headers().len();
    let classify =
        |result: Result<&http::Response<()>, &(dyn std::error::Error + 'static)>| match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
    assert_layer(&ConcurrencyLimitLayer::new(1).unwrap());
    assert_layer(&RateLimitLayer::new(1, Duration::from_secs(1)).unwrap());
    assert_layer(
        &RateLimitLayer::builder(1, Duration::from_secs(1))
            .cost(|_: &Req| 1)
            .build()
            .unwrap(),
    );
    assert_layer(&BackpressureLayer::<Req>::new(1).unwrap());
    assert_layer(&AdaptiveLimitLayer::default());
    assert_layer(&AdaptiveLimitLayer::default().classify(classify));
    assert_layer(&KeyedLimitLayer::builder(KeyLimit::new()).build().unwrap());
    assert_layer(
        &KeyedLimitLayer::<_, usize>::builder_with_key(by_tenant, KeyLimit::new().concurrency(1))
            .build()
            .unwrap(),
    );
}

/// Each service over a `Clone + Send + Sync + Debug` inner service is all of
/// those too, and its response future is `Send` for a request that is
/// neither `Sync` nor `Clone`.
#[tokio::test(start_paused = true)]
async fn every_stack_spawns_and_boxes_over_an_unsync_request() {
    let classify =
        |result: Result<&http::Response<()>, &(dyn std::error::Error + 'static)>| match result {
            Ok(r) => HttpClassify::status(r.status()),
            Err(e) => HttpClassify::error(e),
        };
    let concurrency = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(2).unwrap())
        .service(client());
    let rate = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(10, Duration::from_secs(1))
                .cost(|_: &Req| 2)
                .build()
                .unwrap(),
        )
        .service(client());
    let backpressure = ServiceBuilder::new()
        .layer(BackpressureLayer::new(2).unwrap())
        .service(client());
    let adaptive = ServiceBuilder::new()
        .layer(AdaptiveLimitLayer::default().classify(classify))
        .service(client());
    let keyed = ServiceBuilder::new()
        .layer(
            KeyedLimitLayer::builder(
                KeyLimit::new()
                    .concurrency(2)
                    .rate(10, Duration::from_secs(1)),
            )
            .build()
            .unwrap(),
        )
        .service(client());
    // All of them at once, in the recommended order.
    let stack = ServiceBuilder::new()
        .layer(BackpressureLayer::new(4).unwrap())
        .layer(RateLimitLayer::new(100, Duration::from_secs(1)).unwrap())
        .layer(
            KeyedLimitLayer::builder(KeyLimit::new().concurrency(2))
                .build()
                .unwrap(),
        )
        .layer(AdaptiveLimitLayer::default())
        .layer(ConcurrencyLimitLayer::new(4).unwrap())
        .service(client());
    assert_boxable(&concurrency);
    assert_boxable(&rate);
    assert_boxable(&backpressure);
    assert_boxable(&adaptive);
    assert_boxable(&keyed);
    assert_boxable(&stack);

    let boxed: Vec<Boxed> = vec![
        BoxCloneSyncService::new(concurrency),
        BoxCloneSyncService::new(rate),
        BoxCloneSyncService::new(backpressure),
        BoxCloneSyncService::new(adaptive),
        BoxCloneSyncService::new(keyed),
        BoxCloneSyncService::new(stack),
    ];
    for svc in boxed {
        let response = at_once("a boxed stack", tokio::spawn(svc.oneshot(request())))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// The services' and futures' `Debug` does not ask the classifier, the
/// cost or the key function to be `Debug` (closures never are), and a
/// response future is `Debug` when its inner future is, as tower's are.
#[test]
fn debug_does_not_require_closures_to_be_debug() {
    type Inner = tower::util::ServiceFn<fn(Req) -> Ready<Result<http::Response<()>, Infallible>>>;
    fn check<K>(_: K)
    where
        K: tower_fanout_core::classify::Classify<http::Response<()>>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        assert_debug::<AdaptiveLimitLayer<K>>();
        assert_debug::<AdaptiveLimit<Inner, K>>();
        assert_debug::<tower_fanout_core::adaptive::ResponseFuture<Ready<Result<(), Infallible>>, K>>(
        );
    }
    let closure =
        |_: Result<&http::Response<()>, &(dyn std::error::Error + 'static)>| Outcome::Success;
    check(closure);

    fn generic<S: Debug, C, F, K>() {
        assert_debug::<ConcurrencyLimit<S>>();
        assert_debug::<RateLimit<S, C>>();
        assert_debug::<KeyedLimit<S, F, K>>();
        assert_debug::<RateLimitLayer<C>>();
        assert_debug::<KeyedLimitLayer<F, K>>();
    }
    generic::<Inner, fn(&Req) -> u32, fn(&Req) -> u8, u8>();
    assert_debug::<Backpressure<Inner, Req>>();
    assert_debug::<tower_fanout_core::concurrency::ResponseFuture<Ready<Result<(), Infallible>>>>();
    assert_debug::<tower_fanout_core::rate::ResponseFuture<Inner, Req>>();
    assert_debug::<tower_fanout_core::keyed::ResponseFuture<Inner, Req>>();
    assert_debug::<tower_fanout_core::backpressure::ResponseFuture<u32>>();
}

/// A layer's services are `Clone` when the inner service is, and clones are
/// `Send + Sync` (C-SEND-SYNC), with generic inner services.
#[test]
fn services_are_clone_send_sync_when_their_parts_are() {
    fn check<S>()
    where
        S: Service<Req, Response = http::Response<()>> + Clone + Send + Sync + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
    {
        fn all<T: Clone + Send + Sync>() {}
        all::<ConcurrencyLimit<S>>();
        all::<RateLimit<S, UnitCost>>();
        all::<AdaptiveLimit<S, HttpClassify>>();
        all::<KeyedLimit<S, AuthorityKey, String>>();
        assert_clone::<Backpressure<S, Req>>();
        assert_send::<Backpressure<S, Req>>();
        assert_sync::<Backpressure<S, Req>>();
    }
    fn with<S>(_: &S)
    where
        S: Service<Req, Response = http::Response<()>> + Clone + Send + Sync + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
    {
        check::<S>();
    }
    with(&client());
    // A layer stacked over itself through `Layer::layer` keeps all of it.
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let twice = layer.layer(layer.layer(client()));
    assert_boxable(&twice);
}
