//! The key-aware window of [`FanOut::per_key`](super::FanOut::per_key).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;

mod sealed {
    pub trait Sealed {}
}

/// How a fan-out's window admits the requests it reads: each in turn
/// ([`Unkeyed`], the default), or by key ([`PerKey`], made by
/// [`FanOut::per_key`](super::FanOut::per_key)).
///
/// Named so that code over any fan-out can be written, keyed or not
/// (`fn run<W: Admission<Req>>(batch: FanOut<S, I, W>)`); sealed: its
/// methods are the fan-out's own business, and only these two implement it.
pub trait Admission<Req>: sealed::Sealed {
    /// Called once, when the fan-out starts, with its window.
    #[doc(hidden)]
    fn start(&mut self, window: usize);

    /// A request set aside earlier whose key has room now (its slot is
    /// taken already): the oldest such one.
    #[doc(hidden)]
    fn take_ready(&mut self) -> Option<(usize, Req)>;

    /// Whether another request may be read: there is room to set it aside
    /// if its key turns out to be busy.
    #[doc(hidden)]
    fn can_read(&self) -> bool;

    /// `req`, read at `index`: back to start it now (its key's slot taken),
    /// or `None` when it was set aside.
    #[doc(hidden)]
    fn offer(&mut self, index: usize, req: Req) -> Option<Req>;

    /// The request read at `index`, started earlier, has finished.
    #[doc(hidden)]
    fn finished(&mut self, index: usize);

    /// Requests read and not started yet (set aside, or ready to start).
    #[doc(hidden)]
    fn held(&self) -> usize;
}

impl sealed::Sealed for Unkeyed {}
impl<F, K, Req> sealed::Sealed for PerKey<F, K, Req> {}

/// The default window: every request starts in turn, whatever its key.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unkeyed;

impl<Req> Admission<Req> for Unkeyed {
    #[inline]
    fn start(&mut self, _window: usize) {}

    #[inline]
    fn take_ready(&mut self) -> Option<(usize, Req)> {
        None
    }

    #[inline]
    fn can_read(&self) -> bool {
        true
    }

    #[inline]
    fn offer(&mut self, _index: usize, req: Req) -> Option<Req> {
        Some(req)
    }

    #[inline]
    fn finished(&mut self, _index: usize) {}

    #[inline]
    fn held(&self) -> usize {
        0
    }
}

/// A window that starts at most `max_per_key` requests of one key at once
/// and sets the others aside; made by [`FanOut::per_key`](super::FanOut::per_key).
pub struct PerKey<F, K, Req> {
    key_fn: F,
    max_per_key: usize,
    /// Set by [`FanOut::lookahead`](super::FanOut::lookahead), or 4 × the
    /// window when the fan-out starts.
    lookahead: Option<usize>,
    /// Keys with a request started or set aside; a key leaves when it has
    /// neither, so this holds at most window + lookahead keys.
    keys: HashMap<K, Slot<Req>>,
    /// The key of each started request, by its index.
    started: HashMap<usize, K>,
    /// Set-aside requests whose key has room now, oldest first: their slot
    /// is taken, and they start as the window has room.
    ready: VecDeque<(usize, Req)>,
    /// Requests held (set aside or ready): at most `lookahead`.
    held: usize,
}

/// One key's state: requests started and not finished (ready ones
/// included), and the ones waiting for room, oldest first.
struct Slot<Req> {
    started: usize,
    waiting: VecDeque<(usize, Req)>,
}

impl<F, K, Req> PerKey<F, K, Req> {
    pub(super) fn new(key_fn: F, max_per_key: usize) -> Self {
        Self {
            key_fn,
            max_per_key,
            lookahead: None,
            keys: HashMap::new(),
            started: HashMap::new(),
            ready: VecDeque::new(),
            held: 0,
        }
    }

    pub(super) fn set_lookahead(&mut self, lookahead: usize) {
        self.lookahead = Some(lookahead);
    }
}

