//! `fanout fetch` and the MCP tool `batch_fetch_urls` take the same items.
//! Their ids follow one rule in `fanout fetch` (both input forms) and in the
//! MCP tool `batch_fetch_urls`: an id given as a string or an integer is kept,
//! an item without one is named by its number counting from 1 (its line
//! number in the line form), never clashing with an id given to another
//! item, and messages number items the same way.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};
use tower_fanout_sim::{Jitter, Model, Sim};

mod support;
use support::{Run, mcp_client, run};

fn quick_sim() -> Sim {
    Sim::new(
        Model::new().latency(Duration::from_millis(1), Jitter::None),
        1,
    )
}

/// `fanout fetch --allow-private` on `stdin`: the ids of its records, or its
/// message when it refused the input (exit 2).
async fn fetch(stdin: &str) -> Result<Vec<String>, String> {
    let Run {
        code,
        stdout,
        stderr,
    } = run(&["fetch", "--allow-private"], stdin).await;
    match code {
        Some(0) => Ok(stdout
            .lines()
            .map(|l| {
                let record: Value = serde_json::from_str(l).unwrap();
                record["id"].as_str().unwrap().to_string()
            })
            .collect()),
        Some(2) => {
            assert!(stdout.is_empty(), "{stdout}");
            Err(stderr)
        }
        other => panic!("fanout fetch exited {other:?}: {stderr}"),
    }
}

/// `batch_fetch_urls` with `items`: the ids of its results, or the text of
/// the error it answered.
async fn mcp(
    client: &RunningService<RoleClient, ()>,
    items: &Value,
) -> Result<Vec<String>, String> {
    let mut args = serde_json::Map::new();
    args.insert("items".into(), items.clone());
    let call =
        client.call_tool(CallToolRequestParams::new("batch_fetch_urls").with_arguments(args));
    let answer = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the tool answered in time");
    match answer {
        Ok(r) if r.is_error != Some(true) => {
            let page = r.structured_content.unwrap();
            Ok(page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect())
        }
        Ok(r) => Err(serde_json::to_string(&r.content).unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

fn urls(addr: SocketAddr) -> [String; 3] {
    [0, 1, 2].map(|i| format!("http://{addr}/{i}"))
}

/// The MCP tool refused `{"id": 7}` ("invalid type: integer `7`, expected a
/// string") while `fetch` takes the same JSON and names the item "7".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_tool_takes_numeric_ids_as_fetch_does() {
    let sim = quick_sim();
    let server = sim.serve().await.unwrap();
    let [a, b, _] = urls(server.addr());
    let client = mcp_client(&["mcp", "--allow-private"]).await;

    let items = json!([{"id": 7, "url": a}, {"id": "b", "url": b}]);
    assert_eq!(fetch(&items.to_string()).await.unwrap(), ["7", "b"]);
    assert_eq!(mcp(&client, &items).await.unwrap(), ["7", "b"]);

    // Other kinds of id are refused by both, with the same words.
    let items = json!([{"id": true, "url": a}]);
    let from_fetch = fetch(&items.to_string()).await.unwrap_err();
    let from_mcp = mcp(&client, &items).await.unwrap_err();
    for message in [from_fetch, from_mcp] {
        assert!(message.contains("string or an integer"), "{message}");
    }
    assert_eq!(sim.stats().arrivals, 4);
    client.cancel().await.unwrap();
}

/// Line-form ids were 1-based line numbers and JSON-form automatic ids
/// 0-based positions (also in `batch_fetch_urls`), so the same three URLs
/// were named 1, 2, 3 or 0, 1, 2 depending on the form; messages said
/// "item 1" of the second item. Every form counts from 1 now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_ids_count_from_one_in_every_form() {
    let sim = quick_sim();
    let server = sim.serve().await.unwrap();
    let [a, b, c] = urls(server.addr());
    let client = mcp_client(&["mcp", "--allow-private"]).await;

    let lines = format!("{a}\n{b}\n{c}\n");
    assert_eq!(fetch(&lines).await.unwrap(), ["1", "2", "3"]);
    let items = json!([{"url": a}, {"url": b}, {"url": c}]);
    assert_eq!(fetch(&items.to_string()).await.unwrap(), ["1", "2", "3"]);
    assert_eq!(mcp(&client, &items).await.unwrap(), ["1", "2", "3"]);

    // A bad second item is "item 2", as a bad second line is "line 2".
    let from_lines = fetch(&format!("{a}\nftp://x.test/f\n")).await.unwrap_err();
    assert!(from_lines.contains("line 2:"), "{from_lines}");
    let bad = json!([{"url": a}, {"url": "ftp://x.test/f"}]);
    let from_fetch = fetch(&bad.to_string()).await.unwrap_err();
    let from_mcp = mcp(&client, &bad).await.unwrap_err();
    for message in [from_fetch, from_mcp] {
        assert!(message.contains("item 2 (id 2):"), "{message}");
    }
    let missing = fetch(&json!([{"url": a}, {"id": "b"}]).to_string())
        .await
        .unwrap_err();
    assert!(missing.contains("item 2: missing field `url`"), "{missing}");
    assert_eq!(sim.stats().arrivals, 9);
    client.cancel().await.unwrap();
}

/// An item without an id was named by its position even when another item
/// had been given that very id, and the batch was then refused: "id `1`
/// appears more than once" of an input that gave `1` once. An automatic id
/// now steps aside for a given one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_id_never_clashes_with_a_given_one() {
    let sim = quick_sim();
    let server = sim.serve().await.unwrap();
    let [a, b, c] = urls(server.addr());
    let client = mcp_client(&["mcp", "--allow-private"]).await;

    let cases = [
        (json!([{"id": "1", "url": a}, {"url": b}]), ["1", "2"]),
        (json!([{"id": 0, "url": a}, {"url": b}]), ["0", "2"]),
        (json!([{"url": a}, {"id": "1", "url": b}]), ["1.1", "1"]),
        (json!([{"url": a}, {"id": 1, "url": b}]), ["1.1", "1"]),
        (json!([{"url": a}, {"id": "2", "url": b}]), ["1", "2"]),
    ];
    let mut fetched = 0;
    for (items, ids) in cases {
        assert_eq!(fetch(&items.to_string()).await.unwrap(), ids, "{items}");
        assert_eq!(mcp(&client, &items).await.unwrap(), ids, "{items}");
        fetched += 4;
    }
    // Even when the first stand-in is taken too.
    let items = json!([{"url": a}, {"id": "1", "url": b}, {"id": "1.1", "url": c}]);
    assert_eq!(
        fetch(&items.to_string()).await.unwrap(),
        ["1.2", "1", "1.1"]
    );
    assert_eq!(mcp(&client, &items).await.unwrap(), ["1.2", "1", "1.1"]);
    fetched += 6;
    assert_eq!(sim.stats().arrivals, fetched);
    client.cancel().await.unwrap();
}

