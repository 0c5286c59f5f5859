//! `fanout fetch` writes each record as soon as it and the ones before it
//! are done, and an interrupt (Ctrl-C) keeps every answer it got.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower_fanout_sim::{Jitter, Model, Sim};

mod support;
use support::{finish, spawn};

fn sim(latency: Duration) -> Sim {
    Sim::new(
        Model::new().latency(latency, Jitter::None).body_bytes(10),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_out_as_they_finish_and_an_interrupt_keeps_them() {
    stopped_by("INT", 130, "interrupted: 3 of 4 written").await;
}

/// SIGTERM is how `timeout`, `docker stop` and agent runners stop a
/// process: a user trial's run ended with nothing written and no summary
/// (exit 143 from the default action), both finished answers lost. It
/// ends the batch as Ctrl-C does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_batch_as_an_interrupt_does() {
    stopped_by("TERM", 143, "interrupted (SIGTERM): 3 of 4 written").await;
}

/// Runs a batch whose third item hangs, stops it with `signal` once the
/// fourth is answered, and checks the records and the summary.
async fn stopped_by(signal: &str, code: i32, says: &str) {
    let (fast, slow) = (sim(Duration::from_millis(5)), sim(Duration::from_secs(600)));
    let (fast_server, slow_server) = (fast.serve().await.unwrap(), slow.serve().await.unwrap());
    // Two quick items, a slow one, a quick one behind it.
    let input = format!(
        "http://{f}/1\nhttp://{f}/2\nhttp://{s}/3\nhttp://{f}/4\n",
        f = fast_server.addr(),
        s = slow_server.addr()
    );
    let mut child = spawn(&["fetch", "--allow-private", "--timeout", "10min"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ids = Vec::new();
    for _ in 0..2 {
        // Before, nothing was written until the slow item ended, 10 minutes on.
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a record while the slow item runs")
            .unwrap()
            .unwrap();
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        ids.push(record["id"].as_str().unwrap().to_string());
    }
    // In input order: item 4 is done too, but waits behind item 3.
    assert_eq!(ids, ["1", "2"]);
    // Wait until item 4 has been answered, then interrupt.
    let started = tokio::time::Instant::now();
    while fast.stats().successes < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "item 4 was never answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The server has sent item 4's 10-byte answer; fanout (another
    // process, which no clock here can pause) reads it in well under a
    // millisecond on loopback. A second is room for a loaded machine.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = child.id().unwrap().to_string();
    // The shell's builtin `kill`: `/bin/kill` comes with procps, which a
    // minimal Debian lacks (the redis tests' support signals the same way).
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()
        .unwrap();
    assert!(killed.success());
    // fanout ends at the interrupt.
    let run = finish(child, Duration::from_secs(30)).await;
    assert_eq!(run.code, Some(code), "{}", run.stderr);
    assert!(run.stderr.contains(says), "{}", run.stderr);
    // Item 4 was answered: the interrupt writes it, after the gap, rather
    // than losing it behind item 3.
    let line = lines.next_line().await.unwrap().expect("item 4's record");
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["id"], "4");
    assert_eq!(record["status"], 200);
    assert_eq!(
        lines.next_line().await.unwrap(),
        None,
        "nothing more is written"
    );
}
