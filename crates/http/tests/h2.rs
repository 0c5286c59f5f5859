//! HTTP/2 through the client preset, as an agent runtime calling h2 APIs
//! uses it: TLS with ALPN h2 against servers on 127.0.0.1, either hyper's
//! HTTP/2 server or a scripted server that writes frames itself (for
//! `REFUSED_STREAM`, `GOAWAY` below in-flight streams, a connection that
//! goes silent).
//!
//! On tokio's paused clock: the servers run on the test's runtime and set
//! TCP_NODELAY (as the client does), so every byte written is in the
//! peer's socket before the write returns. The runtime then idles, and the
//! clock jumps to the next timer, only when every side waits on a timer
//! or on a peer that will not write: the times asserted are exact. (A
//! server on another thread, or Nagle holding a small write back, lets
//! the clock jump while bytes are still on the way.)
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Chunks, Handler, handler, respond, table_resolver};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_fanout_core::keyed::KeyLimit;
use tower_fanout_http::retry::RetryLayer;
use tower_fanout_http::{BodyTooLarge, Client, ClientBuilder};

// ---------------------------------------------------------------- servers

/// A TLS acceptor for the fixtures' `localhost` certificate, offering h2 only.
fn acceptor() -> tokio_rustls::TlsAcceptor {
    support::tls_acceptor(&[b"h2"])
}

/// What a hyper h2 server saw: TCP connections accepted, and the
/// connections that carried at least one request.
#[derive(Clone)]
struct H2 {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    used: Arc<Mutex<HashSet<usize>>>,
}

impl H2 {
    fn used(&self) -> usize {
        self.used.lock().unwrap().len()
    }
}

/// A handler answering with any body (support's [`Handler`] answers with `Chunks`).
type AnyHandler<B> = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = http::Response<B>> + Send>>
        + Send
        + Sync,
>;

/// hyper's HTTP/2 server over TLS on a fresh 127.0.0.1 port, announcing
/// `max_streams` as its SETTINGS_MAX_CONCURRENT_STREAMS.
async fn serve_h2<B>(handler: AnyHandler<B>, max_streams: Option<u32>) -> H2
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = H2 {
        addr: listener.local_addr().unwrap(),
        accepted: Arc::default(),
        used: Arc::default(),
    };
    let (accepted, used) = (server.accepted.clone(), server.used.clone());
    let acceptor = acceptor();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let conn = accepted.fetch_add(1, Ordering::SeqCst);
            stream.set_nodelay(true).unwrap();
            let (acceptor, handler, used) = (acceptor.clone(), handler.clone(), used.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    used.lock().unwrap().insert(conn);
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder.max_concurrent_streams(max_streams);
                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    server
}

/// What the frame server does with a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Answers 200 "ok" once the request has ended.
    Answer,
    /// Resets it with REFUSED_STREAM as soon as its HEADERS arrive.
    Refuse,
    /// Reads the request to its end, then resets it with this code.
    ResetAfterRead(u32),
    /// Answers as `Answer` does; from then on the connection reads and
    /// discards everything, PINGs included, and never writes again (a
    /// black-holed connection).
    AnswerThenSilence,
}

const REFUSED_STREAM: u32 = 0x7;
const INTERNAL_ERROR: u32 = 0x2;

/// A stream the frame server saw open.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Opened {
    conn: usize,
    id: u32,
    method: Method,
    /// The request body's DATA, as far as the server read it.
    body: Vec<u8>,
}

/// A script for [`serve_frames`]: `act` for the first stream of the first
/// connection, an answer for every other.
fn first_stream(act: Act) -> impl Fn(usize, usize) -> Act + Send + Sync + 'static {
    move |conn, n| {
        if (conn, n) == (0, 0) {
            act
        } else {
            Act::Answer
        }
    }
}

/// A server that speaks HTTP/2 frames itself, over TLS: `script(conn,
/// n)` says what to do with the `n`th stream (from 0) of connection
/// `conn`. With `rotate_after: Some(k)`, each connection takes `k` streams
/// and then sends GOAWAY with the `k`th stream's id as the last one, as
/// nginx does when a connection has served its `keepalive_requests`:
/// streams opened after it are ignored (the client must treat them as
/// never processed). Returns the address and the log of streams opened.
async fn serve_frames<F>(
    script: F,
    rotate_after: Option<usize>,
) -> (SocketAddr, Arc<Mutex<Vec<Opened>>>)
where
    F: Fn(usize, usize) -> Act + Send + Sync + 'static,
{
    serve_frames_goaway(script, rotate_after, 0).await
}

