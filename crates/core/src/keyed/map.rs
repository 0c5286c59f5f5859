//! The bounded map of per-key state.

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::TooManyKeys;
use crate::clock::Clock;
use crate::rate::bucket::TokenBucket;
use crate::semaphore::Semaphore;

/// A [`KeyLimit`](super::KeyLimit) after validation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resolved {
    pub(super) concurrency: Option<usize>,
    pub(super) rate: Option<(u32, Duration, u32)>,
}

impl Resolved {
    /// Neither a concurrency limit nor a rate: nothing to keep for the key.
    fn is_unlimited(&self) -> bool {
        self.concurrency.is_none() && self.rate.is_none()
    }
}

/// One key's limits.
#[derive(Debug)]
pub(super) struct KeyState {
    pub(super) semaphore: Option<Arc<Semaphore>>,
    pub(super) bucket: Option<TokenBucket>,
    /// Calls waiting for their token (holding their permit, if the key has
    /// a concurrency limit): at the gate still, not in flight.
    pub(super) awaiting_token: AtomicUsize,
    last_used: AtomicU64,
}

/// Every key's state, bounded by `max_keys`.
#[derive(Debug)]
pub(super) struct Keys<K> {
    map: Mutex<HashMap<K, Arc<KeyState>>>,
    default: Resolved,
    overrides: HashMap<K, Resolved>,
    /// The state every key without limits shares: it has no permits and no
    /// bucket, so it is kept out of the map and takes none of its room.
    unlimited: Arc<KeyState>,
    max_keys: usize,
    pub(super) fail_fast: bool,
    // A logical clock for least-recently-used order: cheaper than reading time.
    tick: AtomicU64,
    clock: Clock,
}

impl<K: Hash + Eq + Clone> Keys<K> {
    pub(super) fn new(
        default: Resolved,
        overrides: HashMap<K, Resolved>,
        max_keys: usize,
        fail_fast: bool,
    ) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            default,
            overrides,
            unlimited: Arc::new(KeyState {
                semaphore: None,
                bucket: None,
                awaiting_token: AtomicUsize::new(0),
                last_used: AtomicU64::new(0),
            }),
            max_keys,
            fail_fast,
            tick: AtomicU64::new(0),
            clock: Clock::start(),
        }
    }

    /// Nanoseconds since the epoch, on tokio's clock.
    pub(super) fn now(&self) -> u64 {
        self.clock.now()
    }

    pub(super) fn clock(&self) -> Clock {
        self.clock
    }

    fn limit_of<Q>(&self, key: &Q) -> Resolved
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.overrides.get(key).copied().unwrap_or(self.default)
    }

    /// The state of `key`, created (and idle keys evicted) if needed. A
    /// borrowed key is turned into an owned one only when it is inserted.
    ///
    /// A key without limits gets the shared unlimited state and is not
    /// tracked: it needs no room, so it is never refused for want of it,
    /// and takes none from keys that have limits. With an unlimited default
    /// such a key is told apart without the map's lock (a look-up in the
    /// overrides, none when there are none).
    pub(super) fn get<Q>(&self, key: Cow<'_, Q>) -> Result<Arc<KeyState>, TooManyKeys>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq + ToOwned<Owned = K>,
    {
        if self.default.is_unlimited() && !self.overrides.contains_key(&*key) {
            return Ok(self.unlimited.clone());
        }
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        if let Some(state) = map.get(&*key) {
            state.last_used.store(tick, Ordering::Relaxed);
            return Ok(state.clone());
        }
        let limit = self.limit_of(&*key);
        if limit.is_unlimited() {
            // An override without limits, under a limited default.
            return Ok(self.unlimited.clone());
        }
        if map.len() >= self.max_keys && !self.evict_idle(&mut map) {
            return Err(TooManyKeys::new(self.max_keys));
        }
        let state = Arc::new(KeyState {
            semaphore: limit.concurrency.map(|n| Arc::new(Semaphore::new(n))),
            bucket: limit
                .rate
                .map(|(rate, period, burst)| TokenBucket::new(rate, period, burst)),
            awaiting_token: AtomicUsize::new(0),
            last_used: AtomicU64::new(tick),
        });
        map.insert(key.into_owned(), state.clone());
        Ok(state)
    }

    /// Forgets the least recently used idle keys: an eighth of `max_keys`
    /// (at least one), or every idle key if fewer are idle. Idle: nobody but
    /// the map holds its state (every call, waiting or in flight, holds an
    /// `Arc` of it, and new ones are handed out only under this lock) and
    /// its bucket is full again, so forgetting it cannot loosen the rate.
    ///
    /// Making room for several keys at a time keeps a stream of new keys
    /// (a crawler, a key per tenant) from scanning the whole map, under the
    /// lock every call takes, for each one: the scan is paid once per
    /// `max_keys / 8` new keys.
    fn evict_idle(&self, map: &mut HashMap<K, Arc<KeyState>>) -> bool {
        let now = self.now();
        let idle = |s: &Arc<KeyState>| {
            Arc::strong_count(s) == 1
                && s.bucket.as_ref().is_none_or(|b| b.tokens(now) >= b.burst())
        };
        let mut ticks: Vec<u64> = map
            .values()
            .filter(|s| idle(s))
            .map(|s| s.last_used.load(Ordering::Relaxed))
            .collect();
        if ticks.is_empty() {
            return false;
        }
        let n = (self.max_keys / 8).clamp(1, ticks.len());
        let (_, &mut newest_forgotten, _) = ticks.select_nth_unstable(n - 1);
        // Nothing idle turns busy while the lock is held (a state is handed
        // out only under it), so each key counted above is forgotten here.
        map.retain(|_, s| s.last_used.load(Ordering::Relaxed) > newest_forgotten || !idle(s));
        true
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn with<Q, T>(&self, key: &Q, f: impl FnOnce(&KeyState) -> T) -> Option<T>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.lock().get(key).map(|s| f(s))
    }

    /// Permits held by calls past the gate: a call waiting for its token
    /// holds one too, and is counted as waiting instead.
    pub(super) fn in_flight<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.with(key, |s| {
            s.semaphore.as_ref().map_or(0, |sem| {
                let awaiting = s.awaiting_token.load(Ordering::Relaxed);
                sem.in_use().saturating_sub(awaiting)
            })
        })
        .unwrap_or(0)
    }

    pub(super) fn waiting<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.with(key, |s| {
            s.semaphore.as_ref().map_or(0, |sem| sem.waiting())
                + s.awaiting_token.load(Ordering::Relaxed)
        })
        .unwrap_or(0)
    }

    pub(super) fn tokens<Q>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        let now = self.now();
        self.with(key, |s| s.bucket.as_ref().map(|b| b.tokens(now)))
            .flatten()
    }

    pub(super) fn max_in_flight<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.limit_of(key).concurrency
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<KeyState>>> {
        // Every critical section is a lookup, an insert or a removal that
        // cannot leave the map half-updated, so poisoning is safe to ignore.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}
