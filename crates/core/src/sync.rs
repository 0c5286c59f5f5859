//! The synchronization primitives of the semaphore: std's, or loom's in the
//! unit tests under `cfg(tower_fanout_loom)` so the model tests can explore
//! every interleaving (`scripts/loom`). Loom is a dev-dependency, hence
//! `test` too. Plain re-exports: no wrapper, no cost.

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