/// [`serve_frames`] whose GOAWAY carries `goaway_code` (0: NO_ERROR, a
/// graceful shutdown).
async fn serve_frames_goaway<F>(
    script: F,
    rotate_after: Option<usize>,
    goaway_code: u32,
) -> (SocketAddr, Arc<Mutex<Vec<Opened>>>)
where
    F: Fn(usize, usize) -> Act + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<Opened>>> = Arc::default();
    let script = Arc::new(script);
    let acceptor = acceptor();
    let l = log.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            stream.set_nodelay(true).unwrap();
            let (acceptor, script, log) = (acceptor.clone(), script.clone(), l.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = frames(tls, conn, &*script, (rotate_after, goaway_code), &log).await;
            });
        }
    });
    (addr, log)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn frames<S, F>(
    mut io: S,
    conn: usize,
    script: &F,
    (rotate_after, goaway_code): (Option<usize>, u32),
    log: &Mutex<Vec<Opened>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(usize, usize) -> Act,
{
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;

    let mut preface = [0; 24];
    io.read_exact(&mut preface).await?;
    assert_eq!(preface, PREFACE);
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    io.flush().await?;
    // Streams waiting for their request's end, with what to do then.
    let mut open: HashMap<u32, Act> = HashMap::new();
    let mut opened = 0;
    let mut last: Option<u32> = None;
    let mut silent = false;
    loop {
        let mut head = [0; 9];
        if io.read_exact(&mut head).await.is_err() {
            return Ok(());
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).await?;
        if silent {
            continue;
        }
        let mut out = Vec::new();
        let mut ended = flags & END_STREAM != 0;
        match kind {
            SETTINGS if flags & ACK == 0 => out.extend(frame(SETTINGS, ACK, 0, &[])),
            PING if flags & ACK == 0 => out.extend(frame(PING, ACK, 0, &payload)),
            HEADERS => {
                // The first field of h2's encoding is `:method`, indexed
                // from HPACK's static table (2 GET, 3 POST).
                let method = match payload.first() {
                    Some(0x82) => Method::GET,
                    Some(0x83) => Method::POST,
                    _ => Method::OPTIONS,
                };
                log.lock().unwrap().push(Opened {
                    conn,
                    id,
                    method,
                    body: Vec::new(),
                });
                if last.is_some_and(|last| id > last) {
                    continue; // past our GOAWAY: never processed
                }
                let act = script(conn, opened);
                opened += 1;
                if rotate_after == Some(opened) {
                    last = Some(id);
                    let mut goaway = id.to_be_bytes().to_vec();
                    goaway.extend_from_slice(&goaway_code.to_be_bytes());
                    out.extend(frame(GOAWAY, 0, 0, &goaway));
                }
                match act {
                    Act::Refuse => {
                        out.extend(frame(RST_STREAM, 0, id, &REFUSED_STREAM.to_be_bytes()));
                        ended = false;
                    }
                    act => {
                        open.insert(id, act);
                    }
                }
            }
            DATA => {
                // No padding: h2 sends none.
                let mut log = log.lock().unwrap();
                if let Some(o) = log.iter_mut().rev().find(|o| (o.conn, o.id) == (conn, id)) {
                    o.body.extend_from_slice(&payload);
                }
            }
            _ => ended = false,
        }
        if ended && let Some(act) = open.remove(&id) {
            match act {
                Act::ResetAfterRead(code) => {
                    out.extend(frame(RST_STREAM, 0, id, &code.to_be_bytes()));
                }
                act => {
                    // `:status: 200` is entry 8 of HPACK's static table.
                    out.extend(frame(HEADERS, END_HEADERS, id, &[0x88]));
                    out.extend(frame(DATA, END_STREAM, id, b"ok"));
                    silent = act == Act::AnswerThenSilence;
                }
            }
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
        }
    }
}

// ---------------------------------------------------------------- clients

/// A client for `https://localhost:<port>/` at `addr`, trusting the test CA.
fn client(addr: SocketAddr) -> ClientBuilder {
    Client::builder()
        .tls_config(support::test_tls_config())
        .resolver(table_resolver(&[("localhost", addr)]))
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

fn request(method: Method, url: &str) -> Request<Full<Bytes>> {
    let body = if method == Method::POST {
        Full::new(Bytes::from_static(b"{\"prompt\":\"hi\"}"))
    } else {
        Full::default()
    };
    Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .unwrap()
}

// ------------------------------------------- 1. limits over one connection

/// Holds each request until `limit` have been at the server at once (so the
/// peak reaches the limit by design, not by luck), then answers; `/warm`
/// is answered at once. Returns the handler and the peak of requests in
/// flight at the server.
fn peak_server(limit: usize) -> (Handler, Arc<Mutex<(usize, usize)>>) {
    let seen: Arc<Mutex<(usize, usize)>> = Arc::default();
    let reached = Arc::new(tokio::sync::watch::channel(0usize).0);
    let s = seen.clone();
    let h = handler(move |req| {
        let (seen, reached) = (s.clone(), reached.clone());
        let warm = req.uri().path() == "/warm";
        async move {
            if warm {
                return respond(200).body(Chunks::full("ok")).unwrap();
            }
            let peak = {
                let mut s = seen.lock().unwrap();
                s.0 += 1;
                s.1 = s.1.max(s.0);
                s.1
            };
            reached.send_replace(peak);
            // Bounded: a limit below `limit` shows as a low peak, not a
            // hang (on the paused clock this fires only once nothing moves).
            let mut rx = reached.subscribe();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|peak| *peak >= limit))
                    .await;
            seen.lock().unwrap().0 -= 1;
            respond(200).body(Chunks::full("ok")).unwrap()
        }
    });
    (h, seen)
}

