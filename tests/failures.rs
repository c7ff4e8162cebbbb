//! The proxy's behaviour when the FHIR server misbehaves: leaks, is down, or is slow.

// Runs the proxy, the dev issuer or the `dev` subcommands: needs the `dev` feature (default).
#![cfg(feature = "dev")]
// Test code: a panic is a failure, and it reads JSON answers with plain serde_json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{json, Value};

fn labelled(device: &str, cpr: &str) -> Value {
    let mut r = example_registration();
    r["meta"]["security"] = json!([
        {"system": "urn:eds-proxy:label:device-id", "code": device},
        {"system": "urn:eds-proxy:label:cpr", "code": cpr}
    ]);
    r
}

#[tokio::test]
async fn a_backend_that_ignores_the_constraint_leaks_nothing() {
    let h = Harness::start(
        "leaky",
        Options {
            upstream_mode: UpstreamMode::Leaky,
            ..Options::default()
        },
    );
    let mine = h.upstream.seed(labelled("leak-dev-1", "0101010101"));
    h.upstream.seed(labelled("leak-dev-2", "0202020202"));
    h.upstream.seed(example_registration());
    let bundle = h
        .caller("leak-dev-1", station_claims("leak-dev-1", "1", "2"))
        .get("AuditEvent")
        .expect(
            &h,
            upstream(
                200,
                "Bundle",
                "GET",
                "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cleak-dev-1",
            ),
        )
        .await
        .json;
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    assert!(bundle.get("total").is_none());
    let metrics = metrics_text(h.admin_port).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("eds_proxy_response_check_drops_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_down_is_502() {
    let h = Harness::start(
        "down",
        Options {
            dead_upstream: true,
            ..Options::default()
        },
    );
    h.caller("down-dev", station_claims("down-dev", "1", "2"))
        .get("AuditEvent")
        .expect(
            &h,
            refused(502, "transient").because("upstream_unavailable"),
        )
        .await;
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let h = Harness::start(
        "slow",
        Options {
            upstream_mode: UpstreamMode::Slow,
            read_timeout_ms: 500,
            ..Options::default()
        },
    );
    h.caller("slow-dev", station_claims("slow-dev", "1", "2"))
        .get("AuditEvent")
        .expect(
            &h,
            upstream(
                504,
                "timeout",
                "GET",
                "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cslow-dev",
            )
            .because("gateway_timeout"),
        )
        .await;
}
