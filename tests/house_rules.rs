//! The house rules are compiler and build checks, and stay so: the lint table in Cargo.toml,
//! the lenient-JSON ban in clippy.toml, the features that keep tokio, Pingora, Prometheus and
//! rcgen out of the decision core (and the development tools out of a production build), and
//! the commands in scripts/test.sh that enforce them. Removing any of them fails here.

// Test code: a panic is a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

fn toml_file(file: &str) -> toml::Table {
    read(file).parse().unwrap()
}

fn table<'a>(t: &'a toml::Table, path: &[&str]) -> &'a toml::Table {
    path.iter().fold(t, |t, k| {
        t.get(*k)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("no table {}", path.join(".")))
    })
}

fn strings(v: &toml::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn lints_deny_panics_unsafe_and_undocumented_items() {
    let cargo = toml_file("Cargo.toml");
    let rust = table(&cargo, &["lints", "rust"]);
    assert_eq!(rust["unsafe_code"].as_str(), Some("forbid"));
    // "warn" fails the build: clippy and rustdoc run with `-D warnings` (scripts/test.sh).
    assert_eq!(rust["missing_docs"].as_str(), Some("warn"));
    let clippy = table(&cargo, &["lints", "clippy"]);
    for lint in [
        "unwrap_used",
        "expect_used",
        "panic",
        "indexing_slicing",
        "unreachable",
        "todo",
        "unimplemented",
    ] {
        assert_eq!(clippy[lint].as_str(), Some("deny"), "clippy::{lint}");
    }
}

#[test]
fn lenient_json_parsing_is_a_disallowed_method() {
    let clippy = toml_file("clippy.toml");
    let banned: Vec<&str> = clippy["disallowed-methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    for path in [
        "serde_json::from_slice",
        "serde_json::from_str",
        "serde_json::from_reader",
    ] {
        assert!(banned.contains(&path), "{path} is not banned");
    }
    // Tests may panic; nothing else is relaxed.
    for (key, value) in &clippy {
        if key != "disallowed-methods" {
            assert!(key.ends_with("-in-tests"), "clippy.toml relaxes {key}");
            assert_eq!(value.as_bool(), Some(true));
        }
    }
}

#[test]
fn the_core_and_a_production_build_leave_out_what_they_must() {
    let cargo = toml_file("Cargo.toml");
    let deps = table(&cargo, &["dependencies"]);
    let features = table(&cargo, &["features"]);
    // Each of these is optional and enabled by exactly the named feature.
    for (dep, feature) in [
        ("tokio", "server"),
        ("pingora", "server"),
        ("prometheus", "server"),
        ("rcgen", "dev"),
        // A parser, not a generator: the certificate-expiry metric reads notAfter with it.
        ("x509-parser", "server"),
    ] {
        assert_eq!(
            deps[dep].get("optional").and_then(toml::Value::as_bool),
            Some(true),
            "{dep} must be optional"
        );
        let enabling: Vec<&str> = features
            .iter()
            .filter(|(_, list)| strings(list).contains(&format!("dep:{dep}").as_str()))
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(enabling, [feature], "features enabling {dep}");
    }
    assert_eq!(strings(&features["default"]), ["server", "dev"]);
    assert!(strings(&features["dev"]).contains(&"server"));
    // The fuzz targets link the core alone.
    let fuzz = toml_file("fuzz/Cargo.toml");
    let core = &table(&fuzz, &["dependencies"])["eds-proxy"];
    assert_eq!(core["default-features"].as_bool(), Some(false));
    assert!(core.get("features").is_none());
}

#[test]
fn scripts_test_enforces_the_rules() {
    let script = read("scripts/test.sh");
    for line in [
        "cargo clippy --all-targets --quiet -- -D warnings",
        "cargo clippy --lib --no-default-features --quiet -- -D warnings",
        "cargo clippy --all-targets --no-default-features --features server --quiet -- -D warnings",
        "RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps --lib --quiet",
        "cargo tree --no-default-features -e normal --prefix none",
        "grep -E '^(tokio|pingora[a-z_-]*|prometheus|rcgen) '",
        "cargo build --no-default-features --features server --quiet --bin eds-proxy",
        "target/debug/eds-proxy dev pki --out",
        "unrecognized subcommand 'dev'",
    ] {
        assert!(script.contains(line), "scripts/test.sh lost: {line}");
    }
    // The image the proxy runs from is the production feature set.
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("ARG FEATURES=server\n"));
    assert!(dockerfile.contains("--no-default-features --features \"$FEATURES\""));
    // ... and CI builds it from what its context holds, checks compose and the manifests,
    // and proves replicas fail over (README, "Deploying").
    for line in [
        "python3 scripts/docker-context-check.py",
        "python3 scripts/deploy-check.py",
        "bash scripts/replicas-test.sh",
    ] {
        assert!(script.contains(line), "scripts/test.sh lost: {line}");
    }
}
