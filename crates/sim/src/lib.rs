//! A simulated downstream with a capacity model, to measure fan-out limits
//! against.
//!
//! [`Sim`] follows a [`Model`]: a concurrency capacity (refused with 429 or
//! 503, or queued), a rate capacity answered with 429 and `Retry-After`, a
//! fixed-window quota, a latency with a base and a random part (exponential
//! or log-normal), a knee above which latency grows with load, silent drops,
//! capacity changes at given times, and bodies of a given size. Every part
//! is optional. Its randomness comes from a seed and its time from Tokio's
//! clock, so on a paused clock a run is deterministic and a minute of
//! traffic takes milliseconds.
//!
//! It is a tower `Service<http::Request<B>>`, and [`Sim::serve`] puts the
//! same downstream behind a real HTTP/1 server on `127.0.0.1`. It records
//! time-weighted requests in service, admission rate, goodput, refusals and
//! latency percentiles, read with [`Sim::stats`].
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceExt;
//! use tower_fanout_sim::{Jitter, Model, Sim};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let model = Model::new()
//!     .concurrency(2)
//!     .latency(Duration::from_millis(100), Jitter::None);
//! let sim = Sim::new(model, 42);
//! let calls: Vec<_> = (0..3)
//!     .map(|_| tokio::spawn(sim.clone().oneshot(http::Request::new(()))))
//!     .collect();
//! let mut statuses = Vec::new();
//! for call in calls {
//!     statuses.push(call.await.unwrap().unwrap().status().as_u16());
//! }
//! statuses.sort();
//! assert_eq!(statuses, [200, 200, 429]);
//! let stats = sim.stats();
//! assert_eq!((stats.successes, stats.refused_429), (2, 1));
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod model;
mod rng;
mod server;
mod sim;
mod stats;

pub use crate::model::{Jitter, Model, Overflow};
pub use crate::server::ServerHandle;
pub use crate::sim::{Body, Sim, SimFuture};
pub use crate::stats::Stats;
