//! What the README's table and "Use the layers" section say of each layer,
//! checked through the facade as a reader of the README would use it: the
//! refusal each `.fail_fast()` layer answers with, the queue's default
//! bound, bad configuration refused when the layer is built, and the live
//! state each handle reads.
#![cfg(all(
    feature = "adaptive",
    feature = "backpressure",
    feature = "concurrency",
    feature = "keyed",
    feature = "rate"
))]
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout::BoxError;
use tower_fanout::adaptive::AdaptiveLimitLayer;
use tower_fanout::backpressure::BackpressureLayer;
use tower_fanout::concurrency::ConcurrencyLimitLayer;
use tower_fanout::error::{Overloaded, QueueFull, RateLimited};
use tower_fanout::keyed::{KeyLimit, KeyedLimitLayer};
use tower_fanout::rate::RateLimitLayer;

/// A downstream that takes a second per call.
fn slow<Req: Send + 'static>() -> impl Service<
    Req,
    Response = (),
    Error = Infallible,
    Future = impl Future<Output = Result<(), Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(|_: Req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Infallible>(())
    })
}

/// Starts `n` calls that hold whatever they were given for a second.
fn occupy<S, Req>(svc: &S, n: usize, req: impl Fn() -> Req) -> Vec<tokio::task::JoinHandle<()>>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    Req: Send + 'static,
{
    (0..n)
        .map(|_| {
            let call = svc.clone().oneshot(req());
            tokio::spawn(async move {
                let _ = call.await;
            })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn each_fail_fast_layer_answers_with_the_named_refusal() {
    // ConcurrencyLimitLayer: `.fail_fast()` → Overloaded.
    let svc = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(1).unwrap().fail_fast())
        .service(slow::<()>());
    let _busy = occupy(&svc, 1, || ());
    tokio::time::sleep(Duration::from_millis(1)).await;
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");

    // RateLimitLayer: `.fail_fast()` → RateLimited, with its retry_after.
    let svc = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(1, Duration::from_secs(1))
                .burst(1)
                .fail_fast()
                .build()
                .unwrap(),
        )
        .service(service_fn(|()| async { Ok::<_, Infallible>(()) }));
    svc.clone().oneshot(()).await.unwrap();
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert!(limited.retry_after() > Duration::ZERO);
    assert!(limited.retry_after() <= Duration::from_secs(1));

    // BackpressureLayer: a queue of 3 × workers; `.fail_fast()` → QueueFull.
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(1).unwrap().fail_fast())
        .service(slow::<()>());
    assert_eq!(svc.handle().queue_capacity(), 3);
    let queue = svc.handle();
    // One at a time, so the worker has taken the first before the rest queue.
    let mut _busy = Vec::new();
    for _ in 0..4 {
        _busy.extend(occupy(&svc, 1, || ()));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!((queue.in_flight(), queue.queue_depth()), (1, 3));
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<QueueFull>(), "{err}");

    // AdaptiveLimitLayer: gradient by default; `.fail_fast()` → Overloaded.
    let layer = AdaptiveLimitLayer::default().fail_fast();
    let handle = layer.handle();
    assert_eq!(handle.controller(), "gradient");
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: http::Request<()>| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, Infallible>(http::Response::new(()))
            }));
    let limit = handle.limit();
    let _busy = occupy(&svc, limit, || http::Request::new(()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(handle.in_flight(), limit);
    let err = svc
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");

    // KeyedLimitLayer: per host by default; `.fail_fast()` refuses.
    let layer = KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
        .fail_fast()
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(slow::<http::Request<()>>());
    let to = |host: &str| {
        http::Request::get(format!("http://{host}/"))
            .body(())
            .unwrap()
    };
    let _busy = occupy(&svc, 1, || to("a.test"));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let err = svc.clone().oneshot(to("a.test")).await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");
    let rated = ServiceBuilder::new()
        .layer(
            KeyedLimitLayer::builder(KeyLimit::new().rate(1, Duration::from_secs(1)).burst(1))
                .fail_fast()
                .build()
                .unwrap(),
        )
        .service(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(())
        }));
    rated.clone().oneshot(to("a.test")).await.unwrap();
    let err = rated.clone().oneshot(to("a.test")).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
    // Another host has its own limit.
    tokio::time::timeout(Duration::from_secs(2), svc.clone().oneshot(to("b.test")))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_fail_fast_each_layer_waits() {
    let concurrency = ConcurrencyLimitLayer::new(2).unwrap();
    let in_flight = concurrency.handle();
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(4).unwrap())
        .layer(
            RateLimitLayer::builder(100, Duration::from_secs(1))
                .burst(20)
                .build()
                .unwrap(),
        )
        .layer(concurrency)
        .service(slow::<()>());
    let calls = occupy(&svc, 10, || ());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(in_flight.in_flight(), 2);
    for call in calls {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(in_flight.in_flight(), 0);
}

