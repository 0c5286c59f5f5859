//! Fault injection: the full stack against loopback servers that misbehave.
//!
//! Each test starts a scripted server on 127.0.0.1 (a raw `TcpListener`
//! writing bytes by hand, so it can break HTTP in ways a real server would
//! not) and drives a batch of [`BATCH`] requests through
//!
//! ```text
//! fan_out ─► BackpressureLayer ─► RateLimitLayer ─► ConcurrencyLimitLayer ─► tower_fanout_http::Client
//! ```
//!
//! with short timeouts, a small body cap and a few quick retries. For every
//! fault it checks that each request ends with a response or a typed error
//! within a bound, that the errors are the expected kind, and that afterwards
//! no permit, queue slot, per-host slot or token booking is left held.
//!
//! The real clock runs here (real sockets are involved), so time bounds are
//! only ever checked from above, and generously.
#![cfg(all(
    feature = "http",
    feature = "fan-out",
    feature = "rate",
    feature = "concurrency",
    feature = "backpressure"
))]
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_fanout::BoxError;
use tower_fanout::backpressure::{BackpressureHandle, BackpressureLayer};
use tower_fanout::concurrency::{ConcurrencyLimitHandle, ConcurrencyLimitLayer};
use tower_fanout::fan_out::{ItemResult, fan_out};
use tower_fanout::http::retry::RetryLayer;
use tower_fanout::http::{Client, Error as HttpError};
use tower_fanout::rate::{RateLimitHandle, RateLimitLayer};

/// Requests in each batch.
const BATCH: usize = 50;
/// The fan-out window, and the backpressure layer's workers.
const WINDOW: usize = 16;
/// The concurrency limit: below the window, so requests wait for permits too.
const LIMIT: usize = 8;
/// The rate limit (per second) and its burst: low enough that a batch waits for tokens.
const RATE: u32 = 500;
const BURST: u32 = 10;
/// The client's timeout for one attempt (connect, headers and body), in
/// the tests of faults that only a timeout ends.
const TIMEOUT: Duration = Duration::from_millis(500);
/// The attempt and connect timeout of the tests whose servers answer (or
/// refuse, or break) at once: never reached unless something hangs. Half a
/// second there made a stall of the loaded test machine fail the test with a
/// timeout instead of the fault under test.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after the first attempt.
const RETRIES: u32 = 2;
/// The retry backoff: from 5 ms doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_millis(20);
/// The longest `Retry-After` the client sleeps; longer ones are `RateLimited`.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// The response body cap.
const BODY_CAP: usize = 16 * 1024;
/// Scheduling slack on a loaded machine, added to every upper bound.
const SLACK: Duration = Duration::from_secs(5);
/// The most a whole batch may take before the test fails rather than hangs.
const BATCH_BOUND: Duration = Duration::from_secs(25);

/// The most one request of a batch may take: its own attempts and waits
/// between them, plus as long again for the requests ahead of it for a permit
/// (the window is twice the limit), plus slack. (With [`PROMPT_TIMEOUT`],
/// attempts end long before theirs, so the bound is generous there too.)
fn item_bound() -> Duration {
    let attempts = TIMEOUT * (RETRIES + 1) + MAX_BACKOFF * RETRIES + MAX_WAIT * RETRIES;
    attempts * 2 + SLACK
}

// ---------------------------------------------------------------------------
// Scripted servers
// ---------------------------------------------------------------------------

/// A server on a fresh 127.0.0.1 port that hands each connection to
/// `behave` with its number; counts connections.
async fn script<F, Fut>(behave: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(behave(stream, n));
        }
    });
    (addr, connections)
}

/// Reads one request head (a GET has no body). `false` on EOF or error.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        if head.len() > 64 * 1024 {
            return false;
        }
    }
}

/// Keeps the connection open, reading and discarding, until the client closes it.
async fn hold(mut stream: TcpStream) {
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
}

/// Writes `bytes` and flushes; `false` once the client has gone.
async fn send(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}

