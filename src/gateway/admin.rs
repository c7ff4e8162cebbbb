//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (liveness: the process
//! answers) and `/readyz` (readiness: every readiness check passes).
//!
//! `/readyz` is a list of named checks, each `ok` or a reason, one per line, e.g.
//!
//! ```text
//! keys: ok
//! upstream: unreachable (connection refused)
//! ```
//!
//! answered 200 when all pass, else 503. Each check is a [`ReadinessCheck`]; to add one,
//! implement it and push it onto `AdminApp::checks` where the server is built
//! (`server::build_server`): one line. A check must be cheap (a scrape must not reach out to
//! other systems): anything slow runs in a background task that the check reads, as
//! [`UpstreamProbe`] does for the FHIR server. Each check's state is also exported as
//! `eds_proxy_ready{check="<name>"}` (1/0) on every scrape of `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{Encoder, TextEncoder};

use crate::auth::jwks::KeyStore;
use crate::metrics;

/// One named readiness check of `/readyz`.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// The check's name: the line's label in `/readyz` and the `check` label of
    /// `eds_proxy_ready`.
    fn name(&self) -> &'static str;
    /// `Ok` if ready, else why not (a fixed text: no secrets, no request data).
    async fn check(&self) -> Result<(), String>;
}

/// The admin listener's app.
pub(crate) struct AdminApp {
    /// The live issuer keys (a reload may replace them; `eds_proxy_jwks_age_seconds`).
    pub keys: Arc<arc_swap::ArcSwap<KeyStore>>,
    /// The readiness checks, in the order `/readyz` lists them.
    pub checks: Vec<Box<dyn ReadinessCheck>>,
}

