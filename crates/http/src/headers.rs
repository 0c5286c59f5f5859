//! Parsers for `Retry-After` and the rate-limit response headers.
//!
//! They take header values and the current wall-clock time and give back
//! durations, so they are plain functions tested on plain values. Every
//! malformed value is `None`: a server's typo never panics the client and
//! never makes it wait longer than it said.
//!
//! Forms understood, most restrictive wins when a response carries several:
//!
//! | header | remaining | reset |
//! |---|---|---|
//! | `RateLimit: "default";r=0;t=30` (IETF draft, structured) | `r` | `t` seconds |
//! | `RateLimit: limit=100, remaining=0, reset=30` (earlier draft) | `remaining` | `reset` |
//! | `RateLimit-Remaining` / `RateLimit-Reset` | value | seconds |
//! | `X-RateLimit-Remaining` / `X-RateLimit-Reset` | value | seconds, epoch seconds, or a duration |
//! | `x-ratelimit-remaining-requests` / `x-ratelimit-reset-requests` | value | a duration: `6m0s`, `1m30.5s`, `250ms` |
//! | `x-ratelimit-remaining-tokens` / `x-ratelimit-reset-tokens` | value (each request costs at least one token) | a duration |
//!
//! `RateLimit-Policy: "default";q=100;w=60` supplies the window (`w`) when a
//! remaining count comes without a reset.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::HeaderMap;
//! use tower_fanout_http::headers::{Budget, budget, duration};
//!
//! let mut h = HeaderMap::new();
//! h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
//! h.insert("x-ratelimit-reset-requests", "1m30.5s".parse().unwrap());
//! assert_eq!(
//!     budget(&h, SystemTime::now()),
//!     Some(Budget::new(0, Duration::from_millis(90_500)))
//! );
//! assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
//! assert_eq!(duration("6x"), None); // malformed: ignored
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

/// Numbers at or above this in a reset header are Unix timestamps, not deltas
/// (10⁹ s is 2001; no server asks for a 31-year wait).
const EPOCH_THRESHOLD_NANOS: u128 = 1_000_000_000 * 1_000_000_000;

/// Waits longer than this are treated as malformed (a day is generous).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// What a response says about the host's budget. New fields may be added:
/// read them by name, make one with [`Budget::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Budget {
    /// Requests left in the current window.
    pub remaining: u64,
    /// Time until the window resets.
    pub reset: Duration,
}

impl Budget {
    /// `remaining` requests left, the window resetting in `reset`.
    pub const fn new(remaining: u64, reset: Duration) -> Self {
        Self { remaining, reset }
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date (a date in the past
/// is zero). A decimal number of seconds (`1.5`) is read as one too. A date
/// is read against `now`: the client passes the response's own clock
/// ([`server_clock`]), so its own clock's error does not change the wait.
pub fn retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    retry_after_unbounded(value, now).filter(|d| *d <= MAX_WAIT)
}

/// The server's clock when it answered: the response's `Date`, or `local`
/// when it has none (or an unreadable one). An HTTP-date `Retry-After` or
/// an epoch reset is a moment on the server's clock; read against the
/// client's, a client clock three minutes fast took a two-minute
/// `Retry-After` for one already past and retried at once.
pub fn server_clock(headers: &HeaderMap, local: SystemTime) -> SystemTime {
    headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
        .unwrap_or(local)
}

/// [`retry_after`] without the one-day bound: a well-formed but very long
/// wait is still a wait (delta-seconds past `u64` saturate), so the retry
/// layer can answer it with `RateLimited` rather than take it for no
/// `Retry-After` at all and retry after a short backoff.
pub(crate) fn retry_after_unbounded(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(s.parse::<u64>().unwrap_or(u64::MAX)));
    }
    // Not RFC 9110's delta-seconds, but plain: read as no `Retry-After`, a
    // 429 saying `1.5` was retried after a 100 ms backoff, three times over.
    if let Some((int, frac)) = s.split_once('.')
        && !(int.is_empty() && frac.is_empty())
        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        // Only a whole part too long for a u128 of nanoseconds (30 digits)
        // fails to parse: it saturates too.
        let nanos = seconds_nanos(s).unwrap_or(u128::MAX);
        return Some(
            u64::try_from(nanos).map_or(Duration::from_secs(u64::MAX), Duration::from_nanos),
        );
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a Go-style duration (`6m0s`, `1m30.5s`, `250ms`, `1h`, `2.5s`, `90us`)
/// or a plain number of seconds (`30`, `0.5`).
pub fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(secs) = seconds(s) {
        return Some(secs);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            return None;
        }
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit_ns: u128 = match &rest[..unit_len] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(decimal_nanos(number, unit_ns)?)?;
    }
    to_duration(total)
}

