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

struct Station {
    client: reqwest::Client,
    token: String,
}

fn station(h: &Harness, device: &str, sor: &str, gln: &str) -> Station {
    let cert = h.pki.client(device);
    Station {
        client: h.client(&cert),
        token: h.token(&cert, station_claims(device, sor, gln)),
    }
}

async fn create(s: &Station, h: &Harness, body: &Value) -> reqwest::Response {
    s.client
        .post(h.url("AuditEvent"))
        .bearer_auth(&s.token)
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn station_registers_and_the_upstream_gets_labels_and_no_client_headers() {
    let h = harness();
    let s = station(h, "reg-dev-1", "1001", "GLN-1001");
    let resp = s
        .client
        .post(h.url("AuditEvent"))
        .bearer_auth(&s.token)
        .header("Content-Type", "application/fhir+json")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=1.2.3.4")
        .header("Prefer", "handling=lenient")
        .header("Cookie", "a=b")
        .body(registration("reg-dev-1", "1001", "GLN-1001", "0101011001", "reg-msg-1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&h.base), "{location}");
    let seen = h.upstream.requests_matching("reg-msg-1");
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/fhir/AuditEvent");
    assert_eq!(r.header("x-forwarded-host"), Some("localhost"));
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
    assert_eq!(r.header("x-forwarded-prefix"), Some("/fhir"));
    for absent in ["authorization", "forwarded", "prefer", "cookie"] {
        assert!(r.header(absent).is_none(), "{absent} was forwarded");
    }
    let body: Value = serde_json::from_slice(&r.body).unwrap();
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
    let resp = s
        .client
        .get(h.url("AuditEvent?message-id=search-msg-1&_count=500"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.requests_matching("search-msg-1");
    assert_eq!(
        seen[0].target,
        "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Csearch-dev-1&message-id=search-msg-1&_count=50"
    );

    let cert = h.pki.client("citizen-search");
    let citizen = h.client(&cert);
    let token = h.token(&cert, citizen_claims("0202022002"));
    let resp = citizen
        .get(h.url("AuditEvent?message-id=search-msg-2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        h.upstream.requests_matching("search-msg-2")[0].target,
        "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Acpr%7C0202022002&message-id=search-msg-2"
    );

    let cert = h.pki.client("supporter-search");
    let supporter = h.client(&cert);
    let token = h.token(&cert, supporter_claims("11111111"));
    let resp = supporter
        .post(h.url("AuditEvent/_search"))
        .bearer_auth(&token)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("message-id=search-msg-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.requests_matching("search-msg-3");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].target,
        "/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Asor%7C698141000016008%2Curn%3Aeds-proxy%3Alabel%3Asor%7C555555555&message-id=search-msg-3"
    );
}

#[tokio::test]
async fn token_failures_are_401_with_invalid_token() {
    let h = harness();
    let cert_a = h.pki.client("tok-a");
    let cert_b = h.pki.client("tok-b");
    let client_b = h.client(&cert_b);
    let client_a = h.client(&cert_a);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let base = station_claims("tok-dev", "3001", "GLN-3001");
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims_for_a = {
        let mut c = base.clone();
        c["iss"] = json!(ISSUER);
        c["aud"] = json!(AUDIENCE);
        c["exp"] = json!(now + 600);
        c["cnf"] = json!({"x5t#S256": cert_a.thumbprint()});
        c
    };
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
    let cases: Vec<(&str, &reqwest::Client, Option<String>)> = vec![
        ("no token", &client_a, None),
        (
            "bound to A, presented with B",
            &client_b,
            Some(h.token(&cert_a, base.clone())),
        ),
        (
            "expired",
            &client_a,
            Some(h.token(&cert_a, with(json!({"exp": now - 3600})))),
        ),
        (
            "wrong aud",
            &client_a,
            Some(h.token(&cert_a, with(json!({"aud": "other"})))),
        ),
        (
            "wrong iss",
            &client_a,
            Some(h.token(&cert_a, with(json!({"iss": "https://evil.test"})))),
        ),
        (
            "no cnf",
            &client_a,
            Some(h.token(&cert_a, with(json!({"cnf": null})))),
        ),
        ("alg none", &client_a, Some(none)),
        ("HS256 with the public key", &client_a, Some(hs256)),
        ("garbage", &client_a, Some("abc.def.ghi".into())),
    ];
    for (name, client, token) in cases {
        let mut req = client.get(h.url("AuditEvent?message-id=tok-msg"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let (status, code) = outcome_code(resp).await;
        assert_eq!((status, code.as_str()), (401, "login"), "{name}");
        let www = www.unwrap_or_else(|| panic!("{name}: no WWW-Authenticate"));
        if name != "no token" {
            assert!(
                www.starts_with("Bearer error=\"invalid_token\""),
                "{name}: {www}"
            );
        }
    }
    assert!(h.upstream.requests_matching("tok-msg").is_empty());
}

#[tokio::test]
async fn registration_with_foreign_identity_is_403_and_never_reaches_upstream() {
    let h = harness();
    let s = station(h, "own-dev", "4001", "GLN-4001");
    let cases = [
        (
            "other device",
            registration(
                "someone-else",
                "4001",
                "GLN-4001",
                "0404044001",
                "forge-msg-1",
            ),
        ),
        (
            "other SOR",
            registration("own-dev", "4999", "GLN-4001", "0404044001", "forge-msg-2"),
        ),
        (
            "other GLN",
            registration("own-dev", "4001", "GLN-4999", "0404044001", "forge-msg-3"),
        ),
    ];
    for (name, body) in cases {
        let (status, code) = outcome_code(create(&s, h, &body).await).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{name}");
    }
    let mut preset = registration("own-dev", "4001", "GLN-4001", "0404044001", "forge-msg-4");
    preset["meta"]["security"] =
        json!([{"system": "urn:eds-proxy:label:cpr", "code": "0000000000"}]);
    let (status, _) = outcome_code(create(&s, h, &preset).await).await;
    assert_eq!(status, 400);
    let citizen_cert = h.pki.client("citizen-create");
    let citizen = Station {
        client: h.client(&citizen_cert),
        token: h.token(&citizen_cert, citizen_claims("0404044001")),
    };
    let (status, _) = outcome_code(
        create(
            &citizen,
            h,
            &registration("own-dev", "4001", "GLN-4001", "0404044001", "forge-msg-5"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        h.upstream.requests_matching("forge-msg").is_empty(),
        "a refused registration reached the upstream"
    );
}

#[tokio::test]
async fn forbidden_interactions_are_refused_with_operation_outcome() {
    // A proxy of its own, so "the upstream saw nothing" is exact.
    let own = Harness::start("deny", Options::default());
    let h = &own;
    let s = station(h, "deny-dev", "5001", "GLN-5001");
    let get = |path: &str| s.client.get(h.url(path)).bearer_auth(&s.token);
    let requests = vec![
        ("_include", get("AuditEvent?_include=AuditEvent:patient"), 400),
        ("_revinclude", get("AuditEvent?_revinclude=Provenance:target"), 400),
        ("_include:iterate", get("AuditEvent?_include:iterate=*"), 400),
        ("chain", get("AuditEvent?patient.identifier=x"), 400),
        ("_has", get("AuditEvent?_has:Provenance:target:agent=x"), 400),
        ("_filter", get("AuditEvent?_filter=id%20eq%201"), 400),
        ("_security", get("AuditEvent?_security=urn:eds-proxy:label:cpr|1"), 400),
        ("compartment", get("Patient/1/AuditEvent"), 403),
        ("other type", get("Patient"), 403),
        ("$everything", get("Patient/1/$everything"), 403),
        ("history", get("AuditEvent/_history"), 403),
        ("batch", s.client.post(h.base.clone()).bearer_auth(&s.token).header("Content-Type", "application/fhir+json").body(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"AuditEvent"}}]}"#), 403),
        ("transaction", s.client.post(format!("{}/", h.base)).bearer_auth(&s.token).header("Content-Type", "application/fhir+json").body(r#"{"resourceType":"Bundle","type":"transaction"}"#), 403),
        ("PUT", s.client.put(h.url("AuditEvent/1")).bearer_auth(&s.token).header("Content-Type", "application/fhir+json").body("{}"), 405),
        ("PATCH", s.client.patch(h.url("AuditEvent/1")).bearer_auth(&s.token).body("[]"), 405),
        ("DELETE", s.client.delete(h.url("AuditEvent/1")).bearer_auth(&s.token), 405),
        ("conditional create", s.client.post(h.url("AuditEvent")).bearer_auth(&s.token).header("Content-Type", "application/fhir+json").header("If-None-Exist", "message-id=x").body("{}"), 403),
        ("xml create", s.client.post(h.url("AuditEvent")).bearer_auth(&s.token).header("Content-Type", "application/fhir+xml").body("<AuditEvent/>"), 415),
        ("double slash", get("/AuditEvent"), 400),
    ];
    for (name, req, expected) in requests {
        let (status, _) = outcome_code(req.send().await.unwrap()).await;
        assert_eq!(status, expected, "{name}");
    }
    assert_eq!(
        h.upstream.request_count(),
        0,
        "a refused request reached the upstream"
    );
}

#[tokio::test]
async fn reading_someone_elses_registration_is_404() {
    let h = harness();
    let s = station(h, "read-dev", "6001", "GLN-6001");
    let resp = create(
        &s,
        h,
        &registration("read-dev", "6001", "GLN-6001", "0606066001", "read-msg-1"),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap();

    let own_cert = h.pki.client("citizen-own");
    let own = h.client(&own_cert);
    let resp = own
        .get(h.url(&format!("AuditEvent/{id}")))
        .bearer_auth(h.token(&own_cert, citizen_claims("0606066001")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let other_cert = h.pki.client("citizen-other");
    let other = h.client(&other_cert);
    let token = h.token(&other_cert, citizen_claims("0707077001"));
    for path in [
        format!("AuditEvent/{id}"),
        format!("AuditEvent/{id}/_history/1"),
    ] {
        let (status, code) = outcome_code(
            other
                .get(h.url(&path))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (404, "not-found"));
    }
    let (status, _) = outcome_code(
        other
            .get(h.url("AuditEvent/does-not-exist"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let other_station = station(h, "read-dev-2", "6002", "GLN-6002");
    let (status, _) = outcome_code(
        other_station
            .client
            .get(h.url(&format!("AuditEvent/{id}")))
            .bearer_auth(&other_station.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn paging_links_are_signed_for_the_caller_only() {
    let h = harness();
    let s = station(h, "page-dev", "7001", "GLN-7001");
    for i in 0..5 {
        let r = create(
            &s,
            h,
            &registration(
                "page-dev",
                "7001",
                "GLN-7001",
                "0808088001",
                &format!("page-msg-{i}"),
            ),
        )
        .await;
        assert_eq!(r.status(), 201);
    }
    let first: Value = s
        .client
        .get(h.url("AuditEvent?_count=2"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["entry"].as_array().unwrap().len(), 2);
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        next.starts_with(&format!("{}?_getpages=", h.base)),
        "{next}"
    );
    assert!(next.contains("_eds_sig="), "{next}");
    let mut seen = 2;
    let mut url = Some(next.clone());
    while let Some(u) = url {
        let page: Value = s
            .client
            .get(&u)
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen += page["entry"].as_array().map_or(0, Vec::len);
        url = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, 5);

    let thief = station(h, "page-thief", "7002", "GLN-7002");
    let (status, _) = outcome_code(
        thief
            .client
            .get(&next)
            .bearer_auth(&thief.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    let unsigned = next.split("&_eds_sig=").next().unwrap().to_string();
    let (status, _) = outcome_code(
        s.client
            .get(&unsigned)
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn http2_works_like_http1() {
    let h = harness();
    let cert = h.pki.client("h2-dev");
    let client = h.client_with(&cert, false);
    let token = h.token(&cert, station_claims("h2-dev", "8001", "GLN-8001"));
    let resp = client
        .get(h.url("AuditEvent?message-id=h2-msg"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(h.url("AuditEvent?_include=x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn metadata_advertises_only_what_is_allowed() {
    let h = harness();
    let client = h.client(&h.pki.client("meta"));
    let v: Value = client
        .get(h.url("metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["resourceType"], "CapabilityStatement");
    assert_eq!(v["rest"][0]["resource"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let h = harness();
    let rogue_ca = eds_proxy::dev::pki::CertificateAuthority::new("rogue CA").unwrap();
    let rogue = rogue_ca.client("rogue", "evil").unwrap();
    let client = h.client(&rogue);
    assert!(client.get(h.url("metadata")).send().await.is_err());
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
    let (status, code) = outcome_code(create(&s, h, &body).await).await;
    assert_eq!((status, code.as_str()), (413, "too-costly"));
    assert!(h.upstream.requests_matching("big-msg").is_empty());
}

#[tokio::test]
async fn admin_listener_serves_metrics_and_health() {
    let h = harness();
    let tls = h.client(&h.pki.client("metrics"));
    assert_eq!(
        tls.get(h.url("AuditEvent")).send().await.unwrap().status(),
        401
    );
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
