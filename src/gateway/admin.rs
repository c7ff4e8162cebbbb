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
    pub keys: Arc<KeyStore>,
    /// The backend conformance probe's verdict (`None`: probe off).
    pub probe: Option<Arc<crate::gateway::probe::ProbeState>>,
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
        match session.req_header().uri.path() {
            "/metrics" => {
                if let Some(age) = self.keys.age_seconds() {
                    metrics::JWKS_AGE.set(age as i64);
                }
                let mut out = Vec::new();
                let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
                reply(200, "text/plain; version=0.0.4", out)
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                // A FHIR server that failed the conformance probe: not ready, with the reason.
                if let Some(why) = self.probe.as_ref().and_then(|p| p.not_ready_reason()) {
                    return reply(503, "text/plain", format!("{why}\n").into_bytes());
                }
                if self.keys.age_seconds().is_some() {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    self.keys.refresh_if_allowed().await;
                    if self.keys.age_seconds().is_some() {
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
