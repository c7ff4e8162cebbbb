//! Prometheus metrics, registered in the default registry and served on the admin listener
//! (`GET /metrics`, text exposition format 0.0.4).
//!
//! Nothing here can panic on the request path: a metric's label values are an array of the
//! length its names declare (checked by the compiler, not by `prometheus` at run time), and a
//! metric that could not be registered logs once at startup and then counts nothing.

use std::sync::LazyLock;

use prometheus::core::{AtomicF64, GenericGauge};
use prometheus::{Histogram, HistogramOpts, IntCounter, Opts};

/// Histogram buckets for durations, in seconds (1 ms to 10 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Register `collector` in the default registry. Registration fails only on a duplicate or
/// malformed name, which are constants here: a failure is logged, and the unit test
/// `every_metric_is_registered` fails on it.
fn register<C: prometheus::core::Collector + Clone + 'static>(name: &str, collector: &C) {
    if let Err(e) = prometheus::register(Box::new(collector.clone())) {
        log::error!("metric {name} is not exported: {e}");
    }
}

/// A counter with `N` labels (`prometheus::IntCounterVec`).
pub struct CounterVec<const N: usize>(Option<prometheus::IntCounterVec>);

/// One labelled series of a [`CounterVec`]; does nothing if the metric could not be made.
pub struct Counter(Option<IntCounter>);

impl<const N: usize> CounterVec<N> {
    fn new(name: &str, help: &str, labels: [&str; N]) -> Self {
        match prometheus::IntCounterVec::new(Opts::new(name, help), &labels) {
            Ok(vec) => {
                register(name, &vec);
                CounterVec(Some(vec))
            }
            Err(e) => {
                log::error!("metric {name} is not exported: {e}");
                CounterVec(None)
            }
        }
    }

    /// The series with these label values, in the order of the label names.
    pub fn with_label_values(&self, values: &[&str; N]) -> Counter {
        Counter(
            self.0
                .as_ref()
                .and_then(|v| v.get_metric_with_label_values(values).ok()),
        )
    }
}

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        if let Some(c) = &self.0 {
            c.inc();
        }
    }

    /// Add `n`.
    pub fn inc_by(&self, n: u64) {
        if let Some(c) = &self.0 {
            c.inc_by(n);
        }
    }
}

/// A duration histogram with `N` labels, in seconds (buckets `LATENCY_BUCKETS`).
pub struct HistogramVec<const N: usize>(Option<prometheus::HistogramVec>);

/// One labelled series of a [`HistogramVec`]; does nothing if the metric could not be made.
pub struct Timing(Option<Histogram>);

impl<const N: usize> HistogramVec<N> {
    fn new(name: &str, help: &str, labels: [&str; N]) -> Self {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        match prometheus::HistogramVec::new(opts, &labels) {
            Ok(vec) => {
                register(name, &vec);
                HistogramVec(Some(vec))
            }
            Err(e) => {
                log::error!("metric {name} is not exported: {e}");
                HistogramVec(None)
            }
        }
    }

    /// The series with these label values, in the order of the label names.
    pub fn with_label_values(&self, values: &[&str; N]) -> Timing {
        Timing(
            self.0
                .as_ref()
                .and_then(|v| v.get_metric_with_label_values(values).ok()),
        )
    }
}

impl Timing {
    /// Record one duration, in seconds.
    pub fn observe(&self, seconds: f64) {
        if let Some(h) = &self.0 {
            h.observe(seconds);
        }
    }
}

/// A float gauge with `N` labels (`prometheus::GaugeVec`).
pub struct FloatGaugeVec<const N: usize>(Option<prometheus::GaugeVec>);

impl<const N: usize> FloatGaugeVec<N> {
    fn new(name: &str, help: &str, labels: [&str; N]) -> Self {
        match prometheus::GaugeVec::new(Opts::new(name, help), &labels) {
            Ok(vec) => {
                register(name, &vec);
                FloatGaugeVec(Some(vec))
            }
            Err(e) => {
                log::error!("metric {name} is not exported: {e}");
                FloatGaugeVec(None)
            }
        }
    }

    /// Set the series with these label values.
    pub fn set(&self, values: &[&str; N], value: f64) {
        if let Some(g) = self
            .0
            .as_ref()
            .and_then(|v| v.get_metric_with_label_values(values).ok())
        {
            g.set(value);
        }
    }
}

/// A float gauge without labels.
pub struct FloatGauge(Option<GenericGauge<AtomicF64>>);

