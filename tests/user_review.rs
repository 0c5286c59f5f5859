//! What the facade's docs promise a user, checked where a reading of them
//! and the code disagreed.
#![allow(clippy::unwrap_used, missing_docs)]

/// The `native-roots` feature: the facade's docs said that with it "the
/// client trusts the system's certificate store as well as the bundled
/// roots". It does not: the feature only adds
/// `ClientBuilder::native_roots(true)`, and that trusts the system's store
/// *instead of* the bundled roots. Checked against a TLS server on
/// 127.0.0.1 whose CA is the only certificate in the system's store
/// (`SSL_CERT_FILE`, process-wide, so each check runs in a child process).
#[cfg(feature = "native-roots")]
mod native_roots {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;

    use tower_fanout::http::Client;
    use tower_fanout::http::rustls;
    use tower_fanout::http::rustls::pki_types::pem::PemObject;
    use tower_fanout::http::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    const CHILD: &str = "TOWER_FANOUT_USER_REVIEW_CHILD";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/http/tests/fixtures")
            .join(name)
    }

    /// Runs `test` alone in a child process whose certificate store is the
    /// fixtures' CA (which signed the server's certificate for 127.0.0.1).
    fn in_child(test: &str) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("SSL_CERT_FILE", fixture("ca.pem"))
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{test} did not pass in its child:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A TLS server on 127.0.0.1 answering every connection with `200 ok`.
    fn serve_tls() -> SocketAddr {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_file_iter(fixture("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let config = config.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return, // the client refused the certificate
                        }
                    }
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        addr
    }

    #[test]
    fn the_feature_alone_does_not_trust_the_systems_store() {
        if std::env::var_os(CHILD).is_none() {
            return in_child("native_roots::the_feature_alone_does_not_trust_the_systems_store");
        }
        let addr = serve_tls();
        let url = format!("https://{addr}/");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // The default client: the bundled roots only, the feature on or not.
            let bundled = Client::builder().no_retry().build().unwrap();
            let err = bundled.get(&url).await.unwrap_err();
            assert!(err.is_connect(), "{err:?}");
            // Asked for, the system's store: now the server is trusted.
            let system = Client::builder()
                .native_roots(true)
                .no_retry()
                .build()
                .unwrap();
            let resp = system.get(&url).await.unwrap();
            assert_eq!(
                (resp.status().as_u16(), &resp.body()[..]),
                (200, &b"ok"[..])
            );
        });
    }
}
