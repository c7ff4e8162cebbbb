//! Issue 11: a FHIR client never notices the proxy where security does not demand it. Each
//! test drives the real proxy (real mTLS, HTTP/1.1 and HTTP/2) in front of the recording
//! upstream and asserts exact outcomes: status, OperationOutcome issue code, the headers a
//! client library reads, the reason every refusal was counted under, and what the FHIR server
//! saw (one `Caller`, `expect` from tests/common). The same calls with HAPI's own Java
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

use common::expect::Seen;
use common::upstream::LAST_MODIFIED;
use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const DEVICE: &str = "Cura-EUA";
/// The station's constraint, first in every search it sends.
const DEV: &str = "_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7CCura-EUA";

/// The station of the IG example (device `Cura-EUA`) on `h`, over HTTP/1.1.
fn station(h: &Harness, name: &str) -> Caller {
    h.station(name, DEVICE)
}

/// The same caller on `proto` (`h1` or `h2`), and `e` with the answer's HTTP version.
fn on(c: &Caller, proto: &str) -> Caller {
    if proto == "h2" {
        c.clone().http2()
    } else {
        c.clone()
    }
}
fn version(e: Expect, proto: &str) -> Expect {
    if proto == "h2" {
        e.h2()
    } else {
        e
    }
}

/// The proxy's own answer, nothing forwarded: 200 with `resource_type` ("" for HEAD).
fn answered(resource_type: &'static str) -> Expect {
    Expect::new(200, resource_type, Seen::Nothing)
}

/// Register the IG example; its id.
async fn registered(h: &Harness, s: &Caller) -> String {
    let a = s.create(&example_registration()).expect(h, created()).await;
    a.json["id"].as_str().unwrap().to_string()
}

/// HEAD is answered like GET without a body, on HTTP/1.1 and HTTP/2 (the refusal's body on
/// an HTTP/2 HEAD stream was a stream reset), refusals included; the FHIR server sees a GET.
#[tokio::test]
async fn head_is_get_without_a_body_on_both_protocols() {
    let h = Harness::start("compat-head", Options::default());
    let station = station(&h, "compat-head");
    let id = registered(&h, &station).await;
    for proto in ["h1", "h2"] {
        let s = on(&station, proto);
        let anonymous = s.clone().without_token();
        // Capabilities, token-free.
        let get = anonymous
            .get("/metadata")
            .expect(&h, version(answered("CapabilityStatement"), proto))
            .await;
        let head = anonymous
            .request("HEAD", "/metadata")
            .expect(&h, version(answered(""), proto))
            .await;
        assert_eq!(
            head.header("content-length"),
            Some(get.text.len().to_string().as_str()),
            "{proto}"
        );
        assert!(head.text.is_empty(), "{proto}");
        // A read: checked like a GET, answered without the body.
        let head = s
            .request("HEAD", &format!("/AuditEvent/{id}"))
            .expect(
                &h,
                version(
                    upstream(200, "", "GET", format!("/fhir/AuditEvent/{id}")),
                    proto,
                ),
            )
            .await;
        assert_eq!(head.header("etag"), Some("W/\"1\""), "{proto}");
        assert!(head.text.is_empty(), "{proto}");
        // Refusals: status, reason and headers, no body, no stream reset.
        for (rel, e) in [
            (
                "/AuditEvent?_include=*",
                refused(400, "").because("refused_parameter"),
            ),
            ("/Patient", refused(403, "").because("resource_type")),
            (
                "/AuditEvent/no-such-id",
                upstream(404, "", "GET", "/fhir/AuditEvent/no-such-id").because("not_found"),
            ),
        ] {
            let a = s.request("HEAD", rel).expect(&h, version(e, proto)).await;
            assert_eq!(a.header("allow"), None, "{proto} HEAD {rel}");
            assert!(a.text.is_empty(), "{proto} HEAD {rel}");
        }
        // Without a token: 401 with its challenge, no body.
        let a = anonymous
            .request("HEAD", "/AuditEvent")
            .expect(
                &h,
                version(refused(401, "").www("Bearer").because("missing"), proto),
            )
            .await;
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{proto}");
        assert!(a.text.is_empty(), "{proto}");
    }
}

