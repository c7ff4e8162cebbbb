//! Assemble the Pingora server from a checked configuration: the mTLS FHIR listener with
//! the gateway, and the admin listener; `run` adds reload on SIGHUP and the fast drain on
//! SIGTERM (`crate::lifecycle`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use url::Url;

use crate::auth::jwks::{JwksSource, KeyStore};
use crate::auth::principal::PrincipalPolicy;
use crate::auth::token::{parse_algorithm, TokenPolicy};
use crate::config::{self, Config};
use crate::cvr_directory::CvrDirectory;
use crate::fhir::capability::capability_statement;
use crate::fhir::labels::LabelSystems;
use crate::fhir::paging::PageSigner;
use crate::gateway::admin::{
    AdminApp, BackendConformant, KeysLoaded, ProbeTask, UpstreamProbe, UpstreamReachable,
};
use crate::gateway::audit::AuditSink;
use crate::gateway::authn::Authenticator;
use crate::gateway::listener::FhirApp;
use crate::gateway::probe::{ProbeState, Prober};
use crate::gateway::upstream::{Forwarded, Upstream, UpstreamSettings};
use crate::gateway::Gateway;
use crate::lifecycle::{self, Live};
use crate::tls::{read_certs, CurrentCert, CurrentClientVerifier, RecordPeer, SharedTls};

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

/// The issuer key store of a configuration (not loaded yet).
pub(crate) fn build_keys(c: &Config) -> Result<Arc<KeyStore>, String> {
    let source = match (&c.token.jwks_url, &c.token.jwks_file) {
        (Some(url), _) => JwksSource::Url {
            url: url.clone(),
            client: jwks_client(c)?,
        },
        (None, Some(file)) => JwksSource::File(file.clone()),
        (None, None) => return Err("token: no JWKS source".into()),
    };
    Ok(KeyStore::new(
        source,
        Duration::from_secs(c.token.jwks_refresh_floor_seconds),
        Duration::from_secs(c.token.jwks_max_age_seconds),
    ))
}

/// Build the gateway (everything but the listeners) from a configuration and its keys.
pub(crate) fn build_gateway(c: &Config, keys: Arc<KeyStore>) -> Result<Gateway, String> {
    let secret =
        std::fs::read(&c.paging.secret_file).map_err(|e| format!("paging.secret_file: {e}"))?;
    let secret = config::trim_secret(&secret).to_vec();
    let directory = match &c.access.cvr_directory {
        Some(p) => CvrDirectory::load(p)?,
        None => CvrDirectory::default(),
    };
    let public = Url::parse(&c.public.base_url).map_err(|e| e.to_string())?;
    let upstream_url = Url::parse(&c.upstream.base_url).map_err(|e| e.to_string())?;
    let algorithms = c
        .token
        .algorithms
        .iter()
        .map(|a| parse_algorithm(a).ok_or_else(|| format!("token.algorithms: {a} not allowed")))
        .collect::<Result<Vec<_>, _>>()?;
    let authenticator = Authenticator::new(
        keys,
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
            resolve_ttl: Duration::from_secs(c.upstream.resolve_ttl_seconds),
            ca: c.upstream.ca.clone(),
            client_cert_key: c
                .upstream
                .client_cert
                .clone()
                .zip(c.upstream.client_key.clone()),
            sni: c.upstream.sni.clone(),
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
        pseudonym_key: crate::audit::pseudonym_key(&secret),
        signer: PageSigner::new(secret),
        audit: AuditSink::from_config(&c.audit),
        capability: capability_statement(&public_base),
        public_base_path: public.path().trim_end_matches('/').to_string(),
        public_base,
        upstream_base: c.upstream.base_url.trim_end_matches('/').to_string(),
        max_body_bytes: c.limits.max_body_bytes,
        max_uri_bytes: c.limits.max_uri_bytes,
        max_header_bytes: c.limits.max_header_bytes,
        max_count: c.limits.max_count,
        drop_totals: c.response.drop_totals,
        probe: None,
    };
    Ok(gateway)
}

/// The FHIR listener's TLS: certificate and client verifier read from the live snapshot at
/// each handshake (`crate::tls`), so a reload applies to the next handshake.
fn tls_settings(c: &Config, live: &SharedTls) -> Result<TlsSettings, String> {
    // With a resolver set, Pingora ignores the file names given here.
    // The callback keeps each client's chain with its connection, so a reload that revokes
    // it reaches open connections too (`crate::tls::still_accepted`).
    let mut tls = TlsSettings::with_callbacks(Box::new(RecordPeer(live.clone())))
        .map_err(|e| e.to_string())?;
    tls.set_cert_resolver(Arc::new(CurrentCert(live.clone())));
    tls.set_client_cert_verifier(Arc::new(CurrentClientVerifier(live.clone())));
    if c.listen.http2 {
        tls.enable_h2();
    }
    Ok(tls)
}

/// The FHIR listener's endpoint: its address, TLS, and the per-connection read buffer
/// (`listen.read_buffer_bytes`, default 0: none). Pingora's default read buffer is 64 KiB per
/// connection, held for the connection's life (`DEFAULT_L4_READ_BUFFER_SIZE`, pingora-core
/// 0.9.1 `protocols/l4/stream.rs`): 64 MiB for 1,000 idle keep-alive connections. rustls reads
/// at most 4 KiB at a time (`DeframerVecBuffer::prepare_read`), which a buffer of that size
/// does not even serve (tokio's `BufReader` passes reads as large as itself through), and a
/// larger one only saves read calls on bodies of several TLS records (PERFORMANCE.md,
/// "Memory"). The write side keeps Pingora's default (1,460 bytes, one TCP segment).
fn listener_config(c: &Config, tls: TlsSettings) -> ListenerConfig {
    let buffers = L4BufferSettings::default().read(c.listen.read_buffer_bytes);
    ListenerConfig::tcp(c.listen.address.clone())
        .tls(tls)
        .l4_buffer(buffers)
}

