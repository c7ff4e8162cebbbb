//! Issue 11, proven with a real client: HAPI FHIR's own Java generic client
//! (`tests/java-client`, hapi-fhir-client + hapi-fhir-structures-r4 of the HAPI server's
//! version, from Maven Central) drives the proxy in front of a real HAPI FHIR server over
//! mutual TLS with bearer tokens: capabilities, create, read, vread, a conditional read
//! (304), GET / POST / GET_WITH_SEARCH searches with the IG's parameters paged next to the end
//! and previous back, `Prefer: return=minimal`, and a citizen's search and paging. The Java
//! program repeats every call straight against HAPI (with the `_security` constraint the proxy
//! adds) and compares status, Bundle type, total, link relations, entry ids, resource ids,
//! versions and bodies; it exits 1 on any difference. HAPI is started by
//! `hapi-compose/hapi-native.sh` as in tests/e2e_hapi.rs (run it under
//! `flock /tmp/hapi-run.lock` when other HAPIs may run); Maven builds the client (online the
//! first time, from the local repository afterwards).

#![cfg(feature = "dev")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::Command;

use common::hapi::Hapi;
use common::*;

const DEVICE: &str = "Cura-EUA";
const SOR: &str = "937961000016000";
const GLN: &str = "GLN-1234";
/// The example registration's patient (`ehmiPatient` entity identifier): its CPR label.
const CPR: &str = "PAT1234567890";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Build the Java client (tests/java-client): its classes and its runtime class path.
fn build_java_client() -> String {
    let dir = repo().join("tests/java-client");
    let out = Command::new("mvn")
        .args(["-q", "-B", "package", "-DskipTests"])
        .current_dir(&dir)
        .output()
        .expect("mvn runs (scripts/test.sh installs maven)");
    assert!(
        out.status.success(),
        "building tests/java-client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}:{}/*",
        dir.join("target/classes").display(),
        dir.join("target/dependency").display()
    )
}

#[test]
fn hapi_java_client_sees_no_difference() {
    let classpath = build_java_client();
    let hapi = Hapi::start("compat-hapi");
    let hapi_base = hapi.base.clone();
    let h = Harness::start(
        "client-compat",
        Options {
            upstream_base: Some(hapi_base.clone()),
            read_timeout_ms: 30_000,
            ..Options::default()
        },
    );
    let cert = h.pki.client("java-client");
    cert.write(&h.pki.dir, "java-client").unwrap();
    let station = h.token(&cert, station_claims(DEVICE, SOR, GLN));
    let citizen = h.token(&cert, citizen_claims(CPR));
    let out = Command::new("java")
        .args(["-cp", &classpath, "dk.medcom.eds.compat.ClientCompat"])
        .env("PROXY_BASE", &h.base)
        .env("HAPI_BASE", &hapi_base)
        .env("CA_PEM", h.pki.dir.join("ca.crt"))
        .env("CERT_PEM", h.pki.dir.join("java-client.crt"))
        .env("KEY_PEM", h.pki.dir.join("java-client.key"))
        .env("STATION_TOKEN", station)
        .env("CITIZEN_TOKEN", citizen)
        .env(
            "DEVICE_LABEL",
            format!("urn:eds-proxy:label:device-id|{DEVICE}"),
        )
        .env("CPR_LABEL", format!("urn:eds-proxy:label:cpr|{CPR}"))
        .env("SENDER_SOR", SOR)
        .env(
            "REGISTRATION",
            repo().join("tests/fixtures/AuditEvent-EDS-PDS-01.1.json"),
        )
        .output()
        .expect("java runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "HAPI's Java client noticed the proxy:\n{}\n{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.starts_with("checks"))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mismatches: 0"), "{stdout}");
}
