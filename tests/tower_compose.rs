//! Our layers stacked with tower's and tower-http's own, as a user with an
//! existing tower client stacks them: tower's `LoadShed`, `Timeout`,
//! `Buffer` and `ConcurrencyLimit` over and under ours, tower-http's
//! `TraceLayer` between them, and a request body that is neither `Sync`
//! nor `Clone`. Each test sends requests and checks what comes back, on the
//! paused clock.
#![cfg(all(
    feature = "concurrency",
    feature = "rate",
    feature = "keyed",
    feature = "adaptive"
))]
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout::BoxError;
use tower_fanout::adaptive::{AdaptiveLimitLayer, AimdController};
use tower_fanout::classify::{HttpClassify, Outcome};
use tower_fanout::concurrency::ConcurrencyLimitLayer;
use tower_fanout::keyed::{KeyLimit, KeyedLimitLayer};
use tower_fanout::rate::RateLimitLayer;
use tower_http::trace::TraceLayer;

/// Calls in flight now and at most, in a service that answers after 1 s.
#[derive(Clone, Default)]
struct Meter {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Meter {
    fn slow<Req: Send + 'static>(
        &self,
    ) -> impl Service<Req, Response = Req, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static {
        let meter = self.clone();
        service_fn(move |req: Req| {
            let meter = meter.clone();
            async move {
                let n = meter.now.fetch_add(1, Ordering::SeqCst) + 1;
                meter.peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                meter.now.fetch_sub(1, Ordering::SeqCst);
                Ok(req)
            }
        })
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// tower's `LoadShed` over our waiting limit turns "no permit free" into its
/// own `Overloaded` at once; the shed caller leaves no waiter behind.
#[tokio::test(start_paused = true)]
async fn load_shed_over_a_waiting_limit_sheds_with_towers_overloaded() {
    let limit = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = limit.handle();
    let meter = Meter::default();
    let svc = ServiceBuilder::new()
        .load_shed()
        .layer(limit)
        .service(meter.slow::<u32>());

    let first = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 1);

    let err = svc.clone().oneshot(2).await.unwrap_err();
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    assert_eq!(handle.waiting(), 0);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(handle.in_flight(), 0);
}

/// Over our fail-fast limit, `LoadShed` always finds the service ready and
/// our own refusal comes through it.
#[tokio::test(start_paused = true)]
async fn load_shed_over_a_fail_fast_limit_passes_our_overloaded() {
    let limit = ConcurrencyLimitLayer::new(1).unwrap().fail_fast();
    let meter = Meter::default();
    let svc = ServiceBuilder::new()
        .load_shed()
        .layer(limit)
        .service(meter.slow::<u32>());

    let first = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(2).await.unwrap_err();
    assert!(err.is::<tower_fanout::error::Overloaded>(), "{err}");
    assert_eq!(first.await.unwrap().unwrap(), 1);
}

/// tower's `Timeout` times the response future. The keyed limit waits for
/// its key's permit there, so a call that waits too long ends with `Elapsed`
/// and leaves the key's queue. (The first call goes through a stack without
/// the timeout, over the same layer: the limit is shared.)
#[tokio::test(start_paused = true)]
async fn timeout_over_the_keyed_limit_ends_a_long_wait_with_elapsed() {
    let keyed = KeyedLimitLayer::builder(KeyLimit::new().concurrency(1))
        .build()
        .unwrap();
    let handle = keyed.handle();
    let meter = Meter::default();
    let holder = ServiceBuilder::new()
        .layer(keyed.clone())
        .service(meter.slow::<Request<()>>());
    let timed = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .layer(keyed)
        .service(meter.slow::<Request<()>>());
    let request = || Request::get("https://api.example.com/").body(()).unwrap();
    let key = "api.example.com".to_owned();

    let first = tokio::spawn(holder.oneshot(request()));
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let err = timed.oneshot(request()).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(handle.waiting(&key), 0);
    assert_eq!(handle.in_flight(&key), 1);
    first.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(&key), 0);
}

