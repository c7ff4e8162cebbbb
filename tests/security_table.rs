//! SECURITY.md maps every rule to the tests that prove it: each test it names must exist,
//! and no row may have an empty cell.

// Test code: a panic is a failure, and it reads JSON answers with plain serde_json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `a::b::tests::{x, y}` or `tests/f.rs::{x, y}` → (source file, [test names]).
fn references(cell: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for item in cell.split('`').skip(1).step_by(2) {
        let (path, names) = match item.split_once("::{") {
            Some((p, rest)) => (
                p.to_string(),
                rest.trim_end_matches('}')
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .collect(),
            ),
            None => match item.rsplit_once("::") {
                Some((p, n)) => (p.to_string(), vec![n.to_string()]),
                None => continue,
            },
        };
        let file = if let Some(f) = path.strip_prefix("tests/") {
            format!("tests/{f}")
        } else if let Some(module) = path.strip_suffix("::tests") {
            let candidate = format!("src/{}.rs", module.replace("::", "/"));
            if root().join(&candidate).exists() {
                candidate
            } else {
                format!("src/{}/mod.rs", module.replace("::", "/"))
            }
        } else {
            continue;
        };
        out.push((file, names));
    }
    out
}

#[test]
fn every_rule_has_code_and_existing_tests() {
    let text = std::fs::read_to_string(root().join("SECURITY.md")).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .collect();
    assert!(rows.len() >= 20, "rule table has {} rows", rows.len());
    let mut checked = 0;
    for row in rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!(cells.len(), 4, "row shape: {row}");
        for cell in &cells {
            assert!(
                !cell.trim_matches(|c| c == '|' || c == ' ').is_empty(),
                "empty cell in: {row}"
            );
        }
        let refs = references(cells[3]);
        assert!(!refs.is_empty(), "no test named in: {row}");
        for (file, names) in refs {
            let source = std::fs::read_to_string(root().join(&file))
                .unwrap_or_else(|_| panic!("{file} (row: {row})"));
            for name in names {
                if name == "*" {
                    assert!(
                        source.contains("#[test]") || source.contains("#[tokio::test"),
                        "{file} has no tests"
                    );
                    continue;
                }
                assert!(
                    source.contains(&format!("fn {name}(")),
                    "SECURITY.md names {file}::{name}, which does not exist"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} test references checked");
}
