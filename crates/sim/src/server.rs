//! The simulated downstream as a real HTTP/1 server on the loopback interface.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::Sim;

/// How long the server stops accepting after an accept fails.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// A running loopback server; [`shutdown`](Self::shutdown) stops it.
///
/// Dropping the handle stops it too (connections in progress are cut).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    /// Sent, or dropped with the handle: either way the server stops.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, cuts open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Reads the request body to its end while the answer is prepared, and
/// answers 400 without it (the slot given back) if the body breaks off.
///
/// hyper notices a client that hangs up only while it reads the connection,
/// and stops reading it when a request body is left unread: a client gone
/// mid-body then held its slot to the end of the latency (for a silent drop,
/// until shutdown).
async fn answer(
    mut body: Incoming,
    response: impl Future<Output = Response<crate::Body>>,
) -> Response<crate::Body> {
    let mut response = std::pin::pin!(response);
    loop {
        tokio::select! {
            biased;
            answer = &mut response => return answer,
            frame = body.frame() => match frame {
                Some(Ok(_)) => {}
                None => return response.await,
                Some(Err(_)) => {
                    let mut bad = Response::new(crate::Body::default());
                    *bad.status_mut() = StatusCode::BAD_REQUEST;
                    return bad;
                }
            },
        }
    }
}

impl Sim {
    /// Serves this downstream over HTTP/1 on `127.0.0.1`, on a free port.
    ///
    /// Each request is admitted when its head arrives; its body, if any, is
    /// read and discarded. A client that hangs up gives its slot back; a
    /// request whose body breaks off is answered 400.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub async fn serve(&self) -> std::io::Result<ServerHandle> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let sim = self.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            // After a failed accept, a short pause before the next one (the
            // connections already open go on being served meanwhile).
            let mut pause = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
            let mut paused = false;
            loop {
                tokio::select! {
                    // A stop, or the handle dropped (its sender closed).
                    _ = &mut stop_rx => break,
                    () = &mut pause, if paused => paused = false,
                    accepted = listener.accept(), if !paused => {
                        let Ok((stream, _)) = accepted else {
                            // Out of file descriptors (EMFILE, as under a
                            // client with no limit) lasts until a connection
                            // closes: retrying at once spun a core meanwhile.
                            pause.as_mut().reset(Instant::now() + ACCEPT_PAUSE);
                            paused = true;
                            continue;
                        };
                        let sim = sim.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |req: Request<Incoming>| {
                                let response = sim.respond();
                                async move {
                                    let answer = answer(req.into_body(), response).await;
                                    Ok::<_, std::convert::Infallible>(answer)
                                }
                            });
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            connections.shutdown().await;
        });
        Ok(ServerHandle {
            addr,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}
