//! Adversarial suite: hostile requests against a real proxy (real Pingora, real mTLS) in front
//! of the recording FHIR upstream.
//!
//! Every case is one request with its exact expected outcome: the HTTP status, the
//! OperationOutcome issue code (or the `resourceType` of a success), and what the FHIR server
//! saw: nothing, or exactly one request whose target is the expected constrained query. Each
//! test function starts a proxy and upstream of its own and runs its table one case at a time,
//! so "the upstream saw nothing" is exact. A table reports all of its failing cases at once.

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

use base64::Engine;
use common::upstream::Scripted;
use common::*;
use eds_proxy::dev::keys::SigningKey;
use eds_proxy::dev::pki::CertifiedKey;
use eds_proxy::error::TokenFailure as F;
use serde_json::{json, Value};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

/// The station most cases run as: its device and its organisational context (the IG
/// example's sender), and the constraint the proxy adds to its searches.
const DEV: &str = "adv-dev";
const SOR: &str = "937961000016000";
const GLN: &str = "GLN-1234";
const RECEIVER_SOR: &str = "698141000016008";
const RECEIVER_GLN: &str = "GLN-12345";
const DEV_SEC: &str = "_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cadv-dev";
/// Supporter constraints for the harness's CVR directory.
const SOR_SEC_29189846: &str = "_security=urn%3Aeds-proxy%3Alabel%3Asor%7C937961000016000";
const SOR_SEC_11111111: &str = "_security=urn%3Aeds-proxy%3Alabel%3Asor%7C698141000016008%2Curn%3Aeds-proxy%3Alabel%3Asor%7C555555555";

fn cpr_sec(cpr: &str) -> String {
    format!("_security=urn%3Aeds-proxy%3Alabel%3Acpr%7C{cpr}")
}

/// A 200 searchset of the station `DEV` after exactly one constrained upstream search.
fn station_search(rest: &str) -> Expect {
    search(DEV_SEC, rest)
}

// ---------------------------------------------------------------------------------------------
// Tokens and registrations
// ---------------------------------------------------------------------------------------------

/// `base` with the keys of `patch` set. A null is kept: `Harness::token` and `claims_for`
/// remove null claims from the final token, registered claims included.
fn merge(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().cloned().unwrap_or_default() {
        base[k] = v;
    }
    base
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with exactly `header`, signed ES256 by `key`.
fn forge(header: &Value, claims: &Value, key: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let k = jsonwebtoken::EncodingKey::from_ec_pem(key.private_pem.as_bytes()).unwrap();
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &k, jsonwebtoken::Algorithm::ES256).unwrap();
    format!("{input}.{sig}")
}

