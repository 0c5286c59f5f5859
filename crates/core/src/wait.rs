//! [`DeliberateWait`]: how a layer below tells an adaptive limit above it
//! which part of a call was spent waiting on purpose.

use std::time::Duration;

/// The part of one call that layers below the adaptive limit spent waiting
/// on purpose, on a limit of the caller's own (a per-host permit or token),
/// not on the downstream.
///
/// Waits the downstream asked for (a `Retry-After` slept out, a rate-limit
/// budget it said was spent) are not deliberate in this sense: they are its
/// word on its capacity, and an adaptive limit should hear them as latency,
/// or it keeps its limit up and the calls it lets through meet the same cap.
///
/// A layer that waits on purpose adds its wait to the response's
/// extensions with [`add_to`](Self::add_to); the
/// [adaptive limit](crate::adaptive) reads it (through
/// [`Classify::waited`](crate::classify::Classify::waited), which
/// [`HttpClassify`](crate::classify::HttpClassify) implements) and takes it
/// off the latency it records for the call. Without it, a call queued
/// behind one host's rate limit reads as a slow downstream, and the limit
/// falls for every host.
///
/// Only a response carries it: an error's sample keeps the whole time of
/// the call (an error's latency feeds no controller's RTT estimate, only
/// its outcome counts). A response that waited for nothing carries none.
///
/// ```
/// use std::time::Duration;
/// use tower_fanout_core::DeliberateWait;
///
/// let mut response = http::Response::new(());
/// DeliberateWait::add_to(response.extensions_mut(), Duration::from_millis(300));
/// DeliberateWait::add_to(response.extensions_mut(), Duration::from_millis(200));
/// let waited = response.extensions().get::<DeliberateWait>().copied();
/// assert_eq!(waited, Some(DeliberateWait::new(Duration::from_millis(500))));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliberateWait(Duration);

impl DeliberateWait {
    /// A wait of `duration`.
    pub const fn new(duration: Duration) -> Self {
        Self(duration)
    }

    /// How long the call waited on purpose.
    pub const fn duration(self) -> Duration {
        self.0
    }

    /// Adds `waited` to the `DeliberateWait` in `extensions`, inserting one
    /// if there is none; a zero wait leaves them untouched (and allocates
    /// nothing). Waits of several layers add up.
    pub fn add_to(extensions: &mut http::Extensions, waited: Duration) {
        if waited.is_zero() {
            return;
        }
        match extensions.get_mut::<Self>() {
            Some(total) => total.0 = total.0.saturating_add(waited),
            None => {
                extensions.insert(Self(waited));
            }
        }
    }
}