#[test]
fn bad_configuration_fails_when_the_layer_is_built() {
    let messages: Vec<BoxError> = vec![
        ConcurrencyLimitLayer::new(0).unwrap_err().into(),
        BackpressureLayer::<()>::new(0).unwrap_err().into(),
        RateLimitLayer::new(0, Duration::from_secs(1))
            .unwrap_err()
            .into(),
        RateLimitLayer::builder(10, Duration::from_secs(1))
            .burst(0)
            .build()
            .unwrap_err()
            .into(),
        KeyedLimitLayer::builder(KeyLimit::new().concurrency(0))
            .build()
            .unwrap_err()
            .into(),
    ];
    // Each says what to fix: the setting and the least it takes.
    for message in messages {
        let message = message.to_string();
        assert!(message.contains("at least 1"), "{message}");
    }
}

/// The README's HTTP client snippet, as written there (it is `ignore` in
/// the README, which has no `client` to run it against): the names it uses
/// exist through the facade and fit together.
#[cfg(feature = "http")]
#[allow(dead_code)]
async fn the_readme_client_snippet_compiles() -> Result<(), BoxError> {
    let client = tower_fanout::http::Client::builder()
        .host_limit("api.github.com", KeyLimit::new().concurrency(3))
        .address_guard(true)
        .build()?;
    let resp: http::Response<bytes::Bytes> = client.get("https://api.github.com/zen").await?;
    drop(resp);
    Ok(())
}

/// The README's "Use the layers" snippet, copied here to be compiled and
/// run over a `service_fn` client; the README must still hold it as written,
/// so an edit there fails this test until the copy follows.
#[tokio::test(start_paused = true)]
async fn the_readme_layers_snippet_builds_and_serves() -> Result<(), BoxError> {
    const SNIPPET: &str = r#"let svc = ServiceBuilder::new()
    .layer(BackpressureLayer::new(16)?)                       // ≤ 16 running, ≤ 48 queued
    .layer(RateLimitLayer::builder(100, Duration::from_secs(1))
        .burst(20)
        .build()?)                                            // 100/s, 20 at once
    .layer(ConcurrencyLimitLayer::new(16)?)                   // ≤ 16 sockets busy
    .service(client);"#;
    assert!(
        include_str!("../README.md").contains(SNIPPET),
        "the README's layers snippet changed: update this copy"
    );

    let client = service_fn(|n: u32| async move { Ok::<_, Infallible>(n) });
    #[rustfmt::skip]
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(16)?)                       // ≤ 16 running, ≤ 48 queued
        .layer(RateLimitLayer::builder(100, Duration::from_secs(1))
            .burst(20)
            .build()?)                                            // 100/s, 20 at once
        .layer(ConcurrencyLimitLayer::new(16)?)                   // ≤ 16 sockets busy
        .service(client);
    assert_eq!(svc.oneshot(7).await?, 7);
    Ok(())
}
