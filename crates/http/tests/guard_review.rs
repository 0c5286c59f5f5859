//! Regression tests from a security review of the address guard: IPv6
//! ranges that reach private hosts, and the allow-list against the mapped
//! form of an allowed IPv4 address, on real loopback servers.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, SocketAddr};

use support::{Chunks, counted, respond, serve, table_resolver};
use tower_fanout_http::Client;
use tower_fanout_http::guard::is_forbidden;

/// IPv6 addresses outside global unicast `2000::/3` that no public host
/// has were let through: local-use NAT64 `64:ff9b:1::/48` and SIIT's
/// `::ffff:0:a.b.c.d`, which a local translator turns into any IPv4
/// address (here 169.254.169.254, the metadata service), the IPv4-compatible
/// form of `0.0.x.y`, and unallocated space a private network may route.
/// Inside `2000::/3`, the IPv6 twins of ranges refused in IPv4 were let
/// through too: benchmarking `2001:2::/48` (198.18.0.0/15) and the newer
/// documentation prefix `3fff::/20` (2001:db8::/32 was refused).
#[test]
fn ipv6_space_no_public_host_has_is_refused() {
    for s in [
        "64:ff9b:1::a9fe:a9fe",
        "64:ff9b:1:a9fe:a9:fe00::",
        "::ffff:0:a9fe:a9fe",
        "::ffff:0:7f00:1",
        "::2",
        "::0.0.255.255",
        "dead:beef::1",
        "5f00::1",
        "200::1",
        "100:0:0:1::1",
        "fe00::1",
        "2001:2::1",
        "2001:2:0:ffff::1",
        "3fff::1",
        "3fff:fff::1",
    ] {
        assert!(is_forbidden(s.parse().unwrap()), "{s} should be refused");
    }
}

/// The stricter IPv6 rule refuses no public address: the big providers'
/// ranges, the edges of the refused blocks, and the embedded forms whose
/// IPv4 address is public.
#[test]
fn public_ipv6_addresses_still_pass() {
    for s in [
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2620:fe::fe",
        "2a00:1450:4001::1",
        "2001:200::1",
        "2001:3::1",
        "2001:2:1::1",
        "2001:db9::1",
        "3fff:1000::1",
        "3ffe:ffff::1",
        "64:ff9b::8.8.8.8",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
    ] {
        assert!(!is_forbidden(s.parse().unwrap()), "{s} should pass");
    }
}

/// An allowed IPv4 address was refused when the connection would go to its
/// IPv4-mapped IPv6 form (`::ffff:127.0.0.1`, which a socket reaches as
/// 127.0.0.1), from a URL literal or from a resolver's answer; and an entry
/// written in the mapped form did not let the plain IPv4 address through.
#[tokio::test]
async fn an_allowed_ipv4_address_is_allowed_in_its_mapped_form() {
    let (counting, hits) =
        counted(|_| async { respond(200).body(Chunks::full("reached")).unwrap() });
    let addr = serve(counting).await;
    let port = addr.port();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
    let client = |allow: &str| {
        Client::builder()
            .resolver(table_resolver(&[
                ("mapped.test", mapped),
                ("plain.test", addr),
            ]))
            .address_guard(true)
            .address_guard_allow(allow.parse::<IpAddr>().unwrap())
            .no_retry()
            .build()
            .unwrap()
    };
    let urls = [
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://mapped.test:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://plain.test:{port}/"),
    ];
    for allow in ["127.0.0.1", "::ffff:127.0.0.1"] {
        let client = client(allow);
        for url in &urls {
            let resp = client.get(url).await.unwrap_or_else(|e| {
                panic!("allowing {allow}, {url} was refused: {e}");
            });
            assert_eq!(resp.body().as_ref(), b"reached", "{allow}: {url}");
        }
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 8);
    // Only that address: another loopback address stays refused in both forms.
    let client = client("127.0.0.2");
    for url in &urls[..2] {
        let err = client.get(url).await.unwrap_err();
        assert!(err.is_refused_address(), "{url}: {err}");
        assert!(err.to_string().contains("::ffff:127.0.0.1"), "{url}: {err}");
    }
}
