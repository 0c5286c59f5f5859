//! The connect timeout, on loopback only: a listener that never accepts and
//! whose accept backlog is full makes the kernel drop further connection
//! attempts, so a connect hangs until the client gives up.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::time::Instant;
use tower_fanout_http::Client;

/// A listener on 127.0.0.1 that accepts nothing, with its backlog filled;
/// `None` if this system answers connects to a full backlog instead of
/// letting them hang (Linux lets them hang).
fn hanging_listener() -> Option<(tokio::net::TcpListener, Vec<TcpStream>, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => queued.push(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Some((listener, queued, addr));
            }
            Err(e) => {
                eprintln!("connect to a full backlog failed at once ({e}): test skipped");
                return None;
            }
        }
    }
    eprintln!("the backlog never filled: test skipped");
    None
}

/// [`hanging_listener`], which must work on Linux (the test fails there
/// when it does not); `None` (the test skipped) only on other systems.
fn hanging_listener_unless_unsupported()
-> Option<(tokio::net::TcpListener, Vec<TcpStream>, SocketAddr)> {
    let found = hanging_listener();
    if cfg!(target_os = "linux") {
        Some(found.expect("on Linux a connect to a full accept backlog hangs; here it did not"))
    } else {
        found
    }
}

/// A GET to `addr` without retries, with these timeouts: its error, and how
/// long it took on the paused clock.
async fn get_with(
    addr: SocketAddr,
    connect_timeout: Option<Duration>,
    timeout: Duration,
) -> (tower_fanout_http::Error, Duration) {
    let client = Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(Some(timeout))
        .no_retry()
        .build()
        .unwrap();
    let start = Instant::now();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    (err, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_hanging_connect_fails_after_the_connect_timeout() {
    let Some((_listener, _queued, addr)) = hanging_listener_unless_unsupported() else {
        return;
    };
    let (err, waited) = get_with(addr, Some(Duration::from_secs(2)), Duration::from_secs(60)).await;
    assert!(err.is_connect(), "{err:?}");
    assert!(
        !err.is_timeout(),
        "the connect timeout, not the attempt's: {err:?}"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "failed after {waited:?} on the paused clock"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_connect_timeout_the_attempt_timeout_ends_the_wait() {
    let Some((_listener, _queued, addr)) = hanging_listener_unless_unsupported() else {
        return;
    };
    let (err, waited) = get_with(addr, None, Duration::from_secs(5)).await;
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5100),
        "failed after {waited:?} on the paused clock"
    );
}

/// A peer that accepts the TCP connection and never answers the TLS hello:
/// the connect timeout covers the handshake too, so the call fails there
/// as a connect error. It covered the TCP connect alone, and without an
/// attempt timeout the call waited as long as the peer held the socket.
#[tokio::test]
async fn a_tls_handshake_that_never_ends_fails_after_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let client = Client::builder()
        .connect_timeout(Some(Duration::from_millis(300)))
        .timeout(None)
        .no_retry()
        .build()
        .unwrap();
    let start = std::time::Instant::now();
    let url = format!("https://{addr}/");
    let call = client.get(&url);
    let err = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the handshake was not bounded")
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(err.to_string().contains("connect timeout"), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    held.abort();
}

/// A connect timeout is retried as any failure to connect is (3 retries by
/// default), each attempt with the whole connect timeout: the call takes
/// four of them and the backoffs between (50-100, 100-200 and 200-400 ms),
/// past the attempt `timeout`, which bounds each attempt, not the call. The
/// error says how many attempts were made.
#[tokio::test(start_paused = true)]
async fn a_connect_timeout_is_retried_each_attempt_with_the_whole_timeout() {
    let Some((_listener, _queued, addr)) = hanging_listener_unless_unsupported() else {
        return;
    };
    let client = Client::builder()
        .connect_timeout(Some(Duration::from_secs(2)))
        .timeout(Some(Duration::from_secs(3)))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = client.get(&format!("http://{addr}/")).await.unwrap_err();
    let waited = start.elapsed();
    assert!(err.is_connect(), "{err:?}");
    let text = err.to_string();
    assert!(text.ends_with(" (after 4 attempts)"), "{text}");
    assert!(
        waited >= Duration::from_millis(8_350) && waited <= Duration::from_millis(8_700),
        "failed after {waited:?} on the paused clock"
    );
}
