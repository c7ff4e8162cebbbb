//! Issue 11: a FHIR client never notices the proxy where security does not demand it. Each
//! test drives the real proxy (real mTLS, HTTP/1.1 and HTTP/2) in front of the recording
//! upstream and asserts exact outcomes: status, OperationOutcome issue code, the headers a
//! client library reads, and what the FHIR server saw. The same calls with HAPI's own Java
//! client against real HAPI: tests/client_compat.rs.

#![cfg(feature = "dev")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Read;

use common::upstream::LAST_MODIFIED;
use common::*;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const DEVICE: &str = "Cura-EUA";
const SOR: &str = "937961000016000";
const GLN: &str = "GLN-1234";
const FORM: &str = "application/x-www-form-urlencoded";

struct Caller {
    client: Client,
    h2: Client,
    token: String,
    base: String,
}

impl Caller {
    fn station(h: &Harness, name: &str) -> Caller {
        let cert = h.pki.client(name);
        Caller {
            client: h.client_with(&cert, true),
            h2: h.client_with(&cert, false),
            token: h.token(&cert, station_claims(DEVICE, SOR, GLN)),
            base: h.base.clone(),
        }
    }
    fn at(&self, method: &str, rel: &str) -> reqwest::RequestBuilder {
        self.on(&self.client, method, rel)
    }
    fn on(&self, c: &Client, method: &str, rel: &str) -> reqwest::RequestBuilder {
        c.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{rel}", self.base),
        )
        .bearer_auth(&self.token)
    }
    /// Register the IG example; its id.
    async fn create(&self) -> String {
        let r = self
            .at("POST", "/AuditEvent")
            .header("Content-Type", "application/fhir+json")
            .body(example_registration().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_string()
    }
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Status, OperationOutcome issue code (or resourceType) and the body.
async fn outcome(r: Response) -> (StatusCode, String, Vec<u8>) {
    let status = r.status();
    let body = r.bytes().await.unwrap().to_vec();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = if v["resourceType"] == "OperationOutcome" {
        v["issue"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        v["resourceType"].as_str().unwrap_or_default().to_string()
    };
    (status, code, body)
}

/// HEAD is answered like GET without a body, on HTTP/1.1 and HTTP/2 (the refusal's body on
/// an HTTP/2 HEAD stream was a stream reset), refusals included; the FHIR server sees a GET.
#[tokio::test]
async fn head_is_get_without_a_body_on_both_protocols() {
    let h = Harness::start("compat-head", Options::default());
    let s = Caller::station(&h, "compat-head");
    let id = s.create().await;
    for (proto, c) in [("h1", &s.client), ("h2", &s.h2)] {
        let want_version = if proto == "h1" {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        // Capabilities, token-free.
        let get = c.get(h.url("metadata")).send().await.unwrap();
        let get_len = get.bytes().await.unwrap().len();
        let head = c.head(h.url("metadata")).send().await.unwrap();
        assert_eq!(head.version(), want_version);
        assert_eq!(head.status(), 200, "{proto}");
        assert_eq!(
            header(&head, "content-length"),
            Some(get_len.to_string()),
            "{proto}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{proto}");
        // A read: checked like a GET, answered without the body.
        let before = h.upstream.requests_matching(&id).len();
        let head = s
            .on(c, "HEAD", &format!("/AuditEvent/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "{proto}");
        assert_eq!(header(&head, "etag").as_deref(), Some("W/\"1\""));
        assert!(head.bytes().await.unwrap().is_empty(), "{proto}");
        let seen = h.upstream.requests_matching(&id);
        assert_eq!(seen.len(), before + 1);
        assert_eq!(seen.last().unwrap().method, "GET", "{proto}");
        // Refusals: status and headers, no body, no stream reset.
        for (rel, status, allow) in [
            ("/AuditEvent?_include=*", 400, None),
            ("/Patient", 403, None),
            ("/AuditEvent/no-such-id", 404, None),
        ] {
            let r = s.on(c, "HEAD", rel).send().await.unwrap();
            assert_eq!(r.status(), status, "{proto} HEAD {rel}");
            assert_eq!(header(&r, "allow"), allow, "{proto} HEAD {rel}");
            assert!(r.bytes().await.unwrap().is_empty(), "{proto} HEAD {rel}");
        }
        // Without a token: 401 with its challenge, no body.
        let r = c.head(h.url("AuditEvent")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{proto}");
        assert_eq!(header(&r, "www-authenticate").as_deref(), Some("Bearer"));
        assert!(r.bytes().await.unwrap().is_empty());
    }
}

/// `/metadata` takes `_format`, `_pretty`, `_summary` and `mode` without a token (nothing is
/// forwarded, the statement is the proxy's own); anything else needs a token and is 400.
#[tokio::test]
async fn metadata_parameters_and_capability_statement() {
    let h = Harness::start("compat-meta", Options::default());
    let s = Caller::station(&h, "compat-meta");
    let c = &s.client;
    for q in [
        "_format=json",
        "_format=application/fhir%2Bjson",
        "_pretty=true",
        "_summary=true",
        "mode=full",
        "mode=normal&_format=json&_pretty=false",
    ] {
        let (status, code, _) =
            outcome(c.get(h.url(&format!("metadata?{q}"))).send().await.unwrap()).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (200, "CapabilityStatement"),
            "{q}"
        );
    }
    for (q, reason) in [
        ("mode=terminology", "capabilities_mode"),
        ("_format=xml", "format"),
        ("_summary=count", "summary"),
        ("_elements=id", "interaction_parameter"),
    ] {
        let r = c.get(h.url(&format!("metadata?{q}"))).send().await.unwrap();
        assert_eq!(r.status(), 401, "{q} without a token");
        let (status, code, body) =
            outcome(s.at("GET", &format!("/metadata?{q}")).send().await.unwrap()).await;
        assert_eq!((status.as_u16(), code.as_str()), (400, "invalid"), "{q}");
        let text = String::from_utf8_lossy(&body).to_string();
        assert!(!text.is_empty(), "{reason}");
    }
    // Accept: XML only → 406 with an OperationOutcome, token or not.
    let (status, code, _) = outcome(
        c.get(h.url("metadata"))
            .header("Accept", "application/fhir+xml")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), code.as_str()), (406, "not-supported"));
    // The statement: no empty arrays, every allowed parameter with its definition,
    // conditional reads offered.
    let v: Value = c
        .get(h.url("metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!v.to_string().contains("[]"), "{v}");
    let ae = &v["rest"][0]["resource"][0];
    assert_eq!(ae["conditionalRead"], "full-support");
    let params: Vec<&str> = ae["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, eds_proxy::fhir::query::SEARCH_PARAMETERS);
    assert!(h.upstream.requests_matching("metadata").is_empty());
}

/// 405s say what the path allows; GET `_search`, an empty `POST _search` without a
/// Content-Type, media types in any case and the legacy `application/json+fhir` all work.
#[tokio::test]
async fn methods_and_media_types() {
    let h = Harness::start("compat-methods", Options::default());
    let s = Caller::station(&h, "compat-methods");
    for (method, rel, allow, reason) in [
        ("POST", "/metadata", "GET, HEAD", "metadata_get_only"),
        ("DELETE", "/AuditEvent/1", "GET, HEAD", "write"),
        (
            "OPTIONS",
            "/AuditEvent/1/_history/1",
            "GET, HEAD",
            "method_on_instance",
        ),
        (
            "PUT",
            "/AuditEvent?_id=1",
            "GET, HEAD, POST",
            "conditional_write",
        ),
        (
            "OPTIONS",
            "/AuditEvent",
            "GET, HEAD, POST",
            "method_on_type",
        ),
        (
            "PUT",
            "/AuditEvent/_search",
            "GET, HEAD, POST",
            "search_post_only",
        ),
    ] {
        let r = s.at(method, rel).send().await.unwrap();
        assert_eq!(
            header(&r, "allow").as_deref(),
            Some(allow),
            "{method} {rel} ({reason})"
        );
        let (status, code, _) = outcome(r).await;
        assert_eq!((status.as_u16(), code.as_str()), (405, "not-supported"));
    }
    let dev = "_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7CCura-EUA";
    let seen_last = || {
        let r = h.upstream.requests();
        let last = r.last().unwrap();
        (last.method.clone(), last.target.clone())
    };
    let want = (
        "GET".to_string(),
        format!("/fhir/AuditEvent?{dev}&message-id=m1"),
    );
    let searches = [
        (
            "GET _search",
            s.at("GET", "/AuditEvent/_search?message-id=m1"),
        ),
        (
            "POST _search, empty body, no Content-Type",
            s.at("POST", "/AuditEvent/_search?message-id=m1"),
        ),
        (
            "POST _search, form in another case",
            s.at("POST", "/AuditEvent/_search")
                .header(
                    "Content-Type",
                    "Application/X-WWW-Form-Urlencoded; Charset=UTF-8",
                )
                .body("message-id=m1"),
        ),
        (
            "_totalMethod dropped",
            s.at(
                "GET",
                "/AuditEvent?message-id=m1&_totalMethod=count&_pretty=true",
            ),
        ),
    ];
    for (what, req) in searches {
        let (status, code, _) = outcome(req.send().await.unwrap()).await;
        assert_eq!((status.as_u16(), code.as_str()), (200, "Bundle"), "{what}");
        assert_eq!(seen_last(), want, "{what}");
    }
    // A body without a form media type is still refused.
    let (status, code, _) = outcome(
        s.at("POST", "/AuditEvent/_search")
            .body("message-id=m1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), code.as_str()), (415, "not-supported"));
    for ct in [
        "application/json+fhir",
        "Application/FHIR+JSON; charset=UTF-8",
    ] {
        let (status, code, _) = outcome(
            s.at("POST", "/AuditEvent")
                .header("Content-Type", ct)
                .body(example_registration().to_string())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (201, "AuditEvent"),
            "{ct}"
        );
    }
    let _ = FORM;
}

/// Content-Location and Last-Modified reach the client rebuilt on the proxy's base; Prefer
/// shapes the create answer after the check; conditional reads are answered by the proxy
/// after the label check (304 only for the caller's record).
#[tokio::test]
async fn headers_prefer_and_conditional_reads() {
    let h = Harness::start("compat-headers", Options::default());
    let s = Caller::station(&h, "compat-headers");
    let r = s
        .at("POST", "/AuditEvent")
        .header("Content-Type", "application/fhir+json")
        .body(example_registration().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = header(&r, "location").unwrap();
    assert!(location.starts_with(&format!("{}/AuditEvent/", h.base)));
    assert_eq!(header(&r, "content-location"), Some(location.clone()));
    assert_eq!(header(&r, "last-modified").as_deref(), Some(LAST_MODIFIED));
    let id: String = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .into();
    // Prefer on create.
    for (prefer, status, code) in [
        ("return=minimal", 201, ""),
        ("return=OperationOutcome", 201, "informational"),
        ("return=representation", 201, "AuditEvent"),
    ] {
        let r = s
            .at("POST", "/AuditEvent")
            .header("Content-Type", "application/fhir+json")
            .header("Prefer", prefer)
            .body(example_registration().to_string())
            .send()
            .await
            .unwrap();
        assert!(header(&r, "location").is_some(), "{prefer}");
        let (got, c, body) = outcome(r).await;
        assert_eq!((got.as_u16(), c.as_str()), (status, code), "{prefer}");
        if prefer == "return=minimal" {
            assert!(body.is_empty());
        }
        let last = h.upstream.requests().last().unwrap().clone();
        assert_eq!(last.header("prefer"), None, "Prefer is never forwarded");
    }
    // Reads pass Content-Location on the proxy's base.
    let r = s
        .at("GET", &format!("/AuditEvent/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-location"),
        Some(format!("{}/AuditEvent/{id}/_history/1", h.base))
    );
    assert_eq!(header(&r, "last-modified").as_deref(), Some(LAST_MODIFIED));
    // Conditional reads.
    let read = |v: Option<&str>, name: &'static str, value: &'static str| {
        let rel = match v {
            Some(v) => format!("/AuditEvent/{id}/_history/{v}"),
            None => format!("/AuditEvent/{id}"),
        };
        s.at("GET", &rel).header(name, value)
    };
    let cases = [
        (read(None, "If-None-Match", "W/\"1\""), 304),
        (read(None, "If-None-Match", "\"1\""), 304),
        (read(Some("1"), "If-None-Match", "*"), 304),
        (read(None, "If-None-Match", "W/\"2\""), 200),
        (
            read(None, "If-Modified-Since", "Wed, 02 Dec 2026 10:00:00 GMT"),
            304,
        ),
        (
            read(None, "If-Modified-Since", "Mon, 30 Nov 2026 10:00:00 GMT"),
            200,
        ),
        (read(None, "If-Modified-Since", "not a date"), 200),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), want, "case {i}");
        assert_eq!(header(&r, "etag").as_deref(), Some("W/\"1\""), "case {i}");
        let body = r.bytes().await.unwrap();
        assert_eq!(body.is_empty(), want == 304, "case {i}");
        let last = h.upstream.requests().last().unwrap().clone();
        assert_eq!(last.method, "GET");
        assert_eq!(last.header("if-none-match"), None, "never forwarded");
        assert_eq!(last.header("if-modified-since"), None, "never forwarded");
    }
    // Someone else's record, or none: 404 whatever the validators say.
    let mut other = example_registration();
    other["meta"] =
        json!({"security": [{"system": "urn:eds-proxy:label:device-id", "code": "Other-EUA"}]});
    let other_id = h.upstream.seed(other);
    for rel in [
        format!("/AuditEvent/{other_id}"),
        "/AuditEvent/nobody".to_string(),
    ] {
        for (name, value) in [
            ("If-None-Match", "*"),
            ("If-Modified-Since", "Wed, 02 Dec 2099 10:00:00 GMT"),
        ] {
            let (status, code, _) =
                outcome(s.at("GET", &rel).header(name, value).send().await.unwrap()).await;
            assert_eq!(
                (status.as_u16(), code.as_str()),
                (404, "not-found"),
                "{rel} {name}"
            );
        }
    }
    // Write preconditions stay refused.
    let (status, code, _) = outcome(
        s.at("GET", &format!("/AuditEvent/{id}"))
            .header("If-Match", "W/\"1\"")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), code.as_str()), (403, "forbidden"));
}

/// gzip when asked for, after the check: the decompressed answer is exactly the uncompressed
/// one; small answers and clients that do not ask get identity.
#[tokio::test]
async fn gzip_after_the_check() {
    let h = Harness::start("compat-gzip", Options::default());
    let s = Caller::station(&h, "compat-gzip");
    for _ in 0..6 {
        s.create().await;
    }
    let rel = "/AuditEvent?_count=6&_sort=_id";
    let plain = s.at("GET", rel).send().await.unwrap();
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(header(&plain, "vary").as_deref(), Some("Accept-Encoding"));
    let plain = plain.bytes().await.unwrap().to_vec();
    assert!(plain.len() > eds_proxy::fhir::compat::GZIP_MIN_BYTES);
    for (proto, c) in [("h1", &s.client), ("h2", &s.h2)] {
        let r = s
            .on(c, "GET", rel)
            .header("Accept-Encoding", "br;q=1, gzip;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "content-encoding").as_deref(),
            Some("gzip"),
            "{proto}"
        );
        let zipped = r.bytes().await.unwrap().to_vec();
        assert!(zipped.len() < plain.len());
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(zipped.as_slice())
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain, "{proto}");
    }
    let last = h.upstream.requests().last().unwrap().clone();
    assert_eq!(last.header("accept-encoding"), Some("identity"));
    // A small answer (an OperationOutcome) is never compressed.
    let r = s
        .at("GET", "/Patient")
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(r.status(), 403);
}

/// Two pipelined HTTP/1.1 requests: the first is answered, then the connection is closed (a
/// client retries the second on a new connection rather than waiting for it).
#[tokio::test]
async fn pipelined_requests_close_after_the_first_answer() {
    let h = Harness::start("compat-pipeline", Options::default());
    let cert = h.pki.client("compat-pipeline");
    let connector = raw::tls_connector(&h.pki.ca.cert.cert_der, &cert);
    let mut tls = raw::connect(h.port, &connector).await;
    let one = "GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tls.write_all(format!("{one}{one}").as_bytes())
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let (bytes, closed) = raw::read_answers(&mut tls).await;
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
    assert!(closed, "the connection stays open after the first answer");
    // One request alone keeps the connection.
    let mut tls = raw::connect(h.port, &connector).await;
    tls.write_all(one.as_bytes()).await.unwrap();
    let (bytes, closed) = raw::read_answers(&mut tls).await;
    assert_eq!(
        String::from_utf8_lossy(&bytes)
            .matches("HTTP/1.1 200")
            .count(),
        1
    );
    assert!(!closed);
}
