//! The address guard: refuse private, loopback and metadata addresses after DNS.
//!
//! An agent that fetches URLs it was handed must not be turned against the
//! machine it runs on (server-side request forgery): `http://169.254.169.254/`
//! leaks cloud credentials, `http://localhost:6379/` talks to a local Redis.
//! Checking the URL's text is not enough, since any name can resolve to
//! such an address. So the guard sits where addresses become connections:
//! the resolver checks every address a name resolves to, and the connector
//! checks a URI whose host is an IP literal (hyper-util skips the resolver
//! for those). Redirects go through the same connector, so a redirect to a
//! private address is refused too.
//!
//! Refused: unspecified, loopback, private (RFC 1918), link-local (which holds
//! `169.254.169.254`), CGNAT `100.64.0.0/10` (Alibaba's `100.100.100.200`),
//! the IETF, benchmarking, documentation, multicast, broadcast and reserved
//! IPv4 ranges. In IPv6, the forms that embed an IPv4 address (mapped
//! `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
//! `2002::/16`) are judged by the IPv4 address inside; every other address
//! outside global unicast `2000::/3` is refused: loopback, unique-local
//! `fc00::/7` (AWS's `fd00:ec2::254`), link-local, site-local, multicast,
//! local-use NAT64 `64:ff9b:1::/48`, SIIT's `::ffff:0:a.b.c.d` and reserved
//! space, none of it a public host's; and inside `2000::/3`, Teredo
//! `2001::/32`, benchmarking `2001:2::/48` and documentation `2001:db8::/32`
//! and `3fff::/20`.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use tower_service::Service;

use crate::BoxError;

/// Whether the guard refuses `ip`.
///
/// ```
/// use tower_fanout_http::guard::is_forbidden;
/// assert!(is_forbidden("169.254.169.254".parse().unwrap()));
/// assert!(is_forbidden("::ffff:10.0.0.1".parse().unwrap()));
/// assert!(is_forbidden("fd00:ec2::254".parse().unwrap()));
/// assert!(!is_forbidden("93.184.215.14".parse().unwrap()));
/// ```
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

fn v4_forbidden(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", including 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224 // multicast, reserved, broadcast
}

fn v6_forbidden(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return v4_forbidden(v4);
    }
    let s = ip.segments();
    // Only 2000::/3 holds public unicast hosts. Outside it: `::`, `::1`,
    // unique-local (fd00:ec2::254), link-local, site-local, multicast,
    // discard-only, local-use NAT64 64:ff9b:1::/48 and SIIT ::ffff:0:0:0/96
    // (both translated by a local gateway to any IPv4 address, private ones
    // included), and unallocated space a private network may still route.
    (s[0] & 0xe000) != 0x2000
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: tunnels to anywhere
        || (s[0] == 0x2001 && s[1] == 2 && s[2] == 0) // benchmarking
}

/// The IPv4 address an IPv6 address stands for, in the forms that embed one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible; `::` and `::1`
        // read as 0.0.0.0 and 0.0.0.1, refused as IPv6 would refuse them)
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        // NAT64 well-known prefix
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        // 6to4
        [0x2002, hi, lo, ..] => Some(tail(hi, lo)),
        _ => None,
    }
}

/// The guard's settings: on or off, and addresses let through anyway.
#[derive(Clone, Debug, Default)]
pub(crate) struct Guard {
    enabled: bool,
    allow: Arc<[IpAddr]>,
}

