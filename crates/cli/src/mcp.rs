//! `fanout mcp`: an MCP server on stdio with a bounded batch-fetch tool.
//!
//! `batch_fetch_urls` fetches up to `--max-items` URLs through the same
//! bounded stack as `fanout fetch` (limits and the address guard come from
//! the server's command line, never from the model), answers with the
//! counts and the first page of results, and keeps the batch so
//! `get_batch_results` can page through the rest. A call may say how long
//! it can wait (`deadline_seconds`): that only shortens what the server
//! allows, it never loosens a limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ProgressNotificationParam, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use tower_fanout_core::fan_out::Progress;

use crate::engine::{Fetcher, Record};
use crate::input::{self, InputItem, Item};

/// Results returned per page.
const PAGE: usize = 10;
/// Finished batches kept for paging; older ones are forgotten.
const KEPT_BATCHES: usize = 16;

/// The batch to fetch.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchFetchInput {
    /// The URLs to fetch, each with an optional id.
    items: Vec<InputItem>,
    /// Answer within this many seconds: items not done by then are
    /// reported as failed, and the rest as usual. No deadline by default;
    /// the server's `--deadline` and `--batch-deadline`, if set, still
    /// apply when they come first.
    #[schemars(range(min = 0.001, max = 86400.0))]
    deadline_seconds: Option<f64>,
}

/// Which page of a finished batch to read.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageInput {
    /// The `batch_id` returned by `batch_fetch_urls`.
    batch_id: String,
    /// The first result to return (the `next_offset` of the previous page),
    /// 0 by default.
    #[serde(default)]
    offset: usize,
    /// How many results to return: 1 to 100 (a value outside is taken to
    /// the nearest), 10 by default.
    #[schemars(range(min = 1, max = 100))]
    limit: Option<usize>,
}

/// A tool's arguments, refused with serde's message escaped: it names an
/// unknown argument as it was sent, control characters and all. (Only
/// escaped: an item's own refusal is cut short already, see `input::clip`.)
#[derive(Debug)]
pub(crate) struct Args<T>(T);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Args<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(serde_json::Value::deserialize(deserializer)?)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(input::escape_controls(&e.to_string())))
    }
}

/// `T`'s schema, as if there were no wrapper.
impl<T: JsonSchema> JsonSchema for Args<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// A batch's counts and one page of its results.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct BatchPage {
    /// Pass this to `get_batch_results` to read more.
    batch_id: String,
    /// Items in the batch.
    total: usize,
    /// Items fetched with a 2xx status.
    succeeded: usize,
    /// Items that failed (non-2xx status or an error).
    failed: usize,
    /// Position of the first result in this page.
    offset: usize,
    /// The results, in input order.
    results: Vec<Record>,
    /// Whether more results follow this page.
    has_more: bool,
    /// The offset of the next page, when there is one.
    next_offset: Option<usize>,
}

struct State {
    fetcher: Fetcher,
    max_items: usize,
    batches: Mutex<VecDeque<(String, Arc<Vec<Record>>)>>,
    next_batch: AtomicU64,
}

