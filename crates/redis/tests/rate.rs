//! The Redis rate limit against a real redis-server, from one process.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::{RedisServer, at_once};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_fanout_core::error::{CostExceedsBurst, RateLimited};
use tower_fanout_redis::{RedisRateLimitLayer, RedisStore};

fn echo()
-> impl Service<u32, Response = u32, Error = Infallible, Future: Send> + Clone + Send + 'static {
    service_fn(|n: u32| async move { Ok::<_, Infallible>(n) })
}

/// A waiting limit `name` of one token each 10 s, a burst of one, over
/// [`echo`]: a refill no test here waits for in real time.
fn one_per_ten_seconds(
    store: RedisStore,
    name: &str,
) -> impl Service<u32, Response = u32, Error = tower_fanout_core::BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    RedisRateLimitLayer::builder(store, name, 1, Duration::from_secs(10))
        .burst(1)
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo())
}

/// A store whose timeout (2 s, not the default 250 ms) no call here
/// reaches: these tests are not about outages, and a loaded machine can keep
/// an answer from Redis waiting a quarter of a second.
fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Waits, at most 5 s, until `done` holds of the bucket `name`'s time to
/// live (ms; -2: no key) and the number of its given-up bookings.
async fn until_bucket(
    redis: &RedisServer,
    name: &str,
    what: &str,
    done: impl Fn(i64, u64) -> bool,
) {
    let mut conn = redis.connection().await;
    let key = format!("tower-fanout:{{{name}}}:gcra");
    let given_up = format!("{key}:given-up");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        let aside: u64 = conn.zcard(&given_up).await.unwrap();
        if done(ttl, aside) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} not seen in 5 s (time to live {ttl} ms, {aside} given up)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits, at most 5 s, until the bucket of the limit `name` is booked as
/// `booked` says of its time to live in ms (-2: no key), while `call` is
/// still waiting. The bucket's key (`RedisStore::key`: default prefix, the
/// name as hash tag, `gcra`) expires at its TAT, so its time to live is how
/// far ahead the bucket is booked. Then drops the call (a caller gone), so
/// what comes next tests a booking that was made.
async fn drop_once_booked<T: std::fmt::Debug>(
    redis: &RedisServer,
    name: &str,
    call: tokio::task::JoinHandle<T>,
    booked: impl Fn(i64) -> bool,
) {
    until_bucket(redis, name, "a booking by the waiting call", |ttl, _| {
        assert!(
            !call.is_finished(),
            "{name}: the call ended instead of waiting"
        );
        booked(ttl)
    })
    .await;
    call.abort();
    let ended = call.await;
    assert!(
        ended.as_ref().is_err_and(|e| e.is_cancelled()),
        "{name}: the call ended before it was dropped: {ended:?}"
    );
}

#[tokio::test]
async fn burst_then_refused_with_retry_after() {
    let redis = RedisServer::start();
    // One token a second: the four calls below must all be made before the
    // next token comes (at 10 a second that was 100 ms of real time).
    let svc = RedisRateLimitLayer::builder(store(&redis), "burst", 1, Duration::from_secs(1))
        .burst(3)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    for i in 0..3 {
        assert_eq!(svc.clone().oneshot(i).await.unwrap(), i);
    }
    let err = svc.clone().oneshot(3).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    // One token every second; some of that has already passed.
    assert!(limited.retry_after() > Duration::ZERO);
    assert!(
        limited.retry_after() <= Duration::from_secs(1),
        "{limited:?}"
    );

    // After the retry_after, the next call is admitted.
    tokio::time::sleep(limited.retry_after()).await;
    assert_eq!(svc.clone().oneshot(4).await.unwrap(), 4);
}

