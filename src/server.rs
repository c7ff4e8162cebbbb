//! Assemble the Pingora server from a checked configuration: the mTLS FHIR listener with
//! the gateway, and the admin listener.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use pingora::tls::{RootCertStore, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use url::Url;

use crate::auth::jwks::{JwksSource, KeyStore};
use crate::auth::principal::PrincipalPolicy;
use crate::auth::token::{parse_algorithm, TokenPolicy};
use crate::config::{self, Config};
use crate::cvr_directory::CvrDirectory;
use crate::fhir::capability::capability_statement;
use crate::fhir::labels::LabelSystems;
use crate::fhir::paging::PageSigner;
use crate::gateway::admin::AdminApp;
use crate::gateway::authn::Authenticator;
use crate::gateway::listener::FhirApp;
use crate::gateway::probe::{ProbeState, Prober};
use crate::gateway::upstream::{Forwarded, Upstream, UpstreamSettings};
use crate::gateway::Gateway;

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn jwks_client(c: &Config) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .https_only(true);
    if let Some(ca) = &c.token.jwks_ca {
        for cert in read_certs(ca)? {
            let cert = reqwest::Certificate::from_der(&cert).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// Build the gateway (everything but the listeners) from a configuration.
pub(crate) fn build_gateway(c: &Config) -> Result<(Gateway, Arc<KeyStore>), String> {
    let secret =
        std::fs::read(&c.paging.secret_file).map_err(|e| format!("paging.secret_file: {e}"))?;
    let secret = config::trim_secret(&secret).to_vec();
    let directory = match &c.access.cvr_directory {
        Some(p) => CvrDirectory::load(p)?,
        None => CvrDirectory::default(),
    };
    let public = Url::parse(&c.public.base_url).map_err(|e| e.to_string())?;
    let upstream_url = Url::parse(&c.upstream.base_url).map_err(|e| e.to_string())?;
    let source = match (&c.token.jwks_url, &c.token.jwks_file) {
        (Some(url), _) => JwksSource::Url {
            url: url.clone(),
            client: jwks_client(c)?,
        },
        (None, Some(file)) => JwksSource::File(file.clone()),
        (None, None) => return Err("token: no JWKS source".into()),
    };
    let keys = KeyStore::new(
        source,
        Duration::from_secs(c.token.jwks_refresh_floor_seconds),
        Duration::from_secs(c.token.jwks_max_age_seconds),
    );
    let algorithms = c
        .token
        .algorithms
        .iter()
        .map(|a| parse_algorithm(a).ok_or_else(|| format!("token.algorithms: {a} not allowed")))
        .collect::<Result<Vec<_>, _>>()?;
    let authenticator = Authenticator::new(
        keys.clone(),
        TokenPolicy {
            issuer: c.token.issuer.clone(),
            audiences: c.token.audience.clone(),
            algorithms,
            leeway_seconds: c.token.leeway_seconds,
            max_lifetime_seconds: c.token.max_lifetime_seconds,
        },
        PrincipalPolicy {
            accepted_acr: c.access.accepted_acr.clone(),
            supporter_role: c.access.supporter_role.clone(),
        },
        c.token.cache_max_entries,
    );
    let upstream = Upstream::new(
        UpstreamSettings {
            base: upstream_url.clone(),
            connect_timeout: c.upstream_connect_timeout(),
            read_timeout: c.upstream_read_timeout(),
            idle_timeout: c.upstream_idle_timeout(),
            max_response_bytes: c.limits.max_response_bytes,
            max_target_bytes: c.limits.max_uri_bytes,
        },
        Forwarded::from_public_base(&public),
    )?;
    let public_base = c.public.base_url.trim_end_matches('/').to_string();
    let gateway = Gateway {
        authenticator: Arc::new(authenticator),
        upstream,
        labels: LabelSystems {
            device: c.access.device_label_system.clone(),
            sor: c.access.sor_label_system.clone(),
            cpr: c.access.cpr_label_system.clone(),
            reserved_prefix: c.access.reserved_label_prefix.clone(),
        },
        directory,
        signer: PageSigner::new(secret),
        capability: capability_statement(&public_base),
        public_base_path: public.path().trim_end_matches('/').to_string(),
        public_base,
        upstream_base: c.upstream.base_url.trim_end_matches('/').to_string(),
        max_body_bytes: c.limits.max_body_bytes,
        max_uri_bytes: c.limits.max_uri_bytes,
        max_header_bytes: c.limits.max_header_bytes,
        max_count: c.limits.max_count,
        drop_totals: c.response.drop_totals,
        request_counter: AtomicU64::new(0),
        probe: None,
    };
    Ok((gateway, keys))
}

/// The backend conformance prober (`upstream.probe`), with its own connection pool; `None`
/// when `upstream.probe.interval_seconds` is 0.
fn build_prober(c: &Config, gateway: &Gateway) -> Result<Option<Prober>, String> {
    if c.upstream.probe.interval_seconds == 0 {
        return Ok(None);
    }
    let public = Url::parse(&c.public.base_url).map_err(|e| e.to_string())?;
    let upstream = Upstream::new(
        UpstreamSettings {
            base: Url::parse(&c.upstream.base_url).map_err(|e| e.to_string())?,
            connect_timeout: c.upstream_connect_timeout(),
            read_timeout: c.upstream_read_timeout(),
            idle_timeout: c.upstream_idle_timeout(),
            max_response_bytes: c.limits.max_response_bytes,
            max_target_bytes: c.limits.max_uri_bytes,
        },
        Forwarded::from_public_base(&public),
    )?;
    Ok(Some(Prober {
        upstream,
        labels: gateway.labels.clone(),
        interval: Duration::from_secs(c.upstream.probe.interval_seconds),
        require_capability_listing: c.upstream.probe.require_capability_listing,
        state: Arc::new(ProbeState::new(c.upstream.probe.on_nonconformant)),
    }))
}

fn tls_settings(c: &Config) -> Result<TlsSettings, String> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&c.listen.client_ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("listen.client_ca: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| format!("listen.client_ca: {e}"))?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let mut tls =
        TlsSettings::intermediate(&path(&c.listen.server_cert), &path(&c.listen.server_key))
            .map_err(|e| e.to_string())?;
    tls.set_client_cert_verifier(verifier);
    if c.listen.http2 {
        tls.enable_h2();
    }
    Ok(tls)
}

/// The Pingora server with both listeners, ready to `run`.
pub fn build_server(c: &Config) -> Result<Server, String> {
    crate::metrics::init();
    let (mut gateway, keys) = build_gateway(c)?;
    let prober = build_prober(c, &gateway)?;
    gateway.probe = prober.as_ref().map(|p| p.state.clone());
    let probe_state = gateway.probe.clone();
    let conf = ServerConf {
        threads: c.server.threads,
        grace_period_seconds: Some(c.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(c.server.grace_period_seconds.min(10)),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut fhir = Service::new("eds-proxy FHIR listener".to_string(), FhirApp::new(gateway));
    fhir.add_tls_with_settings(&c.listen.address, None, tls_settings(c)?);
    server.add_service(fhir);

    let mut admin = Service::new(
        "eds-proxy admin".to_string(),
        HttpServer::new_app(AdminApp {
            keys,
            probe: probe_state,
        }),
    );
    admin.add_tcp(&c.admin.address);
    server.add_service(admin);
    if let Some(prober) = prober {
        server.add_service(pingora::services::background::background_service(
            "eds-proxy backend conformance probe",
            prober,
        ));
    }
    Ok(server)
}
