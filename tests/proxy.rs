//! Integration tests: the real proxy on a real port with real mTLS in front of a recording
//! upstream. Each test uses its own stations and citizens, so they can share one proxy.

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

use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start("proxy", Options::default()))
}

/// A registration by station `device` (its own contained Device), sender `sor`/`gln`.
fn registration(device: &str, sor: &str, gln: &str, cpr: &str, message_id: &str) -> Value {
    let mut r = example_registration();
    r["contained"][0]["identifier"] = json!([{"value": device}]);
    r["agent"][0]["who"]["identifier"]["value"] = json!(sor);
    r["agent"][0]["extension"][0]["valueIdentifier"]["value"] = json!(gln);
    r["entity"][0]["what"]["identifier"]["value"] = json!(cpr);
    r["entity"][1]["what"]["identifier"]["value"] = json!(message_id);
    r
}

/// A station (device `device`, organisation `sor`/`gln`) with a certificate of its own.
fn station(h: &Harness, device: &str, sor: &str, gln: &str) -> Caller {
    h.caller(device, station_claims(device, sor, gln))
}

/// Exactly one upstream request (of those carrying the case's marker).
fn one(method: &'static str, target: &str) -> Vec<(&'static str, String)> {
    vec![(method, target.to_string())]
}

/// A 200 `resourceType` answer after exactly one upstream request carrying `marker`.
fn answered(code: &'static str, marker: &str, method: &'static str, target: &str) -> Expect {
    Expect::new(200, code, Seen::Nothing).marked(marker, one(method, target))
}

/// Refused with `status`/`code` for `reason`, and no request carrying `marker` reached the
/// upstream.
fn refused_marked(status: u16, code: &'static str, reason: &'static str, marker: &str) -> Expect {
    refused(status, code).because(reason).marked(marker, vec![])
}

#[tokio::test]
async fn station_registers_and_the_upstream_gets_labels_and_no_client_headers() {
    let h = harness();
    let s = station(h, "reg-dev-1", "1001", "GLN-1001");
    let answer = s
        .create(&registration(
            "reg-dev-1",
            "1001",
            "GLN-1001",
            "0101011001",
            "reg-msg-1",
        ))
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=1.2.3.4")
        .header("Prefer", "handling=lenient")
        .header("Cookie", "a=b")
        .expect(
            h,
            created()
                .marked("reg-msg-1", one("POST", "/fhir/AuditEvent"))
                .upstream_header("x-forwarded-host", Want::Is("localhost".into()))
                .upstream_header("x-forwarded-proto", Want::Is("https".into()))
                .upstream_header("x-forwarded-prefix", Want::Is("/fhir".into()))
                .upstream_header("authorization", Want::Absent)
                .upstream_header("forwarded", Want::Absent)
                .upstream_header("prefer", Want::Absent)
                .upstream_header("cookie", Want::Absent),
        )
        .await;
    let location = answer.header("location").unwrap();
    assert!(location.starts_with(&h.base), "{location}");
    let seen = h.upstream.requests_matching("reg-msg-1");
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    let labels: Vec<(String, String)> = body["meta"]["security"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["system"].as_str().unwrap().to_string(),
                c["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(labels.contains(&("urn:eds-proxy:label:device-id".into(), "reg-dev-1".into())));
    assert!(labels.contains(&("urn:eds-proxy:label:sor".into(), "1001".into())));
    assert!(labels.contains(&("urn:eds-proxy:label:sor".into(), "698141000016008".into())));
    assert!(labels.contains(&("urn:eds-proxy:label:cpr".into(), "0101011001".into())));
}

#[tokio::test]
async fn each_principal_search_reaches_upstream_with_exactly_its_constraint() {
    let h = harness();
    let s = station(h, "search-dev-1", "2001", "GLN-2001");
    s.search("message-id=search-msg-1&_count=500")
        .expect(
            h,
            answered(
                "Bundle",
                "search-msg-1",
                "GET",
                "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Csearch-dev-1&message-id=search-msg-1&_count=50",
            ),
        )
        .await;
    let citizen = h.caller("citizen-search", citizen_claims("0202022002"));
    citizen
        .search("message-id=search-msg-2")
        .expect(
            h,
            answered(
                "Bundle",
                "search-msg-2",
                "GET",
                "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Acpr%7C0202022002&message-id=search-msg-2",
            ),
        )
        .await;
    let supporter = h.caller("supporter-search", supporter_claims("11111111"));
    supporter
        .form("/AuditEvent/_search", "message-id=search-msg-3")
        .expect(
            h,
            answered(
                "Bundle",
                "search-msg-3",
                "GET",
                "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Asor%7C698141000016008%2Curn%3Aeds-proxy%3Alabel%3Asor%7C555555555&message-id=search-msg-3",
            ),
        )
        .await;
}

#[tokio::test]
async fn token_failures_are_401_with_invalid_token() {
    let h = harness();
    let a = h.anonymous("tok-a");
    let b = h.anonymous("tok-b");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let base = station_claims("tok-dev", "3001", "GLN-3001");
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        h.token(&a.cert, c)
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims_for_a = claims_for(&a.cert, base.clone());
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            alg: jsonwebtoken::Algorithm::HS256,
            kid: Some("test-key-1".into()),
            ..Default::default()
        },
        &claims_for_a,
        &jsonwebtoken::EncodingKey::from_secret(h.pki.issuer_key.jwks().to_string().as_bytes()),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "test-key-1"})),
        b64(&claims_for_a)
    );
    let on_a = |token: String| a.clone().with_token(token);
    let q = "message-id=tok-msg";
    let refused = |reason: &'static str| bad_token().because(reason).marked("tok-msg", vec![]);
    let cases = vec![
        case(
            "no token",
            a.search(q),
            no_token().marked("tok-msg", vec![]),
        ),
        case(
            "bound to A, presented with B",
            b.clone()
                .with_token(h.token(&a.cert, base.clone()))
                .search(q),
            refused("cnf_mismatch"),
        ),
        case(
            "expired",
            on_a(with(json!({"exp": now - 3600}))).search(q),
            refused("expired"),
        ),
        case(
            "wrong aud",
            on_a(with(json!({"aud": "other"}))).search(q),
            refused("audience"),
        ),
        case(
            "wrong iss",
            on_a(with(json!({"iss": "https://evil.test"}))).search(q),
            refused("issuer"),
        ),
        case(
            "no cnf",
            on_a(with(json!({"cnf": null}))).search(q),
            refused("missing_cnf"),
        ),
        case("alg none", on_a(none).search(q), refused("algorithm")),
        case(
            "HS256 with the public key",
            on_a(hs256).search(q),
            refused("algorithm"),
        ),
        case(
            "garbage",
            on_a("abc.def.ghi".into()).search(q),
            refused("malformed"),
        ),
    ];
    verdict(&[run_cases(h, "token failures", cases).await]);
}

