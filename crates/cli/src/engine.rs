//! The bounded fetch behind `fanout fetch` and the MCP tool.
//!
//! Stack, outermost first: fan-out window (keyed by host, as the client's
//! per-host limits are) → retry (Retry-After aware, no permit held while
//! sleeping) → global rate limit → per-host limit (`--per-host`, shared by
//! every MCP call) → adaptive limit (`--adaptive`) or concurrency limit
//! (`--concurrency`) → attempt counter → the HTTP client preset (per-host
//! limits, timeouts, body cap, address guard).
//! With `--deadline`, each item runs under one `Deadline` from its start,
//! which the retry layer and the client read from its request; with
//! `--batch-deadline` (or an MCP call's `deadline_seconds`) the batch has
//! one more, shared by its items, and the earlier of the two is an item's.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use schemars::JsonSchema;
use serde::Serialize;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_fanout_core::BoxError;
use tower_fanout_core::adaptive::{AdaptiveLimitLayer, GradientController};
use tower_fanout_core::concurrency::ConcurrencyLimitLayer;
use tower_fanout_core::fan_out::{ItemResult, Progress, fan_out};
use tower_fanout_core::keyed::{AuthorityKey, KeyFn, KeyLimit, KeyedLimitLayer};
use tower_fanout_core::rate::RateLimitLayer;
use tower_fanout_http::retry::RetryLayer;
use tower_fanout_http::{ClientClassify, Deadline};

use crate::input::Item;
use crate::units::Rate;

/// The request type the stack takes.
pub(crate) type Req = Request<Full<Bytes>>;
/// The whole stack, boxed: the options decide which layers are in it.
pub(crate) type Stack = BoxCloneSyncService<Req, Response<Bytes>, BoxError>;

/// Puts `layer` around `inner` and boxes the result, so optional layers can
/// be stacked one by one.
pub(crate) fn layered<L>(layer: L, inner: Stack) -> Stack
where
    L: tower::Layer<Stack>,
    L::Service: Service<Req, Response = Response<Bytes>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Req>>::Error: Into<BoxError>,
    <L::Service as Service<Req>>::Future: Send + 'static,
{
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(inner)
            .map_err(Into::into),
    )
}

/// Limits and safety settings, from the command line.
#[derive(Debug, Clone)]
pub(crate) struct FetchOptions {
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<Rate>,
    pub(crate) burst: Option<u32>,
    pub(crate) per_host: usize,
    pub(crate) adaptive: bool,
    pub(crate) timeout: Duration,
    /// Time allowed for each item over all its attempts and waits.
    pub(crate) deadline: Option<Duration>,
    /// Time allowed for each batch (each MCP tool call), from its start.
    pub(crate) batch_deadline: Option<Duration>,
    pub(crate) max_body: u64,
    pub(crate) retries: u32,
    pub(crate) allow_private: bool,
}

/// One item's outcome: a JSON line of `fanout fetch`, an entry of the MCP tool's answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Record {
    /// The item's id.
    pub(crate) id: String,
    /// The URL fetched.
    pub(crate) url: String,
    /// A 2xx status was received.
    pub(crate) ok: bool,
    /// The final HTTP status, when a response arrived.
    pub(crate) status: Option<u16>,
    /// Why the item failed without an answer it could keep: no response,
    /// or one the client could not use (a body over `--max-body`, a 429 or
    /// 503 whose `Retry-After` was too long to wait: `status` then set).
    pub(crate) error: Option<String>,
    /// Attempts handed to the client (1 + retries; 0 when none was, e.g.
    /// for an item whose deadline passed before its turn or while it waited
    /// for its host). The client holds a redirect's next hop at that host's
    /// limit, so an attempt counted may not have been sent yet.
    pub(crate) attempts: u32,
    /// Time from the start of the item to its end, waits included.
    pub(crate) latency_ms: u64,
    /// Body bytes received.
    pub(crate) bytes: u64,
}

/// Counts the attempts of one item, shared through the request's extensions
/// (the retry layer clones the request for each attempt).
#[derive(Debug, Clone, Default)]
struct Attempts(Arc<AtomicU32>);

#[derive(Debug, Clone)]
struct CountAttempts<S>(S);

impl<S, B> Service<Request<B>> for CountAttempts<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        if let Some(attempts) = req.extensions().get::<Attempts>() {
            attempts.0.fetch_add(1, Ordering::Relaxed);
        }
        self.0.call(req)
    }
}