/// Drops the connection with a TCP reset rather than a clean close.
fn reset(stream: TcpStream) {
    // A zero linger makes close() send RST at once; only a non-zero linger
    // can block the thread, which is why tokio deprecates the setter.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// A port on 127.0.0.1 that nobody listens on: bound (so no other socket
/// can take it while the test runs) but never listening, so every connection
/// attempt is refused.
fn closed_port() -> (SocketAddr, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    (socket.local_addr().unwrap(), socket)
}

// ---------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------

/// The client of the stack, with `timeout` for each attempt. Its connect
/// timeout is [`PROMPT_TIMEOUT`]: loopback connects are answered at once,
/// and a slow one under load is then not taken for the fault under test.
fn client(timeout: Duration) -> Client {
    client_with(RetryLayer::builder(), timeout)
}

fn client_with(retry: tower_fanout::http::retry::RetryBuilder, timeout: Duration) -> Client {
    Client::builder()
        .timeout(Some(timeout))
        .connect_timeout(Some(PROMPT_TIMEOUT))
        .max_response_body(BODY_CAP)
        // The guard stays on, with only the loopback address the servers use let through.
        .address_guard(true)
        .address_guard_allow(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .pool_idle_timeout(Some(Duration::from_secs(2)))
        .retry(
            retry
                .max_retries(RETRIES)
                .max_wait(MAX_WAIT)
                .backoff(Duration::from_millis(5), MAX_BACKOFF)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// What a batch left behind.
struct Run {
    addr: SocketAddr,
    items: Vec<ItemResult<Response<Bytes>>>,
    elapsed: Duration,
    client: Client,
    permits: ConcurrencyLimitHandle,
    tokens: RateLimitHandle,
    queue: BackpressureHandle,
}

/// Runs [`BATCH`] GETs to `addr` through the full stack.
async fn run_batch(addr: SocketAddr, client: Client) -> Run {
    let concurrency = ConcurrencyLimitLayer::new(LIMIT).unwrap();
    let permits = concurrency.handle();
    let rate = RateLimitLayer::builder(RATE, Duration::from_secs(1))
        .burst(BURST)
        .build()
        .unwrap();
    let tokens = rate.handle();
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(WINDOW).unwrap())
        .layer(rate)
        .layer(concurrency)
        .service(client.clone());
    let queue = svc.handle();
    let requests = (0..BATCH).map(move |i| {
        Request::get(format!("http://{addr}/item/{i}?token=secret"))
            .body(Full::<Bytes>::default())
            .unwrap()
    });
    let started = Instant::now();
    let batch = tokio::time::timeout(
        BATCH_BOUND,
        fan_out(svc, requests)
            .concurrency(WINDOW)
            .unwrap()
            .collect(),
    )
    .await
    .expect("the batch hung: some request got neither a response nor an error");
    let elapsed = started.elapsed();
    let items = batch.into_items();
    assert_eq!(items.len(), BATCH, "every request has an outcome");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.index, i, "results come back in input order");
        assert!(
            item.latency <= item_bound(),
            "request {i} took {:?}, over the bound {:?}",
            item.latency,
            item_bound()
        );
    }
    Run {
        addr,
        items,
        elapsed,
        client,
        permits,
        tokens,
        queue,
    }
}

/// The client's error in a boxed error's chain.
fn http_error(error: &BoxError) -> Option<&HttpError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<HttpError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// Waits (up to a generous bound) for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SLACK;
    while !check() {
        assert!(Instant::now() < deadline, "never released: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Run {
    /// Every item failed with the client's error, and `kind` says it is the expected one.
    fn assert_all_errors(&self, name: &str, kind: impl Fn(&HttpError) -> bool) {
        for item in &self.items {
            match &item.result {
                Ok(resp) => panic!(
                    "request {}: expected {name}, got a {} response",
                    item.index,
                    resp.status()
                ),
                Err(error) => {
                    let http = http_error(error).unwrap_or_else(|| {
                        panic!("request {}: not the client's error: {error}", item.index)
                    });
                    assert!(
                        kind(http),
                        "request {}: expected {name}, got {http:?}",
                        item.index
                    );
                    let text = http.to_string();
                    assert!(
                        !text.contains("secret"),
                        "request {}: the error repeats the query string: {text}",
                        item.index
                    );
                }
            }
        }
    }

    /// Nothing is held once the batch is over: permits, waiters, queue
    /// slots, workers, per-host slots, and the bucket refills to its burst.
    async fn assert_no_leaks(&self) {
        let permits = self.permits.clone();
        eventually("concurrency permits", || {
            permits.in_flight() == 0 && permits.waiting() == 0
        })
        .await;
        assert_eq!(self.permits.available(), LIMIT);
        let queue = self.queue.clone();
        eventually("backpressure queue", || {
            queue.queue_depth() == 0
                && queue.slots_in_use() == 0
                && queue.waiting() == 0
                && queue.in_flight() == 0
        })
        .await;
        let host = self.addr.to_string();
        let hosts = self.client.host_limits().clone();
        eventually("per-host limit", || {
            hosts.in_flight(&host) == 0 && hosts.waiting(&host) == 0
        })
        .await;
        // No booking reaches past a full refill (nothing booked far ahead
        // and left there): the bucket is back to its burst. A booking that
        // was not given back is only a spent token that the refill pays off,
        // so that leak is checked where it shows, in reliability_review.rs.
        tokio::time::sleep(self.tokens.refill_interval() * BURST + Duration::from_millis(50)).await;
        assert_eq!(self.tokens.tokens(), self.tokens.burst(), "token bookings");
    }

    fn assert_elapsed_below(&self, bound: Duration) {
        assert!(
            self.elapsed <= bound,
            "the batch took {:?}, over {bound:?}",
            self.elapsed
        );
    }
}

// ---------------------------------------------------------------------------
// Transport faults
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_connect_error() {
    let (addr, _bound) = closed_port();
    let run = run_batch(addr, client(PROMPT_TIMEOUT)).await;
    run.assert_all_errors("a connect error", HttpError::is_connect);
    // Refusals come back at once: only the backoffs are waited for.
    run.assert_elapsed_below(SLACK * 2);
    run.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_accepts_and_never_answers_times_out() {
    let (addr, connections) = script(|mut stream, _| async move {
        if read_head(&mut stream).await {
            hold(stream).await;
        }
    })
    .await;
    let run = run_batch(addr, client(TIMEOUT)).await;
    run.assert_all_errors("a timeout", HttpError::is_timeout);
    for item in &run.items {
        assert!(item.latency >= TIMEOUT, "a timeout never fires early");
    }
    // A timeout is not retried: a slow server does not need more load.
    assert!(connections.load(Ordering::SeqCst) <= BATCH);
    run.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_time_out() {
    let (addr, _) = script(|mut stream, _| async move {
        if read_head(&mut stream).await
            && send(&mut stream, b"HTTP/1.1 200 OK\r\ncontent-type: text/pl").await
        {
            hold(stream).await;
        }
    })
    .await;
    let run = run_batch(addr, client(TIMEOUT)).await;
    run.assert_all_errors("a timeout", HttpError::is_timeout);
    run.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_times_out() {
    let (addr, _) = script(|mut stream, _| async move {
        if read_head(&mut stream).await
            && send(
                &mut stream,
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst ten.",
            )
            .await
        {
            hold(stream).await;
        }
    })
    .await;
    let run = run_batch(addr, client(TIMEOUT)).await;
    run.assert_all_errors("a timeout", HttpError::is_timeout);
    run.assert_no_leaks().await;
}

/// A body that never stalls for long but never ends (slowloris in reverse):
/// the timeout covers the whole body, not the gaps between its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_endless_body_times_out() {
    let (addr, _) = script(|mut stream, _| async move {
        if !read_head(&mut stream).await
            || !send(
                &mut stream,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
        {
            return;
        }
        while send(&mut stream, b"1\r\nx\r\n").await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let run = run_batch(addr, client(TIMEOUT)).await;
    run.assert_all_errors("a timeout", HttpError::is_timeout);
    run.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_chunked_body_hits_the_cap() {
    // Servers still writing their endless body.
    let streaming = Arc::new(AtomicUsize::new(0));
    let counter = streaming.clone();
    let (addr, _) = script(move |mut stream, _| {
        let streaming = counter.clone();
        async move {
            if !read_head(&mut stream).await
                || !send(
                    &mut stream,
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                )
                .await
            {
                return;
            }
            streaming.fetch_add(1, Ordering::SeqCst);
            let mut chunk = b"2000\r\n".to_vec();
            chunk.extend_from_slice(&[b'x'; 0x2000]);
            chunk.extend_from_slice(b"\r\n");
            while send(&mut stream, &chunk).await {}
            streaming.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await;
    let run = run_batch(addr, client(PROMPT_TIMEOUT)).await;
    run.assert_all_errors("a body over the cap", HttpError::is_body_too_large);
    // The cap is hit long before the timeout.
    run.assert_elapsed_below(TIMEOUT * 10 + SLACK);
    run.assert_no_leaks().await;
    // The client stopped reading and dropped its connections: the servers'
    // writes failed and they quit. (Waited for, not sampled over a fixed
    // 200 ms: on a loaded machine a server could still be finding out.)
    eventually("servers streaming into dropped connections", || {
        streaming.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_huge_body_is_refused_before_reading() {
    let (addr, _) = script(|mut stream, _| async move {
        if !read_head(&mut stream).await
            || !send(
                &mut stream,
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000000\r\n\r\n",
            )
            .await
        {
            return;
        }
        let chunk = vec![b'x'; 0x2000];
        while send(&mut stream, &chunk).await {}
    })
    .await;
    let run = run_batch(addr, client(PROMPT_TIMEOUT)).await;
    run.assert_all_errors("a body over the cap", HttpError::is_body_too_large);
    run.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body_is_a_body_error() {
    let (addr, _) = script(|mut stream, _| async move {
        if !read_head(&mut stream).await {
            return;
        }
        let mut partial = b"HTTP/1.1 200 OK\r\ncontent-length: 10000\r\n\r\n".to_vec();
        partial.extend_from_slice(&[b'x'; 1000]);
        if send(&mut stream, &partial).await {
            // Let the client read the head and start on the body first.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reset(stream);
    })
    .await;
    let run = run_batch(addr, client(PROMPT_TIMEOUT)).await;
    run.assert_all_errors("a body error", HttpError::is_body);
    run.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_a_body_error() {
    let (addr, _) = script(|mut stream, _| async move {
        if !read_head(&mut stream).await {
            return;
        }
        let mut partial = b"HTTP/1.1 200 OK\r\ncontent-length: 10000\r\n\r\n".to_vec();
        partial.extend_from_slice(&[b'x'; 1000]);
        let _ = send(&mut stream, &partial).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let run = run_batch(addr, client(PROMPT_TIMEOUT)).await;
    run.assert_all_errors("a body error", HttpError::is_body);
    run.assert_no_leaks().await;
}

// ---------------------------------------------------------------------------
// 429 floods
// ---------------------------------------------------------------------------

/// A keep-alive server that answers every request with a 429 and the next of
/// `values` as its `Retry-After`; counts requests.
async fn flood_429(values: &'static [&'static [u8]]) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let (addr, _) = script(move |mut stream, _| {
        let hits = counter.clone();
        async move {
            while read_head(&mut stream).await {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                let mut resp = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: ".to_vec();
                resp.extend_from_slice(values[n % values.len()]);
                resp.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
                if !send(&mut stream, &resp).await {
                    return;
                }
            }
        }
    })
    .await;
    (addr, hits)
}

/// `Retry-After` values that say no wait: negative, not a number, not
/// valid text, dates in the past, empty, zero.
const ABSURD_RETRY_AFTER: &[&[u8]] = &[
    b"-1",
    b"-99999999999",
    b"1e9",
    b"NaN",
    b"soon",
    b"\xe6\x98\x8e\xe6\x97\xa5",
    b"Wed, 21 Oct 2015 07:28:00 GMT",
    b"Thu, 01 Jan 1970 00:00:00 GMT",
    b"Sun, 99 Foo 2020 99:99:99 GMT",
    b"",
    b"0",
];

/// `Retry-After` values beyond any sane wait: centuries, beyond u64, a date
/// in the year 9999. No client should sleep on them, nor hammer the server.
const BEYOND_ANY_WAIT: &[&[u8]] = &[
    b"99999999999",
    b"18446744073709551616",
    b"99999999999999999999999999999999",
    b"Fri, 31 Dec 9999 23:59:59 GMT",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_429s_with_absurd_retry_after_ends_quickly() {
    let (addr, hits) = flood_429(ABSURD_RETRY_AFTER).await;
    let run = run_batch(addr, client(PROMPT_TIMEOUT)).await;
    // Every value is ignored or means "now": the client backs off briefly,
    // retries within its budget, then hands back the last 429 as it is.
    for item in &run.items {
        match &item.result {
            Ok(resp) => assert_eq!(resp.status(), 429, "request {}", item.index),
            Err(error) => panic!(
                "request {}: expected the last 429, got an error: {error}",
                item.index
            ),
        }
        assert!(
            item.latency <= MAX_WAIT * 2 + SLACK,
            "request {} slept on an absurd Retry-After: {:?}",
            item.index,
            item.latency
        );
    }
    let hits = hits.load(Ordering::SeqCst);
    assert!(
        (BATCH..=BATCH * (RETRIES as usize + 1)).contains(&hits),
        "{hits} requests reached the server: each gets one attempt plus at most {RETRIES} retries"
    );
    run.assert_elapsed_below(MAX_WAIT * 3 + SLACK);
    run.assert_no_leaks().await;
}

/// Waits beyond any sanity are waits past the cap all the same: the client
/// does not sleep, fails at once with `RateLimited`, and holds the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_429s_with_retry_after_beyond_any_wait_is_rate_limited() {
    flood_of_429s_is_rate_limited(BEYOND_ANY_WAIT, Duration::MAX).await;
}

/// Valid `Retry-After` values above the wait cap, up to a day: the client
/// must not sleep, it fails at once with `RateLimited` and holds the host
/// instead of hammering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_429s_with_long_retry_after_is_rate_limited() {
    const LONG: &[&[u8]] = &[b"86400", b"3600", b"  120  "];
    flood_of_429s_is_rate_limited(LONG, Duration::from_secs(86_400)).await;
}

/// A batch against a server answering 429 with the `Retry-After` values
/// `after` (each past the cap, at most `longest`): every request fails at
/// once with `RateLimited` carrying a wait past the cap, and once one
/// answer has said "come back later" the host is held, so only the requests
/// already in flight at that moment reach the server.
async fn flood_of_429s_is_rate_limited(after: &'static [&'static [u8]], longest: Duration) {
    let (addr, hits) = flood_429(after).await;
    let run = run_batch(addr, client(PROMPT_TIMEOUT)).await;
    run.assert_all_errors("rate limited", HttpError::is_rate_limited);
    for item in &run.items {
        let wait = item
            .result
            .as_ref()
            .err()
            .and_then(http_error)
            .and_then(HttpError::retry_after)
            .unwrap();
        assert!(
            wait > MAX_WAIT && wait <= longest,
            "request {}: retry_after {wait:?}",
            item.index
        );
    }
    let hits = hits.load(Ordering::SeqCst);
    assert!(
        (1..=LIMIT).contains(&hits),
        "{hits} requests reached a server that asked for a long pause"
    );
    run.assert_elapsed_below(SLACK);
    run.assert_no_leaks().await;
}

// ---------------------------------------------------------------------------
// Cancellation under a fault
// ---------------------------------------------------------------------------

/// Dropping a batch while its requests hang on a silent server gives every
/// permit, queue slot and per-host slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_hung_batch_releases_everything() {
    let (addr, connections) = script(|mut stream, _| async move {
        if read_head(&mut stream).await {
            hold(stream).await;
        }
    })
    .await;
    // No timeout: only the drop can end these requests.
    let client = Client::builder()
        .timeout(None)
        .address_guard(true)
        .address_guard_allow(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .no_retry()
        .build()
        .unwrap();
    let concurrency = ConcurrencyLimitLayer::new(LIMIT).unwrap();
    let permits = concurrency.handle();
    let svc = ServiceBuilder::new()
        .layer(BackpressureLayer::new(WINDOW).unwrap())
        .layer(concurrency)
        .service(client.clone());
    let queue = svc.handle();
    let requests = (0..BATCH).map(move |i| {
        Request::get(format!("http://{addr}/{i}"))
            .body(Full::<Bytes>::default())
            .unwrap()
    });
    let mut stream = fan_out(svc, requests).concurrency(WINDOW).unwrap().stream();
    let first = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(first.is_err(), "a silent server cannot answer");
    // The batch is stuck with the limit full and more waiting behind it.
    eventually("the limit to fill", || permits.in_flight() == LIMIT).await;
    eventually("requests to reach the server", || {
        connections.load(Ordering::SeqCst) >= LIMIT
    })
    .await;
    assert!(queue.queue_depth() + queue.in_flight() > 0);
    drop(stream);
    eventually("concurrency permits after the drop", || {
        permits.in_flight() == 0 && permits.waiting() == 0
    })
    .await;
    eventually("backpressure queue after the drop", || {
        queue.queue_depth() == 0
            && queue.slots_in_use() == 0
            && queue.waiting() == 0
            && queue.in_flight() == 0
    })
    .await;
    let host = addr.to_string();
    let hosts = client.host_limits().clone();
    eventually("per-host limit after the drop", || {
        hosts.in_flight(&host) == 0 && hosts.waiting(&host) == 0
    })
    .await;
}