impl FloatGauge {
    fn new(name: &str, help: &str) -> Self {
        match prometheus::Gauge::new(name, help) {
            Ok(g) => {
                register(name, &g);
                FloatGauge(Some(g))
            }
            Err(e) => {
                log::error!("metric {name} is not exported: {e}");
                FloatGauge(None)
            }
        }
    }

    /// Set the value.
    pub fn set(&self, value: f64) {
        if let Some(g) = &self.0 {
            g.set(value);
        }
    }
}

/// Requests by interaction, principal kind, decision (allowed/refused) and reason.
pub static REQUESTS: LazyLock<CounterVec<4>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_requests_total",
        "Requests by FHIR interaction, principal kind, decision and reason",
        ["interaction", "principal", "decision", "reason"],
    )
});

/// Time from the request head to the end of the answer, in seconds, by interaction.
pub static REQUEST_DURATION: LazyLock<HistogramVec<1>> = LazyLock::new(|| {
    HistogramVec::new(
        "eds_proxy_request_duration_seconds",
        "Total time per request",
        ["interaction"],
    )
});

/// Time spent waiting for the FHIR server per call, in seconds, by step (label `interaction`).
pub static UPSTREAM_DURATION: LazyLock<HistogramVec<1>> = LazyLock::new(|| {
    HistogramVec::new(
        "eds_proxy_upstream_duration_seconds",
        "Time spent waiting for the FHIR server",
        ["interaction"],
    )
});

/// Answers refused whole because the FHIR server returned something that never belongs in
/// them (another resource type, a foreign resource nested inside, a create answer that is
/// not the created record, a non-JSON answer): an alarm, unlike a read of someone else's id.
pub static RESPONSE_FOREIGN: LazyLock<CounterVec<2>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_response_foreign_total",
        "FHIR server answers refused whole (502) by the response check, by interaction and principal kind",
        ["interaction", "principal"],
    )
});

/// Refused access tokens by `TokenFailure` reason (`error::TokenFailure::as_str`).
pub static TOKEN_FAILURES: LazyLock<CounterVec<1>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_token_failures_total",
        "Rejected access tokens by reason",
        ["reason"],
    )
});

/// JWKS loads by result (`ok`, `error`).
pub static JWKS_REFRESHES: LazyLock<CounterVec<1>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_jwks_refreshes_total",
        "JWKS loads by result",
        ["result"],
    )
});

/// Seconds since the JWKS was last loaded; set on each scrape. NaN until the first load (a
/// 0 would read as "just loaded"); `eds_proxy_ready{check="keys"}` says the same as 0/1.
pub static JWKS_AGE: LazyLock<FloatGauge> = LazyLock::new(|| {
    let g = FloatGauge::new(
        "eds_proxy_jwks_age_seconds",
        "Seconds since the JWKS was last loaded (NaN before the first load)",
    );
    g.set(f64::NAN);
    g
});

/// Reads (and vreads) answered 404 because the record is not the caller's: normal (a caller
/// asked for an id that is not theirs), unlike `eds_proxy_response_foreign_total` and
/// `eds_proxy_response_check_drops_total`, which mean the FHIR server returned something the
/// constraint excludes.
pub static READ_HIDDEN: LazyLock<CounterVec<2>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_read_hidden_total",
        "Reads answered 404 because the record is not the caller's (normal)",
        ["interaction", "principal"],
    )
});

/// MinLog audit records written to the audit sink.
pub static AUDIT_RECORDS: LazyLock<CounterVec<0>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_audit_records_total",
        "MinLog audit records written",
        [],
    )
});

/// MinLog audit records that could not be written; each refused its answer (503): an alarm.
pub static AUDIT_WRITE_FAILURES: LazyLock<CounterVec<0>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_audit_write_failures_total",
        "MinLog audit records that could not be written (the answer was refused)",
        [],
    )
});

/// 1 with the version label: which build runs where.
pub static BUILD_INFO: LazyLock<FloatGaugeVec<1>> = LazyLock::new(|| {
    FloatGaugeVec::new(
        "eds_proxy_build_info",
        "Always 1; the version of the running eds-proxy",
        ["version"],
    )
});

/// 1 if the readiness check `check` passes, else 0 (`/readyz`, `gateway::admin`); set on each
/// scrape of `/metrics` and `/readyz`.
pub static READY: LazyLock<FloatGaugeVec<1>> = LazyLock::new(|| {
    FloatGaugeVec::new(
        "eds_proxy_ready",
        "1 if the readiness check passes, else 0",
        ["check"],
    )
});