/// Everything `check-config` can build without listening: the listener's TLS material
/// (certificate and key that belong together, CA, each CRL parsed) and the gateway.
///
/// Errors: the first part that does not load.
pub fn preflight(c: &Config) -> Result<(), String> {
    crate::tls::load(&c.listen, None)?;
    build_gateway(c, build_keys(c)?).map(|_| ())
}

/// The Pingora server with both listeners, ready to `run`, and its live settings.
pub(crate) fn build(c: &Config) -> Result<(Server, Arc<Live>), String> {
    crate::metrics::init();
    // Token signatures through ring (auth::ring_verify), for the binary and for tests that
    // embed the server alike; a no-op if main already did it.
    crate::auth::ring_verify::install();
    let keys = build_keys(c)?;
    let mut gateway = build_gateway(c, keys.clone())?;
    // The conformance probe's verdict outlives reloads (`lifecycle::reload` carries it over).
    let probe_state = (c.upstream.probe.interval_seconds != 0)
        .then(|| Arc::new(ProbeState::new(c.upstream.probe.on_nonconformant)));
    gateway.probe = probe_state.clone();
    let tls: SharedTls = Arc::new(ArcSwap::from_pointee(crate::tls::load(&c.listen, None)?));
    let live = Arc::new(Live::new(c.clone(), gateway, keys, tls));
    let conf = ServerConf {
        threads: c.server.threads,
        // The upper bound of a drain; `lifecycle::exit_when_drained` exits sooner.
        grace_period_seconds: Some(c.server.grace_period_seconds),
        // After the grace period Pingora ends its runtimes; tasks still running are dropped
        // at once, only blocking work would be waited for.
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut fhir = Service::new(
        "eds-proxy FHIR listener".to_string(),
        FhirApp::new(live.clone()),
    );
    fhir.add_listener(listener_config(c, tls_settings(c, &live.tls)?));
    server.add_service(fhir);

    let probe = Arc::new(UpstreamProbe {
        live: live.clone(),
        interval: Duration::from_millis(c.admin.upstream_probe_interval_ms),
        state: Default::default(),
    });
    server.add_service(pingora::services::background::background_service(
        "upstream probe",
        ProbeTask(probe.clone()),
    ));
    export_certificate_expiry(c);

    // `/readyz`'s checks (gateway::admin): one line each.
    let mut checks: Vec<Box<dyn crate::gateway::admin::ReadinessCheck>> = vec![
        Box::new(KeysLoaded(live.keys.clone())),
        Box::new(UpstreamReachable(probe)),
    ];
    if let Some(state) = &probe_state {
        checks.push(Box::new(BackendConformant(state.clone())));
    }
    let mut admin = Service::new(
        "eds-proxy admin".to_string(),
        HttpServer::new_app(AdminApp {
            keys: live.keys.clone(),
            checks,
        }),
    );
    admin.add_tcp(&c.admin.address);
    server.add_service(admin);
    if let Some(state) = probe_state {
        server.add_service(pingora::services::background::background_service(
            "eds-proxy backend conformance probe",
            Prober {
                live: live.clone(),
                interval: Duration::from_secs(c.upstream.probe.interval_seconds),
                require_capability_listing: c.upstream.probe.require_capability_listing,
                state,
            },
        ));
    }
    Ok((server, live))
}

/// The Pingora server with both listeners, ready to `run` (no signal handling of its own:
/// what the tests embed).
pub fn build_server(c: &Config) -> Result<Server, String> {
    build(c).map(|(server, _)| server)
}

/// Run the proxy of configuration file `path` until SIGTERM, SIGINT or SIGQUIT: reload on
/// SIGHUP, exit as soon as drained on SIGTERM (`crate::lifecycle`). Returns only if it cannot
/// start.
pub fn run(path: &std::path::Path, c: &Config) -> Result<std::convert::Infallible, String> {
    let (server, live) = build(c)?;
    lifecycle::reload_on_sighup(path.to_path_buf(), live)?;
    lifecycle::exit_when_drained(&server, Duration::from_secs(c.server.grace_period_seconds))?;
    // `run_forever` without its bare exit: the log's queued lines are written first.
    server.run(pingora::server::RunArgs::default());
    crate::logging::flush();
    std::process::exit(0)
}

/// `eds_proxy_certificate_expiry_timestamp_seconds` for the server certificate (the first of
/// its chain) and the client CA bundle (its earliest notAfter). A file that does not parse here
/// was refused by the configuration check already; it is then left out, not exported as 0.
pub(crate) fn export_certificate_expiry(c: &Config) {
    let not_after = |path: &std::path::Path| -> Vec<f64> {
        read_certs(path)
            .unwrap_or_default()
            .iter()
            .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, cert)| cert.validity().not_after.timestamp() as f64)
            .collect()
    };
    if let Some(first) = not_after(&c.listen.server_cert).first() {
        crate::metrics::CERT_EXPIRY.set(&["server"], *first);
    }
    if let Some(earliest) = not_after(&c.listen.client_ca).into_iter().reduce(f64::min) {
        crate::metrics::CERT_EXPIRY.set(&["client_ca"], earliest);
    }
}