impl FetchOptions {
    /// Builds the stack these options describe.
    pub(crate) fn stack(&self) -> anyhow::Result<Stack> {
        let mut stack = self.client()?;
        if self.adaptive {
            stack = layered(self.adaptive_limit()?, stack);
        } else {
            // Shared by every batch this stack serves (the MCP server runs
            // several tool calls at once): the bound holds across them.
            stack = layered(ConcurrencyLimitLayer::new(self.concurrency)?, stack);
        }
        // Each host's limit again, above the global one and shared by every
        // batch: a call waiting for its host holds no --concurrency (or
        // --adaptive) slot, whichever batch it is in. Each batch's window
        // keys its items by host, but two batches (MCP tool calls) to one
        // host let --per-host through each, and those past the client's own
        // per-host gate held the global slots that calls to idle hosts
        // needed. The client's gate still holds each redirect hop's host.
        stack = layered(
            KeyedLimitLayer::builder(KeyLimit::new().concurrency(self.per_host)).build()?,
            stack,
        );
        if let Some(rate) = self.rate {
            let layer = RateLimitLayer::builder(rate.count, rate.period)
                .burst(self.burst.unwrap_or(rate.count))
                .build()?;
            stack = layered(layer, stack);
        }
        if self.retries > 0 {
            stack = layered(
                RetryLayer::builder().max_retries(self.retries).build()?,
                stack,
            );
        }
        Ok(stack)
    }

    /// The bottom of the stack: the client preset, attempts counted.
    fn client(&self) -> anyhow::Result<Stack> {
        let host_default = KeyLimit::new().concurrency(self.per_host);
        let client = tower_fanout_http::Client::builder()
            .timeout(Some(self.timeout))
            .connect_timeout(Some(self.timeout))
            .max_response_body(usize::try_from(self.max_body).unwrap_or(usize::MAX))
            .address_guard(!self.allow_private)
            .host_default(host_default)
            .no_retry()
            .build()?;
        Ok(BoxCloneSyncService::new(ServiceExt::<Req>::map_err(
            CountAttempts(client),
            BoxError::from,
        )))
    }

    /// The limit `--adaptive` puts over the client.
    fn adaptive_limit(&self) -> anyhow::Result<AdaptiveLimitLayer<ClientClassify>> {
        // Up to --concurrency, starting at the controller's usual 5 or at
        // the bound when it is lower (an initial limit above the max is
        // refused).
        let controller = GradientController::builder()
            .max(self.concurrency)
            .initial(self.concurrency.min(5))
            .build()?;
        Ok(AdaptiveLimitLayer::new(controller).classify(ClientClassify))
    }
}

/// A built stack and the window its batches run with; clones share every limit.
#[derive(Clone)]
pub(crate) struct Fetcher {
    stack: Stack,
    concurrency: usize,
    per_host: usize,
    /// `--deadline`: time allowed for each item from its own start.
    item_deadline: Option<Duration>,
    /// Time allowed for each batch from its start, and who set it.
    batch_deadline: Option<(Duration, SetBy)>,
}

/// Who set a batch's deadline, for the message of an item that misses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetBy {
    /// `--batch-deadline`.
    Flag,
    /// The MCP call's `deadline_seconds`.
    Call,
}

/// What ends an item before its answer: `--deadline` from the item's own
/// start, and its batch's deadline, with the time it was given.
#[derive(Debug, Clone, Copy, Default)]
struct Deadlines {
    item: Option<Duration>,
    batch: Option<(Deadline, Duration, SetBy)>,
}

impl Deadlines {
    /// An item starting now: its deadline, the earlier of the two, the
    /// error it fails with past it, and its own deadline if it has one.
    fn start(&self) -> Option<(Deadline, PastDeadline, Option<Deadline>)> {
        let own = self
            .item
            .map(|after| (Deadline::after(after), PastDeadline::Item(after)));
        let batch = self
            .batch
            .map(|(at, within, by)| (at, PastDeadline::Batch(within, by)));
        // The batch's wins a tie.
        let (at, past) = match (own, batch) {
            (Some(own), Some(batch)) if own.0 < batch.0 => own,
            (_, Some(batch)) => batch,
            (own, None) => own?,
        };
        Some((at, past, own.map(|(own, _)| own)))
    }
}

impl FetchOptions {
    /// Builds the stack once, so that every batch it runs shares its limits
    /// (per-host slots, the rate bucket, learned budgets).
    pub(crate) fn fetcher(&self) -> anyhow::Result<Fetcher> {
        Ok(Fetcher {
            stack: self.stack()?,
            concurrency: self.concurrency,
            per_host: self.per_host,
            item_deadline: self.deadline,
            batch_deadline: self.batch_deadline.map(|d| (d, SetBy::Flag)),
        })
    }
}

impl Fetcher {
    /// The same stack and limits for batches that must each be done
    /// `within` from their start (an MCP call's `deadline_seconds`), or by
    /// `--batch-deadline` if that comes first: every item still running
    /// then fails, and every item not started by then fails without being
    /// sent, so the batch answers on time. An item's `--deadline` still
    /// applies when it comes first.
    pub(crate) fn within(&self, within: Duration) -> Self {
        let batch_deadline = match self.batch_deadline {
            Some((flag, SetBy::Flag)) if flag <= within => Some((flag, SetBy::Flag)),
            _ => Some((within, SetBy::Call)),
        };
        Self {
            batch_deadline,
            ..self.clone()
        }
    }

