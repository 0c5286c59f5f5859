//! The synchronization primitives of the semaphore and the backpressure
//! queue: std's, or loom's in the unit tests under `cfg(tower_fanout_loom)`
//! so the model tests can explore every interleaving (`scripts/loom`). Loom
//! is a dev-dependency, hence `test` too. Plain re-exports: no wrapper, no
//! cost.

#[cfg(not(all(test, tower_fanout_loom)))]
pub(crate) use std::{
    hint::spin_loop,
    sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering, fence},
    sync::{Arc, Mutex, MutexGuard},
    thread::yield_now,
};

// Loom's spin and yield hand the turn to another modelled thread; std's
// would spin for ever on a thread loom has paused (reported as a livelock).
#[cfg(all(test, tower_fanout_loom))]
pub(crate) use loom::{
    hint::spin_loop,
    sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering, fence},
    sync::{Arc, Mutex, MutexGuard},
    thread::yield_now,
};

/// Runs a loom model: `LOOM_MAX_PREEMPTIONS` if set, else 3 (unbounded,
/// three threads would run for hours). Prints how many interleavings it
/// ran (`--nocapture`), to see what a change of the bound costs.
#[cfg(all(test, tower_fanout_loom))]
pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
    // std's counter: it outlives the runs, which a loom atomic cannot.
    use std::sync::atomic::AtomicUsize;
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f();
    });
    let name = std::thread::current().name().unwrap_or("?").to_owned();
    let bound = builder.preemption_bound.unwrap_or(0);
    let runs = runs.load(Ordering::Relaxed);
    eprintln!("{name}: {runs} interleavings, preemption bound {bound}");
}
