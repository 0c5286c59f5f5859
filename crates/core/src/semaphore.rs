//! A fair async semaphore with a lock-free fast path and a resizable limit.
//!
//! Why not `tokio::sync::Semaphore`: every release there takes the waiter
//! list's mutex, even when nobody waits, and its size cannot shrink below the
//! permits in use. Here an uncontended acquire and release are one CAS each,
//! the mutex is touched only while somebody waits, and the limit can move in
//! either direction (the adaptive layer needs that): shrinking below what is
//! in use leaves a debt that returned permits pay off before anybody else is
//! admitted.
//!
//! The state word packs `available * 2 + waiters_flag` into one `i64`, so a
//! release can tell in one load whether it must hand its permit to a waiter.
//! `available` goes negative while a shrink is being paid off.

use std::collections::VecDeque;
// The layers share the semaphore in std's `Arc`; the tickets are the shim's.
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::sync::{self, AtomicBool, AtomicI64, AtomicUsize, Mutex, MutexGuard, Ordering, fence};

const WAITERS: i64 = 1;
const ONE: i64 = 2;

/// The shared state: permits, the limit they derive from, and the FIFO of waiters.
#[derive(Debug)]
pub(crate) struct Semaphore {
    state: AtomicI64,
    limit: AtomicUsize,
    /// Odd while `set_limit` is between its two steps (limit, then state
    /// word), so `in_use` can tell whether the two values it read belong
    /// together: a seqlock around a change that is rare and already locked.
    limit_changes: AtomicUsize,
    waiting: AtomicUsize,
    waiters: Mutex<VecDeque<Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    granted: sync::Arc<AtomicBool>,
    waker: Waker,
}