/// The notAfter of a certificate the proxy relies on, in Unix seconds: `server` (the listener's
/// certificate, its first in the chain) and `client_ca` (the earliest of the client CA bundle).
pub static CERT_EXPIRY: LazyLock<FloatGaugeVec<1>> = LazyLock::new(|| {
    FloatGaugeVec::new(
        "eds_proxy_certificate_expiry_timestamp_seconds",
        "notAfter of the server certificate and of the earliest-expiring client CA, Unix seconds",
        ["certificate"],
    )
});

/// Validated-token cache lookups by result (`hit`, `miss`).
pub static TOKEN_CACHE: LazyLock<CounterVec<1>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_token_cache_total",
        "Validated-token cache lookups by result",
        ["result"],
    )
});

/// Entries or resources withheld because they lacked the caller's label: each one means the
/// FHIR server returned something the constraint should have excluded.
pub static RESPONSE_DROPS: LazyLock<CounterVec<2>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_response_check_drops_total",
        "Resources withheld by the response check",
        ["interaction", "principal"],
    )
});

/// FHIR server failures by kind: the `reason` of every 502/504 answer (transport errors, 5xx
/// statuses, answers the response check refused whole).
pub static UPSTREAM_ERRORS: LazyLock<CounterVec<1>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_upstream_errors_total",
        "FHIR server failures by kind",
        ["kind"],
    )
});

/// Configuration reloads (SIGHUP) by result (`ok`, `refused`).
pub static CONFIG_RELOADS: LazyLock<CounterVec<1>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_config_reloads_total",
        "Configuration reloads by result",
        ["result"],
    )
});

/// Seconds since the configuration in use was loaded (at start or by the last successful
/// reload); set on each scrape.
pub static CONFIG_AGE: LazyLock<FloatGauge> = LazyLock::new(|| {
    FloatGauge::new(
        "eds_proxy_config_age_seconds",
        "Seconds since the configuration in use was loaded",
    )
});

/// Client certificates refused at the TLS handshake, by reason (`tls::rejection_reason`:
/// `revoked`, `expired`, `unknown_issuer`, …).
pub static TLS_HANDSHAKE_FAILURES: LazyLock<CounterVec<1>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_tls_handshake_failures_total",
        "Client certificates refused at the TLS handshake, by reason",
        ["reason"],
    )
});

/// 1 while the last backend conformance probe round passed, 0 otherwise (also before the
/// first round); alert on 0 (`fhir::conformance`).
pub static BACKEND_CONFORMANT: LazyLock<FloatGauge> = LazyLock::new(|| {
    FloatGauge::new(
        "eds_proxy_backend_conformant",
        "1 if the FHIR server passed the last conformance probe round, else 0",
    )
});

/// Failed backend conformance checks by check (`security`, `param:<code>`, `capability`).
pub static BACKEND_PROBE_FAILURES: LazyLock<CounterVec<1>> = LazyLock::new(|| {
    CounterVec::new(
        "eds_proxy_backend_probe_failures_total",
        "Failed FHIR server conformance checks by check",
        ["check"],
    )
});

