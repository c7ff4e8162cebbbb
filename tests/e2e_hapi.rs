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

use common::hapi::Hapi;
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

/// Every id a search returns, following signed `next` links; each page must be a 200.
async fn search_all(c: &Caller, url: &str, pages: &mut usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut next = Some(url.to_string());
    while let Some(u) = next {
        let resp = c.get_url(&u).send().await.unwrap();
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

/// HAPI behind the proxy, the dev issuer, and what the steps registered and learnt. The
/// harness's recording upstream stays idle here (the proxy forwards to HAPI): what reached the
/// FHIR server is checked by counting HAPI's records (`hapi_count`).
struct World {
    hapi: Hapi,
    h: Harness,
    token_url: String,
    /// One certificate per station (the issuer enrols each by its subject).
    certs: BTreeMap<String, CertifiedKey>,
    by_station: BTreeMap<String, BTreeSet<String>>,
    by_cpr: BTreeMap<String, BTreeSet<String>>,
    by_fixture: BTreeMap<String, String>,
    all: BTreeSet<String>,
    /// The registration of `Other-EUA` for CPR 0303030303 (an organisation of no supporter's
    /// but 11111111's).
    other_id: String,
    /// Search pages checked so far.
    pages: usize,
}

impl World {
    async fn start() -> World {
        let hapi = Hapi::start("hapi");
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
        World {
            hapi,
            h,
            token_url,
            certs: BTreeMap::new(),
            by_station: BTreeMap::new(),
            by_cpr: BTreeMap::new(),
            by_fixture: BTreeMap::new(),
            all: BTreeSet::new(),
            other_id: String::new(),
            pages: 0,
        }
    }

    /// Station `device` of `org`, with a token from the dev issuer's `client_credentials`
    /// endpoint (mTLS client authentication, RFC 8705 §2).
    async fn station(&mut self, device: &str, org: (&str, &str, &str)) -> Caller {
        let h = &self.h;
        let cert = self
            .certs
            .entry(device.to_string())
            .or_insert_with(|| h.pki.client(device))
            .clone();
        let scope = format!("EDS system/AuditEvent.crs SOR:{} GLN:{}", org.1, org.2);
        let resp = h
            .client(&cert)
            .post(&self.token_url)
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
        let token = body["access_token"].as_str().unwrap().to_string();
        h.caller_for(cert, Some(token))
    }

    /// `c` registers `body`: 201, and the new record's id.
    async fn create(&self, c: &Caller, body: &Value, what: &str) -> String {
        let answer = c.create(body).send().await.unwrap();
        let status = answer.status();
        let created: Value = answer.json().await.unwrap();
        assert_eq!(status, 201, "{what}: {created}");
        created["id"].as_str().unwrap().to_string()
    }

    fn register(&mut self, device: &str, cpr: Option<&str>, fixture_id: &str, id: String) {
        self.by_station
            .entry(device.to_string())
            .or_default()
            .insert(id.clone());
        if let Some(c) = cpr {
            self.by_cpr
                .entry(c.to_string())
                .or_default()
                .insert(id.clone());
        }
        self.by_fixture.insert(fixture_id.to_string(), id.clone());
        self.all.insert(id);
    }

    /// Every id `c`'s search `rel` returns, over all its pages.
    async fn search_all(&mut self, c: &Caller, rel: &str) -> BTreeSet<String> {
        search_all(c, &self.h.url(rel), &mut self.pages).await
    }

    /// The ids of the registrations made from these fixtures.
    fn fixtures(&self, ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|f| self.by_fixture[*f].clone()).collect()
    }
}

/// A 200 `resourceType` answer (HAPI's, checked by the proxy).
fn ok(code: &'static str) -> Expect {
    Expect::new(200, code, Seen::Nothing)
}

/// Registration: every IG example is accepted from the station that would send it (the device
/// of its contained Device, its organisation), labelled and stored; plus one more patient of
/// Cura-EUA and a registration of an organisation of our own (Other-EUA).
async fn every_ig_example_is_registered_by_its_station(w: &mut World) {
    let manifest: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/ig/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.len(), 34);
    for entry in &manifest {
        let device = entry["device_id"].as_str().unwrap();
        let org = STATIONS
            .iter()
            .find(|(d, _)| *d == device)
            .unwrap_or_else(|| panic!("no station {device}"))
            .1;
        let s = w.station(device, org).await;
        let body = fixture(entry["file"].as_str().unwrap());
        let what = entry["id"].as_str().unwrap();
        let id = w.create(&s, &body, what).await;
        w.register(device, entry["cpr"].as_str(), what, id);
    }
    let mut extra = fixture("EDS-PDS-01.1.json");
    extra["entity"][0]["what"]["identifier"]["value"] = json!("0404040404");
    extra["entity"][1]["what"]["identifier"]["value"] = json!("EXTRA-MSG-1");
    let cura = w.station("Cura-EUA", AARHUS).await;
    let id = w.create(&cura, &extra, "extra-cura").await;
    w.register("Cura-EUA", Some("0404040404"), "extra-cura", id);

    let mut other = fixture("EDS-PDS-01.1.json");
    other["contained"][0]["id"] = json!("Other-EUA");
    other["contained"][0]["identifier"] = json!([{"value": "Other-EUA"}]);
    other["source"]["observer"]["reference"] = json!("#Other-EUA");
    other["agent"][0]["who"]["identifier"]["value"] = json!(OTHER_ORG.1);
    other["agent"][0]["extension"][0]["valueIdentifier"]["value"] = json!(OTHER_ORG.2);
    other["agent"][1]["who"]["identifier"]["value"] = json!("999999999");
    other["entity"][0]["what"]["identifier"]["value"] = json!("0303030303");
    other["entity"][1]["what"]["identifier"]["value"] = json!("OTHER-MSG-1");
    let other_station = w.station("Other-EUA", OTHER_ORG).await;
    let other_id = w.create(&other_station, &other, "other").await;
    w.register("Other-EUA", Some("0303030303"), "other", other_id.clone());
    w.other_id = other_id;
    assert_eq!(hapi_count(&w.hapi.base).await, 36);
}