/// The MCP server.
#[derive(Clone)]
pub(crate) struct FanoutServer {
    state: Arc<State>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl FanoutServer {
    pub(crate) fn new(fetcher: Fetcher, max_items: usize) -> Self {
        Self {
            state: Arc::new(State {
                fetcher,
                max_items,
                batches: Mutex::new(VecDeque::new()),
                next_batch: AtomicU64::new(1),
            }),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Fetch many URLs with bounded concurrency, rate limits and per-host limits. \
                       Returns each URL's HTTP status, body size in bytes and latency, not the body. \
                       Answers with counts and the first 10 results; page through the rest with get_batch_results. \
                       With deadline_seconds, answers by then: items not done are reported as failed."
    )]
    async fn batch_fetch_urls(
        &self,
        Parameters(Args(input)): Parameters<Args<BatchFetchInput>>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<BatchPage>, String> {
        let fetcher = match input.deadline_seconds {
            Some(seconds) => self.state.fetcher.within(deadline(seconds)?),
            None => self.state.fetcher.clone(),
        };
        let items = self.check(input)?;
        let (latest, notifier) = progress(&context, items.len());
        // The fan-out's callback only records the latest counts, and only
        // for a client that listens.
        let on_progress = move |p: &Progress| {
            if let Some(latest) = &latest {
                latest.send_replace(Some(p.clone()));
            }
        };
        // rmcp signals a cancelled call (the client's notifications/cancelled)
        // on this token and leaves its handler running: dropping the fetch
        // is what stops the batch and gives its share of the limits back.
        let records = tokio::select! {
            records = fetcher.fetch_all(items, on_progress) => Ok(records),
            () = context.ct.cancelled() => Err("cancelled by the client".to_string()),
        };
        // No progress after the answer: what is still being sent is dropped.
        if let Some(notifier) = notifier {
            notifier.abort();
            let _ = notifier.await;
        }
        let records = records?;
        let batch_id = format!("b{}", self.state.next_batch.fetch_add(1, Ordering::Relaxed));
        let records = Arc::new(records);
        {
            let mut batches = self.state.batches.lock().unwrap_or_else(|e| e.into_inner());
            if batches.len() == KEPT_BATCHES {
                batches.pop_front();
            }
            batches.push_back((batch_id.clone(), records.clone()));
        }
        Ok(Json(page(batch_id, &records, 0, PAGE)))
    }

    #[tool(description = "Read a page of results of an earlier batch_fetch_urls call.")]
    async fn get_batch_results(
        &self,
        Parameters(Args(input)): Parameters<Args<PageInput>>,
    ) -> Result<Json<BatchPage>, String> {
        let records = {
            let batches = self.state.batches.lock().unwrap_or_else(|e| e.into_inner());
            batches
                .iter()
                .find(|(id, _)| *id == input.batch_id)
                .map(|(_, r)| r.clone())
        };
        // The id is echoed as other input is: cut short, controls escaped.
        let records = records.ok_or_else(|| {
            format!(
                "unknown batch_id `{}`: it never existed or was forgotten (the last {KEPT_BATCHES} batches are kept)",
                input::clip(&input.batch_id)
            )
        })?;
        if input.offset > records.len() {
            return Err(format!(
                "offset {} is past the end of the batch ({} results)",
                input.offset,
                records.len()
            ));
        }
        let limit = input.limit.unwrap_or(PAGE).clamp(1, 100);
        Ok(Json(page(input.batch_id, &records, input.offset, limit)))
    }
}

impl FanoutServer {
    /// Validates the whole batch before anything is fetched.
    fn check(&self, input: BatchFetchInput) -> Result<Vec<Item>, String> {
        let max = self.state.max_items;
        if input.items.len() > max {
            return Err(format!(
                "{} items is more than this server's maximum of {max}; send at most {max} per call",
                input.items.len()
            ));
        }
        // Named and checked as `fanout fetch` does its JSON form.
        let items = input::name_items(input.items)?;
        input::check(items, max)
    }
}

/// A call's `deadline_seconds` as a duration: at least a millisecond, at
/// most a day (NaN and infinities are neither).
fn deadline(seconds: f64) -> Result<std::time::Duration, String> {
    if (0.001..=86_400.0).contains(&seconds) {
        Ok(std::time::Duration::from_secs_f64(seconds))
    } else {
        // `{:?}` writes 1e308 so, where `{}` writes all its 309 digits.
        Err(format!(
            "deadline_seconds must be from 0.001 to 86400 (a day); got {seconds:?}"
        ))
    }
}

fn page(batch_id: String, records: &[Record], offset: usize, limit: usize) -> BatchPage {
    let end = offset.saturating_add(limit).min(records.len());
    let succeeded = records.iter().filter(|r| r.ok).count();
    BatchPage {
        batch_id,
        total: records.len(),
        succeeded,
        failed: records.len() - succeeded,
        offset,
        results: records[offset.min(end)..end].to_vec(),
        has_more: end < records.len(),
        next_offset: (end < records.len()).then_some(end),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for FanoutServer {
    fn get_info(&self) -> ServerConfig {
        let mut config = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(
                "Bounded batch fetching: batch_fetch_urls fetches many URLs at once without \
                 overwhelming them; get_batch_results pages through a batch's results.",
            );
        // rmcp's default names rmcp itself, at its own version.
        config.server_info = Implementation::new("fanout", env!("CARGO_PKG_VERSION"));
        config
    }
}

/// Progress for a call whose client asked for it (a `progressToken` in its
/// `_meta`): `notifications/progress` with the items done, the batch size
/// and a line of counts, so an agent sees a long batch move (and a client
/// that extends its timeout on progress keeps waiting): the sender the
/// fan-out's callback records the latest counts in, and the task that
/// sends them, so a slow client coalesces updates rather than holding the
/// batch back. Neither for a client that did not ask.
fn progress(
    context: &RequestContext<RoleServer>,
    total: usize,
) -> (
    Option<tokio::sync::watch::Sender<Option<Progress>>>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let Some(token) = context.meta.get_progress_token() else {
        // Nobody listens: the fan-out's callback records nothing.
        return (None, None);
    };
    let (latest, mut changed) = tokio::sync::watch::channel(None::<Progress>);
    let notifier = {
        let peer = context.peer.clone();
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                let Some(p) = changed.borrow_and_update().clone() else {
                    continue;
                };
                let note = ProgressNotificationParam::new(token.clone(), p.completed as f64)
                    .with_total(total as f64)
                    // Core's text says "waiting for their key"; here the
                    // key is the host.
                    .with_message(p.to_string().replace("for their key", "for their host"));
                if peer.notify_progress(note).await.is_err() {
                    // The client is gone: nobody to tell.
                    return;
                }
            }
        })
    };
    (Some(latest), Some(notifier))
}

/// The longest message line read: room for a tool call of `max_items`
/// items at the 16 KiB an item that `fanout fetch` reads, and never less
/// than rmcp's default. rmcp drops a longer line unread and unanswered, so
/// with its default (16 MiB) a batch that `--max-items` allows could leave
/// its client waiting for an answer that never came.
fn max_line_length(max_items: usize) -> usize {
    let per_item = usize::try_from(crate::INPUT_BYTES_PER_ITEM).unwrap_or(usize::MAX);
    max_items
        .saturating_mul(per_item)
        .saturating_add(64 * 1024)
        .max(rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH)
}

/// Serves MCP on stdin/stdout until the client closes stdin.
pub(crate) async fn serve(fetcher: Fetcher, max_items: usize) -> anyhow::Result<()> {
    let (stdin, stdout) = rmcp::transport::stdio();
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(stdin, stdout)
        .with_max_line_length(max_line_length(max_items));
    let server = FanoutServer::new(fetcher, max_items)
        .serve(transport)
        .await?;
    server.waiting().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The page size is taken to 1..=100; the schema an agent reads said
    /// any number (0 gave one result, 500 gave 100).
    #[test]
    fn the_page_limit_schema_states_its_range() {
        let schema = serde_json::to_value(schemars::schema_for!(PageInput)).unwrap();
        let limit = &schema["properties"]["limit"];
        assert_eq!(limit["minimum"], 1, "{limit}");
        assert_eq!(limit["maximum"], 100, "{limit}");
    }

    /// `get_batch_results` refused a call without `offset`; it starts at the
    /// first result, and the schema no longer requires it.
    #[test]
    fn the_page_offset_defaults_to_the_first_result() {
        let input: PageInput =
            serde_json::from_value(serde_json::json!({"batch_id": "b1"})).unwrap();
        assert_eq!(input.offset, 0);
        let schema = serde_json::to_value(schemars::schema_for!(PageInput)).unwrap();
        assert_eq!(
            schema["required"],
            serde_json::json!(["batch_id"]),
            "{schema}"
        );
        assert_eq!(schema["properties"]["offset"]["default"], 0, "{schema}");
    }

    /// An agent reads the deadline's range from the schema, as the server
    /// checks it.
    #[test]
    fn the_deadline_schema_states_its_range() {
        let schema = serde_json::to_value(schemars::schema_for!(BatchFetchInput)).unwrap();
        let field = &schema["properties"]["deadline_seconds"];
        assert_eq!(field["minimum"], 0.001, "{field}");
        assert_eq!(field["maximum"], 86400.0, "{field}");
        assert!(deadline(0.0009).is_err() && deadline(86_400.001).is_err());
        assert_eq!(deadline(0.25), Ok(std::time::Duration::from_millis(250)));
    }
}
