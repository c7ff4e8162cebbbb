//! Issue 13 item 4: the backend conformance probe. A FHIR server that ignores `_security`, an
//! IG search parameter, or does not list the parameters turns `/readyz` to 503 naming the
//! check, sets `eds_proxy_backend_conformant` to 0 and counts the failed check; with
//! `on_nonconformant = "refuse"` FHIR requests are answered 503 and reach nothing. A
//! conformant server makes the proxy ready again.

// Runs the proxy: needs the `dev` feature (default).
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

use std::time::{Duration, Instant};

use common::upstream::Scripted;
use common::*;
use serde_json::{json, Value};

const DEV: &str = "probe-dev-1";
const PROBE_SECURITY: &str =
    "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Ceds-proxy-probe-";

async fn admin(h: &Harness, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://127.0.0.1:{}{path}", h.admin_port))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The value of the series `name` (with its labels exactly as written), 0 if absent.
async fn metric(h: &Harness, series: &str) -> f64 {
    let (_, text) = admin(h, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Poll `/readyz` (the probe runs every second, a failed round is repeated after 1 s) until
/// it answers `status`; its body.
async fn readyz_becomes(h: &Harness, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = admin(h, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {got} ({body:?}), wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn searchset_with_a_record() -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
        {"resource": {"resourceType": "AuditEvent", "id": "x", "meta": {"security": [
            {"system": "urn:eds-proxy:label:device-id", "code": "someone-else"}]}}, "search": {"mode": "match"}}]}))
    .unwrap()
}

fn answer(prefix: &str, status: u16, body: Vec<u8>) -> Scripted {
    Scripted {
        method: "GET".into(),
        target_prefix: prefix.into(),
        status,
        headers: vec![],
        body,
    }
}

struct Station {
    client: reqwest::Client,
    token: String,
}

impl Station {
    async fn search(&self, h: &Harness) -> (u16, Value) {
        self.get(h, "AuditEvent?message-id=probe-test").await
    }

