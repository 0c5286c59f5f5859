//! `ClientClassify`: how an adaptive limit over the client reads its errors.
//! Core's `HttpClassify` does not know this crate's errors: the address
//! guard's refusal after DNS (and the port check), wrapped in hyper-util's
//! connect error, is a plain failure to it and the caller's mistake here.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use support::{Chunks, respond, serve, table_resolver};
use tower_fanout_core::classify::{Classify, HttpClassify, Outcome};
use tower_fanout_http::{Client, ClientClassify};

type Response = http::Response<bytes::Bytes>;

fn outcomes(err: &tower_fanout_http::Error) -> (Outcome, Outcome) {
    let err: &(dyn std::error::Error + 'static) = err;
    (
        Classify::<Response>::classify(&HttpClassify, Err(err)),
        Classify::<Response>::classify(&ClientClassify, Err(err)),
    )
}

/// A name resolving to a loopback address is refused by the guard inside
/// hyper-util's connect error: a failure to `HttpClassify` (overload, which
/// cut a shared limit, before it stopped reading every connect error so),
/// the caller's mistake to `ClientClassify`. So is a port past 65535.
#[tokio::test]
async fn guard_refusals_and_bad_ports_are_the_callers_mistake() {
    let addr = serve(support::handler(|_| async {
        respond(200).body(Chunks::full("reached")).unwrap()
    }))
    .await;
    let client = Client::builder()
        .resolver(table_resolver(&[("inside.test", addr)]))
        .address_guard(true)
        .no_retry()
        .build()
        .unwrap();
    let err = client
        .get(&format!("http://inside.test:{}/", addr.port()))
        .await
        .unwrap_err();
    assert!(err.is_refused_address(), "{err}");
    assert_eq!(outcomes(&err), (Outcome::Failure, Outcome::CallerError));
    // The refusal's own message, once: it read "address refused by the
    // guard: client error (Connect): address guard refused ...".
    let text = err.to_string();
    assert!(
        text.starts_with("address guard refused inside.test (127.0.0.1)"),
        "{text}"
    );
    assert_eq!(text.matches("refused").count(), 1, "{text}");
    // And how to get past it when reaching the address is meant.
    assert!(
        text.contains("address_guard_allow(127.0.0.1)") && text.contains("address_guard(false)"),
        "{text}"
    );

    let err = client.get("http://inside.test:99999/").await.unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert_eq!(outcomes(&err), (Outcome::Failure, Outcome::CallerError));
}

/// A host written as an IP address was named twice, "address guard
/// refused 127.0.0.1 (127.0.0.1)"; it is named once, with the way past.
#[tokio::test]
async fn a_refused_ip_literal_is_named_once() {
    let client = Client::builder()
        .address_guard(true)
        .no_retry()
        .build()
        .unwrap();
    for (url, host, ip) in [
        ("http://127.0.0.1:1/", "127.0.0.1", "127.0.0.1"),
        ("http://[::1]:1/", "[::1]", "::1"),
    ] {
        let err = client.get(url).await.unwrap_err();
        assert!(err.is_refused_address(), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("address guard refused {host}: ")),
            "{text}"
        );
        assert!(
            text.contains(&format!("address_guard_allow({ip})")),
            "{text}"
        );
    }
}

/// An attempt past the client's `timeout` is overload, as a timeout is to
/// core's classifier: `HttpClassify` does not know this crate's `TimedOut`
/// and read it as a plain failure, so an adaptive limit over the client
/// never lowered for a downstream too slow to answer.
#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_is_overload() {
    let addr = serve(support::handler(|_| async {
        std::future::pending::<()>().await;
        unreachable!("the handler never answers")
    }))
    .await;
    let client = Client::builder()
        .timeout(Some(Duration::from_secs(1)))
        .no_retry()
        .build()
        .unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(outcomes(&err), (Outcome::Failure, Outcome::Overload));
}