    /// Fetches every item, `concurrency` at a time, reporting progress;
    /// returns the records in input order.
    pub(crate) async fn fetch_all(
        &self,
        items: Vec<Item>,
        on_progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Vec<Record> {
        let mut records = Vec::with_capacity(items.len());
        self.fetch_each(
            items,
            on_progress,
            |record| {
                records.push(record);
                ControlFlow::Continue(())
            },
            std::future::pending::<()>(),
        )
        .await;
        records
    }

    /// Fetches every item, `concurrency` at a time, reporting progress, and
    /// hands each record to `on_record` in input order as soon as it and
    /// every record before it are done: a slow item holds back the records
    /// after it, not the whole batch. `on_record` returning `Break` stops
    /// the batch (the requests in flight are dropped). When `interrupt`
    /// ends first, the requests in flight are dropped too, but the records
    /// already done and held behind an unfinished one are handed on (in
    /// input order among themselves, after the gap): an interrupted batch
    /// keeps everything it fetched. Returns what `interrupt` gave when it
    /// ended the batch.
    pub(crate) async fn fetch_each<T>(
        &self,
        items: Vec<Item>,
        on_progress: impl Fn(&Progress) + Send + Sync + 'static,
        mut on_record: impl FnMut(Record) -> ControlFlow<()>,
        interrupt: impl Future<Output = T>,
    ) -> Option<T> {
        let attempts: Vec<Attempts> = items.iter().map(|_| Attempts::default()).collect();
        let mut requests = Vec::with_capacity(items.len());
        for (item, counter) in items.iter().zip(&attempts) {
            requests.push(
                Request::get(item.url.as_str())
                    .extension(counter.clone())
                    .body(Full::new(Bytes::new())),
            );
        }
        // A request the http crate cannot build (already checked, so rare) fails alone.
        let requests = requests.into_iter().map(|r| r.map_err(|e| e.to_string()));
        let deadlines = Deadlines {
            item: self.item_deadline,
            batch: self
                .batch_deadline
                .map(|(within, by)| (Deadline::after(within), within, by)),
        };
        let stack = self.stack.clone();
        let service = tower::service_fn(move |req: Result<Req, String>| {
            let stack = stack.clone();
            async move {
                let response = within(deadlines, stack, req.map_err(BoxError::from)?).await?;
                // Only the status and the size are reported: the body is
                // dropped as soon as the item ends, so a batch holds at most
                // a window of bodies, not all of them until the last is in.
                Ok::<_, BoxError>((response.status(), response.body().len() as u64))
            }
        });
        let mut items: Vec<Option<Item>> = items.into_iter().map(Some).collect();
        // The client holds each host to --per-host in flight, in the
        // response future (its `poll_ready` cannot know the host), so a call
        // waiting for its host would hold a window slot: a list naming one
        // host's URLs before another's would run one host at a time. The
        // window keys its items by host as the client does (`AuthorityKey`:
        // lower case, no userinfo, no default port, no trailing dot) and
        // sets aside an item whose host is full. It may look past the whole
        // batch: the requests are all in memory already.
        let lookahead = items.len().max(1);
        let fan = fan_out(service, requests)
            .concurrency(self.concurrency)
            .and_then(|fan| fan.per_key(host_key, self.per_host))
            .and_then(|fan| fan.lookahead(lookahead));
        let mut stream = match fan {
            Ok(fan) => fan.on_progress(on_progress).stream(),
            Err(e) => {
                let error = e.to_string();
                for item in items.into_iter().flatten() {
                    if on_record(failed(item, error.clone())).is_break() {
                        return None;
                    }
                }
                return None;
            }
        };
        // Records done but waiting for an earlier one. The window slides on
        // past a slow item (the downstream stays busy), so up to the rest of
        // the batch can wait here; each record takes its item's place in
        // `items`, so what waits here adds little to what the batch holds
        // from its start: each item with its request (parsed URI, headers,
        // extensions), attempt counter and place in the window, about 1 KB
        // an item in all (a million items, about 1 GB).
        let mut done = BTreeMap::new();
        let mut next = 0;
        let mut interrupt = std::pin::pin!(interrupt);
        loop {
            let outcome = tokio::select! {
                biased;
                why = &mut interrupt => {
                    for record in std::mem::take(&mut done).into_values() {
                        if on_record(record).is_break() {
                            break;
                        }
                    }
                    return Some(why);
                }
                outcome = stream.next() => outcome,
            };
            let Some(outcome) = outcome else { break };
            let index = outcome.index;
            let Some(item) = items.get_mut(index).and_then(Option::take) else {
                continue;
            };
            done.insert(index, record(item, outcome, &attempts[index]));
            while let Some(record) = done.remove(&next) {
                next += 1;
                if on_record(record).is_break() {
                    return None;
                }
            }
        }
        // Every item has its record by now; one whose task could not say
        // which item it ran (never seen) still gets an answer.
        for (index, item) in items.into_iter().enumerate().skip(next) {
            let record = match (done.remove(&index), item) {
                (Some(record), _) => record,
                (None, Some(item)) => failed(item, "no answer for this item".to_string()),
                (None, None) => continue,
            };
            if on_record(record).is_break() {
                return None;
            }
        }
        None
    }
}

/// One item's call through the stack, under its deadline when it has one.
/// The item's own deadline goes in the request's extensions, so the retry
/// layer does not sleep a wait that would end past it and the client ends
/// an attempt there; the timer here also bounds the waits at the limits
/// between them, and is all that ends an item at its batch's deadline: the
/// call is dropped, which `--adaptive` reads as no signal. A batch's
/// deadline cuts items that may have started a moment before it, which
/// says nothing of the downstream's load; the client's timer would end
/// them as timed out, which reads as overload. An item that starts past
/// its deadline (the batch's has passed while it waited for its turn)
/// fails without touching the stack.
async fn within(
    deadlines: Deadlines,
    stack: Stack,
    mut req: Req,
) -> Result<Response<Bytes>, BoxError> {
    let Some((at, past, own)) = deadlines.start() else {
        return stack.oneshot(req).await;
    };
    if at.instant() <= tokio::time::Instant::now() {
        return Err(past.into());
    }
    if let Some(own) = own {
        req.extensions_mut().insert(own);
    }
    match tokio::time::timeout_at(at.instant(), stack.oneshot(req)).await {
        Ok(Err(e)) if ended_by_deadline(&*e) => Err(past.into()),
        Ok(outcome) => outcome,
        Err(_) => Err(past.into()),
    }
}

/// The client ended an attempt at the request's deadline (it has none of
/// its own here): the item's, which its error tells in the library's terms
/// and with the time left to that attempt.
fn ended_by_deadline(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<tower_fanout_http::TimedOut>())
        .any(tower_fanout_http::TimedOut::is_deadline)
}