/// Search constraint, stations: each station's searches return exactly its own registrations
/// (`device-id` label), over every page.
async fn each_station_sees_exactly_its_own(w: &mut World) {
    for (device, org) in STATIONS {
        let s = w.station(device, *org).await;
        let seen = w.search_all(&s, "AuditEvent?_count=50").await;
        assert_eq!(seen, w.by_station[*device], "station {device}");
    }
}

/// Search constraint, citizens: each citizen's searches return exactly the registrations about
/// their CPR (`cpr` label).
async fn each_citizen_sees_exactly_theirs(w: &mut World) {
    for (cpr, expected) in w.by_cpr.clone() {
        let c = w.h.caller(&format!("citizen-{cpr}"), citizen_claims(&cpr));
        assert_eq!(
            w.search_all(&c, "AuditEvent").await,
            expected,
            "citizen {cpr}"
        );
    }
}

/// Search constraint, supporters: a supporter's searches return exactly the registrations in
/// which an organisation of its CVR (the harness's directory: 29189846 = Aarhus; 11111111 =
/// Stjernepladsen + 555555555) is sender or receiver, paged by signed links.
async fn supporters_see_exactly_their_organisations(w: &mut World) {
    let aarhus = w.h.caller("support-aarhus", supporter_claims("29189846"));
    let mut expected = w.all.clone();
    expected.remove(&w.other_id);
    let mut paged = 0;
    let seen = search_all(&aarhus, &w.h.url("AuditEvent?_count=10"), &mut paged).await;
    assert_eq!(seen, expected, "supporter of Aarhus");
    assert!(paged >= 3, "only {paged} pages");
    let other = w.h.caller("support-other", supporter_claims("11111111"));
    assert_eq!(
        w.search_all(&other, "AuditEvent?_count=7").await,
        w.all,
        "supporter of 11111111"
    );
}