/// Ids given twice are still refused, and the message names both items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_id_used_twice_is_refused_naming_both_items() {
    let sim = quick_sim();
    let server = sim.serve().await.unwrap();
    let [a, b, c] = urls(server.addr());
    let client = mcp_client(&["mcp", "--allow-private"]).await;

    for items in [
        json!([{"id": "x", "url": a}, {"url": b}, {"id": "x", "url": c}]),
        json!([{"id": 5, "url": a}, {"url": b}, {"id": "5", "url": c}]),
    ] {
        let from_fetch = fetch(&items.to_string()).await.unwrap_err();
        let from_mcp = mcp(&client, &items).await.unwrap_err();
        for message in [from_fetch, from_mcp] {
            assert!(message.contains("items 1 and 3"), "{items}: {message}");
        }
    }
    assert_eq!(sim.stats().arrivals, 0);
    client.cancel().await.unwrap();
}

/// The tool's arguments, `{"items": [...]}`, given to `fetch` were read as
/// the line form ("line 1: `{"items":...` is not a valid URL"); `fetch`
/// takes them as it takes the bare array, so a tool call can be replayed
/// from the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_takes_the_mcp_tools_arguments_too() {
    let sim = quick_sim();
    let server = sim.serve().await.unwrap();
    let [a, b, _] = urls(server.addr());
    let client = mcp_client(&["mcp", "--allow-private"]).await;

    let items = json!([{"id": "x", "url": a}, {"url": b}]);
    let arguments = json!({ "items": items });
    assert_eq!(mcp(&client, &items).await.unwrap(), ["x", "2"]);
    assert_eq!(fetch(&arguments.to_string()).await.unwrap(), ["x", "2"]);
    assert_eq!(
        fetch(&format!("\n  {arguments:#}\n")).await.unwrap(),
        ["x", "2"]
    );

    // What the tool refuses, fetch refuses in the same words.
    let unknown = json!({ "items": items, "limit": 3 });
    let message = fetch(&unknown.to_string()).await.unwrap_err();
    assert!(message.contains("unknown field `limit`"), "{message}");
    let bad = json!({ "items": [{"url": a}, {"url": "ftp://x.test/f"}] });
    let message = fetch(&bad.to_string()).await.unwrap_err();
    assert!(message.contains("item 2 (id 2):"), "{message}");
    assert_eq!(sim.stats().arrivals, 6);
    client.cancel().await.unwrap();
}