/// `/metadata` takes `_format`, `_pretty`, `_summary` and `mode` without a token (nothing is
/// forwarded, the statement is the proxy's own); anything else needs a token and is 400.
#[tokio::test]
async fn metadata_parameters_and_capability_statement() {
    let h = Harness::start("compat-meta", Options::default());
    let s = station(&h, "compat-meta");
    let anonymous = s.clone().without_token();
    for q in [
        "_format=json",
        "_format=application/fhir%2Bjson",
        // An unescaped `+` (decoded as a space) and a fhirVersion parameter, as HAPI takes them.
        "_format=application/fhir+json",
        "_format=application/fhir%2Bjson;%20fhirVersion=4.0",
        "_pretty=true",
        "_summary=true",
        "mode=full",
        "mode=normal&_format=json&_pretty=false",
    ] {
        anonymous
            .get(&format!("/metadata?{q}"))
            .expect(&h, answered("CapabilityStatement"))
            .await;
    }
    for (q, reason) in [
        ("mode=terminology", "capabilities_mode"),
        ("_format=xml", "format"),
        ("_summary=count", "summary"),
        ("_elements=id", "interaction_parameter"),
    ] {
        let rel = format!("/metadata?{q}");
        anonymous.get(&rel).expect(&h, no_token()).await;
        s.get(&rel).expect(&h, invalid().because(reason)).await;
    }
    // Accept: XML only → 406 with an OperationOutcome, token or not.
    for c in [&anonymous, &s] {
        c.get("/metadata")
            .header("Accept", "application/fhir+xml")
            .expect(&h, refused(406, "not-supported").because("not_acceptable"))
            .await;
    }
    // The statement: no empty arrays, every allowed parameter with its definition,
    // conditional reads offered.
    let v = anonymous
        .get("/metadata")
        .expect(&h, answered("CapabilityStatement"))
        .await
        .json;
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
    let s = station(&h, "compat-methods");
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
        let a = s
            .request(method, rel)
            .expect(&h, method_not_allowed().because(reason))
            .await;
        assert_eq!(a.header("allow"), Some(allow), "{method} {rel} ({reason})");
    }
    let searches = [
        ("GET _search", s.get("/AuditEvent/_search?message-id=m1")),
        (
            "POST _search, empty body, no Content-Type",
            s.request("POST", "/AuditEvent/_search?message-id=m1"),
        ),
        (
            "POST _search, form in another case",
            s.post(
                "/AuditEvent/_search",
                Some("Application/X-WWW-Form-Urlencoded; Charset=UTF-8"),
                "message-id=m1",
            ),
        ),
        (
            "_totalMethod, _pretty and _format dropped",
            s.search("message-id=m1&_totalMethod=count&_pretty=true&_format=application/fhir+json"),
        ),
    ];
    for (what, req) in searches {
        let (problems, _) = check(&h, req, &search(DEV, "message-id=m1")).await;
        assert!(problems.is_empty(), "{what}: {}", problems.join("; "));
    }
    // A body without a form media type is still refused.
    s.post("/AuditEvent/_search", None, "message-id=m1")
        .expect(&h, unsupported_media().because("search_not_form"))
        .await;
    for ct in [
        "application/json+fhir",
        "Application/FHIR+JSON; charset=UTF-8",
    ] {
        let (problems, _) = check(
            &h,
            s.post("/AuditEvent", Some(ct), example_registration().to_string()),
            &created(),
        )
        .await;
        assert!(problems.is_empty(), "{ct}: {}", problems.join("; "));
    }
}