/// A body over the cap is the caller's cap, not the downstream's load; a
/// refused connection is a host down, not busy: a failure, as
/// `HttpClassify` says.
#[tokio::test]
async fn caps_are_the_callers_and_refused_connections_are_failures() {
    let addr = serve(support::handler(|_| async {
        respond(200)
            .body(Chunks::full(vec![b'x'; 64 * 1024]))
            .unwrap()
    }))
    .await;
    let client = Client::builder()
        .max_response_body(1024)
        .no_retry()
        .build()
        .unwrap();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    assert!(err.is_body_too_large(), "{err}");
    assert_eq!(outcomes(&err).1, Outcome::CallerError);

    // Bound and never listening, for the whole test: a dropped listener's
    // port could go to a parallel test's server.
    let (closed, _held) = support::closed_port();
    let err = client.get(&format!("http://{closed}/")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(outcomes(&err), (Outcome::Failure, Outcome::Failure));
}

/// A name that does not resolve is a failure; a connect that does not
/// finish within the connect timeout is overload (a host too busy to
/// accept looks like that), to both classifiers.
#[tokio::test(start_paused = true)]
async fn an_unknown_name_is_a_failure_and_a_connect_timeout_overload() {
    let client = Client::builder()
        .resolver(table_resolver(&[]))
        .no_retry()
        .build()
        .unwrap();
    let err = client.get("http://gone.test/").await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(outcomes(&err), (Outcome::Failure, Outcome::Failure));

    // A resolver that never answers: the connect timeout covers DNS too.
    let client = Client::builder()
        .resolver(tower::service_fn(
            |_: hyper_util::client::legacy::connect::dns::Name| {
                std::future::pending::<
                    Result<std::vec::IntoIter<std::net::SocketAddr>, std::io::Error>,
                >()
            },
        ))
        .connect_timeout(Some(Duration::from_secs(2)))
        .no_retry()
        .build()
        .unwrap();
    let err = client.get("http://slow.test/").await.unwrap_err();
    assert!(err.is_connect() || err.is_timeout(), "{err}");
    assert_eq!(outcomes(&err), (Outcome::Overload, Outcome::Overload));
}

/// A user trial's case: one dead host among the hosts that share an
/// adaptive limit (the keyed limit above it, as the adaptive docs advise).
/// Its refused connections read as overload and cut the limit every host
/// shares, to 1-2 from 60 on the real clock; the healthy host's calls fell
/// from 731 to 52 a second. Now they leave it where it is. AIMD, whose
/// only move down is an overload: the gradient default also settles an
/// idle limit towards the demand it saw (from 5 to 4.5 in a round that saw
/// 3 calls at once), which made the check depend on scheduling.
#[tokio::test]
async fn a_dead_host_does_not_cut_the_limit_other_hosts_share() {
    use tower::{ServiceBuilder, ServiceExt};
    use tower_fanout_core::adaptive::{AdaptiveLimitLayer, AimdController};
    use tower_fanout_core::keyed::{KeyLimit, KeyedLimitLayer};

    let (closed, _held) = support::closed_port();
    let client = Client::builder()
        .address_guard(false)
        .no_retry()
        .build()
        .unwrap();
    for classify in ["HttpClassify", "ClientClassify"] {
        let adaptive = AdaptiveLimitLayer::new(AimdController::builder().build().unwrap());
        let handle = adaptive.handle();
        let before = handle.limit();
        let keyed = KeyedLimitLayer::builder(KeyLimit::new().concurrency(40))
            .build()
            .unwrap();
        let stack = match classify {
            "HttpClassify" => ServiceBuilder::new()
                .layer(keyed)
                .layer(adaptive)
                .service(client.clone())
                .boxed_clone(),
            _ => ServiceBuilder::new()
                .layer(keyed)
                .layer(adaptive.classify(ClientClassify))
                .service(client.clone())
                .boxed_clone(),
        };
        // Four callers to the dead host, for 300 ms each.
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let stack = stack.clone();
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let mut refused = 0;
                    while started.elapsed() < Duration::from_millis(300) && refused < 2_000 {
                        let req = http::Request::get(format!("http://{closed}/"))
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap();
                        let err = stack.clone().oneshot(req).await.unwrap_err();
                        assert!(err.to_string().contains("onnect"), "{err}");
                        refused += 1;
                    }
                    refused
                })
            })
            .collect();
        let mut refused = 0;
        for caller in callers {
            refused += caller.await.unwrap();
        }
        assert!(refused >= 8, "{classify}: only {refused} calls made");
        assert!(
            handle.limit() >= before,
            "{classify}: {refused} refused connections cut the shared limit from {before} to {}",
            handle.limit()
        );
    }
}