/// Touch every metric so the series exist (at zero) from the first scrape on.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&TOKEN_FAILURES);
    LazyLock::force(&JWKS_REFRESHES);
    LazyLock::force(&JWKS_AGE);
    LazyLock::force(&TOKEN_CACHE);
    LazyLock::force(&RESPONSE_DROPS);
    LazyLock::force(&RESPONSE_FOREIGN);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&READ_HIDDEN);
    // Unlabelled counters: their one series exists (at 0) from the start.
    AUDIT_RECORDS.with_label_values(&[]).inc_by(0);
    AUDIT_WRITE_FAILURES.with_label_values(&[]).inc_by(0);
    BUILD_INFO.set(&[env!("CARGO_PKG_VERSION")], 1.0);
    LazyLock::force(&READY);
    LazyLock::force(&CERT_EXPIRY);
    LazyLock::force(&CONFIG_AGE);
    for result in ["ok", "refused"] {
        CONFIG_RELOADS.with_label_values(&[result]).inc_by(0);
    }
    LazyLock::force(&TLS_HANDSHAKE_FAILURES);
    LazyLock::force(&BACKEND_CONFORMANT);
    LazyLock::force(&BACKEND_PROBE_FAILURES);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric is in the default registry (registration logs instead of panicking, so a
    /// duplicate or malformed name must fail here), and a series can be counted.
    #[test]
    fn every_metric_is_registered() {
        init();
        // A labelled vector is gathered only once it has a series: give each one, rather than
        // rely on other tests running first.
        REQUESTS.with_label_values(&["a", "b", "c", "d"]).inc();
        REQUEST_DURATION.with_label_values(&["a"]).observe(0.5);
        UPSTREAM_DURATION.with_label_values(&["a"]).observe(0.5);
        RESPONSE_FOREIGN.with_label_values(&["a", "b"]).inc();
        RESPONSE_DROPS.with_label_values(&["a", "b"]).inc();
        for vec in [
            &TOKEN_FAILURES,
            &JWKS_REFRESHES,
            &TOKEN_CACHE,
            &UPSTREAM_ERRORS,
            &CONFIG_RELOADS,
            &TLS_HANDSHAKE_FAILURES,
        ] {
            vec.with_label_values(&["a"]).inc();
        }
        JWKS_AGE.set(7.0);
        READ_HIDDEN.with_label_values(&["a", "b"]).inc();
        READY.set(&["a"], 1.0);
        CERT_EXPIRY.set(&["a"], 1.0);
        BACKEND_PROBE_FAILURES.with_label_values(&["a"]).inc();
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .filter(|n| n.starts_with("eds_proxy_"))
            .collect();
        for name in [
            "eds_proxy_requests_total",
            "eds_proxy_request_duration_seconds",
            "eds_proxy_upstream_duration_seconds",
            "eds_proxy_response_foreign_total",
            "eds_proxy_token_failures_total",
            "eds_proxy_jwks_refreshes_total",
            "eds_proxy_jwks_age_seconds",
            "eds_proxy_token_cache_total",
            "eds_proxy_response_check_drops_total",
            "eds_proxy_upstream_errors_total",
            "eds_proxy_read_hidden_total",
            "eds_proxy_audit_records_total",
            "eds_proxy_audit_write_failures_total",
            "eds_proxy_build_info",
            "eds_proxy_ready",
            "eds_proxy_certificate_expiry_timestamp_seconds",
            "eds_proxy_config_reloads_total",
            "eds_proxy_config_age_seconds",
            "eds_proxy_tls_handshake_failures_total",
            "eds_proxy_backend_conformant",
            "eds_proxy_backend_probe_failures_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} is not registered");
        }
        let requests = REQUESTS.0.as_ref().unwrap();
        assert!(requests.with_label_values(&["a", "b", "c", "d"]).get() >= 1);
        assert_eq!(JWKS_AGE.0.as_ref().unwrap().get(), 7.0);
    }

    /// The Grafana dashboard and the alert rules may only use metrics the proxy exports.
    #[test]
    fn dashboard_uses_only_exported_metrics() {
        init();
        REQUESTS.with_label_values(&["x", "x", "x", "x"]).inc();
        for vec in [
            &TOKEN_FAILURES,
            &JWKS_REFRESHES,
            &TOKEN_CACHE,
            &UPSTREAM_ERRORS,
        ] {
            vec.with_label_values(&["x"]).inc();
        }
        RESPONSE_DROPS.with_label_values(&["x", "x"]).inc();
        RESPONSE_FOREIGN.with_label_values(&["x", "x"]).inc();
        READ_HIDDEN.with_label_values(&["x", "x"]).inc();
        READY.set(&["x"], 1.0);
        CERT_EXPIRY.set(&["x"], 1.0);
        REQUEST_DURATION.with_label_values(&["x"]).observe(0.1);
        UPSTREAM_DURATION.with_label_values(&["x"]).observe(0.1);
        let exported: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        // The dashboard and the alert rules.
        let dashboard = concat!(
            include_str!("../dashboards/eds-proxy.json"),
            include_str!("../dashboards/alerts.yml")
        );
        let mut used: Vec<&str> = dashboard
            .match_indices("eds_proxy_")
            .filter_map(|(i, _)| dashboard.get(i..))
            .map(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()
            })
            .collect();
        used.sort();
        used.dedup();
        assert!(!used.is_empty());
        for m in used {
            let base = m.strip_suffix("_bucket").unwrap_or(m);
            assert!(
                exported.iter().any(|e| e == base),
                "dashboard uses {m}, not exported"
            );
        }
    }
}