/// Sends `n` requests at once, cycling through `methods`; their outcomes in order.
async fn burst(
    client: &Client,
    url: &str,
    methods: &[Method],
    n: usize,
) -> Vec<Result<u16, String>> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let req = request(methods[i % methods.len()].clone(), url);
        let c = client.clone();
        set.spawn(async move {
            let outcome = c.oneshot(req).await;
            (
                i,
                outcome
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string()),
            )
        });
    }
    let mut out = vec![Err("not run".to_string()); n];
    while let Some(done) = set.join_next().await {
        let (i, outcome) = done.unwrap();
        out[i] = outcome;
    }
    out
}

#[tokio::test(start_paused = true)]
async fn host_concurrency_bounds_streams_on_one_h2_connection() {
    let (h, seen) = peak_server(8);
    let server = serve_h2(h, None).await;
    let client = client(server.addr)
        .host_default(KeyLimit::new().concurrency(8))
        .build()
        .unwrap();
    let url = url(server.addr, "/");
    let resp = client.get(&format!("{url}warm")).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let start = Instant::now();
    let results = burst(&client, &url, &[Method::GET, Method::POST], 50).await;
    assert!(results.iter().all(|r| *r == Ok(200)), "{results:?}");
    assert_eq!(start.elapsed(), Duration::ZERO, "no hold ran out");
    assert_eq!(
        seen.lock().unwrap().1,
        8,
        "the peak of streams at the server"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(server.used(), 1, "every stream on one connection");
}

/// hyper's client learns the server's SETTINGS_MAX_CONCURRENT_STREAMS
/// (4, below the host's 16) and queues the rest on the one connection:
/// it opens no other, and nothing fails.
#[tokio::test(start_paused = true)]
async fn a_server_stream_cap_below_the_host_limit_queues_on_one_connection() {
    let (h, seen) = peak_server(4);
    let server = serve_h2(h, Some(4)).await;
    let client = client(server.addr)
        .host_default(KeyLimit::new().concurrency(16))
        .build()
        .unwrap();
    let url = url(server.addr, "/");
    client.get(&format!("{url}warm")).await.unwrap();
    let start = Instant::now();
    let results = burst(&client, &url, &[Method::GET, Method::POST], 40).await;
    assert!(results.iter().all(|r| *r == Ok(200)), "{results:?}");
    assert_eq!(start.elapsed(), Duration::ZERO, "no hold ran out");
    assert_eq!(seen.lock().unwrap().1, 4, "the server's cap held");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(server.used(), 1);
}

/// On a fresh connection the client opens streams before the server's
/// SETTINGS are in (h2 assumes 100 until then), and the server refuses
/// those past its cap with REFUSED_STREAM: never processed, so POSTs are
/// sent again as GETs are, and every request succeeds.
#[tokio::test(start_paused = true)]
async fn streams_refused_past_the_servers_cap_on_a_fresh_connection_are_retried() {
    let (h, seen) = peak_server(4);
    let server = serve_h2(h, Some(4)).await;
    let client = client(server.addr)
        .host_default(KeyLimit::new().concurrency(16))
        .build()
        .unwrap();
    let results = burst(&client, &url(server.addr, "/"), &[Method::POST], 16).await;
    assert!(results.iter().all(|r| *r == Ok(200)), "{results:?}");
    assert_eq!(seen.lock().unwrap().1, 4);
    // hyper-util started a connection for each of the first callers and
    // kept the first to agree on h2; all streams went on that one.
    assert_eq!(server.used(), 1);
}

// ------------------------------------------ 2. REFUSED_STREAM and GOAWAY

fn opened_by(log: &Mutex<Vec<Opened>>, method: &Method) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|o| o.method == *method)
        .count()
}

