//! A permit held on Redis: renewed while held, released when dropped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::layer::Shared;

/// One call's place in the limit.
pub(super) enum Permit {
    /// A holder in the Redis sorted set.
    Remote(Remote),
    /// A permit of the local fail-open share.
    Local(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remote(remote) => f.debug_tuple("Remote").field(&remote.holder).finish(),
            Self::Local(_) => f.write_str("Local"),
        }
    }
}

/// A holder added to Redis; on drop, its renewals stop and a release is sent.
pub(super) struct Remote {
    shared: Arc<Shared>,
    holder: String,
    renew: Option<JoinHandle<()>>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        let renew = self.renew.take();
        if let Some(renew) = &renew {
            renew.abort();
        }
        release(&self.shared, std::mem::take(&mut self.holder), renew);
    }
}

/// Sends the release from a task of its own, since the permit is often
/// dropped where nothing can be awaited (a dropped response future). If
/// there is no runtime, or Redis does not answer, the lease expires instead.
///
/// The renewal task, aborted, is awaited first: an abort takes effect at
/// its next yield, and one being polled on another worker just after a
/// renewal found the holder gone could still send its take-back after the
/// release, adding the holder again with nobody to renew or release it.
fn release(shared: &Arc<Shared>, holder: String, renew: Option<JoinHandle<()>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = shared.clone();
    runtime.spawn(async move {
        if let Some(renew) = renew {
            let _ = renew.await;
        }
        if let Err(error) = shared.store.release(&shared.key, &holder).await {
            tracing::debug!(key = shared.limit_name(), %error, "release failed; the lease will expire");
        }
    });
}

/// A holder id being added to Redis. If the attempt is abandoned (dropped,
/// timed out) after Redis may have added it, the id is released.
pub(super) struct Pending {
    shared: Arc<Shared>,
    holder: Option<String>,
}

impl Pending {
    pub(super) fn new(shared: Arc<Shared>, holder: String) -> Self {
        Self {
            shared,
            holder: Some(holder),
        }
    }

    pub(super) fn holder(&self) -> &str {
        self.holder.as_deref().unwrap_or_default()
    }

    /// Redis said no, or was never asked: nothing to release.
    pub(super) fn forget(mut self) {
        self.holder = None;
    }

    /// Redis said yes to the request `sent` then: the permit is held, and
    /// renewed every third of the lease until it is dropped. The lease runs
    /// from when Redis took the request, so the first renewal is counted
    /// from `sent`, not from the answer: one that arrived a whole store
    /// timeout late put the first renewal's retry past the lease's end.
    pub(super) fn into_permit(mut self, sent: tokio::time::Instant) -> Permit {
        let holder = self.holder.take().unwrap_or_default();
        let shared = self.shared.clone();
        let renew = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.spawn(renew(shared.clone(), holder.clone(), sent)));
        Permit::Remote(Remote {
            shared,
            holder,
            renew,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(holder) = self.holder.take() {
            release(&self.shared, holder, None);
        }
    }
}

/// Keeps a long call's lease alive.
async fn renew(shared: Arc<Shared>, holder: String, sent: tokio::time::Instant) {
    // Warned once per permit, not at every renewal.
    let warned = AtomicBool::new(false);
    renew_on_schedule(shared.lease, sent, || renew_once(&shared, &holder, &warned)).await;
}

/// What one renewal attempt learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Redis answered (the lease was renewed, or lost and handled).
    Answered,
    /// Redis did not answer in time, or failed.
    Failed,
}

