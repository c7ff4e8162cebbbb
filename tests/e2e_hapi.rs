//! End to end against a real HAPI FHIR JPA server (started natively by
//! `hapi-compose/hapi-native.sh`), the real proxy with real mTLS, and tokens from the dev
//! issuer's `client_credentials` endpoint. If HAPI cannot start, this test fails and says why.

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

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::*;
use eds_proxy::dev::pki::CertifiedKey;
use serde_json::{json, Value};

const AARHUS: (&str, &str, &str) = ("Aarhus Kommune", "937961000016000", "GLN-1234");
const STJERNEPLADSEN: (&str, &str, &str) =
    ("Lægerne Stjernepladsen I/S", "698141000016008", "GLN-12345");
const OTHER_ORG: (&str, &str, &str) = ("Anden Kommune", "555555555", "GLN-5555");
/// Stations of the IG examples with the organisation each registers for, plus one of our own.
const STATIONS: &[(&str, (&str, &str, &str))] = &[
    ("Cura-EUA", AARHUS),
    ("Cura-MSH", AARHUS),
    ("KvalitetsIT-AP", AARHUS),
    ("MultiMed-MSH", STJERNEPLADSEN),
    ("MultiMed-AP", STJERNEPLADSEN),
    ("EGClinea-EUA", STJERNEPLADSEN),
    ("Other-EUA", OTHER_ORG),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Stops HAPI when the test ends, passed or failed.
struct Hapi {
    port: u16,
    data_dir: std::path::PathBuf,
    base: String,
}

impl Hapi {
    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(repo().join("hapi-compose/hapi-native.sh"))
            .args(args)
            .env("HAPI_PORT", self.port.to_string())
            .env("HAPI_DATA_DIR", &self.data_dir)
            .output()
            .expect("bash runs")
    }

    fn start() -> Hapi {
        let port = free_port();
        let data_dir = tmp_dir("hapi");
        let mut hapi = Hapi {
            port,
            data_dir,
            base: String::new(),
        };
        let out = hapi.script(&["start"]);
        assert!(
            out.status.success(),
            "HAPI FHIR could not be started by hapi-compose/hapi-native.sh:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        hapi.base = format!("http://127.0.0.1:{port}/fhir");
        let out = hapi.script(&["bootstrap-search-parameters", &hapi.base]);
        assert!(
            out.status.success(),
            "search parameter bootstrap failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        hapi
    }
}

impl Drop for Hapi {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

/// The dev issuer on its own port, enrolled with every station.
fn start_issuer(h: &Harness) -> String {
    let enrolment: Vec<Value> = STATIONS
        .iter()
        .map(|(device, (name, sor, gln))| {
            json!({
                "client_id": device.to_lowercase(),
                "client_name": device,
                "token_endpoint_auth_method": "tls_client_auth",
                "grant_types": ["client_credentials"],
                "tls_client_auth_subject_dn": format!("subject=CN={device}, O=test"),
                "scope": "EDS system/AuditEvent.crs",
                "ehmi:eer:device_id": device,
                "ehmi:org_context": [{"name": name, "sor": sor, "gln": gln}],
            })
        })
        .collect();
    let port = h.pki.start_dev_issuer(&Value::Array(enrolment));
    format!("https://localhost:{port}/token")
}

struct Caller {
    client: reqwest::Client,
    token: String,
}

async fn station(
    h: &Harness,
    token_url: &str,
    certs: &mut BTreeMap<String, CertifiedKey>,
    device: &str,
    org: (&str, &str, &str),
) -> Caller {
    let cert = certs
        .entry(device.to_string())
        .or_insert_with(|| h.pki.client(device))
        .clone();
    let client = h.client(&cert);
    let scope = format!("EDS system/AuditEvent.crs SOR:{} GLN:{}", org.1, org.2);
    let resp = client
        .post(token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &device.to_lowercase()),
            ("scope", &scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "token for {device}");
    let body: Value = resp.json().await.unwrap();
    Caller {
        client,
        token: body["access_token"].as_str().unwrap().to_string(),
    }
}

fn user(h: &Harness, name: &str, claims: Value) -> Caller {
    let cert = h.pki.client(name);
    Caller {
        client: h.client(&cert),
        token: h.token(&cert, claims),
    }
}

/// Every id a search returns, following signed `next` links; asserts each page is constrained.
async fn search_all(c: &Caller, url: &str, pages: &mut usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut next = Some(url.to_string());
    while let Some(u) = next {
        let resp = c.client.get(&u).bearer_auth(&c.token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{u}");
        let bundle: Value = resp.json().await.unwrap();
        *pages += 1;
        for e in bundle["entry"].as_array().into_iter().flatten() {
            ids.insert(e["resource"]["id"].as_str().unwrap().to_string());
        }
        next = bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
    }
    ids
}

async fn hapi_count(base: &str) -> u64 {
    let v: Value = reqwest::get(format!("{base}/AuditEvent?_summary=count"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["total"].as_u64().unwrap()
}

fn fixture(file: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/ig").join(file)).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hapi_end_to_end() {
    let hapi = Hapi::start();
    let h = Harness::start(
        "e2e",
        Options {
            upstream_base: Some(hapi.base.clone()),
            read_timeout_ms: 30_000,
            // The backend conformance probe (issue 13) every 2 s.
            extra_config: "[upstream.probe]\ninterval_seconds = 2\n".into(),
            ..Options::default()
        },
    );
    let token_url = start_issuer(&h);
    let mut certs = BTreeMap::new();

    // Every IG example, registered by the station that would send it.
    let manifest: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/ig/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.len(), 34);
    let mut by_station: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_cpr: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_fixture: BTreeMap<String, String> = BTreeMap::new();
    let mut all = BTreeSet::new();
    let mut register = |device: String, cpr: Option<String>, fixture_id: String, id: String| {
        by_station.entry(device).or_default().insert(id.clone());
        if let Some(c) = cpr {
            by_cpr.entry(c).or_default().insert(id.clone());
        }
        by_fixture.insert(fixture_id, id.clone());
        all.insert(id);
    };
    for entry in &manifest {
        let device = entry["device_id"].as_str().unwrap();
        let org = STATIONS
            .iter()
            .find(|(d, _)| *d == device)
            .unwrap_or_else(|| panic!("no station {device}"))
            .1;
        let s = station(&h, &token_url, &mut certs, device, org).await;
        let body = fixture(entry["file"].as_str().unwrap());
        let resp = s
            .client
            .post(h.url("AuditEvent"))
            .bearer_auth(&s.token)
            .header("Content-Type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let created: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "{}: {created}", entry["id"]);
        register(
            device.into(),
            entry["cpr"].as_str().map(str::to_string),
            entry["id"].as_str().unwrap().into(),
            created["id"].as_str().unwrap().into(),
        );
    }
    // More patients and an organisation of our own, in the same HAPI.
    let mut extra = fixture("EDS-PDS-01.1.json");
    extra["entity"][0]["what"]["identifier"]["value"] = json!("0404040404");
    extra["entity"][1]["what"]["identifier"]["value"] = json!("EXTRA-MSG-1");
    let cura = station(&h, &token_url, &mut certs, "Cura-EUA", AARHUS).await;
    let resp = cura
        .client
        .post(h.url("AuditEvent"))
        .bearer_auth(&cura.token)
        .header("Content-Type", "application/fhir+json")
        .body(extra.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id: Value = resp.json().await.unwrap();
    register(
        "Cura-EUA".into(),
        Some("0404040404".into()),
        "extra-cura".into(),
        id["id"].as_str().unwrap().into(),
    );

    let mut other = fixture("EDS-PDS-01.1.json");
    other["contained"][0]["id"] = json!("Other-EUA");
    other["contained"][0]["identifier"] = json!([{"value": "Other-EUA"}]);
    other["source"]["observer"]["reference"] = json!("#Other-EUA");
    other["agent"][0]["who"]["identifier"]["value"] = json!(OTHER_ORG.1);
    other["agent"][0]["extension"][0]["valueIdentifier"]["value"] = json!(OTHER_ORG.2);
    other["agent"][1]["who"]["identifier"]["value"] = json!("999999999");
    other["entity"][0]["what"]["identifier"]["value"] = json!("0303030303");
    other["entity"][1]["what"]["identifier"]["value"] = json!("OTHER-MSG-1");
    let other_station = station(&h, &token_url, &mut certs, "Other-EUA", OTHER_ORG).await;
    let resp = other_station
        .client
        .post(h.url("AuditEvent"))
        .bearer_auth(&other_station.token)
        .header("Content-Type", "application/fhir+json")
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let other_id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    register(
        "Other-EUA".into(),
        Some("0303030303".into()),
        "other".into(),
        other_id.clone(),
    );
    assert_eq!(hapi_count(&hapi.base).await, 36);

    // Each station sees exactly its own registrations.
    let mut pages = 0;
    for (device, org) in STATIONS {
        let s = station(&h, &token_url, &mut certs, device, *org).await;
        let seen = search_all(&s, &h.url("AuditEvent?_count=50"), &mut pages).await;
        assert_eq!(seen, by_station[*device], "station {device}");
    }
    // Each citizen exactly theirs.
    for (cpr, expected) in &by_cpr {
        let c = user(&h, &format!("citizen-{cpr}"), citizen_claims(cpr));
        assert_eq!(
            &search_all(&c, &h.url("AuditEvent"), &mut pages).await,
            expected,
            "citizen {cpr}"
        );
    }
    // Supporters exactly their organisations' (CVR directory of the harness: 29189846 = Aarhus;
    // 11111111 = Stjernepladsen + 555555555).
    let aarhus_supporter = user(&h, "support-aarhus", supporter_claims("29189846"));
    let mut expected_aarhus = all.clone();
    expected_aarhus.remove(&other_id);
    let mut paged = 0;
    let seen = search_all(
        &aarhus_supporter,
        &h.url("AuditEvent?_count=10"),
        &mut paged,
    )
    .await;
    assert_eq!(seen, expected_aarhus, "supporter of Aarhus");
    assert!(paged >= 3, "only {paged} pages");
    let other_supporter = user(&h, "support-other", supporter_claims("11111111"));
    assert_eq!(
        search_all(&other_supporter, &h.url("AuditEvent?_count=7"), &mut pages).await,
        all,
        "supporter of 11111111"
    );

    // The IG's search parameters work through the proxy, inside the caller's constraint.
    let cura = station(&h, &token_url, &mut certs, "Cura-EUA", AARHUS).await;
    let ids = search_all(
        &cura,
        &h.url("AuditEvent?message-id=MSG1234567890"),
        &mut pages,
    )
    .await;
    assert_eq!(
        ids,
        [&by_fixture["EDS-PDS-01.1"], &by_fixture["EDS-PDS-01.2"]]
            .into_iter()
            .cloned()
            .collect()
    );
    let mm = station(&h, &token_url, &mut certs, "MultiMed-AP", STJERNEPLADSEN).await;
    let ids = search_all(&mm, &h.url("AuditEvent?cpr=PAT1234567890"), &mut pages).await;
    assert_eq!(
        ids,
        [&by_fixture["EDS-PDS-04.1"], &by_fixture["EDS-PDS-04.2"]]
            .into_iter()
            .cloned()
            .collect()
    );
    let citizen = user(&h, "citizen-sender-sor", citizen_claims("0303030303"));
    let ids = search_all(
        &citizen,
        &h.url("AuditEvent?sender-sor=555555555"),
        &mut pages,
    )
    .await;
    assert_eq!(ids, BTreeSet::from([other_id.clone()]));
    assert!(search_all(
        &citizen,
        &h.url("AuditEvent?sender-sor=937961000016000"),
        &mut pages
    )
    .await
    .is_empty());

    // Response shaping cannot hide the labels from the check (HAPI keeps meta with _elements
    // and _summary), and still returns exactly the caller's records.
    let cura_own = &by_station["Cura-EUA"];
    for shaping in [
        "_elements=id,type",
        "_summary=true",
        "_summary=data",
        "_sort=-date&_total=accurate",
    ] {
        let ids = search_all(&cura, &h.url(&format!("AuditEvent?{shaping}")), &mut pages).await;
        assert_eq!(&ids, cura_own, "{shaping}");
    }
    let counted: Value = cura
        .client
        .get(h.url("AuditEvent?_summary=count"))
        .bearer_auth(&cura.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counted["total"].as_u64(), Some(cura_own.len() as u64));

    // Reading someone else's registration: 404; one's own: 200.
    let pat_id = &by_fixture["EDS-PDS-01.1"];
    let resp = citizen
        .client
        .get(h.url(&format!("AuditEvent/{pat_id}")))
        .bearer_auth(&citizen.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = citizen
        .client
        .get(h.url(&format!("AuditEvent/{other_id}")))
        .bearer_auth(&citizen.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = mm
        .client
        .get(h.url(&format!("AuditEvent/{pat_id}/_history/1")))
        .bearer_auth(&mm.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // A paging handle of one caller is refused for another.
    let first: Value = aarhus_supporter
        .client
        .get(h.url("AuditEvent?_count=5"))
        .bearer_auth(&aarhus_supporter.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.starts_with(&h.base), "{next}");
    let resp = citizen
        .client
        .get(&next)
        .bearer_auth(&citizen.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // A refused registration leaves HAPI unchanged.
    let before = hapi_count(&hapi.base).await;
    let forged = fixture("EDS-PDS-04.1.json"); // MultiMed-AP's registration, sent by Cura-EUA
    let resp = cura
        .client
        .post(h.url("AuditEvent"))
        .bearer_auth(&cura.token)
        .header("Content-Type", "application/fhir+json")
        .body(forged.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(hapi_count(&hapi.base).await, before);

    // The conformance probe against real HAPI, now that it holds records: rounds after them
    // (every 2 s; two at least) pass (`_security` and every IG parameter honoured, all listed
    // in /metadata): ready, and the gauge (0 until a round passes) is 1.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let admin = format!("http://127.0.0.1:{}", h.admin_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
        let status = ready.status().as_u16();
        let text = ready.text().await.unwrap();
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "HAPI never passed the conformance probe: /readyz {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "eds_proxy_backend_conformant 1"),
        "{metrics}"
    );
    println!(
        "e2e: {} registrations, {pages} pages of searches checked",
        all.len()
    );

    fhir_server_refuses_write_time_lookups(&hapi, &other_id).await;

    // The same probe through the proxy: refused as invalid before HAPI sees it (first layer).
    let probe = conditional_probe(&hapi, &other_id).await;
    let before = hapi_count(&hapi.base).await;
    let resp = cura
        .client
        .post(h.url("AuditEvent"))
        .bearer_auth(&cura.token)
        .header("Content-Type", "application/fhir+json")
        .body(registration_referring_to(&probe).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let outcome: Value = resp.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "invalid", "{outcome}");
    // Refused by the proxy itself, not HAPI's refusal passed on (that is the second layer).
    let diagnostics = outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default();
    assert!(
        diagnostics.starts_with("entity.what.reference: only local references (#id)")
            && !diagnostics.contains("HAPI-"),
        "{diagnostics}"
    );
    assert_eq!(hapi_count(&hapi.base).await, before);

    // The same probe behind a local reference: HAPI reads any reference holding `?` as a
    // match URL, `#x/AuditEvent?…` too, when a contained resource has that id.
    let evil = format!("x/{probe}");
    let mut body = registration_referring_to(&format!("#{evil}"));
    let mut device = body["contained"][0].clone();
    device["id"] = json!(evil);
    body["contained"].as_array_mut().unwrap().push(device);
    let resp = cura
        .client
        .post(h.url("AuditEvent"))
        .bearer_auth(&cura.token)
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let outcome: Value = resp.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "invalid", "{outcome}");
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        "a contained resource's id must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
    );
    assert_eq!(hapi_count(&hapi.base).await, before);
}

/// A conditional reference that, on stock HAPI, matches exactly the registration `target`
/// (by its cpr and device-id labels), so HAPI's answer would say whether it exists.
async fn conditional_probe(hapi: &Hapi, target: &str) -> String {
    let stored: Value = reqwest::get(format!("{}/AuditEvent/{target}", hapi.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let label = |system: &str| {
        stored["meta"]["security"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["system"] == system)
            .unwrap_or_else(|| panic!("{target} has no {system} label: {stored}"))["code"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let query = format!(
        "_security=urn:eds-proxy:label:cpr|{}&_security=urn:eds-proxy:label:device-id|{}",
        label("urn:eds-proxy:label:cpr"),
        label("urn:eds-proxy:label:device-id")
    );
    let matched: Value = reqwest::get(format!("{}/AuditEvent?{query}&_summary=count", hapi.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        matched["total"], 1,
        "the probe must match exactly one record"
    );
    format!("AuditEvent?{query}")
}

/// A valid IG registration (Cura-EUA for Aarhus) with one more entity naming `reference`.
fn registration_referring_to(reference: &str) -> Value {
    let mut body = fixture("EDS-PDS-01.1.json");
    body["entity"]
        .as_array_mut()
        .unwrap()
        .push(json!({"what": {"reference": reference}}));
    body
}

/// `8-4-4-4-12` lowercase hex digits: HAPI's `UUID` server id strategy.
fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

/// POSTs `body` straight to HAPI (no proxy) and returns the status and the parsed answer.
async fn post_to_hapi(hapi: &Hapi, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/AuditEvent", hapi.base))
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Asserts HAPI refused with 400 and an OperationOutcome whose diagnostics start with `prefix`.
fn assert_hapi_refusal(what: &str, (status, body): &(u16, Value), prefix: &str) {
    assert_eq!(*status, 400, "{what}: {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{what}: {body}");
    let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(diagnostics.starts_with(prefix), "{what}: {diagnostics}");
}

/// Second layer (SECURITY.md, "not to resolve references at write time"): HAPI itself, with
/// the settings of hapi-compose, refuses to look anything up for a client while it stores a
/// resource. Written straight to HAPI, bypassing the proxy, as a proxy bug would.
async fn fhir_server_refuses_write_time_lookups(hapi: &Hapi, target: &str) {
    let probe = conditional_probe(hapi, target).await;
    let before = hapi_count(&hapi.base).await;
    // Stock HAPI runs the search: 201 with the reference rewritten to the one match's id,
    // 404 HAPI-1091 for none, 412 HAPI-1092 for several. Here: refused, whatever matches,
    // wherever in the resource the reference sits.
    let inline = "HAPI-2282: Inline match URLs are not supported on this server";
    let answer = post_to_hapi(hapi, &registration_referring_to(&probe)).await;
    assert_hapi_refusal("conditional entity", &answer, inline);
    assert_eq!(answer.1["issue"][0]["code"], "processing");
    let none = probe.replace("cpr|", "cpr|9");
    let answer = post_to_hapi(hapi, &registration_referring_to(&none)).await;
    assert_hapi_refusal("conditional entity matching nothing", &answer, inline);
    let mut in_contained = fixture("EDS-PDS-01.1.json");
    in_contained["contained"][0]["owner"] = json!({"reference": probe});
    let answer = post_to_hapi(hapi, &in_contained).await;
    assert_hapi_refusal(
        "conditional reference in a contained Device",
        &answer,
        inline,
    );
    let mut in_extension = fixture("EDS-PDS-01.1.json");
    in_extension["extension"] =
        json!([{"url": "urn:example:ext", "valueReference": {"reference": probe}}]);
    let answer = post_to_hapi(hapi, &in_extension).await;
    assert_hapi_refusal("conditional reference in an extension", &answer, inline);
    assert_eq!(hapi_count(&hapi.base).await, before);

    // No placeholder, no external or absolute reference (not even on HAPI's own base).
    let external = "HAPI-0507: Resource contains external reference to URL";
    for reference in [
        format!("{}/AuditEvent/{target}", hapi.base),
        "https://fhir.example.org/fhir/AuditEvent/1".to_string(),
    ] {
        let answer = post_to_hapi(hapi, &registration_referring_to(&reference)).await;
        assert_hapi_refusal(&reference, &answer, external);
    }
    let answer = post_to_hapi(
        hapi,
        &registration_referring_to("urn:uuid:6b0f6a3e-6f1c-4c5e-9a53-1c2d3e4f5a6b"),
    )
    .await;
    assert_hapi_refusal(
        "urn:uuid placeholder",
        &answer,
        "HAPI-0505: Invalid resource reference found at path[AuditEvent.entity.what] - Does not contain resource type",
    );
    assert_eq!(hapi_count(&hapi.base).await, before);

    // A relative reference is still indexed, but the answer no longer depends on the target
    // (stock: 400 HAPI-1094 for a missing id or a wrong type, 201 for an existing one). Ids are
    // HAPI's random UUIDs, never the client's, and the client's meta.source is not stored.
    for reference in [
        format!("AuditEvent/{target}"),
        "AuditEvent/no-such-registration".to_string(),
        format!("Patient/{target}"),
    ] {
        let mut body = registration_referring_to(&reference);
        body["meta"]["source"] = json!("urn:example:client-source");
        let (status, stored) = post_to_hapi(hapi, &body).await;
        assert_eq!(status, 201, "{reference}: {stored}");
        let id = stored["id"].as_str().unwrap();
        assert_ne!(id, "EDS-PDS-01.1");
        assert!(is_uuid(id), "server id {id}");
        // The create answer echoes the body as sent; what HAPI keeps is read back.
        let kept: Value = reqwest::get(format!("{}/AuditEvent/{id}", hapi.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(kept["meta"].get("source").is_none(), "{kept}");
        let last = stored["entity"].as_array().unwrap().last().unwrap();
        assert_eq!(last["what"]["reference"], json!(reference));
    }
    assert_eq!(hapi_count(&hapi.base).await, before + 3);
}
