//! Operating eds-proxy (issue 9 items 4–6): the MinLog audit stream (its own sink, not
//! governed by the log level, fail closed), request ids (UUID v7, sent upstream), and
//! readiness that names what is not ready.

// Runs the proxy and the `dev` PKI: needs the `dev` feature (default).
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

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CPR: &str = "0101019999";
const SUPPORTER_CVR: &str = "29189846";
/// The SOR code `cvr.toml` (tests/common) gives `SUPPORTER_CVR`.
const SUPPORTER_SOR: &str = "937961000016000";

/// A stored registration the supporter of `SUPPORTER_CVR` may see, about citizen `CPR`.
fn visible_to_supporter() -> Value {
    let mut r = example_registration();
    r["meta"]["security"] = json!([
        {"system": "urn:eds-proxy:label:device-id", "code": "obs-device"},
        {"system": "urn:eds-proxy:label:sor", "code": SUPPORTER_SOR},
        {"system": "urn:eds-proxy:label:cpr", "code": CPR}
    ]);
    r
}

/// True for a hyphenated UUID of version 7 and the RFC 9562 variant.
fn is_uuid_v7(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups.iter().all(|g| {
            g.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
        && groups[2].starts_with('7')
        && matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b')
}

/// The real binary with `RUST_LOG=error` and `audit.path` a file: a supporter's answer still
/// gets its record (the log level does not govern the audit stream), before the answer; the
/// record names the request id the client got, the pseudonymous principal and the citizen;
/// nothing the process logged names the CPR.
#[tokio::test]
async fn audit_records_are_written_with_the_log_level_at_error() {
    let dir = tmp_dir("audit-level");
    let pki = Pki::new(&dir);
    let upstream = RecordingUpstream::start(UpstreamMode::Honest);
    let id = upstream.seed(visible_to_supporter());
    let (port, admin_port) = (free_port(), free_port());
    let audit_file = dir.join("audit.jsonl");
    let config = proxy_config(
        port,
        admin_port,
        &format!("http://127.0.0.1:{}/fhir", upstream.port),
        5_000,
        "[audit]\npath = \"audit.jsonl\"\n",
    );
    let (mut child, _, output) = spawn_proxy(&dir, &config, "error", port);

    let cert = pki.client("obs-supporter");
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes())
            .unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.ca.cert.cert_pem.as_bytes()).unwrap(),
        )
        .identity(identity)
        .build()
        .unwrap();
    let token = pki
        .issuer_key
        .sign(&claims_for(&cert, supporter_claims(SUPPORTER_CVR)))
        .unwrap();
    let resp = client
        .get(format!("https://localhost:{port}/fhir/AuditEvent"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let bundle: Value = resp.json().await.unwrap();
    assert_eq!(bundle["entry"][0]["resource"]["id"], json!(id));

    // Written before the answer was sent: it is there as soon as the answer is.
    let records = std::fs::read_to_string(&audit_file).unwrap();
    let lines: Vec<&str> = records.lines().collect();
    assert_eq!(lines.len(), 1, "{records}");
    let record: Value = serde_json::from_str(lines[0]).unwrap();
    let pseudonym = record["principal"]["id"].as_str().unwrap().to_string();
    assert_eq!(pseudonym.len(), 32);
    assert!(pseudonym.bytes().all(|c| (b'a'..=b'p').contains(&c)));
    assert_eq!(
        record,
        json!({
            "type": "eds-proxy.audit.v1",
            "time": record["time"],
            "request_id": request_id,
            "interaction": "search",
            "principal": {"kind": "supporter", "id": pseudonym, "organisation": SUPPORTER_CVR},
            "registrations": [{"id": id, "cpr": [CPR]}],
            "cpr": [CPR],
        })
    );
    assert!(record["time"].as_str().unwrap().ends_with('Z'));

    // A read of the same record: a second record, the same pseudonym.
    let resp = client
        .get(format!("https://localhost:{port}/fhir/AuditEvent/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let records = std::fs::read_to_string(&audit_file).unwrap();
    let second: Value = serde_json::from_str(records.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["interaction"], "read");
    assert_eq!(second["principal"]["id"], json!(pseudonym));
    assert_eq!(
        metric(admin_port, "eds_proxy_audit_records_total").await,
        Some(2.0)
    );

    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&output).unwrap();
    assert!(!logged.contains(CPR), "the log names the CPR:\n{logged}");
    // The access log is at INFO: with the level at error it is off, the audit stream is not.
    assert!(!logged.contains("\"request_id\""), "{logged}");
}

/// When the record cannot be written (here: the audit file's folder is gone), the supporter's
/// answer is refused 503 with its reason, the failure is counted, and the answer's records
/// are not released; answers that owe no record (a station's) are served as before.
#[tokio::test]
async fn an_audit_write_failure_refuses_the_answer_and_is_counted() {
    let dir = tmp_dir("audit-fail");
    let audit_dir = dir.join("audit");
    std::fs::create_dir_all(&audit_dir).unwrap();
    let h = Harness::start(
        "audit-fail",
        Options {
            extra_config: format!(
                "[audit]\npath = \"{}\"\n",
                audit_dir.join("a.jsonl").display()
            ),
            ..Options::default()
        },
    );
    let id = h.upstream.seed(visible_to_supporter());
    let supporter = h.caller("fail-supporter", supporter_claims(SUPPORTER_CVR));
    let read = format!("/AuditEvent/{id}");
    let upstream_read = format!("/fhir/AuditEvent/{id}");

    supporter
        .get(&read)
        .expect(
            &h,
            upstream(200, "AuditEvent", "GET", upstream_read.clone()),
        )
        .await;
    assert_eq!(
        std::fs::read_to_string(audit_dir.join("a.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    assert_eq!(
        metric(h.admin_port, "eds_proxy_audit_write_failures_total").await,
        Some(0.0)
    );

    std::fs::remove_dir_all(&audit_dir).unwrap();
    let a = supporter
        .get(&read)
        .expect(
            &h,
            upstream(503, "transient", "GET", upstream_read.clone())
                .because("audit_write_failed")
                .lacks(CPR),
        )
        .await;
    assert_eq!(
        a.json["issue"][0]["diagnostics"],
        "the answer cannot be released: its audit record could not be written"
    );
    assert_eq!(
        metric(h.admin_port, "eds_proxy_audit_write_failures_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            h.admin_port,
            r#"eds_proxy_requests_total{decision="refused",interaction="read",principal="supporter",reason="audit_write_failed"}"#
        )
        .await,
        Some(1.0)
    );

    // A 304 to a conditional read owes a record as well: refused the same way.
    supporter
        .get(&read)
        .header("If-None-Match", "W/\"1\"")
        .expect(
            &h,
            upstream(503, "transient", "GET", upstream_read.clone())
                .because("audit_write_failed")
                .lacks(CPR),
        )
        .await;

    // A station's answer owes no record: served.
    h.caller("fail-station", station_claims("fail-station", "1", "2"))
        .search("")
        .expect(
            &h,
            search(
                "_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cfail-station",
                "",
            ),
        )
        .await;
}

/// `/readyz` fails, naming the check, while the FHIR server cannot be reached; `/healthz`
/// (liveness) does not; `eds_proxy_ready{check}` says the same.
#[tokio::test]
async fn readiness_names_the_unreachable_upstream() {
    let down = Harness::start(
        "ready-down",
        Options {
            dead_upstream: true,
            ..Options::default()
        },
    );
    let admin = |h: &Harness, path: &str| format!("http://127.0.0.1:{}{path}", h.admin_port);
    let resp = reqwest::get(admin(&down, "/readyz")).await.unwrap();
    assert_eq!(resp.status(), 503);
    // The third line is the conformance probe's, which cannot reach the FHIR server either
    // (ready before its first round in the default `warn` mode, not conformant after it).
    let body = resp.text().await.unwrap();
    assert!(
        body.starts_with("keys: ok\nupstream: unreachable (connection refused)\nconformance: "),
        "{body}"
    );
    assert_eq!(body.lines().count(), 3, "{body}");
    let resp = reqwest::get(admin(&down, "/healthz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        metric(down.admin_port, r#"eds_proxy_ready{check="upstream"}"#).await,
        Some(0.0)
    );
    assert_eq!(
        metric(down.admin_port, r#"eds_proxy_ready{check="keys"}"#).await,
        Some(1.0)
    );

    let up = Harness::start("ready-up", Options::default());
    let resp = reqwest::get(admin(&up, "/readyz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "keys: ok\nupstream: ok\nconformance: ok\n"
    );
}

/// Request ids are UUID v7, unique, given to the client and sent to the FHIR server as
/// `X-Request-ID` (the client's own is never passed on).
#[tokio::test]
async fn request_ids_are_uuid_v7_and_reach_the_upstream() {
    let h = Harness::start("request-ids", Options::default());
    let station = h.caller("rid-station", station_claims("rid-station", "1", "2"));
    let mut seen = HashSet::new();
    for i in 0..20 {
        let resp = station
            .search(&format!("message-id=rid-{i}"))
            .header("X-Request-ID", "client-chosen")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(is_uuid_v7(&id), "{id}");
        let upstream = h.upstream.requests_matching(&format!("message-id=rid-{i}"));
        assert_eq!(upstream.len(), 1);
        assert_eq!(upstream[0].header("x-request-id"), Some(id.as_str()));
        assert!(seen.insert(id));
    }
    // A refused request has one too (nothing reached the FHIR server).
    let a = station
        .get("/Patient")
        .expect(&h, forbidden().because("resource_type"))
        .await;
    let id = a.header("x-request-id").unwrap();
    assert!(is_uuid_v7(id), "{id}");
    assert!(!seen.contains(id));
}

/// Before the issuer's keys are first loaded (here: the JWKS URL does not answer), `/readyz`
/// names `keys`, and `eds_proxy_jwks_age_seconds` is NaN, never a 0 that reads "just loaded".
#[tokio::test]
async fn before_the_first_key_load_readiness_names_keys_and_the_jwks_age_is_nan() {
    let dir = tmp_dir("no-keys");
    let _pki = Pki::new(&dir);
    let upstream = RecordingUpstream::start(UpstreamMode::Honest);
    let (port, admin_port) = (free_port(), free_port());
    let config = proxy_config(
        port,
        admin_port,
        &format!("http://127.0.0.1:{}/fhir", upstream.port),
        5_000,
        "",
    )
    .replace(
        "jwks_file = \"jwks.json\"",
        &format!("jwks_url = \"https://127.0.0.1:{}/jwks\"", free_port()),
    );
    assert!(config.contains("jwks_url"));
    std::fs::write(dir.join("eds-proxy.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eds-proxy"))
        .arg("--config")
        .arg(dir.join("eds-proxy.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(admin_port);
    let resp = reqwest::get(format!("http://127.0.0.1:{admin_port}/readyz"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let age = metric(admin_port, "eds_proxy_jwks_age_seconds").await;
    let ready = metric(admin_port, r#"eds_proxy_ready{check="keys"}"#).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "keys: issuer keys not loaded\nupstream: ok\nconformance: ok\n"
        )
    );
    assert!(age.is_some_and(f64::is_nan), "{age:?}");
    assert_eq!(ready, Some(0.0));
}

/// A record write that failed part-way (a full disk) leaves a line without its end; the next
/// record must still be a line of its own, not glued to the fragment where a collector cannot
/// parse it (the answer it describes was released).
#[tokio::test]
async fn a_record_after_a_torn_write_is_a_line_of_its_own() {
    let dir = tmp_dir("audit-torn");
    let audit_file = dir.join("torn.jsonl");
    std::fs::write(
        &audit_file,
        b"{\"type\":\"eds-proxy.audit.v1\",\"time\":\"2026-",
    )
    .unwrap();
    let h = Harness::start(
        "audit-torn",
        Options {
            extra_config: format!("[audit]\npath = \"{}\"\n", audit_file.display()),
            ..Options::default()
        },
    );
    let id = h.upstream.seed(visible_to_supporter());
    let cert = h.pki.client("torn-supporter");
    let resp = h
        .client(&cert)
        .get(h.url(&format!("AuditEvent/{id}")))
        .bearer_auth(h.token(&cert, supporter_claims(SUPPORTER_CVR)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = std::fs::read_to_string(&audit_file).unwrap();
    let last = text.lines().last().unwrap();
    let record: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(record["registrations"], json!([{"id": id, "cpr": [CPR]}]));
    assert!(text.ends_with('\n'));
}