impl Guard {
    pub(crate) fn new(enabled: bool, allow: Vec<IpAddr>) -> Self {
        Self {
            enabled,
            // Compared in canonical form: `::ffff:10.0.0.5` is 10.0.0.5 (a
            // socket to one reaches the other), whichever way either is written.
            allow: allow.into_iter().map(|ip| ip.to_canonical()).collect(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    fn refuses(&self, ip: IpAddr) -> bool {
        self.enabled && is_forbidden(ip) && !self.allow.contains(&ip.to_canonical())
    }

    /// Refuses what the guard can tell from the URI alone: the scheme, and
    /// an IP-literal host.
    pub(crate) fn check_uri(&self, uri: &Uri) -> Result<(), RefusedAddress> {
        self.check(uri.scheme_str(), uri.host().unwrap_or_default())
    }

    /// [`check_uri`](Self::check_uri) on a URI's scheme and host, already split out.
    pub(crate) fn check(&self, scheme: Option<&str>, host: &str) -> Result<(), RefusedAddress> {
        if !self.enabled {
            return Ok(());
        }
        match scheme {
            Some("http" | "https") => {}
            other => {
                return Err(RefusedAddress::new(
                    format!("{}://{host}", other.unwrap_or("")),
                    None,
                ));
            }
        }
        // Only a host starting with a digit or `[` can be an IP literal; names
        // are left to the resolver.
        let maybe_ip = host.starts_with(|c: char| c.is_ascii_digit() || c == '[');
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if maybe_ip
            && let Ok(ip) = literal.parse::<IpAddr>()
            && self.refuses(ip)
        {
            return Err(RefusedAddress::new(host, Some(ip)));
        }
        Ok(())
    }
}

/// The guard refused to connect: the host is, or resolved to, a forbidden address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedAddress {
    host: String,
    ip: Option<IpAddr>,
}

impl RefusedAddress {
    pub(crate) fn new(host: impl Into<String>, ip: Option<IpAddr>) -> Self {
        Self {
            host: host.into(),
            ip,
        }
    }

    /// The host name (or IP literal) of the request; for a refused scheme, the
    /// scheme and host as written (`ftp://example.com`), so the message shows
    /// what was refused.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The forbidden address, or `None` when the scheme was refused.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The forbidden address when the host is a name that resolved to it:
    /// `None` for an IP-literal host, which is its address (a message names
    /// it once), and for a refused scheme.
    pub fn resolved_ip(&self) -> Option<IpAddr> {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        self.ip.filter(|ip| literal.parse().ok() != Some(*ip))
    }
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            // The way past it too: reaching such an address is sometimes
            // meant (a proxy, an internal service, a test server).
            Some(ip) => {
                write!(f, "address guard refused {}", self.host)?;
                if let Some(resolved) = self.resolved_ip() {
                    write!(f, " ({resolved})")?;
                }
                write!(
                    f,
                    ": private, loopback, link-local or metadata address; if it is meant to be reached, let it through with the client's `address_guard_allow({ip})`, or turn the guard off with `address_guard(false)`"
                )
            }
            None => write!(
                f,
                "address guard refused {}: only http and https are allowed",
                self.host
            ),
        }
    }
}

impl std::error::Error for RefusedAddress {}

type Addrs = std::vec::IntoIter<SocketAddr>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A boxed resolver: any `Service<Name>` that yields socket addresses.
pub(crate) type BoxResolver = tower::util::BoxCloneSyncService<Name, Addrs, BoxError>;

/// Boxes any resolver service into [`BoxResolver`].
pub(crate) fn box_resolver<R, I>(resolver: R) -> BoxResolver
where
    R: Service<Name, Response = I> + Clone + Send + Sync + 'static,
    R::Future: Send + 'static,
    R::Error: Into<BoxError>,
    I: Iterator<Item = SocketAddr>,
{
    use tower::ServiceExt;
    BoxResolver::new(
        resolver
            .map_response(|addrs| addrs.collect::<Vec<_>>().into_iter())
            .map_err(Into::into),
    )
}

/// Resolves names, then refuses the lot if any address is forbidden (a name
/// that mixes public and private answers is how DNS rebinding starts).
///
/// hyper-util clones the connector, and with it the resolver, for every
/// request (even one that then finds a pooled connection), so the boxed
/// resolver sits behind an `Arc` and is cloned only to actually resolve.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    inner: Arc<BoxResolver>,
    guard: Guard,
}

impl GuardedResolver {
    pub(crate) fn new(inner: BoxResolver, guard: Guard) -> Self {
        Self {
            inner: Arc::new(inner),
            guard,
        }
    }
}

impl fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedResolver")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Service<Name> for GuardedResolver {
    type Response = Addrs;
    type Error = BoxError;
    type Future = BoxFuture<Addrs>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is awaited on the clone made in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        let resolver = BoxResolver::clone(&self.inner);
        Box::pin(async move {
            use tower::ServiceExt;
            let addrs: Vec<SocketAddr> = resolver.oneshot(name).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| guard.refuses(a.ip())) {
                tracing::debug!(host = %host, ip = %bad.ip(), "address guard refused a resolved address");
                return Err(RefusedAddress::new(host, Some(bad.ip())).into());
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Checks the scheme and an IP-literal host before the inner connector runs.
///
/// hyper-util clones its connector for every request, even one that then
/// finds a pooled connection, so the connector sits behind an `Arc` and is
/// cloned only to actually connect.
#[derive(Debug)]
pub(crate) struct GuardedConnector<C> {
    inner: Arc<C>,
    guard: Guard,
    /// Time allowed to make a connection, DNS, TCP and TLS together.
    timeout: Option<Duration>,
}

impl<C> Clone for GuardedConnector<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            guard: self.guard.clone(),
            timeout: self.timeout,
        }
    }
}

impl<C> GuardedConnector<C> {
    pub(crate) fn new(inner: C, guard: Guard, timeout: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(inner),
            guard,
            timeout,
        }
    }
}

