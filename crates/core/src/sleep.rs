//! A timer for the layers that wait until a moment (a token, a hold, a
//! pacing slot): allocated on the first wait, reset in place after that.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// One boxed tokio `Sleep`, reused for every wait of its owner.
#[derive(Debug, Default)]
pub(crate) struct ReusableSleep(Option<Pin<Box<Sleep>>>);

impl ReusableSleep {
    /// Ready once `deadline` has passed; otherwise registers for the wake-up.
    pub(crate) fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}
