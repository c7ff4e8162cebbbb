//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process is up)
//! and `/readyz` (the issuer's keys are loaded, so tokens can be checked).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

use crate::auth::jwks::KeyStore;
use crate::metrics;

pub struct AdminApp {
    /// The live issuer keys (a reload may replace them).
    pub keys: Arc<arc_swap::ArcSwap<KeyStore>>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let keys = self.keys.load_full();
        match session.req_header().uri.path() {
            "/metrics" => {
                metrics::CONFIG_AGE.set(crate::lifecycle::config_age_seconds());
                if let Some(age) = keys.age_seconds() {
                    metrics::JWKS_AGE.set(age as i64);
                }
                let mut out = Vec::new();
                let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
                reply(200, "text/plain; version=0.0.4", out)
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if keys.age_seconds().is_some() {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    keys.refresh_if_allowed().await;
                    if keys.age_seconds().is_some() {
                        reply(200, "text/plain", b"ready\n".to_vec())
                    } else {
                        reply(503, "text/plain", b"issuer keys not loaded\n".to_vec())
                    }
                }
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