/// An unsigned token with `alg` as given.
fn unsigned(alg: &str, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(json!({"alg": alg, "kid": "test-key-1", "typ": "JWT"})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header {
            alg: jsonwebtoken::Algorithm::HS256,
            kid: Some("test-key-1".into()),
            ..Default::default()
        },
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// The IG example as a registration by `device` for patient `cpr`, message `msg`: sender
/// 937961000016000/GLN-1234, receiver 698141000016008/GLN-12345.
fn registration(device: &str, cpr: &str, msg: &str) -> Value {
    let mut r = example_registration();
    r["contained"][0]["identifier"] = json!([{ "value": device }]);
    r["entity"][0]["what"]["identifier"]["value"] = json!(cpr);
    r["entity"][1]["what"]["identifier"]["value"] = json!(msg);
    r
}

fn changed(mut r: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut r);
    r
}

async fn create_id(actor: &Caller, body: &Value) -> String {
    let resp = actor.create(body).send().await.unwrap();
    assert_eq!(resp.status(), 201, "setup: create failed");
    let v: Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. Query parameters: pollution, encodings, modifiers, forbidden families
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn adversarial_query_parameters() {
    let h = Harness::start("adv-query", Options::default());
    let s = h.station("adv-query-station", DEV);
    let get = |q: &str| s.get(&format!("/AuditEvent?{q}"));
    let form = |q: &str, body: &str| s.form(&format!("/AuditEvent/_search{q}"), body.to_string());
    let cases = vec![
        case(
            "control: plain search",
            get("message-id=a"),
            station_search("message-id=a"),
        ),
        // Pollution.
        case(
            "duplicate parameter is kept as AND",
            get("message-id=a&message-id=b"),
            station_search("message-id=a&message-id=b"),
        ),
        case(
            "_count twice",
            get("_count=5&_count=6"),
            invalid().because("repeated_parameter"),
        ),
        case(
            "_count above the limit is clamped",
            get("_count=5000"),
            station_search("_count=50"),
        ),
        case(
            "_count negative",
            get("_count=-1"),
            invalid().because("not_an_integer"),
        ),
        case(
            "_count not a number",
            get("_count=1e3"),
            invalid().because("not_an_integer"),
        ),
        case(
            "comma OR value is re-encoded",
            get("message-id=a,b"),
            station_search("message-id=a%2Cb"),
        ),
        case(
            "escaped comma keeps its backslash",
            get("message-id=a%5C,b"),
            station_search("message-id=a%5C%2Cb"),
        ),
        case(
            "value smuggling & and _security",
            get("message-id=x%26_security%3Durn%3Aeds-proxy%3Alabel%3Adevice-id%7Cother"),
            station_search(
                "message-id=x%26_security%3Durn%3Aeds-proxy%3Alabel%3Adevice-id%7Cother",
            ),
        ),
        case(
            "value with system|code",
            get("message-id=urn:x|y"),
            station_search("message-id=urn%3Ax%7Cy"),
        ),
        case(
            "value with a $",
            get("message-id=a$b"),
            station_search("message-id=a%24b"),
        ),
        case(
            "empty pairs are dropped",
            get("&&message-id=a&&"),
            station_search("message-id=a"),
        ),
        case(
            "empty name",
            get("=x"),
            invalid().because("malformed_parameter_name"),
        ),
        // _security in every form.
        case(
            "_security plain",
            get("_security=urn:eds-proxy:label:device-id|other"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_security after an allowed parameter",
            get("message-id=a&_security=urn:eds-proxy:label:device-id|other"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_security empty",
            get("_security="),
            invalid().because("refused_parameter"),
        ),
        case(
            "_security:not",
            get("_security:not=urn:eds-proxy:label:device-id|adv-dev"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_security:missing",
            get("_security:missing=true"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_security:below",
            get("_security:below=urn:eds-proxy:label"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_security:text",
            get("_security:text=adv"),
            invalid().because("refused_parameter"),
        ),
        case(
            "%5Fsecurity",
            get("%5Fsecurity=urn:eds-proxy:label:device-id|other"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_secur%69ty",
            get("_secur%69ty=x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "%5F%73ecurity%3Anot",
            get("%5F%73ecurity%3Anot=x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_Security",
            get("_Security=x"),
            invalid().because("unknown_parameter"),
        ),
        case(
            "_SECURITY",
            get("_SECURITY=x"),
            invalid().because("unknown_parameter"),
        ),
        case(
            "MESSAGE-ID",
            get("MESSAGE-ID=x"),
            invalid().because("unknown_parameter"),
        ),
        case(
            "Message-Id",
            get("Message-Id=x"),
            invalid().because("unknown_parameter"),
        ),
        case(
            "_security%00",
            get("_security%00=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "message-id%00",
            get("message-id%00=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "_security+ (space)",
            get("_security+=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "_security%20",
            get("_security%20=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "+_security",
            get("+_security=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "message+id",
            get("message+id=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "_security%09",
            get("_security%09=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "_security%0D%0A",
            get("_security%0D%0A=x"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "_security.system",
            get("_security.system=x"),
            invalid().because("chained"),
        ),
        case(
            "message-id.value",
            get("message-id.value=x"),
            invalid().because("chained"),
        ),
        case(
            "non-ASCII name",
            get("m%C3%A9ssage-id=x"),
            invalid().because("malformed_parameter_name"),
        ),
        // POST _search form bodies.
        case(
            "form: control",
            form("", "message-id=f"),
            station_search("message-id=f"),
        ),
        case(
            "form: _security",
            form("", "_security=urn:eds-proxy:label:device-id|other"),
            invalid().because("refused_parameter"),
        ),
        case(
            "form: %5Fsecurity",
            form("", "%5Fsecurity=x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "form: _security:not",
            form("", "_security:not=x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "form: _security in the URL",
            form("?_security=x", "message-id=a"),
            invalid().because("refused_parameter"),
        ),
        case(
            "form: _security in the body, URL clean",
            form("?message-id=a", "_security=x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "form: _security in URL and body",
            form("?_security=x", "_security=y"),
            invalid().because("refused_parameter"),
        ),
        case(
            "form: _count in URL and body",
            form("?_count=5", "_count=6"),
            invalid().because("repeated_parameter"),
        ),
        case(
            "form: URL and body are merged",
            form("?message-id=a", "message-id=b"),
            station_search("message-id=a&message-id=b"),
        ),
        case(
            "form: _include in the body",
            form("", "_include=AuditEvent:patient"),
            invalid().because("refused_parameter"),
        ),
        case(
            "form: JSON body",
            s.post(
                "/AuditEvent/_search",
                Some("application/json"),
                "{\"_security\":\"x\"}",
            ),
            unsupported_media().because("search_not_form"),
        ),
        case(
            "form: no content type",
            s.post("/AuditEvent/_search", None, "message-id=a"),
            unsupported_media().because("search_not_form"),
        ),
        case(
            "form: multipart",
            s.post(
                "/AuditEvent/_search",
                Some("multipart/form-data; boundary=x"),
                "--x\r\n",
            ),
            unsupported_media().because("search_not_form"),
        ),
        case(
            "form: body not UTF-8",
            s.form("/AuditEvent/_search", vec![b'm', b'=', 0xff, 0xfe]),
            invalid().because("form_not_utf8"),
        ),
        case(
            "GET _search is the type search (issue 11)",
            s.get("/AuditEvent/_search?message-id=a"),
            station_search("message-id=a"),
        ),
        case(
            "PUT _search",
            s.request("PUT", "/AuditEvent/_search?message-id=a"),
            method_not_allowed().because("search_post_only"),
        ),
        // Modifiers.
        case(
            ":missing is allowed",
            get("message-id:missing=true"),
            station_search("message-id%3Amissing=true"),
        ),
        case(
            ":exact is allowed",
            get("agent-name:exact=X"),
            station_search("agent-name%3Aexact=X"),
        ),
        case(
            ":below is allowed",
            get("type:below=x"),
            station_search("type%3Abelow=x"),
        ),
        case(
            ":not is allowed",
            get("outcome:not=0"),
            station_search("outcome%3Anot=0"),
        ),
        case(
            ":identifier is allowed",
            get("agent:identifier=urn:x|1"),
            station_search("agent%3Aidentifier=urn%3Ax%7C1"),
        ),
        case(
            "_id:exact is allowed",
            get("_id:exact=1"),
            station_search("_id%3Aexact=1"),
        ),
        case(
            "_tag:not is allowed",
            get("_tag:not=urn:x|y"),
            station_search("_tag%3Anot=urn%3Ax%7Cy"),
        ),
        case(
            ":iterate",
            get("message-id:iterate=x"),
            invalid().because("modifier"),
        ),
        case(
            "type modifier :Patient",
            get("patient:Patient=1"),
            invalid().because("modifier"),
        ),
        case(
            "type modifier :Device",
            get("agent:Device=x"),
            invalid().because("modifier"),
        ),
        case(
            ":in",
            get("type:in=http://vs"),
            invalid().because("modifier"),
        ),
        case(
            ":not-in",
            get("type:not-in=http://vs"),
            invalid().because("modifier"),
        ),
        case(
            "unknown modifier",
            get("message-id:xyz=1"),
            invalid().because("modifier"),
        ),
        case(
            "empty modifier",
            get("message-id:=1"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "two modifiers",
            get("message-id:exact:missing=1"),
            invalid().because("malformed_parameter_name"),
        ),
        case(
            "modifier on _source",
            get("_source:missing=true"),
            invalid().because("refused_parameter"),
        ),
        // Forbidden families.
        case(
            "_include",
            get("_include=AuditEvent:patient"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_include=*",
            get("_include=*"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_include:iterate",
            get("_include:iterate=AuditEvent:entity"),
            invalid().because("refused_parameter"),
        ),
        case(
            "%5Finclude",
            get("%5Finclude=AuditEvent:patient"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_revinclude",
            get("_revinclude=Provenance:target"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_revinclude=*",
            get("_revinclude=*"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_revinclude:iterate",
            get("_revinclude:iterate=AuditEvent:entity"),
            invalid().because("refused_parameter"),
        ),
        case(
            "chain patient.name",
            get("patient.name=x"),
            invalid().because("chained"),
        ),
        case(
            "chain agent:Device.identifier",
            get("agent:Device.identifier=x"),
            invalid().because("chained"),
        ),
        case(
            "chain entity:Patient.name",
            get("entity:Patient.name=x"),
            invalid().because("chained"),
        ),
        case(
            "_has",
            get("_has:Provenance:target:agent=x"),
            invalid().because("reverse_chained"),
        ),
        case(
            "_has on AuditEvent",
            get("_has:AuditEvent:entity:_id=1"),
            invalid().because("reverse_chained"),
        ),
        case(
            "_has without modifier",
            get("_has=x"),
            invalid().because("reverse_chained"),
        ),
        case(
            "_has:*",
            get("_has:*=x"),
            invalid().because("reverse_chained"),
        ),
        case(
            "_hasx",
            get("_hasx=1"),
            invalid().because("reverse_chained"),
        ),
        case(
            "_filter",
            get("_filter=agent%20eq%20x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_query",
            get("_query=everything"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_list",
            get("_list=$current"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_contained",
            get("_contained=true"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_containedType",
            get("_containedType=contained"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_text",
            get("_text=x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_content",
            get("_content=x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_source",
            get("_source=http://x"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_getpages on a search",
            get("_getpages=abc"),
            invalid().because("refused_parameter"),
        ),
        case(
            "_eds_sig on a search",
            get("_eds_sig=abc"),
            invalid().because("unknown_parameter"),
        ),
        case(
            "_type on a search",
            get("_type=Patient"),
            invalid().because("unknown_parameter"),
        ),
        case(
            "unknown parameter",
            get("foo=bar"),
            invalid().because("unknown_parameter"),
        ),
        // Result parameters.
        case(
            "_format=json is accepted, not forwarded",
            get("_format=json"),
            station_search(""),
        ),
        case(
            "_format=xml",
            get("_format=xml"),
            invalid().because("format"),
        ),
        case(
            "_pretty=true is not forwarded",
            get("_pretty=true&message-id=a"),
            station_search("message-id=a"),
        ),
        case(
            "_pretty=yes",
            get("_pretty=yes"),
            invalid().because("not_a_boolean"),
        ),
        case(
            "_elements always keeps meta",
            get("_elements=id"),
            station_search("_elements=id%2Cmeta"),
        ),
        case(
            "_elements twice",
            get("_elements=id&_elements=type"),
            invalid().because("repeated_parameter"),
        ),
        case(
            "_elements with a pipe",
            get("_elements=id,meta%7Cx"),
            invalid().because("elements_entry"),
        ),
        case(
            "_summary=count",
            get("_summary=count"),
            station_search("_summary=count"),
        ),
        case(
            "_summary=bogus",
            get("_summary=bogus"),
            invalid().because("summary"),
        ),
        case(
            "_sort by _security",
            get("_sort=_security"),
            invalid().because("sort_key"),
        ),
        case(
            "_sort by a chain",
            get("_sort=patient.name"),
            invalid().because("sort_key"),
        ),
        case(
            "_sort=-date",
            get("_sort=-date"),
            station_search("_sort=-date"),
        ),
        case(
            "_total=accurate",
            get("_total=accurate"),
            station_search("_total=accurate"),
        ),
        case("_total=bogus", get("_total=x"), invalid().because("total")),
        case("_offset", get("_offset=10"), station_search("_offset=10")),
        case(
            "_offset negative",
            get("_offset=-1"),
            invalid().because("not_an_integer"),
        ),
    ];
    verdict(&[run_cases(&h, "query parameters", cases).await]);
}

// ---------------------------------------------------------------------------------------------
// 2. Interactions and paths (through reqwest, which keeps these paths as written)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn adversarial_interactions_and_paths() {
    let h = Harness::start("adv-paths", Options::default());
    let s = h.station("adv-paths-station", DEV);
    let body = registration(DEV, "0101010001", "paths-msg").to_string();
    let json = |method: &str, rel: &str, b: &str| {
        s.request(method, rel)
            .header("Content-Type", FHIR_JSON)
            .body(b.to_string())
    };
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "AuditEvent?_include=*"}},
        {"request": {"method": "GET", "url": "Patient/1/AuditEvent"}},
        {"request": {"method": "GET", "url": "AuditEvent?_security=urn:eds-proxy:label:cpr|0101010001"}}
    ]})
    .to_string();
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "AuditEvent"}, "request": {"method": "POST", "url": "AuditEvent"}},
        {"request": {"method": "GET", "url": "AuditEvent"}}
    ]})
    .to_string();
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"security": [{"system": "urn:eds-proxy:label:cpr", "code": "1"}]}}]}).to_string();
    let long_id = "a".repeat(65);
    let cases = vec![
        case(
            "control: read is forwarded",
            s.get("/AuditEvent/1"),
            upstream(404, "not-found", "GET", "/fhir/AuditEvent/1").because("not_found"),
        ),
        case(
            "control: vread is forwarded",
            s.get("/AuditEvent/1/_history/1"),
            upstream(404, "not-found", "GET", "/fhir/AuditEvent/1/_history/1").because("not_found"),
        ),
        case(
            "control: metadata is answered locally",
            s.get("/metadata"),
            Expect::new(200, "CapabilityStatement", Seen::Nothing),
        ),
        // Other types, compartments, operations.
        case(
            "other type search",
            s.get("/Patient"),
            forbidden().because("resource_type"),
        ),
        case(
            "other type read",
            s.get("/Patient/1"),
            forbidden().because("resource_type"),
        ),
        case(
            "Patient compartment",
            s.get("/Patient/1/AuditEvent"),
            forbidden().because("compartment"),
        ),
        case(
            "Device compartment",
            s.get("/Device/adv-dev/AuditEvent"),
            forbidden().because("compartment"),
        ),
        case(
            "compartment with a query",
            s.get("/Practitioner/1/AuditEvent?message-id=x"),
            forbidden().because("compartment"),
        ),
        case(
            "compartment wildcard",
            s.get("/Patient/1/*"),
            forbidden().because("compartment"),
        ),
        case(
            "$everything",
            s.get("/Patient/1/$everything"),
            forbidden().because("operation"),
        ),
        case(
            "$meta on the type",
            s.get("/AuditEvent/$meta"),
            forbidden().because("operation"),
        ),
        case(
            "$meta on an instance",
            s.get("/AuditEvent/1/$meta"),
            forbidden().because("operation"),
        ),
        case(
            "$meta on the system",
            s.get("/$meta"),
            forbidden().because("operation"),
        ),
        case(
            "$validate",
            json("POST", "/AuditEvent/$validate", &body),
            forbidden().because("operation"),
        ),
        case(
            "$meta-add",
            json("POST", "/AuditEvent/1/$meta-add", &params),
            forbidden().because("operation"),
        ),
        case(
            "$meta-delete",
            json("POST", "/AuditEvent/1/$meta-delete", &params),
            forbidden().because("operation"),
        ),
        case(
            "$expunge on the system",
            s.request("POST", "/$expunge"),
            forbidden().because("operation"),
        ),
        case(
            "$expunge on the type",
            s.request("POST", "/AuditEvent/$expunge"),
            forbidden().because("operation"),
        ),
        case(
            "$expunge on an instance",
            s.request("POST", "/AuditEvent/1/$expunge"),
            forbidden().because("operation"),
        ),
        case(
            "$diff on a version",
            s.get("/AuditEvent/1/_history/1/$diff"),
            forbidden().because("operation"),
        ),
        // History.
        case(
            "system _history",
            s.get("/_history"),
            forbidden().because("history"),
        ),
        case(
            "type _history",
            s.get("/AuditEvent/_history"),
            forbidden().because("history"),
        ),
        case(
            "type _history with _since",
            s.get("/AuditEvent/_history?_since=2020-01-01"),
            forbidden().because("history"),
        ),
        case(
            "instance _history",
            s.get("/AuditEvent/1/_history"),
            forbidden().because("history"),
        ),
        case(
            "vread with a trailing segment",
            s.get("/AuditEvent/1/_history/1/x"),
            forbidden().because("history"),
        ),
        case(
            "vread with a query",
            s.get("/AuditEvent/1/_history/1?_include=x"),
            invalid().because("interaction_parameter"),
        ),
        case(
            "DELETE a version",
            s.request("DELETE", "/AuditEvent/1/_history/1"),
            method_not_allowed().because("method_on_instance"),
        ),
        // Batch, transaction, system level.
        case(
            "batch with GET entries to /fhir",
            json("POST", "", &batch),
            forbidden().because("batch"),
        ),
        case(
            "batch with GET entries to /fhir/",
            json("POST", "/", &batch),
            forbidden().because("batch"),
        ),
        case(
            "transaction to /fhir",
            json("POST", "", &transaction),
            forbidden().because("batch"),
        ),
        case(
            "transaction to /fhir/",
            json("POST", "/", &transaction),
            forbidden().because("batch"),
        ),
        case(
            "GET /fhir",
            s.get(""),
            forbidden().because("system_interaction"),
        ),
        case(
            "system search with _type",
            s.get("/?_type=AuditEvent"),
            forbidden().because("system_interaction"),
        ),
        case(
            "PUT /fhir",
            json("PUT", "", &batch),
            forbidden().because("batch"),
        ),
        case(
            "DELETE /fhir",
            s.request("DELETE", "?_id=1"),
            forbidden().because("batch"),
        ),
        // Conditional anything.
        case(
            "conditional create (If-None-Exist oracle)",
            json("POST", "/AuditEvent", &body).header("If-None-Exist", "message-id=paths-msg"),
            forbidden().because("conditional_create"),
        ),
        case(
            "If-Match on create",
            json("POST", "/AuditEvent", &body).header("If-Match", "W/\"1\""),
            forbidden().because("conditional_create"),
        ),
        case(
            "If-Match on read",
            s.get("/AuditEvent/1").header("If-Match", "W/\"1\""),
            forbidden().because("conditional"),
        ),
        // If-None-Match / If-Modified-Since on read and vread are answered by the proxy
        // after the label check: tests/compat.rs.
        case(
            "If-Unmodified-Since on read",
            s.get("/AuditEvent/1")
                .header("If-Unmodified-Since", "Sat, 01 Nov 2025 00:00:00 GMT"),
            forbidden().because("conditional"),
        ),
        case(
            "If-None-Match on search",
            s.get("/AuditEvent?message-id=x")
                .header("If-None-Match", "*"),
            forbidden().because("conditional"),
        ),
        case(
            "If-Modified-Since on create",
            json("POST", "/AuditEvent", &body)
                .header("If-Modified-Since", "Sat, 01 Nov 2025 00:00:00 GMT"),
            forbidden().because("conditional_create"),
        ),
        case(
            "If-None-Exist on search",
            s.get("/AuditEvent?message-id=x")
                .header("If-None-Exist", "message-id=x"),
            forbidden().because("conditional"),
        ),
        case(
            "If-None-Match on _search",
            s.form("/AuditEvent/_search", "message-id=x")
                .header("If-None-Match", "*"),
            forbidden().because("conditional"),
        ),
        // Methods.
        case(
            "PUT an instance",
            json("PUT", "/AuditEvent/1", &body),
            method_not_allowed().because("write"),
        ),
        case(
            "PUT conditional update",
            json("PUT", "/AuditEvent?message-id=x", &body),
            method_not_allowed().because("conditional_write"),
        ),
        case(
            "PATCH an instance",
            s.request("PATCH", "/AuditEvent/1")
                .header("Content-Type", "application/json-patch+json")
                .body("[]"),
            method_not_allowed().because("write"),
        ),
        case(
            "PATCH conditional",
            s.request("PATCH", "/AuditEvent?message-id=x")
                .header("Content-Type", "application/json-patch+json")
                .body("[]"),
            method_not_allowed().because("conditional_write"),
        ),
        case(
            "DELETE an instance",
            s.request("DELETE", "/AuditEvent/1"),
            method_not_allowed().because("write"),
        ),
        case(
            "DELETE conditional",
            s.request("DELETE", "/AuditEvent?_id=1"),
            method_not_allowed().because("conditional_write"),
        ),
        case(
            "HEAD is GET without a body: a refused search (issue 11)",
            s.request("HEAD", "/AuditEvent?_include=*"),
            refused(400, "").because("refused_parameter"),
        ),
        case(
            "HEAD with a body is still refused",
            s.request("HEAD", "/AuditEvent/1").body("x"),
            refused_or_dropped("body_not_allowed"),
        ),
        case(
            "OPTIONS on the type",
            s.request("OPTIONS", "/AuditEvent"),
            method_not_allowed().because("method_on_type"),
        ),
        case(
            "OPTIONS on the base",
            s.request("OPTIONS", ""),
            forbidden().because("batch"),
        ),
        case(
            "TRACE on the type",
            s.request("TRACE", "/AuditEvent"),
            method_not_allowed().because("method_on_type"),
        ),
        case(
            "TRACE on an instance",
            s.request("TRACE", "/AuditEvent/1"),
            method_not_allowed().because("method_on_instance"),
        ),
        case(
            "PROPFIND on the type",
            s.request("PROPFIND", "/AuditEvent"),
            method_not_allowed().because("method_on_type"),
        ),
        case(
            "POST /metadata",
            s.request("POST", "/metadata"),
            method_not_allowed().because("metadata_get_only"),
        ),
        case(
            "metadata with _format=xml",
            s.get("/metadata?_format=xml"),
            invalid().because("format"),
        ),
        case(
            "metadata with mode=terminology",
            s.get("/metadata?mode=terminology"),
            invalid().because("capabilities_mode"),
        ),
        case(
            "metadata with another parameter",
            s.get("/metadata?_elements=id"),
            invalid().because("interaction_parameter"),
        ),
        case(
            "read with _include",
            s.get("/AuditEvent/1?_include=AuditEvent:patient"),
            invalid().because("interaction_parameter"),
        ),
        case(
            "read with _elements",
            s.get("/AuditEvent/1?_elements=id"),
            invalid().because("interaction_parameter"),
        ),
        case(
            "read with _format=xml",
            s.get("/AuditEvent/1?_format=xml"),
            invalid().because("format"),
        ),
        case(
            "read with an underscore id",
            s.get("/AuditEvent/a_b"),
            invalid().because("malformed_id"),
        ),
        case(
            "read with a 65-character id",
            s.get(&format!("/AuditEvent/{long_id}")),
            invalid().because("malformed_id"),
        ),
        case(
            "read with an @ in the id",
            s.get("/AuditEvent/a@b"),
            invalid().because("malformed_id"),
        ),
        case(
            "POST below _search",
            s.form("/AuditEvent/_search/x", "message-id=x"),
            forbidden().because("interaction"),
        ),
        // Paths.
        case(
            "trailing slash on the type",
            s.get("/AuditEvent/"),
            station_search(""),
        ),
        case(
            "trailing slash on a read",
            s.get("/AuditEvent/1/"),
            upstream(404, "not-found", "GET", "/fhir/AuditEvent/1").because("not_found"),
        ),
        case(
            "lower-case type",
            s.get("/auditevent"),
            forbidden().because("resource_type"),
        ),
        case(
            "upper-case type",
            s.get("/AUDITEVENT"),
            forbidden().because("resource_type"),
        ),
        case(
            "upper-case base",
            s.outside("GET", "/FHIR/AuditEvent"),
            forbidden().because("unknown_path"),
        ),
        case(
            "type outside the base",
            s.outside("GET", "/AuditEvent"),
            forbidden().because("unknown_path"),
        ),
        case(
            "/admin",
            s.outside("GET", "/admin"),
            forbidden().because("unknown_path"),
        ),
        case(
            "/metrics",
            s.outside("GET", "/metrics"),
            forbidden().because("unknown_path"),
        ),
        case(
            "/healthz",
            s.outside("GET", "/healthz"),
            forbidden().because("unknown_path"),
        ),
        case(
            "server root",
            s.outside("GET", "/"),
            forbidden().because("unknown_path"),
        ),
        case(
            "base glued to the type",
            s.outside("GET", "/fhirAuditEvent"),
            forbidden().because("unknown_path"),
        ),
        case(
            "double slash before the base",
            s.outside("GET", "//fhir/AuditEvent"),
            forbidden().because("unknown_path"),
        ),
        case(
            "matrix parameter on the base",
            s.outside("GET", "/fhir;x=1/AuditEvent"),
            forbidden().because("unknown_path"),
        ),
        case(
            "double slash",
            s.get("//AuditEvent"),
            invalid().because("dot_segment"),
        ),
        case(
            "double slash after the type",
            s.get("/AuditEvent//1"),
            invalid().because("dot_segment"),
        ),
        case(
            "encoded slash",
            s.get("/AuditEvent%2F1"),
            invalid().because("path_characters"),
        ),
        case(
            "encoded letter",
            s.get("/Audit%45vent"),
            invalid().because("path_characters"),
        ),
        case(
            "encoded NUL",
            s.get("/AuditEvent%00"),
            invalid().because("path_characters"),
        ),
        case(
            ";jsessionid on the type",
            s.get("/AuditEvent;jsessionid=abc"),
            invalid().because("path_characters"),
        ),
        case(
            ";jsessionid on a read",
            s.get("/AuditEvent/1;jsessionid=abc"),
            invalid().because("path_characters"),
        ),
    ];
    verdict(&[run_cases(&h, "interactions and paths", cases).await]);
}

// ---------------------------------------------------------------------------------------------
// 3. Paging handles
// ---------------------------------------------------------------------------------------------

/// The signed `next` link of a search, and its (handle, signature).
async fn next_link(actor: &Caller, rel: &str) -> (String, String, String) {
    let v: Value = actor.get(rel).send().await.unwrap().json().await.unwrap();
    let link = v["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .unwrap_or_else(|| panic!("setup: no next link in {v}"))
        .to_string();
    let url = url::Url::parse(&link).unwrap();
    let get = |n: &str| {
        url.query_pairs()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("setup: {n} missing in {link}"))
    };
    let (id, sig) = (get("_getpages"), get("_eds_sig"));
    (link, id, sig)
}

#[tokio::test]
async fn adversarial_paging_handles() {
    let h = Harness::start("adv-page", Options::default());
    let s = h.station("adv-page-station", DEV);
    for i in 0..3 {
        create_id(
            &s,
            &registration(DEV, "0101010001", &format!("page-msg-{i}")),
        )
        .await;
    }
    let (link, id, sig) = next_link(&s, "/AuditEvent?_count=1").await;
    let (_, id2, sig2) = next_link(&s, "/AuditEvent?_count=1").await;
    assert_ne!(id, id2, "setup: two searches share a handle");
    let expected_link = format!(
        "{}?_getpages={id}&_getpagesoffset=1&_count=1&_bundletype=searchset&_eds_sig={sig}",
        h.base
    );
    assert_eq!(link, expected_link, "setup: paging link shape");
    let page = |id: &str, sig: &str, extra: &str| {
        format!("?_getpages={id}&_getpagesoffset=1&_count=1&_bundletype=searchset&_eds_sig={sig}{extra}")
    };
    let target = |id: &str, count: u32| {
        format!("/fhir?_getpages={id}&_getpagesoffset=1&_count={count}&_bundletype=searchset")
    };
    let page_ok = |id: &str, count: u32, entries: usize| {
        upstream(200, "Bundle", "GET", target(id, count)).entries(entries)
    };
    let tampered = {
        let mut c: Vec<char> = sig.chars().collect();
        c[0] = if c[0] == 'A' { 'B' } else { 'A' };
        c.into_iter().collect::<String>()
    };
    let other = h.station("adv-page-other", "adv-other-dev");
    let other_h2 = h
        .caller(
            "adv-page-other-h2",
            station_claims("adv-other-dev", SOR, GLN),
        )
        .http2();
    let citizen = h.caller("adv-page-citizen", citizen_claims("0101010001"));
    let supporter = h.caller("adv-page-supporter", supporter_claims("29189846"));
    let no_search = h.caller(
        "adv-page-nosearch",
        merge(
            station_claims(DEV, SOR, GLN),
            json!({"scope": format!("EDS system/AuditEvent.cr SOR:{SOR} GLN:{GLN}")}),
        ),
    );
    let cases = vec![
        case("control: the owner follows its link", s.get_url(&link), page_ok(&id, 1, 1)),
        case("control: the owner's second handle", s.get(&page(&id2, &sig2, "")), page_ok(&id2, 1, 1)),
        case("replay by another station", other.get_url(&link), forbidden().because("page_not_issued")),
        case("replay by another station over HTTP/2", other_h2.get_url(&link), forbidden().h2().because("page_not_issued")),
        case("replay by the citizen of the records", citizen.get_url(&link), forbidden().because("page_not_issued")),
        case("replay by a supporter of the sender", supporter.get_url(&link), forbidden().because("page_not_issued")),
        case("the owner without the s grant", no_search.get_url(&link), forbidden().because("no_search_grant")),
        case("tampered signature", s.get(&page(&id, &tampered, "")), forbidden().because("page_not_issued")),
        case("truncated signature", s.get(&page(&id, &sig[..sig.len() - 2], "")), forbidden().because("page_not_issued")),
        case("signature of another handle", s.get(&page(&id, &sig2, "")), forbidden().because("page_not_issued")),
        case("handle swapped under a signature", s.get(&page(&id2, &sig, "")), forbidden().because("page_not_issued")),
        case("no signature", s.get(&format!("?_getpages={id}&_getpagesoffset=1&_count=1&_bundletype=searchset")), forbidden().because("page_unsigned")),
        case("empty signature", s.get(&page(&id, "", "")), forbidden().because("page_not_issued")),
        case("signature not base64", s.get(&page(&id, "!!!!", "")), forbidden().because("page_not_issued")),
        case("signature twice", s.get(&page(&id, &sig, &format!("&_eds_sig={tampered}"))), invalid().because("repeated_parameter")),
        case("POST to the base with _getpages", s.request("POST", &page(&id, &sig, "")), forbidden().because("batch")),
        case("POST form with _getpages to the base", s.form("", format!("_getpages={id}&_eds_sig={sig}")), forbidden().because("batch")),
        case("_getpages on /AuditEvent", s.get(&format!("/AuditEvent{}", page(&id, &sig, ""))), invalid().because("refused_parameter")),
        case("_getpages in a _search body", s.form("/AuditEvent/_search", page(&id, &sig, "")[1..].to_string()), invalid().because("refused_parameter")),
        case("_getpages on a read", s.get(&format!("/AuditEvent/1{}", page(&id, &sig, ""))), invalid().because("interaction_parameter")),
        case("extra message-id on the link", s.get(&page(&id, &sig, "&message-id=x")), invalid().because("page_parameter")),
        case("extra _security on the link", s.get(&page(&id, &sig, "&_security=urn:eds-proxy:label:device-id|adv-other-dev")), invalid().because("page_parameter")),
        case("extra _include on the link", s.get(&page(&id, &sig, "&_include=*")), invalid().because("page_parameter")),
        case("a second _getpages on the link", s.get(&page(&id, &sig, &format!("&_getpages={id2}"))), invalid().because("repeated_parameter")),
        case("_bundletype=batch", s.get(&format!("?_getpages={id}&_bundletype=batch&_eds_sig={sig}")), invalid().because("page_parameter")),
        case("negative _getpagesoffset", s.get(&format!("?_getpages={id}&_getpagesoffset=-1&_eds_sig={sig}")), invalid().because("page_offset")),
        case("_format=xml on the link", s.get(&page(&id, &sig, "&_format=xml")), invalid().because("format")),
        case("handle with path characters", s.get(&format!("?_getpages=..%2FAuditEvent&_eds_sig={sig}")), invalid().because("page_handle_malformed")),
        case("upper-case _GETPAGES", s.get(&format!("?_GETPAGES={id}&_eds_sig={sig}")), forbidden().because("system_interaction")),
        case("percent-encoded name is decoded, then verified", s.get(&format!("?%5Fgetpages={id}&_getpagesoffset=1&_count=1&_bundletype=searchset&_eds_sig={sig}")), page_ok(&id, 1, 1)),
        case("_count changed on a link (the exact target is signed)", s.get(&format!("?_getpages={id}&_getpagesoffset=1&_count=1000&_bundletype=searchset&_eds_sig={sig}")), forbidden().because("page_not_issued")),
        case("_getpages below the base", s.get(&format!("/x{}", page(&id, &sig, ""))), forbidden().because("resource_type")),
    ];
    let first = run_cases(&h, "paging", cases).await;

    // A replica with the same page secret (the harness writes one constant for every proxy):
    // the same principal's handle passes the signature check (its upstream does not know the
    // search: 404), another principal is refused before the upstream is asked.
    let b = Harness::start("adv-page-b", Options::default());
    let same_on_b = b.station("adv-page-station-b", DEV);
    let other_on_b = b.station("adv-page-other-b", "adv-other-dev");
    let link_on_b = link.replacen(&h.base, &b.base, 1);
    let cases = vec![
        case(
            "replica: the same principal's handle is not refused",
            same_on_b.get_url(&link_on_b),
            upstream(404, "not-found", "GET", target(&id, 1)).because("not_found"),
        ),
        case(
            "replica: another principal is refused",
            other_on_b.get_url(&link_on_b),
            forbidden().because("page_not_issued"),
        ),
    ];
    verdict(&[first, run_cases(&b, "paging replica", cases).await]);
}

// ---------------------------------------------------------------------------------------------
// 4. Forwarded headers, formats and content negotiation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn adversarial_forwarding_and_formats() {
    let h = Harness::start("adv-fwd", Options::default());
    let s = h.station("adv-fwd-station", DEV);
    let port = h.port.to_string();
    let q = |m: &str| s.get(&format!("/AuditEvent?message-id={m}"));
    let proxied = |m: &str| {
        station_search(&format!("message-id={m}"))
            .upstream_header("x-forwarded-host", Want::Is("localhost".into()))
            .upstream_header("x-forwarded-proto", Want::Is("https".into()))
            .upstream_header("x-forwarded-prefix", Want::Is("/fhir".into()))
            .upstream_header("x-forwarded-port", Want::Is(port.clone()))
            .upstream_header("accept", Want::Is("application/fhir+json".into()))
            .upstream_header("authorization", Want::Absent)
            .lacks("evil.example")
    };
    let reg = registration(DEV, "0101010001", "fwd-msg");
    let cases = vec![
        case("control", q("f0"), proxied("f0")),
        case(
            "Accept: application/fhir+xml only: 406 (issue 11)",
            q("f1").header("Accept", "application/fhir+xml"),
            refused(406, "not-supported").because("not_acceptable"),
        ),
        case(
            "Accept: application/xml, */*",
            q("f2").header("Accept", "application/xml, */*;q=0.1"),
            proxied("f2"),
        ),
        case(
            "Accept-Encoding gzip (upstream asked for identity)",
            q("f3").header("Accept-Encoding", "gzip, br"),
            proxied("f3").upstream_header("accept-encoding", Want::Is("identity".into())),
        ),
        case(
            "_format=xml",
            s.get("/AuditEvent?message-id=f&_format=xml"),
            invalid().because("format"),
        ),
        case(
            "_format=application/fhir+xml",
            s.get("/AuditEvent?_format=application/fhir%2Bxml"),
            invalid().because("format"),
        ),
        case(
            "_format=html",
            s.get("/AuditEvent?_format=html"),
            invalid().because("format"),
        ),
        case(
            "Prefer: handling=lenient is not forwarded",
            q("f4").header("Prefer", "handling=lenient"),
            proxied("f4").upstream_header("prefer", Want::Absent),
        ),
        case(
            "Prefer: handling=lenient does not make the proxy lenient",
            s.get("/AuditEvent?foo=bar")
                .header("Prefer", "handling=lenient"),
            invalid().because("unknown_parameter"),
        ),
        case(
            "spoofed X-Forwarded-Host/Proto/Prefix/Port",
            q("f5")
                .header("X-Forwarded-Host", "evil.example")
                .header("X-Forwarded-Proto", "http")
                .header("X-Forwarded-Prefix", "/evil")
                .header("X-Forwarded-Port", "1"),
            proxied("f5"),
        ),
        case(
            "Forwarded",
            q("f6").header("Forwarded", "for=1.2.3.4;host=evil.example;proto=http"),
            proxied("f6").upstream_header("forwarded", Want::Absent),
        ),
        case(
            "X-Forwarded-For and X-Real-IP",
            q("f7")
                .header("X-Forwarded-For", "10.0.0.1")
                .header("X-Real-IP", "10.0.0.1"),
            proxied("f7")
                .upstream_header("x-forwarded-for", Want::Absent)
                .upstream_header("x-real-ip", Want::Absent),
        ),
        case(
            "client X-Request-ID is not trusted",
            q("f8").header("X-Request-ID", "evil-id"),
            proxied("f8").upstream_header("x-request-id", Want::Not("evil-id".into())),
        ),
        case(
            "Cookie is not forwarded",
            q("f9").header("Cookie", "JSESSIONID=abc"),
            proxied("f9").upstream_header("cookie", Want::Absent),
        ),
        case(
            "X-HTTP-Method-Override: DELETE",
            q("f10").header("X-HTTP-Method-Override", "DELETE"),
            proxied("f10").upstream_header("x-http-method-override", Want::Absent),
        ),
        case(
            "Connection names X-Forwarded-Host as hop-by-hop",
            q("f11").header("Connection", "X-Forwarded-Host"),
            proxied("f11"),
        ),
        case(
            "spoofed Host",
            q("f12").header("Host", "evil.example"),
            proxied("f12")
                .upstream_header("host", Want::Is(format!("127.0.0.1:{}", h.upstream.port))),
        ),
        case(
            "create with spoofed X-Forwarded-Host and Prefer",
            s.create(&reg)
                .header("X-Forwarded-Host", "evil.example")
                .header("Prefer", "return=minimal, handling=lenient"),
            // Prefer is applied by the proxy after the check (issue 11): no body.
            upstream(201, "", "POST", "/fhir/AuditEvent")
                .upstream_header("x-forwarded-host", Want::Is("localhost".into()))
                .upstream_header("prefer", Want::Absent)
                .upstream_header(
                    "content-type",
                    Want::Is("application/fhir+json; charset=utf-8".into()),
                )
                .lacks("evil.example"),
        ),
    ];
    verdict(&[run_cases(&h, "forwarding and formats", cases).await]);
}

// ---------------------------------------------------------------------------------------------
// 5. Tokens and principals
// ---------------------------------------------------------------------------------------------

/// Every token case searches `/AuditEvent?message-id=tok`.
const TOK: &str = "message-id=tok";
const CVR_URN: &str = "urn:dk:gov:saml:cvrNumberIdentifier:29189846";

/// A proxy of its own, certificates A and B (no token), the issuer's key and an attacker's
/// with the same `kid`, and the tokens the token tables build from: the station `DEV` bound
/// to A, and its variants.
struct Tokens {
    h: Harness,
    /// Certificate A, no token: `with(token)` presents a token on it.
    a: Caller,
    /// Certificate B, no token.
    b: Caller,
    attacker: SigningKey,
    now: i64,
    /// The station's claims bound to A, as signed.
    full: Value,
    /// The station's token bound to A.
    good: String,
    /// `good` with another device in its payload, the signature kept.
    tampered: String,
    /// The signature of `good`.
    real_signature: String,
    /// A's thumbprint in hex and in standard (not URL-safe) base64.
    hex: String,
    standard_b64: String,
    /// OIO-BPP XML granting the supporter role for CVR 29189846, base64.
    xml_priv: String,
    /// The issuer's public key set and key as text (HMAC key confusion).
    jwks_text: String,
    jwk_text: String,
}

impl Tokens {
    fn start(tag: &str) -> Tokens {
        let h = Harness::start(tag, Options::default());
        let a = h.anonymous(&format!("{tag}-a"));
        let b = h.anonymous(&format!("{tag}-b"));
        let key = &h.pki.issuer_key;
        let station = station_claims(DEV, SOR, GLN);
        let full = claims_for(&a.cert, station.clone());
        let good = h.token(&a.cert, station);
        let tampered = {
            let parts: Vec<&str> = good.split('.').collect();
            let forged = merge(full.clone(), json!({"ehmi:eer:device_id": "adv-other-dev"}));
            format!(
                "{}.{}.{}",
                parts[0],
                b64(forged.to_string().as_bytes()),
                parts[2]
            )
        };
        let digest = sha2::Sha256::digest(&a.cert.cert_der);
        Tokens {
            attacker: SigningKey::generate("test-key-1").unwrap(),
            now: now(),
            real_signature: good.rsplit('.').next().unwrap().to_string(),
            hex: digest.iter().map(|b| format!("{b:02x}")).collect(),
            standard_b64: base64::engine::general_purpose::STANDARD.encode(digest),
            xml_priv: bpp(CVR_URN, SUPPORTER_ROLE)["priv"]
                .as_str()
                .unwrap()
                .to_string(),
            jwks_text: key.jwks().to_string(),
            jwk_text: key.jwk().to_string(),
            tampered,
            full,
            good,
            a,
            b,
            h,
        }
    }
    /// The token search, `token` presented on certificate A.
    fn with(&self, token: &str) -> reqwest::RequestBuilder {
        self.a.clone().with_token(token).search(TOK)
    }
    /// The station's token bound to A with `patch` on its claims (a null removes a claim).
    fn st(&self, patch: Value) -> String {
        self.h
            .token(&self.a.cert, merge(station_claims(DEV, SOR, GLN), patch))
    }
    /// The station's claims with exactly `header`, signed by the issuer's key.
    fn es(&self, header: Value) -> String {
        forge(&header, &self.full, &self.h.pki.issuer_key)
    }
    /// The station's claims with exactly `header`, signed by the attacker's key.
    fn by_attacker(&self, header: Value) -> String {
        forge(&header, &self.full, &self.attacker)
    }
    /// A citizen's token (CPR 0101010001) bound to A, with `patch`.
    fn citizen(&self, patch: Value) -> String {
        self.h
            .token(&self.a.cert, merge(citizen_claims("0101010001"), patch))
    }
    /// A supporter's token for `cvr` bound to A, with `patch`.
    fn supporter(&self, cvr: &str, patch: Value) -> String {
        self.h
            .token(&self.a.cert, merge(supporter_claims(cvr), patch))
    }
    /// Run `cases` after a control (the station's own token) and fail with every failing case.
    async fn run(&self, name: &'static str, mut cases: Vec<Case>) {
        cases.insert(
            0,
            case("control: station token", self.with(&self.good), ok()),
        );
        verdict(&[run_cases(&self.h, name, cases).await]);
    }
}

/// The station's token search, answered.
fn ok() -> Expect {
    station_search(TOK)
}
/// The citizen's token search, answered.
fn citizen_ok() -> Expect {
    search(&cpr_sec("0101010001"), TOK)
}
/// The token search of a supporter for CVR 29189846, answered.
fn supporter_29() -> Expect {
    search(SOR_SEC_29189846, TOK)
}
/// OIO-BPP XML granting `privilege` (raw XML) with `scope` as Scope, as a `priv` claim.
fn bpp(scope: &str, privilege: &str) -> Value {
    json!({"priv": base64::engine::general_purpose::STANDARD.encode(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><bpp:PrivilegeList xmlns:bpp="http://itst.dk/oiosaml/basic_privilege_profile"><PrivilegeGroup Scope="{scope}"><Privilege>{privilege}</Privilege></PrivilegeGroup></bpp:PrivilegeList>"#
    ))})
}

/// The token travels as one `Authorization: Bearer` credential, and its signature covers exactly
/// what was signed (RFC 6750 §2.1, RFC 7515 §5.2).
#[tokio::test]
async fn adversarial_tokens_transport() {
    let t = Tokens::start("adv-tok-transport");
    t.run(
        "token transport",
        vec![
            // Transport of the token.
            case(
                "no Authorization",
                t.a.search(TOK),
                no_token().because("missing"),
            ),
            case(
                "Basic scheme",
                t.a.search(TOK).header("Authorization", "Basic YTpi"),
                no_token().because("missing"),
            ),
            case(
                "Bearer without a token",
                t.a.search(TOK).header("Authorization", "Bearer"),
                bad_token().because("malformed"),
            ),
            case(
                "two Authorization headers",
                t.a.search(TOK)
                    .header("Authorization", format!("Bearer {}", t.good))
                    .header("Authorization", format!("Bearer {}", t.good)),
                bad_token().because("malformed"),
            ),
            case(
                "bound to A, presented with B",
                t.b.clone().with_token(t.good.clone()).search(TOK),
                bad_token().because("cnf_mismatch"),
            ),
            case(
                "a quote in the token",
                t.with("a\"b.c.d"),
                bad_token().because("malformed"),
            ),
            case(
                "a 20 KB token",
                t.with(&format!("{}.b.c", "a".repeat(20_000))),
                bad_token().because("malformed"),
            ),
            case(
                "four parts",
                t.with(&format!("{}.x", t.good)),
                bad_token().because("malformed"),
            ),
            case(
                "signature stripped",
                t.with(&format!("{}.", t.good.rsplit_once('.').unwrap().0)),
                bad_token().because("signature"),
            ),
            case(
                "t.tampered payload",
                t.with(&t.tampered),
                bad_token().because("signature"),
            ),
        ],
    )
    .await;
}

/// Only ES256 from the issuer's own key set: no `none`, no HMAC with public key material, no other
/// algorithm, no key named or carried by the token (`kid` looked up exactly; `jku`, `x5u`, `jwk`
/// ignored) (RFC 8725 §2.1, §3.1).
#[tokio::test]
async fn adversarial_tokens_algorithms_and_keys() {
    let t = Tokens::start("adv-tok-algorithms-and-keys");
    t.run(
        "token algorithms and keys",
        vec![
// Algorithms.
        case(
            "alg none",
            t.with(&unsigned("none", &t.full, "")),
            bad_token().because("algorithm"),
        ),
        case(
            "alg nOnE",
            t.with(&unsigned("nOnE", &t.full, "")),
            bad_token().because("algorithm"),
        ),
        case(
            "alg none with a real signature",
            t.with(&unsigned("none", &t.full, &t.real_signature)),
            bad_token().because("algorithm"),
        ),
        case(
            "HS256 keyed with the JWKS text",
            t.with(&hs256(&t.full, t.jwks_text.as_bytes())),
            bad_token().because("algorithm"),
        ),
        case(
            "HS256 keyed with the JWK text",
            t.with(&hs256(&t.full, t.jwk_text.as_bytes())),
            bad_token().because("algorithm"),
        ),
        case(
            "RS256 header on an ES256 signature",
            t.with(&t.es(json!({"alg": "RS256", "kid": "test-key-1"}))),
            bad_token().because("algorithm"),
        ),
        case(
            "PS256 header on an ES256 signature",
            t.with(&t.es(json!({"alg": "PS256", "kid": "test-key-1"}))),
            bad_token().because("algorithm"),
        ),
        case(
            "ES384 header on an ES256 signature",
            t.with(&t.es(json!({"alg": "ES384", "kid": "test-key-1"}))),
            bad_token().because("algorithm"),
        ),
        // Keys.
        case(
            "unknown kid",
            t.with(&t.es(json!({"alg": "ES256", "kid": "other-key"}))),
            bad_token().because("unknown_key"),
        ),
        case(
            "no kid",
            t.with(&t.es(json!({"alg": "ES256"}))),
            bad_token().because("unknown_key"),
        ),
        case(
            "kid path traversal",
            t.with(&t.es(
                json!({"alg": "ES256", "kid": "../../../../../../etc/passwd"}),
            )),
            bad_token().because("unknown_key"),
        ),
        case(
            "kid SQL injection",
            t.with(&t.es(json!({"alg": "ES256", "kid": "' OR '1'='1' --"}))),
            bad_token().because("unknown_key"),
        ),
        case(
            "kid with a NUL",
            t.with(&t.es(json!({"alg": "ES256", "kid": "test-key-1\u{0}"}))),
            bad_token().because("unknown_key"),
        ),
        case(
            "kid in another case",
            t.with(&t.es(json!({"alg": "ES256", "kid": "TEST-KEY-1"}))),
            bad_token().because("unknown_key"),
        ),
        case(
            "kid as a number",
            t.with(&t.es(json!({"alg": "ES256", "kid": 1}))),
            bad_token().because("algorithm"),
        ),
        case(
            "jku to an t.attacker's JWKS",
            t.with(&t.by_attacker(
                json!({"alg": "ES256", "kid": "test-key-1", "jku": "https://evil.example/jwks.json"}),
            )),
            bad_token().because("signature"),
        ),
        case(
            "jku with an t.attacker's kid",
            t.with(&t.by_attacker(
                json!({"alg": "ES256", "kid": "evil-1", "jku": "https://evil.example/jwks.json"}),
            )),
            bad_token().because("unknown_key"),
        ),
        case(
            "x5u to an t.attacker's certificate",
            t.with(&t.by_attacker(
                json!({"alg": "ES256", "kid": "test-key-1", "x5u": "https://evil.example/cert.pem"}),
            )),
            bad_token().because("signature"),
        ),
        case(
            "embedded jwk of the t.attacker",
            t.with(&t.by_attacker(
                json!({"alg": "ES256", "kid": "test-key-1", "jwk": t.attacker.jwk()}),
            )),
            bad_token().because("signature"),
        ),
        case(
            "embedded jwk without kid",
            t.with(&t.by_attacker(json!({"alg": "ES256", "jwk": t.attacker.jwk()}))),
            bad_token().because("unknown_key"),
        ),
                ],
    )
    .await;
}

/// Header parameters that change how the token must be processed are refused: `crit`, `b64`, a
/// `typ` of another kind of JWT (RFC 7515 §4.1.11, RFC 7797, RFC 8725 §3.11).
#[tokio::test]
async fn adversarial_tokens_header_parameters() {
    let t = Tokens::start("adv-tok-header-parameters");
    t.run(
        "token header parameters",
        vec![
// Header parameters that change how the token must be processed (RFC 7515 §4.1.11).
        case(
            "crit naming an extension, signed by the issuer",
            t.with(&t.es(
                json!({"alg": "ES256", "kid": "test-key-1", "typ": "JWT", "crit": ["x-ext"], "x-ext": true}),
            )),
            bad_token_because(F::CriticalHeader),
        ),
        case(
            "crit naming b64 with b64 false",
            t.with(&t.es(
                json!({"alg": "ES256", "kid": "test-key-1", "crit": ["b64"], "b64": false}),
            )),
            bad_token_because(F::CriticalHeader),
        ),
        case(
            "crit naming a registered parameter",
            t.with(&t.es(
                json!({"alg": "ES256", "kid": "test-key-1", "crit": ["kid"]}),
            )),
            bad_token_because(F::Malformed),
        ),
        case(
            "b64 false without crit",
            t.with(&t.es(
                json!({"alg": "ES256", "kid": "test-key-1", "b64": false}),
            )),
            bad_token_because(F::CriticalHeader),
        ),
        case(
            "typ of another kind of JWT",
            t.with(&t.es(
                json!({"alg": "ES256", "kid": "test-key-1", "typ": "logout+jwt"}),
            )),
            bad_token_because(F::TokenType),
        ),
        case(
            "typ at+jwt (accepted)",
            t.with(&t.es(
                json!({"alg": "ES256", "kid": "test-key-1", "typ": "at+jwt"}),
            )),
            ok(),
        ),
        case(
            "no typ (accepted)",
            t.with(&t.es(json!({"alg": "ES256", "kid": "test-key-1"}))),
            ok(),
        ),
                ],
    )
    .await;
}

/// Time: `exp` required and in the future, `nbf` and `iat` not in the future, and a lifetime no
/// longer than `token.max_lifetime_seconds` (RFC 7519 §4.1.4-6).
#[tokio::test]
async fn adversarial_tokens_time_claims() {
    let t = Tokens::start("adv-tok-time-claims");
    t.run(
        "token time claims",
        vec![
            // Lifetime (token.max_lifetime_seconds, 3600 by default).
            case(
                "valid for ten years",
                t.with(&t.st(json!({"exp": t.now + 10 * 365 * 86_400}))),
                bad_token_because(F::LifetimeTooLong),
            ),
            case(
                "valid for two hours, no iat",
                t.with(&t.st(json!({"exp": t.now + 7200, "iat": null}))),
                bad_token_because(F::LifetimeTooLong),
            ),
            case(
                "issued long ago, expiring soon",
                t.with(
                    &t.st(json!({"iat": t.now - 7000, "nbf": t.now - 7000, "exp": t.now + 300})),
                ),
                bad_token_because(F::LifetimeTooLong),
            ),
            case(
                "valid for exactly the maximum (accepted)",
                t.with(&t.st(json!({"iat": t.now, "exp": t.now + 3600}))),
                ok(),
            ),
            // Validity period.
            case(
                "expired",
                t.with(&t.st(json!({"exp": t.now - 3600}))),
                bad_token().because("expired"),
            ),
            case(
                "nbf in the future",
                t.with(&t.st(json!({"nbf": t.now + 3600}))),
                bad_token().because("not_yet_valid"),
            ),
            case(
                "iat in the future",
                t.with(&t.st(json!({"iat": t.now + 3600}))),
                bad_token().because("issued_in_future"),
            ),
            case(
                "no exp",
                t.with(&t.st(json!({"exp": null}))),
                bad_token().because("malformed"),
            ),
            case(
                "exp as a string",
                t.with(&t.st(json!({"exp": (t.now + 600).to_string()}))),
                bad_token().because("malformed"),
            ),
        ],
    )
    .await;
}

/// Audience and issuer: `aud` (a string or a list) names this service, `iss` is exactly the
/// configured issuer (RFC 7519 §4.1.1, §4.1.3; RFC 8725 §3.8, §3.9).
#[tokio::test]
async fn adversarial_tokens_audience_and_issuer() {
    let t = Tokens::start("adv-tok-aud-iss");
    t.run(
        "token audience and issuer",
        vec![
            case(
                "wrong aud",
                t.with(&t.st(json!({"aud": "other"}))),
                bad_token().because("audience"),
            ),
            case(
                "aud list without ours",
                t.with(&t.st(json!({"aud": ["other", "eds2"]}))),
                bad_token().because("audience"),
            ),
            case(
                "aud list with ours (accepted)",
                t.with(&t.st(json!({"aud": ["other", AUDIENCE]}))),
                ok(),
            ),
            case(
                "wrong iss",
                t.with(&t.st(json!({"iss": "https://evil.test"}))),
                bad_token().because("issuer"),
            ),
            case(
                "iss with a trailing slash",
                t.with(&t.st(json!({"iss": format!("{ISSUER}/")}))),
                bad_token().because("issuer"),
            ),
            case(
                "no iss",
                t.with(&t.st(json!({"iss": null}))),
                bad_token().because("malformed"),
            ),
        ],
    )
    .await;
}

/// Certificate binding: `cnf.x5t#S256` must be the SHA-256 thumbprint of the client certificate
/// presented on this connection (RFC 8705 §3.1).
#[tokio::test]
async fn adversarial_tokens_binding() {
    let t = Tokens::start("adv-tok-binding");
    t.run(
        "token binding",
        vec![
            // Certificate binding.
            case(
                "no cnf",
                t.with(&t.st(json!({"cnf": null}))),
                bad_token().because("missing_cnf"),
            ),
            case(
                "cnf with x5t only",
                t.with(&t.st(json!({"cnf": {"x5t": t.a.cert.thumbprint()}}))),
                bad_token().because("missing_cnf"),
            ),
            case(
                "cnf as a string",
                t.with(&t.st(json!({"cnf": t.a.cert.thumbprint()}))),
                bad_token().because("malformed"),
            ),
            case(
                "cnf of another certificate",
                t.with(&t.st(json!({"cnf": {"x5t#S256": t.b.cert.thumbprint()}}))),
                bad_token().because("cnf_mismatch"),
            ),
            case(
                "cnf empty",
                t.with(&t.st(json!({"cnf": {"x5t#S256": ""}}))),
                bad_token().because("cnf_mismatch"),
            ),
            case(
                "cnf in t.hex",
                t.with(&t.st(json!({"cnf": {"x5t#S256": t.hex}}))),
                bad_token().because("cnf_mismatch"),
            ),
            case(
                "cnf in standard base64 (accepted)",
                t.with(&t.st(json!({"cnf": {"x5t#S256": t.standard_b64}}))),
                ok(),
            ),
        ],
    )
    .await;
}

/// EDS scopes: `EDS` present, exactly one SMART v2 `AuditEvent` access scope kind (system or user),
/// no wildcards or v1 forms, and the grant letter the interaction needs (IG security, SMART v2
/// scopes).
#[tokio::test]
async fn adversarial_tokens_scopes() {
    let t = Tokens::start("adv-tok-scopes");
    t.run(
        "token scopes",
        vec![
// Scopes.
        case(
            "scope without EDS",
            t.with(&t.st(
                json!({"scope": format!("system/AuditEvent.crs SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("not_for_eds"),
        ),
        case(
            "scope eds in lower case",
            t.with(&t.st(
                json!({"scope": format!("eds system/AuditEvent.crs SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("not_for_eds"),
        ),
        case(
            "system/*.*",
            t.with(&t.st(
                json!({"scope": format!("EDS system/*.* SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_access_scope"),
        ),
        case(
            "system/*.crs",
            t.with(&t.st(
                json!({"scope": format!("EDS system/*.crs SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_access_scope"),
        ),
        case(
            "system/AuditEvent.*",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.* SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_access_scope"),
        ),
        case(
            "system/AuditEvent.read (SMART v1)",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.read SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_access_scope"),
        ),
        case(
            "system/AuditEvent.crs?category=x",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.crs?category=x SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_access_scope"),
        ),
        case(
            "System/AuditEvent.crs",
            t.with(&t.st(
                json!({"scope": format!("EDS System/AuditEvent.crs SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_access_scope"),
        ),
        case(
            "user/*.rs",
            t.with(&t.citizen(json!({"scope": "EDS user/*.rs"}))),
            forbidden().because("no_access_scope"),
        ),
        case(
            "patient/AuditEvent.rs",
            t.with(&t.citizen(json!({"scope": "EDS patient/AuditEvent.rs"}))),
            forbidden().because("no_access_scope"),
        ),
        case(
            "system and user scopes",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.crs user/AuditEvent.rs SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("mixed_scopes"),
        ),
        case(
            "create-only scope cannot search",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.c SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_search_grant"),
        ),
        case(
            "read-only scope cannot search",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.r SOR:{SOR} GLN:{GLN}")}),
            )),
            forbidden().because("no_search_grant"),
        ),
        case(
            "scope as an array (accepted)",
            t.with(&t.st(
                json!({"scope": ["EDS", "system/AuditEvent.crs", format!("SOR:{SOR}"), format!("GLN:{GLN}")]}),
            )),
            ok(),
        ),
        case(
            "station without SOR/GLN scopes may search",
            t.with(&t.st(
                json!({"scope": "EDS system/AuditEvent.rs", "ehmi:org_context": null}),
            )),
            ok(),
        ),
                ],
    )
    .await;
}

/// A station's organisational context: the SOR/GLN scopes agree with `ehmi:org_context`, at most
/// one of each; its `ehmi:eer:device_id` is present and a plain identifier (IG security, EER).
#[tokio::test]
async fn adversarial_tokens_stations() {
    let t = Tokens::start("adv-tok-stations");
    t.run(
        "token stations",
        vec![
// Organisational context.
        case(
            "SOR scope differs from ehmi:org_context",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.crs SOR:111 GLN:{GLN}")}),
            )),
            forbidden().because("org_scopes_mismatch"),
        ),
        case(
            "GLN scope differs from ehmi:org_context",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.crs SOR:{SOR} GLN:GLN-999")}),
            )),
            forbidden().because("org_scopes_mismatch"),
        ),
        case(
            "two SOR scopes",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.crs SOR:{SOR} SOR:111 GLN:{GLN}")}),
            )),
            forbidden().because("several_org_scopes"),
        ),
        case(
            "two GLN scopes",
            t.with(&t.st(
                json!({"scope": format!("EDS system/AuditEvent.crs SOR:{SOR} GLN:{GLN} GLN:GLN-999")}),
            )),
            forbidden().because("several_org_scopes"),
        ),
        case(
            "SOR/GLN scopes without ehmi:org_context",
            t.with(&t.st(json!({"ehmi:org_context": null}))),
            forbidden().because("org_scopes_without_context"),
        ),
        // Device identity.
        case(
            "no device_id",
            t.with(&t.st(json!({"ehmi:eer:device_id": null}))),
            forbidden().because("missing_claim"),
        ),
        case(
            "blank device_id",
            t.with(&t.st(json!({"ehmi:eer:device_id": "  "}))),
            forbidden().because("missing_claim"),
        ),
        case(
            "device_id with a control character",
            t.with(&t.st(json!({"ehmi:eer:device_id": "adv-dev\u{7}"}))),
            forbidden().because("invalid_claim"),
        ),
        case(
            "device_id of 200 characters",
            t.with(&t.st(json!({"ehmi:eer:device_id": "d".repeat(200)}))),
            forbidden().because("invalid_claim"),
        ),
        case(
            "device_id with FHIR separators is refused (label codes are plain tokens)",
            t.with(&t.st(json!({"ehmi:eer:device_id": "adv,dev|x"}))),
            forbidden().because("claim_not_plain_token"),
        ),
                ],
    )
    .await;
}

/// A citizen: a `cpr` and NSIS assurance Substantial or High (`acr`).
#[tokio::test]
async fn adversarial_tokens_citizens() {
    let t = Tokens::start("adv-tok-citizens");
    t.run(
        "token citizens",
        vec![
            // Citizens.
            case(
                "control: citizen",
                t.with(&t.citizen(json!({}))),
                citizen_ok(),
            ),
            case(
                "citizen with acr Low",
                t.with(&t.citizen(json!({"acr": "https://data.gov.dk/concept/core/nsis/loa/Low"}))),
                forbidden().because("assurance_too_low"),
            ),
            case(
                "citizen without acr",
                t.with(&t.citizen(json!({"acr": null}))),
                forbidden().because("assurance_too_low"),
            ),
            case(
                "citizen with acr \"substantial\"",
                t.with(&t.citizen(json!({"acr": "substantial"}))),
                forbidden().because("assurance_too_low"),
            ),
            case(
                "citizen with acr High (accepted)",
                t.with(
                    &t.citizen(json!({"acr": "https://data.gov.dk/concept/core/nsis/loa/High"})),
                ),
                citizen_ok(),
            ),
            case(
                "citizen with a blank cpr",
                t.with(&t.citizen(json!({"cpr": " "}))),
                forbidden().because("missing_claim"),
            ),
            case(
                "user token with neither cpr nor cvr",
                t.with(&t.citizen(json!({"cpr": null}))),
                forbidden().because("missing_claim"),
            ),
        ],
    )
    .await;
}

/// A supporter: the supporter role for its own CVR in `priv` (JSON or OIO-BPP XML read as XML), a
/// CVR the directory knows, and NSIS assurance Substantial or High; the role wins over a `cpr`.
#[tokio::test]
async fn adversarial_tokens_supporters() {
    let t = Tokens::start("adv-tok-supporters");
    t.run(
        "token supporters",
        vec![
// Supporters.
        case(
            "control: supporter",
            t.with(&t.supporter("11111111", json!({}))),
            search(SOR_SEC_11111111, "message-id=tok"),
        ),
        case(
            "supporter without priv",
            t.with(&t.supporter("11111111", json!({"priv": null}))),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "supporter with the role for another CVR",
            t.with(&t.supporter(
                "11111111",
                json!({"priv": [{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:29189846", "privileges": [SUPPORTER_ROLE]}]}),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "supporter with another role",
            t.with(&t.supporter(
                "11111111",
                json!({"priv": [{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:11111111", "privileges": ["urn:dk:other:role"]}]}),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "supporter with a CVR unknown to the directory",
            t.with(&t.supporter("99999999", json!({}))),
            forbidden().because("unknown_cvr"),
        ),
        case(
            "supporter with a garbage priv",
            t.with(&t.supporter("11111111", json!({"priv": "not base64 !!"}))),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "supporter without acr",
            t.with(&t.supporter("11111111", json!({"acr": null}))),
            forbidden().because("assurance_too_low"),
        ),
        case(
            "supporter with OIO-BPP XML priv (accepted)",
            t.with(&t.supporter("29189846", json!({"priv": t.xml_priv}))),
            search(SOR_SEC_29189846, "message-id=tok"),
        ),
        // OIO-BPP XML read as XML: a value is the whole text, comments and PIs left out.
        case(
            "XML priv: role, comment, suffix",
            t.with(&t.supporter(
                "29189846",
                bpp(CVR_URN, &format!("{SUPPORTER_ROLE}<!---->-suspended")),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: role, PI, suffix",
            t.with(&t.supporter(
                "29189846",
                bpp(CVR_URN, &format!("{SUPPORTER_ROLE}<?x?>-suspended")),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: role, CDATA suffix",
            t.with(&t.supporter(
                "29189846",
                bpp(CVR_URN, &format!("{SUPPORTER_ROLE}<![CDATA[-suspended]]>")),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: role, character-reference suffix",
            t.with(&t.supporter(
                "29189846",
                bpp(CVR_URN, &format!("{SUPPORTER_ROLE}&#x2D;suspended")),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: role inside a nested element",
            t.with(&t.supporter(
                "29189846",
                bpp(CVR_URN, &format!("<b>{SUPPORTER_ROLE}</b>")),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: a bpp:Scope beside Scope",
            t.with(&t.supporter(
                "29189846",
                bpp(&format!("{CVR_URN}\" bpp:Scope=\"x"), SUPPORTER_ROLE),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: duplicate Scope",
            t.with(&t.supporter(
                "29189846",
                bpp(
                    &format!("urn:dk:gov:saml:cvrNumberIdentifier:1\" Scope=\"{CVR_URN}"),
                    SUPPORTER_ROLE,
                ),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: a DTD entity expanding to the role",
            t.with(&t.supporter(
                "29189846",
                json!({"priv": base64::engine::general_purpose::STANDARD.encode(format!(
                    r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY r "{SUPPORTER_ROLE}">]><bpp:PrivilegeList xmlns:bpp="http://itst.dk/oiosaml/basic_privilege_profile"><PrivilegeGroup Scope="{CVR_URN}"><Privilege>&r;</Privilege></PrivilegeGroup></bpp:PrivilegeList>"#
                ))}),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "XML priv: role split by a comment (accepted)",
            t.with(&t.supporter(
                "29189846",
                bpp(
                    CVR_URN,
                    &SUPPORTER_ROLE.replacen(":role", "<!-- c -->:role", 1),
                ),
            )),
            supporter_29(),
        ),
        case(
            "XML priv: CDATA role with whitespace (accepted)",
            t.with(&t.supporter(
                "29189846",
                bpp(CVR_URN, &format!("\n  <![CDATA[{SUPPORTER_ROLE}]]>\n")),
            )),
            supporter_29(),
        ),
        case(
            "XML priv: Scope URN in upper-case scheme and NID (accepted)",
            t.with(&t.supporter(
                "29189846",
                bpp(&CVR_URN.replacen("urn:dk", "URN:DK", 1), SUPPORTER_ROLE),
            )),
            supporter_29(),
        ),
        case(
            "JSON priv: role with upper-case scheme and NID (accepted)",
            t.with(&t.supporter(
                "29189846",
                json!({"priv": [{"scope": CVR_URN, "privileges": [SUPPORTER_ROLE.replacen("urn:dk", "URN:DK", 1)]}]}),
            )),
            supporter_29(),
        ),
        case(
            "JSON priv: role with a fragment",
            t.with(&t.supporter(
                "29189846",
                json!({"priv": [{"scope": CVR_URN, "privileges": [format!("{SUPPORTER_ROLE}#x")]}]}),
            )),
            forbidden().because("no_supporter_role"),
        ),
        case(
            "supporter role wins over cpr",
            t.with(&t.supporter("11111111", json!({"cpr": "0101010001"}))),
            search(SOR_SEC_11111111, "message-id=tok"),
        ),
        case(
            "cvr without the role but with cpr is a citizen",
            t.with(&t.supporter(
                "11111111",
                json!({"priv": null, "cpr": "0101010001"}),
            )),
            citizen_ok(),
        ),
                ],
    )
    .await;
}

/// A claim of the wrong JSON type makes the token malformed (src/auth/token.rs), `priv` excepted
/// (no role).
#[tokio::test]
async fn adversarial_tokens_claim_types() {
    let t = Tokens::start("adv-tok-claim-types");
    t.run(
        "token claim types",
        vec![
            // Claims of the wrong JSON type.
            case(
                "cpr as a number",
                t.with(&t.citizen(json!({"cpr": 101010001}))),
                bad_token().because("malformed"),
            ),
            case(
                "device_id as a number",
                t.with(&t.st(json!({"ehmi:eer:device_id": 42}))),
                bad_token().because("malformed"),
            ),
            case(
                "org_context as an array of objects",
                t.with(
                    &t.st(json!({"ehmi:org_context": [{"name": "Org", "sor": SOR, "gln": GLN}]})),
                ),
                bad_token().because("malformed"),
            ),
            // serde's derived struct visitor also accepts a sequence: ["name", "sor", "gln"] would
            // be read as an org context, against "a claim of the wrong JSON type makes the token
            // malformed" (src/auth/token.rs).
            case(
                "org_context as a positional array",
                t.with(&t.st(json!({"ehmi:org_context": ["Org", SOR, GLN]}))),
                bad_token().because("malformed"),
            ),
            case(
                "acr as an array",
                t.with(&t.citizen(json!({"acr": [NSIS_SUBSTANTIAL]}))),
                bad_token().because("malformed"),
            ),
            case(
                "cvr as a number",
                t.with(&t.supporter("11111111", json!({"cvr": 11111111}))),
                bad_token().because("malformed"),
            ),
            case(
                "scope as a number",
                t.with(&t.st(json!({"scope": 1}))),
                bad_token().because("malformed"),
            ),
            case(
                "priv as a number",
                t.with(&t.supporter("11111111", json!({"priv": 1}))),
                forbidden().because("no_supporter_role"),
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Registrations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn adversarial_registrations() {
    let h = Harness::start("adv-reg", Options::default());
    let s = h.station("adv-reg-station", DEV);
    let base = || registration(DEV, "0101010001", "reg-msg");
    let text = base().to_string();
    let label = |system: &str| json!([{"system": system, "code": "0101010001"}]);
    let receiver_station = h.caller(
        "adv-reg-receiver",
        station_claims(DEV, RECEIVER_SOR, RECEIVER_GLN),
    );
    let mixed_station = h.caller("adv-reg-mixed", station_claims(DEV, SOR, RECEIVER_GLN));
    let other_device = h.station("adv-reg-other", "adv-other-dev");
    let no_org = h.caller(
        "adv-reg-noorg",
        merge(
            station_claims(DEV, SOR, GLN),
            json!({"scope": "EDS system/AuditEvent.crs", "ehmi:org_context": null}),
        ),
    );
    let read_search_only = h.caller(
        "adv-reg-rs",
        merge(
            station_claims(DEV, SOR, GLN),
            json!({"scope": format!("EDS system/AuditEvent.rs SOR:{SOR} GLN:{GLN}")}),
        ),
    );
    let citizen = h.caller(
        "adv-reg-citizen",
        merge(
            citizen_claims("0101010001"),
            json!({"scope": "EDS user/AuditEvent.crs"}),
        ),
    );
    let supporter = h.caller("adv-reg-supporter", supporter_claims("29189846"));
    let raw = |body: &str| s.post("/AuditEvent", Some(FHIR_JSON), body.to_string());
    let mut big = base();
    big["text"] = json!({"status": "generated", "div": "x".repeat(70_000)});
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases = vec![
        case("control: a valid registration", s.create(&base()), created()),
        case("control: receiver's org context", receiver_station.create(&base()), created()),
        case("control: observer identifier only", s.create(&changed(base(), |r| {
            r["source"]["observer"] = json!({"identifier": {"value": DEV}});
            r.as_object_mut().unwrap().remove("contained");
        })), created()),
        case("a client's own security label (the proxy writes meta.security alone)", s.create(&changed(base(), |r| r["meta"]["security"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]))), invalid().because("client_security")),
        case("control: upper-case media type", s.post("/AuditEvent", Some("APPLICATION/FHIR+JSON"), text.clone()), created()),
        case("control: application/json with charset", s.post("/AuditEvent", Some("application/json; charset=utf-8"), text.clone()), created()),
        case("control: trailing slash", s.post("/AuditEvent/", Some(FHIR_JSON), text.clone()), created()),
        // Device identity.
        case("observer identifier disagrees with the contained Device", s.create(&changed(base(), |r| r["source"]["observer"]["identifier"] = json!({"value": "adv-other-dev"}))), forbidden().because("observer_disagrees")),
        case("observer identifier is ours, contained Device is not", s.create(&changed(base(), |r| {
            r["contained"][0]["identifier"] = json!([{"value": "adv-other-dev"}]);
            r["source"]["observer"]["identifier"] = json!({"value": DEV});
        })), forbidden().because("observer_disagrees")),
        case("contained Device with a second identifier", s.create(&changed(base(), |r| r["contained"][0]["identifier"] = json!([{"value": DEV}, {"value": "adv-other-dev"}]))), forbidden().because("observer_disagrees")),
        case("observer identifier only, another device", s.create(&changed(base(), |r| {
            r["source"]["observer"] = json!({"identifier": {"value": "adv-other-dev"}});
            r.as_object_mut().unwrap().remove("contained");
        })), forbidden().because("device_mismatch")),
        case("observer points to a non-contained Device", s.create(&changed(base(), |r| r["source"]["observer"] = json!({"reference": "Device/adv-dev"}))), invalid().because("observer_reference")),
        case("observer points to an absolute URL", s.create(&changed(base(), |r| r["source"]["observer"] = json!({"reference": "https://evil.example/Device/adv-dev"}))), invalid().because("observer_reference")),
        case("observer points to a missing contained id", s.create(&changed(base(), |r| r["source"]["observer"] = json!({"reference": "#nope"}))), invalid().because("observer_not_contained")),
        case("observer points to a contained Patient", s.create(&changed(base(), |r| r["contained"][0]["resourceType"] = json!("Patient"))), invalid().because("observer_not_device")),
        case("two contained resources with the observer's id", s.create(&changed(base(), |r| {
            let mut twin = r["contained"][0].clone();
            twin["identifier"] = json!([{"value": "adv-other-dev"}]);
            r["contained"].as_array_mut().unwrap().push(twin);
        })), invalid().because("observer_not_contained")),
        case("no observer", s.create(&changed(base(), |r| { r["source"].as_object_mut().unwrap().remove("observer"); })), invalid().because("observer_missing")),
        case("observer identifier without a value", s.create(&changed(base(), |r| r["source"]["observer"] = json!({"identifier": {"system": "urn:x"}}))), invalid().because("observer_identifier_without_value")),
        case("a station registering for another device", other_device.create(&base()), forbidden().because("device_mismatch")),
        // Organisational context.
        case("org context matches neither agent", s.create(&changed(base(), |r| r["agent"][0]["who"]["identifier"]["value"] = json!("111"))), forbidden().because("org_not_party")),
        case("sender GLN differs from the token's", s.create(&changed(base(), |r| r["agent"][0]["extension"][0]["valueIdentifier"]["value"] = json!("GLN-999"))), forbidden().because("org_not_party")),
        case("SOR of the sender with GLN of the receiver", mixed_station.create(&base()), forbidden().because("org_not_party")),
        case("two sender agents", s.create(&changed(base(), |r| {
            let dup = r["agent"][0].clone();
            r["agent"].as_array_mut().unwrap().push(dup);
        })), invalid().because("agent_count")),
        case("two GLNs on the sender", s.create(&changed(base(), |r| {
            let mut ext = r["agent"][0]["extension"][0].clone();
            ext["valueIdentifier"]["value"] = json!("GLN-999");
            r["agent"][0]["extension"].as_array_mut().unwrap().push(ext);
        })), invalid().because("agent_glns")),
        // Labels preset by the client.
        case("preset cpr label", s.create(&changed(base(), |r| r["meta"]["security"] = label("urn:eds-proxy:label:cpr"))), invalid().because("reserved_label")),
        case("preset device label", s.create(&changed(base(), |r| r["meta"]["security"] = label("urn:eds-proxy:label:device-id"))), invalid().because("reserved_label")),
        case("preset sor label", s.create(&changed(base(), |r| r["meta"]["security"] = label("urn:eds-proxy:label:sor"))), invalid().because("reserved_label")),
        case("preset label under the reserved prefix", s.create(&changed(base(), |r| r["meta"]["security"] = label("urn:eds-proxy:label:anything"))), invalid().because("reserved_label")),
        // RFC 8141 §3.1: the `urn` scheme and the NID are case-insensitive.
        case("preset device label, URN in upper case", s.create(&changed(base(), |r| r["meta"]["security"] = label("URN:EDS-PROXY:label:device-id"))), invalid().because("reserved_label")),
        case("preset cpr label, NID in mixed case", s.create(&changed(base(), |r| r["meta"]["security"] = label("urn:EDS-Proxy:label:cpr"))), invalid().because("reserved_label")),
        case("preset sor label with surrounding space", s.create(&changed(base(), |r| r["meta"]["security"] = label(" urn:eds-proxy:label:sor "))), invalid().because("reserved_label")),
        case("preset label after a harmless one", s.create(&changed(base(), |r| r["meta"]["security"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}, {"system": "urn:eds-proxy:label:cpr", "code": "0202020002"}]))), invalid().because("reserved_label")),
        case("meta.security as an object", s.create(&changed(base(), |r| r["meta"]["security"] = json!({"system": "urn:eds-proxy:label:cpr", "code": "x"}))), invalid().because("security_not_array")),
        // Shape.
        case("no EDS profile", s.create(&changed(base(), |r| r["meta"] = json!({}))), invalid().because("no_eds_profile")),
        case("look-alike profile", s.create(&changed(base(), |r| r["meta"]["profile"] = json!(["http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatusX"]))), invalid().because("no_eds_profile")),
        case("two ehmiPatient entities", s.create(&changed(base(), |r| {
            let mut p = r["entity"][0].clone();
            p["what"]["identifier"]["value"] = json!("0202020002");
            r["entity"].as_array_mut().unwrap().push(p);
        })), invalid().because("several_patients")),
        case("resourceType Patient", s.create(&changed(base(), |r| r["resourceType"] = json!("Patient"))), invalid().because("not_an_audit_event")),
        case("resourceType Bundle (transaction)", s.create(&json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": base(), "request": {"method": "POST", "url": "AuditEvent"}}]})), invalid().because("not_an_audit_event")),
        case("a top-level array", s.create(&json!([base()])), invalid().because("not_an_audit_event")),
        case("JSON null", raw("null"), invalid().because("not_an_audit_event")),
        case("a JSON string", raw("\"AuditEvent\""), invalid().because("not_an_audit_event")),
        case("empty body", raw(""), invalid().because("not_json")),
        case("duplicate resourceType (Patient first)", raw(&format!("{{\"resourceType\":\"Patient\",{}", &text[1..])), invalid().because("not_json")),
        case("duplicate resourceType (Bundle last)", raw(&format!("{},\"resourceType\":\"Bundle\"}}", &text[..text.len() - 1])), invalid().because("not_json")),
        case("duplicate nested key hiding a label", raw(&text.replacen("\"meta\":{", "\"meta\":{\"security\":[{\"system\":\"urn:eds-proxy:label:cpr\",\"code\":\"0202020002\"}],\"security\":[],", 1)), invalid().because("not_json")),
        case("10 000 nested arrays", raw(&deep), invalid().because("not_json")),
        case("10 000 nested arrays inside the resource", raw(&format!("{{\"extension\":{deep},{}", &text[1..])), invalid().because("not_json")),
        case("trailing garbage", raw(&format!("{text}x")), invalid().because("not_json")),
        case("a second JSON document", raw(&format!("{text}{text}")), invalid().because("not_json")),
        case("UTF-8 byte order mark", raw(&format!("\u{feff}{text}")), invalid().because("not_json")),
        case("invalid UTF-8", s.post("/AuditEvent", Some(FHIR_JSON), text.replacen("Aarhus", "Aar\u{0}hus", 1).into_bytes().into_iter().map(|b| if b == 0 { 0xff } else { b }).collect::<Vec<u8>>()), invalid().because("not_json")),
        case("body over 64 KiB", s.create(&big), too_large_or_reset()),
        // Media types.
        case("XML", s.post("/AuditEvent", Some("application/fhir+xml"), "<AuditEvent xmlns=\"http://hl7.org/fhir\"/>"), unsupported_media().because("registration_not_json")),
        case("text/plain", s.post("/AuditEvent", Some("text/plain"), text.clone()), unsupported_media().because("registration_not_json")),
        case("form", s.post("/AuditEvent", Some(FORM), "resourceType=AuditEvent"), unsupported_media().because("registration_not_json")),
        case("no content type", s.post("/AuditEvent", None, text.clone()), unsupported_media().because("registration_not_json")),
        case("JSON patch", s.post("/AuditEvent", Some("application/json-patch+json"), "[]"), unsupported_media().because("registration_not_json")),
        case("look-alike media type", s.post("/AuditEvent", Some("application/fhir+jsonx"), text.clone()), unsupported_media().because("registration_not_json")),
        case("multipart", s.post("/AuditEvent", Some("multipart/form-data; boundary=x"), "--x--"), unsupported_media().because("registration_not_json")),
        // Query and conditions on create.
        case("create with _format=xml", s.post("/AuditEvent?_format=xml", Some(FHIR_JSON), text.clone()), invalid().because("format")),
        case("create with a search parameter", s.post("/AuditEvent?_id=1", Some(FHIR_JSON), text.clone()), invalid().because("interaction_parameter")),
        case("conditional create", s.create(&base()).header("If-None-Exist", "message-id=reg-msg"), forbidden().because("conditional_create")),
        // Principals that may not create.
        case("a citizen (even with a c scope)", citizen.create(&base()), forbidden().because("not_a_station")),
        case("a supporter", supporter.create(&base()), forbidden().because("not_a_station")),
        case("a station without SOR/GLN scopes", no_org.create(&base()), forbidden().because("no_org_context")),
        case("a station without the c grant", read_search_only.create(&base()), forbidden().because("no_create_grant")),
    ];
    let upstream_base = format!("http://127.0.0.1:{}/fhir", h.upstream.port);
    let probe = "AuditEvent?_security=urn:eds-proxy:label:cpr|0101010000&_security=urn:eds-proxy:label:device-id|Other-Station";
    let with_reference = |reference: Value| {
        changed(base(), |r| {
            r["entity"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": {"code": "x"}, "what": {"reference": reference}}))
        })
    };
    let mut inert = vec![
        case("control: a local reference to the contained Device", s.create(&with_reference(json!("#Cura-EUA"))), created()),
        case("control: HL7 core extension", s.create(&changed(base(), |r| r["extension"] = json!([{"url": "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare", "valueString": "x"}]))), created()),
    ];
    for (name, reference) in [
        (
            "the issue's probe: conditional reference over the whole store",
            probe.to_string(),
        ),
        (
            "conditional reference with one parameter",
            "AuditEvent?identifier=msg-1".to_string(),
        ),
        ("conditional reference without a type", "?_id=1".to_string()),
        (
            "relative reference to a stored AuditEvent",
            "AuditEvent/ae-1".to_string(),
        ),
        (
            "relative reference with a version",
            "AuditEvent/ae-1/_history/1".to_string(),
        ),
        ("relative reference to a Patient", "Patient/p1".to_string()),
        (
            "urn:uuid placeholder",
            "urn:uuid:2f1b7f1e-6a0f-4a4e-9b0e-3c7a0f2b1d11".to_string(),
        ),
        ("urn:oid placeholder", "urn:oid:1.2.3".to_string()),
        (
            "absolute URL on the FHIR server's base",
            format!("{upstream_base}/AuditEvent/ae-1"),
        ),
        (
            "absolute URL on the proxy's base",
            format!("{}/AuditEvent/ae-1", h.base),
        ),
        (
            "absolute URL elsewhere",
            "https://elsewhere.example/fhir/Patient/1".to_string(),
        ),
        ("a bare #", "#".to_string()),
        ("a local reference to nothing", "#nothing".to_string()),
    ] {
        inert.push(case(
            name,
            s.create(&with_reference(json!(reference))),
            invalid().because("resolvable_reference"),
        ));
    }
    inert.extend([
        case("a reference that is an object", s.create(&with_reference(json!({"reference": "#Cura-EUA"}))), invalid().because("not_a_string")),
        case("a probe in the contained Device", s.create(&changed(base(), |r| r["contained"][0]["owner"] = json!({"reference": probe}))), invalid().because("resolvable_reference")),
        case("a probe in an extension's valueReference", s.create(&changed(base(), |r| r["agent"][0]["extension"][0]["valueReference"] = json!({"reference": probe}))), invalid().because("resolvable_reference")),
        case("a probe in a primitive's extension", s.create(&changed(base(), |r| r["_id"] = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/x", "valueReference": {"reference": probe}}]}))), invalid().because("resolvable_reference")),
        case("a contained AuditEvent", s.create(&changed(base(), |r| r["contained"].as_array_mut().unwrap().push(json!({"resourceType": "AuditEvent", "id": "x"})))), invalid().because("contained_type")),
        case("contained inside contained", s.create(&changed(base(), |r| r["contained"][0]["contained"] = json!([{"resourceType": "Device", "id": "y"}]))), invalid().because("nested_contained")),
        case("HAPI's externalized-binary extension", s.create(&changed(base(), |r| r["extension"] = json!([{"url": "http://hapifhir.io/fhir/StructureDefinition/externalized-binary-id", "valueString": "b1"}]))), invalid().because("foreign_extension")),
        case("an unknown modifierExtension", s.create(&changed(base(), |r| r["modifierExtension"] = json!([{"url": "https://example.org/ext", "valueBoolean": true}]))), invalid().because("foreign_extension")),
        case("a label system in an identifier", s.create(&changed(base(), |r| r["entity"][1]["what"]["identifier"]["system"] = json!("urn:eds-proxy:label:cpr"))), invalid().because("reserved_label_system")),
        case("a local reference whose contained id is a match URL", s.create(&changed(base(), |r| {
            let evil = format!("x/{probe}");
            let mut device = r["contained"][0].clone();
            device["id"] = json!(evil);
            r["contained"].as_array_mut().unwrap().push(device);
            r["entity"].as_array_mut().unwrap().push(json!({"what": {"reference": format!("#{evil}")}}));
        })), invalid().because("contained_id_malformed")),
        case("a contained id with a slash", s.create(&changed(base(), |r| {
            r["contained"][0]["id"] = json!("a/b");
            r["source"]["observer"]["reference"] = json!("#a/b");
        })), invalid().because("contained_id_malformed")),
        case("meta.tag with a display (shared server state)", s.create(&changed(base(), |r| r["meta"]["tag"] = json!([{"system": "urn:x-secret", "code": "0101010000", "display": "probe"}]))), invalid().because("meta_tag")),
        case("a second, foreign profile", s.create(&changed(base(), |r| r["meta"]["profile"].as_array_mut().unwrap().push(json!("http://example.org/probe")))), invalid().because("foreign_profile")),
        case("a second patient behind an array-valued entity.type", s.create(&changed(base(), |r| r["entity"].as_array_mut().unwrap().push(json!({"what": {"identifier": {"value": "0303030303"}}, "type": [{"system": "http://medcomehmi.dk/ig/terminology/CodeSystem/ehmi-delivery-status-entity-type", "code": "ehmiPatient"}]})))), invalid().because("shape")),
        case("a second sender behind an array-valued agent.type", s.create(&changed(base(), |r| r["agent"].as_array_mut().unwrap().push(json!({"type": [{"coding": [{"code": "ehmiSender"}]}], "who": {"identifier": {"value": "VICTIM-SOR"}}})))), invalid().because("shape")),
        case("a numeric second Device identifier", s.create(&changed(base(), |r| r["contained"][0]["identifier"].as_array_mut().unwrap().push(json!({"value": 4242})))), invalid().because("shape")),
        case("a decimal that would not survive", s.create(&changed(base(), |r| r["extension"] = json!([{"url": "http://hl7.org/fhir/StructureDefinition/x", "valueDecimal": 1.5}]))), invalid().because("decimal")),
        case("a profile version that is free text", s.create(&changed(base(), |r| r["meta"]["profile"] = json!(["http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatus|0101010000 ?x=y"]))), invalid().because("foreign_profile")),
        case("meta on the contained Device", s.create(&changed(base(), |r| r["contained"][0]["meta"] = json!({"tag": [{"system": "urn:x", "code": "y"}]}))), invalid().because("contained_meta")),
        case("a label system in meta.tag", s.create(&changed(base(), |r| r["meta"]["tag"] = json!([{"system": "urn:eds-proxy:label:device-id", "code": "adv-other-dev"}]))), invalid().because("reserved_label_system")),
    ]);
    let before = h.upstream.stored().len();
    let with_server_members = changed(base(), |r| {
        r["id"] = json!("someone-elses-id");
        r["meta"]["versionId"] = json!("9");
        r["meta"]["lastUpdated"] = json!("2020-01-01T00:00:00Z");
        r["meta"]["source"] = json!("http://elsewhere#x");
        r["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"https://tracker.example/p\"/></div>"});
        r["entity"][1]["what"]["identifier"]["value"] = json!("reg-stripped");
    });
    let stripped = vec![case(
        "control: id, versionId, lastUpdated, source and the narrative are removed",
        s.create(&with_server_members),
        created(),
    )];
    verdict(&[
        run_cases(&h, "registrations", cases).await,
        run_cases(&h, "inert registrations", inert).await,
        run_cases(&h, "server-assigned members", stripped).await,
    ]);
    let sent = h.upstream.requests_matching("reg-stripped");
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert!(body.get("id").is_none(), "{body}");
    assert!(body.get("text").is_none(), "{body}");
    for member in ["versionId", "lastUpdated", "source"] {
        assert!(body["meta"].get(member).is_none(), "{member}: {body}");
    }
    assert!(h.upstream.stored().len() > before);
}

// ---------------------------------------------------------------------------------------------
// 7. The response side: reads of someone else's registration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn adversarial_response_isolation() {
    let h = Harness::start("adv-resp", Options::default());
    let s = h.station("adv-resp-station", DEV);
    // R1: sender 937961000016000 (CVR 29189846), receiver 698141000016008 (CVR 11111111).
    let r1 = create_id(&s, &registration(DEV, "0101010001", "resp-msg-1")).await;
    // R2: sender 1234567, receiver 7654321: neither CVR's.
    let s2 = h.caller(
        "adv-resp-station-2",
        station_claims("adv-dev-2", "1234567", "GLN-7"),
    );
    let mut body2 = registration("adv-dev-2", "0303030003", "resp-msg-2");
    body2["agent"][0]["who"]["identifier"]["value"] = json!("1234567");
    body2["agent"][0]["extension"][0]["valueIdentifier"]["value"] = json!("GLN-7");
    body2["agent"][1]["who"]["identifier"]["value"] = json!("7654321");
    let r2 = create_id(&s2, &body2).await;
    let owner = h.caller("adv-resp-owner", citizen_claims("0101010001"));
    let stranger = h.caller("adv-resp-stranger", citizen_claims("0202020002"));
    let sender_support = h.caller("adv-resp-sup-1", supporter_claims("29189846"));
    let receiver_support = h.caller("adv-resp-sup-2", supporter_claims("11111111"));
    let read = |id: &str| format!("/AuditEvent/{id}");
    let vread = |id: &str| format!("/AuditEvent/{id}/_history/1");
    let upstream_read = |rel: &str| format!("/fhir{rel}");
    let hidden = |rel: &str| upstream(404, "not-found", "GET", upstream_read(rel));
    let visible = |rel: &str| upstream(200, "AuditEvent", "GET", upstream_read(rel));
    let cases = vec![
        case(
            "control: the citizen reads its own",
            owner.get(&read(&r1)),
            visible(&read(&r1)),
        ),
        case(
            "control: the sender's supporter",
            sender_support.get(&read(&r1)),
            visible(&read(&r1)),
        ),
        case(
            "control: the receiver's supporter",
            receiver_support.get(&read(&r1)),
            visible(&read(&r1)),
        ),
        case(
            "control: the registering station",
            s.get(&read(&r1)),
            visible(&read(&r1)),
        ),
        case(
            "a citizen reads another CPR's registration",
            stranger.get(&read(&r1)),
            hidden(&read(&r1)).because("not_found"),
        ),
        case(
            "a citizen vreads another CPR's registration",
            stranger.get(&vread(&r1)),
            hidden(&vread(&r1)).because("not_found"),
        ),
        case(
            "a citizen reads a registration that does not exist",
            stranger.get("/AuditEvent/nope"),
            hidden("/AuditEvent/nope").because("not_found"),
        ),
        case(
            "the sender's supporter reads outside its SOR codes",
            sender_support.get(&read(&r2)),
            hidden(&read(&r2)).because("not_found"),
        ),
        case(
            "the receiver's supporter reads outside its SOR codes",
            receiver_support.get(&read(&r2)),
            hidden(&read(&r2)).because("not_found"),
        ),
        case(
            "a supporter vreads outside its SOR codes",
            receiver_support.get(&vread(&r2)),
            hidden(&vread(&r2)).because("not_found"),
        ),
        case(
            "another station reads",
            s2.get(&read(&r1)),
            hidden(&read(&r1)).because("not_found"),
        ),
        case(
            "a station reads another station's",
            s.get(&read(&r2)),
            hidden(&read(&r2)).because("not_found"),
        ),
        case(
            "a citizen searches another CPR's message",
            stranger.get("/AuditEvent?message-id=resp-msg-1"),
            search(&cpr_sec("0202020002"), "message-id=resp-msg-1").entries(0),
        ),
        case(
            "control: the owner searches its message",
            owner.get("/AuditEvent?message-id=resp-msg-1"),
            search(&cpr_sec("0101010001"), "message-id=resp-msg-1").entries(1),
        ),
        case(
            "a supporter searches outside its SOR codes",
            sender_support.get("/AuditEvent?message-id=resp-msg-2"),
            search(SOR_SEC_29189846, "message-id=resp-msg-2").entries(0),
        ),
        case(
            "_summary=count cannot count others'",
            stranger.get("/AuditEvent?_summary=count"),
            search(&cpr_sec("0202020002"), "_summary=count").entries(0),
        ),
        case(
            "_elements cannot drop the labels",
            stranger.get("/AuditEvent?_elements=id"),
            search(&cpr_sec("0202020002"), "_elements=id%2Cmeta").entries(0),
        ),
    ];
    verdict(&[run_cases(&h, "response isolation", cases).await]);
}

// ---------------------------------------------------------------------------------------------
// 7b. A misbehaving FHIR server: every answer is checked, whatever produced it
// ---------------------------------------------------------------------------------------------

/// An AuditEvent as the FHIR server would return it, labelled for `device`.
fn stored_event(id: &str, device: &str) -> Value {
    let mut r = registration(device, "0101010001", &format!("msg-{id}"));
    r["id"] = json!(id);
    r["meta"]["versionId"] = json!("1");
    r["meta"]["security"] = json!([{"system": "urn:eds-proxy:label:device-id", "code": device}]);
    r
}

fn searchset(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries})
}

fn entry(resource: Value) -> Value {
    json!({"resource": resource, "search": {"mode": "match"}})
}

fn answer(
    method: &str,
    target: &str,
    status: u16,
    headers: &[(&str, &str)],
    body: &Value,
) -> Scripted {
    Scripted {
        method: method.into(),
        target_prefix: target.into(),
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
    }
}

#[tokio::test]
async fn adversarial_misbehaving_backend() {
    let h = Harness::start("adv-backend", Options::default());
    let s = h.station("adv-backend-station", DEV);
    const OTHER: &str = "adv-other-dev";
    let foreign = stored_event("f1", OTHER);
    let own = stored_event("own-1", DEV);
    let with = |mut r: Value, key: &str, v: Value| {
        r[key] = v;
        r
    };
    let outcome_entry = |contained: Value| json!({"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}], "contained": [contained]}, "search": {"mode": "outcome"}});
    let up_search = format!("/fhir/AuditEvent?{DEV_SEC}&message-id=x");
    let search_req = || s.get("/AuditEvent?message-id=x");
    let search_answer = |status: u16, ct: &str, body: &Value| {
        Some(answer(
            "GET",
            "/fhir/AuditEvent?",
            status,
            &[("Content-Type", ct)],
            body,
        ))
    };
    let json_ct = "application/fhir+json;charset=UTF-8";
    let shown = || station_search("message-id=x");
    let gateway = |method: &'static str, target: &str| {
        upstream(502, "transient", method, target.to_string()).lacks(OTHER)
    };
    let searches = vec![
        (
            search_answer(200, json_ct, &searchset(vec![entry(own.clone())])),
            case(
                "control: the caller's record",
                search_req(),
                shown().entries(1),
            ),
        ),
        (
            search_answer(
                200,
                json_ct,
                &json!({"resourceType": "Bundle", "type": "searchset", "entry": [entry(own.clone()), outcome_entry(foreign.clone())]}),
            ),
            case(
                "an outcome entry whose contained holds another station's record",
                search_req(),
                shown().entries(1).lacks(OTHER),
            ),
        ),
        (
            search_answer(
                200,
                json_ct,
                &json!({"resourceType": "Bundle", "type": "searchset", "entry": [entry(own.clone()), outcome_entry(json!({"resourceType": "OperationOutcome"}))]}),
            ),
            case(
                "control: an outcome entry with nothing foreign",
                search_req(),
                shown().entries(2),
            ),
        ),
        (
            search_answer(
                200,
                json_ct,
                &searchset(vec![
                    entry(own.clone()),
                    entry(with(
                        stored_event("own-2", DEV),
                        "contained",
                        json!([foreign.clone()]),
                    )),
                ]),
            ),
            case(
                "the caller's record with another station's contained",
                search_req(),
                shown().entries(1).lacks(OTHER),
            ),
        ),
        (
            search_answer(
                200,
                json_ct,
                &searchset(vec![
                    entry(own.clone()),
                    entry(
                        json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": foreign.clone()}]}),
                    ),
                ]),
            ),
            case(
                "a nested Bundle entry",
                search_req(),
                shown().entries(1).lacks(OTHER),
            ),
        ),
        (
            search_answer(
                200,
                json_ct,
                &searchset(vec![
                    entry(own.clone()),
                    json!({"resource": own.clone(), "response": {"outcome": foreign.clone()}}),
                ]),
            ),
            case(
                "another station's record as an entry's response.outcome",
                search_req(),
                shown().entries(1).lacks(OTHER),
            ),
        ),
        (
            search_answer(
                200,
                json_ct,
                &with(
                    searchset(vec![entry(own.clone())]),
                    "extension",
                    json!([{"url": "http://x", "x": foreign.clone()}]),
                ),
            ),
            case(
                "another station's record in the Bundle's envelope",
                search_req(),
                gateway("GET", &up_search).because("outside_entries"),
            ),
        ),
        (
            search_answer(200, "text/html", &searchset(vec![entry(own.clone())])),
            case(
                "a searchset labelled text/html",
                search_req(),
                gateway("GET", &up_search).because("foreign_resource"),
            ),
        ),
        (
            search_answer(
                200,
                "application/fhir+xml",
                &searchset(vec![entry(own.clone())]),
            ),
            case(
                "a searchset labelled FHIR XML",
                search_req(),
                gateway("GET", &up_search).because("foreign_resource"),
            ),
        ),
    ];
    let read_req = |id: &str| s.get(&format!("/AuditEvent/{id}"));
    let up_read = |id: &str| format!("/fhir/AuditEvent/{id}");
    let read_answer = |id: &str, ct: &str, body: &Value| {
        Some(answer(
            "GET",
            &format!("/fhir/AuditEvent/{id}"),
            200,
            &[("Content-Type", ct)],
            body,
        ))
    };
    let reads = vec![
        (
            read_answer("own-1", json_ct, &own),
            case(
                "control: the caller's record",
                read_req("own-1"),
                upstream(200, "AuditEvent", "GET", up_read("own-1")),
            ),
        ),
        (
            read_answer("f1", json_ct, &foreign),
            case(
                "control: another station's record is 404",
                read_req("f1"),
                upstream(404, "not-found", "GET", up_read("f1"))
                    .lacks(OTHER)
                    .because("not_found"),
            ),
        ),
        (
            read_answer(
                "own-1",
                json_ct,
                &with(own.clone(), "contained", json!([foreign.clone()])),
            ),
            case(
                "the caller's record with another station's contained",
                read_req("own-1"),
                gateway("GET", &up_read("own-1")).because("foreign_resource"),
            ),
        ),
        (
            read_answer(
                "own-1",
                json_ct,
                &with(
                    own.clone(),
                    "contained",
                    json!([{"resourceType": "OperationOutcome", "contained": [foreign.clone()]}]),
                ),
            ),
            case(
                "another station's record inside a contained OperationOutcome",
                read_req("own-1"),
                gateway("GET", &up_read("own-1")).because("foreign_resource"),
            ),
        ),
        (
            read_answer(
                "own-1",
                json_ct,
                &with(
                    own.clone(),
                    "contained",
                    json!([{"resourceType": "Patient", "id": "p", "name": [{"family": OTHER}]}]),
                ),
            ),
            case(
                "a contained Patient",
                read_req("own-1"),
                gateway("GET", &up_read("own-1")).because("foreign_resource"),
            ),
        ),
        (
            read_answer(
                "own-1",
                json_ct,
                &json!({"resourceType": "Patient", "id": "own-1", "name": [{"family": OTHER}]}),
            ),
            case(
                "a Patient answered for an AuditEvent read",
                read_req("own-1"),
                gateway("GET", &up_read("own-1")).because("foreign_resource"),
            ),
        ),
        (
            read_answer("own-1", json_ct, &stored_event("own-2", DEV)),
            case(
                "another record than the one asked for",
                read_req("own-1"),
                gateway("GET", &up_read("own-1")).because("foreign_resource"),
            ),
        ),
        (
            read_answer("own-1", "application/fhir+xml", &own),
            case(
                "a read labelled FHIR XML",
                read_req("own-1"),
                gateway("GET", &up_read("own-1")).because("foreign_resource"),
            ),
        ),
        (
            read_answer(
                "own-1",
                json_ct,
                &json!({"resourceType": "OperationOutcome", "contained": [foreign.clone()]}),
            ),
            case(
                "an OperationOutcome with another station's record for a read",
                read_req("own-1"),
                gateway("GET", &up_read("own-1")).because("foreign_resource"),
            ),
        ),
        (
            Some(answer(
                "GET",
                "/fhir/AuditEvent/own-1/_history/1",
                200,
                &[("Content-Type", json_ct)],
                &with(own.clone(), "contained", json!([foreign.clone()])),
            )),
            case(
                "a vread with another station's contained",
                s.get("/AuditEvent/own-1/_history/1"),
                gateway("GET", "/fhir/AuditEvent/own-1/_history/1").because("foreign_resource"),
            ),
        ),
    ];
    let upstream_base = format!("http://127.0.0.1:{}/fhir", h.upstream.port);
    let body = registration(DEV, "0101010001", "backend-msg");
    let create_answer = |location: &str, body: &Value| {
        let mut headers = vec![("Content-Type", json_ct)];
        if !location.is_empty() {
            headers.push(("Location", location));
        }
        Some(answer("POST", "/fhir/AuditEvent", 201, &headers, body))
    };
    let location = |id: &str| format!("{upstream_base}/AuditEvent/{id}/_history/1");
    let stamped = |id: &str| {
        let mut r = stored_event(id, DEV);
        r["meta"]["security"] = json!([
            {"system": "urn:eds-proxy:label:device-id", "code": DEV},
            {"system": "urn:eds-proxy:label:sor", "code": SOR},
            {"system": "urn:eds-proxy:label:sor", "code": RECEIVER_SOR},
            {"system": "urn:eds-proxy:label:cpr", "code": "0101010001"},
        ]);
        r
    };
    let up_create = "/fhir/AuditEvent";
    let creates = vec![
        (
            None,
            case("control: an honest create", s.create(&body), created()),
        ),
        (
            create_answer(&location("n1"), &stamped("n1")),
            case("control: the created record", s.create(&body), created()),
        ),
        (
            create_answer(&location("n2"), &Value::Null),
            case(
                "control: an empty 201 with a Location",
                s.create(&body),
                upstream(201, "", "POST", up_create),
            ),
        ),
        (
            create_answer(&location("f1"), &foreign),
            case(
                "another station's record answered for a create",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            create_answer(&location("n3"), &stamped("n4")),
            case(
                "a body that is not the resource at Location",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            create_answer(&location("own-1"), &own),
            case(
                "an older record of the same station",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            create_answer("", &stamped("n5")),
            case(
                "no Location",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            create_answer(
                "https://elsewhere.example/fhir/AuditEvent/n6/_history/1",
                &stamped("n6"),
            ),
            case(
                "a Location elsewhere",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            create_answer(&format!("{upstream_base}/Patient/n7"), &stamped("n7")),
            case(
                "a Location that is not an AuditEvent",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            create_answer(
                &location("n8"),
                &json!({"resourceType": "OperationOutcome", "id": "n8", "contained": [foreign.clone()]}),
            ),
            case(
                "an OperationOutcome with another station's record",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            create_answer(
                &location("n9"),
                &with(stamped("n9"), "contained", json!([foreign.clone()])),
            ),
            case(
                "the created record with another station's contained",
                s.create(&body),
                gateway("POST", up_create).because("foreign_resource"),
            ),
        ),
        (
            Some(answer(
                "POST",
                up_create,
                409,
                &[],
                &json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "duplicate", "diagnostics": format!("AuditEvent/f1 of {OTHER} already exists")}]}),
            )),
            case(
                "a conflict naming another station's record",
                s.create(&body),
                upstream(400, "invalid", "POST", up_create)
                    .lacks(OTHER)
                    .because("upstream_conflict"),
            ),
        ),
        (
            Some(answer(
                "POST",
                up_create,
                500,
                &[],
                &json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception", "diagnostics": format!("SQL error near {OTHER}")}]}),
            )),
            case(
                "a server error naming another station",
                s.create(&body),
                gateway("POST", up_create).because("upstream_status"),
            ),
        ),
    ];
    let mut tables = vec![
        run_scripted(&h, "backend searches", searches).await,
        run_scripted(&h, "backend reads", reads).await,
        run_scripted(&h, "backend creates", creates).await,
    ];
    let foreign_count = metric_value(&h, "eds_proxy_response_foreign_total").await;
    if foreign_count < 10.0 {
        tables.push(Table {
            name: "foreign metric",
            cases: 1,
            failures: vec![format!(
                "eds_proxy_response_foreign_total is {foreign_count}"
            )],
        });
    }

    // With `response.drop_totals` no count leaves the proxy.
    let strict = Harness::start(
        "adv-backend-totals",
        Options {
            extra_config: "[response]\ndrop_totals = true\n".into(),
            ..Options::default()
        },
    );
    let st = strict.station("adv-backend-totals-station", DEV);
    create_id(&st, &registration(DEV, "0101010001", "totals-msg")).await;
    let totals = vec![
        case(
            "_summary=count is refused",
            st.get("/AuditEvent?_summary=count"),
            invalid().because("counts_not_offered"),
        ),
        case(
            "a search has no total",
            st.get("/AuditEvent?message-id=totals-msg"),
            station_search("message-id=totals-msg")
                .entries(1)
                .lacks("\"total\""),
        ),
    ];
    tables.push(run_cases(&strict, "drop_totals", totals).await);

    // A supporter is never offered counts, whatever `response.drop_totals` says: MinLog
    // records follow the registrations an answer shows, and a count about a citizen shows none.
    let sup = h.caller("adv-backend-count-supporter", supporter_claims("29189846"));
    let supporter_counts = vec![
        case(
            "a supporter's _summary=count is refused",
            sup.get("/AuditEvent?cpr=0101010001&_summary=count"),
            invalid().because("counts_not_offered"),
        ),
        case(
            "a supporter's _count=0 search has no total",
            sup.get("/AuditEvent?cpr=0101010001&_count=0"),
            search(SOR_SEC_29189846, "cpr=0101010001&_count=0").lacks("\"total\""),
        ),
    ];
    tables.push(run_cases(&h, "supporter counts", supporter_counts).await);
    verdict(&tables);
}

// ---------------------------------------------------------------------------------------------
// 8. HTTP/2 variants
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn adversarial_http2_variants() {
    let h = Harness::start("adv-h2", Options::default());
    let s = h
        .caller("adv-h2-station", station_claims(DEV, SOR, GLN))
        .http2();
    let citizen = h
        .caller("adv-h2-citizen", citizen_claims("0101010001"))
        .http2();
    let token = s.token.clone().unwrap();
    // Another certificate presenting the station's token.
    let other_cert = h.anonymous("adv-h2-b").http2().with_token(token.clone());
    let anonymous = s.clone().without_token();
    let get = |q: &str| s.get(&format!("/AuditEvent?{q}"));
    let reg = registration(DEV, "0101010001", "h2-msg");
    let text = reg.to_string();
    let mut big = reg.clone();
    big["text"] = json!({"status": "generated", "div": "x".repeat(70_000)});
    let cases = vec![
        case("control: search", get("message-id=h2"), station_search("message-id=h2").h2()),
        case("control: create", s.create(&reg), created().h2()),
        case("_security", get("_security=urn:eds-proxy:label:device-id|other"), invalid().h2().because("refused_parameter")),
        case("%5Fsecurity", get("%5Fsecurity=x"), invalid().h2().because("refused_parameter")),
        case("_security:not", get("_security:not=x"), invalid().h2().because("refused_parameter")),
        case("form: _security in the body", s.form("/AuditEvent/_search", "_security=x"), invalid().h2().because("refused_parameter")),
        case("_count twice", get("_count=1&_count=2"), invalid().h2().because("repeated_parameter")),
        case("_include:iterate", get("_include:iterate=*"), invalid().h2().because("refused_parameter")),
        case("_revinclude", get("_revinclude=*"), invalid().h2().because("refused_parameter")),
        case("chain", get("patient.identifier=x"), invalid().h2().because("chained")),
        case("_has", get("_has:AuditEvent:entity:_id=1"), invalid().h2().because("reverse_chained")),
        case("_format=xml", get("_format=xml"), invalid().h2().because("format")),
        case("compartment", s.get("/Patient/1/AuditEvent"), forbidden().h2().because("compartment")),
        case("$everything", s.get("/Patient/1/$everything"), forbidden().h2().because("operation")),
        case("_history", s.get("/AuditEvent/_history"), forbidden().h2().because("history")),
        case("batch", s.post("", Some(FHIR_JSON), r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"AuditEvent"}}]}"#), forbidden().h2().because("batch")),
        case("conditional create", s.create(&reg).header("If-None-Exist", "message-id=h2-msg"), forbidden().h2().because("conditional_create")),
        case("If-None-Match on search", s.get("/AuditEvent?message-id=h2").header("If-None-Match", "*"), forbidden().h2().because("conditional")),
        case("PUT", s.request("PUT", "/AuditEvent/1").header("Content-Type", FHIR_JSON).body(text.clone()), method_not_allowed().h2().because("write")),
        case("DELETE", s.request("DELETE", "/AuditEvent/1"), method_not_allowed().h2().because("write")),
        case("double slash", s.get("//AuditEvent"), invalid().h2().because("dot_segment")),
        case(";jsessionid", s.get("/AuditEvent;jsessionid=1"), invalid().h2().because("path_characters")),
        case("lower-case type", s.get("/auditevent"), forbidden().h2().because("resource_type")),
        case("create XML", s.post("/AuditEvent", Some("application/fhir+xml"), "<AuditEvent/>"), unsupported_media().h2().because("registration_not_json")),
        case("create over 64 KiB", s.create(&big), too_large().h2().because("too_large")),
        case("create with duplicate resourceType", s.post("/AuditEvent", Some(FHIR_JSON), format!("{{\"resourceType\":\"Patient\",{}", &text[1..])), invalid().h2().because("not_json")),
        case("create with a preset label", s.create(&changed(reg.clone(), |r| r["meta"]["security"] = json!([{"system": "urn:eds-proxy:label:cpr", "code": "0202020002"}]))), invalid().h2().because("reserved_label")),
        case("a citizen creates", citizen.create(&reg), forbidden().h2().because("not_a_station")),
        case("token bound to another certificate", other_cert.get("/AuditEvent?message-id=h2"), bad_token().h2().because("cnf_mismatch")),
        case("alg none", s.clone().with_token(unsigned("none", &json!({"iss": ISSUER}), "")).get("/AuditEvent"), bad_token().h2().because("algorithm")),
        case("two Authorization headers", anonymous.get("/AuditEvent").header("Authorization", format!("Bearer {token}")).header("Authorization", format!("Bearer {token}")), bad_token().h2().because("malformed")),
        case("spoofed forwarding headers", get("message-id=h2-fwd")
            .header("X-Forwarded-Host", "evil.example")
            .header("Forwarded", "host=evil.example")
            .header("Prefer", "handling=lenient"),
            station_search("message-id=h2-fwd").h2()
                .upstream_header("x-forwarded-host", Want::Is("localhost".into()))
                .upstream_header("forwarded", Want::Absent)
                .upstream_header("prefer", Want::Absent)
                .lacks("evil.example")),
    ];
    verdict(&[run_cases(&h, "HTTP/2 variants", cases).await]);
}

// ---------------------------------------------------------------------------------------------
// 9. Overlong requests
// ---------------------------------------------------------------------------------------------

/// A URL or header far above what any FHIR client needs (HAPI's Jetty stops at 8 KiB) must be
/// refused by the proxy (4xx, or the connection dropped), never forwarded: a FHIR server that
/// receives it answers 414/431, which the proxy turns into a 502.
#[tokio::test]
async fn adversarial_overlong_requests() {
    let h = Harness::start("adv-long", Options::default());
    let s = h.station("adv-long-station", DEV);
    let s2 = h
        .caller("adv-long-h2", station_claims(DEV, SOR, GLN))
        .http2();
    let long_value = "a".repeat(100_000);
    // reqwest (http::Uri) cannot carry a URI over 64 KiB: the 100 KB URLs go over raw TLS below.
    let long_query = "a".repeat(60_000);
    let many_headers = {
        let mut r = s.get("/AuditEvent?message-id=many-headers");
        for i in 0..300 {
            r = r.header(format!("x-h-{i}"), "x");
        }
        r
    };
    let cases = vec![
        case(
            "60 KB query value",
            s.get(&format!("/AuditEvent?message-id={long_query}")),
            refused_or_dropped("uri_too_long"),
        ),
        case(
            "100 KB header",
            s.get("/AuditEvent?message-id=long-header")
                .header("X-Padding", long_value.clone()),
            refused_or_dropped("headers_too_large"),
        ),
        case(
            "2 MB header",
            s.get("/AuditEvent?message-id=huge-header")
                .header("X-Padding", "a".repeat(2_000_000)),
            refused_or_dropped("uri_too_long"),
        ),
        case("300 headers", many_headers, refused_or_dropped("malformed_request")),
        case(
            "100 KB Authorization",
            s.clone()
                .without_token()
                .get("/AuditEvent")
                .header("Authorization", format!("Bearer {long_value}")),
            refused(431, "too-long").because("headers_too_large"),
        ),
        case(
            "100 KB _search form",
            s.form("/AuditEvent/_search", format!("message-id={long_value}")),
            too_large_or_reset(),
        ),
        // What is forwarded is limited like what arrives (limits.max_uri_bytes, 8 KiB).
        case(
            "10,000 form parameters that would be a 60 KB upstream URL",
            s.form("/AuditEvent/_search", "_id=1&".repeat(10_000)),
            refused(414, "too-long").because("uri_too_long"),
        ),
        case(
            "a 5 KB URL and a 5 KB form, 10 KB together upstream",
            s.form(
                &format!("/AuditEvent/_search?message-id={}", "u".repeat(5_000)),
                format!("message-id={}", "f".repeat(5_000)),
            ),
            refused(414, "too-long").because("uri_too_long"),
        ),
        case(
            "101 short parameters",
            s.get(&format!("/AuditEvent?{}", vec!["_id=1"; 101].join("&"))),
            invalid().because("too_many_parameters"),
        ),
        case(
            "60 KB query over HTTP/2",
            s2.get(&format!("/AuditEvent?message-id={long_query}")),
            refused_or_dropped("uri_too_long"),
        ),
        case(
            "100 KB header over HTTP/2",
            s2.get("/AuditEvent?message-id=long-header-h2")
                .header("X-Padding", long_value.clone()),
            refused(431, "").no_reason(
                "the HTTP/2 codec answers a header block over its limit with a bare 431 before a request exists",
            ),
        ),
    ];
    let first = run_cases(&h, "overlong requests", cases).await;

    let cert = h.pki.client("adv-long-raw");
    let t = h.token(&cert, station_claims(DEV, SOR, GLN));
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n")
    };
    let cases = vec![
        raw(
            "100 KB query value",
            get(&format!("/fhir/AuditEvent?message-id={long_value}")),
            &[0],
            vec![],
        )
        .because("malformed_request"),
        raw(
            "100 KB of repeated parameters",
            get(&format!(
                "/fhir/AuditEvent?{}",
                "message-id=a&".repeat(8_000)
            )),
            &[0],
            vec![],
        )
        .because("malformed_request"),
        raw(
            "100 KB path",
            get(&format!("/fhir/AuditEvent/{long_value}")),
            &[0],
            vec![],
        )
        .because("malformed_request"),
    ];
    verdict(&[
        first,
        run_raw(&h, &cert, "overlong raw requests", cases).await,
    ]);
}

// ---------------------------------------------------------------------------------------------
// 10. Raw HTTP/1.1 over TLS: paths a client library would normalise, and request smuggling
// ---------------------------------------------------------------------------------------------

fn tls_connector(h: &Harness, cert: &CertifiedKey) -> pingora::tls::TlsConnector {
    common::raw::tls_connector(&h.pki.ca.cert.cert_der, cert)
}

/// Write `bytes` on a fresh mTLS connection and read until the server closes it or stays
/// quiet for a moment.
async fn raw_exchange(
    h: &Harness,
    connector: &pingora::tls::TlsConnector,
    bytes: &[u8],
) -> Vec<u8> {
    common::raw::exchange(h.port, connector, bytes).await
}

/// The status codes of the HTTP/1.x responses in `raw`, in order.
fn statuses(raw: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_string();
        let Some(status) = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        out.push(status);
        let len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let next = (end + 4 + len).min(rest.len());
        rest = &rest[next..];
    }
    out
}

struct RawCase {
    name: String,
    bytes: Vec<u8>,
    /// Statuses of the responses on the connection, in order (empty: closed unanswered;
    /// `[0]`: a clean refusal, one 4xx answer or none at all).
    statuses: Vec<u16>,
    /// Every request the upstream received, in order: (method, target).
    seen: Vec<(&'static str, String)>,
    /// The rule that refused (`Refusal::reason`): required when a status is 400 or more.
    reason: Option<&'static str>,
}

impl RawCase {
    /// Refused by exactly this rule.
    fn because(mut self, reason: &'static str) -> RawCase {
        self.reason = Some(reason);
        self
    }
}

fn raw(
    name: impl Into<String>,
    bytes: impl Into<Vec<u8>>,
    statuses: &[u16],
    seen: Vec<(&'static str, String)>,
) -> RawCase {
    RawCase {
        name: name.into(),
        bytes: bytes.into(),
        statuses: statuses.to_vec(),
        seen,
        reason: None,
    }
}

async fn run_raw(
    h: &Harness,
    cert: &CertifiedKey,
    name: &'static str,
    cases: Vec<RawCase>,
) -> Table {
    let connector = tls_connector(h, cert);
    let n = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let before = h.upstream.request_count();
        let refused_before = refusals(h.admin_port).await;
        let answer = raw_exchange(h, &connector, &c.bytes).await;
        let counted = rose(&refused_before, &refusals(h.admin_port).await);
        let got = statuses(&answer);
        let seen: Vec<(String, String)> = h
            .upstream
            .requests()
            .into_iter()
            .skip(before)
            .map(|r| (r.method, r.target))
            .collect();
        let want: Vec<(String, String)> = c
            .seen
            .iter()
            .map(|(m, t)| (m.to_string(), t.clone()))
            .collect();
        let mut problems = Vec::new();
        let refusal = c.statuses == [0]
            && (got.is_empty() || (got.len() == 1 && (400..500).contains(&got[0])));
        if got != c.statuses && !refusal {
            let head: String = String::from_utf8_lossy(&answer).chars().take(300).collect();
            problems.push(format!(
                "responses {got:?}, expected {:?}: {head:?}",
                c.statuses
            ));
        }
        if seen != want {
            problems.push(format!("the upstream saw {seen:?}, expected {want:?}"));
        }
        let is_refusal = c.statuses == [0] || c.statuses.iter().any(|s| *s >= 400);
        problems.extend(reason_problems(is_refusal, c.reason, None, &counted));
        if !problems.is_empty() {
            failures.push(format!("[{}] {}", c.name, problems.join("; ")));
        }
    }
    // Whatever happened, nothing reached the FHIR server without the caller's constraint.
    for r in h.upstream.requests() {
        if !(r.target.starts_with(&format!("/fhir/AuditEvent?{DEV_SEC}"))
            || r.target == "/fhir/AuditEvent")
        {
            failures.push(format!(
                "an unconstrained request reached the upstream: {} {}",
                r.method, r.target
            ));
        }
    }
    Table {
        name,
        cases: n,
        failures,
    }
}

#[tokio::test]
async fn adversarial_raw_paths_and_smuggling() {
    let h = Harness::start("adv-raw", Options::default());
    let cert = h.pki.client("adv-raw-station");
    let t = h.token(&cert, station_claims(DEV, SOR, GLN));
    let auth = format!("Authorization: Bearer {t}\r\n");
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
    };
    let constrained = |rest: &str| {
        let q = if rest.is_empty() {
            DEV_SEC.to_string()
        } else {
            format!("{DEV_SEC}&{rest}")
        };
        vec![("GET", format!("/fhir/AuditEvent?{q}"))]
    };
    let smuggled = |id: &str| {
        format!("GET /fhir/AuditEvent?message-id={id} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
    };
    let search_head = |extra: &str| {
        format!("POST /fhir/AuditEvent/_search HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: {FORM}\r\n{extra}\r\n")
    };
    let reg = registration(DEV, "0101010001", "raw-msg").to_string();
    let hidden_401 = smuggled("smuggled-401");
    let chunk = "a".repeat(70_000);
    let cases = vec![
        raw("control: search", get("/fhir/AuditEvent?message-id=raw"), &[200], constrained("message-id=raw")),
        // Paths a client library would have normalised.
        raw("dot-dot segment", get("/fhir/x/../AuditEvent"), &[400], vec![]).because("dot_segment"),
        raw("dot-dot out of the type", get("/fhir/AuditEvent/../Patient"), &[400], vec![]).because("dot_segment"),
        raw("encoded dot-dot", get("/fhir/%2e%2e/fhir/AuditEvent"), &[400], vec![]).because("path_characters"),
        raw("encoded upper-case dot-dot", get("/fhir/AuditEvent/%2E%2E/%2E%2E/admin"), &[400], vec![]).because("path_characters"),
        raw("dot segment", get("/fhir/./AuditEvent"), &[400], vec![]).because("dot_segment"),
        raw("trailing dot segment", get("/fhir/AuditEvent/."), &[400], vec![]).because("dot_segment"),
        raw("double slash", get("/fhir//AuditEvent"), &[400], vec![]).because("dot_segment"),
        raw("encoded slash with dot-dot", get("/fhir/AuditEvent%2F..%2FPatient"), &[400], vec![]).because("path_characters"),
        raw("backslash after the base", get("/fhir\\AuditEvent"), &[403], vec![]).because("unknown_path"),
        raw("backslash in a read", get("/fhir/AuditEvent\\1"), &[400], vec![]).because("path_characters"),
        raw("backslash dot-dot", get("/fhir/AuditEvent/1\\..\\..\\Patient"), &[400], vec![]).because("path_characters"),
        raw(";jsessionid", get("/fhir/AuditEvent;jsessionid=1"), &[400], vec![]).because("path_characters"),
        raw("a space in the path", get("/fhir/Audit Event"), &[400], vec![]).because("path_characters"),
        raw("non-ASCII in the path", get("/fhir/AuditEvent/\u{e9}"), &[400], vec![]).because("malformed_id"),
        raw("relative target", get("fhir/AuditEvent"), &[403], vec![]).because("unknown_path"),
        raw("asterisk target", get("*"), &[403], vec![]).because("unknown_path"),
        raw("absolute-form target for another host", get("https://evil.example/fhir/AuditEvent?message-id=abs"), &[400], vec![]).because("malformed_request"),
        raw("backslash in the query", get("/fhir/AuditEvent?message-id=a\\,b"), &[200], constrained("message-id=a%5C%2Cb")),
        // Request smuggling.
        raw("CL.TE: refused, the hidden request is never served",
            format!("{}0\r\n\r\n{}", search_head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), smuggled("smuggled-clte")),
            &[400], vec![]).because("length_and_chunked"),
        raw("TE.CL: refused, the hidden request is never served",
            format!("{}10\r\nmessage-id=te-cl\r\n0\r\n\r\n{}", search_head("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"), smuggled("smuggled-tecl")),
            &[400], vec![]).because("length_and_chunked"),
        raw("two different Content-Length headers",
            format!("{}message-id=cl{}", search_head("Content-Length: 13\r\nContent-Length: 200\r\n"), smuggled("smuggled-cl2")),
            &[400], vec![]).because("malformed_request"),
        raw("a Content-Length list with different values",
            format!("{}message-id=cl{}", search_head("Content-Length: 13, 200\r\n"), smuggled("smuggled-cllist")),
            &[400], vec![]).because("malformed_request"),
        raw("Content-Length negative",
            format!("{}message-id=cl", search_head("Content-Length: -13\r\n")),
            &[400], vec![]).because("malformed_request"),
        raw("Transfer-Encoding chunked, identity",
            format!("{}0\r\n\r\n{}", search_head("Transfer-Encoding: chunked, identity\r\n"), smuggled("smuggled-te-identity")),
            &[400], vec![]).because("malformed_request"),
        raw("Transfer-Encoding xchunked",
            format!("{}0\r\n\r\n{}", search_head("Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n"), smuggled("smuggled-xchunked")),
            &[400], vec![]).because("malformed_request"),
        raw("two Transfer-Encoding headers, chunked first",
            format!("{}0\r\n\r\n{}", search_head("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"), smuggled("smuggled-te2")),
            &[400], vec![]).because("malformed_request"),
        raw("space before the colon of Transfer-Encoding",
            format!("{}0\r\n\r\n{}", search_head("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n"), smuggled("smuggled-te-space")),
            &[400], vec![]).because("malformed_request"),
        raw("Transfer-Encoding on HTTP/1.0",
            format!("POST /fhir/AuditEvent/_search HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}", smuggled("smuggled-http10")),
            &[400], vec![]).because("malformed_request"),
        raw("a NUL in a header value",
            format!("GET /fhir/AuditEvent?message-id=nul HTTP/1.1\r\nHost: localhost\r\n{auth}X-A: a\u{0}b\r\nConnection: close\r\n\r\n"),
            &[400], vec![]).because("malformed_request"),
        raw("a request hidden in a create body",
            format!("POST /fhir/AuditEvent HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: {FHIR_JSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reg}{}", reg.len() + smuggled("smuggled-body").len(), smuggled("smuggled-body")),
            &[400], vec![]).because("not_json"),
        raw("a request hidden in the body of an unauthenticated request",
            format!("POST /fhir/AuditEvent/_search HTTP/1.1\r\nHost: localhost\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n\r\n{hidden_401}", hidden_401.len()),
            &[401], vec![]).because("missing"),
        raw("a request hidden in an oversized body",
            format!("{}{}", search_head("Content-Length: 70000\r\n"), smuggled("smuggled-413")),
            &[413], vec![]).because("too_large"),
        raw("a chunked create over 64 KiB",
            format!("POST /fhir/AuditEvent HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: {FHIR_JSON}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()),
            &[413], vec![]).because("too_large"),
        raw("a malformed chunk size",
            format!("{}zz\r\nmessage-id=x\r\n0\r\n\r\n", search_head("Transfer-Encoding: chunked\r\nConnection: close\r\n")),
            &[400], vec![]).because("body_unreadable"),
        raw("an overflowing chunk size",
            format!("{}ffffffffffffffffffff\r\nmessage-id=x\r\n0\r\n\r\n", search_head("Transfer-Encoding: chunked\r\nConnection: close\r\n")),
            &[400], vec![]).because("body_unreadable"),
        // Pingora 0.9.1's HttpServer drops bytes pipelined behind a complete request: the second
        // search is never answered. Should that change, it must still arrive constrained.
        raw("a pipelined second search is not served",
            format!("GET /fhir/AuditEvent?message-id=pipe-1 HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n{}", smuggled("pipe-2")),
            &[200], constrained("message-id=pipe-1")),
        raw("bare LF line endings",
            format!("GET /fhir/AuditEvent?message-id=lf HTTP/1.1\nHost: localhost\n{}Connection: close\n\n", auth.replace("\r\n", "\n")),
            &[200], constrained("message-id=lf")),
        raw("two Host headers",
            format!("GET /fhir/AuditEvent?message-id=hosts HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n{auth}Connection: close\r\n\r\n"),
            &[400], vec![]).because("malformed_request"),
    ];
    verdict(&[run_raw(&h, &cert, "raw HTTP/1.1", cases).await]);
}

/// RFC 9112 §6 / §9.6: a request whose framing two parsers could read differently is refused
/// (400, OperationOutcome, `Connection: close`) and its connection closed, so a request sent
/// behind it on the same connection is never served; a request that asks to close, or an
/// HTTP/1.0 one, is answered and closed; a head beyond Pingora's fixed 1 MiB limit gets a 414
/// instead of a silent close. Each case sends its request, reads the answer, then sends a
/// second search on the same connection.
#[tokio::test]
async fn adversarial_transport_framing() {
    let h = Harness::start("adv-framing", Options::default());
    let cert = h.pki.client("adv-framing-station");
    let t = h.token(&cert, station_claims(DEV, SOR, GLN));
    let auth = format!("Authorization: Bearer {t}\r\n");
    let connector = tls_connector(&h, &cert);
    let second =
        format!("GET /fhir/AuditEvent?message-id=second HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    let form = "message-id=first";
    let chunked = format!("{:x}\r\n{form}\r\n0\r\n\r\n", form.len());
    let search = |fields: &str, body: &str| {
        format!("POST /fhir/AuditEvent/_search HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: {FORM}\r\n{fields}\r\n{body}")
    };
    let get = |version: &str, fields: &str| {
        format!("GET /fhir/AuditEvent?message-id=first {version}\r\nHost: localhost\r\n{auth}{fields}\r\n")
    };
    let cl = format!("Content-Length: {}\r\n", form.len());
    // (name, first request, its status, (issue code, reason) of a refusal, connection kept open)
    type Framing = (
        &'static str,
        String,
        u16,
        Option<(&'static str, &'static str)>,
        bool,
    );
    let cases: Vec<Framing> = vec![
        (
            "control: HTTP/1.1 keep-alive",
            get("HTTP/1.1", ""),
            200,
            None,
            true,
        ),
        ("control: a form search", search(&cl, form), 200, None, true),
        (
            "Connection: close is honoured",
            get("HTTP/1.1", "Connection: close\r\n"),
            200,
            None,
            false,
        ),
        (
            "HTTP/1.0 without keep-alive",
            get("HTTP/1.0", ""),
            200,
            None,
            false,
        ),
        (
            "Content-Length and Transfer-Encoding",
            search(&format!("{cl}Transfer-Encoding: chunked\r\n"), &chunked),
            400,
            Some(("invalid", "length_and_chunked")),
            false,
        ),
        (
            "Transfer-Encoding and Content-Length 0",
            search(
                "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
                &chunked,
            ),
            400,
            Some(("invalid", "length_and_chunked")),
            false,
        ),
        (
            "Transfer-Encoding gzip, chunked",
            search("Transfer-Encoding: gzip, chunked\r\n", &chunked),
            400,
            Some(("invalid", "transfer_encoding")),
            false,
        ),
        (
            "Transfer-Encoding twice",
            search(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                &chunked,
            ),
            400,
            Some(("invalid", "transfer_encoding")),
            false,
        ),
        (
            "Transfer-Encoding identity",
            search("Transfer-Encoding: identity\r\n", form),
            400,
            Some(("invalid", "malformed_request")),
            false,
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            search("Transfer-Encoding: chunked\r\n", &chunked).replacen("HTTP/1.1", "HTTP/1.0", 1),
            400,
            Some(("invalid", "malformed_request")),
            false,
        ),
        (
            "the same Content-Length twice",
            search(&format!("{cl}{cl}"), form),
            400,
            Some(("invalid", "content_length")),
            false,
        ),
        (
            "two different Content-Lengths",
            search(&format!("{cl}Content-Length: 3\r\n"), form),
            400,
            Some(("invalid", "malformed_request")),
            false,
        ),
        (
            "a GET with a body",
            format!("{}{form}", get("HTTP/1.1", &cl)),
            400,
            Some(("invalid", "body_not_allowed")),
            false,
        ),
        (
            "a GET with a chunked body",
            format!(
                "{}{chunked}",
                get("HTTP/1.1", "Transfer-Encoding: chunked\r\n")
            ),
            400,
            Some(("invalid", "body_not_allowed")),
            false,
        ),
        (
            "obs-fold",
            get("HTTP/1.1", "X-Folded: a\r\n b\r\n"),
            400,
            Some(("invalid", "malformed_request")),
            false,
        ),
        (
            "a header line without a colon",
            get("HTTP/1.1", "NoColon\r\n"),
            400,
            Some(("invalid", "malformed_request")),
            false,
        ),
        (
            "a request line over Pingora's 1 MiB head limit",
            get("HTTP/1.1", "").replacen("first", &"a".repeat(1_100_000), 1),
            414,
            Some(("too-long", "uri_too_long")),
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (name, first, status, refusal, keep) in &cases {
        let before = h.upstream.request_count();
        let refused_before = refusals(h.admin_port).await;
        let mut tls = common::raw::connect(h.port, &connector).await;
        let _ = tls.write_all(first.as_bytes()).await;
        let _ = tls.flush().await;
        let (answer, closed) = common::raw::read_answers(&mut tls).await;
        let _ = tls.write_all(second.as_bytes()).await;
        let _ = tls.flush().await;
        let (after, _) = common::raw::read_answers(&mut tls).await;
        let text = String::from_utf8_lossy(&answer).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut problems = Vec::new();
        if statuses(&answer) != [*status] {
            problems.push(format!("answered {:?}", head.lines().next()));
        }
        if let Some((code, _)) = refusal {
            let outcome: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            if outcome["resourceType"] != "OperationOutcome" || outcome["issue"][0]["code"] != *code
            {
                problems.push(format!("not an OperationOutcome with {code}: {body:.200}"));
            }
        }
        problems.extend(reason_problems(
            *status >= 400,
            refusal.map(|(_, reason)| reason),
            None,
            &rose(&refused_before, &refusals(h.admin_port).await),
        ));
        let says_close = head.to_ascii_lowercase().contains("\r\nconnection: close");
        let second_served = !statuses(&after).is_empty();
        if *keep {
            if closed || says_close || statuses(&after) != [200] {
                problems.push(format!(
                    "keep-alive broken: closed {closed}, second {:?}",
                    statuses(&after)
                ));
            }
        } else if !closed || !says_close || second_served {
            problems.push(format!(
                "connection not closed: closed {closed}, Connection: close {says_close}, second request served {second_served}"
            ));
        }
        let forwarded = h.upstream.request_count() - before;
        let want = match (*status, *keep) {
            (200, true) => 2,
            (200, false) => 1,
            _ => 0,
        };
        if forwarded != want {
            problems.push(format!("{forwarded} request(s) forwarded, expected {want}"));
        }
        if !problems.is_empty() {
            failures.push(format!("[{name}] {}", problems.join("; ")));
        }
    }
    verdict(&[Table {
        name: "transport framing",
        cases: cases.len(),
        failures,
    }]);
}
