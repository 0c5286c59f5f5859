//! Learned budgets against adversarial but realistic servers on 127.0.0.1,
//! on tokio's paused clock: answers that overtake each other, several
//! budgets in one answer, hosts that stop sending the fields.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Chunks, handler, respond, serve};
use tower_fanout_http::Client;

/// What a window server saw: requests answered 200, and 429s.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    too_many: AtomicUsize,
}

/// A server with fixed windows of `window` from its start and `limit`
/// requests a window, answering 429 past it. Each 200 carries
/// `X-RateLimit-Limit/Remaining/Reset` (whole seconds left, rounded up)
/// and is sent `remaining × 10 ms` after the request was counted: the
/// later a request was counted, the sooner its answer comes, so answers
/// overtake each other as they do over several connections.
async fn overtaking_server(limit: u64, window: Duration, seen: Arc<Seen>) -> SocketAddr {
    let start = tokio::time::Instant::now();
    let used: Arc<Mutex<(u128, u64)>> = Arc::default();
    serve(handler(move |_| {
        let (used, seen) = (used.clone(), seen.clone());
        async move {
            let elapsed = start.elapsed();
            let index = elapsed.as_nanos() / window.as_nanos();
            let end = window * u32::try_from(index + 1).unwrap();
            let remaining = {
                let mut u = used.lock().unwrap();
                if u.0 != index {
                    *u = (index, 0);
                }
                if u.1 >= limit {
                    seen.too_many.fetch_add(1, Ordering::SeqCst);
                    return respond(429).body(Chunks::empty()).unwrap();
                }
                u.1 += 1;
                limit - u.1
            };
            seen.ok.fetch_add(1, Ordering::SeqCst);
            let reset = (end - elapsed).as_millis().div_ceil(1000);
            tokio::time::sleep(Duration::from_millis(remaining * 10)).await;
            respond(200)
                .header("x-ratelimit-limit", limit.to_string())
                .header("x-ratelimit-remaining", remaining.to_string())
                .header("x-ratelimit-reset", reset.to_string())
                .body(Chunks::full("ok"))
                .unwrap()
        }
    }))
    .await
}

/// Sends `n` GETs at once and waits for them all; the statuses seen.
async fn crowd(client: &Client, url: &str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                match c.get(&url).await {
                    Ok(r) => r.status().as_u16(),
                    Err(e) => panic!("{url}: {e}"),
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// 64 callers against a window of 10: after the first answer 9 remain, and
/// 9 go out. Their answers overtake each other: the one counted last
/// (`remaining: 0`) comes first, the one counted first (`remaining: 8`)
/// last. That older answer must not make the client forget that the host
/// is spent: callers arriving after it wait for the reset, they do not
/// draw 429s. (The client took the last answer's word, and 8 more went out.)
#[tokio::test(start_paused = true)]
async fn an_older_answer_arriving_late_does_not_refill_a_spent_budget() {
    let seen = Arc::new(Seen::default());
    let addr = overtaking_server(10, Duration::from_secs(10), seen.clone()).await;
    let url = format!("http://{addr}/");
    let client = Client::builder().no_retry().build().unwrap();
    // The host's word first: 9 left in this window.
    assert_eq!(client.get(&url).await.unwrap().status(), 200);
    let start = tokio::time::Instant::now();
    // 64 at once: 9 go, 55 wait for the reset (whole seconds, so up to 10 s).
    let first = tokio::spawn({
        let (c, url) = (client.clone(), url.clone());
        async move { crowd(&c, &url, 64).await }
    });
    // Once every answer of the 9 is in (the last after 80 ms), more come.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.ok.load(Ordering::SeqCst), 10);
    let later = crowd(&client, &url, 8).await;
    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0, "{later:?}");
    assert!(later.iter().all(|s| *s == 200), "{later:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "held to the reset"
    );
    let first = first.await.unwrap();
    assert!(first.iter().all(|s| *s == 200), "{first:?}");
    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0);
}

/// A user trial's case: a cold crowd (no answer heard yet) behind a
/// per-host limit of 2. The budget was checked before the call waited at
/// the host's gate, never again: all 100 passed it before the first answer
/// and went out in turn, 90 of them into 429s. It is checked once past
/// the gate: after the first answers, the rest wait for the resets.
#[tokio::test(start_paused = true)]
async fn a_cold_crowd_queued_at_the_hosts_gate_waits_for_what_the_host_said() {
    let seen = Arc::new(Seen::default());
    let addr = overtaking_server(10, Duration::from_secs(1), seen.clone()).await;
    let url = format!("http://{addr}/");
    let host = addr.to_string();
    let client = Client::builder()
        .host_default(tower_fanout_core::keyed::KeyLimit::new().concurrency(2))
        .no_retry()
        .build()
        .unwrap();
    let statuses = crowd(&client, &url, 100).await;
    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(seen.ok.load(Ordering::SeqCst), 100);
    assert_eq!(client.held(&host), 0, "nobody held at rest");
}

