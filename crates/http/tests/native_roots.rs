//! The `native-roots` option, without a network. Where the system's store
//! is comes from `SSL_CERT_FILE`, which is process-wide: each check runs in
//! a child process of this test binary with its own environment.
#![cfg(feature = "native-roots")]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use tower_fanout_http::Client;

const CHILD: &str = "TOWER_FANOUT_HTTP_NATIVE_ROOTS_CHILD";

/// Runs `test` alone in a child process whose certificate store is `store`.
fn in_child(test: &str, store: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("SSL_CERT_FILE", store)
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

#[test]
fn native_roots_build_from_the_systems_store() {
    if std::env::var_os(CHILD).is_none() {
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ca.pem");
        return in_child("native_roots_build_from_the_systems_store", &ca);
    }
    let client = Client::builder().native_roots(true).build();
    assert!(client.is_ok(), "{:?}", client.err());
}

#[test]
fn a_store_without_certificates_is_a_clear_config_error() {
    if std::env::var_os(CHILD).is_none() {
        let dir =
            std::env::temp_dir().join(format!("tower-fanout-http-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("not-a-store.pem");
        std::fs::write(&store, "this is not a certificate\n").unwrap();
        in_child(
            "a_store_without_certificates_is_a_clear_config_error",
            &store,
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let err = Client::builder().native_roots(true).build().unwrap_err();
    assert!(err.is_config(), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("loading the system's certificates failed")
            && message.contains("no native root CA certificates found"),
        "{message}"
    );
}