/// A stream reset with REFUSED_STREAM before the server processed it is
/// sent again, whatever its method (RFC 9113 §8.7); hyper-util's own retry
/// of canceled requests does not cover it (the stream had been opened).
#[tokio::test(start_paused = true)]
async fn a_refused_stream_is_retried_for_get_and_post() {
    for method in [Method::GET, Method::POST] {
        let (addr, log) = serve_frames(first_stream(Act::Refuse), None).await;
        let client = client(addr).build().unwrap();
        let resp = client
            .oneshot(request(method.clone(), &url(addr, "/")))
            .await;
        assert_eq!(resp.unwrap().body().as_ref(), b"ok", "{method}");
        assert_eq!(
            opened_by(&log, &method),
            2,
            "{method}: refused, then answered"
        );
    }
}

/// The POST sent again after a refusal carries its whole body: the client
/// keeps the copy for retries whatever the method, not only for idempotent
/// ones (a POST could not be resent otherwise).
#[tokio::test(start_paused = true)]
async fn a_refused_post_is_sent_again_with_its_body() {
    let (addr, log) = serve_frames(first_stream(Act::Refuse), None).await;
    let client = client(addr).build().unwrap();
    let resp = client
        .oneshot(request(Method::POST, &url(addr, "/")))
        .await
        .unwrap();
    assert_eq!(resp.body().as_ref(), b"ok");
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "refused, then answered: {log:?}");
    assert_eq!(log[1].method, Method::POST);
    assert_eq!(log[1].body, b"{\"prompt\":\"hi\"}", "{log:?}");
}

/// ... within the retry settings: with retries off, or the budget empty,
/// the refusal is returned.
#[tokio::test(start_paused = true)]
async fn a_refused_stream_is_returned_when_no_retry_is_left() {
    for retry in [
        None,
        Some(RetryLayer::builder().budget(0, 0.0).build().unwrap()),
    ] {
        let (addr, log) = serve_frames(|_, _| Act::Refuse, None).await;
        let builder = client(addr);
        let client = match retry {
            None => builder.no_retry(),
            Some(retry) => builder.retry(retry),
        }
        .build()
        .unwrap();
        let err = client
            .oneshot(request(Method::POST, &url(addr, "/")))
            .await
            .unwrap_err();
        assert!(!err.is_timeout() && !err.is_connect(), "{err}");
        assert_eq!(opened_by(&log, &Method::POST), 1);
    }
}

/// A stream reset with INTERNAL_ERROR after the server read the request
/// may have run: a POST is not sent again, a GET is.
#[tokio::test(start_paused = true)]
async fn a_stream_reset_after_it_was_read_is_retried_for_get_only() {
    for (method, sent) in [(Method::POST, 1), (Method::GET, 2)] {
        let (addr, log) =
            serve_frames(first_stream(Act::ResetAfterRead(INTERNAL_ERROR)), None).await;
        let client = client(addr).build().unwrap();
        let outcome = client
            .oneshot(request(method.clone(), &url(addr, "/")))
            .await;
        assert_eq!(
            outcome.is_ok(),
            method == Method::GET,
            "{method}: {outcome:?}"
        );
        assert_eq!(opened_by(&log, &method), sent, "{method}");
    }
}

/// GOAWAY naming a last stream below streams in flight: those were not
/// processed, and go again on a new connection, POSTs included; the one
/// at the last id is answered on the old connection, once.
#[tokio::test(start_paused = true)]
async fn streams_above_a_goaways_last_id_are_retried_on_a_new_connection() {
    for method in [Method::GET, Method::POST] {
        // Two streams a connection: the warm-up GET, then the first of three.
        let (addr, log) = serve_frames(|_, _| Act::Answer, Some(2)).await;
        let client = client(addr).build().unwrap();
        let url = url(addr, "/");
        client.get(&url).await.unwrap();
        let results = burst(&client, &url, std::slice::from_ref(&method), 3).await;
        assert!(
            results.iter().all(|r| *r == Ok(200)),
            "{method}: {results:?}"
        );
        let log = log.lock().unwrap();
        let on = |conn| {
            log.iter()
                .filter(|o| o.conn == conn && o.method == method)
                .count()
        };
        // Connection 0: the warm-up GET and the three; connection 1: the
        // two never processed.
        let first = if method == Method::GET { 4 } else { 3 };
        assert_eq!((on(0), on(1)), (first, 2), "{method}: {log:?}");
    }
}