/// `number` (digits, at most one `.`) times `unit_ns`, exactly, in nanoseconds.
fn decimal_nanos(number: &str, unit_ns: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    // A whole part past u128 fails here or overflows below: `None`.
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    // Digits past nanosecond precision cannot matter.
    let frac = &frac[..frac.len().min(18)];
    let frac_ns = if frac.is_empty() {
        0
    } else {
        let digits: u128 = frac.parse().ok()?;
        digits.checked_mul(unit_ns)? / 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?
    };
    int.checked_mul(unit_ns)?.checked_add(frac_ns)
}

/// A non-negative decimal number of seconds.
fn seconds(s: &str) -> Option<Duration> {
    to_duration(seconds_nanos(s)?)
}

/// A non-negative decimal number of seconds, in nanoseconds; `None` for
/// anything but digits and a dot.
fn seconds_nanos(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    decimal_nanos(s, 1_000_000_000)
}

fn to_duration(nanos: u128) -> Option<Duration> {
    let nanos = u64::try_from(nanos).ok()?;
    let d = Duration::from_nanos(nanos);
    (d <= MAX_WAIT).then_some(d)
}

/// A reset value: delta seconds, Unix epoch seconds, or a duration.
pub fn reset(s: &str, now: SystemTime) -> Option<Duration> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let n = seconds_nanos(s)?;
        if n >= EPOCH_THRESHOLD_NANOS {
            let epoch = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos();
            return to_duration(n.saturating_sub(epoch));
        }
        return to_duration(n);
    }
    duration(s)
}

fn count(s: &str) -> Option<u64> {
    let s = s.trim();
    // Some servers send "0.0" or "-1" when exhausted; read the integer part
    // (the cast drops the fraction and takes a negative count as 0).
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let f: f64 = s.parse().ok()?;
    f.is_finite().then_some(f as u64)
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Each remaining count and its reset. The tokens budget (OpenAI's
/// `x-ratelimit-*-tokens`) counts too: every request costs at least one
/// token, so the tokens left bound the requests that can still succeed.
const PAIRS: [(HeaderName, HeaderName); 4] = [
    (
        HeaderName::from_static("ratelimit-remaining"),
        HeaderName::from_static("ratelimit-reset"),
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderName::from_static("x-ratelimit-reset"),
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ),
];

const LIMITS: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-limit-requests"),
];

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

/// Every field line of a structured-field list (`RateLimit`,
/// `RateLimit-Policy`): a list may be split across lines (RFC 9651 §3.1).
fn lines<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

/// Whether any header name is a rate-limit field. One pass over the names is
/// cheaper than six hashed lookups, and most responses carry none of these.
pub(crate) fn may_carry_budget(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| {
        let k = k.as_str();
        k.starts_with("ratelimit") || k.starts_with("x-ratelimit")
    })
}

/// Reads the host's budget from a response's headers.
pub fn budget(headers: &HeaderMap, now: SystemTime) -> Option<Budget> {
    if !may_carry_budget(headers) {
        return None;
    }
    let mut found: Option<Budget> = None;
    each_budget(headers, now, |c| found = Some(tighter(found, c)));
    found
}

/// The tightest budget a response states (or `first`, when a
/// `Retry-After` has decided it), and the tightest of those that outlast
/// it: what binds once the first resets.
pub(crate) fn budget_and_after(
    headers: &HeaderMap,
    now: SystemTime,
    first: Option<Budget>,
) -> Option<(Budget, Option<Budget>)> {
    let mut all: Vec<Budget> = Vec::new();
    if may_carry_budget(headers) {
        each_budget(headers, now, |c| all.push(c));
    }
    let first = first.or_else(|| all.iter().fold(None, |f, c| Some(tighter(f, *c))))?;
    let after = all
        .iter()
        .filter(|c| c.reset > first.reset)
        .fold(None, |f, c| Some(tighter(f, *c)));
    Some((first, after))
}