impl<F, K, Req> fmt::Debug for PerKey<F, K, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerKey")
            .field("max_per_key", &self.max_per_key)
            .field("lookahead", &self.lookahead)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl<F, K, Req> Admission<Req> for PerKey<F, K, Req>
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone,
{
    fn start(&mut self, window: usize) {
        // Four windows: enough to look past a few busy keys' worth of
        // requests (a list grouped by site), while the requests held stay
        // a small multiple of those in flight.
        self.lookahead.get_or_insert(window.saturating_mul(4));
    }

    fn take_ready(&mut self) -> Option<(usize, Req)> {
        let ready = self.ready.pop_front()?;
        self.held -= 1;
        Some(ready)
    }

    fn can_read(&self) -> bool {
        self.held < self.lookahead.unwrap_or(1)
    }

    fn offer(&mut self, index: usize, req: Req) -> Option<Req> {
        let key = (self.key_fn)(&req);
        let slot = match self.keys.entry(key.clone()) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => slot.insert(Slot {
                started: 0,
                waiting: VecDeque::new(),
            }),
        };
        if slot.started < self.max_per_key {
            slot.started += 1;
            self.started.insert(index, key);
            Some(req)
        } else {
            slot.waiting.push_back((index, req));
            self.held += 1;
            None
        }
    }

    fn finished(&mut self, index: usize) {
        let Some(key) = self.started.remove(&index) else {
            return;
        };
        let Entry::Occupied(mut entry) = self.keys.entry(key) else {
            return;
        };
        let slot = entry.get_mut();
        // The finished request's slot goes to its key's oldest waiting
        // request, if any; otherwise the key has one more free.
        if let Some((next, req)) = slot.waiting.pop_front() {
            self.started.insert(next, entry.key().clone());
            self.ready.push_back((next, req));
        } else {
            slot.started -= 1;
            if slot.started == 0 {
                entry.remove();
            }
        }
    }

    fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A window driven as `Completions` drives it, with items finishing in
    /// a seeded random order: every item starts once, no key has more than
    /// `max` started, no more than `lookahead` are held, and nothing is
    /// left in the maps at the end.
    #[test]
    fn random_windows_start_each_item_once_within_the_bounds() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..2000 {
            let window = 1 + rand(6);
            let max = 1 + rand(3);
            let lookahead = 1 + rand(8);
            let keys = 1 + rand(4);
            let total = rand(40);
            let items: Vec<usize> = (0..total).map(|_| rand(keys)).collect();
            let mut admission = PerKey::new(|k: &usize| *k, max);
            admission.set_lookahead(lookahead);
            Admission::<usize>::start(&mut admission, window);
            let mut next = 0;
            let mut running: Vec<(usize, usize)> = Vec::new();
            let mut started = vec![false; total];
            let mut per_key = vec![0; keys];
            loop {
                // fill
                while running.len() < window {
                    if let Some((i, k)) = admission.take_ready() {
                        running.push((i, k));
                        continue;
                    }
                    if next == total || !Admission::<usize>::can_read(&admission) {
                        break;
                    }
                    let i = next;
                    next += 1;
                    if let Some(k) = admission.offer(i, items[i]) {
                        running.push((i, k));
                    }
                }
                for &(i, k) in &running {
                    if !started[i] {
                        started[i] = true;
                        per_key[k] += 1;
                    }
                    assert!(per_key[k] <= max, "round {round}: key {k} over {max}");
                }
                assert!(admission.held <= lookahead, "round {round}");
                if running.is_empty() {
                    break;
                }
                let (i, k) = running.swap_remove(rand(running.len()));
                per_key[k] -= 1;
                Admission::<usize>::finished(&mut admission, i);
            }
            assert_eq!(next, total, "round {round}: stalled with items unread");
            assert!(
                started.iter().all(|s| *s),
                "round {round}: an item never started"
            );
            assert_eq!(admission.held, 0, "round {round}");
            assert!(admission.keys.is_empty(), "round {round}: keys leak");
            assert!(admission.started.is_empty(), "round {round}");
            assert!(admission.ready.is_empty(), "round {round}");
        }
    }
}
