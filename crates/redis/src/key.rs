//! Which limit a request counts against.

/// Picks the limit a request counts against, within one layer: say, one
/// rate limit per host.
///
/// Implemented for every `Fn(&Req) -> String`, so a closure will do. The
/// string is appended to the layer's name inside the Redis key's hash tag
/// (with `{`, `}` and `%` percent-escaped, and the name's own `:` and `%`,
/// so that distinct strings and names stay distinct limits), so each
/// per-host limit is one key on one Redis Cluster slot. Keep the number of
/// distinct keys bounded (hosts, tenants, API names), not one per request:
/// each key lives in Redis until its limit is idle.
pub trait LimitKey<Req> {
    /// The key of the limit `req` counts against, or `None` for the
    /// layer's single limit.
    fn key(&self, req: &Req) -> Option<String>;
}

impl<Req, F> LimitKey<Req> for F
where
    F: Fn(&Req) -> String,
{
    fn key(&self, req: &Req) -> Option<String> {
        Some(self(req))
    }
}

/// Every request counts against the layer's one limit (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleKey;

impl<Req> LimitKey<Req> for SingleKey {
    fn key(&self, _: &Req) -> Option<String> {
        None
    }
}

/// Checks a limit name given to a builder.
pub(crate) fn check_name(name: &str) -> Result<(), crate::Error> {
    if name.is_empty() {
        return Err(crate::Error::config(
            "limit name must not be empty: it names the limit's key in Redis",
        ));
    }
    if name.contains(['{', '}']) {
        return Err(crate::Error::config(format!(
            "limit name {name:?} must not contain '{{' or '}}': the name is the key's hash tag"
        )));
    }
    Ok(())
}
