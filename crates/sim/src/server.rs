//! The simulated downstream as a real HTTP/1 server on the loopback interface.

use std::net::SocketAddr;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::Sim;

/// A running loopback server; [`shutdown`](Self::shutdown) stops it.
///
/// Dropping the handle stops it too (connections in progress are cut).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
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

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Sim {
    /// Serves this downstream over HTTP/1 on `127.0.0.1`, on a free port.
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
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let sim = sim.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |_req| {
                                let response = sim.respond();
                                async move { Ok::<_, std::convert::Infallible>(response.await) }
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