/// Content-Location and Last-Modified reach the client rebuilt on the proxy's base; Prefer
/// shapes the create answer after the check; conditional reads are answered by the proxy
/// after the label check (304 only for the caller's record), on HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn headers_prefer_and_conditional_reads() {
    let h = Harness::start("compat-headers", Options::default());
    let s = station(&h, "compat-headers");
    let a = s
        .create(&example_registration())
        .expect(&h, created())
        .await;
    let location = a.header("location").unwrap().to_string();
    assert!(location.starts_with(&format!("{}/AuditEvent/", h.base)));
    assert_eq!(a.header("content-location"), Some(location.as_str()));
    assert_eq!(a.header("last-modified"), Some(LAST_MODIFIED));
    let id = a.json["id"].as_str().unwrap().to_string();
    // Prefer on create: shaped after the check, never forwarded.
    for (prefer, resource_type) in [
        ("return=minimal", ""),
        ("return=OperationOutcome", "OperationOutcome"),
        ("return=representation", "AuditEvent"),
    ] {
        let a = s
            .create(&example_registration())
            .header("Prefer", prefer)
            .expect(
                &h,
                upstream(201, resource_type, "POST", "/fhir/AuditEvent")
                    .upstream_header("prefer", Want::Absent),
            )
            .await;
        assert!(a.header("location").is_some(), "{prefer}");
        match prefer {
            "return=minimal" => assert!(a.text.is_empty()),
            "return=OperationOutcome" => {
                assert_eq!(a.json["issue"][0]["code"], "informational")
            }
            _ => {}
        }
    }
    // Reads pass Content-Location on the proxy's base.
    let read = format!("/fhir/AuditEvent/{id}");
    let a = s
        .get(&format!("/AuditEvent/{id}"))
        .expect(&h, upstream(200, "AuditEvent", "GET", read.clone()))
        .await;
    assert_eq!(
        a.header("content-location"),
        Some(format!("{}/AuditEvent/{id}/_history/1", h.base).as_str())
    );
    assert_eq!(a.header("last-modified"), Some(LAST_MODIFIED));
    let vary = a.header("vary").map(str::to_string);
    assert_eq!(vary.as_deref(), Some("Accept-Encoding"));
    // Conditional reads: fetched unconditionally (the validators never reach the server),
    // answered by the proxy.
    let vread = format!("/fhir/AuditEvent/{id}/_history/1");
    let cases = [
        (&read, "If-None-Match", "W/\"1\"", 304),
        (&read, "If-None-Match", "\"1\"", 304),
        (&vread, "If-None-Match", "*", 304),
        (&read, "If-None-Match", "W/\"2\"", 200),
        (
            &read,
            "If-Modified-Since",
            "Wed, 02 Dec 2026 10:00:00 GMT",
            304,
        ),
        (
            &read,
            "If-Modified-Since",
            "Mon, 30 Nov 2026 10:00:00 GMT",
            200,
        ),
        (&read, "If-Modified-Since", "not a date", 200),
    ];
    for proto in ["h1", "h2"] {
        let c = on(&s, proto);
        for (target, name, value, status) in &cases {
            let rel = target.strip_prefix("/fhir").unwrap();
            let resource_type = if *status == 200 { "AuditEvent" } else { "" };
            let a = c
                .get(rel)
                .header(*name, *value)
                .expect(
                    &h,
                    version(
                        upstream(*status, resource_type, "GET", target.as_str())
                            .upstream_header("if-none-match", Want::Absent)
                            .upstream_header("if-modified-since", Want::Absent),
                        proto,
                    ),
                )
                .await;
            assert_eq!(a.header("etag"), Some("W/\"1\""), "{proto} {name}: {value}");
            assert_eq!(a.text.is_empty(), *status == 304, "{proto} {name}: {value}");
            // A 304 carries the Vary of the 200 it stands for (RFC 9110 §15.4.5).
            assert_eq!(a.header("vary"), vary.as_deref(), "{proto} {name}: {value}");
        }
    }
    // Someone else's record, or none: 404 whatever the validators say, and no validator of
    // the record in the answer.
    let mut other = example_registration();
    other["meta"] =
        json!({"security": [{"system": "urn:eds-proxy:label:device-id", "code": "Other-EUA"}]});
    let other_id = h.upstream.seed(other);
    for id in [other_id.as_str(), "nobody"] {
        for (name, value) in [
            ("If-None-Match", "*"),
            ("If-Modified-Since", "Wed, 02 Dec 2099 10:00:00 GMT"),
        ] {
            let a = s
                .get(&format!("/AuditEvent/{id}"))
                .header(name, value)
                .expect(
                    &h,
                    upstream(404, "not-found", "GET", format!("/fhir/AuditEvent/{id}"))
                        .because("not_found"),
                )
                .await;
            for passed in ["etag", "last-modified", "content-location"] {
                assert_eq!(a.header(passed), None, "{id} {name}: {passed}");
            }
        }
    }
    // Write preconditions stay refused, before anything is forwarded.
    s.get(&format!("/AuditEvent/{id}"))
        .header("If-Match", "W/\"1\"")
        .expect(&h, forbidden().because("conditional"))
        .await;
}

