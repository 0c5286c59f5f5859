//! Token-bucket arithmetic, kept free of I/O so it can be tested on plain numbers.
//!
//! The bucket is stored as GCRA's theoretical arrival time (TAT): the moment
//! at which the bucket would be full again. Admitting `n` tokens pushes TAT
//! by `n` emission intervals; a request conforms when the pushed TAT is no
//! more than `burst` intervals ahead of now. That is a token bucket of
//! capacity `burst` refilled at one token per interval, in one `AtomicU64`
//! that every clone updates with a CAS: no lock, no fixed windows.
//!
//! Times are nanoseconds since the bucket's epoch. The interval is rounded
//! up to a whole nanosecond so rounding can only make the bucket stricter.
//!
//! A caller that leaves before its call gives its booking up
//! ([`TokenBucket::release`]). Only the latest booking can be pulled back
//! out of the TAT; one with later bookings behind it is kept aside, goes
//! back once those have gone back, and meanwhile its slot goes to the next
//! caller that would otherwise wait longer ([`TokenBucket::rebook`]). Taking
//! a slot somebody booked and left, at the time it was booked for, admits
//! nothing the GCRA schedule had not already admitted, so the bound holds;
//! without this, callers that time out while queued spent the budget of
//! every slot they had booked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The longest a full bucket may take to refill (`interval × burst`), in
/// nanoseconds: about 292 years.
///
/// The TAT is kept in a `u64` of nanoseconds. Admitted takes keep it within
/// `now + interval × burst`, so with this bound it fits for the first 292
/// years of a process, and a booking that saturates (a long queue of
/// waiters) can never pass for one inside the bound. Past it the sums
/// saturated: with a period of `Duration::MAX` every call after the first
/// was admitted.
pub(crate) const MAX_REFILL_NANOS: u64 = u64::MAX / 2;

/// Checks that a bucket of `rate` tokens per `period`, holding `burst`,
/// refills within [`MAX_REFILL_NANOS`]; the error says what to change.
pub(crate) fn check_refill(rate: u32, period: Duration, burst: u32) -> Result<(), String> {
    let interval = period.as_nanos().div_ceil(u128::from(rate.max(1))).max(1);
    let refill = interval.saturating_mul(u128::from(burst));
    if refill <= u128::from(MAX_REFILL_NANOS) {
        return Ok(());
    }
    const YEAR_NANOS: f64 = 365.25 * 86_400e9;
    Err(format!(
        "a full bucket (burst {burst} at {rate} per {period:?}) takes {:.0} years to refill, \
         more than the {:.0} years a bucket can count; use a shorter period or a smaller burst \
         (a budget that never refills: a period of 100 years already outlives the process)",
        refill as f64 / YEAR_NANOS,
        MAX_REFILL_NANOS as f64 / YEAR_NANOS,
    ))
}

/// A shared token bucket in GCRA form.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tat: AtomicU64,
    interval: u64,
    /// `interval × burst`, computed once: how far ahead of now TAT may go.
    tolerance: u64,
    burst: u32,
    /// Bookings given up while later ones stood behind them: the end of
    /// each (its TAT) and its tokens. Touched only by callers that leave
    /// or would wait, never on the path of a call admitted at once.
    forfeits: Mutex<BTreeMap<u64, u32>>,
    /// Entries in `forfeits`, read without its lock by a caller about to wait.
    forfeited: AtomicUsize,
}