/// The tighter of two budgets: fewer remaining, or as many and a later reset.
fn tighter(found: Option<Budget>, c: Budget) -> Budget {
    match found {
        Some(b) if b.remaining < c.remaining => b,
        Some(b) if b.remaining == c.remaining && b.reset >= c.reset => b,
        _ => c,
    }
}

/// Calls `f` with every budget a response states (a remaining count with
/// a reset, or with the policy's window when it gives none).
fn each_budget(headers: &HeaderMap, now: SystemTime, mut f: impl FnMut(Budget)) {
    let window = lines(headers, &RATELIMIT_POLICY)
        .filter_map(policy_window)
        .min();
    let mut consider = |remaining: u64, reset: Option<Duration>| {
        if let Some(reset) = reset.or(window) {
            f(Budget { remaining, reset });
        }
    };
    for v in lines(headers, &RATELIMIT) {
        for (name, remaining, reset) in ietf_ratelimit(v) {
            // Without its own reset, a member takes the window of the
            // policy of its name ("hour" an hour's, not a minute's); the
            // shortest window only when no policy has that name.
            let named = || {
                let name = name?;
                lines(headers, &RATELIMIT_POLICY)
                    .flat_map(|p| p.split(','))
                    .filter(|item| member_name(item) == name)
                    .find_map(|item| param(item, "w").and_then(seconds))
            };
            consider(remaining, reset.or_else(named));
        }
    }
    for (rem, rst) in &PAIRS {
        if let Some(remaining) = header(headers, rem).and_then(count) {
            consider(remaining, header(headers, rst).and_then(|s| reset(s, now)));
        }
    }
}

/// The size of the host's window, when a response says it: `X-RateLimit-Limit`,
/// `x-ratelimit-limit-requests`, `RateLimit-Limit`, `RateLimit-Policy`'s `q`,
/// or the older `RateLimit: limit=…`. The smallest wins.
pub fn limit(headers: &HeaderMap) -> Option<u64> {
    let mut found: Option<u64> = None;
    let mut consider = |n: Option<u64>| {
        if let Some(n) = n {
            found = Some(found.map_or(n, |f| f.min(n)));
        }
    };
    for name in &LIMITS {
        consider(header(headers, name).and_then(count));
    }
    for policy in lines(headers, &RATELIMIT_POLICY) {
        for item in policy.split(',') {
            consider(param(item, "q").and_then(count));
        }
    }
    for v in lines(headers, &RATELIMIT).filter(|v| v.contains("limit=")) {
        consider(dict_value(v, "limit").and_then(count));
    }
    found
}

/// The value of `key` in the earlier `RateLimit` dictionary form
/// (`limit=100, remaining=0, reset=30`), trimmed.
fn dict_value<'a>(v: &'a str, key: &str) -> Option<&'a str> {
    v.split([',', ';'])
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, val)| val.trim())
}

/// `"default";q=100;w=60` → the window `w`.
fn policy_window(v: &str) -> Option<Duration> {
    v.split(',')
        .filter_map(|item| param(item, "w"))
        .filter_map(seconds)
        .min()
}

/// The `RateLimit` field, structured (`"name";r=0;t=30`, comma-separated) or
/// the earlier dictionary (`limit=100, remaining=0, reset=30`).
/// Each member's name (`None` in the dictionary form), remaining count and
/// reset.
fn ietf_ratelimit(v: &str) -> Vec<(Option<&str>, u64, Option<Duration>)> {
    let mut out = Vec::new();
    if v.contains("remaining=") {
        if let Some(r) = dict_value(v, "remaining").and_then(count) {
            out.push((None, r, dict_value(v, "reset").and_then(seconds)));
        }
        return out;
    }
    for item in v.split(',') {
        if let Some(r) = param(item, "r").and_then(count) {
            out.push((
                Some(member_name(item)),
                r,
                param(item, "t").and_then(seconds),
            ));
        }
    }
    out
}

