//! Scripted hyper servers on 127.0.0.1 and a resolver that never leaves the machine.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Sleep;

/// A response body: `chunks` chunks of `size` bytes, `delay` apart, no length
/// announced (so the client cannot refuse it up front).
pub(crate) struct Chunks {
    left: usize,
    size: usize,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    full: Option<Bytes>,
}

impl Chunks {
    pub(crate) fn new(chunks: usize, size: usize, delay: Duration) -> Self {
        Self {
            left: chunks,
            size,
            delay,
            sleep: None,
            full: None,
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            left: 0,
            size: 0,
            delay: Duration::ZERO,
            sleep: None,
            full: Some(bytes.into()),
        }
    }

    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(full) = self.full.take() {
            return Poll::Ready((!full.is_empty()).then(|| Ok(Frame::data(full))));
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if !self.delay.is_zero() {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.size])))))
    }

    fn is_end_stream(&self) -> bool {
        self.full.as_ref().is_some_and(|b| b.is_empty()) || (self.full.is_none() && self.left == 0)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.full {
            Some(b) => SizeHint::with_exact(b.len() as u64),
            None => SizeHint::default(),
        }
    }
}

pub(crate) type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Chunks>> + Send>>
        + Send
        + Sync,
>;

pub(crate) fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Chunks>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A handler that counts the requests it gets, and the count: `f` answers
/// each request given its number (0 for the first).
pub(crate) fn counted<F, Fut>(f: F) -> (Handler, Arc<AtomicUsize>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Chunks>> + Send + 'static,
{
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    (handler(move |_| f(h.fetch_add(1, Ordering::SeqCst))), hits)
}

/// A server on its own thread answering request `n` with `script(n)`: a
/// status and a `Retry-After`.
pub(crate) fn scripted(
    script: impl Fn(usize) -> (u16, Option<&'static str>) + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let (counting, hits) = counted(move |n| {
        let (status, after) = script(n);
        async move {
            let mut r = respond(status);
            if let Some(after) = after {
                r = r.header("retry-after", after);
            }
            r.body(Chunks::full("answer")).unwrap()
        }
    });
    (serve_on_thread(counting), hits)
}

/// Sends `client` a POST whose body never ends, to a server on its own
/// thread; returns the call's error, how long it took on the test's (paused)
/// clock, and how many requests the server got.
pub(crate) async fn stalled_post<S>(client: S) -> (S::Error, Duration, usize)
where
    S: tower::Service<Request<Stalled>>,
    S::Response: std::fmt::Debug,
{
    let (addr, hits) = scripted(|_| (200, None));
    let req = Request::post(format!("http://{addr}/"))
        .body(Stalled)
        .unwrap();
    let (err, took) = failed_call(client, req).await;
    (err, took, hits.load(Ordering::SeqCst))
}

/// Sends `req` through `client` and awaits its failure, for at most an hour
/// of the test's (paused) clock; returns the error and how long it took.
pub(crate) async fn failed_call<S, R>(client: S, req: R) -> (S::Error, Duration)
where
    S: tower::Service<R>,
    S::Response: std::fmt::Debug,
{
    let start = tokio::time::Instant::now();
    let call = tower::ServiceExt::oneshot(client, req);
    let outcome = tokio::time::timeout(Duration::from_secs(3600), call).await;
    let err = outcome.expect("still waiting after an hour").unwrap_err();
    (err, start.elapsed())
}

/// A request body that never yields a frame nor ends.
pub(crate) struct Stalled;

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

/// A port on 127.0.0.1 that nobody listens on: bound (so no other socket
/// can take it while the test holds the socket) but never listening, so
/// every connection attempt is refused. Keep the socket until the test ends.
pub(crate) fn closed_port() -> (SocketAddr, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// Serves `handler` on a fresh 127.0.0.1 port (HTTP/1 and HTTP/2) on the current runtime.
pub(crate) async fn serve(handler: Handler) -> SocketAddr {
    serve_counting(handler).await.0
}

/// [`serve`], counting the connections the server accepts.
pub(crate) async fn serve_counting(handler: Handler) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(accept_loop(listener, handler, accepted.clone()));
    (addr, accepted)
}