#[tokio::test]
async fn waiting_callers_are_paced_at_the_rate() {
    let redis = RedisServer::start();
    let svc = RedisRateLimitLayer::builder(store(&redis), "paced", 20, Duration::from_secs(1))
        .burst(1)
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    let start = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // One from the burst, then one every 50 ms: the last is 200 ms in
    // (server clock; the client sleeps the wait it is told).
    assert!(
        start.elapsed() >= Duration::from_millis(190),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn cost_is_charged_and_a_cost_above_the_burst_fails() {
    let redis = RedisServer::start();
    let svc = RedisRateLimitLayer::builder(store(&redis), "cost", 1, Duration::from_secs(10))
        .burst(5)
        .cost(|n: &u32| *n)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    svc.clone().oneshot(3).await.unwrap();
    svc.clone().oneshot(2).await.unwrap();
    let err = svc.clone().oneshot(1).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
    let err = svc.clone().oneshot(6).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CostExceedsBurst>(),
        Some(&CostExceedsBurst::new(6, 5))
    );
    // A zero cost never asks Redis and always goes through.
    svc.clone().oneshot(0).await.unwrap();
}

#[tokio::test]
async fn each_key_is_its_own_limit_on_its_own_hash_tag() {
    let redis = RedisServer::start();
    let svc = RedisRateLimitLayer::builder(store(&redis), "hosts", 1, Duration::from_secs(10))
        .burst(2)
        .key_fn(|url: &String| url.split('/').nth(2).unwrap_or_default().to_owned())
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(service_fn(
            |url: String| async move { Ok::<_, Infallible>(url) },
        ));
    for _ in 0..2 {
        svc.clone()
            .oneshot("https://a.example/x".into())
            .await
            .unwrap();
    }
    let err = svc
        .clone()
        .oneshot("https://a.example/y".into())
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());
    svc.clone()
        .oneshot("https://b.example/x".into())
        .await
        .unwrap();

    let mut conn = redis.connection().await;
    let mut keys: Vec<String> = conn.keys("tower-fanout:*").await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "tower-fanout:{hosts:a.example}:gcra",
            "tower-fanout:{hosts:b.example}:gcra"
        ]
    );
}

#[tokio::test]
async fn the_key_expires_when_the_bucket_is_full_again() {
    let redis = RedisServer::start();
    // One token a second: the key lives 5 s after the calls, not 500 ms of
    // real time that five calls and a new connection could outlast.
    let svc = RedisRateLimitLayer::builder(store(&redis), "idle", 1, Duration::from_secs(1))
        .burst(5)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    for i in 0..5 {
        svc.clone().oneshot(i).await.unwrap();
    }
    let mut conn = redis.connection().await;
    let ttl: i64 = conn.pttl("tower-fanout:{idle}:gcra").await.unwrap();
    // Five tokens at 1 s each refill in 5 s.
    assert!((1..=5000).contains(&ttl), "pttl {ttl}");
}

#[tokio::test]
async fn the_script_is_reloaded_after_a_flush() {
    let redis = RedisServer::start();
    let svc = RedisRateLimitLayer::builder(store(&redis), "flush", 100, Duration::from_secs(1))
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    svc.clone().oneshot(1).await.unwrap();
    let mut conn = redis.connection().await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    // EVALSHA answers NOSCRIPT; the script is loaded and the call goes on.
    svc.clone().oneshot(2).await.unwrap();
}

