//! What a tower user expects of the client preset's public types, checked at
//! compile time, and the request bodies a tower-http, tonic or hyper user
//! has: the `Client` takes any `Send` body, `Sync` or not (hyper's
//! `Incoming`, http-body-util's `UnsyncBoxBody`, which tonic's body wraps),
//! and a stack of core's layers over it boxes into a `BoxCloneSyncService`.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};
use support::{Chunks, handler, serve};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::AdaptiveLimitLayer;
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};
use tower_fanout_core::rate::RateLimitLayer;
use tower_fanout_http::retry::{Retry, RetryBuilder, RetryLayer};
use tower_fanout_http::{
    BodyTooLarge, Client, ClientBuilder, ClientClassify, Error, RequestBodyTooLarge, TimedOut,
    TooManyRedirects,
};

/// What `tokio::spawn` and `BoxCloneSyncService` ask of a client for
/// requests with body `B`.
fn assert_client_of<B, S>(_: &S)
where
    S: Service<Request<B>> + Clone + Send + Sync + Debug + 'static,
    S::Future: Send + 'static,
{
}

#[test]
fn values_are_debug_send_sync_and_errors_are_errors() {
    fn value<T: Clone + Debug + Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    fn builder<T: Debug + Send + Sync>() {}
    value::<Client>();
    value::<RetryLayer>();
    value::<RetryBuilder>();
    value::<ClientClassify>();
    value::<tower_fanout_http::headers::Budget>();
    builder::<ClientBuilder>();
    error::<Error>();
    error::<BodyTooLarge>();
    error::<RequestBodyTooLarge>();
    error::<TimedOut>();
    error::<TooManyRedirects>();
    error::<tower_fanout_http::guard::RefusedAddress>();
    fn retry<S: Clone + Debug + Send + Sync + 'static>() {
        value::<Retry<S>>();
    }
    retry::<Client>();
}

/// The client takes the bodies other tower stacks produce, `Sync` or not.
#[test]
fn the_client_takes_the_bodies_tower_users_have() {
    let client = Client::builder().build().unwrap();
    assert_client_of::<Full<Bytes>, _>(&client);
    assert_client_of::<Empty<Bytes>, _>(&client);
    assert_client_of::<String, _>(&client);
    assert_client_of::<BoxBody<Bytes, BoxError>, _>(&client);
    assert_client_of::<UnsyncBoxBody<Bytes, BoxError>, _>(&client);
    assert_client_of::<UnsyncBoxBody<Bytes, std::io::Error>, _>(&client);
    // A proxy forwarding what its server received.
    assert_client_of::<hyper::body::Incoming, _>(&client);
    // The client copies each chunk out as it reads it: the chunk type need
    // not be `Send` (only the body is kept across polls).
    assert_client_of::<LocalChunks, _>(&client);
}

/// A chunk that is not `Send`.
struct LocalChunk(Bytes, std::marker::PhantomData<std::rc::Rc<()>>);

impl bytes::Buf for LocalChunk {
    fn remaining(&self) -> usize {
        self.0.remaining()
    }
    fn chunk(&self) -> &[u8] {
        self.0.chunk()
    }
    fn advance(&mut self, n: usize) {
        self.0.advance(n);
    }
}

/// A `Send` body whose chunks are not `Send`.
struct LocalChunks(Option<Bytes>);

impl http_body::Body for LocalChunks {
    type Data = LocalChunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<LocalChunk>, Infallible>>> {
        let chunk = self
            .0
            .take()
            .map(|b| LocalChunk(b, std::marker::PhantomData));
        std::task::Poll::Ready(chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

fn unsync_body(text: &'static str) -> UnsyncBoxBody<Bytes, BoxError> {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// Core's layers over the client, in the recommended order, with a request
/// body that is neither `Sync` nor `Clone`: the stack boxes into a
/// `BoxCloneSyncService` and posts its body to a loopback server.
#[tokio::test]
async fn core_layers_over_the_client_box_and_send_an_unsync_body() {
    let addr = serve(handler(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(Chunks::full(body))
    }))
    .await;
    let client = Client::builder().build().unwrap();
    let stack = ServiceBuilder::new()
        .layer(RateLimitLayer::new(100, Duration::from_secs(1)).unwrap())
        .layer(
            KeyedLimitLayer::builder(KeyLimit::new().concurrency(2))
                .build()
                .unwrap(),
        )
        .layer(AdaptiveLimitLayer::default().classify(ClientClassify))
        .layer(ConcurrencyLimitLayer::new(4).unwrap())
        .service(client);
    assert_client_of::<UnsyncBoxBody<Bytes, BoxError>, _>(&stack);
    let boxed: BoxCloneSyncService<
        Request<UnsyncBoxBody<Bytes, BoxError>>,
        Response<Bytes>,
        BoxError,
    > = BoxCloneSyncService::new(stack);

    let req = Request::post(format!("http://{addr}/echo"))
        .body(unsync_body("hello"))
        .unwrap();
    let response = tokio::spawn(boxed.oneshot(req)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "hello");
}

/// A body whose chunks are not `Send` is read and sent.
#[tokio::test]
async fn the_client_sends_a_body_whose_chunks_are_not_send() {
    let addr = serve(handler(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(Chunks::full(body))
    }))
    .await;
    let client = Client::builder().build().unwrap();
    let req = Request::post(format!("http://{addr}/echo"))
        .body(LocalChunks(Some(Bytes::from_static(b"local"))))
        .unwrap();
    let response = tokio::spawn(client.oneshot(req)).await.unwrap().unwrap();
    assert_eq!(response.body(), "local");
}

/// The retry layer alone over any service of `http::Request`, boxed.
#[tokio::test]
async fn the_retry_layer_boxes_over_a_service_fn() {
    let server = service_fn(|req: Request<String>| async move {
        Ok::<_, Infallible>(Response::new(req.into_body()))
    });
    let retry = RetryLayer::builder().max_retries(1).build().unwrap();
    let boxed: BoxCloneSyncService<Request<String>, Response<String>, BoxError> =
        BoxCloneSyncService::new(ServiceBuilder::new().layer(retry).service(server));
    let response = tokio::spawn(boxed.oneshot(Request::new("hi".to_owned())))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.body(), "hi");
}