/// The concurrency and rate limits wait in `poll_ready`, which tower's
/// `Timeout` does not time (nor does it for tower's own limits): such a wait
/// is bounded around the whole call instead, and a caller that gives up
/// leaves the queue of waiters. Behind a `Buffer` the wait happens in the
/// buffer's worker, inside the response future, and a `Timeout` over the
/// buffer counts it.
#[tokio::test(start_paused = true)]
async fn a_wait_for_a_permit_is_timed_around_the_call_or_behind_a_buffer() {
    let limit = ConcurrencyLimitLayer::new(1).unwrap();
    let handle = limit.handle();
    let meter = Meter::default();
    // Every call takes 1 s; a call through `timed` may take 1.5 s.
    let holder = ServiceBuilder::new()
        .layer(limit.clone())
        .service(meter.slow::<u32>());
    let timed = ServiceBuilder::new()
        .timeout(Duration::from_millis(1500))
        .layer(limit.clone())
        .service(meter.slow::<u32>());
    let buffered = ServiceBuilder::new()
        .timeout(Duration::from_millis(1500))
        .buffer(8)
        .layer(limit)
        .service(meter.slow::<u32>());

    // 1 s for the permit, then 1 s of call: only the call is timed.
    let first = tokio::spawn(holder.clone().oneshot(0));
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    assert_eq!(timed.clone().oneshot(1).await.unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    first.await.unwrap().unwrap();

    // Bounded around the call, a wait ends when it should and leaves no waiter.
    let first = tokio::spawn(holder.clone().oneshot(0));
    tokio::task::yield_now().await;
    let waited = tokio::time::timeout(Duration::from_millis(500), timed.clone().oneshot(2)).await;
    assert!(waited.is_err());
    assert_eq!(handle.waiting(), 0);
    assert_eq!(handle.in_flight(), 1);
    first.await.unwrap().unwrap();

    // Behind a buffer, the same 1 s + 1 s ends at the timeout.
    let first = tokio::spawn(holder.clone().oneshot(0));
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let err = buffered.clone().oneshot(3).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    first.await.unwrap().unwrap();

    // Nothing is left holding the limit.
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(timed.oneshot(4).await.unwrap(), 4);
    assert_eq!(buffered.oneshot(5).await.unwrap(), 5);
}

/// Our limits over a tower `Buffer` (which is `Clone`, as the rate limit
/// needs), and tower's `ConcurrencyLimit` over ours: each bound holds.
#[tokio::test(start_paused = true)]
async fn our_limits_over_a_buffer_and_towers_limit_over_ours() {
    let meter = Meter::default();
    let over_buffer = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(100, Duration::from_secs(1))
                .burst(10)
                .build()
                .unwrap(),
        )
        .layer(ConcurrencyLimitLayer::new(2).unwrap())
        .buffer(16)
        .service(meter.slow::<u32>());
    let calls: Vec<_> = (0..10)
        .map(|i| tokio::spawn(over_buffer.clone().oneshot(i)))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i as u32);
    }
    assert_eq!(meter.peak(), 2);

    let meter = Meter::default();
    let under_tower = ServiceBuilder::new()
        .concurrency_limit(1)
        .layer(RateLimitLayer::new(100, Duration::from_secs(1)).unwrap())
        .layer(ConcurrencyLimitLayer::new(4).unwrap())
        .service(meter.slow::<u32>());
    let calls: Vec<_> = (0..4)
        .map(|i| tokio::spawn(under_tower.clone().oneshot(i)))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(meter.peak(), 1);
}

type UnsyncBody = UnsyncBoxBody<Bytes, BoxError>;

fn unsync_body(text: &'static str) -> UnsyncBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// tower-http's `TraceLayer` between our layers, over a request body that
/// is neither `Sync` nor `Clone` (http-body-util's `UnsyncBoxBody`, which
/// tonic's body wraps): the stack boxes into a `BoxCloneSyncService` and
/// answers from a spawned task.
#[tokio::test(start_paused = true)]
async fn trace_layer_between_our_layers_over_an_unsync_body() {
    let echo = service_fn(|req: Request<UnsyncBody>| async move {
        let body = req.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>(Response::new(Full::new(body)))
    });
    let stack = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(4).unwrap())
        .layer(TraceLayer::new_for_http())
        .layer(
            KeyedLimitLayer::builder(
                KeyLimit::new()
                    .concurrency(1)
                    .rate(10, Duration::from_secs(1)),
            )
            .build()
            .unwrap(),
        )
        .service(echo)
        .map_response(|response| response.map(BodyExt::boxed_unsync));
    let boxed: BoxCloneSyncService<
        Request<UnsyncBody>,
        Response<UnsyncBoxBody<Bytes, Infallible>>,
        BoxError,
    > = BoxCloneSyncService::new(stack);

    let calls: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|text| {
            let req = Request::post("https://api.example.com/echo")
                .body(unsync_body(text))
                .unwrap();
            tokio::spawn(boxed.clone().oneshot(req))
        })
        .collect();
    for (call, text) in calls.into_iter().zip(["a", "b", "c"]) {
        let response = call.await.unwrap().unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, text);
    }
}

/// tower's `LoadShed` refusal is an overload to the default classifier, as
/// our own fail-fast `Overloaded` and tower's `Elapsed` are: an adaptive
/// limit over a shedding stack lowers its limit instead of counting a
/// plain failure.
#[tokio::test(start_paused = true)]
async fn adaptive_limit_hears_towers_load_shed_as_overload() {
    let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
    assert_eq!(HttpClassify::error(&*shed), Outcome::Overload);

    let adaptive = AdaptiveLimitLayer::new(
        AimdController::builder()
            .initial(4)
            .slow_start(false)
            .build()
            .unwrap(),
    );
    let handle = adaptive.handle();
    let svc = ServiceBuilder::new()
        .layer(adaptive)
        .load_shed()
        .concurrency_limit(1)
        .service(service_fn(|_req: ()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(Response::new(()))
        }));
    let first = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    assert!(handle.limit() < 4, "limit {}", handle.limit());
    first.await.unwrap().unwrap();
}

/// A batch's summary counts tower's `Timeout` and `LoadShed` refusals as
/// `timeout` and `overloaded`, as the adaptive limit's classifier reads
/// them; it filed both under `other`. Tower's real errors, so a change in
/// their messages (which both read) fails here.
#[cfg(feature = "fan-out")]
#[tokio::test(start_paused = true)]
async fn a_batch_counts_towers_timeout_and_shed_by_their_kind() {
    use tower_fanout::fan_out::{error_kind, fan_out};

    let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
    assert_eq!(HttpClassify::error(&*elapsed), Outcome::Overload);
    assert_eq!(error_kind(&elapsed), "timeout");
    let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
    assert_eq!(error_kind(&shed), "overloaded");

    // Through a batch: one call times out, the other is shed meanwhile.
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(500))
        .load_shed()
        .concurrency_limit(1)
        .service(service_fn(|_req: u32| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(())
        }));
    let batch = fan_out(svc, [1u32, 2])
        .concurrency(2)
        .unwrap()
        .collect()
        .await;
    let summary = batch.summary();
    assert_eq!(summary.by_kind.get("timeout"), Some(&1), "{summary:?}");
    assert_eq!(summary.by_kind.get("overloaded"), Some(&1), "{summary:?}");
}