#[tokio::test]
async fn registration_with_foreign_identity_is_403_and_never_reaches_upstream() {
    let h = harness();
    let s = station(h, "own-dev", "4001", "GLN-4001");
    let mut preset = registration("own-dev", "4001", "GLN-4001", "0404044001", "forge-msg-4");
    preset["meta"]["security"] =
        json!([{"system": "urn:eds-proxy:label:cpr", "code": "0000000000"}]);
    let citizen = h.caller("citizen-create", citizen_claims("0404044001"));
    let cases = vec![
        case(
            "other device",
            s.create(&registration(
                "someone-else",
                "4001",
                "GLN-4001",
                "0404044001",
                "forge-msg-1",
            )),
            refused_marked(403, "forbidden", "device_mismatch", "forge-msg"),
        ),
        case(
            "other SOR",
            s.create(&registration(
                "own-dev",
                "4999",
                "GLN-4001",
                "0404044001",
                "forge-msg-2",
            )),
            refused_marked(403, "forbidden", "org_not_party", "forge-msg"),
        ),
        case(
            "other GLN",
            s.create(&registration(
                "own-dev",
                "4001",
                "GLN-4999",
                "0404044001",
                "forge-msg-3",
            )),
            refused_marked(403, "forbidden", "org_not_party", "forge-msg"),
        ),
        case(
            "a preset label",
            s.create(&preset),
            refused_marked(400, "invalid", "reserved_label", "forge-msg"),
        ),
        case(
            "a citizen",
            citizen.create(&registration(
                "own-dev",
                "4001",
                "GLN-4001",
                "0404044001",
                "forge-msg-5",
            )),
            refused_marked(403, "forbidden", "not_a_station", "forge-msg"),
        ),
    ];
    verdict(&[run_cases(h, "foreign identity", cases).await]);
}

