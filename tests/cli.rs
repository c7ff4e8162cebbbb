//! The `eds-proxy` command line: `check-config` accepts the example configuration and names
//! every problem of a broken one; `dev pki` writes what the example needs.

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

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eds-proxy"))
}

/// A temporary folder holding every file of `source` (relative to the repo) and a dev PKI in
/// `dev/`, as the configurations there expect.
fn config_dir_with_dev_pki(tag: &str, source: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("eds-proxy-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let status = bin()
        .args(["dev", "pki", "--out"])
        .arg(dir.join("dev"))
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn assert_config_ok(path: &Path) {
    let out = bin().arg("check-config").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
}

#[test]
fn example_config_is_accepted() {
    let dir = config_dir_with_dev_pki("ok", "config");
    assert_config_ok(&dir.join("eds-proxy.example.toml"));
}

#[test]
fn broken_config_names_every_problem() {
    let dir = config_dir_with_dev_pki("broken", "config");
    let path = dir.join("eds-proxy.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text
        .replace(
            "server_key = \"dev/server.key\"",
            "server_key = \"dev/ca.crt\"\ncolour = \"blue\"",
        )
        .replace(
            "base_url = \"http://127.0.0.1:8090/fhir\"",
            "base_url = \"not a url\"",
        )
        .replace(
            "secret_file = \"dev/page-secret\"",
            "secret_file = \"dev/missing-secret\"",
        )
        .replace(
            "algorithms = [\"PS256\", \"ES256\", \"EdDSA\"]",
            "algorithms = [\"HS256\"]",
        );
    std::fs::write(&path, broken).unwrap();
    let out = bin().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "listen.colour: unknown key",
        "listen.server_key:",
        "upstream.base_url:",
        "paging.secret_file:",
        "token.algorithms:",
    ] {
        assert!(text.contains(key), "{key} not named in:\n{text}");
    }
}

#[test]
fn unreadable_file_is_reported() {
    let out = bin()
        .args(["check-config", "/nonexistent/eds-proxy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot read"));
}

#[test]
fn compose_proxy_config_is_accepted_once_the_dev_pki_exists() {
    let dir = config_dir_with_dev_pki("compose", "hapi-compose/proxy");
    assert_config_ok(&dir.join("eds-proxy.toml"));
}