/// A GOAWAY with an error code (here ENHANCE_YOUR_CALM) rather than a
/// graceful NO_ERROR: the streams past its last id still go again for a
/// GET, but a POST is returned as an error, as reqwest does too. hyper may
/// hand a stream sent just before an error GOAWAY the connection's error
/// although the server read it, and a POST must not be sent twice.
#[tokio::test(start_paused = true)]
async fn an_error_goaway_retries_gets_but_not_posts() {
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    for method in [Method::GET, Method::POST] {
        let (addr, log) = serve_frames_goaway(|_, _| Act::Answer, Some(2), ENHANCE_YOUR_CALM).await;
        let client = client(addr).build().unwrap();
        let url = url(addr, "/");
        client.get(&url).await.unwrap();
        let results = burst(&client, &url, std::slice::from_ref(&method), 3).await;
        let ok = results.iter().filter(|r| **r == Ok(200)).count();
        let log = log.lock().unwrap();
        let again = log
            .iter()
            .filter(|o| o.conn == 1 && o.method == method)
            .count();
        if method == Method::GET {
            assert_eq!((ok, again), (3, 2), "{method}: {results:?} {log:?}");
        } else {
            assert_eq!((ok, again), (1, 0), "{method}: {results:?} {log:?}");
        }
    }
}

/// A server rotating connections (GOAWAY after its second answer, as
/// nginx does after `keepalive_requests`): sequential POSTs each go once,
/// the next one on a new connection. hyper and hyper-util handle this
/// below the preset (the client never opens a stream past the GOAWAY).
#[tokio::test(start_paused = true)]
async fn connections_rotated_by_goaway_lose_no_request() {
    let (addr, log) = serve_frames(|_, _| Act::Answer, Some(2)).await;
    let client = client(addr).no_retry().build().unwrap();
    let url = url(addr, "/");
    for _ in 0..12 {
        let resp = client
            .clone()
            .oneshot(request(Method::POST, &url))
            .await
            .unwrap();
        assert_eq!(resp.body().as_ref(), b"ok");
    }
    let log = log.lock().unwrap();
    let conns: HashSet<usize> = log.iter().map(|o| o.conn).collect();
    assert_eq!(log.len(), 12, "each POST opened once: {log:?}");
    assert_eq!(conns.len(), 6);
}

// ---------------------------------------------------- 3. body cap, slow body