#[tokio::test]
async fn a_dropped_waiting_call_gives_its_tokens_back() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let waiting = one_per_ten_seconds(store.clone(), "drop");
    let probe = RedisRateLimitLayer::builder(store, "drop", 1, Duration::from_secs(10))
        .burst(1)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    waiting.clone().oneshot(1).await.unwrap();
    // The second call books the token that comes in 10 s (the bucket is
    // then booked ~20 s ahead, where the first call left it ~10 s ahead),
    // and is dropped while it waits for it.
    let call = tokio::spawn(waiting.clone().oneshot(2));
    drop_once_booked(&redis, "drop", call, |ttl| ttl > 15_000).await;

    // Given back: the next token is again ~10 s away, not ~20 s.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let err = probe.clone().oneshot(3).await.unwrap_err();
        let retry_after = err.downcast_ref::<RateLimited>().unwrap().retry_after();
        if retry_after <= Duration::from_secs(10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "booking not given back: {retry_after:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Four callers queue one behind the other (one token each 10 s) and leave
/// in the order they booked, as a batch with one timeout does: each but
/// the last has later bookings behind it when it leaves. All their tokens
/// come back: the bucket is booked ~10 s ahead again (by the one call
/// made), with nothing left aside. Before, only the last came back and the
/// bucket stayed booked ~40 s ahead.
#[tokio::test]
async fn callers_leaving_in_booking_order_give_every_token_back() {
    let redis = RedisServer::start();
    let waiting = one_per_ten_seconds(store(&redis), "queue");
    waiting.clone().oneshot(0).await.unwrap();
    let mut calls = Vec::new();
    for n in 1..=4i64 {
        calls.push(tokio::spawn(waiting.clone().oneshot(n as u32)));
        let booked = 10_000 * (n + 1) - 2_000;
        until_bucket(&redis, "queue", "a booking", |ttl, _| ttl > booked).await;
    }
    for call in calls {
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
    }
    until_bucket(&redis, "queue", "every token back", |ttl, aside| {
        ttl <= 10_000 && aside == 0
    })
    .await;
}

/// A caller that would wait takes the slot of one who booked before it and
/// left, when that slot comes sooner, and books nothing of its own.
#[tokio::test]
async fn a_slot_given_up_goes_to_the_next_caller_that_would_wait() {
    let redis = RedisServer::start();
    let waiting = one_per_ten_seconds(store(&redis), "slot");
    waiting.clone().oneshot(0).await.unwrap();
    let first = tokio::spawn(waiting.clone().oneshot(1));
    until_bucket(&redis, "slot", "the 10 s booking", |ttl, _| ttl > 18_000).await;
    let second = tokio::spawn(waiting.clone().oneshot(2));
    until_bucket(&redis, "slot", "the 20 s booking", |ttl, _| ttl > 28_000).await;
    // The first leaves with the second behind it: its slot is set aside.
    first.abort();
    until_bucket(&redis, "slot", "the slot set aside", |_, aside| aside == 1).await;
    // A newcomer would book 30 s ahead; it takes the 10 s slot instead.
    let newcomer = tokio::spawn(waiting.clone().oneshot(3));
    until_bucket(&redis, "slot", "the slot taken", |ttl, aside| {
        aside == 0 && ttl <= 30_000
    })
    .await;
    assert!(!newcomer.is_finished(), "it waits for the slot's time");
    newcomer.abort();
    second.abort();
}

/// A given-up booking of several tokens is shared out: a caller of cost 1
/// takes its first token, and the two left go, together, to a caller of
/// cost 2; neither books anything of its own.
#[tokio::test]
async fn a_given_up_booking_of_several_tokens_is_shared_out() {
    let redis = RedisServer::start();
    let waiting = RedisRateLimitLayer::builder(store(&redis), "share", 1, Duration::from_secs(10))
        .burst(3)
        .cost(|n: &u32| *n)
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    // The burst, then three tokens (ending 60 s ahead), then one (70 s).
    waiting.clone().oneshot(3).await.unwrap();
    let big = tokio::spawn(waiting.clone().oneshot(3));
    until_bucket(&redis, "share", "the three tokens booked", |ttl, _| {
        ttl > 58_000
    })
    .await;
    let behind = tokio::spawn(waiting.clone().oneshot(1));
    until_bucket(&redis, "share", "the one behind booked", |ttl, _| {
        ttl > 68_000
    })
    .await;
    big.abort();
    until_bucket(&redis, "share", "the three set aside", |_, aside| {
        aside == 1
    })
    .await;
    // Cost 1 would book 80 s ahead: it takes the first of the three, and
    // the other two stay aside (one entry).
    let one = tokio::spawn(waiting.clone().oneshot(1));
    let mut conn = redis.connection().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let aside: Vec<String> = conn
            .zrange("tower-fanout:{share}:gcra:given-up", 0, -1)
            .await
            .unwrap();
        if aside.len() == 1 && aside[0].ends_with(":2") {
            break;
        }
        assert!(Instant::now() < deadline, "one token not taken: {aside:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ttl_before = 70_000;
    until_bucket(&redis, "share", "nothing booked by it", |ttl, _| {
        ttl <= ttl_before
    })
    .await;
    // Cost 2 takes the two left.
    let two = tokio::spawn(waiting.clone().oneshot(2));
    until_bucket(&redis, "share", "the two taken", |ttl, aside| {
        aside == 0 && ttl <= ttl_before
    })
    .await;
    for call in [one, two, behind] {
        assert!(!call.is_finished(), "every call waits for its slot");
        call.abort();
    }
}

/// A caller that would wait past `max_wait` is refused at once with the
/// wait and books nothing: the next caller's wait is the same ~10 s, not
/// ~20. (Without it, callers that book and then give up, as a timeout above
/// the limiter makes them, push the bucket ahead of the clock.) One whose
/// wait is within `max_wait` books and waits.
#[tokio::test]
async fn a_wait_past_max_wait_is_refused_and_books_nothing() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let layer = |max_wait: u64| {
        RedisRateLimitLayer::builder(store.clone(), "capped", 1, Duration::from_secs(10))
            .burst(1)
            .max_wait(Duration::from_secs(max_wait))
            .fail_closed()
            .build()
            .unwrap()
            .layer(echo())
    };
    let short = layer(5);
    short.clone().oneshot(1).await.unwrap();
    for _ in 0..3 {
        let err = at_once(short.clone().oneshot(2)).await.unwrap_err();
        let wait = err.downcast_ref::<RateLimited>().unwrap().retry_after();
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(10),
            "booked nothing, so still ~10 s: {wait:?}"
        );
    }
    // Within max_wait: booked (the bucket ~20 s ahead), and waited for.
    let call = tokio::spawn(layer(15).oneshot(3));
    drop_once_booked(&redis, "capped", call, |ttl| ttl > 15_000).await;
}

