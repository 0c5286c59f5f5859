//! Second review of the batch commands, from a batch user's side: each test
//! showed a defect before its fix.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tower_fanout_sim::{Jitter, Model, Sim};

mod support;
use support::{BIN, Run, finish};

/// How long each `fanout` run here may take before the test fails (and
/// the child is killed: every child is spawned with `kill_on_drop`).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `fanout args` with a standard output nobody reads (the read end of
/// its pipe is closed before it starts, as after `| head -0` or `| true`).
async fn with_stdout_closed(args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    finish(child, TIMEOUT).await
}

/// `fanout demo` printed its table with `print!`, which panics when the
/// write fails: with its output piped to a reader that had gone, it died
/// with "failed printing to stdout: Broken pipe", a backtrace and exit code
/// 101. It now says it cannot write its results and exits 2, as `fetch`
/// does.
#[tokio::test]
async fn demo_into_a_closed_pipe_fails_without_a_panic() {
    for args in [
        &["demo", "--requests", "1"][..],
        &["demo", "--requests", "1", "--json"][..],
    ] {
        let Run { code, stderr, .. } = with_stdout_closed(args).await;
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write the results"),
            "{args:?}: {stderr}"
        );
    }
}

/// `fanout fetch ... 2>&1 | head -1`: standard output and error are one
/// pipe, and once its reader is gone the failed write of a record ends the
/// batch with a message on standard error, which `eprintln!` turned into a
/// panic (exit code 101, unseen). It now exits 2 as with only standard
/// output closed, having sent no more than a window of requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_into_a_closed_pipe_with_stderr_joined_exits_2() {
    let sim = Sim::new(
        Model::new()
            .latency(Duration::from_millis(5), Jitter::None)
            .body_bytes(10),
        1,
    );
    let server = sim.serve().await.unwrap();
    let input: String = (1..=50)
        .map(|i| format!("http://{}/{i}\n", server.addr()))
        .collect();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(BIN)
        .args(["fetch", "--allow-private", "--concurrency", "2"])
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let run = finish(child, TIMEOUT).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    // The first record could not be written: the batch stopped there.
    assert!(sim.stats().arrivals <= 4, "{:?}", sim.stats());
}

/// Bad input with standard error closed: exit 2 (bad input), not a panic.
#[tokio::test]
async fn bad_input_with_stderr_closed_exits_2() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(BIN)
        .args(["fetch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(writer)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"not a url\n").await.unwrap();
    drop(stdin);
    let run = finish(child, TIMEOUT).await;
    assert_eq!(run.code, Some(2), "{run:?}");
}
