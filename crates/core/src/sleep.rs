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
        let sleep = match &mut self.0 {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    // A new wait gets a new timer, in the box of the old one:
                    // a timer belongs to the runtime it was made on, and
                    // `reset` kept the first one's. A service that waited
                    // on a runtime since shut down (a test's, a start-up
                    // one) panicked at its next wait on another runtime
                    // ("A Tokio 1.x context was found, but it is being
                    // shutdown").
                    sleep.set(tokio::time::sleep_until(deadline));
                }
                sleep
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx)
    }
}