impl TokenBucket {
    /// `rate` tokens every `period`, holding at most `burst`. Both non-zero,
    /// and passed by [`check_refill`].
    pub(crate) fn new(rate: u32, period: Duration, burst: u32) -> Self {
        // In u128, as `check_refill` does: a period past the u64 clock (584
        // years) with a rate to match still has an interval that fits, and
        // saturating the period first made it shorter than configured
        // (`Duration::MAX` at `u32::MAX` a period: one token every 4.3 s
        // instead of every 136 years).
        let interval = period.as_nanos().div_ceil(u128::from(rate.max(1))).max(1);
        let interval = u64::try_from(interval).unwrap_or(u64::MAX);
        Self {
            tat: AtomicU64::new(0),
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            burst,
            forfeits: Mutex::new(BTreeMap::new()),
            forfeited: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// Nanoseconds to refill one token.
    #[inline]
    pub(crate) fn interval(&self) -> u64 {
        self.interval
    }

    #[inline]
    fn tolerance(&self) -> u64 {
        self.tolerance
    }

    #[inline]
    fn weight(&self, cost: u32) -> u64 {
        self.interval.saturating_mul(u64::from(cost))
    }

    /// Whole tokens in the bucket at `now`.
    pub(crate) fn tokens(&self, now: u64) -> u32 {
        let backlog = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        let free = self.tolerance().saturating_sub(backlog) / self.interval;
        u32::try_from(free).unwrap_or(u32::MAX)
    }

    /// Takes `cost` tokens if they are there now; otherwise says how long
    /// until they would be, and takes nothing.
    #[inline]
    pub(crate) fn try_take(&self, now: u64, cost: u32) -> Result<u64, u64> {
        let weight = self.weight(cost);
        let tolerance = self.tolerance();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(weight);
            let ahead = new_tat - now;
            if ahead > tolerance {
                return Err(ahead - tolerance);
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(new_tat),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Takes `cost` tokens unconditionally, booking them in the future if the
    /// bucket is short. Returns the new TAT and the time at which the tokens
    /// are really there (`<= now` when they already were).
    #[inline]
    pub(crate) fn take_queued(&self, now: u64, cost: u32) -> (u64, u64) {
        let weight = self.weight(cost);
        let tolerance = self.tolerance();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(weight);
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return (new_tat, new_tat.saturating_sub(tolerance)),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back `cost` tokens taken by the booking that ended at `end`,
    /// if it is the latest.
    ///
    /// Only the latest booking can be undone exactly: a later one was placed
    /// behind it, so pulling the TAT back would let two bookings share one
    /// slot. Anything else is left booked, which only errs on the strict side.
    fn give_back(&self, end: u64, cost: u32) -> bool {
        let start = end.saturating_sub(self.weight(cost));
        self.tat
            .compare_exchange(end, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives up the booking of `cost` tokens that ended at `end`, made by a
    /// caller that leaves without calling: given back at once if it is the
    /// latest (with any given-up bookings right behind it), kept aside for
    /// [`rebook`](Self::rebook) otherwise.
    pub(crate) fn release(&self, end: u64, cost: u32) {
        if cost == 0 {
            return;
        }
        let mut forfeits = self.lock_forfeits();
        self.release_locked(&mut forfeits, end, cost);
        self.forfeited.store(forfeits.len(), Ordering::Relaxed);
    }

    fn release_locked(&self, forfeits: &mut BTreeMap<u64, u32>, end: u64, cost: u32) {
        if !self.give_back(end, cost) {
            // Ends are unique among live bookings: the TAT passes over a
            // stretch once, and again only after it was given back.
            forfeits.insert(end, cost);
            return;
        }
        // The TAT is back at this booking's start: a booking given up that
        // ended there is now the latest, and goes back too, and so on.
        let mut tat = end.saturating_sub(self.weight(cost));
        while let Some(&tokens) = forfeits.get(&tat) {
            if !self.give_back(tat, tokens) {
                // A new booking came in behind it meanwhile.
                break;
            }
            forfeits.remove(&tat);
            tat = tat.saturating_sub(self.weight(tokens));
        }
    }

    /// A caller whose `cost` tokens are booked (ending at `end`, there at
    /// `at`) and who would wait for them (`at` later than `now`) takes
    /// instead the earliest slot of `cost` tokens given up by a caller that
    /// left, if that slot is there sooner and not before `now`, and gives
    /// its own booking up. Returns the booking to wait for: `(end, at)` as
    /// before, or the slot's.
    ///
    /// The slot is used at the time it was booked for, so the schedule of
    /// admissions is one the bucket had already allowed; a slot whose time
    /// has passed is not taken (used late, it could bunch up with later
    /// ones beyond the burst).
    #[inline]
    pub(crate) fn rebook(&self, now: u64, end: u64, at: u64, cost: u32) -> (u64, u64) {
        // A caller admitted at once, or with nothing given up, keeps its own.
        if at <= now || cost == 0 || self.forfeited.load(Ordering::Relaxed) == 0 {
            return (end, at);
        }
        self.rebook_from_forfeits(now, end, at, cost)
    }

    #[cold]
    #[inline(never)]
    fn rebook_from_forfeits(&self, now: u64, end: u64, at: u64, cost: u32) -> (u64, u64) {
        let mut forfeits = self.lock_forfeits();
        // A booking that ended by now can no longer matter: pulled back, the
        // TAT would still be behind now.
        *forfeits = forfeits.split_off(&now.saturating_add(1));
        let booking = match self.take_forfeit(&mut forfeits, now, cost, at) {
            Some(slot) => {
                self.release_locked(&mut forfeits, end, cost);
                slot
            }
            None => (end, at),
        };
        self.forfeited.store(forfeits.len(), Ordering::Relaxed);
        booking
    }

    /// Takes `cost` tokens out of the earliest given-up booking that has
    /// them with the last of them there at or after `now`, if they are
    /// there before `by`: the end of those tokens' booking and when they are
    /// there. What is left of the booking before and after them stays
    /// given up.
    fn take_forfeit(
        &self,
        forfeits: &mut BTreeMap<u64, u32>,
        now: u64,
        cost: u32,
        by: u64,
    ) -> Option<(u64, u64)> {
        let (interval, tolerance) = (self.interval, self.tolerance());
        // A booking's last token is there at `end - tolerance`.
        let from = now.saturating_add(tolerance);
        let (&end, &tokens) = forfeits.range(from..).find(|&(_, &k)| k >= cost)?;
        // Token `i` of `tokens` ends at `end - (tokens - 1 - i) × interval`:
        // the first there at or after now is `tokens - 1 - behind`; take the
        // `cost` tokens that end with it, or the first `cost`.
        let behind = u32::try_from((end - from) / interval).unwrap_or(u32::MAX);
        let first_due = (tokens - 1).saturating_sub(behind);
        let skip = first_due.saturating_sub(cost - 1);
        let after = tokens - skip - cost;
        let slot_end = end.saturating_sub(self.weight(after));
        let slot_at = slot_end.saturating_sub(tolerance);
        if slot_at >= by {
            return None;
        }
        forfeits.remove(&end);
        if skip > 0 {
            // Tokens whose time has passed: kept only so that pulling the
            // TAT back can go on past them.
            forfeits.insert(slot_end.saturating_sub(self.weight(cost)), skip);
        }
        if after > 0 {
            forfeits.insert(end, after);
        }
        Some((slot_end, slot_at))
    }

    fn lock_forfeits(&self) -> MutexGuard<'_, BTreeMap<u64, u32>> {
        // Each critical section leaves the map whole between its steps.
        self.forfeits.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn starts_full_then_refills_at_rate() {
        let b = TokenBucket::new(10, Duration::from_secs(1), 5);
        assert_eq!(b.tokens(0), 5);
        for _ in 0..5 {
            assert!(b.try_take(0, 1).is_ok());
        }
        assert_eq!(b.try_take(0, 1), Err(SEC / 10));
        assert_eq!(b.tokens(SEC / 10), 1);
        assert!(b.try_take(SEC / 10, 1).is_ok());
    }

    /// Tokens admitted one at a time, every millisecond, over `secs`.
    ///
    /// No step takes more than the burst and one more, so a bucket that
    /// admits everything fails the count instead of spinning forever.
    fn admitted_over(b: &TokenBucket, secs: u64) -> u64 {
        let mut admitted = 0u64;
        let mut now = 0;
        while now <= secs * SEC {
            let mut step = 0;
            while step <= b.burst() && b.try_take(now, 1).is_ok() {
                step += 1;
            }
            admitted += u64::from(step);
            now += SEC / 1000;
        }
        admitted
    }

    #[test]
    fn refill_too_long_to_count_is_refused_in_years() {
        // One token a century, a burst of four: four centuries to refill.
        let century = Duration::from_secs(36_525 * 86_400);
        let err = check_refill(1, century, 4).unwrap_err();
        assert!(err.contains("takes 400 years to refill"), "{err}");
        assert!(err.contains("more than the 292 years"), "{err}");
        assert!(err.contains("burst 4 at 1 per"), "{err}");
    }

    #[test]
    fn burst_then_refill_counts_exactly() {
        // 3 at t=0, then 8 a second for 10 s.
        let b = TokenBucket::new(8, Duration::from_secs(1), 3);
        assert_eq!(admitted_over(&b, 10), 3 + 80);
    }

    #[test]
    fn uneven_interval_errs_strict_by_under_one_token() {
        // 1/7 s is not a whole number of nanoseconds; rounding up the
        // interval makes the 70th refill land 10 ns after t = 10 s.
        let b = TokenBucket::new(7, Duration::from_secs(1), 3);
        assert_eq!(admitted_over(&b, 10), 3 + 70 - 1);
    }

    #[test]
    fn cost_is_charged_in_tokens() {
        let b = TokenBucket::new(1, Duration::from_secs(1), 4);
        assert!(b.try_take(0, 3).is_ok());
        assert_eq!(b.try_take(0, 3), Err(2 * SEC));
        assert!(b.try_take(0, 1).is_ok());
    }

    #[test]
    fn queued_booking_says_when_tokens_arrive() {
        let b = TokenBucket::new(2, Duration::from_secs(1), 1);
        assert_eq!(b.take_queued(0, 1).1, 0);
        assert_eq!(b.take_queued(0, 1).1, SEC / 2);
        let (end, at) = b.take_queued(0, 1);
        assert_eq!(at, SEC);
        assert!(b.give_back(end, 1));
        assert_eq!(b.take_queued(0, 1).1, SEC);
    }

    #[test]
    fn only_the_latest_booking_is_given_back() {
        let b = TokenBucket::new(1, Duration::from_secs(1), 1);
        let (first, _) = b.take_queued(0, 1);
        let (_second, _) = b.take_queued(0, 1);
        assert!(!b.give_back(first, 1));
    }

    /// Twenty callers queued one behind the other, as a batch with one
    /// timeout gives them: they leave in the order they booked, so only the
    /// last is the latest booking when it leaves. Every token comes back,
    /// the last one's pulling the others' back behind it. Before, the
    /// nineteen left booked and the bucket was empty for two seconds.
    #[test]
    fn callers_leaving_in_booking_order_give_every_token_back() {
        let b = TokenBucket::new(10, Duration::from_secs(1), 1);
        assert_eq!(b.take_queued(0, 1).1, 0, "the one call admitted");
        let bookings: Vec<(u64, u64)> = (0..20).map(|_| b.take_queued(0, 1)).collect();
        assert_eq!(bookings[19].1, 2 * SEC);
        for &(end, _) in &bookings {
            b.release(end, 1);
        }
        assert_eq!(b.forfeited.load(Ordering::Relaxed), 0, "nothing left aside");
        assert_eq!(
            b.tokens(SEC / 10),
            1,
            "full again one interval after the call"
        );
        assert_eq!(b.take_queued(SEC / 10, 1).1, SEC / 10);
    }

    /// A slot given up behind later bookings goes to the next caller that
    /// would wait longer; its own booking goes back. A slot whose time has
    /// passed is not taken, and one not sooner than the caller's own is not
    /// either.
    #[test]
    fn a_waiting_caller_takes_the_earliest_slot_given_up() {
        let b = TokenBucket::new(10, Duration::from_secs(1), 1);
        b.take_queued(0, 1);
        let a = b.take_queued(0, 1);
        let later = b.take_queued(0, 1);
        assert_eq!((a.1, later.1), (SEC / 10, 2 * SEC / 10));
        b.release(a.0, 1);
        // At 50 ms a newcomer books for 300 ms and takes a's 100 ms instead.
        let (end, at) = b.take_queued(SEC / 20, 1);
        assert_eq!(at, 3 * SEC / 10);
        assert_eq!(b.rebook(SEC / 20, end, at, 1), a);
        // Its own booking went back: the next one is for 300 ms again.
        let (end, at) = b.take_queued(SEC / 20, 1);
        assert_eq!(at, 3 * SEC / 10);
        assert_eq!(
            b.rebook(SEC / 20, end, at, 1),
            (end, at),
            "nothing left aside"
        );
        b.release(end, 1);

        // Given up, then past: at 150 ms the 100 ms slot is not taken.
        let b = TokenBucket::new(10, Duration::from_secs(1), 1);
        b.take_queued(0, 1);
        let a = b.take_queued(0, 1);
        b.take_queued(0, 1);
        b.release(a.0, 1);
        let now = 3 * SEC / 20;
        let (end, at) = b.take_queued(now, 1);
        assert_eq!(b.rebook(now, end, at, 1), (end, at));
    }

    /// Threads booking and giving up at once, in every order the scheduler
    /// makes: once every booking is given up the TAT is back where it
    /// started and nothing is left aside. Catches a pull-back that lost a
    /// given-up booking when a new booking raced in behind it.
    #[test]
    fn bookings_given_up_from_many_threads_all_come_back() {
        let b = std::sync::Arc::new(TokenBucket::new(1000, Duration::from_secs(1), 1));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..5_000u32 {
                        let cost = 1 + (i + t) % 3;
                        held.push((b.take_queued(0, cost).0, cost));
                        // Give up one now and then, the oldest or the newest.
                        if i % 3 == 2 {
                            let (end, cost) = if i % 2 == 0 {
                                held.remove(0)
                            } else {
                                held.pop().unwrap()
                            };
                            b.release(end, cost);
                        }
                    }
                    for (end, cost) in held {
                        b.release(end, cost);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(b.tat.load(Ordering::Relaxed), 0, "every token back");
        assert_eq!(b.forfeited.load(Ordering::Relaxed), 0);
    }

    /// A booking of several tokens given up serves smaller ones: the first
    /// `cost` of its tokens that are not past, the rest kept aside.
    #[test]
    fn a_slot_of_several_tokens_is_shared_out() {
        let b = TokenBucket::new(10, Duration::from_secs(1), 4);
        let full = b.take_queued(0, 4);
        assert_eq!(full.1, 0);
        let big = b.take_queued(0, 3);
        let behind = b.take_queued(0, 1);
        assert_eq!((big.1, behind.1), (3 * SEC / 10, 4 * SEC / 10));
        b.release(big.0, 3);
        // Its tokens are there at 100, 200 and 300 ms.
        let (end, at) = b.take_queued(0, 2);
        assert_eq!(at, 6 * SEC / 10);
        let (end, at) = b.rebook(0, end, at, 2);
        assert_eq!(at, 2 * SEC / 10, "the first two of the three");
        // At 250 ms the one left (300 ms) goes to a caller of cost 1.
        let now = 25 * SEC / 100;
        let (own_end, own_at) = b.take_queued(now, 1);
        assert_eq!(b.rebook(now, own_end, own_at, 1).1, 3 * SEC / 10);
        b.release(end, 2);
    }

    /// A caller of cost 1 at 250 ms takes the third token of a given-up
    /// booking of three (there at 100, 200 and 300 ms): the two past ones
    /// go to nobody, but stay aside so that the TAT is pulled back past
    /// them once everything behind them is given up.
    #[test]
    fn the_past_tokens_of_a_slot_taken_still_come_back() {
        let b = TokenBucket::new(10, Duration::from_secs(1), 4);
        let (full_end, _) = b.take_queued(0, 4);
        let big = b.take_queued(0, 3);
        let behind = b.take_queued(0, 1);
        b.release(big.0, 3);
        let now = 25 * SEC / 100;
        let (own_end, own_at) = b.take_queued(now, 1);
        let taken = b.rebook(now, own_end, own_at, 1);
        assert_eq!(taken, (big.0, 3 * SEC / 10), "the third token");
        b.release(behind.0, 1);
        b.release(taken.0, 1);
        assert_eq!(b.tat.load(Ordering::Relaxed), full_end, "all three back");
        assert_eq!(b.forfeited.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn at_the_refill_bound_saturated_bookings_admit_nothing() {
        // The longest refill `check_refill` lets through, one token of it.
        let period = Duration::from_nanos(MAX_REFILL_NANOS);
        assert!(check_refill(1, period, 1).is_ok());
        assert!(check_refill(1, period + Duration::from_nanos(1), 1).is_err());
        assert!(check_refill(2, period, 3).is_err());
        let b = TokenBucket::new(1, period, 1);
        let now = 1000 * SEC;
        assert!(b.try_take(now, 1).is_ok());
        // Waiters book past the end of the clock: the TAT saturates ...
        for _ in 0..4 {
            let (_, at) = b.take_queued(now, 1);
            assert!(at > now);
        }
        // ... and still reads as far ahead, for as long as a process lives.
        for now in [now, 100 * 365 * 86_400 * SEC] {
            assert!(b.try_take(now, 1).is_err());
            assert_eq!(b.tokens(now), 0);
        }
    }

    #[test]
    fn interval_rounds_up() {
        let b = TokenBucket::new(3, Duration::from_secs(1), 1);
        assert_eq!(b.interval(), 333_333_334);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Over any run of requests, admitted tokens never exceed
            /// burst + elapsed / interval, and tokens never exceed the burst.
            #[test]
            fn admissions_never_exceed_rate_times_t_plus_burst(
                rate in 1u32..1000,
                period_ms in 1u64..5000,
                burst in 1u32..100,
                steps in proptest::collection::vec((0u64..50_000_000, 0u32..10), 1..300),
            ) {
                let b = TokenBucket::new(rate, Duration::from_millis(period_ms), burst);
                let mut now = 0u64;
                let mut admitted = 0u64;
                for (dt, cost) in steps {
                    now += dt;
                    prop_assert!(b.tokens(now) <= burst);
                    if b.try_take(now, cost).is_ok() {
                        admitted += u64::from(cost);
                    }
                    let bound = u64::from(burst) + now / b.interval();
                    prop_assert!(admitted <= bound, "admitted {} > bound {}", admitted, bound);
                }
            }

            /// Waiting bookings, give-backs (of the latest booking, or of
            /// an older one, which is refused), callers leaving in any order
            /// and callers taking the slots they gave up, and fail-fast
            /// takes mixed: over every window between two admissions, the
            /// tokens admitted (a booking's at its slot, a take's at once;
            /// given back or up: none) stay within burst + window / interval.
            #[test]
            fn give_backs_keep_every_window_within_the_bound(
                rate in 1u32..50,
                burst in 1u32..8,
                steps in proptest::collection::vec((0u64..300_000_000, 0u8..7, 1u32..4, 0usize..64), 1..160),
            ) {
                let b = TokenBucket::new(rate, Duration::from_secs(1), burst);
                let mut now = 0u64;
                // (admitted at, tokens, booking end while it can be given back)
                let mut admitted: Vec<(u64, u32, Option<u64>)> = Vec::new();
                for (dt, op, cost, pick) in steps {
                    now += dt;
                    let cost = cost.min(burst);
                    match op {
                        0 => {
                            let (end, at) = b.take_queued(now, 1);
                            admitted.push((at.max(now), 1, Some(end)));
                        }
                        1 | 2 => {
                            // Give back the latest booking still held, or
                            // (op 2) the oldest: only the latest can be.
                            let mut held = admitted.iter().enumerate().filter(|(_, a)| a.2.is_some());
                            let pick = if op == 1 { held.next_back() } else { held.min_by_key(|(_, a)| a.0) };
                            if let Some((i, &(_, n, Some(end)))) = pick
                                && b.give_back(end, n)
                            {
                                admitted.remove(i);
                            }
                        }
                        3 => {
                            // A caller that would wait, taking a slot given
                            // up if one comes sooner.
                            let (end, at) = b.take_queued(now, cost);
                            if at > now {
                                let (slot_end, slot_at) = b.rebook(now, end, at, cost);
                                prop_assert!((now..=at).contains(&slot_at), "slot at {} for a wait from {} to {}", slot_at, now, at);
                                admitted.push((slot_at, cost, Some(slot_end)));
                            } else {
                                admitted.push((now, cost, Some(end)));
                            }
                        }
                        4 | 5 => {
                            // A caller leaving: the booking made last, or a
                            // random one still to come or ready.
                            let held: Vec<usize> = admitted.iter().enumerate().filter(|(_, a)| a.2.is_some()).map(|(i, _)| i).collect();
                            if let Some(&i) = if op == 4 { held.last() } else { held.get(pick % held.len().max(1)) } {
                                let (_, n, end) = admitted.remove(i);
                                b.release(end.unwrap_or_default(), n);
                            }
                        }
                        _ => {
                            if b.try_take(now, cost).is_ok() {
                                admitted.push((now, cost, None));
                            }
                        }
                    }
                }
                let mut times: Vec<(u64, u32)> = admitted.iter().map(|a| (a.0, a.1)).collect();
                times.sort_unstable();
                for i in 0..times.len() {
                    let mut tokens = 0u64;
                    for &(t, n) in &times[i..] {
                        tokens += u64::from(n);
                        let bound = u64::from(burst) + (t - times[i].0) / b.interval();
                        prop_assert!(tokens <= bound, "{} tokens in [{}, {}], bound {}", tokens, times[i].0, t, bound);
                    }
                }
            }

            /// A refused request is told a wait after which it is admitted.
            #[test]
            fn retry_after_is_exact(
                rate in 1u32..1000,
                burst in 1u32..50,
                cost in 1u32..50,
                used in 0u32..50,
            ) {
                prop_assume!(cost <= burst);
                let b = TokenBucket::new(rate, Duration::from_secs(1), burst);
                let _ = b.try_take(0, used.min(burst));
                if let Err(wait) = b.try_take(0, cost) {
                    prop_assert!(b.try_take(wait - 1, cost).is_err());
                    prop_assert!(b.try_take(wait, cost).is_ok());
                }
            }
        }
    }
}
