//! `fanout`: bounded fan-out from the command line.
//!
//! - `fanout demo`: the same 500-call batch through each bound against an
//!   embedded downstream on 127.0.0.1, with a table of what happened.
//! - `fanout fetch [FILE|-]`: fetch a list of URLs, one JSON line per item.
//! - `fanout mcp`: an MCP server on stdio with a bounded `batch_fetch_urls` tool.

/// `eprintln!` without its panic: with standard error closed (`2>&1 | head
/// -1` once `head` is gone) a message nobody can read is dropped, instead
/// of `eprintln!` panicking and the exit code becoming 101.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod demo;
mod engine;
mod input;
mod mcp;
mod units;

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::FetchOptions;
use crate::units::Rate;

#[derive(Debug, Parser)]
#[command(name = "fanout", version, about = "Bounded fan-out for HTTP calls")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one batch through each bound against an embedded downstream and compare.
    Demo {
        /// Print the figures as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Calls in the batch.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5000))]
        requests: u32,
    },
    /// Fetch URLs (one per line, a JSON array of {"id","url"} or URL strings, or JSON Lines) with bounded fan-out.
    Fetch {
        /// The input file; `-` or nothing reads standard input.
        input: Option<PathBuf>,
        #[command(flatten)]
        limits: Limits,
    },
    /// Serve MCP tools (batch_fetch_urls, get_batch_results) on standard input and output.
    Mcp {
        #[command(flatten)]
        limits: Limits,
    },
}

#[derive(Debug, Args)]
struct Limits {
    /// Requests in flight at most (overall).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Requests per period overall, e.g. 10/s, 600/min, 1000/h.
    #[arg(long, value_parser = units::parse_rate)]
    rate: Option<Rate>,
    /// Requests admitted at once by the rate limit (defaults to the rate's count).
    #[arg(long, requires = "rate", value_parser = clap::value_parser!(u32).range(1..))]
    burst: Option<u32>,
    /// Requests in flight at most per host.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    per_host: u32,
    /// Let the concurrency limit adapt to the downstream (up to --concurrency).
    #[arg(long)]
    adaptive: bool,
    /// Time allowed for each attempt, e.g. 8s, 500ms.
    #[arg(long, default_value = "8s", value_parser = units::parse_duration)]
    timeout: Duration,
    /// Time allowed for each item from its start, every attempt and wait included, e.g. 30s (default: none: an item takes up to --timeout an attempt, plus its waits for a slot under the limits and between its --retries, a Retry-After of up to 60 s each).
    #[arg(long, value_parser = units::parse_duration)]
    deadline: Option<Duration>,
    /// Time allowed for the whole batch (with mcp, for each tool call), e.g. 60s: items not done by then fail, those not started are never sent.
    #[arg(long, value_parser = units::parse_duration)]
    batch_deadline: Option<Duration>,
    /// Largest response body accepted, e.g. 10MiB.
    #[arg(long, default_value = "10MiB", value_parser = units::parse_size)]
    max_body: u64,
    /// Retries per item: 429 and 503 wait for their Retry-After, 502/503/504 and connection failures back off; a 500 or a --timeout is not retried. Within a budget (about one retry per five requests over 10 s, plus 10 a second), so a host failing everything is not hammered: past it an item keeps its last answer.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    retries: u32,
    /// Items accepted in one batch at most (fetch reads its input, and mcp each message, up to 16 KiB per item).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_items: u32,
    /// Turn the address guard off: allow loopback, private, link-local,
    /// unique-local, CGNAT, metadata and the other special-purpose addresses
    /// (refused by default).
    #[arg(long)]
    allow_private: bool,
}