/// An item ran past its deadline: its own (`--deadline`) or its batch's.
#[derive(Debug, Clone, Copy)]
enum PastDeadline {
    Item(Duration),
    Batch(Duration, SetBy),
}

impl std::fmt::Display for PastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Item(after) => write!(
                f,
                "no answer within --deadline {} ms (every attempt and wait included); raise --deadline",
                after.as_millis()
            ),
            Self::Batch(within, SetBy::Flag) => write!(
                f,
                "not done within --batch-deadline ({} s): a larger --batch-deadline or fewer \
                 items would let it finish",
                within.as_secs_f64()
            ),
            Self::Batch(within, SetBy::Call) => write!(
                f,
                "not done within the call's deadline_seconds ({} s): a larger deadline_seconds \
                 or fewer items per call would let it finish",
                within.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for PastDeadline {}

/// The host an item's request is limited under by the client (`None` for a
/// request that could not be built, which fails at once).
fn host_key(req: &Result<Req, String>) -> Option<String> {
    req.as_ref()
        .ok()
        .map(|req| AuthorityKey.key(req).into_owned())
}

/// One finished item's record.
fn record(item: Item, outcome: ItemResult<(http::StatusCode, u64)>, counter: &Attempts) -> Record {
    let attempts = counter.0.load(Ordering::Relaxed);
    let latency_ms = u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX);
    match outcome.result {
        Ok((status, bytes)) => Record {
            ok: status.is_success(),
            status: Some(status.as_u16()),
            error: None,
            attempts,
            latency_ms,
            bytes,
            id: item.id,
            url: item.url,
        },
        Err(error) => Record {
            // A `Retry-After` past the wait cap ends the item with an error
            // that keeps the answer's status (429, 503): reported as such.
            status: find_status(&*error),
            error: Some(describe(&*error)),
            attempts,
            latency_ms,
            ..failed(item, String::new())
        },
    }
}

/// The status of the answer an error came from, when one did.
fn find_status(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(limited) = e.downcast_ref::<tower_fanout_core::error::RateLimited>() {
            return limited.status();
        }
        if let Some(cap) = e.downcast_ref::<tower_fanout_http::BodyTooLarge>() {
            return cap.status().map(|s| s.as_u16());
        }
        next = e.source();
    }
    None
}

fn failed(item: Item, error: String) -> Record {
    Record {
        id: item.id,
        url: item.url,
        ok: false,
        status: None,
        error: Some(error),
        attempts: 0,
        latency_ms: 0,
        bytes: 0,
    }
}

