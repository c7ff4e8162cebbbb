//! The process's life: SIGHUP reloads the configuration, SIGTERM drains and exits as soon as
//! nothing is in flight.
//!
//! **Reload.** Everything a request or handshake depends on is one snapshot: the gateway
//! (token checks and issuer keys, labels, CVR directory, limits, upstream, paging secret) in an
//! `ArcSwap` that each request loads once, and the listener's TLS material (`crate::tls`) that
//! each handshake loads once. A reload builds a complete new snapshot from the file and swaps
//! it in only if every part of it loaded; otherwise one log line says why and the previous
//! snapshot keeps serving. A request keeps the snapshot it started with to its end.
//!
//! **Drain.** Pingora 0.9.1 on SIGTERM stops its accept loops and then sleeps the whole
//! `grace_period_seconds` before it ends its runtimes, however idle it is. Here a watcher of
//! Pingora's execution phase ends the process as soon as no request is in flight once the
//! grace period has begun; Pingora's own sleep remains the upper bound.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::server::{ExecutionPhase, Server};

use crate::auth::jwks::KeyStore;
use crate::config::{self, Config};
use crate::gateway::Gateway;
use crate::metrics;
use crate::tls::SharedTls;

/// The live settings: what a reload replaces.
pub(crate) struct Live {
    /// The request pipeline's settings; loaded once per request.
    pub gateway: ArcSwap<Gateway>,
    /// The issuer keys, also read by the admin listener (`/readyz`, `/metrics`).
    pub keys: Arc<ArcSwap<KeyStore>>,
    /// The FHIR listener's certificate and client verifier; loaded once per handshake.
    pub tls: SharedTls,
    /// The configuration the snapshot was built from.
    config: Mutex<Config>,
}

impl Live {
    pub fn new(config: Config, gateway: Gateway, keys: Arc<KeyStore>, tls: SharedTls) -> Live {
        mark_loaded();
        Live {
            gateway: ArcSwap::from_pointee(gateway),
            keys: Arc::new(ArcSwap::new(keys)),
            tls,
            config: Mutex::new(config),
        }
    }
}

static LOADED_AT: OnceLock<Mutex<Instant>> = OnceLock::new();

fn mark_loaded() {
    let cell = LOADED_AT.get_or_init(|| Mutex::new(Instant::now()));
    if let Ok(mut t) = cell.lock() {
        *t = Instant::now();
    }
}

/// Seconds since the configuration in use was loaded (`eds_proxy_config_age_seconds`).
pub(crate) fn config_age_seconds() -> i64 {
    LOADED_AT
        .get()
        .and_then(|m| m.lock().ok().map(|t| t.elapsed().as_secs()))
        .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX))
}

/// The keys a reload cannot change, because they are bound into listeners or runtimes that
/// exist for the process's life: the ones that differ between `old` and `new`.
pub fn fixed_keys_changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listen.address != new.listen.address {
        out.push("listen.address");
    }
    if old.listen.http2 != new.listen.http2 {
        out.push("listen.http2");
    }
    if old.listen.read_buffer_bytes != new.listen.read_buffer_bytes {
        out.push("listen.read_buffer_bytes");
    }
    if old.admin.address != new.admin.address {
        out.push("admin.address");
    }
    if old.admin.upstream_probe_interval_ms != new.admin.upstream_probe_interval_ms {
        out.push("admin.upstream_probe_interval_ms");
    }
    if old.server.threads != new.server.threads {
        out.push("server.threads");
    }
    if old.server.grace_period_seconds != new.server.grace_period_seconds {
        out.push("server.grace_period_seconds");
    }
    // The conformance prober and its verdict are started once (`server::build`).
    let (op, np) = (&old.upstream.probe, &new.upstream.probe);
    if op.interval_seconds != np.interval_seconds
        || op.on_nonconformant != np.on_nonconformant
        || op.require_capability_listing != np.require_capability_listing
    {
        out.push("upstream.probe");
    }
    out
}

/// Whether the conformance probe's verdict must start over ([`ProbeState::restart`]): it was
/// about another FHIR server (`upstream.base_url`) or other label systems (what `_security`
/// searches name).
///
/// [`ProbeState::restart`]: crate::gateway::probe::ProbeState::restart
pub fn conformance_must_restart(old: &Config, new: &Config) -> bool {
    let (o, n) = (&old.access, &new.access);
    old.upstream.base_url != new.upstream.base_url
        || o.device_label_system != n.device_label_system
        || o.sor_label_system != n.sor_label_system
        || o.cpr_label_system != n.cpr_label_system
}

