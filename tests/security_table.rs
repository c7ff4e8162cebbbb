//! SECURITY.md maps every rule to the code that enforces it and the tests that prove it: each
//! function and test it names must exist, README's crate map must list every source file and,
//! for each file, the rules it enforces; and no row may have an empty cell.

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

/// The rule table's rows: (number, "enforced in" cell).
fn rule_rows() -> Vec<(u32, String)> {
    let text = std::fs::read_to_string(root().join("SECURITY.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let number = cells[0]
                .trim_matches(|c| c == '|' || c == ' ')
                .parse()
                .unwrap();
            (number, cells[2].to_string())
        })
        .collect()
}

/// The source file a Rust path `a::b::c` names (the longest module prefix that is a file),
/// and the item names after it.
fn resolve(path: &str) -> Option<(String, Vec<String>)> {
    let (head, names) = match path.split_once("::{") {
        Some((p, rest)) => (
            p,
            rest.trim_end_matches('}')
                .split(',')
                .map(|n| n.trim().to_string())
                .collect::<Vec<_>>(),
        ),
        None => (path, Vec::new()),
    };
    let segments: Vec<&str> = head.split("::").collect();
    for k in (1..=segments.len()).rev() {
        let module = segments[..k].join("/");
        for file in [format!("src/{module}.rs"), format!("src/{module}/mod.rs")] {
            if root().join(&file).exists() {
                let rest = &segments[k..];
                let wanted = if names.is_empty() {
                    rest.last().map(|n| vec![n.to_string()]).unwrap_or_default()
                } else {
                    names
                };
                return Some((file, wanted));
            }
        }
    }
    None
}

/// Every Rust path and file in the "enforced in" column exists: a renamed function or a
/// moved rule fails here instead of leaving the table stale.
#[test]
fn enforced_in_names_existing_code() {
    let mut checked = 0;
    for (number, cell) in rule_rows() {
        for item in cell.split('`').skip(1).step_by(2) {
            if item.contains('/') {
                let path = item.split(' ').next().unwrap_or_default();
                assert!(
                    root().join(path).exists(),
                    "rule {number}: {path} does not exist"
                );
                checked += 1;
                continue;
            }
            if !item.contains("::") {
                continue;
            }
            let (file, names) = resolve(item)
                .unwrap_or_else(|| panic!("rule {number}: `{item}` names no module of the crate"));
            let source = std::fs::read_to_string(root().join(&file)).unwrap();
            for name in names {
                let defined = [
                    "fn", "struct", "enum", "const", "static", "trait", "type", "mod",
                ]
                .iter()
                .any(|kw| {
                    source.contains(&format!("{kw} {name}("))
                        || source.contains(&format!("{kw} {name} "))
                        || source.contains(&format!("{kw} {name}<"))
                        || source.contains(&format!("{kw} {name};"))
                        || source.contains(&format!("{kw} {name}:"))
                });
                assert!(defined, "rule {number}: `{item}`: no `{name}` in {file}");
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "only {checked} code references checked");
}

/// README's map of the crate: every source file is on it, and every file that enforces a
/// rule (by SECURITY.md's "enforced in" column) lists that rule's number.
#[test]
fn readme_map_lists_every_file_and_its_rules() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("\nfile ")
        .expect("README has the crate map (a line starting `file`)");
    let block = &readme[start + 1..];
    let block = &block[..block.find("```").expect("the map's code block ends")];
    let mut map: Vec<(String, Vec<u32>)> = Vec::new();
    for line in block.lines().skip(1) {
        let mut words = line.split_whitespace();
        let Some(file) = words.next() else { continue };
        let rules: Vec<u32> = line
            .split_whitespace()
            .rev()
            .map_while(|w| w.parse().ok())
            .collect();
        map.push((file.to_string(), rules));
    }
    let on_map = |file: &str| {
        map.iter()
            .find(|(f, _)| f == file || (f.ends_with('/') && file.starts_with(f.as_str())))
    };
    // Every source file (module lists excepted) is on the map.
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .to_string();
            let source = std::fs::read_to_string(&path).unwrap();
            let module_list = rel.ends_with("/mod.rs") && !source.contains("fn ");
            assert!(
                module_list || on_map(&rel).is_some(),
                "{rel} is not on README's crate map"
            );
        }
    }
    // Every rule's files list its number.
    for (number, cell) in rule_rows() {
        for item in cell.split('`').skip(1).step_by(2) {
            if item.contains('/') || !item.contains("::") {
                continue;
            }
            let Some((file, _)) = resolve(item) else {
                continue;
            };
            let (_, rules) = on_map(&file).unwrap_or_else(|| panic!("{file} is not on the map"));
            assert!(
                rules.contains(&number),
                "README's crate map does not list rule {number} for {file}"
            );
        }
    }
}