#[tokio::test]
async fn forbidden_interactions_are_refused_with_operation_outcome() {
    // A proxy of its own, so "the upstream saw nothing" is exact.
    let own = Harness::start("deny", Options::default());
    let h = &own;
    let s = station(h, "deny-dev", "5001", "GLN-5001");
    let batch = json!({"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"AuditEvent"}}]});
    let cases = vec![
        case(
            "_include",
            s.search("_include=AuditEvent:patient"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_revinclude",
            s.search("_revinclude=Provenance:target"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_include:iterate",
            s.search("_include:iterate=*"),
            invalid().because("refused_parameter"),
        ),
        case(
            "chain",
            s.search("patient.identifier=x"),
            invalid().because("chained"),
        ),
        case(
            "_has",
            s.search("_has:Provenance:target:agent=x"),
            invalid().because("reverse_chained"),
        ),
        case(
            "_filter",
            s.search("_filter=id%20eq%201"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_security",
            s.search("_security=urn:eds-proxy:label:cpr|1"),
            invalid().because("refused_parameter"),
        ),
        case(
            "compartment",
            s.get("Patient/1/AuditEvent"),
            forbidden().because("compartment"),
        ),
        case(
            "other type",
            s.get("Patient"),
            forbidden().because("resource_type"),
        ),
        case(
            "$everything",
            s.get("Patient/1/$everything"),
            forbidden().because("operation"),
        ),
        case(
            "history",
            s.get("AuditEvent/_history"),
            forbidden().because("history"),
        ),
        case(
            "batch",
            s.post_json("", &batch),
            forbidden().because("batch"),
        ),
        case(
            "transaction",
            s.post_json("/", &json!({"resourceType":"Bundle","type":"transaction"})),
            forbidden().because("batch"),
        ),
        case(
            "PUT",
            s.request("PUT", "AuditEvent/1")
                .header("Content-Type", FHIR_JSON)
                .body("{}"),
            method_not_allowed().because("write"),
        ),
        case(
            "PATCH",
            s.request("PATCH", "AuditEvent/1").body("[]"),
            method_not_allowed().because("write"),
        ),
        case(
            "DELETE",
            s.request("DELETE", "AuditEvent/1"),
            method_not_allowed().because("write"),
        ),
        case(
            "conditional create",
            s.post_json("AuditEvent", &json!({}))
                .header("If-None-Exist", "message-id=x"),
            forbidden().because("conditional_create"),
        ),
        case(
            "xml create",
            s.post("AuditEvent", Some("application/fhir+xml"), "<AuditEvent/>"),
            unsupported_media().because("registration_not_json"),
        ),
        case(
            "double slash",
            s.get("//AuditEvent"),
            invalid().because("dot_segment"),
        ),
    ];
    verdict(&[run_cases(h, "forbidden interactions", cases).await]);
}

#[tokio::test]
async fn reading_someone_elses_registration_is_404() {
    let h = harness();
    let s = station(h, "read-dev", "6001", "GLN-6001");
    let created = s
        .create(&registration(
            "read-dev",
            "6001",
            "GLN-6001",
            "0606066001",
            "read-msg-1",
        ))
        .expect(
            h,
            created().marked("read-msg-1", one("POST", "/fhir/AuditEvent")),
        )
        .await;
    let id = created.json["id"].as_str().unwrap();
    let read = format!("AuditEvent/{id}");
    let vread = format!("AuditEvent/{id}/_history/1");
    let own = h.caller("citizen-own", citizen_claims("0606066001"));
    let other = h.caller("citizen-other", citizen_claims("0707077001"));
    let other_station = station(h, "read-dev-2", "6002", "GLN-6002");
    let up = |rel: &str| one("GET", &format!("/fhir/{rel}"));
    let cases = vec![
        case(
            "control: the owner reads",
            own.get(&read),
            Expect::new(200, "AuditEvent", Seen::Nothing).marked(id, up(&read)),
        ),
        case(
            "another citizen reads",
            other.get(&read),
            not_found().marked(id, up(&read)),
        ),
        case(
            "another citizen vreads",
            other.get(&vread),
            not_found().marked(id, up(&vread)),
        ),
        case(
            "a citizen reads what does not exist",
            other.get("AuditEvent/does-not-exist"),
            not_found().marked("does-not-exist", up("AuditEvent/does-not-exist")),
        ),
        case(
            "another station reads",
            other_station.get(&read),
            not_found().marked(id, up(&read)),
        ),
    ];
    verdict(&[run_cases(h, "reading someone else's", cases).await]);
}

#[tokio::test]
async fn paging_links_are_signed_for_the_caller_only() {
    let h = harness();
    let s = station(h, "page-dev", "7001", "GLN-7001");
    for i in 0..5 {
        s.create(&registration(
            "page-dev",
            "7001",
            "GLN-7001",
            "0808088001",
            &format!("page-msg-{i}"),
        ))
        .expect(
            h,
            created().marked(&format!("page-msg-{i}"), one("POST", "/fhir/AuditEvent")),
        )
        .await;
    }
    let first = s
        .search("_count=2")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(first["entry"].as_array().unwrap().len(), 2);
    let next = next_link(&first).unwrap();
    assert!(
        next.starts_with(&format!("{}?_getpages=", h.base)),
        "{next}"
    );
    assert!(next.contains("_eds_sig="), "{next}");
    let mut seen = 2;
    let mut url = Some(next.clone());
    while let Some(u) = url {
        let page: Value = s.get_url(&u).send().await.unwrap().json().await.unwrap();
        seen += page["entry"].as_array().map_or(0, Vec::len);
        url = next_link(&page);
    }
    assert_eq!(seen, 5);

    let handle = url::Url::parse(&next)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "_getpages")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let thief = station(h, "page-thief", "7002", "GLN-7002");
    let unsigned = next.split("&_eds_sig=").next().unwrap().to_string();
    let cases = vec![
        case(
            "another station replays the link",
            thief.get_url(&next),
            refused_marked(403, "forbidden", "page_not_issued", &handle),
        ),
        case(
            "the owner without the signature",
            s.get_url(&unsigned),
            refused_marked(403, "forbidden", "page_unsigned", &handle),
        ),
    ];
    verdict(&[run_cases(h, "paging links", cases).await]);
}

/// The `next` link of a searchset, if any.
fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

#[tokio::test]
async fn http2_works_like_http1() {
    let h = harness();
    let s = station(h, "h2-dev", "8001", "GLN-8001").http2();
    s.search("message-id=h2-msg")
        .expect(
            h,
            answered(
                "Bundle",
                "h2-msg",
                "GET",
                "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Ch2-dev&message-id=h2-msg",
            )
            .h2(),
        )
        .await;
    s.search("_include=x&message-id=h2-refused")
        .expect(
            h,
            refused_marked(400, "invalid", "refused_parameter", "h2-refused").h2(),
        )
        .await;
}

#[tokio::test]
async fn metadata_advertises_only_what_is_allowed() {
    let h = harness();
    let v = h
        .anonymous("meta")
        .get("metadata")
        .expect(
            h,
            Expect::new(200, "CapabilityStatement", Seen::Nothing).marked("metadata", vec![]),
        )
        .await
        .json;
    assert_eq!(v["rest"][0]["resource"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let h = harness();
    let rogue_ca = eds_proxy::dev::pki::CertificateAuthority::new("rogue CA").unwrap();
    let rogue = Caller::new(
        &h.pki,
        h.port,
        rogue_ca.client("rogue", "evil").unwrap(),
        None,
    );
    assert!(rogue.get("metadata").send().await.is_err());
    // And no client certificate at all.
    let root = reqwest::Certificate::from_pem(h.pki.ca.cert.cert_pem.as_bytes()).unwrap();
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .build()
        .unwrap();
    assert!(anonymous.get(h.url("metadata")).send().await.is_err());
}

#[tokio::test]
async fn oversized_registration_is_413() {
    let h = harness();
    let s = station(h, "big-dev", "9001", "GLN-9001");
    let mut body = registration("big-dev", "9001", "GLN-9001", "0909099001", "big-msg");
    body["text"] = json!({"div": "x".repeat(100_000)});
    s.create(&body)
        .expect(h, too_large_or_reset().marked("big-msg", vec![]))
        .await;
}

#[tokio::test]
async fn admin_listener_serves_metrics_and_health() {
    let h = harness();
    h.anonymous("metrics")
        .search("message-id=admin-msg")
        .expect(h, no_token().marked("admin-msg", vec![]))
        .await;
    let plain = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", h.admin_port);
    assert_eq!(
        plain
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        plain
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = plain
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("eds_proxy_requests_total{"), "{text}");
    assert!(
        text.contains("eds_proxy_token_failures_total{reason=\"missing\"}"),
        "{text}"
    );
}