/// The IG's search parameters (`message-id`, `cpr`, `sender-sor`) work through the proxy,
/// always inside the caller's constraint.
async fn ig_search_parameters_work_inside_the_constraint(w: &mut World) {
    let cura = w.station("Cura-EUA", AARHUS).await;
    let ids = w
        .search_all(&cura, "AuditEvent?message-id=MSG1234567890")
        .await;
    assert_eq!(ids, w.fixtures(&["EDS-PDS-01.1", "EDS-PDS-01.2"]));
    let mm = w.station("MultiMed-AP", STJERNEPLADSEN).await;
    let ids = w.search_all(&mm, "AuditEvent?cpr=PAT1234567890").await;
    assert_eq!(ids, w.fixtures(&["EDS-PDS-04.1", "EDS-PDS-04.2"]));
    let citizen =
        w.h.caller("citizen-sender-sor", citizen_claims("0303030303"));
    let ids = w
        .search_all(&citizen, "AuditEvent?sender-sor=555555555")
        .await;
    assert_eq!(ids, BTreeSet::from([w.other_id.clone()]));
    assert!(w
        .search_all(&citizen, "AuditEvent?sender-sor=937961000016000")
        .await
        .is_empty());
}

/// Response shaping (`_elements`, `_summary`, `_sort`, `_total`) cannot hide the labels from
/// the response check (HAPI keeps `meta` with `_elements` and `_summary`), and still returns
/// exactly the caller's records; `_summary=count` counts only them.
async fn response_shaping_cannot_hide_the_labels(w: &mut World) {
    let cura = w.station("Cura-EUA", AARHUS).await;
    let own = w.by_station["Cura-EUA"].clone();
    for shaping in [
        "_elements=id,type",
        "_summary=true",
        "_summary=data",
        "_sort=-date&_total=accurate",
    ] {
        let ids = w.search_all(&cura, &format!("AuditEvent?{shaping}")).await;
        assert_eq!(ids, own, "{shaping}");
    }
    let counted = cura
        .search("_summary=count")
        .expect(&w.h, ok("Bundle"))
        .await
        .json;
    assert_eq!(counted["total"].as_u64(), Some(own.len() as u64));
}

/// Read isolation: a read or vread of someone else's registration is 404 (as if it did not
/// exist), one's own is 200.
async fn reading_someone_elses_registration_is_404(w: &mut World) {
    let citizen =
        w.h.caller("citizen-sender-sor", citizen_claims("0303030303"));
    let mm = w.station("MultiMed-AP", STJERNEPLADSEN).await;
    let pat_id = w.by_fixture["EDS-PDS-01.1"].clone();
    citizen
        .get(&format!("AuditEvent/{pat_id}"))
        .expect(&w.h, not_found())
        .await;
    citizen
        .get(&format!("AuditEvent/{}", w.other_id))
        .expect(&w.h, ok("AuditEvent"))
        .await;
    mm.get(&format!("AuditEvent/{pat_id}/_history/1"))
        .expect(&w.h, not_found())
        .await;
}

/// Paging handles: a signed `next` link of one caller is refused for another.
async fn a_paging_handle_is_refused_for_another_caller(w: &mut World) {
    let aarhus = w.h.caller("support-aarhus", supporter_claims("29189846"));
    let first = aarhus
        .search("_count=5")
        .expect(&w.h, ok("Bundle"))
        .await
        .json;
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.starts_with(&w.h.base), "{next}");
    let citizen =
        w.h.caller("citizen-sender-sor", citizen_claims("0303030303"));
    citizen
        .get_url(&next)
        .expect(&w.h, forbidden().because("page_not_issued"))
        .await;
}

