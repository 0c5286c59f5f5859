//! A timer for the layers that wait until a moment (a token, a hold, a
//! pacing slot): allocated on the first wait, its box reused after that.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// One boxed tokio `Sleep`, its allocation reused for every wait of its owner.
#[derive(Debug, Default)]
pub(crate) struct ReusableSleep(Option<Pin<Box<Sleep>>>);

impl ReusableSleep {
    /// Ready once `deadline` has passed; otherwise registers for the wake-up.
    pub(crate) fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        // Each poll makes its timer on the runtime polling it, in the box of
        // the last one: a timer belongs to the runtime it was made on, and a
        // service can wait on one runtime, then on another (a test's, a
        // start-up one). Reusing the timer while the deadline stayed the same
        // panicked ("A Tokio 1.x context was found, but it is being
        // shutdown") or never woke (the first runtime alive but no longer
        // driven) when a wait cut short came back with the same booking.
        // A fresh timer registers as `reset` would: a wait is polled once,
        // then once more when woken.
        let sleep = tokio::time::sleep_until(deadline);
        let slot = match &mut self.0 {
            Some(slot) => {
                slot.set(sleep);
                slot
            }
            None => self.0.insert(Box::pin(sleep)),
        };
        slot.as_mut().poll(cx)
    }
}