/// `Chunks` that count, in `dropped`, the bodies the server dropped before
/// their end (their stream was reset).
struct Tracked {
    inner: Chunks,
    dropped: Arc<AtomicUsize>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !http_body::Body::is_end_stream(&self.inner) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A body over the cap fails with the cap's error and its stream is reset
/// (the server stops sending); the streams beside it on the connection
/// get their whole bodies, and the connection's flow-control window is not
/// used up by the capped streams' unread data (8 MiB bodies cut at 1.5 MiB,
/// 18 times, on a 5 MiB connection window).
#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_resets_its_stream_and_spares_the_others() {
    const CHUNK: usize = 16 * 1024;
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let h: AnyHandler<Tracked> = Arc::new(move |req| {
        let chunks = if req.uri().path() == "/big" { 512 } else { 64 };
        let dropped = d.clone();
        Box::pin(async move {
            let inner = Chunks::new(chunks, CHUNK, Duration::ZERO);
            http::Response::new(Tracked { inner, dropped })
        })
    });
    let server = serve_h2(h, None).await;
    let cap = 96 * CHUNK;
    let client = client(server.addr).max_response_body(cap).build().unwrap();
    let (big, small) = (url(server.addr, "/big"), url(server.addr, "/small"));
    assert_eq!(client.get(&small).await.unwrap().body().len(), 64 * CHUNK);
    let mut set = JoinSet::new();
    for i in 0..16 {
        let (c, url) = (client.clone(), if i % 2 == 0 { &big } else { &small });
        let url = url.clone();
        set.spawn(async move { (url.ends_with("big"), c.get(&url).await) });
    }
    let check = |is_big: bool, outcome: Result<http::Response<Bytes>, tower_fanout_http::Error>| {
        if is_big {
            let err = outcome.unwrap_err();
            assert!(err.is_body_too_large(), "{err}");
            let source = std::error::Error::source(&err).unwrap();
            assert_eq!(source.downcast_ref::<BodyTooLarge>().unwrap().limit(), cap);
        } else {
            assert_eq!(outcome.unwrap().body().len(), 64 * CHUNK);
        }
    };
    while let Some(done) = set.join_next().await {
        let (is_big, outcome) = done.unwrap();
        check(is_big, outcome);
    }
    for _ in 0..10 {
        check(true, client.get(&big).await);
    }
    check(false, client.get(&small).await);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    // Each reset reaches the server, which drops the body it was sending.
    tokio::time::timeout(Duration::from_secs(10), async {
        while dropped.load(Ordering::SeqCst) < 18 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 18);
}

/// A body that trickles (a chunk a second, for 100 s) hits the attempt
/// timeout at exactly 10 s; the streams opened beside it meanwhile are
/// answered at once, and the connection serves on after its reset.
#[tokio::test(start_paused = true)]
async fn a_slow_body_times_out_without_stalling_its_siblings() {
    let server = serve_h2(
        handler(|req| async move {
            if req.uri().path() == "/slow" {
                respond(200)
                    .body(Chunks::new(100, 10, Duration::from_secs(1)))
                    .unwrap()
            } else {
                respond(200).body(Chunks::full("quick")).unwrap()
            }
        }),
        None,
    )
    .await;
    let client = client(server.addr)
        .timeout(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    let (slow, quick) = (url(server.addr, "/slow"), url(server.addr, "/quick"));
    client.get(&quick).await.unwrap();
    let start = Instant::now();
    let slow = tokio::spawn({
        let c = client.clone();
        async move { (c.get(&slow).await, start.elapsed()) }
    });
    // Each second, while the slow body trickles, eight quick ones.
    for second in 0..5 {
        let results = burst(&client, &quick, &[Method::GET], 8).await;
        assert!(results.iter().all(|r| *r == Ok(200)), "{results:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(second));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (outcome, after) = slow.await.unwrap();
    assert!(outcome.unwrap_err().is_timeout());
    assert_eq!(after, Duration::from_secs(10));
    assert_eq!(client.get(&quick).await.unwrap().body().as_ref(), b"quick");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

// ----------------------------------------- 4. Retry-After, learned budgets

/// A 429 with `Retry-After` is waited out and retried (a POST too), and
/// `x-ratelimit-*` fields (lower case, as h2 requires) hold the next call
/// until the reset: over h2 as over HTTP/1.
#[tokio::test(start_paused = true)]
async fn retry_after_and_learned_budgets_over_h2() {
    let (h, hits) = support::counted(|n| async move {
        match n {
            0 => respond(429).header("retry-after", "2"),
            1 => respond(200)
                .header("x-ratelimit-limit", "1")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", "3"),
            _ => respond(200),
        }
        .body(Chunks::full("ok"))
        .unwrap()
    });
    let server = serve_h2(h, None).await;
    let client = client(server.addr).build().unwrap();
    let url = url(server.addr, "/");
    let start = Instant::now();
    let resp = client
        .clone()
        .oneshot(request(Method::POST, &url))
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, Version::HTTP_2)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2), "the 429's wait");
    assert_eq!(client.get(&url).await.unwrap().status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(5), "held to the reset");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

// ------------------------------------------------ 5. redirects and guard

/// Over h2 and TLS: a redirect to another origin (another port) drops
/// `Authorization` and `Cookie`, one on the same origin keeps them; with
/// the address guard on, a redirect to a name resolving to a private
/// address is refused before any connection to it.
#[tokio::test(start_paused = true)]
async fn redirects_over_h2_strip_credentials_across_origins_and_pass_the_guard() {
    type Seen = Arc<Mutex<Vec<(String, bool, bool, Version)>>>;
    let seen: Seen = Arc::default();
    let record = |seen: &Seen, req: &Request<Incoming>| {
        seen.lock().unwrap().push((
            req.uri().path().to_string(),
            req.headers().contains_key("authorization"),
            req.headers().contains_key("cookie"),
            req.version(),
        ));
    };
    let s = seen.clone();
    let b = serve_h2(
        handler(move |req| {
            record(&s, &req);
            async { respond(200).body(Chunks::full("landed")).unwrap() }
        }),
        None,
    )
    .await;
    let (s, b_port) = (seen.clone(), b.addr.port());
    let a = serve_h2(
        handler(move |req| {
            record(&s, &req);
            let to = match req.uri().path() {
                "/cross" => Some((302, format!("https://localhost:{b_port}/landing"))),
                "/same" => Some((307, "/same-landing".to_string())),
                "/private" => Some((302, "https://internal.test/".to_string())),
                _ => None,
            };
            async move {
                match to {
                    Some((status, location)) => respond(status)
                        .header("location", location)
                        .body(Chunks::empty())
                        .unwrap(),
                    None => respond(200).body(Chunks::full("same")).unwrap(),
                }
            }
        }),
        None,
    )
    .await;
    let client = client(a.addr).build().unwrap();
    let send = |path: &str| {
        let req = Request::get(url(a.addr, path))
            .header("authorization", "Bearer secret")
            .header("cookie", "session=1")
            .body(Full::<Bytes>::default())
            .unwrap();
        client.clone().oneshot(req)
    };
    assert_eq!(send("/cross").await.unwrap().body().as_ref(), b"landed");
    assert_eq!(send("/same").await.unwrap().body().as_ref(), b"same");
    let h2 = Version::HTTP_2;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("/cross".into(), true, true, h2),
            ("/landing".into(), false, false, h2),
            ("/same".into(), true, true, h2),
            ("/same-landing".into(), true, true, h2),
        ]
    );

    let guarded = Client::builder()
        .tls_config(support::test_tls_config())
        .resolver(table_resolver(&[
            ("localhost", a.addr),
            ("internal.test", "10.1.1.1:443".parse().unwrap()),
        ]))
        .address_guard(true)
        // Stands in for a public address: the test has only loopback.
        .address_guard_allow(a.addr.ip())
        .build()
        .unwrap();
    let err = guarded.get(&url(a.addr, "/private")).await.unwrap_err();
    assert!(err.is_refused_address(), "{err}");
}

// ------------------------------------------------------- 6. keep-alive

/// A pooled connection that goes silent (a NAT or a load balancer that
/// forgot it, a peer gone without a FIN) holds every later stream to the
/// host: by default the client pings a connection with streams open that
/// has read nothing for 30 s, closes it when no answer comes within 20 s,
/// and the GET goes again on a new connection. (Without pings the GET ran
/// into its 30 s timeout, which is not retried, and the next requests to
/// the host went to the same dead connection.)
#[tokio::test(start_paused = true)]
async fn a_silent_pooled_connection_is_found_by_ping_and_replaced() {
    let (addr, log) = serve_frames(first_stream(Act::AnswerThenSilence), None).await;
    let client = client(addr).build().unwrap();
    let url = url(addr, "/");
    client.get(&url).await.unwrap();
    // Idle for a minute: pooled still (90 s), and not pinged while idle.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let start = Instant::now();
    let resp = client.get(&url).await;
    let waited = start.elapsed();
    assert_eq!(resp.unwrap().body().as_ref(), b"ok");
    // Pinged at once (nothing read for 60 s), given up after 20 s, then
    // one backoff (50 to 100 ms) before the retry.
    assert!(
        waited >= Duration::from_millis(20_050) && waited <= Duration::from_millis(20_100),
        "{waited:?}"
    );
    client.get(&url).await.unwrap();
    // The silent connection logs nothing past its first stream.
    let conns: Vec<usize> = log.lock().unwrap().iter().map(|o| o.conn).collect();
    assert_eq!(conns, [0, 1, 1]);
}

/// Keep-alive settings a connection cannot work with fail at build, saying
/// which; ones past any real need (`Duration::MAX`) work as "never" and do
/// not overflow the deadline hyper computes when it pings (a panic in the
/// connection's task, which lost the connection and its streams).
#[tokio::test(start_paused = true)]
async fn http2_keep_alive_settings_fail_at_build_or_work() {
    let err = Client::builder()
        .http2_keep_alive_interval(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("http2_keep_alive_interval"),
        "{err}"
    );
    let err = Client::builder()
        .http2_keep_alive_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("http2_keep_alive_timeout"),
        "{err}"
    );
    for interval in [Some(Duration::from_secs(1)), Some(Duration::MAX), None] {
        let server = serve_h2(
            handler(|_| async { respond(200).body(Chunks::full("ok")).unwrap() }),
            None,
        )
        .await;
        let client = client(server.addr)
            .http2_keep_alive_interval(interval)
            .http2_keep_alive_timeout(Duration::MAX)
            .build()
            .unwrap();
        let url = url(server.addr, "/");
        client.get(&url).await.unwrap();
        // Idle past the interval: the next stream is pinged at once.
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.get(&url).await.unwrap();
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "{interval:?}");
    }
}

