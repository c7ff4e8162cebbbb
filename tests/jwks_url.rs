//! The issuer's keys fetched over HTTPS (the dev issuer's `/jwks`, real TLS), and kept when
//! the issuer goes away.

// Runs the proxy, the dev issuer or the `dev` subcommands: needs the `dev` feature (default).
#![cfg(feature = "dev")]
// Test code: a panic is a failure, and it reads JSON answers with plain serde_json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use eds_proxy::auth::jwks::{JwksSource, KeyStore};
use eds_proxy::error::TokenFailure;

#[tokio::test]
async fn keys_come_from_the_jwks_url() {
    let dir = tmp_dir("jwks-url");
    let pki = Pki::new(&dir);
    let port = pki.start_dev_issuer(&serde_json::json!([]));
    let root = reqwest::Certificate::from_pem(pki.ca.cert.cert_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .https_only(true)
        .build()
        .unwrap();
    let store = KeyStore::new(
        JwksSource::Url {
            url: format!("https://localhost:{port}/jwks"),
            client,
        },
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    assert!(store.key(&pki.issuer_key.kid).await.is_ok());
    assert_eq!(
        store.key("someone-elses-key").await.err(),
        Some(TokenFailure::UnknownKey)
    );
    assert!(store.age_seconds().is_some());
}
