//! Findings of a user trial of `fanout fetch` and `fanout mcp`, run as a
//! user would against loopback servers: each test showed its defect before
//! the fix.
#![allow(clippy::unwrap_used, missing_docs)]

use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod support;
use support::{mcp_client, run};

/// Whether `text` holds a control character other than a line's end.
fn has_control(text: &str) -> bool {
    text.contains(|c: char| c.is_control() && c != '\n')
}

/// The text of a tool call's refusal, as the client shows it (not its JSON,
/// which escapes control characters).
fn refusal(answer: Result<CallToolResult, rmcp::ServiceError>) -> String {
    let answer = answer.unwrap();
    assert_eq!(answer.is_error, Some(true), "{answer:?}");
    answer
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

/// Control characters of the input came back raw in a refusal on stderr: a
/// URL carrying `ESC ]0;pwned BEL ESC [2J` retitled the terminal and
/// cleared its screen, and a NUL went out as it came. Every echo of input
/// escapes them now (`\u{1b}`, `\0`), in `fetch` and in the MCP tool's
/// errors alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_of_the_input_are_escaped_in_messages() {
    let cases = [
        (
            "http://x.test/\x1b]0;pwned\x07\x1b[2J\n",
            r"`http://x.test/\u{1b}]0;pwned\u{7}\u{1b}[2J`",
        ),
        ("http://x.test/\0x\n", r"`http://x.test/\0x`"),
        (
            r#"[{"id":"a\u001b[2J","url":"http://x.test/"},{"id":"a\u001b[2J","url":"http://y.test/"}]"#,
            r"the id `a\u{1b}[2J`",
        ),
        (
            r#"[{"id":"\u009b31m","url":"ftp://x.test/"}]"#,
            r"(id \u{9b}31m)",
        ),
        (
            r#"{"url":"http://x.test/","\u0007":1}"#,
            r"unknown field `\u{7}`",
        ),
    ];
    for (input, shown) in cases {
        let out = run(&["fetch"], input).await;
        assert_eq!(out.code, Some(2), "{input:?}: {:?}", out.stderr);
        assert!(out.stderr.contains(shown), "{input:?}: {:?}", out.stderr);
        assert!(!has_control(&out.stderr), "{input:?}: {:?}", out.stderr);
    }

    let client = mcp_client(&["mcp"]).await;
    let items = json!({"items": [{"id": "a\u{1b}[2J", "url": "ftp://x.test/\u{7}"}]});
    let answer = client
        .call_tool(
            CallToolRequestParams::new("batch_fetch_urls")
                .with_arguments(items.as_object().unwrap().clone()),
        )
        .await;
    let text = refusal(answer);
    assert!(
        text.contains(r"(id a\u{1b}[2J)") && text.contains(r"`ftp://x.test/\u{7}`"),
        "{text:?}"
    );
    assert!(!has_control(&text), "{text:?}");
    // An unknown argument is named as serde names it, escaped too.
    let arguments = json!({"batch_id": "b1", "\u{1b}[2J": 1});
    let answer = client
        .call_tool(
            CallToolRequestParams::new("get_batch_results")
                .with_arguments(arguments.as_object().unwrap().clone()),
        )
        .await;
    let text = refusal(answer);
    assert!(text.contains(r"unknown field `\u{1b}[2J`"), "{text:?}");
    assert!(!has_control(&text), "{text:?}");
    client.cancel().await.unwrap();
}