/// An OpenAI-style host: a requests budget and a tokens budget, each with
/// its `x-ratelimit-*-requests` / `-tokens` fields (resets as durations).
/// The first call spends the tokens, which come back after 5 s; the
/// requests budget has plenty left. Every request costs at least a token,
/// so the tighter budget is the tokens': the next call waits the 5 s
/// instead of drawing a 429. (Only the requests fields were read.)
#[tokio::test(start_paused = true)]
async fn a_spent_tokens_budget_holds_the_host_when_requests_remain() {
    let seen = Arc::new(Seen::default());
    let start = tokio::time::Instant::now();
    let s = seen.clone();
    let addr = serve(handler(move |_| {
        let seen = s.clone();
        async move {
            let n = seen.ok.load(Ordering::SeqCst);
            if n > 0 && start.elapsed() < Duration::from_secs(5) {
                seen.too_many.fetch_add(1, Ordering::SeqCst);
                return respond(429).body(Chunks::empty()).unwrap();
            }
            seen.ok.fetch_add(1, Ordering::SeqCst);
            let tokens_left = if n == 0 { 0 } else { 9_000 };
            respond(200)
                .header("x-ratelimit-limit-requests", "500")
                .header("x-ratelimit-remaining-requests", (499 - n).to_string())
                .header("x-ratelimit-reset-requests", "120ms")
                .header("x-ratelimit-limit-tokens", "10000")
                .header("x-ratelimit-remaining-tokens", tokens_left.to_string())
                .header("x-ratelimit-reset-tokens", "5s")
                .body(Chunks::full("ok"))
                .unwrap()
        }
    }))
    .await;
    let url = format!("http://{addr}/");
    let client = Client::builder().no_retry().build().unwrap();
    assert_eq!(client.get(&url).await.unwrap().status(), 200);
    assert_eq!(client.get(&url).await.unwrap().status(), 200);
    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0);
    assert!(start.elapsed() >= Duration::from_secs(5));
}

/// Two budgets in one answer: the tokens are spent until 5 s, and only 2
/// requests remain until 30 s (of 100 a window). At the 5 s reset the
/// requests budget is the tighter one: a crowd of 10 then sends 2, and
/// the rest wait for the 30 s reset. (The window restarted at its size,
/// 100, and 8 of the crowd drew 429s.)
#[tokio::test(start_paused = true)]
async fn after_the_tighter_budget_resets_the_next_tightest_still_holds() {
    let seen = Arc::new(Seen::default());
    let start = tokio::time::Instant::now();
    let s = seen.clone();
    let addr = serve(handler(move |_| {
        let seen = s.clone();
        async move {
            let at = start.elapsed();
            let n = seen.ok.load(Ordering::SeqCst);
            // One request, then 2 more in the first 30 s, none before 5 s.
            let allowed = if at >= Duration::from_secs(30) {
                true
            } else {
                n == 0 || (at >= Duration::from_secs(5) && n < 3)
            };
            if !allowed {
                seen.too_many.fetch_add(1, Ordering::SeqCst);
                return respond(429).body(Chunks::empty()).unwrap();
            }
            seen.ok.fetch_add(1, Ordering::SeqCst);
            let left = |d: u64| Duration::from_secs(d).saturating_sub(at).as_millis();
            let requests_left = if at >= Duration::from_secs(30) {
                99
            } else {
                2 - n.min(2)
            };
            respond(200)
                .header("x-ratelimit-limit-requests", "100")
                .header("x-ratelimit-remaining-requests", requests_left.to_string())
                .header("x-ratelimit-reset-requests", format!("{}ms", left(30)))
                .header("x-ratelimit-limit-tokens", "10000")
                .header(
                    "x-ratelimit-remaining-tokens",
                    if n == 0 { "0" } else { "9000" },
                )
                .header("x-ratelimit-reset-tokens", format!("{}ms", left(5)))
                .body(Chunks::full("ok"))
                .unwrap()
        }
    }))
    .await;
    let url = format!("http://{addr}/");
    let client = Client::builder().no_retry().build().unwrap();
    assert_eq!(client.get(&url).await.unwrap().status(), 200);
    let statuses = crowd(&client, &url, 10).await;
    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(start.elapsed() >= Duration::from_secs(30));
}