/// Responses are read as `HttpClassify` reads them, and `Retry-After` as an
/// HTTP-date is read too (`HttpClassify` reads only seconds).
#[test]
fn responses_and_retry_after_dates() {
    let resp = |status: u16, after: Option<String>| {
        let mut b = http::Response::builder().status(status);
        if let Some(after) = after {
            b = b.header("retry-after", after);
        }
        b.body(bytes::Bytes::new()).unwrap()
    };
    for status in [200, 301, 404, 429, 500, 503] {
        let r = resp(status, None);
        assert_eq!(
            ClientClassify.classify(Ok(&r)),
            HttpClassify.classify(Ok(&r)),
            "{status}"
        );
    }
    let r = resp(429, Some("7".into()));
    assert_eq!(ClientClassify.retry_after(&r), Some(Duration::from_secs(7)));
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    let r = resp(429, Some(date));
    assert_eq!(HttpClassify.retry_after(&r), None);
    let wait = ClientClassify.retry_after(&r).unwrap();
    // The date is to the second, and read a moment later.
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
}

/// Wraps an error as another layer's error would (its `source()` is the
/// wrapped one).
#[derive(Debug)]
struct Wrapped(tower_fanout_http::BoxError);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a layer above failed")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// As the CLI stacks it: a retry layer over the client (its own retries
/// off), errors boxed. Two 503s are retried, the third attempt runs past
/// the timeout, and that is the loop's final error: overload, read through
/// the `BoxError` and through another layer's error around it.
#[tokio::test(start_paused = true)]
async fn a_retry_loops_final_timeout_is_overload_through_boxes_and_wrappers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};

    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = serve(support::handler(move |_| {
        let n = h.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                return respond(503).body(Chunks::full("busy")).unwrap();
            }
            std::future::pending::<()>().await;
            unreachable!("the handler never answers")
        }
    }))
    .await;
    let client = Client::builder()
        .timeout(Some(Duration::from_secs(1)))
        .no_retry()
        .build()
        .unwrap();
    let stack = tower_fanout_http::retry::RetryLayer::builder()
        .build()
        .unwrap()
        .layer(ServiceExt::<
            http::Request<http_body_util::Full<bytes::Bytes>>,
        >::map_err(client, tower_fanout_http::BoxError::from));
    let req = http::Request::get(format!("http://{addr}/"))
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    let err = stack.oneshot(req).await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let classify = |err: &(dyn std::error::Error + 'static)| {
        Classify::<Response>::classify(&ClientClassify, Err(err))
    };
    assert_eq!(classify(&*err), Outcome::Overload, "{err}");
    let wrapped = Wrapped(err);
    assert_eq!(classify(&wrapped), Outcome::Overload);
}

/// The time a response spent waiting on purpose below the adaptive limit
/// (a per-host gate's `DeliberateWait`) is read as `HttpClassify` reads it.
#[test]
fn the_deliberate_wait_is_read_as_core_reads_it() {
    let mut response = Response::new(bytes::Bytes::new());
    assert_eq!(ClientClassify.waited(&response), Duration::ZERO);
    tower_fanout_core::DeliberateWait::add_to(
        response.extensions_mut(),
        Duration::from_millis(250),
    );
    assert_eq!(ClientClassify.waited(&response), Duration::from_millis(250));
    assert_eq!(
        HttpClassify.waited(&response),
        ClientClassify.waited(&response)
    );
}