/// `get_batch_results` echoed an unknown `batch_id` whole and raw: a 1 MB
/// one came back in its error. It is cut short and escaped as every other
/// echo of input; and a `deadline_seconds` of 1e308 was refused with all
/// its 309 digits, where `1e308` says it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_errors_echo_their_arguments_short() {
    let client = mcp_client(&["mcp"]).await;
    let batch_id = format!("\u{1b}[2J{}", "x".repeat(1 << 20));
    let arguments = json!({"batch_id": batch_id});
    let answer = client
        .call_tool(
            CallToolRequestParams::new("get_batch_results")
                .with_arguments(arguments.as_object().unwrap().clone()),
        )
        .await;
    let text = refusal(answer);
    assert!(text.len() < 1_000, "{} bytes", text.len());
    assert!(
        text.starts_with(r"unknown batch_id `\u{1b}[2Jxxx")
            && text.contains(&format!("… ({} bytes)`", batch_id.len())),
        "{text:?}"
    );
    assert!(!has_control(&text), "{text:?}");

    let arguments = json!({"items": ["http://x.test/"], "deadline_seconds": 1e308});
    let answer = client
        .call_tool(
            CallToolRequestParams::new("batch_fetch_urls")
                .with_arguments(arguments.as_object().unwrap().clone()),
        )
        .await;
    let text = refusal(answer);
    assert!(text.ends_with("got 1e308"), "{text}");
    client.cancel().await.unwrap();
}

/// https to a server that accepts the connection and never answers the TLS
/// hello failed with the library's words, "raise `connect_timeout`": no
/// flag of the CLI has that name. The connect timeout is `--timeout`'s, and
/// the item's error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_names_the_timeout_flag() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, reads nothing and answers nothing, holding every socket.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    // The attempt's timeout is `--timeout` too, started a moment before
    // the connection's: either can end an attempt first, each with its own
    // message; both must name the flag. (That the connect timeout's does is
    // checked where it surely fires first: `engine`'s
    // `a_connect_timeout_is_told_as_the_timeout_flag`.)
    let args = [
        "fetch",
        "--allow-private",
        "--retries",
        "0",
        "--timeout",
        "500ms",
        "--per-host",
        "8",
    ];
    let input: String = (0..8).map(|i| format!("https://{addr}/{i}\n")).collect();
    let out = run(&args, &input).await;
    server.abort();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let errors: Vec<String> = out
        .stdout
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            record["error"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(errors.len(), 8, "{}", out.stdout);
    for error in &errors {
        assert!(
            error.contains("within --timeout 500 ms")
                && error.contains("raise --timeout")
                && !error.contains("connect_timeout"),
            "{error}"
        );
    }
}

/// A pretty-printed `{"items": [...]}` with a syntax error (a trailing
/// comma on its line 5) was reported as JSON Lines at "line 1, column 1",
/// hiding the fault; the bare array named it. A document that starts as
/// the tool's arguments is reported as the JSON it is, with its position
/// (its line counting the blank lines before the document), as is one
/// nested past the parser's depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_items_document_is_reported_where_it_breaks() {
    // After a blank line, which the position counts.
    let pretty = "\n{\n  \"items\": [\n    {\"url\": \"http://x.test/a\"},\n    \
                  {\"url\": \"http://x.test/b\"},\n  ]\n}\n";
    let deep = format!("{{\"items\":{}", "[".repeat(100_000));
    for (input, expected) in [
        (
            pretty.to_string(),
            "invalid JSON input: trailing comma at line 6 column 3",
        ),
        (
            deep,
            "invalid JSON input: recursion limit exceeded at line 1",
        ),
    ] {
        let out = run(&["fetch"], &input).await;
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert!(
            out.stderr.contains(expected) && !out.stderr.contains("JSON Lines"),
            "{}",
            out.stderr
        );
    }
    // JSON Lines are still read, and refused, a line at a time.
    let lines = "{\"url\":\"http://x.test/\"}\n{\"url\":\n";
    let out = run(&["fetch"], lines).await;
    assert!(
        out.stderr.contains("line 2, column 7: invalid JSON"),
        "{}",
        out.stderr
    );
}

/// `--deadline`'s help said an item had "no bound but --timeout and
/// --retries" without it; the waits between retries (a `Retry-After` up to
/// 60 s each) and for a slot under the limits add to that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_help_counts_every_wait() {
    let out = run(&["fetch", "--help"], "").await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let help = out
        .stdout
        .split("--deadline <DEADLINE>")
        .nth(1)
        .and_then(|rest| rest.split("--batch-deadline").next())
        .unwrap();
    assert!(
        help.contains("Retry-After") && !help.contains("no bound but"),
        "{help}"
    );
}
