//! The CVR directory: which SOR codes belong to an organisation's CVR number, so a
//! supporter's constraint can be expressed as SOR access labels.
//!
//! Read from a file, chosen by extension: `.toml` (`[cvr]` table: `"12345678" = ["SOR", …]`),
//! `.json` (`{"12345678": ["SOR", …]}`). The SOR list must include every SOR code (child
//! units too) whose registrations the organisation's supporters may see.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

/// CVR number → the SOR codes whose registrations that organisation's supporters may see.
#[derive(Debug, Clone, Default)]
pub struct CvrDirectory {
    by_cvr: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDirectory {
    cvr: HashMap<String, Vec<String>>,
}

impl CvrDirectory {
    /// Read a `.toml` or `.json` directory (module documentation).
    ///
    /// Errors: the file cannot be read or parsed (JSON strictly: a duplicate CVR is an error),
    /// its extension is neither, or a CVR or SOR code is empty, has spaces around it or a
    /// control character, or is not a plain token (`labels::is_plain_token`).
    pub fn load(path: &Path) -> Result<CvrDirectory, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let by_cvr = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                toml::from_str::<TomlDirectory>(&text)
                    .map_err(|e| e.to_string())?
                    .cvr
            }
            // Strict: a CVR number listed twice is a mistake, not "the last one wins".
            Some("json") => crate::fhir::strict_json::parse_into(text.as_bytes())?,
            _ => return Err("CVR directory must be a .toml or .json file".into()),
        };
        for (cvr, sors) in &by_cvr {
            if cvr.trim().is_empty() || sors.iter().any(|s| s.trim().is_empty()) {
                return Err(format!("empty CVR or SOR code in entry `{cvr}`"));
            }
            // SOR codes become access-label codes in a supporter's `_security` search: plain
            // tokens only (`labels::is_plain_token`), and the CVR is matched against a token
            // claim that must be one too.
            // Tokens and registrations are trimmed, so a code with spaces around it (or a
            // control character in it) would never match one.
            let clean = |s: &str| s.trim() == s && !s.chars().any(char::is_control);
            if !clean(cvr) || !sors.iter().all(|s| clean(s)) {
                return Err(format!(
                    "CVR or SOR code in entry `{}` has spaces around it or a control character",
                    cvr.chars()
                        .filter(|c| !c.is_control())
                        .take(32)
                        .collect::<String>()
                ));
            }
            let plain = crate::fhir::labels::is_plain_token;
            if !plain(cvr) || !sors.iter().all(|s| plain(s)) {
                return Err(format!(
                    "CVR or SOR code in entry `{}` holds , | \\ or $ (access-label codes must be plain tokens)",
                    cvr.chars().filter(|c| !c.is_control()).take(32).collect::<String>()
                ));
            }
        }
        Ok(CvrDirectory { by_cvr })
    }

    /// A directory from `(cvr, sor codes)` pairs (tests, benchmarks).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>) -> Self {
        CvrDirectory {
            by_cvr: pairs
                .into_iter()
                .map(|(c, s)| (c.to_string(), s.into_iter().map(str::to_string).collect()))
                .collect(),
        }
    }

    /// The SOR codes of `cvr`, exactly as written; empty if the CVR is unknown.
    pub fn sor_codes(&self, cvr: &str) -> &[String] {
        self.by_cvr.get(cvr).map(Vec::as_slice).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Result<CvrDirectory, String> {
        let dir = std::env::temp_dir().join(format!("eds-cvr-{}-{name}", std::process::id()));
        std::fs::write(&dir, text).unwrap();
        let r = CvrDirectory::load(&dir);
        let _ = std::fs::remove_file(&dir);
        r
    }

    /// Issue 13 item 2: SOR codes (and CVRs) are plain tokens, or the directory does not load.
    #[test]
    fn codes_with_search_specials_do_not_load() {
        assert_eq!(
            load("ok.json", r#"{"12345678": ["111", "222"]}"#)
                .unwrap()
                .sor_codes("12345678"),
            ["111", "222"]
        );
        for text in [
            r#"{"12345678": ["111,222"]}"#,
            r#"{"12345678": ["sys|111"]}"#,
            r#"{"12345678": ["111\\,"]}"#,
            r#"{"12345678": ["$111"]}"#,
            r#"{"1234,5678": ["111"]}"#,
        ] {
            let err = load("bad.json", text).unwrap_err();
            assert!(err.contains("plain tokens"), "{text}: {err}");
        }
        let err = load("bad.toml", "[cvr]\n\"12345678\" = [\"111|2\"]\n").unwrap_err();
        assert!(err.contains("plain tokens"), "{err}");
    }

    /// A code with spaces around it (or any control character) never matches: the label
    /// stamped on a registration and the CVR in a token are trimmed, so the supporter would
    /// see nothing (or be refused as unknown) with no hint why (c-any finding). It does not
    /// load.
    #[test]
    fn codes_with_surrounding_space_or_control_characters_do_not_load() {
        for text in [
            r#"{"12345678": [" 111"]}"#,
            r#"{"12345678": ["111 "]}"#,
            r#"{" 12345678": ["111"]}"#,
            r#"{"12345678": ["11\t1"]}"#,
            r#"{"12345678\n": ["111"]}"#,
        ] {
            let err = load("space.json", text).unwrap_err();
            assert!(
                err.contains("spaces around it or a control character"),
                "{text}: {err}"
            );
        }
    }
}