/// An item's error as one line, in the CLI's terms: the body cap is the
/// `--max-body` flag here and the attempt and connect timeouts `--timeout`,
/// not the library settings the errors name, the redirect cap has no flag,
/// the address guard is turned off by `--allow-private`, and a `Retry-After`
/// past the retry layer's wait cap says when to come back.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<tower_fanout_http::guard::RefusedAddress>() {
            let ip = refused
                .resolved_ip()
                .map(|ip| format!(" ({ip})"))
                .unwrap_or_default();
            return format!(
                "address guard refused {}{ip}: private, loopback, link-local or metadata \
                 address; fanout refuses those unless started with --allow-private",
                refused.host()
            );
        }
        if let Some(cap) = e.downcast_ref::<tower_fanout_http::BodyTooLarge>() {
            return format!(
                "response body too large: over the --max-body cap of {} bytes",
                cap.limit()
            );
        }
        // A deadline's timeout is told by `within`, with the flag that set it.
        if let Some(timed_out) = e.downcast_ref::<tower_fanout_http::TimedOut>()
            && !timed_out.is_deadline()
        {
            return format!(
                "request timed out: no complete response within --timeout {} ms (connect, \
                 headers and body of one attempt); raise --timeout if the server is known to \
                 be slow",
                timed_out.after().as_millis()
            );
        }
        if let Some(redirects) = e.downcast_ref::<tower_fanout_http::TooManyRedirects>() {
            return format!(
                "too many redirects: more than {} (a redirect loop, or a longer chain than \
                 fanout follows; no flag changes that cap)",
                redirects.max()
            );
        }
        // Never sent: an earlier item's answer holds its host. The server
        // said nothing about this one, so the wait is not its answer's.
        if let Some(held) = e
            .downcast_ref::<tower_fanout_http::Error>()
            .and_then(|e| Some((e.held_host()?, e.retry_after()?)))
        {
            let (host, wait) = (held.0, held.1.as_secs_f64().ceil());
            return format!(
                "not sent: {host} is held for another {wait} s by an earlier answer's Retry-After \
                 or rate-limit headers (longer than fanout waits, or past the item's deadline); \
                 fetch it again later"
            );
        }
        if let Some(limited) = e.downcast_ref::<tower_fanout_core::error::RateLimited>() {
            // The library's message names its `max_wait`, which no flag sets.
            let wait = limited.retry_after().as_secs_f64().ceil();
            return if limited.is_past_deadline() {
                format!(
                    "rate limited: the host allows another request in {wait} s (its Retry-After \
                     or rate-limit headers said so), past the item's deadline; a later \
                     --deadline would let it wait, or fetch it again later"
                )
            } else {
                format!(
                    "rate limited: the server asked to wait {wait} s before another request, \
                     longer than fanout waits for a Retry-After; fetch this item again later"
                )
            };
        }
        next = e.source();
    }
    // A redirect the client cannot follow names the library's way to have
    // the 3xx back instead, `max_redirects(0)`, which no flag sets; a
    // connect timeout names the library's `connect_timeout`, which
    // `--timeout` sets here (`FetchOptions::client`).
    chain(error)
        .replace(
            " (with `max_redirects(0)` the 3xx is returned as it is)",
            "",
        )
        .replace("within the connect timeout of ", "within --timeout ")
        .replace("raise `connect_timeout`", "raise --timeout")
}

