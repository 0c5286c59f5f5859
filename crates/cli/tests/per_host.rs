//! `fanout fetch` keeps its window busy across hosts: a host whose items
//! wait for their turn does not hold the slots another host could use.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod support;
use support::run as fanout;

/// How long a held request waits for the condition that releases it before
/// the servers give up (and the test fails): only a defect ever waits so long.
const GIVE_UP: Duration = Duration::from_secs(5);

/// Items of host B: its requests are answered in pairs.
const B_ITEMS: usize = 4;

#[derive(Debug, Default)]
struct Seen {
    a_now: usize,
    a_peak: usize,
    b_now: usize,
    b_peak: usize,
    b_arrived: usize,
    b_served: usize,
    /// Held requests that were released by [`GIVE_UP`], not by their condition.
    gave_up: usize,
}

/// Reads one request's head.
async fn read_head(socket: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

async fn answer(mut socket: TcpStream) {
    let _ = socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
    let _ = socket.shutdown().await;
}

/// Waits until `ready` holds; past [`GIVE_UP`], counts a give-up (which
/// releases every other held request too).
async fn hold(seen: &watch::Sender<Seen>, ready: impl FnMut(&Seen) -> bool) {
    let mut rx = seen.subscribe();
    let mut ready = ready;
    let waited = tokio::time::timeout(GIVE_UP, rx.wait_for(|s| s.gave_up > 0 || ready(s))).await;
    if waited.is_err() {
        seen.send_modify(|s| s.gave_up += 1);
    }
}

/// Host A: slow, as far as fanout can tell: each request is held until
/// host B has answered all its items.
async fn serve_a(listener: TcpListener, seen: watch::Sender<Seen>) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            read_head(&mut socket).await;
            seen.send_modify(|s| {
                s.a_now += 1;
                s.a_peak = s.a_peak.max(s.a_now);
            });
            hold(&seen, |s| s.b_served == B_ITEMS).await;
            // Counted out before the answer: fanout cannot start this host's
            // next request before it has this one's.
            seen.send_modify(|s| s.a_now -= 1);
            answer(socket).await;
        });
    }
}

/// Host B: answers its requests two at a time, each once its pair has
/// arrived: so two are in flight at once, while A holds its own.
async fn serve_b(listener: TcpListener, seen: watch::Sender<Seen>) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            read_head(&mut socket).await;
            let mut arrival = 0;
            seen.send_modify(|s| {
                s.b_now += 1;
                s.b_peak = s.b_peak.max(s.b_now);
                s.b_arrived += 1;
                arrival = s.b_arrived;
            });
            let pair_complete = arrival.next_multiple_of(2);
            hold(&seen, |s| s.b_arrived >= pair_complete).await;
            seen.send_modify(|s| {
                s.b_now -= 1;
                s.b_served += 1;
            });
            answer(socket).await;
        });
    }
}

/// The input lists 6 URLs of host A, then 4 of host B (two ports on
/// 127.0.0.1 are two hosts), with `--concurrency 4 --per-host 2`. A holds
/// its requests until B has answered all of its own. Before the window was
/// keyed by host, it filled with A's first four items: two at A, two
/// waiting for A's per-host slots, and B's items never started while A
/// waited (the servers gave up after 5 s). Now A's extra items are set
/// aside: B's run two at a time while A's first two are still out, and
/// A's go on after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_host_does_not_hold_the_window_from_another() {
    let (seen, _) = watch::channel(Seen::default());
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    tokio::spawn(serve_a(a, seen.clone()));
    tokio::spawn(serve_b(b, seen.clone()));
    let mut input = String::new();
    for i in 0..6 {
        input.push_str(&format!("http://{a_addr}/a{i}\n"));
    }
    for i in 0..B_ITEMS {
        input.push_str(&format!("http://{b_addr}/b{i}\n"));
    }
    let args = [
        "fetch",
        "--allow-private",
        "--concurrency",
        "4",
        "--per-host",
        "2",
        "--retries",
        "0",
        "--timeout",
        "30s",
    ];
    let run = fanout(&args, &input).await;
    let seen = seen.borrow();
    let seen: &Seen = &seen;
    assert_eq!(
        seen.gave_up, 0,
        "a held request was released by the give-up, not by B's answers: {seen:?}"
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(seen.b_served, B_ITEMS);
    assert_eq!(seen.b_peak, 2, "B had its two slots while A held its own");
    // A's first two may reach it before or after B is done (fanout starts
    // them first, but they travel on their own connections): at most two.
    assert!(
        (1..=2).contains(&seen.a_peak),
        "A's per-host limit held: {seen:?}"
    );
    // Records in input order, every one answered.
    let records: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    assert!(records.iter().all(|r| r["ok"] == true), "{}", run.stdout);
}