/// Registration identity: a registration of another station (MultiMed-AP's, sent by Cura-EUA)
/// is refused and leaves HAPI unchanged.
async fn a_refused_registration_leaves_hapi_unchanged(w: &mut World) {
    let cura = w.station("Cura-EUA", AARHUS).await;
    let before = hapi_count(&w.hapi.base).await;
    cura.create(&fixture("EDS-PDS-04.1.json"))
        .expect(&w.h, forbidden().because("device_mismatch"))
        .await;
    assert_eq!(hapi_count(&w.hapi.base).await, before);
    println!(
        "e2e: {} registrations, {} pages of searches checked",
        w.all.len(),
        w.pages
    );
}

/// Backend conformance (issue 13): against real HAPI holding records, probe rounds (every
/// 2 s) pass — `_security` and every IG parameter honoured — so `/readyz` is 200 and
/// `eds_proxy_backend_conformant` is 1 (it is 0 until a round passes).
async fn hapi_passes_the_conformance_probe(w: &mut World) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let admin = format!("http://127.0.0.1:{}", w.h.admin_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
        let status = ready.status().as_u16();
        let text = ready.text().await.unwrap();
        if status == 200 {
            assert!(text.contains("conformance: ok"), "{text}");
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
}

/// First layer of "no reference resolved at write time": the proxy itself refuses a
/// conditional reference (a probe that would tell whether a record exists) before HAPI sees
/// it, and also one hidden behind a local reference whose contained id is a match URL.
async fn conditional_references_are_refused_by_the_proxy_first(w: &mut World) {
    let cura = w.station("Cura-EUA", AARHUS).await;
    let probe = conditional_probe(&w.hapi, &w.other_id).await;
    let before = hapi_count(&w.hapi.base).await;
    let outcome = cura
        .create(&registration_referring_to(&probe))
        .expect(&w.h, invalid().because("resolvable_reference"))
        .await
        .json;
    // Refused by the proxy itself, not HAPI's refusal passed on (that is the second layer).
    let diagnostics = outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default();
    assert!(
        diagnostics.starts_with("entity.what.reference: only local references (#id)")
            && !diagnostics.contains("HAPI-"),
        "{diagnostics}"
    );
    assert_eq!(hapi_count(&w.hapi.base).await, before);

    // HAPI reads any reference holding `?` as a match URL, `#x/AuditEvent?…` too, when a
    // contained resource has that id.
    let evil = format!("x/{probe}");
    let mut body = registration_referring_to(&format!("#{evil}"));
    let mut device = body["contained"][0].clone();
    device["id"] = json!(evil);
    body["contained"].as_array_mut().unwrap().push(device);
    let outcome = cura
        .create(&body)
        .expect(&w.h, invalid().because("contained_id_malformed"))
        .await
        .json;
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        "a contained resource's id must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
    );
    assert_eq!(hapi_count(&w.hapi.base).await, before);
}

/// One HAPI, one proxy, the steps in order (each needs what the earlier ones registered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hapi_end_to_end() {
    let mut w = World::start().await;
    every_ig_example_is_registered_by_its_station(&mut w).await;
    each_station_sees_exactly_its_own(&mut w).await;
    each_citizen_sees_exactly_theirs(&mut w).await;
    supporters_see_exactly_their_organisations(&mut w).await;
    ig_search_parameters_work_inside_the_constraint(&mut w).await;
    response_shaping_cannot_hide_the_labels(&mut w).await;
    reading_someone_elses_registration_is_404(&mut w).await;
    a_paging_handle_is_refused_for_another_caller(&mut w).await;
    a_refused_registration_leaves_hapi_unchanged(&mut w).await;
    hapi_passes_the_conformance_probe(&mut w).await;
    fhir_server_refuses_write_time_lookups(&w.hapi, &w.other_id).await;
    conditional_references_are_refused_by_the_proxy_first(&mut w).await;
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