/// gzip when asked for, after the check: the decompressed answer is exactly the uncompressed
/// one; small answers and clients that do not ask get identity.
#[tokio::test]
async fn gzip_after_the_check() {
    let h = Harness::start("compat-gzip", Options::default());
    let station = station(&h, "compat-gzip");
    for _ in 0..6 {
        registered(&h, &station).await;
    }
    let rel = "/AuditEvent?_count=6&_sort=_id";
    let plain = station.get(rel).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(header(&plain, "vary").as_deref(), Some("Accept-Encoding"));
    let plain = plain.bytes().await.unwrap().to_vec();
    assert!(plain.len() > eds_proxy::fhir::compat::GZIP_MIN_BYTES);
    for proto in ["h1", "h2"] {
        let r = on(&station, proto)
            .get(rel)
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
    let a = station
        .get("/Patient")
        .header("Accept-Encoding", "gzip")
        .expect(&h, forbidden().because("resource_type"))
        .await;
    assert_eq!(a.header("content-encoding"), None);
}

/// A supporter's conditional read answered 304 confirms that the citizen's record still
/// exists, is visible and unchanged (and hands out its `ETag`/`Last-Modified`): it is a read
/// and leaves a MinLog record like the 200 does; when the record cannot be written the 304 is
/// refused too (fail closed). A 304 must not be a way to watch a citizen's registration
/// without the citizen seeing it in MinLog. A HEAD answer is audited as its GET.
#[tokio::test]
async fn a_supporters_conditional_read_is_audited_like_a_read() {
    // Its own test binary's metrics: no other test here writes audit records or fails to.
    const CPR: &str = "0101019999";
    const SUPPORTER_CVR: &str = "29189846";
    const SUPPORTER_SOR: &str = "937961000016000";
    let mut visible = example_registration();
    visible["meta"]["security"] = json!([
        {"system": "urn:eds-proxy:label:device-id", "code": "obs-device"},
        {"system": "urn:eds-proxy:label:sor", "code": SUPPORTER_SOR},
        {"system": "urn:eds-proxy:label:cpr", "code": CPR}
    ]);
    let dir = tmp_dir("audit-304");
    let audit_dir = dir.join("audit");
    std::fs::create_dir_all(&audit_dir).unwrap();
    let audit_file = audit_dir.join("a.jsonl");
    let h = Harness::start(
        "audit-304",
        Options {
            extra_config: format!("[audit]\npath = \"{}\"\n", audit_file.display()),
            ..Options::default()
        },
    );
    let id = h.upstream.seed(visible);
    let supporter = h.caller("audit-304-supporter", supporter_claims(SUPPORTER_CVR));
    let read = format!("/AuditEvent/{id}");
    let upstream_read = format!("/fhir/AuditEvent/{id}");
    let records = || {
        std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<Value>>()
    };

    let a = supporter
        .get(&read)
        .expect(
            &h,
            upstream(200, "AuditEvent", "GET", upstream_read.clone()),
        )
        .await;
    let etag = a.header("etag").unwrap().to_string();
    assert_eq!(records().len(), 1);

    for (name, value) in [
        ("If-None-Match", etag.as_str()),
        ("If-None-Match", "*"),
        ("If-Modified-Since", "Wed, 02 Dec 2099 10:00:00 GMT"),
    ] {
        let before = records().len();
        let a = supporter
            .get(&read)
            .header(name, value)
            .expect(&h, upstream(304, "", "GET", upstream_read.clone()))
            .await;
        assert_eq!(a.header("etag"), Some(etag.as_str()), "{name}");
        let all = records();
        assert_eq!(all.len(), before + 1, "{name}: no audit record for the 304");
        let last = all.last().unwrap();
        assert_eq!(last["interaction"], "read", "{name}");
        assert_eq!(
            last["registrations"],
            json!([{"id": id, "cpr": [CPR]}]),
            "{name}"
        );
        assert_eq!(last["cpr"], json!([CPR]), "{name}");
        assert_eq!(last["request_id"], json!(a.header("x-request-id").unwrap()));
    }

    // A HEAD is audited as its GET.
    let before = records().len();
    supporter
        .request("HEAD", &read)
        .expect(&h, upstream(200, "", "GET", upstream_read.clone()))
        .await;
    assert_eq!(
        records().len(),
        before + 1,
        "the HEAD answer got no audit record"
    );

    // Fail closed: no record, no 304.
    std::fs::remove_dir_all(&audit_dir).unwrap();
    supporter
        .get(&read)
        .header("If-None-Match", etag.as_str())
        .expect(
            &h,
            upstream(503, "transient", "GET", upstream_read).because("audit_write_failed"),
        )
        .await;
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

/// Issue 10's unbuffered reads (`listen.read_buffer_bytes` = 0, the default): a create whose
/// head and body arrive a few bytes per TLS record, with `Expect: 100-continue`, is read whole
/// and forwarded once, exactly as sent; a body at `limits.max_body_bytes` the same way.
#[tokio::test]
async fn a_create_trickled_in_small_tls_records_is_read_whole() {
    let h = Harness::start("compat-trickle", Options::default());
    let cert = h.pki.client("compat-trickle");
    let token = h.token(&cert, station_claims(DEVICE, "937961000016000", "GLN-1234"));
    let connector = raw::tls_connector(&h.pki.ca.cert.cert_der, &cert);
    let body = example_registration().to_string();
    // Padded with JSON white space up to the limit (64 KiB in the harness).
    let padded = format!("{body}{}", " ".repeat(65_536 - body.len()));
    for (body, step) in [(&body, 7), (&padded, 997)] {
        let before = h.upstream.requests().len();
        let head = format!(
            "POST /fhir/AuditEvent HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut tls = raw::connect(h.port, &connector).await;
        let bytes = format!("{head}{body}").into_bytes();
        for piece in bytes.chunks(step) {
            tls.write_all(piece).await.unwrap();
            tls.flush().await.unwrap();
        }
        let (answer, _) = raw::read_answers(&mut tls).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains("HTTP/1.1 201"), "{text}");
        let seen = h.upstream.requests();
        assert_eq!(seen.len(), before + 1, "{seen:?}");
        let sent: Value = serde_json::from_slice(&seen[before].body).unwrap();
        assert_eq!(sent["resourceType"], "AuditEvent");
        assert_eq!(sent["id"], Value::Null);
    }
}