// ------------------------------------------------ 7. HTTP/2 prior knowledge

/// A handler that answers with the HTTP version the request came in.
fn version_echo() -> Handler {
    handler(|req| async move {
        let version = format!("{:?}", req.version());
        respond(200).body(Chunks::full(version)).unwrap()
    })
}

/// `http2_prior_knowledge` speaks HTTP/2 in cleartext (h2c), to a server
/// that takes either: a burst that finds the host cold waits for one
/// connection and shares it. Without it the client speaks HTTP/1.1, one
/// connection per request in flight.
#[tokio::test(start_paused = true)]
async fn prior_knowledge_speaks_h2c_over_one_connection() {
    for (prior, version, connections) in [(true, "HTTP/2.0", 1), (false, "HTTP/1.1", 10)] {
        let (addr, accepted) = support::serve_counting(version_echo()).await;
        let client = Client::builder()
            .http2_prior_knowledge(prior)
            .host_default(KeyLimit::new().concurrency(10))
            .build()
            .unwrap();
        let mut set = JoinSet::new();
        for i in 0..10 {
            let c = client.clone();
            let url = format!("http://{addr}/{i}");
            set.spawn(async move { c.get(&url).await });
        }
        while let Some(done) = set.join_next().await {
            let resp = done.unwrap().unwrap();
            assert_eq!(resp.body().as_ref(), version.as_bytes(), "prior {prior}");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            connections,
            "prior {prior}"
        );
    }
}

