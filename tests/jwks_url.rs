//! The issuer's keys fetched over HTTPS (the dev issuer's `/jwks`, real TLS), and kept when
//! the issuer goes away.

mod common;

use std::time::Duration;

use common::*;
use eds_proxy::auth::jwks::{JwksSource, KeyStore};
use eds_proxy::error::TokenFailure;

#[tokio::test]
async fn keys_come_from_the_jwks_url() {
    let dir = tmp_dir("jwks-url");
    let pki = Pki::new(&dir);
    std::fs::write(dir.join("issuer.key"), &pki.issuer_key.private_pem).unwrap();
    std::fs::write(dir.join("enrolment.json"), "[]").unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("issuer.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nserver_cert = \"server.crt\"\nserver_key = \"server.key\"\nclient_ca = \"ca.crt\"\nsigning_key = \"issuer.key\"\nkid = \"{}\"\nenrolment = \"enrolment.json\"\n",
            pki.issuer_key.kid
        ),
    )
    .unwrap();
    let config = eds_proxy::dev::issuer::load_config(&dir.join("issuer.toml")).unwrap();
    let server = eds_proxy::dev::issuer::build_server(config).unwrap();
    std::thread::spawn(move || server.run_forever());
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
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