/// An array of URL strings was refused by both, naming a Rust type
/// ("expected struct InputItem"); both take a string as `{"url": ...}`,
/// and a record of `fanout fetch` as an item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_strings_and_records_are_items_in_every_form() {
    let sim = quick_sim();
    let server = sim.serve().await.unwrap();
    let [a, b, c] = urls(server.addr());
    let client = mcp_client(&["mcp", "--allow-private"]).await;

    let record = json!({"id": "r", "url": c, "ok": false, "status": 503, "error": null,
        "attempts": 3, "latency_ms": 9, "bytes": 0});
    let items = json!([a, {"id": "b", "url": b}, record]);
    assert_eq!(fetch(&items.to_string()).await.unwrap(), ["1", "b", "r"]);
    assert_eq!(mcp(&client, &items).await.unwrap(), ["1", "b", "r"]);

    let items = json!([a, 5]);
    let from_fetch = fetch(&items.to_string()).await.unwrap_err();
    let from_mcp = mcp(&client, &items).await.unwrap_err();
    for message in [from_fetch, from_mcp] {
        assert!(
            message.contains("a number is not an item") && !message.contains("InputItem"),
            "{message}"
        );
    }
    assert_eq!(sim.stats().arrivals, 6);
    client.cancel().await.unwrap();
}

/// A numeric id serde_json cannot hold exactly was read as a float and
/// printed as one: 12345678901234567890123 and ...124 both became
/// `1.2345678901234568e+22` and were refused as one id given twice, `1e2`
/// became "100.0" and `-0` "-0.0". An integer of up to 64 bits is kept as
/// written; any other number is refused, saying to send it as a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_id_is_kept_as_written_or_refused() {
    let sim = quick_sim();
    let server = sim.serve().await.unwrap();
    let [a, b, _] = urls(server.addr());
    let client = mcp_client(&["mcp", "--allow-private"]).await;

    let text = format!(
        r#"[{{"id":18446744073709551615,"url":"{a}"}},{{"id":-9223372036854775808,"url":"{b}"}}]"#
    );
    let items: Value = serde_json::from_str(&text).unwrap();
    let ids = ["18446744073709551615", "-9223372036854775808"];
    assert_eq!(fetch(&text).await.unwrap(), ids);
    assert_eq!(mcp(&client, &items).await.unwrap(), ids);

    let refused = [
        "12345678901234567890123",
        "18446744073709551616",
        "-9223372036854775809",
        "1e2",
        "-0",
        "1.0",
        "1.5",
    ]
    .map(|id| format!(r#"[{{"id":{id},"url":"{a}"}},{{"url":"{b}"}}]"#));
    // The trial's: two ids that read as one float.
    let twins = format!(
        r#"[{{"id":12345678901234567890123,"url":"{a}"}},{{"id":12345678901234567890124,"url":"{b}"}}]"#
    );
    for text in refused.iter().chain([&twins]) {
        let from_fetch = fetch(text).await.unwrap_err();
        assert!(from_fetch.contains("item 1: a numeric id"), "{from_fetch}");
        // The client sends the number as serde_json holds it, a float.
        let items: Value = serde_json::from_str(text).unwrap();
        let from_mcp = mcp(&client, &items).await.unwrap_err();
        for message in [from_fetch, from_mcp] {
            assert!(
                message.contains("a numeric id must be an integer")
                    && message.contains("send it as a string"),
                "{text}: {message}"
            );
        }
    }
    assert_eq!(sim.stats().arrivals, 4);
    client.cancel().await.unwrap();
}