impl Semaphore {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            state: AtomicI64::new(to_state(limit)),
            limit: AtomicUsize::new(limit),
            limit_changes: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            waiters: Mutex::new(VecDeque::new()),
        }
    }

    /// The configured number of permits.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Permits that can be taken now (zero while a shrink is being paid off).
    #[cfg_attr(not(feature = "concurrency"), allow(dead_code))]
    pub(crate) fn available(&self) -> usize {
        usize::try_from(self.state.load(Ordering::Relaxed) >> 1).unwrap_or(0)
    }

    /// Permits held (including ones granted to a waiter that has not run yet).
    pub(crate) fn in_use(&self) -> usize {
        let mut spins = 0u32;
        loop {
            let before = self.limit_changes.load(Ordering::Acquire);
            let limit = self.limit.load(Ordering::Relaxed);
            let available = self.state.load(Ordering::Relaxed) >> 1;
            fence(Ordering::Acquire);
            if before & 1 == 0 && self.limit_changes.load(Ordering::Relaxed) == before {
                // The limit as the state word holds it (capped by `to_state`),
                // or a huge limit would count the cap's shortfall as in use.
                let limit = to_state(limit) >> 1;
                return usize::try_from(limit.saturating_sub(available)).unwrap_or(0);
            }
            // A limit change is half done: a few instructions, unless the
            // thread making it was preempted between them.
            if spins < 64 {
                spins += 1;
                sync::spin_loop();
            } else {
                sync::yield_now();
            }
        }
    }

    /// Tasks queued for a permit.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a permit if one is free and nobody is queued before us.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            // Queued waiters go first: barging would starve them.
            if state & WAITERS != 0 || state >> 1 <= 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state - ONE,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Returns one permit, handing it straight to the oldest waiter if any.
    #[inline]
    pub(crate) fn release(&self) {
        // One RMW whatever the state: the previous value says whether somebody
        // waits. Nobody can barge in on the permit while the flag is up
        // (`try_acquire` refuses), so handing it over under the lock
        // afterwards is as fair as adding it under the lock.
        let previous = self.state.fetch_add(ONE, Ordering::Release);
        if previous & WAITERS != 0 {
            self.hand_over();
        }
    }

    #[inline(never)]
    fn hand_over(&self) {
        self.grant(self.lock());
    }

    /// Moves the limit; a shrink below what is in use is paid off by releases.
    #[cfg_attr(
        not(feature = "adaptive"),
        allow(dead_code, reason = "only the adaptive limit moves it")
    )]
    pub(crate) fn set_limit(&self, new_limit: usize) {
        let waiters = self.lock();
        self.limit_changes.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        let old = self.limit.swap(new_limit, Ordering::Relaxed);
        let delta = to_state(new_limit) - to_state(old);
        self.state.fetch_add(delta, Ordering::AcqRel);
        self.limit_changes.fetch_add(1, Ordering::Release);
        self.grant(waiters);
    }

    /// Polls for a permit, queueing `ticket` behind earlier waiters.
    ///
    /// Returns `Ready(())` once the caller holds a permit; `ticket` is then
    /// `None` again. A caller that stops polling must call [`Semaphore::cancel`].
    #[inline]
    pub(crate) fn poll_acquire(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<sync::Arc<AtomicBool>>,
    ) -> Poll<()> {
        if ticket.is_none() && self.try_acquire() {
            return Poll::Ready(());
        }
        self.poll_acquire_slow(cx, ticket)
    }

    /// The queue side of [`Semaphore::poll_acquire`], kept out of line so the
    /// fast path inlines into the services.
    #[inline(never)]
    fn poll_acquire_slow(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<sync::Arc<AtomicBool>>,
    ) -> Poll<()> {
        if let Some(granted) = ticket {
            if granted.load(Ordering::Acquire) {
                *ticket = None;
                return Poll::Ready(());
            }
            let mut waiters = self.lock();
            if granted.load(Ordering::Acquire) {
                *ticket = None;
                return Poll::Ready(());
            }
            // The waker replaced is dropped after the lock (see `grant`).
            let _replaced = waiters
                .iter_mut()
                .find(|w| sync::Arc::ptr_eq(&w.granted, granted))
                .filter(|waiter| !waiter.waker.will_wake(cx.waker()))
                .map(|waiter| std::mem::replace(&mut waiter.waker, cx.waker().clone()));
            drop(waiters);
            return Poll::Pending;
        }
        let mut waiters = self.lock();
        let granted = sync::Arc::new(AtomicBool::new(false));
        waiters.push_back(Waiter {
            granted: granted.clone(),
            waker: cx.waker().clone(),
        });
        self.waiting.store(waiters.len(), Ordering::Relaxed);
        self.state.fetch_or(WAITERS, Ordering::AcqRel);
        // A release may have landed between the failed fast path and the
        // flag: it saw no flag and added its permit, so look again.
        self.grant(waiters);
        if granted.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *ticket = Some(granted);
        Poll::Pending
    }

    /// Gives up a queued ticket; a permit granted meanwhile is passed on.
    pub(crate) fn cancel(&self, ticket: &mut Option<sync::Arc<AtomicBool>>) {
        let Some(granted) = ticket.take() else {
            return;
        };
        let mut waiters = self.lock();
        // The waiter taken out is dropped after the lock (see `grant`).
        let _removed = if granted.load(Ordering::Acquire) {
            self.state.fetch_add(ONE, Ordering::Release);
            None
        } else {
            waiters
                .iter()
                .position(|w| sync::Arc::ptr_eq(&w.granted, &granted))
                .and_then(|at| waiters.remove(at))
        };
        self.grant(waiters);
    }

    /// Hands free permits to waiters in order, clears the flag when none
    /// wait, and releases the lock. The waiters granted are woken after it
    /// is released: a waker is code we do not know (waking or dropping it
    /// may drop a task whose future gives up its own ticket, which takes
    /// this lock), and a task woken on another thread should not find the
    /// lock still held. Past a batch of wakers it wakes those and locks again.
    fn grant<'a>(&'a self, mut waiters: MutexGuard<'a, VecDeque<Waiter>>) {
        const BATCH: usize = 8;
        loop {
            let mut woken: [Option<Waker>; BATCH] = Default::default();
            let mut count = 0;
            let more = loop {
                if waiters.is_empty() {
                    self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                    break false;
                }
                let state = self.state.load(Ordering::Acquire);
                if state >> 1 <= 0 {
                    break false;
                }
                if count == BATCH {
                    break true;
                }
                if self
                    .state
                    .compare_exchange(state, state - ONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                    && let Some(waiter) = waiters.pop_front()
                {
                    waiter.granted.store(true, Ordering::Release);
                    woken[count] = Some(waiter.waker);
                    count += 1;
                }
            };
            self.waiting.store(waiters.len(), Ordering::Relaxed);
            drop(waiters);
            for waker in woken.into_iter().flatten() {
                waker.wake();
            }
            if !more {
                return;
            }
            waiters = self.lock();
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Waiter>> {
        // A panic while holding this lock cannot leave the queue half-updated
        // (every critical section is a few infallible steps), so poisoning is
        // safe to ignore.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_state(permits: usize) -> i64 {
    i64::try_from(permits)
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4)
        * ONE
}

/// One permit of a concurrency limit, held by a call in flight and returned
/// to the limit when dropped.
#[derive(Debug)]
#[cfg_attr(not(feature = "concurrency"), allow(unreachable_pub))]
pub struct Permit {
    semaphore: Arc<Semaphore>,
}

impl Permit {
    /// Wraps a permit the caller has already taken from `semaphore`.
    #[inline]
    pub(crate) fn taken(semaphore: Arc<Semaphore>) -> Self {
        Self { semaphore }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.semaphore.release();
    }
}

/// Reservation state shared by services that hold one permit at a time.
#[derive(Debug)]
pub(crate) struct Acquire {
    semaphore: Arc<Semaphore>,
    ticket: Option<sync::Arc<AtomicBool>>,
}

impl Acquire {
    pub(crate) fn new(semaphore: Arc<Semaphore>) -> Self {
        Self {
            semaphore,
            ticket: None,
        }
    }

    #[cfg_attr(not(feature = "concurrency"), allow(dead_code))]
    pub(crate) fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }

    /// Waits (fairly) for a permit.
    #[inline]
    pub(crate) fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<Permit> {
        match self.semaphore.poll_acquire(cx, &mut self.ticket) {
            Poll::Ready(()) => Poll::Ready(Permit::taken(self.semaphore.clone())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes a permit only if one is free right now.
    #[inline]
    pub(crate) fn try_acquire(&mut self) -> Option<Permit> {
        if self.ticket.is_some() {
            return self.take_granted();
        }
        self.semaphore
            .try_acquire()
            .then(|| Permit::taken(self.semaphore.clone()))
    }

    /// Already queued: only the queue can admit us, and fairly. Just looks
    /// whether it has; re-polling here would swap the waker the queue holds
    /// for one that wakes nobody. Out of line: no layer's hot path queues
    /// and then tries (the benches showed it slowing the inlined
    /// `poll_ready` of the concurrency limit by ~1 ns).
    #[cold]
    #[inline(never)]
    fn take_granted(&mut self) -> Option<Permit> {
        let granted = self.ticket.as_ref()?;
        if !granted.load(Ordering::Acquire) {
            return None;
        }
        self.ticket = None;
        Some(Permit::taken(self.semaphore.clone()))
    }

    /// A permit: waited for, or, with `fail_fast`, taken only if one is free
    /// now (`Ready(None)`: none was, so the caller sheds).
    #[cfg_attr(
        not(any(feature = "backpressure", feature = "adaptive")),
        allow(
            dead_code,
            reason = "the concurrency layer spells it out on its hot path"
        )
    )]
    #[inline]
    pub(crate) fn poll_or_shed(
        &mut self,
        fail_fast: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Permit>> {
        if fail_fast {
            Poll::Ready(self.try_acquire())
        } else {
            self.poll_acquire(cx).map(Some)
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        self.semaphore.cancel(&mut self.ticket);
    }
}

impl Clone for Acquire {
    /// A clone starts outside the queue.
    fn clone(&self) -> Self {
        Self::new(self.semaphore.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::task::Waker;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// A semaphore of one permit, held, and the ticket of a caller queued for it.
    fn one_held_one_queued() -> (Semaphore, Option<sync::Arc<AtomicBool>>) {
        let s = Semaphore::new(1);
        assert!(s.try_acquire());
        let mut ticket = None;
        assert!(s.poll_acquire(&mut cx(), &mut ticket).is_pending());
        (s, ticket)
    }

    /// A waker that records that it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn fast_path_acquire_and_release() {
        let s = Semaphore::new(2);
        assert!(s.try_acquire());
        assert!(s.try_acquire());
        assert!(!s.try_acquire());
        assert_eq!(s.in_use(), 2);
        s.release();
        assert_eq!(s.available(), 1);
        s.release();
        assert_eq!(s.in_use(), 0);
    }

    #[test]
    fn release_hands_permit_to_oldest_waiter() {
        let s = Arc::new(Semaphore::new(1));
        assert!(s.try_acquire());
        let (mut a, mut b) = (None, None);
        assert!(s.poll_acquire(&mut cx(), &mut a).is_pending());
        assert!(s.poll_acquire(&mut cx(), &mut b).is_pending());
        assert_eq!(s.waiting(), 2);
        // A newcomer may not barge past the queue.
        assert!(!s.try_acquire());
        s.release();
        assert!(s.poll_acquire(&mut cx(), &mut b).is_pending());
        assert!(s.poll_acquire(&mut cx(), &mut a).is_ready());
        assert_eq!(s.in_use(), 1);
        s.cancel(&mut b);
        assert_eq!(s.waiting(), 0);
        s.release();
        assert_eq!(s.available(), 1);
        assert!(s.try_acquire());
    }

    #[test]
    fn cancel_after_grant_passes_permit_on() {
        let s = Semaphore::new(1);
        assert!(s.try_acquire());
        let (mut a, mut b) = (None, None);
        assert!(s.poll_acquire(&mut cx(), &mut a).is_pending());
        assert!(s.poll_acquire(&mut cx(), &mut b).is_pending());
        s.release(); // granted to a, who never looks
        s.cancel(&mut a);
        assert!(s.poll_acquire(&mut cx(), &mut b).is_ready());
        s.release();
        assert_eq!(s.in_use(), 0);
        assert_eq!(s.available(), 1);
    }

    #[test]
    fn shrink_below_in_use_is_paid_off_first() {
        let s = Semaphore::new(4);
        for _ in 0..4 {
            assert!(s.try_acquire());
        }
        s.set_limit(2);
        assert_eq!(s.in_use(), 4);
        s.release();
        s.release();
        assert!(!s.try_acquire(), "debt of two permits paid first");
        s.release();
        assert!(s.try_acquire());
        s.set_limit(5);
        assert_eq!(s.available(), 3);
        assert_eq!(s.in_use(), 2);
    }

    #[test]
    fn counts_stay_right_for_a_limit_beyond_the_state_word() {
        // `usize::MAX` ("no limit") does not fit the state word, which holds
        // at most `i64::MAX / 4` permits: nothing is in use all the same.
        let s = Semaphore::new(usize::MAX);
        assert_eq!(s.in_use(), 0);
        assert!(s.try_acquire());
        assert_eq!(s.in_use(), 1);
        s.release();
        s.set_limit(3);
        assert_eq!((s.in_use(), s.available()), (0, 3));
        assert!(s.try_acquire());
        s.set_limit(usize::MAX);
        assert_eq!(s.in_use(), 1);
    }

    #[test]
    fn try_acquire_while_queued_keeps_the_waiters_waker() {
        let s = Arc::new(Semaphore::new(1));
        assert!(s.try_acquire());
        let mut a = Acquire::new(s.clone());
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        assert!(
            a.poll_acquire(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert!(a.try_acquire().is_none(), "still queued behind the holder");
        s.release();
        assert!(
            flag.0.load(Ordering::SeqCst),
            "the task that queued is woken"
        );
        let permit = a.try_acquire();
        assert!(permit.is_some(), "and the permit is its own");
        assert_eq!((s.in_use(), s.waiting()), (1, 0));
        drop((a, permit));
        assert_eq!((s.in_use(), s.available()), (0, 1));
    }

    /// The race `poll_acquire_slow` covers: a release lands after the fast
    /// path failed and before the waiters flag is up, so it adds its permit
    /// without handing it to anybody. The slow path, entered with that
    /// permit free, must take it; without its look after raising the flag
    /// it queued a waiter nobody would ever wake (found surviving in a
    /// mutation pass: no other test reaches this interleaving).
    #[test]
    fn a_release_between_fast_path_and_flag_is_not_lost() {
        let s = Semaphore::new(1);
        assert!(s.try_acquire());
        // The fast path of a second caller fails here ...
        assert!(!s.try_acquire());
        // ... the holder releases before that caller takes the lock ...
        s.release();
        // ... and the caller goes on into the slow path.
        let mut ticket = None;
        assert!(s.poll_acquire_slow(&mut cx(), &mut ticket).is_ready());
        assert!(ticket.is_none());
        assert_eq!((s.in_use(), s.waiting()), (1, 0));
    }

    /// A permit a release has added but not yet handed over (the releaser
    /// is on its way to the waiters' lock) belongs to the oldest waiter: a
    /// newcomer's fast path may not barge in and take it. Made
    /// deterministic by holding the lock while the releasing thread is
    /// between its two steps. Found surviving in a mutation pass (the
    /// waiters flag dropped from `try_acquire`).
    #[test]
    fn a_newcomer_cannot_take_a_permit_on_its_way_to_a_waiter() {
        let s = Arc::new(Semaphore::new(1));
        assert!(s.try_acquire());
        let mut waiter = None;
        assert!(s.poll_acquire(&mut cx(), &mut waiter).is_pending());
        let guard = s.lock();
        let releaser = {
            let s = s.clone();
            std::thread::spawn(move || s.release())
        };
        // Wait (bounded) for the release's first step: the permit added.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.available() == 0 {
            assert!(std::time::Instant::now() < deadline, "release never ran");
            std::thread::yield_now();
        }
        assert!(!s.try_acquire(), "a newcomer barged past the queue");
        drop(guard);
        releaser.join().unwrap();
        assert!(s.poll_acquire(&mut cx(), &mut waiter).is_ready());
        assert_eq!((s.in_use(), s.available()), (1, 0));
    }

    /// "No limit" admits without bound in practice: the state word's cap,
    /// not a handful. Found surviving in a mutation pass (`to_state`
    /// falling back to `i64::MAX % 4`, three permits, for a `usize` past
    /// `i64`).
    #[test]
    fn a_limit_beyond_the_state_word_admits_as_many_as_it_holds() {
        let s = Semaphore::new(usize::MAX);
        let cap = usize::try_from(i64::MAX / 4).unwrap();
        assert_eq!(s.available(), cap);
        for _ in 0..100 {
            assert!(s.try_acquire());
        }
        assert_eq!((s.in_use(), s.available()), (100, cap - 100));
    }

    /// A grow by several permits with one waiter queued grants it one and
    /// leaves the rest free. Found surviving in a mutation pass
    /// (`grant` halving the state word instead of taking one
    /// permit, which lost a permit whenever more than one was free).
    #[test]
    fn a_grow_by_several_grants_one_waiter_and_frees_the_rest() {
        let (s, mut a) = one_held_one_queued();
        s.set_limit(4);
        assert!(s.poll_acquire(&mut cx(), &mut a).is_ready());
        assert_eq!((s.in_use(), s.available(), s.waiting()), (2, 2, 0));
        assert_eq!(s.state.load(Ordering::Relaxed) & WAITERS, 0, "flag");
    }

    /// A queued caller polled again with another waker (its future moved to
    /// another task) is woken through the new one. Found surviving in a
    /// mutation pass (the waker swapped only when it would wake the same
    /// task, so the moved future hung).
    #[test]
    fn a_waiter_polled_with_a_new_waker_is_woken_through_it() {
        let (s, mut a) = one_held_one_queued();
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        let mut moved = Context::from_waker(&waker);
        assert!(s.poll_acquire(&mut moved, &mut a).is_pending());
        s.release();
        assert!(flag.0.load(Ordering::SeqCst), "the new task is woken");
        assert!(s.poll_acquire(&mut moved, &mut a).is_ready());
    }

    /// A waker that notes, each time it is woken or dropped, whether the
    /// semaphore's queue lock was held then: a waker is code the semaphore
    /// does not know (dropping one may drop a task whose future gives up its
    /// ticket, which takes that lock), so none may run under it.
    struct LockProbe {
        semaphore: Arc<Semaphore>,
        runs: Arc<AtomicUsize>,
        under_lock: Arc<AtomicUsize>,
    }

    impl LockProbe {
        fn waker(
            semaphore: &Arc<Semaphore>,
            runs: &Arc<AtomicUsize>,
            under_lock: &Arc<AtomicUsize>,
        ) -> Waker {
            Waker::from(Arc::new(Self {
                semaphore: semaphore.clone(),
                runs: runs.clone(),
                under_lock: under_lock.clone(),
            }))
        }

        fn note(&self) {
            // On the thread that would hold it, a held lock cannot be taken.
            if self.semaphore.waiters.try_lock().is_err() {
                self.under_lock.fetch_add(1, Ordering::SeqCst);
            }
            self.runs.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl std::task::Wake for LockProbe {
        fn wake(self: Arc<Self>) {
            self.note();
        }
    }

    impl Drop for LockProbe {
        fn drop(&mut self) {
            self.note();
        }
    }

    /// Every way a queued waker is woken or dropped (a release's hand-over,
    /// a grow granting more waiters than one batch, a cancel, a waker
    /// replaced, the slow path granting its own caller) runs it with the
    /// queue lock released. Fails if any of them runs it under the lock.
    #[test]
    fn no_waker_runs_under_the_queue_lock() {
        let s = Arc::new(Semaphore::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let under_lock = Arc::new(AtomicUsize::new(0));
        let probe = || LockProbe::waker(&s, &runs, &under_lock);
        // Each poll's own waker is noted once more when the poll drops it
        // (unless the queue still holds a clone).
        let poll = |ticket: &mut Option<sync::Arc<AtomicBool>>| {
            s.poll_acquire_slow(&mut Context::from_waker(&probe()), ticket)
        };
        let check = |stage: &str, expected_runs: usize| {
            assert_eq!(
                under_lock.load(Ordering::SeqCst),
                0,
                "{stage}: a waker ran under the lock"
            );
            assert_eq!(
                runs.swap(0, Ordering::SeqCst),
                expected_runs,
                "{stage}: wakers run"
            );
        };

        // A grow past one batch: twenty waiters, each woken and then
        // dropped as it is granted.
        let mut tickets: Vec<_> = (0..20).map(|_| None).collect();
        for ticket in &mut tickets {
            assert!(poll(ticket).is_pending());
        }
        s.set_limit(20);
        check("grow", 40);
        for ticket in &mut tickets {
            assert!(poll(ticket).is_ready(), "every waiter granted");
        }
        check("polls after the grow", 20);
        // A waker replaced by a second poll with another.
        let (mut a, mut b) = (None, None);
        assert!(poll(&mut a).is_pending());
        assert!(poll(&mut b).is_pending());
        assert!(poll(&mut b).is_pending());
        check("replaced", 1);
        // A release handing its permit over.
        s.release();
        check("hand-over", 2);
        assert!(poll(&mut a).is_ready());
        check("poll after the hand-over", 1);
        // A queued waiter giving up.
        s.cancel(&mut b);
        check("cancel", 1);
        // The slow path entered with a permit free grants its own caller.
        s.release();
        let mut c = None;
        assert!(poll(&mut c).is_ready());
        check("own grant", 2);
        assert_eq!((s.in_use(), s.waiting()), (20, 0));
    }

    #[test]
    fn grow_wakes_waiters() {
        let s = Semaphore::new(0);
        let mut a = None;
        assert!(s.poll_acquire(&mut cx(), &mut a).is_pending());
        s.set_limit(1);
        assert!(s.poll_acquire(&mut cx(), &mut a).is_ready());
        assert_eq!(s.in_use(), 1);
    }

    #[test]
    fn in_use_never_reads_a_limit_change_half_done() {
        // The limit and the state word move in two steps; a reader between
        // them saw the new limit with the old permits: 990 in use here while
        // nothing is held. The mover makes at least 200 000 changes and
        // goes on until the reader has read 100 000 times since its first
        // change (for 30 s at most), so the reads cannot all miss the moves.
        const CHANGES: usize = 200_000;
        const READS: usize = 100_000;
        let s = Arc::new(Semaphore::new(10));
        // Set by the mover when it is done, or by the reader at a bad read.
        let stop = Arc::new(AtomicBool::new(false));
        // The reader's count of reads (only the reader writes it).
        let reads = Arc::new(AtomicUsize::new(0));
        let mover = {
            let (s, stop, reads) = (s.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                let before = reads.load(Ordering::Relaxed);
                let mut changes = 0usize;
                while !stop.load(Ordering::Relaxed)
                    && (changes < CHANGES
                        || (reads.load(Ordering::Relaxed) - before < READS
                            && (!changes.is_multiple_of(1024)
                                || std::time::Instant::now() < deadline)))
                {
                    s.set_limit(if changes.is_multiple_of(2) { 1000 } else { 10 });
                    changes += 1;
                }
                stop.store(true, Ordering::Relaxed);
                (changes, reads.load(Ordering::Relaxed) - before)
            })
        };
        let mut bad = None;
        while !stop.load(Ordering::Relaxed) {
            let in_use = s.in_use();
            if in_use != 0 {
                bad = Some(in_use);
                stop.store(true, Ordering::Relaxed);
                break;
            }
            reads.fetch_add(1, Ordering::Relaxed);
        }
        let (changes, moving) = mover.join().unwrap();
        let reads = reads.load(Ordering::Relaxed);
        assert_eq!(bad, None, "in use after {reads} reads");
        assert!(changes >= CHANGES, "{changes} changes");
        assert!(moving > 0, "no read while the limit moved ({reads} in all)");
    }
}

/// Model checks (`scripts/loom`): every interleaving of a few threads, up to
/// a preemption bound. A lost wakeup shows as a deadlock of `block_on`.
/// The test's own bookkeeping uses std atomics, which loom does not see:
/// they add no synchronization that could hide a missing one, and no
/// interleavings to explore (loom runs one thread at a time, so they count
/// in the order it chose).
#[cfg(all(test, tower_fanout_loom))]
mod loom_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sync::model;
    use loom::thread;
    use std::sync::atomic::AtomicUsize as Count;

    fn acquire(sem: &Semaphore) {
        let mut ticket = None;
        loom::future::block_on(std::future::poll_fn(|cx| sem.poll_acquire(cx, &mut ticket)));
    }

    /// A permit taken: counted, and never more than `limit` at once.
    fn enter(held: &Count, limit: usize) {
        let now = held.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(now <= limit, "{now} permits held, limit {limit}");
    }

    fn leave(sem: &Semaphore, held: &Count) {
        held.fetch_sub(1, Ordering::Relaxed);
        sem.release();
    }

    /// Everything back, nobody queued, and the fast path open again.
    fn assert_idle(sem: &Semaphore, limit: usize) {
        assert_eq!(sem.in_use(), 0, "in use");
        assert_eq!(sem.available(), limit, "available");
        assert_eq!(sem.limit(), limit, "limit");
        assert_eq!(sem.waiting(), 0, "waiting");
        assert_eq!(sem.lock().len(), 0, "queue");
        assert_eq!(sem.state.load(Ordering::Relaxed) & WAITERS, 0, "flag");
        for _ in 0..limit {
            assert!(sem.try_acquire(), "fast path");
        }
        assert!(!sem.try_acquire());
    }

    fn noop_cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// Three acquirers on one permit, each through the fast path or the
    /// queue, depending on the interleaving: one at a time, each gets its
    /// turn, and each sees what the previous holder wrote. That write is a
    /// relaxed load and store of a loom atomic, which loom lets read a
    /// stale value unless the hand-over orders it (as a lock would).
    #[test]
    fn three_acquirers_one_permit() {
        fn turn(sem: &Semaphore, held: &Count, turns: &AtomicUsize) {
            acquire(sem);
            enter(held, 1);
            turns.store(turns.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            leave(sem, held);
        }
        model(|| {
            let sem = Arc::new(Semaphore::new(1));
            let held = Arc::new(Count::new(0));
            let turns = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (sem, held, turns) = (sem.clone(), held.clone(), turns.clone());
                    thread::spawn(move || turn(&sem, &held, &turns))
                })
                .collect();
            turn(&sem, &held, &turns);
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(
                turns.load(Ordering::Relaxed),
                3,
                "a holder read a stale value"
            );
            assert_idle(&sem, 1);
        });
    }

    /// A queued waiter gives up while the holder's release hands it the
    /// permit: the permit goes on to the next waiter, once.
    #[test]
    fn cancel_racing_a_grant_passes_the_permit_on() {
        model(|| {
            let sem = Arc::new(Semaphore::new(1));
            let held = Arc::new(Count::new(0));
            assert!(sem.try_acquire());
            enter(&held, 1);
            let mut quitter = None;
            assert!(sem.poll_acquire(&mut noop_cx(), &mut quitter).is_pending());
            let cancels = {
                let sem = sem.clone();
                thread::spawn(move || sem.cancel(&mut quitter))
            };
            let waits = {
                let (sem, held) = (sem.clone(), held.clone());
                thread::spawn(move || {
                    acquire(&sem);
                    enter(&held, 1);
                    leave(&sem, &held);
                })
            };
            leave(&sem, &held);
            cancels.join().unwrap();
            waits.join().unwrap();
            assert_idle(&sem, 1);
        });
    }

    /// A fail-fast caller racing the release that owes the permit to a
    /// queued waiter must not get it, whichever runs first. The waiter
    /// queued with a waker that wakes nobody and polls again with its own
    /// while the release grants it: the grant must wake the new one.
    #[test]
    fn fail_fast_cannot_barge_past_a_waiter() {
        model(|| {
            let sem = Arc::new(Semaphore::new(1));
            assert!(sem.try_acquire());
            let mut queued = Acquire::new(sem.clone());
            assert!(queued.poll_or_shed(false, &mut noop_cx()).is_pending());
            let waiter = thread::spawn(move || {
                let permit = loom::future::block_on(std::future::poll_fn(|cx| {
                    queued.poll_or_shed(false, cx)
                }));
                assert!(permit.is_some());
                permit
            });
            let releases = {
                let sem = sem.clone();
                thread::spawn(move || sem.release())
            };
            let mut shedder = Acquire::new(sem.clone());
            let barged = shedder.poll_or_shed(true, &mut noop_cx());
            assert!(matches!(barged, Poll::Ready(None)), "barged in");
            releases.join().unwrap();
            let permit = waiter.join().unwrap();
            assert_eq!((sem.in_use(), sem.available()), (1, 0));
            drop((permit, shedder));
            assert_idle(&sem, 1);
        });
    }

    /// A shrink below what is held, racing the releases that pay it off and
    /// a waiter: a waiter that starts after the shrink gets in only once the
    /// debt is paid, and the counts end at the new limit.
    #[test]
    fn shrink_racing_releases_and_a_waiter() {
        model(|| {
            let sem = Arc::new(Semaphore::new(2));
            let held = Arc::new(Count::new(0));
            let shrunk = Arc::new(std::sync::atomic::AtomicBool::new(false));
            assert!(sem.try_acquire() && sem.try_acquire());
            held.fetch_add(2, Ordering::Relaxed);
            let waiter = {
                let (sem, held, shrunk) = (sem.clone(), held.clone(), shrunk.clone());
                thread::spawn(move || {
                    let limit = if shrunk.load(Ordering::Relaxed) { 1 } else { 2 };
                    acquire(&sem);
                    enter(&held, limit);
                    leave(&sem, &held);
                })
            };
            let shrinks = {
                let (sem, shrunk) = (sem.clone(), shrunk.clone());
                thread::spawn(move || {
                    sem.set_limit(1);
                    shrunk.store(true, Ordering::Relaxed);
                })
            };
            leave(&sem, &held);
            leave(&sem, &held);
            waiter.join().unwrap();
            shrinks.join().unwrap();
            assert_idle(&sem, 1);
        });
    }

    /// Two waiters on a limit of 0: the grow must wake one, whose release
    /// hands over to the other.
    #[test]
    fn grow_wakes_a_waiter() {
        model(|| {
            let sem = Arc::new(Semaphore::new(0));
            let held = Arc::new(Count::new(0));
            let waiter = {
                let (sem, held) = (sem.clone(), held.clone());
                thread::spawn(move || {
                    acquire(&sem);
                    enter(&held, 1);
                    leave(&sem, &held);
                })
            };
            let grows = {
                let sem = sem.clone();
                thread::spawn(move || sem.set_limit(1))
            };
            acquire(&sem);
            enter(&held, 1);
            leave(&sem, &held);
            waiter.join().unwrap();
            grows.join().unwrap();
            assert_idle(&sem, 1);
        });
    }

    /// `in_use` read while the limit grows and shrinks back, with one
    /// permit held throughout: always exactly 1. A read of the new limit
    /// with the old state word says 3 on the grow and 0 on the shrink.
    #[test]
    fn in_use_never_reads_a_limit_change_half_done() {
        model(|| {
            let sem = Arc::new(Semaphore::new(1));
            assert!(sem.try_acquire());
            let mover = {
                let sem = sem.clone();
                thread::spawn(move || {
                    sem.set_limit(3);
                    sem.set_limit(1);
                })
            };
            for _ in 0..2 {
                assert_eq!(sem.in_use(), 1);
            }
            mover.join().unwrap();
            sem.release();
            assert_idle(&sem, 1);
        });
    }

    /// An `Acquire` dropped while queued (a caller that gave up waiting)
    /// racing the release that grants it: its cancel hands the permit to
    /// the waiter behind it, and takes it out of the queue otherwise.
    #[test]
    fn acquire_dropped_while_queued_passes_the_permit_on() {
        model(|| {
            let sem = Arc::new(Semaphore::new(1));
            let held = Arc::new(Count::new(0));
            let mut holder = Acquire::new(sem.clone());
            let Poll::Ready(permit) = holder.poll_acquire(&mut noop_cx()) else {
                panic!("the first permit is free");
            };
            enter(&held, 1);
            let mut quitter = Acquire::new(sem.clone());
            assert!(quitter.poll_acquire(&mut noop_cx()).is_pending());
            let gives_up = thread::spawn(move || drop(quitter));
            let waits = {
                let (sem, held) = (sem.clone(), held.clone());
                thread::spawn(move || {
                    let mut acquire = Acquire::new(sem);
                    let permit =
                        loom::future::block_on(std::future::poll_fn(|cx| acquire.poll_acquire(cx)));
                    enter(&held, 1);
                    held.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                })
            };
            held.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            gives_up.join().unwrap();
            waits.join().unwrap();
            drop(holder);
            assert_idle(&sem, 1);
        });
    }
}