/// Over TLS, negotiating by ALPN, a burst that finds an h2 host cold opens
/// a connection for each request before any of them knows the host speaks
/// HTTP/2 (hyper-util's pool cannot tell yet); with prior knowledge the
/// burst waits for one connection and shares it.
#[tokio::test(start_paused = true)]
async fn prior_knowledge_opens_one_connection_to_a_cold_tls_host() {
    for (prior, expect_one) in [(true, true), (false, false)] {
        let server = serve_h2(version_echo(), None).await;
        let client = client(server.addr)
            .http2_prior_knowledge(prior)
            .host_default(KeyLimit::new().concurrency(8))
            .build()
            .unwrap();
        let results = burst(&client, &url(server.addr, "/"), &[Method::GET], 8).await;
        assert!(results.iter().all(|r| *r == Ok(200)), "{results:?}");
        let accepted = server.accepted.load(Ordering::SeqCst);
        assert_eq!(
            accepted == 1,
            expect_one,
            "prior {prior}: {accepted} connections"
        );
        assert_eq!(
            server.used(),
            1,
            "prior {prior}: every stream on one connection"
        );
    }
}

/// Accepts TLS connections with `acceptor` on 127.0.0.1, counting the TCP
/// connections; whatever the handshake's fate, serves `ok` over HTTP/2 on
/// the ones that complete it.
async fn counting_tls_server(
    acceptor: tokio_rustls::TlsAcceptor,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(respond(200).body(Chunks::full("ok")).unwrap())
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A certificate the client does not trust fails the same way on every
/// attempt: it is not retried (it was, 4 handshakes and three backoffs
/// from the shared retry budget), and the message names the setting that
/// trusts a private CA. Found by a user trial.
#[tokio::test(start_paused = true)]
async fn an_untrusted_certificate_is_not_retried_and_says_how_to_trust_it() {
    let (addr, accepted) = counting_tls_server(acceptor()).await;
    // The default roots (Mozilla's), which do not hold the test CA.
    let untrusting = Client::builder()
        .resolver(table_resolver(&[("localhost", addr)]))
        .build()
        .unwrap();
    let err = untrusting.get(&url(addr, "/")).await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_connect(), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(text.contains("`ClientBuilder::tls_config`"), "{text}");
    assert!(!text.contains("attempts"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one handshake");

    // Trusted, the same server answers.
    let trusting = client(addr).build().unwrap();
    assert_eq!(trusting.get(&url(addr, "/")).await.unwrap().status(), 200);
}

/// Under TLS 1.3 a server that requires a client certificate says so with
/// a fatal alert after the client's handshake is done, so the missing
/// certificate surfaces on the request, not the connect: it was retried as
/// a lost connection (a GET, 4 handshakes). Found by a user trial.
#[tokio::test(start_paused = true)]
async fn a_fatal_tls_alert_on_the_request_is_not_retried() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(support::TEST_CA.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(include_bytes!("fixtures/server.pem"))
            .collect::<Result<_, _>>()
            .unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(include_bytes!("fixtures/server.key"))
            .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let (addr, accepted) =
        counting_tls_server(tokio_rustls::TlsAcceptor::from(Arc::new(config))).await;

    let err = client(addr)
        .build()
        .unwrap()
        .get(&url(addr, "/"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("CertificateRequired"), "{text}");
    assert!(!text.contains("attempts"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one handshake");
}

/// With prior knowledge the client offers only `h2` over TLS: a server
/// without HTTP/2 fails the handshake (a connect error, at once) rather
/// than being sent frames it cannot read.
#[tokio::test(start_paused = true)]
async fn prior_knowledge_fails_the_handshake_of_an_http1_only_tls_server() {
    let acceptor = support::tls_acceptor(&[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(respond(200).body(Chunks::full("ok")).unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let negotiating = client(addr).build().unwrap();
    let resp = negotiating.get(&url(addr, "/")).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);

    let prior = client(addr).http2_prior_knowledge(true).build().unwrap();
    let start = Instant::now();
    let err = prior.get(&url(addr, "/")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}