/// Every request counts against every budget: 3 tokens a second and 4
/// requests an hour, the tokens the tighter. Three requests one after
/// another spend the tokens and leave 1 request of the hour; at the
/// tokens' reset only that one goes out, and the crowd's others, whose
/// wait for the hour is past the wait cap, get `RateLimited` with it
/// instead of a 429. The client took one from the tighter budget alone, so every
/// answer after the first matched its count and left the hour's budget
/// as the first answer had it (3): at the reset 3 went out and 2 drew 429s.
#[tokio::test(start_paused = true)]
async fn every_request_counts_against_the_budget_that_binds_after_the_reset() {
    let seen = Arc::new(Seen::default());
    let start = tokio::time::Instant::now();
    let used: Arc<Mutex<[(u128, u64); 2]>> = Arc::default();
    let s = seen.clone();
    let addr = serve(handler(move |_| {
        let (seen, used) = (s.clone(), used.clone());
        async move {
            let at = start.elapsed();
            // (limit, window) of the tokens and of the requests.
            let budgets = [
                (3u64, Duration::from_secs(1)),
                (4, Duration::from_secs(3600)),
            ];
            let mut left = [0u64; 2];
            let mut reset = [0u128; 2];
            {
                let mut used = used.lock().unwrap();
                for (i, (limit, window)) in budgets.iter().enumerate() {
                    let index = at.as_nanos() / window.as_nanos();
                    if used[i].0 != index {
                        used[i] = (index, 0);
                    }
                    let end = window.as_nanos() * (index + 1);
                    reset[i] = (end - at.as_nanos()).div_ceil(1_000_000);
                    left[i] = limit - used[i].1;
                }
                if left.contains(&0) {
                    seen.too_many.fetch_add(1, Ordering::SeqCst);
                    return respond(429).body(Chunks::empty()).unwrap();
                }
                for u in used.iter_mut() {
                    u.1 += 1;
                }
            }
            seen.ok.fetch_add(1, Ordering::SeqCst);
            respond(200)
                .header("x-ratelimit-limit-tokens", "3")
                .header("x-ratelimit-remaining-tokens", (left[0] - 1).to_string())
                .header("x-ratelimit-reset-tokens", format!("{}ms", reset[0]))
                .header("x-ratelimit-limit-requests", "4")
                .header("x-ratelimit-remaining-requests", (left[1] - 1).to_string())
                .header("x-ratelimit-reset-requests", format!("{}ms", reset[1]))
                .body(Chunks::full("ok"))
                .unwrap()
        }
    }))
    .await;
    let url = format!("http://{addr}/");
    let client = Client::builder().no_retry().build().unwrap();
    for _ in 0..3 {
        assert_eq!(client.get(&url).await.unwrap().status(), 200);
    }
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (client.clone(), url.clone());
            tokio::spawn(async move { c.get(&url).await })
        })
        .collect();
    let (mut ok, mut limited) = (0, Vec::new());
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                ok += 1;
            }
            Err(e) if e.is_rate_limited() => limited.push(e.retry_after().unwrap()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0, "{limited:?}");
    assert_eq!((ok, limited.len()), (1, 2), "{limited:?}");
    // The hour's reset, less the second the tokens took.
    assert!(
        limited
            .iter()
            .all(|w| *w > Duration::from_secs(3500) && *w <= Duration::from_secs(3600)),
        "{limited:?}"
    );
}

/// A host that stated its window (5 a second) once, then answered without
/// the fields: once its window reset, its entry counted "a new window of
/// 5, no end known yet" for ever, with nothing in flight and nothing to
/// wait for, and was never forgotten. Two such hosts filled a map of two,
/// and a third host that said it was spent was not tracked: its next call
/// drew a 429. Such an entry is idle and gives way.
#[tokio::test(start_paused = true)]
async fn hosts_that_stop_sending_the_fields_give_way_in_a_full_map() {
    let quiet = || {
        let calls = Arc::new(AtomicUsize::new(0));
        handler(move |_| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                let r = respond(200);
                let r = if first {
                    r.header("x-ratelimit-limit", "5")
                        .header("x-ratelimit-remaining", "4")
                        .header("x-ratelimit-reset", "1")
                } else {
                    r
                };
                r.body(Chunks::full("ok")).unwrap()
            }
        })
    };
    let (a, b) = (serve(quiet()).await, serve(quiet()).await);
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let start = tokio::time::Instant::now();
    let spent = serve(handler(move |_| {
        let seen = s.clone();
        async move {
            if seen.ok.fetch_add(1, Ordering::SeqCst) > 0
                && start.elapsed() < Duration::from_secs(14)
            {
                seen.too_many.fetch_add(1, Ordering::SeqCst);
                return respond(429).body(Chunks::empty()).unwrap();
            }
            respond(200)
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", "10")
                .body(Chunks::full("ok"))
                .unwrap()
        }
    }))
    .await;
    let client = Client::builder().max_hosts(2).no_retry().build().unwrap();
    for addr in [a, b] {
        let url = format!("http://{addr}/");
        assert_eq!(client.get(&url).await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(client.get(&url).await.unwrap().status(), 200);
    }
    let url = format!("http://{spent}/");
    assert_eq!(client.get(&url).await.unwrap().status(), 200);
    // Held for the host's 10 s, then answered.
    assert_eq!(client.get(&url).await.unwrap().status(), 200);
    assert_eq!(seen.too_many.load(Ordering::SeqCst), 0);
    assert!(start.elapsed() >= Duration::from_secs(14));
}