/// Serves `handler` from its own thread and runtime, on the real clock, so a
/// test runtime on the paused clock sees none of the server's timers.
pub(crate) fn serve_on_thread(handler: Handler) -> SocketAddr {
    on_own_thread(|| serve(handler))
}

/// [`serve_tls`] from its own thread and runtime, on the real clock.
pub(crate) fn serve_tls_on_thread(handler: Handler) -> SocketAddr {
    on_own_thread(|| serve_tls(handler))
}

/// Runs `start` (which spawns a server on the current runtime and returns
/// its address) on a thread and runtime of its own, kept alive for ever.
fn on_own_thread<F, Fut>(start: F) -> SocketAddr
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = SocketAddr>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(start().await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

async fn accept_loop(listener: TcpListener, handler: Handler, accepted: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub(crate) fn respond(status: u16) -> http::response::Builder {
    Response::builder().status(status)
}

/// A resolver from a fixed table: no DNS, no packet leaves the machine.
pub(crate) fn table_resolver(
    table: &[(&str, SocketAddr)],
) -> impl tower::Service<
    Name,
    Response = std::vec::IntoIter<SocketAddr>,
    Error = std::io::Error,
    Future = std::future::Ready<Result<std::vec::IntoIter<SocketAddr>, std::io::Error>>,
> + Clone
+ Send
+ Sync
+ 'static {
    let table: Arc<HashMap<String, SocketAddr>> =
        Arc::new(table.iter().map(|(h, a)| (h.to_string(), *a)).collect());
    tower::service_fn(move |name: Name| {
        std::future::ready(match table.get(name.as_str()) {
            Some(addr) => Ok(vec![*addr].into_iter()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not in the test table",
            )),
        })
    })
}

/// The test CA (PEM), which signed `fixtures/server.pem` for `localhost` and 127.0.0.1.
pub(crate) const TEST_CA: &str = include_str!("../fixtures/ca.pem");

/// A TLS acceptor for the fixtures' `localhost` certificate, offering the
/// `alpn` protocols.
pub(crate) fn tls_acceptor(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(include_bytes!("../fixtures/server.pem"))
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../fixtures/server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Serves `handler` over TLS (ALPN h2 and http/1.1) on a fresh 127.0.0.1 port.
pub(crate) async fn serve_tls(handler: Handler) -> SocketAddr {
    let acceptor = tls_acceptor(&[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A rustls client configuration that trusts only the test CA.
pub(crate) fn test_tls_config() -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(TEST_CA.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Sends one request (body `payload`) to `addr` through `retry` over a
/// forwarding `service_fn` (a bare hyper-util client: no timers of its own);
/// returns the outcome and the paused-clock offset of each attempt.
/// (Generic over the layer because this module is also built inside the
/// crate, where the crate is not `tower_fanout_http`.)
pub(crate) async fn through_retry<L, S>(
    retry: &L,
    addr: SocketAddr,
    method: http::Method,
) -> (Result<Response<Bytes>, tower::BoxError>, Vec<Duration>)
where
    L: tower::Layer<RawForward, Service = S>,
    S: tower::Service<Request<http_body_util::Full<Bytes>>, Response = Response<Bytes>>,
    S::Error: Into<tower::BoxError>,
{
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    let raw: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let start = tokio::time::Instant::now();
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = attempts.clone();
    let forward =
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            a.lock().unwrap().push(start.elapsed());
            let raw = raw.clone();
            async move {
                let resp = raw.request(req).await?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, tower::BoxError>(Response::from_parts(parts, body))
            }
        }));
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let outcome = retry.layer(forward).oneshot(req).await.map_err(Into::into);
    let attempts = attempts.lock().unwrap().clone();
    (outcome, attempts)
}

/// The service [`through_retry`] puts under the layer: a bare hyper-util
/// client that reads each body whole.
pub(crate) type RawForward = tower::util::BoxCloneService<
    Request<http_body_util::Full<Bytes>>,
    Response<Bytes>,
    tower::BoxError,
>;