impl<C> Service<Uri> for GuardedConnector<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = BoxFuture<C::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is awaited on the clone made in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Checked here, once per new connection, rather than per request:
        // `http::Uri` takes any digits as a port and reads one past 65535 as
        // none, so hyper-util would dial the scheme's default port instead.
        // A pooled connection is keyed by the authority as written, so such
        // a URI never finds one and always comes here.
        if let Some(port) = port_out_of_range(&uri) {
            let error = PortOutOfRange(port.to_owned());
            return Box::pin(std::future::ready(Err(error.into())));
        }
        if let Err(refused) = self.guard.check_uri(&uri) {
            tracing::debug!(host = %refused.host(), "address guard refused a URI");
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connector = C::clone(&self.inner);
        let timeout = self.timeout;
        Box::pin(async move {
            use tower::ServiceExt;
            let connect = connector.oneshot(uri);
            // The whole handshake, not only the TCP connect hyper-util times:
            // a peer that accepts and never answers the TLS hello held the
            // connection (and a socket) for as long as it liked. A connect
            // that hyper-util moves to the background, once a pooled
            // connection served the request that started it, is bounded too.
            let Some(timeout) = timeout else {
                return connect.await.map_err(Into::into);
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection within the connect timeout of {} ms (DNS, TCP and TLS handshakes); raise `connect_timeout` if the host is known to be slow to reach",
                        timeout.as_millis()
                    ),
                )
                .into()),
            }
        })
    }
}

/// The port written in `uri`'s authority when it is not a valid port
/// number (digits past 65535), which `http::Uri` reads as no port at all
/// (`port_u16()` is `None`), so a connection would go to the scheme's
/// default port instead. The client's connector refuses such a URI; a
/// caller checking its input up front can ask the same question.
///
/// ```
/// use tower_fanout_http::guard::port_out_of_range;
/// let uri: http::Uri = "http://example.com:99999/".parse().unwrap();
/// assert_eq!(port_out_of_range(&uri), Some("99999"));
/// let uri: http::Uri = "http://[::1]:8080/".parse().unwrap();
/// assert_eq!(port_out_of_range(&uri), None);
/// ```
pub fn port_out_of_range(uri: &Uri) -> Option<&str> {
    let authority = uri.authority()?.as_str();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let port = split_port(host_port).1?;
    (!port.is_empty() && port.parse::<u16>().is_err()).then_some(port)
}

/// `host[:port]` split at the port's `:`: the last one outside an IPv6
/// literal, whose colons are not the port's (`[::1]:8080`).
pub(crate) fn split_port(host_port: &str) -> (&str, Option<&str>) {
    let host_end = host_port.rfind(']').map_or(0, |i| i + 1);
    match host_port[host_end..].rfind(':') {
        Some(i) => (
            &host_port[..host_end + i],
            Some(&host_port[host_end + i + 1..]),
        ),
        None => (host_port, None),
    }
}

/// A URI's port is not a port number; the request was not sent.
#[derive(Debug)]
pub(crate) struct PortOutOfRange(String);

impl fmt::Display for PortOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "port {} is out of range (a port is 0 to 65535); the request was not sent",
            self.0
        )
    }
}

impl std::error::Error for PortOutOfRange {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bad(s: &str) -> bool {
        is_forbidden(s.parse().unwrap())
    }

    fn refused(addresses: &[&str]) {
        for s in addresses {
            assert!(bad(s), "{s} should be refused");
        }
    }

    fn passes(addresses: &[&str]) {
        for s in addresses {
            assert!(!bad(s), "{s} should pass");
        }
    }

    #[test]
    fn ports_past_65535_are_found_and_others_are_not() {
        for (uri, port) in [
            ("http://h:99999/", Some("99999")),
            ("http://u:1@h:65536/", Some("65536")),
            ("http://[::1]:70000/", Some("70000")),
            ("http://h:65535/", None),
            ("http://h:/", None),
            ("http://h/", None),
            ("http://[::1]/", None),
            // An address ending in a colon before its `]` (`[::]`).
            ("http://[::]/", None),
            ("http://[::]:99999/", Some("99999")),
            ("http://[::1]:80/", None),
            ("http://u:99999@h/", None),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(port_out_of_range(&uri), port, "{uri}");
        }
    }

    #[test]
    fn refuses_private_and_metadata_forms() {
        refused(&[
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "ff02::1",
        ]);
    }

    #[test]
    fn lets_public_addresses_through() {
        passes(&[
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ]);
    }