/// The name of one structured-field list member: `"hour";r=0` → `hour`.
fn member_name(item: &str) -> &str {
    item.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches('"')
}

/// The value of parameter `key` in one structured-field list member.
fn param<'a>(item: &'a str, key: &str) -> Option<&'a str> {
    item.split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// A header map from name/value pairs (for the tests of other modules too).
    pub(crate) fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, hv(v));
        }
        h
    }

    #[test]
    fn retry_after_delta_and_date() {
        assert_eq!(retry_after(&hv("2"), now()), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&hv(" 120 "), now()),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(30));
        assert_eq!(
            retry_after(&hv(&date), now()),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(30));
        assert_eq!(retry_after(&hv(&past), now()), Some(Duration::ZERO));
        assert_eq!(retry_after(&hv("-1"), now()), None);
        assert_eq!(retry_after(&hv("soon"), now()), None);
        assert_eq!(retry_after(&hv("99999999999999999999"), now()), None);
    }

    /// A decimal `Retry-After` is a wait too, with either side of the dot
    /// left out; a dot alone is nothing.
    #[test]
    fn retry_after_decimal_seconds() {
        for (text, ms) in [("1.5", 1500), (".5", 500), ("5.", 5000), ("0.250", 250)] {
            assert_eq!(
                retry_after(&hv(text), now()),
                Some(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in [".", "1.5.", "1..5", "1.5s"] {
            assert_eq!(retry_after(&hv(text), now()), None, "{text}");
        }
    }

    /// Numbers too large for any wait: past the day, `retry_after` ignores
    /// them and the retry layer's unbounded reading saturates (whole parts
    /// of 20, 30 and 45 digits: within a u128 of nanoseconds, past it, and
    /// past a u128); `duration` and `reset` give nothing.
    #[test]
    fn huge_numbers_saturate_or_are_ignored() {
        for digits in [20, 30, 45] {
            let whole = "9".repeat(digits);
            for text in [whole.clone(), format!("{whole}.5")] {
                let v = hv(&text);
                assert_eq!(retry_after(&v, now()), None, "{text}");
                assert_eq!(
                    retry_after_unbounded(&v, now()),
                    Some(Duration::from_secs(u64::MAX)),
                    "{text}"
                );
                assert_eq!(duration(&text), None, "{text}");
                assert_eq!(duration(&format!("{text}ns")), None, "{text}");
                assert_eq!(reset(&text, now()), None, "{text}");
            }
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(duration("1m30.5s"), Some(Duration::from_millis(90_500)));
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(duration("17ms"), Some(Duration::from_millis(17)));
        assert_eq!(duration("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(duration("6x"), None);
        assert_eq!(duration("m"), None);
        assert_eq!(duration(""), None);
    }

    #[test]
    fn go_durations_small_units_and_malformed_numbers() {
        for (text, ns) in [
            ("90us", 90_000),
            ("90\u{b5}s", 90_000),
            ("90\u{3bc}s", 90_000),
            ("15ns", 15),
            ("1ms500us", 1_500_000),
            ("1.5us", 1_500),
        ] {
            assert_eq!(duration(text), Some(Duration::from_nanos(ns)), "{text}");
        }
        // A dot is no number; two dots in one number make none either, even
        // past the 18 fractional digits read (the rest cannot matter).
        for text in [
            ".",
            ".s",
            "1.2.3s",
            "0.123456789012345678.9s",
            "0.123456789012345678.9",
        ] {
            assert_eq!(duration(text), None, "{text}");
            assert_eq!(reset(text, now()), None, "{text}");
        }
    }

    #[test]
    fn reset_forms() {
        assert_eq!(reset("30", now()), Some(Duration::from_secs(30)));
        assert_eq!(reset("1700000060", now()), Some(Duration::from_secs(60)));
        assert_eq!(reset("1699999000", now()), Some(Duration::ZERO));
        assert_eq!(reset("6m0s", now()), Some(Duration::from_secs(360)));
    }

    /// A `RateLimit` member without `t` takes the window of the policy of
    /// its name: `"hour";r=0` under a minute and an hour policy is spent for
    /// the hour (it was held for the minute, the shortest window, and then
    /// a fresh window opened into the spent hour). A name no policy has
    /// takes the shortest window, as before.
    #[test]
    fn a_member_without_a_reset_takes_its_own_policys_window() {
        let policy = "\"minute\";q=60;w=60, \"hour\";q=1000;w=3600";
        for (member, secs) in [
            ("\"hour\";r=0", 3600),
            ("\"minute\";r=0", 60),
            ("\"other\";r=0", 60),
            ("\"hour\";r=0;t=5", 5),
        ] {
            let h = map(&[("ratelimit", member), ("ratelimit-policy", policy)]);
            assert_eq!(
                budget(&h, now()),
                Some(Budget {
                    remaining: 0,
                    reset: Duration::from_secs(secs)
                }),
                "{member}"
            );
        }
    }

    /// A response's `Date` is the server's clock; without one (or with an
    /// unreadable one), the client's.
    #[test]
    fn the_server_clock_is_the_responses_date() {
        let server = now() - Duration::from_secs(180);
        let dated = map(&[("date", &httpdate::fmt_http_date(server))]);
        assert_eq!(server_clock(&dated, now()), server);
        assert_eq!(server_clock(&map(&[]), now()), now());
        assert_eq!(server_clock(&map(&[("date", "yesterday")]), now()), now());
    }

    #[test]
    fn limit_from_each_form() {
        assert_eq!(limit(&map(&[("x-ratelimit-limit", "60")])), Some(60));
        assert_eq!(
            limit(&map(&[("x-ratelimit-limit-requests", "500")])),
            Some(500)
        );
        assert_eq!(
            limit(&map(&[(
                "ratelimit-policy",
                "\"a\";q=100;w=60, \"b\";q=10;w=1"
            )])),
            Some(10)
        );
        assert_eq!(
            limit(&map(&[("ratelimit", "limit=7, remaining=3, reset=4")])),
            Some(7)
        );
        assert_eq!(limit(&map(&[("x-ratelimit-limit", "many")])), None);
    }

    #[test]
    fn budget_from_each_form() {
        let x = map(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000005"),
        ]);
        assert_eq!(
            budget(&x, now()),
            Some(Budget {
                remaining: 0,
                reset: Duration::from_secs(5)
            })
        );
        let openai = map(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
        ]);
        assert_eq!(
            budget(&openai, now()),
            Some(Budget {
                remaining: 59,
                reset: Duration::from_secs(1)
            })
        );
        let ietf = map(&[("ratelimit", "\"default\";r=3;t=7")]);
        assert_eq!(
            budget(&ietf, now()),
            Some(Budget {
                remaining: 3,
                reset: Duration::from_secs(7)
            })
        );
        let dict = map(&[("ratelimit", "limit=10, remaining=0, reset=4")]);
        assert_eq!(
            budget(&dict, now()),
            Some(Budget {
                remaining: 0,
                reset: Duration::from_secs(4)
            })
        );
        let with_policy = map(&[
            ("ratelimit-remaining", "9"),
            ("ratelimit-policy", "\"burst\";q=10;w=60"),
        ]);
        assert_eq!(
            budget(&with_policy, now()),
            Some(Budget {
                remaining: 9,
                reset: Duration::from_secs(60)
            })
        );
        let both = map(&[
            ("ratelimit", "\"a\";r=5;t=1, \"b\";r=0;t=9"),
            ("x-ratelimit-remaining", "2"),
            ("x-ratelimit-reset", "3"),
        ]);
        assert_eq!(
            budget(&both, now()),
            Some(Budget {
                remaining: 0,
                reset: Duration::from_secs(9)
            })
        );
        assert_eq!(
            budget(&map(&[("x-ratelimit-remaining", "lots")]), now()),
            None
        );
        assert_eq!(budget(&map(&[("x-ratelimit-remaining", "3")]), now()), None);
    }

    /// Counts sent as decimals are read by their whole part; spent ones
    /// (`0.0`, `-1`) are zero; anything not a finite number is no count.
    #[test]
    fn counts_in_decimal_and_negative_forms() {
        for (text, n) in [
            ("7", 7),
            ("2.7", 2),
            ("0.0", 0),
            ("-1", 0),
            ("-0.5", 0),
            ("1e3", 1000),
        ] {
            assert_eq!(count(text), Some(n), "{text}");
        }
        for text in ["NaN", "inf", "-inf", "many", ""] {
            assert_eq!(count(text), None, "{text}");
        }
        assert_eq!(
            budget(
                &map(&[("x-ratelimit-remaining", "2.7"), ("x-ratelimit-reset", "3")]),
                now()
            ),
            Some(Budget {
                remaining: 2,
                reset: Duration::from_secs(3)
            })
        );
    }

    /// Of budgets with as many requests left, the one that resets later
    /// binds longer, whichever order the response states them in; and
    /// fewer left binds, however soon it resets.
    #[test]
    fn equal_remaining_counts_keep_the_later_reset() {
        for (value, reset) in [
            ("\"a\";r=0;t=5, \"b\";r=0;t=9", 9),
            ("\"b\";r=0;t=9, \"a\";r=0;t=5", 9),
            ("\"a\";r=1;t=60, \"b\";r=0;t=2", 2),
            ("\"b\";r=0;t=2, \"a\";r=1;t=60", 2),
        ] {
            let reset = Duration::from_secs(reset);
            let found = budget(&map(&[("ratelimit", value)]), now());
            assert_eq!(
                found,
                Some(Budget {
                    remaining: 0,
                    reset
                }),
                "{value}"
            );
        }
    }

    /// A structured-field list may be split across field lines (RFC 9651
    /// §3.1): `RateLimit` and `RateLimit-Policy` sent as one line per
    /// policy are one list, and the spent policy on the second line counts.
    #[test]
    fn ratelimit_lists_split_across_field_lines_are_read_whole() {
        let mut h = HeaderMap::new();
        h.append(RATELIMIT, hv("\"minute\";r=50;t=30"));
        h.append(RATELIMIT, hv("\"hour\";r=0;t=600"));
        assert_eq!(
            budget(&h, now()),
            Some(Budget {
                remaining: 0,
                reset: Duration::from_secs(600)
            })
        );
        let mut h = HeaderMap::new();
        h.append(RATELIMIT, hv("\"hour\";r=0"));
        h.append(RATELIMIT_POLICY, hv("\"minute\";q=60"));
        h.append(RATELIMIT_POLICY, hv("\"hour\";q=10;w=3600"));
        assert_eq!(limit(&h), Some(10));
        assert_eq!(
            budget(&h, now()),
            Some(Budget {
                remaining: 0,
                reset: Duration::from_secs(3600)
            })
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = duration(&s);
            let _ = reset(&s, now());
            if let Ok(v) = HeaderValue::from_str(&s) {
                let _ = retry_after(&v, now());
                let mut h = HeaderMap::new();
                for name in ["ratelimit", "ratelimit-policy", "x-ratelimit-remaining", "x-ratelimit-reset",
                             "ratelimit-remaining", "x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"] {
                    h.insert(name, v.clone());
                }
                let _ = budget(&h, now());
                let _ = limit(&h);
            }
        }

        #[test]
        fn parsers_never_panic_on_header_like_input(
            s in "[0-9a-zA-Z.;=,\" µ-]{0,30}"
        ) {
            let _ = duration(&s);
            let _ = reset(&s, now());
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&s) {
                h.insert("ratelimit", v.clone());
                h.insert("x-ratelimit-remaining", v.clone());
                h.insert("x-ratelimit-reset", v);
                if let Some(b) = budget(&h, now()) {
                    prop_assert!(b.reset <= MAX_WAIT);
                }
            }
        }

        #[test]
        fn go_durations_round_trip(m in 0u64..600, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{m}m{s}s");
            prop_assert_eq!(duration(&text), Some(Duration::from_secs(m * 60 + s)));
            let text = format!("{ms}ms");
            prop_assert_eq!(duration(&text), Some(Duration::from_millis(ms)));
        }

        #[test]
        fn retry_after_seconds_round_trip(n in 0u64..86_400) {
            prop_assert_eq!(retry_after(&hv(&n.to_string()), now()), Some(Duration::from_secs(n)));
            let date = httpdate::fmt_http_date(now() + Duration::from_secs(n));
            prop_assert_eq!(retry_after(&hv(&date), now()), Some(Duration::from_secs(n)));
        }
    }
}
