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

use std::sync::atomic::{AtomicU64, Ordering};
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

    /// Gives back `cost` tokens taken by the booking that ended at `end`.
    ///
    /// Only the latest booking can be undone exactly: a later one was placed
    /// behind it, so pulling the TAT back would let two bookings share one
    /// slot. Anything else is left booked, which only errs on the strict side.
    pub(crate) fn give_back(&self, end: u64, cost: u32) -> bool {
        let start = end.saturating_sub(self.weight(cost));
        self.tat
            .compare_exchange(end, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
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
            /// an older one, which is refused) and fail-fast takes mixed:
            /// over every window between two admissions, the tokens admitted
            /// (a booking's at its slot, a take's at once; given back: none)
            /// stay within burst + window / interval.
            #[test]
            fn give_backs_keep_every_window_within_the_bound(
                rate in 1u32..50,
                burst in 1u32..8,
                steps in proptest::collection::vec((0u64..300_000_000, 0u8..4, 1u32..4), 1..120),
            ) {
                let b = TokenBucket::new(rate, Duration::from_secs(1), burst);
                let mut now = 0u64;
                // (admitted at, tokens, booking end while it can be given back)
                let mut admitted: Vec<(u64, u32, Option<u64>)> = Vec::new();
                for (dt, op, cost) in steps {
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
                            if let Some((i, &(_, _, Some(end)))) = pick
                                && b.give_back(end, 1)
                            {
                                admitted.remove(i);
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