/// Runs `attempt` every third of the lease, counted from each attempt's
/// start (the first from `begun`, when the lease was asked for), and a
/// sixth of the lease after a failed one. An attempt can take
/// a whole store timeout, which may be a third of the lease: counted from
/// its end at the regular pace, one timed-out renewal put the next one
/// right at the end of the lease. This way the retry starts when the
/// failure is known, a third of the lease before the end.
async fn renew_on_schedule<F, Fut>(
    lease: std::time::Duration,
    begun: tokio::time::Instant,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Renewal>,
{
    let (every, soon) = (lease / 3, lease / 6);
    let mut next = begun + every;
    loop {
        tokio::time::sleep_until(next).await;
        let started = tokio::time::Instant::now();
        next = started
            + match attempt().await {
                Renewal::Answered => every,
                Renewal::Failed => soon,
            };
    }
}

/// One renewal; takes the place back if Redis lost it.
async fn renew_once(shared: &Shared, holder: &str, warned: &AtomicBool) -> Renewal {
    match shared
        .store
        .renew(&shared.key, shared.lease_ms, holder)
        .await
    {
        Ok(true) => {
            tracing::trace!(key = shared.limit_name(), "lease renewed");
            Renewal::Answered
        }
        Ok(false) => {
            // The holder is gone: Redis lost it (a restart without
            // persistence) or the lease ran out while Redis was
            // unreachable. Take the place back if there is room, so the
            // call counts again.
            match shared
                .store
                .acquire(&shared.key, shared.limit, shared.lease_ms, holder)
                .await
            {
                Ok((true, _)) => {
                    tracing::debug!(key = shared.limit_name(), "lease lost, taken back");
                    Renewal::Answered
                }
                Ok((false, held)) => {
                    if !warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            key = shared.limit_name(),
                            in_flight = held,
                            limit = shared.limit,
                            "lease lost and no room to take it back; the limit is exceeded until this call ends"
                        );
                    }
                    Renewal::Answered
                }
                Err(error) => {
                    tracing::debug!(key = shared.limit_name(), %error, "lease lost; taking it back failed, will retry");
                    Renewal::Failed
                }
            }
        }
        Err(error) => {
            tracing::debug!(key = shared.limit_name(), %error, "lease renewal failed; will retry");
            Renewal::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Renewal, renew_on_schedule};

    /// At the shortest lease the builder allows (three store timeouts), a
    /// renewal that takes the whole timeout and fails is retried while the
    /// last renewed lease still runs. Counted from the failure's end at the
    /// regular pace, the retry came at the very end of the lease.
    #[tokio::test(start_paused = true)]
    async fn a_timed_out_renewal_is_retried_before_the_lease_ends() {
        let lease = Duration::from_secs(3);
        let timeout = lease / 3;
        let begin = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let recorded = starts.clone();
        let schedule = renew_on_schedule(lease, begin, move || {
            let recorded = recorded.clone();
            async move {
                let second = {
                    let mut starts = recorded.lock().unwrap();
                    starts.push(begin.elapsed());
                    starts.len() == 2
                };
                if second {
                    // Redis silent: the store gives up after its timeout.
                    tokio::time::sleep(timeout).await;
                    Renewal::Failed
                } else {
                    Renewal::Answered
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_millis(6500), schedule).await;

        let starts = starts.lock().unwrap().clone();
        let secs = |s: u64| Duration::from_secs(s);
        // Renewed at 1 s (so held until 4 s); the 2 s attempt fails at 3 s
        // and is retried at once; then every third of the lease again.
        assert_eq!(
            starts,
            [secs(1), secs(2), secs(3), secs(4), secs(5), secs(6)]
        );
        assert!(starts[2] + timeout <= starts[0] + lease);
    }

    /// The first renewal is counted from when the lease was asked for: an
    /// answer that came a whole store timeout (a third of the shortest
    /// lease) late no longer puts it, and its retry, at the lease's end.
    #[tokio::test(start_paused = true)]
    async fn the_first_renewal_is_counted_from_the_acquire_sent() {
        let lease = Duration::from_secs(3);
        let begin = Instant::now();
        // The acquire's answer took the store's whole timeout.
        tokio::time::advance(lease / 3).await;
        let starts = Arc::new(Mutex::new(Vec::new()));
        let recorded = starts.clone();
        let schedule = renew_on_schedule(lease, begin, move || {
            recorded.lock().unwrap().push(begin.elapsed());
            async { Renewal::Answered }
        });
        let _ = tokio::time::timeout(Duration::from_millis(2500), schedule).await;
        let starts = starts.lock().unwrap().clone();
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(starts, [secs(1), secs(2), secs(3)]);
    }

    /// A store that fails at once is not hammered: a sixth of the lease
    /// between attempts.
    #[tokio::test(start_paused = true)]
    async fn failing_renewals_are_spaced_a_sixth_of_the_lease_apart() {
        let lease = Duration::from_secs(6);
        let begin = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let recorded = starts.clone();
        let schedule = renew_on_schedule(lease, begin, move || {
            recorded.lock().unwrap().push(begin.elapsed());
            async { Renewal::Failed }
        });
        let _ = tokio::time::timeout(Duration::from_millis(5500), schedule).await;
        let starts = starts.lock().unwrap().clone();
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(starts, [secs(2), secs(3), secs(4), secs(5)]);
    }
}
