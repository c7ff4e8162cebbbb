//! Raw HTTP/1.x over mTLS: bytes a client library would never send, and several requests on
//! one connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eds_proxy::dev::pki::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A TLS client trusting `ca_der` and presenting `cert`.
pub fn tls_connector(ca_der: &[u8], cert: &CertifiedKey) -> pingora::tls::TlsConnector {
    pingora::tls::install_default_crypto_provider();
    let mut roots = pingora::tls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = pingora::tls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(cert.cert_der.clone())], key)
        .unwrap();
    pingora::tls::TlsConnector::from(Arc::new(config))
}

/// A fresh mTLS connection to `127.0.0.1:port`.
pub async fn connect(
    port: u16,
    connector: &pingora::tls::TlsConnector,
) -> impl AsyncRead + AsyncWrite + Unpin {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Read until the server closes the connection (`true`) or stays quiet for a moment.
pub async fn read_answers<S: AsyncRead + Unpin>(tls: &mut S) -> (Vec<u8>, bool) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while started.elapsed() < Duration::from_secs(5) {
        // Generous for the first answer, short once the server has said something: a
        // connection kept alive after its last answer ends the exchange quickly.
        let quiet = if out.is_empty() {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(400)
        };
        match tokio::time::timeout(quiet, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Err(_) => return (out, false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    (out, false)
}

/// Write `bytes` on a fresh mTLS connection and read until the server closes it or stays
/// quiet for a moment.
pub async fn exchange(port: u16, connector: &pingora::tls::TlsConnector, bytes: &[u8]) -> Vec<u8> {
    let mut tls = connect(port, connector).await;
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    read_answers(&mut tls).await.0
}
