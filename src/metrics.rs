//! Prometheus metrics, registered in the default registry and served on the admin listener.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, HistogramVec,
    IntCounterVec, IntGauge,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registration fails only on a duplicate name, a programming error caught by every test run.
fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register_histogram_vec!(name, help, labels, LATENCY_BUCKETS.to_vec())
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

/// Requests by interaction, principal kind, decision (allowed/refused) and reason.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "eds_proxy_requests_total",
        "Requests by FHIR interaction, principal kind, decision and reason",
        &["interaction", "principal", "decision", "reason"],
    )
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "eds_proxy_request_duration_seconds",
        "Total time per request",
        &["interaction"],
    )
});

pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "eds_proxy_upstream_duration_seconds",
        "Time spent waiting for the FHIR server",
        &["interaction"],
    )
});

/// Answers refused whole because the FHIR server returned something that never belongs in
/// them (another resource type, a foreign resource nested inside, a create answer that is
/// not the created record, a non-JSON answer): an alarm, unlike a read of someone else's id.
pub static RESPONSE_FOREIGN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "eds_proxy_response_foreign_total",
        "FHIR server answers refused whole (502) by the response check, by interaction and principal kind",
        &["interaction", "principal"],
    )
});

pub static TOKEN_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "eds_proxy_token_failures_total",
        "Rejected access tokens by reason",
        &["reason"],
    )
});

pub static JWKS_REFRESHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "eds_proxy_jwks_refreshes_total",
        "JWKS loads by result",
        &["result"],
    )
});

pub static JWKS_AGE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eds_proxy_jwks_age_seconds",
        "Seconds since the JWKS was last loaded"
    )
    .unwrap_or_else(|e| panic!("metric: {e}"))
});

pub static TOKEN_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "eds_proxy_token_cache_total",
        "Validated-token cache lookups by result",
        &["result"],
    )
});

/// Entries or resources withheld because they lacked the caller's label: each one means the
/// FHIR server returned something the constraint should have excluded.
pub static RESPONSE_DROPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "eds_proxy_response_check_drops_total",
        "Resources withheld by the response check",
        &["interaction", "principal"],
    )
});

pub static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "eds_proxy_upstream_errors_total",
        "FHIR server failures by kind",
        &["kind"],
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Grafana dashboard may only use metrics the proxy exports.
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
        REQUEST_DURATION.with_label_values(&["x"]).observe(0.1);
        UPSTREAM_DURATION.with_label_values(&["x"]).observe(0.1);
        let exported: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let dashboard = include_str!("../dashboards/eds-proxy.json");
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
