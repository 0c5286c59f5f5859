//! A distributed-systems review: a primary demoted under a store, an error
//! reply about one limit's key, and a permit held by a broken service, each
//! against a real redis-server.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::{Events, RedisServer, echo_unit};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};
use tower_fanout_core::BoxError;
use tower_fanout_redis::{Error, RedisConcurrencyLimitLayer, RedisRateLimitLayer, RedisStore};

/// A TCP proxy whose new connections go to the port set last: the address
/// a client dials stays, the node behind it changes, as a DNS name or a
/// cloud endpoint moves to the new primary after a failover. Connections
/// already made stay with the old node.
struct SwitchProxy {
    addr: SocketAddr,
    upstream: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl SwitchProxy {
    async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(AtomicU16::new(upstream_port));
        let target = upstream.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let port = target.load(Ordering::SeqCst);
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            upstream,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn switch_to(&self, port: u16) {
        self.upstream.store(port, Ordering::SeqCst);
    }
}

impl Drop for SwitchProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn redis_error(err: &BoxError) -> &Error {
    err.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a redis limit error: {err}"))
}

/// The whole source chain of an error, for messages and checks.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// A failover behind a stable address: the old primary becomes a replica
/// and keeps the store's connection open, answering every script with
/// READONLY. redis-rs reconnects only after an I/O error, so the store kept
/// that connection for good and the limit stayed unavailable (refusing
/// every call, failing closed) although the address now led to a working
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_to_replica_is_left_for_the_new_primary() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let proxy = SwitchProxy::start(old.port()).await;
    let store = RedisStore::builder(proxy.url())
        .timeout(Duration::from_secs(1))
        .probe_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    // A token refills in a minute: the bucket's key outlives the test.
    let limit = RedisRateLimitLayer::builder(store, "failover", 1, Duration::from_secs(60))
        .burst(1000)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap();
    let svc = limit.layer(echo_unit());
    svc.clone().oneshot(()).await.unwrap();

    // The failover: the old primary follows the new one, the address moves.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port())
        .query_async(&mut old.connection().await)
        .await
        .unwrap();
    proxy.switch_to(new.port());

    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(redis_error(&err).is_unavailable(), "{err}");
    let source = std::error::Error::source(redis_error(&err))
        .and_then(|source| source.downcast_ref::<redis::RedisError>())
        .unwrap();
    assert_eq!(
        source.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
        "{source}"
    );

    // Bounded: a probe every 50 ms; one must reach the new primary.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match svc.clone().oneshot(()).await {
            Ok(()) => break,
            Err(err) => assert!(
                Instant::now() < deadline,
                "still refused 3 s after the failover: {}",
                chain(&*err)
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_new: bool = new
        .connection()
        .await
        .exists("tower-fanout:{failover}:gcra")
        .await
        .unwrap();
    assert!(on_new, "the decision was made on the new primary");
}

/// Another program left a hash where one limit keeps its bucket. Redis
/// answered that limit's script at once with WRONGTYPE, and the store took
/// the error for an outage: for a whole probe interval every other limit on
/// the store was refused (`Skipped`) without Redis being asked, so one bad
/// key, called steadily, kept every limit of the process unavailable. The
/// error said only "redis limit unavailable"; it now says what to change.
#[tokio::test]
async fn a_key_holding_another_type_fails_only_its_own_limit() {
    let events = Events::global();
    let redis = RedisServer::start();
    let _: () = redis
        .connection()
        .await
        .hset(
            "tower-fanout:{per-host:clobbered}:gcra",
            "owner",
            "someone else",
        )
        .await
        .unwrap();
    // A probe interval far longer than the test: a skip would show.
    let store = RedisStore::builder(redis.url())
        .probe_interval(Duration::from_secs(600))
        .build()
        .unwrap();
    // One limit per host; one host's key is clobbered.
    let svc = RedisRateLimitLayer::builder(store.clone(), "per-host", 1000, Duration::from_secs(1))
        .key_fn(|host: &&str| (*host).to_owned())
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(tower::service_fn(|_: &str| async {
            Ok::<_, std::convert::Infallible>(())
        }));
    let other = RedisRateLimitLayer::builder(store, "other", 1000, Duration::from_secs(1))
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo_unit());

    for _ in 0..3 {
        let err = svc.clone().oneshot("clobbered").await.unwrap_err();
        assert!(redis_error(&err).is_unavailable(), "{err}");
        // Redis was asked each time and named the problem, and the error
        // says what to change.
        assert!(chain(&*err).contains("WRONGTYPE"), "{}", chain(&*err));
        assert!(err.to_string().contains("key_prefix"), "{err}");
        if let Err(err) = svc.clone().oneshot("healthy").await {
            panic!("the healthy host was refused: {}", chain(&*err));
        }
        if let Err(err) = other.clone().oneshot(()).await {
            panic!("another limit on the store was refused: {}", chain(&*err));
        }
    }
    // Said once, at warn, naming the key; not an outage that ends at each
    // good decision (a warn and an info per request as hosts alternate).
    let layer = ["key=\"per-host\""];
    assert_eq!(events.count(tracing::Level::WARN, &layer), 1);
    assert_eq!(
        events.count(
            tracing::Level::WARN,
            &["redis_key=\"tower-fanout:{per-host:clobbered}:gcra\""]
        ),
        1
    );
    assert_eq!(events.count(tracing::Level::INFO, &layer), 0);
}

/// An inner service whose `poll_ready` fails: broken, in tower's terms.
#[derive(Clone)]
struct Broken;

impl Service<()> for Broken {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("inner service broken".into()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

/// A service whose inner `poll_ready` failed kept its permit on Redis, and
/// renewed it, for as long as it was kept around: every process sharing a
/// limit of 1 was refused meanwhile. The core limits give the permit back
/// with such an error; so does this one now.
#[tokio::test]
async fn an_inner_ready_error_gives_the_redis_permit_back() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).unwrap();
    let limit = RedisConcurrencyLimitLayer::builder(store, "broken-inner", 1)
        .lease(Duration::from_secs(30))
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap();

    let mut broken = limit.layer(Broken);
    let err = std::future::poll_fn(|cx| broken.poll_ready(cx))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "inner service broken");
    // `broken` is kept (a struct field, a pool): its permit must not be.
    redis.until_holders("broken-inner", 0).await;

    let other = limit.layer(echo_unit());
    if let Err(err) = other.oneshot(()).await {
        panic!("refused while a broken service is kept around: {err}");
    }
    drop(broken);
}

/// Failing open, a caller that began waiting for the local share during an
/// outage waited for a local permit after Redis came back, for as long as
/// the local calls lasted (here for ever), while new callers went straight
/// to Redis, which had room. It asks Redis again as it waits now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_waiting_on_the_local_share_goes_to_redis_once_it_is_back() {
    let mut redis = RedisServer::start();
    let store = support::outage_store(&redis);
    // A local share of 1 out of 4.
    let limit = RedisConcurrencyLimitLayer::builder(store, "back-from-local", 4)
        .lease(Duration::from_secs(3))
        .fail_open(0.25)
        .build()
        .unwrap();
    redis.kill();

    // The only local permit, held by a call that never ends.
    let mut holder = limit.layer(support::never_ends());
    holder.ready().await.unwrap();
    let _held = holder.call(());
    let waiter = tokio::spawn(limit.layer(echo_unit()).oneshot(()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the local share holds 1");

    redis.restart();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("still waiting for the local permit 10 s after Redis came back")
        .unwrap()
        .unwrap();
}