/// An inner service that is never ready, or that fails its `poll_ready`.
#[derive(Clone)]
struct Unready {
    fails: bool,
}

impl Service<u32> for Unready {
    type Response = u32;
    type Error = &'static str;
    type Future = std::future::Ready<Result<u32, &'static str>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        if self.fails {
            std::task::Poll::Ready(Err("inner service broken"))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, n: u32) -> Self::Future {
        std::future::ready(Ok(n))
    }
}

/// Tokens admitted at once but never spent go back: the inner service
/// failed its `poll_ready` (the request was never made), or the caller left
/// while the inner service was not ready. The bucket (one token per 10 s)
/// is full again for the next caller, where it stayed empty for 10 s.
#[tokio::test]
async fn tokens_of_a_request_never_made_are_given_back() {
    let redis = RedisServer::start();
    for (name, fails) in [("inner-fails", true), ("inner-unready", false)] {
        let build = |fail_fast: bool| {
            let mut builder =
                RedisRateLimitLayer::builder(store(&redis), name, 1, Duration::from_secs(10))
                    .burst(1)
                    .fail_closed();
            if fail_fast {
                builder = builder.fail_fast();
            }
            builder.build().unwrap()
        };
        let svc = build(true).layer(Unready { fails });
        if fails {
            // The first call of a fresh store connects, loads the script and
            // runs it: a bound for a stuck call, not a measure of speed.
            let outcome = tokio::time::timeout(Duration::from_secs(5), svc.oneshot(1))
                .await
                .unwrap_or_else(|_| panic!("{name}: a failing service kept the call waiting"));
            let e = outcome.err().unwrap_or_else(|| panic!("{name}: answered"));
            assert!(e.to_string().contains("broken"), "{name}: {e}");
        } else {
            // The token is taken (the key appears, ~10 s to live), then the
            // caller leaves while the inner service is not ready.
            let call = tokio::spawn(svc.oneshot(1));
            drop_once_booked(&redis, name, call, |ttl| ttl > 0).await;
        }
        // The give-back lands shortly after; until then the probe is refused.
        let probe = build(true).layer(echo());
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Err(e) = probe.clone().oneshot(2).await {
            assert!(e.downcast_ref::<RateLimited>().is_some(), "{e}");
            assert!(
                Instant::now() < deadline,
                "{name}: the tokens were not given back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn clones_and_layers_with_one_name_share_one_limit() {
    let redis = RedisServer::start();
    let build = || {
        RedisRateLimitLayer::builder(store(&redis), "shared", 1, Duration::from_secs(10))
            .burst(4)
            .fail_fast()
            .fail_closed()
            .build()
            .unwrap()
    };
    let a = build().layer(echo());
    let b = build().layer(echo());
    let mut admitted = 0;
    for i in 0..10 {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        if at_once(svc.oneshot(i)).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4);
}

#[tokio::test]
async fn the_handle_reads_tokens_from_redis() {
    let redis = RedisServer::start();
    let layer = RedisRateLimitLayer::builder(store(&redis), "handle", 1, Duration::from_secs(60))
        .burst(4)
        .key_fn(|n: &u32| n.to_string())
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.burst(), 4);
    assert_eq!(handle.refill_interval(), Duration::from_secs(60));
    let svc = layer.layer(echo());
    svc.clone().oneshot(7).await.unwrap();
    svc.clone().oneshot(7).await.unwrap();
    assert_eq!(handle.tokens_for("7").await.unwrap(), 2);
    assert_eq!(handle.tokens_for("8").await.unwrap(), 4);

    // Without a key function, `tokens` reads the layer's one limit.
    let layer = RedisRateLimitLayer::builder(store(&redis), "single", 1, Duration::from_secs(60))
        .burst(5)
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.tokens().await.unwrap(), 5);
    let svc = layer.layer(echo());
    for n in 0..3 {
        svc.clone().oneshot(n).await.unwrap();
    }
    assert_eq!(handle.tokens().await.unwrap(), 2);
}

#[tokio::test]
async fn a_call_that_waited_keeps_the_tokens_it_booked() {
    // Only a call dropped while it waits gives its booking back: one that
    // waited and went ahead spent its tokens.
    let redis = RedisServer::start();
    let svc = RedisRateLimitLayer::builder(store(&redis), "kept", 1, Duration::from_secs(2))
        .burst(1)
        .fail_closed()
        .build()
        .unwrap()
        .layer(echo());
    svc.clone().oneshot(1).await.unwrap();
    let waited = Instant::now();
    svc.clone().oneshot(2).await.unwrap();
    assert!(
        waited.elapsed() >= Duration::from_secs(1),
        "the second call had to wait"
    );

    // The bucket's TAT (two tokens past the first call) stays, read on
    // Redis, as long as a give-back would take to land; a give-back pulled
    // it back to now and deleted the key (a full bucket). It expires on its
    // own only at the TAT, about 2 s after the second call.
    let mut conn = redis.connection().await;
    let key = "tower-fanout:{kept}:gcra";
    let booked: Option<String> = conn.get(key).await.unwrap();
    assert!(booked.is_some(), "no bucket on Redis after two calls");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(300) {
        let tat: Option<String> = conn.get(key).await.unwrap();
        assert_eq!(
            tat, booked,
            "the tokens of a call that went ahead were given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn keys_that_differ_only_by_braces_are_distinct_limits() {
    // A brace in a key must not end the hash tag, but escaping it must keep
    // distinct keys distinct: "t{1}" and "t_1_" are two tenants.
    let redis = RedisServer::start();
    let svc = RedisRateLimitLayer::builder(store(&redis), "tenants", 1, Duration::from_secs(60))
        .key_fn(|tenant: &String| tenant.clone())
        .fail_fast()
        .fail_closed()
        .build()
        .unwrap()
        .layer(service_fn(
            |t: String| async move { Ok::<_, Infallible>(t) },
        ));
    for tenant in ["t{1}", "t_1_", "t%7B1%7D", "t}1{"] {
        svc.clone()
            .oneshot(tenant.to_owned())
            .await
            .unwrap_or_else(|err| panic!("{tenant}: {err}"));
    }
    let err = at_once(svc.clone().oneshot("t{1}".to_owned()))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());

    let mut conn = redis.connection().await;
    let keys: Vec<String> = conn.keys("tower-fanout:*").await.unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in keys {
        // One hash tag per key: Redis Cluster hashes what is between the
        // first '{' and the first '}' after it.
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
    }
}

#[tokio::test]
async fn a_name_with_a_colon_is_not_another_names_key() {
    // The limit "a:b" and the limit "a" for the key "b" are two limits: the
    // name's ':' (and '%') are escaped in the Redis key, so that no name
    // reads as another name followed by a key.
    let redis = RedisServer::start();
    let layer = |name: &str| {
        RedisRateLimitLayer::builder(store(&redis), name, 1, Duration::from_secs(60))
            .fail_fast()
            .fail_closed()
    };
    let whole = layer("a:b").build().unwrap().layer(echo());
    let keyed = layer("a")
        .key_fn(|n: &u32| {
            if *n == 0 {
                "b".to_owned()
            } else {
                "b:c".to_owned()
            }
        })
        .build()
        .unwrap()
        .layer(echo());
    let nested = layer("a:b")
        .key_fn(|_: &u32| "c".to_owned())
        .build()
        .unwrap()
        .layer(echo());
    let escaped = layer("a%3Ab").build().unwrap().layer(echo());
    // Each spends its only token; none may find it spent by another.
    whole.clone().oneshot(0).await.unwrap();
    keyed.clone().oneshot(0).await.unwrap();
    keyed.clone().oneshot(1).await.unwrap();
    nested.clone().oneshot(0).await.unwrap();
    escaped.clone().oneshot(0).await.unwrap();
    let err = at_once(whole.clone().oneshot(0)).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");

    let mut conn = redis.connection().await;
    let mut keys: Vec<String> = conn.keys("tower-fanout:*").await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "tower-fanout:{a%253Ab}:gcra",
            "tower-fanout:{a%3Ab:c}:gcra",
            "tower-fanout:{a%3Ab}:gcra",
            "tower-fanout:{a:b:c}:gcra",
            "tower-fanout:{a:b}:gcra",
        ]
    );
}