/// An error and its sources, as one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options() -> FetchOptions {
        FetchOptions {
            concurrency: 8,
            rate: None,
            burst: None,
            per_host: 8,
            adaptive: true,
            timeout: Duration::from_secs(8),
            deadline: None,
            batch_deadline: None,
            max_body: 1024,
            retries: 0,
            allow_private: false,
        }
    }

    /// A URL the address guard refuses after DNS (`localhost` resolves to
    /// loopback) was read by `--adaptive` as an overloaded downstream:
    /// hyper-util wraps the refusal in its connect error, which core's
    /// `HttpClassify` counted as overload (it reads it as a failure since). A batch (or an MCP client: the
    /// limit is shared by every tool call) with a few such URLs cut the
    /// limit for every host to its minimum: four refusals took it from 5
    /// to 1. A refusal is the caller's mistake, which leaves it alone. (The
    /// controller still lets an unsaturated limit settle by 10 % a round,
    /// at most a round a call: four calls leave at least 5 × 0.9⁴ ≈ 3.3.)
    #[tokio::test]
    async fn guard_refusals_do_not_lower_the_adaptive_limit() {
        let opts = options();
        let layer = opts.adaptive_limit().unwrap();
        let handle = layer.handle();
        let stack = layered(layer, opts.client().unwrap());
        assert_eq!(handle.limit(), 5);
        for port in 1..=4 {
            let req = Request::get(format!("http://localhost:{port}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let err = stack.clone().oneshot(req).await.unwrap_err();
            assert!(chain(&*err).contains("address guard refused"), "{err}");
            // Said in the CLI's terms: its flag, not the library's setting.
            let text = describe(&*err);
            assert!(
                text.contains("address guard refused localhost (")
                    && text.contains("--allow-private")
                    && !text.contains("address_guard"),
                "{text}"
            );
        }
        assert!(
            handle.limit() >= 3,
            "refusals cut the limit to {}",
            handle.limit()
        );
    }

    /// A host written as an IP address was named twice: "address guard
    /// refused 127.0.0.1 (127.0.0.1)".
    #[tokio::test]
    async fn a_refused_ip_literal_is_named_once() {
        let stack = options().stack().unwrap();
        for (url, host) in [
            ("http://127.0.0.1:1/", "127.0.0.1"),
            ("http://[::1]:1/", "[::1]"),
        ] {
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            let err = stack.clone().oneshot(req).await.unwrap_err();
            let text = describe(&*err);
            assert!(
                text.starts_with(&format!("address guard refused {host}: ")),
                "{text}"
            );
        }
    }

    /// A connect timeout named the library's `connect_timeout`, which no
    /// flag is (`--timeout` sets it). The client here has a connect timeout
    /// shorter than its attempt timeout, so the connect timeout is the one
    /// that ends the call (under the CLI's settings both are `--timeout`,
    /// and either can end it first).
    #[tokio::test]
    async fn a_connect_timeout_is_told_as_the_timeout_flag() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and never answers the TLS hello.
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = tower_fanout_http::Client::builder()
            .connect_timeout(Some(Duration::from_millis(100)))
            .timeout(Some(Duration::from_secs(10)))
            .no_retry()
            .build()
            .unwrap();
        let err = client.get(&format!("https://{addr}/")).await.unwrap_err();
        server.abort();
        let text = describe(&err);
        assert!(
            text.contains("no connection within --timeout 100 ms")
                && text.contains("raise --timeout")
                && !text.contains("connect_timeout"),
            "{text}"
        );
    }

    /// The attempt timeout and the redirect cap named library settings,
    /// `timeout` (or `host_timeout`) and `max_redirects`, which no flag of
    /// the CLI is: the item says --timeout, and that the cap has no flag.
    #[tokio::test]
    async fn timeouts_and_redirect_loops_are_told_in_flags() {
        let (_sim, server) = silent().await;
        let looping = answering(
            b"HTTP/1.1 302 Found\r\nlocation: /again\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let opts = FetchOptions {
            adaptive: false,
            allow_private: true,
            timeout: Duration::from_millis(300),
            ..options()
        };
        let items = vec![item("slow", server.addr()), item("loop", looping)];
        let records = opts.fetcher().unwrap().fetch_all(items, |_| {}).await;
        let errors: Vec<&str> = records
            .iter()
            .map(|r| r.error.as_deref().unwrap_or_default())
            .collect();
        assert!(errors[0].contains("within --timeout 300 ms"), "{errors:?}");
        assert!(
            errors[1].contains("more than 10") && errors[1].contains("no flag"),
            "{errors:?}"
        );
        // A Location the client cannot follow said to set max_redirects(0),
        // a library setting (a user trial).
        let ftp = answering(
            b"HTTP/1.1 302 Found\r\nlocation: ftp://files.test/x\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let records = opts
            .fetcher()
            .unwrap()
            .fetch_all(vec![item("ftp", ftp)], |_| {})
            .await;
        let error = records[0].error.as_deref().unwrap();
        assert!(
            error.contains("unsupported scheme \"ftp\"") && !error.contains("max_redirects"),
            "{error}"
        );
        for error in errors {
            assert!(
                !error.contains("`timeout`")
                    && !error.contains("host_timeout")
                    && !error.contains("max_redirects"),
                "{error}"
            );
        }
    }

    /// An error and its sources read as one line, each message once: a
    /// source whose text the outer message already holds is not repeated.
    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        let nested: BoxError = anyhow::anyhow!("connection refused")
            .context("tcp connect error")
            .context("client error (Connect)")
            .into();
        assert_eq!(
            chain(&*nested),
            "client error (Connect): tcp connect error: connection refused"
        );
        let repeated: BoxError = anyhow::anyhow!("connection refused")
            .context("connect: connection refused")
            .into();
        assert_eq!(chain(&*repeated), "connect: connection refused");
    }

    /// A failed item reports how long it took, like a successful one: a
    /// timeout's record says it waited out the timeout, not 0 ms.
    #[tokio::test]
    async fn a_failed_item_reports_its_latency() {
        let (_sim, server) = silent().await;
        let addr = server.addr();
        let opts = FetchOptions {
            adaptive: false,
            allow_private: true,
            timeout: Duration::from_millis(300),
            ..options()
        };
        let items = vec![Item {
            id: "slow".to_string(),
            url: format!("http://{addr}/"),
        }];
        let records = opts.fetcher().unwrap().fetch_all(items, |_| {}).await;
        let record = &records[0];
        assert!(!record.ok && record.status.is_none(), "{record:?}");
        assert!(record.error.is_some(), "{record:?}");
        assert_eq!(record.attempts, 1, "{record:?}");
        assert!(record.latency_ms >= 300, "{record:?}");
    }

    /// A `Retry-After` past the retry layer's cap fails the item with the
    /// library's `RateLimited`, whose message said to raise `max_wait`: a
    /// setting no flag of the CLI reaches. The item says the wait instead.
    #[tokio::test]
    async fn a_retry_after_past_the_cap_says_when_to_come_back() {
        let addr = answering(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3600\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let opts = FetchOptions {
            adaptive: false,
            retries: 2,
            allow_private: true,
            ..options()
        };
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = opts.stack().unwrap().oneshot(req).await.unwrap_err();
        let text = describe(&*err);
        assert!(
            text.contains("wait 3600 s") && !text.contains("max_wait"),
            "{text}"
        );
        // The item's record keeps the answer's status: it was a 429, not
        // a call that got no answer (`status: null` before).
        let records = opts
            .fetcher()
            .unwrap()
            .fetch_all(vec![item("limited", addr)], |_| {})
            .await;
        assert_eq!(records[0].status, Some(429), "{:?}", records[0]);
        assert!(!records[0].ok, "{:?}", records[0]);

        // The next item to that host is never sent: the first answer holds
        // the host. It said "the server asked to wait 3599 s" as if that
        // item had been answered (a user trial).
        let opts = FetchOptions {
            concurrency: 1,
            ..opts
        };
        let records = opts
            .fetcher()
            .unwrap()
            .fetch_all(vec![item("first", addr), item("second", addr)], |_| {})
            .await;
        assert!(
            records[0]
                .error
                .as_deref()
                .unwrap()
                .contains("asked to wait 3600 s"),
            "{:?}",
            records[0]
        );
        let error = records[1].error.as_deref().unwrap();
        assert!(
            error.starts_with(&format!("not sent: {addr} is held for another 3600 s")),
            "{error}"
        );
        assert_eq!(records[1].status, None, "{:?}", records[1]);
    }

    /// A loopback server that reads each request and writes `response`.
    async fn answering(response: &'static [u8]) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(response).await;
                });
            }
        });
        addr
    }

    /// A downstream that answers a minute later, long past any timeout
    /// or deadline of these tests.
    async fn silent() -> (tower_fanout_sim::Sim, tower_fanout_sim::ServerHandle) {
        use tower_fanout_sim::{Jitter, Model, Sim};
        let sim = Sim::new(
            Model::new().latency(Duration::from_secs(60), Jitter::None),
            1,
        );
        let server = sim.serve().await.unwrap();
        (sim, server)
    }

    fn item(id: &str, addr: std::net::SocketAddr) -> Item {
        Item {
            id: id.to_string(),
            url: format!("http://{addr}/"),
        }
    }

    /// `--deadline` bounds an item over its attempts: a downstream slower
    /// than the deadline fails the item at the deadline (not at the 8 s
    /// attempt timeout), after one attempt, with the flag in its message.
    #[tokio::test]
    async fn the_deadline_ends_an_item_before_its_attempt_timeout() {
        let (_sim, server) = silent().await;
        let opts = FetchOptions {
            adaptive: false,
            allow_private: true,
            retries: 2,
            deadline: Some(Duration::from_millis(300)),
            ..options()
        };
        let items = vec![item("slow", server.addr())];
        let records = opts.fetcher().unwrap().fetch_all(items, |_| {}).await;
        let record = &records[0];
        let error = record.error.as_deref().unwrap_or_default();
        assert!(error.contains("--deadline 300 ms"), "{record:?}");
        assert_eq!(record.attempts, 1, "{record:?}");
        assert!((300..8_000).contains(&record.latency_ms), "{record:?}");
    }

    /// A `Retry-After` that would end past the item's deadline is not
    /// slept: with one second between answers and 1.9 s allowed, the item
    /// makes two attempts and fails at the second answer, rate limited.
    #[tokio::test]
    async fn the_deadline_stops_the_retries_whose_wait_would_pass_it() {
        let addr = answering(
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let opts = FetchOptions {
            adaptive: false,
            allow_private: true,
            retries: 10,
            deadline: Some(Duration::from_millis(1_900)),
            ..options()
        };
        let records = opts
            .fetcher()
            .unwrap()
            .fetch_all(vec![item("busy", addr)], |_| {})
            .await;
        let record = &records[0];
        let error = record.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("rate limited") && error.contains("past the item's deadline"),
            "{record:?}"
        );
        assert_eq!(record.attempts, 2, "{record:?}");
        assert!((1_000..1_900).contains(&record.latency_ms), "{record:?}");
    }

    /// A batch's deadline ends every item not done by then: the one in
    /// flight (an attempt, not sent again) and those still waiting for the
    /// window, which are never sent. The batch answers at the deadline, not
    /// at the 8 s attempt timeout.
    #[tokio::test]
    async fn a_batch_deadline_ends_the_items_not_done_by_then() {
        let (sim, server) = silent().await;
        let opts = FetchOptions {
            adaptive: false,
            allow_private: true,
            concurrency: 1,
            retries: 2,
            ..options()
        };
        let items = (0..4)
            .map(|i| item(&i.to_string(), server.addr()))
            .collect();
        let started = tokio::time::Instant::now();
        let fetcher = opts.fetcher().unwrap().within(Duration::from_millis(400));
        let records = fetcher.fetch_all(items, |_| {}).await;
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(400)..Duration::from_secs(8)).contains(&took),
            "{took:?}"
        );
        for record in &records {
            let error = record.error.as_deref().unwrap_or_default();
            assert!(error.contains("deadline_seconds (0.4 s)"), "{records:?}");
        }
        let attempts: Vec<u32> = records.iter().map(|r| r.attempts).collect();
        assert_eq!(attempts, [1, 0, 0, 0], "{records:?}");
        // At most the one sent (it may still be on its way under load).
        assert!(sim.stats().arrivals <= 1, "{records:?}");
    }

    /// A batch's deadline that cuts items in flight says nothing about the
    /// downstream's load (an item may have started a moment before it), so
    /// `--adaptive`'s limit, shared by every batch and MCP call, is left
    /// alone: it read each cut as overload (the client ended the attempt at
    /// the deadline in the request's extensions), and an MCP client with a
    /// short `deadline_seconds` shrank the limit for every other call.
    #[tokio::test]
    async fn a_batch_deadline_does_not_lower_the_adaptive_limit() {
        let (_sim, server) = silent().await;
        let opts = FetchOptions {
            allow_private: true,
            concurrency: 5,
            ..options()
        };
        let layer = opts.adaptive_limit().unwrap();
        let handle = layer.handle();
        let fetcher = Fetcher {
            stack: layered(layer, opts.client().unwrap()),
            concurrency: opts.concurrency,
            per_host: opts.per_host,
            item_deadline: None,
            batch_deadline: None,
        };
        assert_eq!(handle.limit(), 5);
        for round in 0..4 {
            let items = (0..5)
                .map(|i| item(&i.to_string(), server.addr()))
                .collect();
            let records = fetcher
                .within(Duration::from_millis(200))
                .fetch_all(items, |_| {})
                .await;
            assert!(records.iter().all(|r| !r.ok), "{records:?}");
            assert_eq!(handle.limit(), 5, "after round {round}: {records:?}");
        }
    }

    /// Batches run at once (MCP tool calls) share one stack: a batch to an
    /// idle host is not held back by two others waiting for one busy host.
    /// Each batch's window lets `--per-host` of its items through to the
    /// host; the ones the client's per-host gate then held kept their
    /// `--concurrency` slots, so with 4 slots and 2 per host, two batches to
    /// a slow host took all 4 and a third batch's item to another host
    /// waited for the slow host's answers.
    #[tokio::test]
    async fn batches_waiting_for_a_busy_host_leave_the_others_room() {
        let (_sim, slow) = silent().await;
        let fast =
            answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        let opts = FetchOptions {
            adaptive: false,
            allow_private: true,
            concurrency: 4,
            per_host: 2,
            ..options()
        };
        let fetcher = opts.fetcher().unwrap();
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let fetcher = fetcher.clone();
                let items = (0..10).map(|i| item(&i.to_string(), slow.addr())).collect();
                tokio::spawn(async move { fetcher.fetch_all(items, |_| {}).await })
            })
            .collect();
        // Both batches have sent what they may to the slow host.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let records = fetcher
            .within(Duration::from_secs(5))
            .fetch_all(vec![item("fast", fast)], |_| {})
            .await;
        assert!(records[0].ok, "{records:?}");
        assert!(records[0].latency_ms < 5_000, "{records:?}");
        for batch in busy {
            batch.abort();
        }
    }

    /// An item ends at the earliest of its own deadline (`--deadline`),
    /// `--batch-deadline` and an MCP call's deadline, and says which. A
    /// call's deadline can shorten `--batch-deadline`, never lengthen it;
    /// a batch's deadline starts with the batch, not with the fetcher.
    #[tokio::test]
    async fn an_item_ends_at_its_earliest_deadline_and_says_which() {
        let (_sim, server) = silent().await;
        for (own, flag, call, expected) in [
            (Some(300), None, Some(5_000), "--deadline 300 ms"),
            (Some(5_000), None, Some(300), "deadline_seconds (0.3 s)"),
            (None, Some(300), None, "--batch-deadline (0.3 s)"),
            (None, Some(300), Some(5_000), "--batch-deadline (0.3 s)"),
            (None, Some(5_000), Some(300), "deadline_seconds (0.3 s)"),
            (None, None, Some(300), "deadline_seconds (0.3 s)"),
        ] {
            let opts = FetchOptions {
                adaptive: false,
                allow_private: true,
                deadline: own.map(Duration::from_millis),
                batch_deadline: flag.map(Duration::from_millis),
                ..options()
            };
            let mut fetcher = opts.fetcher().unwrap();
            if let Some(call) = call {
                fetcher = fetcher.within(Duration::from_millis(call));
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
            let records = fetcher
                .fetch_all(vec![item("slow", server.addr())], |_| {})
                .await;
            let record = &records[0];
            let error = record.error.as_deref().unwrap_or_default();
            assert!(error.contains(expected), "{expected}: {record:?}");
            assert!((300..5_000).contains(&record.latency_ms), "{record:?}");
        }
    }

    /// The deadline also bounds a wait at a limit above the client: of two
    /// items under a global rate of one a minute, one is answered and the
    /// other, waiting for the next token, fails at its deadline.
    #[tokio::test]
    async fn the_deadline_bounds_a_wait_at_the_global_rate() {
        let addr =
            answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        let opts = FetchOptions {
            adaptive: false,
            allow_private: true,
            rate: Some(crate::units::parse_rate("1/min").unwrap()),
            burst: Some(1),
            deadline: Some(Duration::from_secs(1)),
            ..options()
        };
        let items = vec![item("a", addr), item("b", addr)];
        let records = opts.fetcher().unwrap().fetch_all(items, |_| {}).await;
        let (ok, failed): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.ok);
        assert_eq!((ok.len(), failed.len()), (1, 1), "{records:?}");
        let error = failed[0].error.as_deref().unwrap_or_default();
        assert!(error.contains("--deadline 1000 ms"), "{records:?}");
        assert_eq!(failed[0].attempts, 0, "never sent: {records:?}");
        assert!(
            (1_000..30_000).contains(&failed[0].latency_ms),
            "{records:?}"
        );
    }
}
