//! The benchmark's baseline (bench/run.sh, PERFORMANCE.md): a plain Pingora 0.9.1 `ProxyHttp`
//! passthrough with the same mTLS listener as eds-proxy (`TlsSettings::intermediate` + a
//! `WebPkiClientVerifier` over the client CA) and nothing else: no token, no checks, the
//! request and the answer streamed through unchanged to one plain-HTTP upstream.
//!
//! It measures what Pingora and rustls cost by themselves on this machine, so that
//! "eds-proxy / passthrough" is the price of eds-proxy's own work. NOT a product: it forwards
//! anything from any client the CA vouches for.
//!
//! `passthrough LISTEN SERVER_CERT SERVER_KEY CLIENT_CA UPSTREAM_HOST:PORT [THREADS]`

// A benchmark tool, not request-path code: bad arguments end it with a message.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::tls::{RootCertStore, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Every request goes to the one upstream, over plain HTTP/1.1 with Pingora's connection pool.
struct Passthrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        panic!("usage: passthrough LISTEN SERVER_CERT SERVER_KEY CLIENT_CA UPSTREAM_HOST:PORT [THREADS]");
    }
    let threads = args.get(6).map_or(1, |t| t.parse().expect("THREADS"));
    pingora::tls::install_default_crypto_provider();

    // The same client-certificate rule as eds-proxy's listener (src/server.rs, tls_settings).
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args[4]).expect("CLIENT_CA") {
        roots.add(cert.expect("CLIENT_CA")).expect("CLIENT_CA");
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("client verifier");
    let mut tls = TlsSettings::intermediate(&args[2], &args[3]).expect("server cert/key");
    tls.set_client_cert_verifier(verifier);

    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream: args[5].clone(),
        },
    );
    service.add_tls_with_settings(&args[1], None, tls);
    server.add_service(service);
    server.run_forever();
}
