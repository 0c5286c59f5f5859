//! Edge cases found in review: URLs the HTTP stack would misread, and MCP
//! tool calls as large as `--max-items` allows.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower_fanout_sim::{Jitter, Model, Sim};

mod support;
use support::{run, spawn};

/// A port past 65535 read as no port, so `http://host:99999/` went to the
/// scheme's default port (80) and its answer was reported for the item.
/// It is bad input now, in `fetch` and in the MCP tool alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_out_of_range_is_bad_input() {
    let sim = Sim::new(
        Model::new().latency(Duration::from_millis(1), Jitter::None),
        1,
    );
    let server = sim.serve().await.unwrap();
    let addr = server.addr();
    let input = format!("http://{addr}/ok\nhttp://127.0.0.1:99999/\n");
    let out = run(&["fetch", "--allow-private"], &input).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("port 99999"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    assert_eq!(sim.stats().arrivals, 0, "bad input sent no request");
}

/// Writes one JSON-RPC message as a line.
async fn send(stdin: &mut tokio::process::ChildStdin, message: &Value) {
    let mut line = serde_json::to_vec(message).unwrap();
    line.push(b'\n');
    stdin.write_all(&line).await.unwrap();
    stdin.flush().await.unwrap();
}

/// A tool call as large as `--max-items` allows (16 KiB an item, as
/// `fetch` reads) got no answer when its line passed rmcp's default 16 MiB
/// line cap: the server dropped it unread, and the client waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_within_max_items_is_answered_however_long_its_line() {
    const ITEMS: usize = 1100;
    let mut child = spawn(&["mcp", "--max-items", &ITEMS.to_string()]);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Each item takes exactly 16 KiB with its comma (`{"url":"…"},`): the
    // whole list is as long as --max-items allows, and the message around
    // it must fit in the line cap's slack.
    const URL_LEN: usize = 16 * 1024 - r#"{"url":""},"#.len();
    let mut items: Vec<Value> = (0..ITEMS)
        .map(|i| {
            let url = format!("https://example.test/{i:05}/");
            json!({"url": format!("{url}{}", "a".repeat(URL_LEN - url.len()))})
        })
        .collect();
    // The last item is bad: the whole batch is refused before anything is
    // fetched, and the answer names it, which shows the line was read.
    items[ITEMS - 1] = json!({"url": format!("not a url {}", "a".repeat(URL_LEN - 10))});
    let call = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "batch_fetch_urls", "arguments": {"items": items}},
    });
    let list = serde_json::to_vec(&call["params"]["arguments"]["items"]).unwrap();
    assert_eq!(
        list.len(),
        ITEMS * 16 * 1024 + 1,
        "[ + items + ] - last comma"
    );
    assert!(serde_json::to_vec(&call).unwrap().len() > 16 << 20);
    send(
        &mut stdin,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "edge-review", "version": "1"}}}),
    )
    .await;
    send(
        &mut stdin,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    send(&mut stdin, &call).await;
    let answer = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == json!(2) {
                return message;
            }
        }
        panic!("the server closed its output without answering the call");
    })
    .await
    .expect("the tool call was answered");
    let text = answer.to_string();
    assert_eq!(answer["result"]["isError"], json!(true), "{text}");
    assert!(text.contains(&format!("item {ITEMS}")), "{text}");
    drop(stdin);
}

/// Flags that make no stack are refused before the input is read: a user
/// typing URLs, or a pipe whose writer is slow, learns at once, not at the
/// end of the input. (stdin stays open here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_refused_before_the_input_is_read() {
    let mut child = spawn(&["fetch", "--rate", "1/h", "--burst", "4000000000"]);
    let _stdin = child.stdin.take().unwrap();
    let out = support::finish(child, Duration::from_secs(30)).await;
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("years"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