/// Whether the issuer keys must be loaded again: the JWKS source or its refresh settings
/// changed, or the source is a file (a reload is how a replaced file is read at once; a URL
/// with unchanged settings keeps its keys and refreshes as usual).
pub fn keys_need_reload(old: &Config, new: &Config) -> bool {
    let (o, n) = (&old.token, &new.token);
    n.jwks_file.is_some()
        || o.jwks_url != n.jwks_url
        || o.jwks_file != n.jwks_file
        || o.jwks_ca != n.jwks_ca
        || o.jwks_refresh_floor_seconds != n.jwks_refresh_floor_seconds
        || o.jwks_max_age_seconds != n.jwks_max_age_seconds
}

/// Build a complete new snapshot from `path` and swap it in; the log line of the result.
/// Errors: the first thing that did not load (the previous snapshot stays).
pub(crate) async fn reload(path: &Path, live: &Live) -> Result<String, String> {
    let new = config::load(path).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let old = live
        .config
        .lock()
        .map_err(|_| "the previous configuration is unavailable".to_string())?
        .clone();
    let current_tls = live.tls.load_full();
    let tls = crate::tls::load(&new.listen, Some(&current_tls))?;
    let keys = if keys_need_reload(&old, &new) {
        let keys = crate::server::build_keys(&new)?;
        // Loaded before the swap: the new source must work, or the old one keeps serving.
        keys.refresh_if_allowed().await;
        if keys.age_seconds().is_none() {
            return Err("token: the issuer keys of the new configuration did not load".into());
        }
        keys
    } else {
        live.keys.load_full()
    };
    let mut gateway = crate::server::build_gateway(&new, keys.clone())?;
    // The conformance probe's verdict belongs to the process, not to a configuration.
    gateway.probe = live.gateway.load().probe.clone();
    let restart_probe = if conformance_must_restart(&old, &new) {
        gateway.probe.clone()
    } else {
        None
    };
    // Before the swap, so the new server is never served under the old server's verdict, and
    // again after it (below), so a round that read the old snapshot meanwhile is not recorded.
    if let Some(probe) = &restart_probe {
        probe.restart();
    }
    let crls = tls.crl_count;
    live.tls.store(Arc::new(tls));
    live.keys.store(keys);
    live.gateway.store(Arc::new(gateway));
    if let Some(probe) = &restart_probe {
        probe.restart();
        log::info!("FHIR server or label systems changed: conformance probe started again");
    }
    let fixed = fixed_keys_changed(&old, &new);
    // The expiry metric follows the certificates now in force.
    crate::server::export_certificate_expiry(&new);
    if let Ok(mut c) = live.config.lock() {
        *c = new;
    }
    mark_loaded();
    let mut line = format!(
        "configuration reloaded from {} ({crls} client CRLs)",
        path.display()
    );
    if !fixed.is_empty() {
        line.push_str(&format!(
            "; not applied until restart: {} (kept as started)",
            fixed.join(", ")
        ));
    }
    Ok(line)
}

