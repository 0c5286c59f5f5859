//! Running the `fanout` binary as a user would: shared by the CLI test
//! crates, each of which uses only part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::process::{Child, Command};

/// The `fanout` binary Cargo built for these tests.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_fanout");

/// How long [`run`] lets `fanout` take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished `fanout` gave back.
#[derive(Debug)]
pub(crate) struct Run {
    /// The exit code; `None` if a signal ended the process.
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Starts `fanout args` with stdin, stdout and stderr piped; the child is
/// killed if the test drops it.
pub(crate) fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit, for at most `within`, and decodes what it
/// wrote (whatever of stdout and stderr the test has not taken).
pub(crate) async fn finish(child: Child, within: Duration) -> Run {
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("fanout finished in time")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs `fanout args` on `stdin` to its end.
pub(crate) async fn run(args: &[&str], stdin: &str) -> Run {
    let mut child = spawn(args);
    let mut input = child.stdin.take().unwrap();
    // A child that refuses its flags exits without reading: a broken pipe
    // here is part of that answer, not a failure.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    finish(child, TIMEOUT).await
}

/// An MCP client of `fanout args` (`args` starting with `mcp`), run as a
/// child process.
pub(crate) async fn mcp_client(args: &[&str]) -> RunningService<RoleClient, ()> {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    // A server that never answers the handshake fails the test here, not
    // at the harness's timeout.
    tokio::time::timeout(
        Duration::from_secs(30),
        ().serve(TokioChildProcess::new(cmd).unwrap()),
    )
    .await
    .expect("fanout mcp answered the handshake in time")
    .unwrap()
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