    /// Each IPv4 range the guard refuses, at its first and last address,
    /// and the public addresses beside it, or sharing one of its octets
    /// (`8.8.2.8` shares TEST-NET-1's third octet; the guard must read all
    /// of them together, not any one alone).
    #[test]
    fn ipv4_ranges_end_where_they_should() {
        refused(&[
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "127.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "169.254.0.0",
            "169.254.255.255",
            "172.16.0.0",
            "192.0.0.0",
            "192.0.0.255",
            "192.0.2.0",
            "192.0.2.255",
            "192.168.0.0",
            "192.168.255.255",
            "198.18.0.0",
            "198.19.255.255",
            "198.51.100.0",
            "198.51.100.255",
            "203.0.113.0",
            "203.0.113.255",
            "224.0.0.0",
            "239.255.255.255",
            "240.0.0.1",
        ]);
        passes(&[
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "168.254.0.1",
            "172.15.255.255",
            "171.16.0.1",
            "192.0.1.0",
            "192.0.3.0",
            "192.1.0.0",
            "191.0.0.1",
            "193.0.2.1",
            "192.167.255.255",
            "192.169.0.0",
            "193.168.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "199.18.0.1",
            "198.51.99.255",
            "198.51.101.0",
            "198.50.100.1",
            "197.51.100.1",
            "203.0.112.255",
            "203.0.114.0",
            "203.1.113.0",
            "204.0.113.1",
            "223.255.255.255",
            // An octet of a refused range, elsewhere.
            "1.0.0.1",
            "8.8.0.8",
            "8.8.2.8",
            "8.0.2.8",
            "8.254.0.1",
            "8.100.0.1",
            "8.20.0.1",
            "8.168.0.1",
            "8.18.0.1",
            "8.19.0.1",
            "8.51.100.8",
            "8.8.100.8",
            "8.0.113.8",
            "8.8.113.8",
        ]);
    }

    /// The IPv6 blocks refused inside `2000::/3` at their edges, the space
    /// outside it, and the embedded IPv4 forms; with the public addresses
    /// beside each block or sharing one of its segments.
    #[test]
    fn ipv6_blocks_end_where_they_should() {
        refused(&[
            "2001:db8::",
            "2001:db8:ffff:ffff::1",
            "3fff::",
            "3fff:fff:ffff::1",
            "2001::",
            "2001:0:ffff::1",
            "2001:2::",
            "2001:2:0:ffff::1",
            "1fff:ffff::1",
            "4000::1",
            "100::1",
            "fec0::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2002:c0a8:101::",
        ]);
        passes(&[
            "2000::1",
            "3fff:ffff::1",
            "2001:db7::1",
            "2001:db9::1",
            "2400:db8::1",
            "3ffe:ffff::1",
            "3fff:1000::1",
            "2400:fff::1",
            "2001:1::1",
            "2400::1",
            "2001:2:1::1",
            "2001:3::1",
            "2400:2::1",
            "::8.8.8.8",
            "64:ff9b::808:808",
        ]);
    }

    /// A refusal names what it refused: the host and address, or the
    /// scheme and host as written.
    #[test]
    fn a_refusal_names_the_host_and_address() {
        let g = Guard::new(true, vec![]);
        let err = g
            .check_uri(&"http://169.254.169.254/latest".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.host(), "169.254.169.254");
        assert_eq!(err.ip(), Some("169.254.169.254".parse().unwrap()));
        // An IP-literal host is its address: named once.
        assert!(
            err.to_string().contains("refused 169.254.169.254: "),
            "{err}"
        );
        let err = g
            .check_uri(&"http://[::1]:8080/".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            (err.host(), err.ip()),
            ("[::1]", Some("::1".parse().unwrap()))
        );
        let err = g
            .check_uri(&"ftp://example.com/x".parse().unwrap())
            .unwrap_err();
        assert_eq!((err.host(), err.ip()), ("ftp://example.com", None));
        assert!(err.to_string().contains("only http and https"), "{err}");
    }

    #[test]
    fn uri_checks_scheme_and_literals() {
        let g = Guard::new(true, vec!["10.9.9.9".parse().unwrap()]);
        let check = |u: &str| g.check_uri(&u.parse().unwrap());
        assert!(check("ftp://example.com/").is_err());
        assert!(check("http://[::1]:8080/").is_err());
        assert!(check("http://169.254.169.254/latest").is_err());
        assert!(check("https://example.com/").is_ok());
        assert!(check("http://8.8.8.8/").is_ok());
        assert!(check("http://10.9.9.9/").is_ok(), "allowed explicitly");
        // The mapped form is the IPv4 address, either way round; the
        // other embedding forms are not matched.
        assert!(check("http://[::ffff:10.9.9.9]/").is_ok());
        assert!(check("http://[::10.9.9.9]/").is_err());
        assert!(check("http://[64:ff9b::a09:909]/").is_err());
        let mapped = Guard::new(true, vec!["::ffff:10.9.9.9".parse().unwrap()]);
        assert!(
            mapped
                .check_uri(&"http://10.9.9.9/".parse().unwrap())
                .is_ok()
        );
        assert!(
            Guard::new(false, vec![])
                .check_uri(&"http://[::1]/".parse().unwrap())
                .is_ok()
        );
    }
}