/// `/readyz`'s answer for the checks' results (pure): 200 if every check passed (and there is
/// at least one), else 503; the body names each check with `ok` or its reason.
pub fn readiness_report(results: &[(&str, Result<(), String>)]) -> (u16, String) {
    let ready = !results.is_empty() && results.iter().all(|(_, r)| r.is_ok());
    let body = results
        .iter()
        .map(|(name, r)| match r {
            Ok(()) => format!("{name}: ok\n"),
            Err(why) => format!("{name}: {why}\n"),
        })
        .collect();
    (if ready { 200 } else { 503 }, body)
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl AdminApp {
    /// Run every check, export each as `eds_proxy_ready{check}`, and return the results.
    async fn run_checks(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut results = Vec::with_capacity(self.checks.len());
        for c in &self.checks {
            let r = c.check().await;
            metrics::READY.set(&[c.name()], if r.is_ok() { 1.0 } else { 0.0 });
            results.push((c.name(), r));
        }
        results
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let keys = self.keys.load_full();
        match session.req_header().uri.path() {
            "/metrics" => {
                self.run_checks().await;
                metrics::CONFIG_AGE.set(crate::lifecycle::config_age_seconds() as f64);
                metrics::JWKS_AGE.set(keys.age_seconds().unwrap_or(f64::NAN));
                let mut out = Vec::new();
                let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
                reply(200, "text/plain; version=0.0.4", out)
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (status, body) = readiness_report(&self.run_checks().await);
                reply(status, "text/plain", body.into_bytes())
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// Readiness check `keys`: the issuer's signing keys are loaded, so tokens can be checked.
/// Until they are, each check asks for a load (at most once per `jwks_refresh_floor`, which
/// `KeyStore` enforces), so a proxy started before its issuer becomes ready by itself.
pub struct KeysLoaded(pub Arc<arc_swap::ArcSwap<KeyStore>>);

#[async_trait]
impl ReadinessCheck for KeysLoaded {
    fn name(&self) -> &'static str {
        "keys"
    }
    async fn check(&self) -> Result<(), String> {
        // The keys of the live snapshot (a reload may have replaced them).
        let keys = self.0.load_full();
        if keys.age_seconds().is_none() {
            keys.refresh_if_allowed().await;
        }
        match keys.age_seconds() {
            Some(_) => Ok(()),
            None => Err("issuer keys not loaded".to_string()),
        }
    }
}

/// Readiness check `conformance`: the FHIR server passed the backend conformance probe
/// (`fhir::conformance`, `gateway::probe`); before the first round it counts as ready with
/// `upstream.probe.on_nonconformant = "warn"` and as not ready with `"refuse"`. The reason
/// names the failed check, never a value.
pub struct BackendConformant(pub Arc<crate::gateway::probe::ProbeState>);

#[async_trait]
impl ReadinessCheck for BackendConformant {
    fn name(&self) -> &'static str {
        "conformance"
    }
    async fn check(&self) -> Result<(), String> {
        match self.0.not_ready_reason() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// The last result of the FHIR server probe (`None` before the first), shared by the
/// background task (writer) and [`UpstreamReachable`] (reader).
#[derive(Default)]
pub struct ProbeState(Mutex<Option<Result<(), String>>>);

impl ProbeState {
    fn get(&self) -> Option<Result<(), String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, r: Result<(), String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }
}

/// Readiness check `upstream`: the FHIR server accepted a connection at the last probe (the
/// background task's; only before its first result does the check probe itself, so a
/// `/readyz` right after start is not answered "not probed yet").
pub struct UpstreamReachable(pub Arc<UpstreamProbe>);

#[async_trait]
impl ReadinessCheck for UpstreamReachable {
    fn name(&self) -> &'static str {
        "upstream"
    }
    async fn check(&self) -> Result<(), String> {
        match self.0.state.get() {
            Some(r) => r,
            None => {
                let r = self.0.probe().await;
                self.0.state.set(r.clone());
                r
            }
        }
    }
}

/// Why a probe failed, for `/readyz` (pure): the kind of failure, never an address or a
/// system error's text.
pub fn probe_failure(kind: std::io::ErrorKind) -> String {
    use std::io::ErrorKind as K;
    let what = match kind {
        K::ConnectionRefused => "connection refused",
        K::TimedOut => "connect timed out",
        K::NotFound => "host name does not resolve",
        K::ConnectionReset | K::ConnectionAborted => "connection reset",
        K::HostUnreachable | K::NetworkUnreachable => "no route to host",
        _ => "connect failed",
    };
    format!("unreachable ({what})")
}

/// The background task that probes the FHIR server: every `interval`, resolve its host name
/// again (a container's address changes when it restarts) and open a TCP connection within
/// `connect_timeout`. A connection is what every request needs first; whether the server's
/// answers are right is the response check's business, per request.
pub struct UpstreamProbe {
    /// The live settings: the FHIR server probed is the one the current snapshot forwards to
    /// (`upstream.base_url` may change on reload).
    /// Its connect timeout is the snapshot's `upstream.connect_timeout_ms`, too.
    pub(crate) live: Arc<crate::lifecycle::Live>,
    /// `admin.upstream_probe_interval_ms`.
    pub interval: Duration,
    /// The last result.
    pub state: ProbeState,
}

impl UpstreamProbe {
    async fn probe(&self) -> Result<(), String> {
        let (address, connect_timeout) = {
            let gateway = self.live.gateway.load();
            (
                gateway.upstream.address().to_string(),
                gateway.upstream.connect_timeout(),
            )
        };
        let connect = async {
            let addrs: Vec<_> = tokio::net::lookup_host(address.as_str())
                .await
                .map_err(|_| std::io::ErrorKind::NotFound)?
                .collect();
            let mut last = std::io::ErrorKind::NotFound;
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.kind(),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(connect_timeout, connect).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(kind)) => Err(probe_failure(kind)),
            Err(_) => Err(probe_failure(std::io::ErrorKind::TimedOut)),
        }
    }
}

/// The background task of an [`UpstreamProbe`] (Pingora runs it as a background service).
pub struct ProbeTask(pub Arc<UpstreamProbe>);

#[async_trait]
impl BackgroundService for ProbeTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let probe = &self.0;
        loop {
            let result = probe.probe().await;
            match (&result, probe.state.get()) {
                (Err(why), Some(Ok(()))) => log::warn!("the FHIR server became {why}"),
                (Ok(()), Some(Err(_))) => log::info!("the FHIR server is reachable again"),
                _ => {}
            }
            probe.state.set(result);
            tokio::select! {
                _ = tokio::time::sleep(probe.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_check_and_fails_on_any() {
        assert_eq!(
            readiness_report(&[("keys", Ok(())), ("upstream", Ok(()))]),
            (200, "keys: ok\nupstream: ok\n".to_string())
        );
        assert_eq!(
            readiness_report(&[
                ("keys", Ok(())),
                (
                    "upstream",
                    Err(probe_failure(std::io::ErrorKind::ConnectionRefused))
                )
            ]),
            (
                503,
                "keys: ok\nupstream: unreachable (connection refused)\n".to_string()
            )
        );
        assert_eq!(
            readiness_report(&[("keys", Err("issuer keys not loaded".into()))]).0,
            503
        );
        // No checks is not "ready".
        assert_eq!(readiness_report(&[]).0, 503);
    }

    #[test]
    fn probe_failures_name_the_kind_only() {
        assert_eq!(
            probe_failure(std::io::ErrorKind::TimedOut),
            "unreachable (connect timed out)"
        );
        assert_eq!(
            probe_failure(std::io::ErrorKind::NotFound),
            "unreachable (host name does not resolve)"
        );
        assert_eq!(
            probe_failure(std::io::ErrorKind::PermissionDenied),
            "unreachable (connect failed)"
        );
    }
}