/// Reload on every SIGHUP for the life of the process, on a thread of its own. Returns once
/// the handler is installed, so from then on SIGHUP can no longer end the process (its
/// default action). Errors: the thread or the handler could not be set up.
pub(crate) fn reload_on_sighup(path: PathBuf, live: Arc<Live>) -> Result<(), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("eds-proxy-reload".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while hup.recv().await.is_some() {
                    match reload(&path, &live).await {
                        Ok(line) => {
                            metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
                            log::info!("SIGHUP: {line}");
                        }
                        Err(e) => {
                            metrics::CONFIG_RELOADS
                                .with_label_values(&["refused"])
                                .inc();
                            log::error!(
                                "SIGHUP: configuration reload refused, the previous configuration keeps serving: {e}"
                            );
                        }
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv()
        .map_err(|_| "the reload thread ended".to_string())?
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one request as in flight from its head being read until its answer is written.
pub(crate) struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How often the drain watcher looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// After SIGTERM, exit (status 0) as soon as no request is in flight, within `grace`; past
/// it Pingora's own shutdown ends the rest. Watches `server`'s execution phase on a thread
/// of its own. Errors: the thread could not be started.
pub(crate) fn exit_when_drained(server: &Server, grace: Duration) -> Result<(), String> {
    let mut phases = server.watch_execution_phase();
    std::thread::Builder::new()
        .name("eds-proxy-drain".into())
        .spawn(move || loop {
            use tokio::sync::broadcast::error::RecvError;
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    let deadline = Instant::now() + grace;
                    let mut n = IN_FLIGHT.load(Ordering::SeqCst);
                    log::info!("SIGTERM: not accepting connections; {n} request(s) in flight, waiting up to {}s", grace.as_secs());
                    while n > 0 && Instant::now() < deadline {
                        std::thread::sleep(DRAIN_POLL);
                        n = IN_FLIGHT.load(Ordering::SeqCst);
                    }
                    if n == 0 {
                        log::info!("SIGTERM: nothing in flight, exiting");
                        crate::logging::flush();
                        std::process::exit(0);
                    }
                    log::warn!("SIGTERM: grace period over with {n} request(s) in flight");
                    return;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("eds-proxy-lifecycle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:8443\"\nserver_cert = \"c\"\nserver_key = \"k\"\nclient_ca = \"ca\"\n[upstream]\nbase_url = \"http://h/fhir\"\n[public]\nbase_url = \"https://p/fhir\"\n[token]\nissuer = \"i\"\naudience = [\"a\"]\n{extra}\n[paging]\nsecret_file = \"s\"\n"
        );
        // Files are not read: only the typed settings are compared.
        toml::from_str(&text).unwrap()
    }

    /// The conformance verdict is about one FHIR server under one set of label systems: a
    /// reload that changes either starts over (c-any finding: the old server's verdict was
    /// kept until the next round, up to `interval_seconds`, and `refuse` mode served an
    /// unverified server meanwhile).
    #[test]
    fn a_new_fhir_server_or_label_systems_need_a_new_verdict() {
        let a = config("jwks_url = \"https://i/jwks\"");
        let mut b = a.clone();
        b.upstream.read_timeout_ms += 1;
        b.limits.max_count = 7;
        assert!(!conformance_must_restart(&a, &b));
        let mut c = a.clone();
        c.upstream.base_url = "http://other/fhir".into();
        assert!(conformance_must_restart(&a, &c));
        for change in [
            |c: &mut Config| c.access.device_label_system.push('2'),
            |c: &mut Config| c.access.sor_label_system.push('2'),
            |c: &mut Config| c.access.cpr_label_system.push('2'),
        ] {
            let mut d = a.clone();
            change(&mut d);
            assert!(conformance_must_restart(&a, &d));
        }
    }

    #[test]
    fn fixed_keys_are_named_when_they_differ() {
        let a = config("jwks_url = \"https://i/jwks\"");
        let mut b = a.clone();
        assert!(fixed_keys_changed(&a, &b).is_empty());
        b.listen.address = "127.0.0.1:9443".into();
        b.server.grace_period_seconds = 5;
        b.limits.max_count = 7;
        assert_eq!(
            fixed_keys_changed(&a, &b),
            ["listen.address", "server.grace_period_seconds"]
        );
        // The probe's task runs for the process's life with its interval.
        b.admin.upstream_probe_interval_ms += 1;
        assert!(fixed_keys_changed(&a, &b).contains(&"admin.upstream_probe_interval_ms"));
        // The read buffer is set on the listener, built once; none unless configured.
        assert_eq!(a.listen.read_buffer_bytes, 0);
        b.listen.read_buffer_bytes = 65_536;
        assert!(fixed_keys_changed(&a, &b).contains(&"listen.read_buffer_bytes"));
    }

    #[test]
    fn keys_reload_when_the_source_changes_or_is_a_file() {
        let url = config("jwks_url = \"https://i/jwks\"");
        assert!(!keys_need_reload(&url, &url.clone()));
        let mut other = url.clone();
        other.token.jwks_url = Some("https://j/jwks".into());
        assert!(keys_need_reload(&url, &other));
        let mut floor = url.clone();
        floor.token.jwks_refresh_floor_seconds = 1;
        assert!(keys_need_reload(&url, &floor));
        let file = config("jwks_file = \"jwks.json\"");
        assert!(keys_need_reload(&file, &file.clone()));
    }
}
