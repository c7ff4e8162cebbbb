//! Issue 13 items 2 and 3: nothing relies on the FHIR server's search escaping (label codes
//! are plain tokens, refused where they enter), and a create carries nothing the server might
//! honour from the client and learns nothing from the server's failures (one fixed 502).

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

use common::upstream::Scripted;
use common::*;
use serde_json::{json, Value};

struct Caller {
    client: reqwest::Client,
    token: String,
}

fn caller(h: &Harness, name: &str, claims: Value) -> Caller {
    let cert = h.pki.client(name);
    Caller {
        client: h.client(&cert),
        token: h.token(&cert, claims),
    }
}

impl Caller {
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value, String) {
        let resp = req.bearer_auth(&self.token).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }
    async fn create(&self, h: &Harness, body: &Value) -> (u16, Value, String) {
        self.send(
            self.client
                .post(h.url("AuditEvent"))
                .header("Content-Type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }
    async fn search(&self, h: &Harness) -> (u16, Value, String) {
        self.send(self.client.get(h.url("AuditEvent"))).await
    }
}

/// The sender station of the IG example registration.
fn sender(h: &Harness, name: &str) -> Caller {
    caller(
        h,
        name,
        station_claims("Cura-EUA", "937961000016000", "GLN-1234"),
    )
}

/// Every 5xx (and any other status the proxy does not pass on) is the same 502 with the same
/// body, whatever the server said; the client's `id` never reached the server.
#[tokio::test]
async fn upstream_failures_on_create_are_one_fixed_502() {
    let h = Harness::start("any-create-5xx", Options::default());
    let s = sender(&h, "any-create-station");
    let mut body = example_registration();
    body["id"] = json!("another-stations-record");
    body["meta"]["versionId"] = json!("7");
    let mut answers = Vec::new();
    for status in [500, 501, 503, 504, 599, 401, 302] {
        h.upstream.clear_scripts();
        h.upstream.script(Scripted {
            method: "POST".into(),
            target_prefix: "/fhir/AuditEvent".into(),
            status,
            headers: vec![("Retry-After".into(), "120".into())],
            body: serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception",
                "diagnostics": "duplicate key AuditEvent/another-stations-record of station 7002"}]})).unwrap(),
        });
        let before = h.upstream.request_count();
        let (got, v, text) = s.create(&h, &body).await;
        assert_eq!(got, 502, "{status}: {text}");
        assert_eq!(
            v,
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient",
                "diagnostics": "the FHIR server could not answer"}]}),
            "{status}"
        );
        let seen = h.upstream.requests();
        assert_eq!(seen.len(), before + 1, "{status}");
        let sent: Value = serde_json::from_slice(&seen[before].body).unwrap();
        assert_eq!(sent.get("id"), None, "{status}: {sent}");
        assert_eq!(sent["meta"].get("versionId"), None, "{status}: {sent}");
        answers.push(text);
    }
    h.upstream.clear_scripts();
    answers.dedup();
    assert_eq!(answers.len(), 1, "{answers:?}");
}

/// Device ids, CPRs, SOR codes and CVRs holding `,` `|` `\` `$` are refused where they
/// enter: in the token (403) and in a registration (400). Nothing reaches the server.
#[tokio::test]
async fn label_codes_with_search_specials_are_refused_where_they_enter() {
    let h = Harness::start("any-plain-tokens", Options::default());
    let before = h.upstream.request_count();
    for (name, claims, claim) in [
        (
            "device",
            station_claims("Cura,EUA", "937961000016000", "GLN-1234"),
            "ehmi:eer:device_id",
        ),
        (
            "sor",
            station_claims("Cura-EUA", "9379|61000016000", "GLN-1234"),
            "ehmi:org_context.sor",
        ),
        ("cpr", citizen_claims("0101010001,0202020002"), "cpr"),
        ("cvr", supporter_claims("29189846$"), "cvr"),
    ] {
        let c = caller(&h, &format!("any-plain-{name}"), claims);
        let (status, v, text) = c.search(&h).await;
        assert_eq!(status, 403, "{name}: {text}");
        assert_eq!(
            v["issue"][0]["diagnostics"],
            format!("the token's {claim} claim holds , | \\ or $, which an access label may not"),
            "{name}"
        );
    }
    let s = sender(&h, "any-plain-station");
    for (what, from, to) in [
        ("receiver SOR code", "698141000016008", "698141000016008,1"),
        ("patient CPR", "PAT1234567890", "PAT1234567890\\\\x"),
    ] {
        let text = example_registration().to_string().replace(from, to);
        let body: Value = serde_json::from_str(&text).unwrap();
        let (status, v, text) = s.create(&h, &body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert_eq!(
            v["issue"][0]["diagnostics"],
            format!("the registration's {what} holds , | \\ or $, which an access label may not"),
            "{what}"
        );
    }
    assert_eq!(
        h.upstream.request_count(),
        before,
        "nothing reached the server"
    );
}
