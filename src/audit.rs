//! The MinLog audit record and the pseudonymous principal id: pure functions over plain data.
//! The gateway writes the record to the audit sink (`audit.path`, `gateway::audit`) before
//! the answer is sent, and refuses the answer if it cannot (fail closed).
//!
//! The EHMI security page asks that citizens can see in MinLog when professionals read their
//! data. One record is due per answer that shows a **supporter** at least one registration
//! labelled with a citizen's CPR number. Stations and citizens get no record (decision, where
//! the page is silent): a station sees only the registrations labelled with its own device id,
//! which it registered itself, and a citizen only their own. The record format is the
//! hand-over point to MinLog and is documented in `docs/audit-record.md`.
//!
//! This is the one place CPR numbers are written on purpose; the ordinary log (`logging`)
//! redacts them everywhere.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// The record's `type`, versioned: a change of the format gets a new version.
pub const RECORD_TYPE: &str = "eds-proxy.audit.v1";

/// The context string the pseudonym key is derived with from the paging secret.
const PSEUDONYM_CONTEXT: &[u8] = b"eds-proxy principal pseudonym v1";

/// The key pseudonyms are computed with: HMAC-SHA-256(`secret`, a fixed context string). The
/// secret is `paging.secret_file`, which every replica shares already, so a principal has the
/// same pseudonym on every replica and across restarts, and the key itself never signs page
/// handles (the context string separates the two uses).
pub fn pseudonym_key(secret: &[u8]) -> Vec<u8> {
    hmac_sha256(secret, PSEUDONYM_CONTEXT)
}

/// The pseudonymous principal id: HMAC-SHA-256(`key`, `binding_key`) cut to 128 bits, written
/// as 32 letters `a`–`p` (one per 4 bits: `a` = 0 … `p` = 15). `binding_key` is
/// `Principal::binding_key` (kind and device id, CPR or CVR). The same principal always gets
/// the same id (access log lines and audit records of one caller can be correlated); without
/// the key the id cannot be turned back into a CPR number, even by trying every CPR. Letters
/// only, so the log redaction can never mistake a part of it for a CPR number.
pub fn pseudonym(key: &[u8], binding_key: &str) -> String {
    hmac_sha256(key, binding_key.as_bytes())
        .iter()
        .take(16)
        .flat_map(|b| [b >> 4, b & 0x0f])
        .map(|n| char::from(b'a' + n))
        .collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; an empty output would
    // only make every pseudonym equal, never reveal anything.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Who saw the records, as the audit record names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer<'a> {
    /// `Principal::kind`: `supporter` (the only kind audited today).
    pub kind: &'a str,
    /// [`pseudonym`] of the principal.
    pub pseudonym: &'a str,
    /// The organisation the principal acts for: the supporter's CVR number.
    pub organisation: &'a str,
}

/// The audit record of one answer, as one line of JSON (no newline), or `None` when no record
/// is due: no registration in `shown` names a citizen. `shown` is
/// `fhir::labels::released_records` of the answer (registration id, CPR numbers on its labels);
/// registrations without a CPR are left out of the record. `time` is RFC 3339 UTC.
///
/// Fields (`docs/audit-record.md`): `type`, `time`, `request_id`, `interaction`,
/// `principal` {`kind`, `id`, `organisation`}, `registrations` [{`id`, `cpr` [..]}], `cpr`
/// (every CPR shown, once each, sorted).
pub fn record(
    time: &str,
    request_id: &str,
    interaction: &str,
    viewer: &Viewer<'_>,
    shown: &[(String, Vec<String>)],
) -> Option<Vec<u8>> {
    let registrations: Vec<Shown<'_>> = shown
        .iter()
        .filter(|(_, cprs)| !cprs.is_empty())
        .map(|(id, cpr)| Shown { id, cpr })
        .collect();
    if registrations.is_empty() {
        return None;
    }
    let mut cpr: Vec<&str> = shown
        .iter()
        .flat_map(|(_, c)| c.iter().map(String::as_str))
        .collect();
    cpr.sort_unstable();
    cpr.dedup();
    // A struct, not `json!`: the fields keep this order whatever serde_json's features, so
    // every record starts with its `type`.
    let line = Record {
        r#type: RECORD_TYPE,
        time,
        request_id,
        interaction,
        principal: Principal {
            kind: viewer.kind,
            id: viewer.pseudonym,
            organisation: viewer.organisation,
        },
        registrations,
        cpr,
    };
    serde_json::to_vec(&line).ok()
}

#[derive(Serialize)]
struct Record<'a> {
    r#type: &'a str,
    time: &'a str,
    request_id: &'a str,
    interaction: &'a str,
    principal: Principal<'a>,
    registrations: Vec<Shown<'a>>,
    cpr: Vec<&'a str>,
}

#[derive(Serialize)]
struct Principal<'a> {
    kind: &'a str,
    id: &'a str,
    organisation: &'a str,
}

#[derive(Serialize)]
struct Shown<'a> {
    id: &'a str,
    cpr: &'a [String],
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pseudonyms_are_stable_keyed_and_letters_only() {
        let key = pseudonym_key(b"a secret of at least thirty-two bytes!!");
        let a = pseudonym(&key, "citizen\u{0}0101019999");
        assert_eq!(a, pseudonym(&key, "citizen\u{0}0101019999"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| (b'a'..=b'p').contains(&c)), "{a}");
        assert_ne!(a, pseudonym(&key, "citizen\u{0}0101019998"));
        let other = pseudonym_key(b"another secret of at least 32 bytes!!!");
        assert_ne!(a, pseudonym(&other, "citizen\u{0}0101019999"));
        assert!(!a.contains("0101019999"));
        // The pseudonym key is not the paging secret itself.
        assert_ne!(key, b"a secret of at least thirty-two bytes!!".to_vec());
    }

    #[test]
    fn a_record_names_every_citizen_shown_and_nothing_else() {
        let viewer = Viewer {
            kind: "supporter",
            pseudonym: "abcd",
            organisation: "29189846",
        };
        let shown = vec![
            ("r1".to_string(), vec!["0101019999".to_string()]),
            ("r2".to_string(), vec![]),
            (
                "r3".to_string(),
                vec!["0202029999".to_string(), "0101019999".to_string()],
            ),
        ];
        let line = record("2026-01-01T00:00:00Z", "rid", "search", &viewer, &shown).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({
                "type": "eds-proxy.audit.v1",
                "time": "2026-01-01T00:00:00Z",
                "request_id": "rid",
                "interaction": "search",
                "principal": {"kind": "supporter", "id": "abcd", "organisation": "29189846"},
                "registrations": [
                    {"id": "r1", "cpr": ["0101019999"]},
                    {"id": "r3", "cpr": ["0202029999", "0101019999"]},
                ],
                "cpr": ["0101019999", "0202029999"],
            })
        );
        assert!(!line.contains(&b'\n'));
        assert!(line.starts_with(br#"{"type":"eds-proxy.audit.v1","time":"#));
        // Nothing about a citizen shown: no record.
        assert_eq!(
            record("t", "rid", "read", &viewer, &[("r2".into(), vec![])]),
            None
        );
        assert_eq!(record("t", "rid", "search", &viewer, &[]), None);
    }
}