    async fn get(&self, h: &Harness, rel: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(h.url(rel))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_nonconformant_fhir_server_is_reported_and_refused() {
    let h = Harness::start(
        "probe-refuse",
        Options {
            extra_config: "[upstream.probe]\ninterval_seconds = 1\non_nonconformant = \"refuse\"\nrequire_capability_listing = true\n"
                .into(),
            ..Options::default()
        },
    );
    let cert = h.pki.client("probe-station");
    let s = Station {
        client: h.client(&cert),
        token: h.token(&cert, station_claims(DEV, "111", "GLN-1")),
    };
    // Something stored, so a server ignoring a condition has something to return.
    h.upstream
        .seed(json!({"resourceType": "AuditEvent", "meta": {"security": [
        {"system": "urn:eds-proxy:label:device-id", "code": DEV}]}}));

    // Conformant: ready, metric 1, requests served.
    assert_eq!(
        readyz_becomes(&h, 200).await,
        "keys: ok\nupstream: ok\nconformance: ok\n"
    );
    assert_eq!(metric(&h, "eds_proxy_backend_conformant").await, 1.0);
    assert_eq!(s.search(&h).await.0, 200);
    // What the probe sent: a search for a random label, one per IG parameter, the metadata.
    let probes: Vec<String> = h
        .upstream
        .probe_requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert!(
        probes
            .iter()
            .any(|t| t.starts_with(PROBE_SECURITY) && t.ends_with("&_count=1")),
        "{probes:?}"
    );
    assert!(
        probes
            .iter()
            .any(|t| t.starts_with("/fhir/AuditEvent?message-id=eds-proxy-probe-")),
        "{probes:?}"
    );
    assert!(probes.iter().any(|t| t == "/fhir/metadata"), "{probes:?}");
    assert!(h
        .upstream
        .probe_requests()
        .iter()
        .all(|r| r.header("authorization").is_none() && r.method == "GET"));

    let mut capability_without_ig = json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
        {"type": "AuditEvent", "searchParam": [{"name": "cpr"}, {"name": "message-id"}]}]}]});
    capability_without_ig["status"] = json!("active");
    for (check, script, readyz) in [
        (
            "security",
            answer(PROBE_SECURITY, 200, searchset_with_a_record()),
            "keys: ok\nupstream: ok\nconformance: FHIR server not conformant: security: a search for a value that exists nowhere returned records (ignored; total 1)\n",
        ),
        (
            "param:message-id",
            answer("/fhir/AuditEvent?message-id=eds-proxy-probe-", 200, searchset_with_a_record()),
            "keys: ok\nupstream: ok\nconformance: FHIR server not conformant: param:message-id: a search for a value that exists nowhere returned records (ignored; total 1)\n",
        ),
        (
            "param:cpr",
            answer("/fhir/AuditEvent?cpr=eds-proxy-probe-", 400, b"{}".to_vec()),
            "keys: ok\nupstream: ok\nconformance: FHIR server not conformant: param:cpr: the FHIR server answered 400\n",
        ),
        (
            "capability",
            answer("/fhir/metadata", 200, serde_json::to_vec(&capability_without_ig).unwrap()),
            "keys: ok\nupstream: ok\nconformance: FHIR server not conformant: capability: the CapabilityStatement does not list AuditEvent search parameter(s) ehmiMessageType, entityIdentifier, orig-message-id, participant-sor, receiver-gln, receiver-name, receiver-sor, receiverOrg, sender-gln, sender-name, sender-sor, senderOrg\n",
        ),
    ] {
        let failures = format!("eds_proxy_backend_probe_failures_total{{check=\"{check}\"}}");
        let failed_before = metric(&h, &failures).await;
        h.upstream.script(script);
        assert_eq!(readyz_becomes(&h, 503).await, readyz, "{check}");
        assert_eq!(metric(&h, "eds_proxy_backend_conformant").await, 0.0, "{check}");
        assert!(metric(&h, &failures).await > failed_before, "{check}");
        // Refused: 503, the fixed text, nothing sent upstream.
        let refused = "eds_proxy_requests_total{decision=\"refused\",interaction=\"search\",principal=\"station\",reason=\"backend_nonconformant\"}";
        let refused_before = metric(&h, refused).await;
        let before = h.upstream.request_count();
        let (status, body) = s.search(&h).await;
        assert_eq!(status, 503, "{check}: {body}");
        assert_eq!(body["issue"][0]["code"], "transient", "{check}");
        assert_eq!(
            body["issue"][0]["diagnostics"],
            "the FHIR server behind the proxy failed its conformance check",
            "{check}"
        );
        assert_eq!(metric(&h, refused).await, refused_before + 1.0, "{check}");
        assert_eq!(h.upstream.request_count(), before, "{check}: upstream saw the request");
        // Fixed: ready again, requests served.
        h.upstream.clear_scripts();
        assert_eq!(readyz_becomes(&h, 200).await, "keys: ok\nupstream: ok\nconformance: ok\n", "{check}");
        assert_eq!(metric(&h, "eds_proxy_backend_conformant").await, 1.0, "{check}");
        assert_eq!(s.search(&h).await.0, 200, "{check}");
    }
    // Last, and in the same test: the metrics are one registry per process, and this second
    // proxy's prober would make the gauge above flip.
    an_upstream_that_ignores_security_is_not_ready().await;
}

/// The recording upstream's `Leaky` mode ignores `_security` (returns everything): `/readyz`
/// names the check; in the default `warn` mode requests are still served, the response check
/// withholding the other station's record.
async fn an_upstream_that_ignores_security_is_not_ready() {
    let h = Harness::start(
        "probe-leaky",
        Options {
            upstream_mode: UpstreamMode::Leaky,
            extra_config: "[upstream.probe]\ninterval_seconds = 1\n".into(),
            ..Options::default()
        },
    );
    h.upstream
        .seed(json!({"resourceType": "AuditEvent", "meta": {"security": [
        {"system": "urn:eds-proxy:label:device-id", "code": "another-station"}]}}));
    assert_eq!(
        readyz_becomes(&h, 503).await,
        "keys: ok\nupstream: ok\nconformance: FHIR server not conformant: security: a search for a value that exists nowhere returned records (ignored; total 1)\n"
    );
    let cert = h.pki.client("probe-leaky-station");
    let s = Station {
        client: h.client(&cert),
        token: h.token(&cert, station_claims(DEV, "111", "GLN-1")),
    };
    let before = h.upstream.request_count();
    let (status, body) = s.get(&h, "AuditEvent").await;
    assert_eq!(status, 200, "{body}");
    // The server returned the other station's record; the response check withheld it.
    assert_eq!(body["entry"], json!([]), "{body}");
    assert_eq!(body.get("total"), None, "{body}");
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(
        seen[before].target,
        format!("/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7C{DEV}")
    );
}