impl Limits {
    fn options(&self) -> FetchOptions {
        FetchOptions {
            concurrency: self.concurrency as usize,
            rate: self.rate,
            burst: self.burst,
            per_host: self.per_host as usize,
            adaptive: self.adaptive,
            timeout: self.timeout,
            deadline: self.deadline,
            batch_deadline: self.batch_deadline,
            max_body: self.max_body,
            retries: self.retries,
            allow_private: self.allow_private,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note!("fanout: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { json, requests } => demo(json, requests as usize).await,
            Command::Fetch { input, limits } => fetch(input, &limits).await,
            Command::Mcp { limits } => {
                mcp::serve(limits.options().fetcher()?, limits.max_items as usize).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            note!("fanout: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A bar on stderr, which indicatif leaves undrawn when stderr is not a
/// terminal (a pipe, a file, `TERM=dumb`): no escape codes in a log.
fn progress_bar(total: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{prefix:>28} {bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar
}

async fn demo(json: bool, requests: usize) -> anyhow::Result<ExitCode> {
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let rows = demo::run(requests, |name| {
        let bar = bars.add(progress_bar(requests));
        bar.set_prefix(name);
        move |p: &tower_fanout_core::fan_out::Progress| {
            bar.set_position(p.completed as u64);
            bar.set_message(format!("{} ok, {} failed", p.succeeded, p.failed));
        }
    })
    .await?;
    let _ = bars.clear();
    let text = if json {
        serde_json::to_string_pretty(&rows)? + "\n"
    } else {
        demo::table(&rows)
    };
    // Not `print!`, which panics when nobody reads on (a closed pipe).
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the results")?;
    Ok(ExitCode::SUCCESS)
}

/// The signal that stopped a batch: its exit code, as a shell reports a
/// process it ended (128 + the signal's number), and its name for the
/// summary.
#[derive(Debug, Clone, Copy)]
struct StopSignal {
    exit_code: u8,
    name: &'static str,
}

/// Ctrl-C (SIGINT), or SIGTERM: how `timeout`, `docker stop`, supervisors
/// and agent runners stop a process. Either ends the batch the same way,
/// its answers kept. A handler that cannot be set up (`Err`) leaves the
/// batch running, as if there were none.
async fn stop_signal() -> StopSignal {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => StopSignal {
                exit_code: 130,
                name: "",
            },
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
                StopSignal {
                    exit_code: 143,
                    name: " (SIGTERM)",
                }
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<StopSignal>();
    tokio::select! {
        stop = interrupt => stop,
        stop = terminate => stop,
    }
}

/// Input bytes allowed per item of `--max-items`: room for a long URL, its
/// id and JSON punctuation, and comment lines between them.
const INPUT_BYTES_PER_ITEM: u64 = 16 * 1024;

async fn fetch(path: Option<PathBuf>, limits: &Limits) -> anyhow::Result<ExitCode> {
    // Flags that make no stack (a rate whose burst takes years to refill,
    // say) are refused before the input is read: from a terminal or a slow
    // pipe, that read could take as long as its writer.
    let fetcher = limits.options().fetcher()?;
    // The input is read whole before anything is fetched (it is checked
    // whole), so it is bounded too: an endless or huge input is refused
    // once past the bound instead of filling memory.
    let bound = u64::from(limits.max_items) * INPUT_BYTES_PER_ITEM;
    // No path, or `-`, is standard input.
    let file = path.as_deref().filter(|p| p.as_os_str() != "-");
    let mut bytes = Vec::new();
    let read = match file {
        Some(p) => std::fs::File::open(p).and_then(|f| f.take(bound + 1).read_to_end(&mut bytes)),
        None => std::io::stdin().take(bound + 1).read_to_end(&mut bytes),
    };
    if let Err(e) = read {
        match file {
            Some(p) => note!("fanout: cannot read the input {}: {e}", p.display()),
            None => note!("fanout: cannot read the input: {e}"),
        }
        return Ok(ExitCode::from(2));
    }
    if bytes.len() as u64 > bound {
        note!(
            "fanout: bad input, nothing fetched: the input is over {} KiB ({} KiB for each of \
             --max-items {}); split it or raise --max-items",
            bound / 1024,
            INPUT_BYTES_PER_ITEM / 1024,
            limits.max_items
        );
        return Ok(ExitCode::from(2));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            note!("fanout: cannot read the input: it is not UTF-8 text ({e})");
            return Ok(ExitCode::from(2));
        }
    };
    let items = match input::parse(&text, limits.max_items as usize) {
        Ok(items) => items,
        Err(e) => {
            note!("fanout: bad input, nothing fetched: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let total = items.len();
    let bar = progress_bar(total);
    // Each record is written as soon as it and the ones before it are done,
    // so a long batch shows its results as it goes and an interrupted one
    // keeps what it fetched.
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut write_error = None;
    let interrupted = fetcher
        .fetch_each(
            items,
            {
                let bar = bar.clone();
                move |p| {
                    bar.set_position(p.completed as u64);
                    let mut message = format!("{} ok, {} failed", p.succeeded, p.failed);
                    if p.waiting_for_key > 0 {
                        // Set aside while their host has --per-host in flight.
                        message
                            .push_str(&format!(", {} waiting for their host", p.waiting_for_key));
                    }
                    bar.set_message(message);
                }
            },
            |record| {
                if record.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
                let written = bar.suspend(|| {
                    let mut stdout = std::io::stdout().lock();
                    serde_json::to_writer(&mut stdout, &record)?;
                    stdout.write_all(b"\n")?;
                    stdout.flush()
                });
                match written {
                    Ok(()) => ControlFlow::Continue(()),
                    // Nobody reads on (a closed pipe, say): stop fetching.
                    Err(e) => {
                        write_error = Some(e);
                        ControlFlow::Break(())
                    }
                }
            },
            stop_signal(),
        )
        .await;
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(anyhow::Error::new(e).context("cannot write the results"));
    }
    if let Some(signal) = interrupted {
        note!(
            "fanout: interrupted{}: {} of {total} written, {ok} ok, {failed} failed",
            signal.name,
            ok + failed
        );
        return Ok(ExitCode::from(signal.exit_code));
    }
    note!("fanout: {} fetched, {ok} ok, {failed} failed", ok + failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
