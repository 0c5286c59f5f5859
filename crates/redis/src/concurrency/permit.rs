//! A permit held on Redis: renewed while held, released when dropped.

use std::fmt;
use std::sync::Arc;

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
        if let Some(renew) = &self.renew {
            renew.abort();
        }
        release(&self.shared, std::mem::take(&mut self.holder));
    }
}

/// Sends the release from a task of its own, since the permit is often
/// dropped where nothing can be awaited (a dropped response future). If
/// there is no runtime, or Redis does not answer, the lease expires instead.
fn release(shared: &Arc<Shared>, holder: String) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = shared.clone();
    runtime.spawn(async move {
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

    /// Redis said yes: the permit is held, and renewed every third of the
    /// lease until it is dropped.
    pub(super) fn into_permit(mut self) -> Permit {
        let holder = self.holder.take().unwrap_or_default();
        let shared = self.shared.clone();
        let renew = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.spawn(renew(shared.clone(), holder.clone())));
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
            release(&self.shared, holder);
        }
    }
}

/// Keeps a long call's lease alive.
async fn renew(shared: Arc<Shared>, holder: String) {
    let every = shared.lease / 3;
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        match shared
            .store
            .renew(&shared.key, shared.lease_ms, &holder)
            .await
        {
            Ok(true) => tracing::trace!(key = shared.limit_name(), "lease renewed"),
            Ok(false) => {
                // The holder is gone: Redis lost it (a restart without
                // persistence) or the lease ran out while Redis was
                // unreachable. Take the place back if there is room, so the
                // call counts again.
                match shared
                    .store
                    .acquire(&shared.key, shared.limit, shared.lease_ms, &holder)
                    .await
                {
                    Ok((true, _)) => {
                        tracing::debug!(key = shared.limit_name(), "lease lost, taken back");
                    }
                    Ok((false, held)) if !warned => {
                        warned = true;
                        tracing::warn!(
                            key = shared.limit_name(),
                            in_flight = held,
                            limit = shared.limit,
                            "lease lost and no room to take it back; the limit is exceeded until this call ends"
                        );
                    }
                    Ok((false, _)) => {}
                    Err(error) => {
                        tracing::debug!(key = shared.limit_name(), %error, "lease lost; taking it back failed, will retry");
                    }
                }
            }
            Err(error) => {
                tracing::debug!(key = shared.limit_name(), %error, "lease renewal failed; will retry");
            }
        }
    }
}
