//! Access labels: the `meta.security` codings the proxy stamps on every registration, and
//! the constraint (a set of labels, any of which admits a resource) each principal sees.
//!
//! Labels make isolation a plain `_security=system|code` token search that every FHIR
//! server supports with exact matching and no server-side set-up.

use serde_json::Value;

use crate::auth::principal::Principal;
use crate::cvr_directory::CvrDirectory;
use crate::error::{Forbidden, Refusal};
use crate::fhir::response::{find_resources, Found};

/// An access label: a `meta.security` Coding the proxy stamps on a registration and a
/// `_security=system|code` search matches (FHIR R4 security labels,
/// <https://hl7.org/fhir/R4/security-labels.html>).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// The label's system (one of `LabelSystems`).
    pub system: String,
    /// The identifier it labels with: a device id, a SOR code or a CPR number.
    pub code: String,
}

/// The configured label systems.
#[derive(Debug, Clone)]
pub struct LabelSystems {
    /// `access.device_label_system`.
    pub device: String,
    /// `access.sor_label_system`.
    pub sor: String,
    /// `access.cpr_label_system`.
    pub cpr: String,
    /// `access.reserved_label_prefix`: every system under it is the proxy's.
    pub reserved_prefix: String,
}

/// The systems under the default reserved prefix, as `config/eds-proxy.example.toml` has them.
impl Default for LabelSystems {
    fn default() -> Self {
        let prefix = crate::config::DEFAULT_LABEL_PREFIX;
        LabelSystems {
            device: format!("{prefix}device-id"),
            sor: format!("{prefix}sor"),
            cpr: format!("{prefix}cpr"),
            reserved_prefix: prefix.to_string(),
        }
    }
}

impl LabelSystems {
    /// The label of a station's registrations.
    pub fn device(&self, device_id: &str) -> Label {
        Label {
            system: self.device.clone(),
            code: device_id.to_string(),
        }
    }
    /// The label of a sender or receiver organisation's registrations (SOR code).
    pub fn sor(&self, sor: &str) -> Label {
        Label {
            system: self.sor.clone(),
            code: sor.to_string(),
        }
    }
    /// The label of a citizen's registrations (CPR number).
    pub fn cpr(&self, cpr: &str) -> Label {
        Label {
            system: self.cpr.clone(),
            code: cpr.to_string(),
        }
    }
    /// True for any system the proxy owns; clients may not set codings in it.
    ///
    /// A refusal check, so it must catch every spelling a FHIR server or a reader might take
    /// for a reserved system, and over-matching only refuses codings no honest client sends.
    /// The system is trimmed of whitespace (FHIR JSON string values may be trimmed by the
    /// server) and compared to the prefix and the label systems ignoring ASCII case. That
    /// covers URN equivalence (RFC 8141 §3.1: `urn` scheme and NID case-insensitive,
    /// percent-encoding hex in either case; `crate::urn::equivalent`) and URL equivalence
    /// (RFC 3986 §6.2.2.1: scheme and host case-insensitive) for a non-URN prefix, and a
    /// r-/q-/f-component after a reserved system still begins with it.
    pub fn is_reserved(&self, system: &str) -> bool {
        let system = system.trim();
        starts_with_ignoring_ascii_case(system, &self.reserved_prefix)
            || [&self.device, &self.sor, &self.cpr]
                .iter()
                .any(|s| starts_with_ignoring_ascii_case(system, s))
    }
}

fn starts_with_ignoring_ascii_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The labels that admit a resource to this principal: it must carry at least one of them.
/// Never empty: a principal with nothing to see is refused instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    labels: Vec<Label>,
}

impl Constraint {
    /// The constraint of `principal`: its device label (station), its CPR label (citizen), or
    /// the SOR labels of its CVR in `directory` (supporter).
    ///
    /// Errors: 403 when a supporter's CVR has no SOR codes in the directory.
    pub fn for_principal(
        principal: &Principal,
        systems: &LabelSystems,
        directory: &CvrDirectory,
    ) -> Result<Constraint, Refusal> {
        let labels = match principal {
            Principal::Station(s) => vec![systems.device(&s.device_id)],
            Principal::Citizen { cpr, .. } => vec![systems.cpr(cpr)],
            Principal::Supporter { cvr, .. } => {
                let sors = directory.sor_codes(cvr);
                if sors.is_empty() {
                    return Err(Refusal::Forbidden(Forbidden::UnknownCvr));
                }
                sors.iter().map(|s| systems.sor(s)).collect()
            }
        };
        Ok(Constraint { labels })
    }

    /// The labels, any one of which admits a resource.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// `_security` value: an OR list of `system|code` with FHIR search escaping.
    pub fn search_value(&self) -> String {
        self.labels
            .iter()
            .map(|l| format!("{}|{}", escape(&l.system), escape(&l.code)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// True if `resource.meta.security` holds one of the constraint's labels exactly.
    pub fn admits(&self, resource: &Value) -> bool {
        self.admits_codings(security_codings(resource))
    }

    /// True if one of the (system, code) codings is one of the constraint's labels.
    ///
    /// Compared exactly, not by URN equivalence: the proxy stamps only the configured
    /// spelling and refuses any client coding in a reserved system (`is_reserved`), so a
    /// stored coding in another spelling is not the proxy's and must not admit (fails closed).
    pub fn admits_codings<'x>(
        &self,
        mut codings: impl Iterator<Item = (&'x str, &'x str)>,
    ) -> bool {
        codings.any(|(system, code)| {
            self.labels
                .iter()
                .any(|l| l.system == system && l.code == code)
        })
    }
}

/// (system, code) of every `meta.security` coding that has both.
pub fn security_codings(resource: &Value) -> impl Iterator<Item = (&str, &str)> {
    resource
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("system")?.as_str()?, c.get("code")?.as_str()?)))
}

/// (id, CPR labels) of every AuditEvent anywhere in a checked answer (a searchset or one
/// resource; entries and anything nested, in document order): what a supporter was shown
/// about which citizens, for the MinLog audit record. Read with the response check's own
/// strict scan, so the record names exactly what the check let through; an answer that does
/// not scan names nothing (the check would have refused it).
pub fn released_records(body: &[u8], cpr_system: &str) -> Vec<(String, Vec<String>)> {
    fn collect(found: &[Found], cpr_system: &str, out: &mut Vec<(String, Vec<String>)>) {
        for f in found {
            if f.resource_type == "AuditEvent" {
                let cprs = f
                    .security
                    .iter()
                    .filter(|(system, _)| system == cpr_system)
                    .map(|(_, code)| code.clone())
                    .collect();
                out.push((f.id.clone().unwrap_or_default(), cprs));
            }
            collect(&f.nested, cpr_system, out);
        }
    }
    let found = std::str::from_utf8(body)
        .ok()
        .and_then(|text| find_resources(text).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    collect(&found, cpr_system, &mut out);
    out
}

/// The characters FHIR search gives a meaning in a token value (R4 search §3.1.1.4:
/// `,` OR, `|` system/code, `$` composite, `\` escape).
pub const TOKEN_SPECIAL: [char; 4] = [',', '|', '\\', '$'];

/// True if `value` holds none of [`TOKEN_SPECIAL`]: a plain token.
///
/// Every label code the proxy injects into a `_security` search (device ids, SOR codes, CPR
/// numbers, from tokens, the CVR directory or a registration) must be one, and is refused
/// where it enters otherwise: the constraint then means the same on every FHIR server,
/// whether or not it honours FHIR's `\,` `\|` `\\` escapes (issue 13 item 2; a server that
/// does not would read `dev,1` as `dev` OR `1`).
pub fn is_plain_token(value: &str) -> bool {
    !value.contains(TOKEN_SPECIAL)
}

/// FHIR search escaping (`\`, `,`, `|`, `$`) for values the proxy injects. A no-op on plain
/// tokens ([`is_plain_token`]), which is all the proxy injects; kept so a code that slipped
/// past the entry checks still cannot split the constraint on a server that does escape.
pub(crate) fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '|' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::Station;
    use crate::auth::scope::Grants;
    use serde_json::json;

    pub fn systems() -> LabelSystems {
        LabelSystems::default()
    }

    fn station(id: &str) -> Principal {
        Principal::Station(Station {
            device_id: id.into(),
            org: None,
            grants: Grants::default(),
        })
    }

    #[test]
    fn plain_tokens() {
        for ok in [
            "dev-1",
            "0101701234",
            "937961000016000",
            "Cura EUA",
            "a.b:c/d",
        ] {
            assert!(is_plain_token(ok), "{ok}");
        }
        for bad in ["dev,1", "a|b", r"a\b", "$x", ","] {
            assert!(!is_plain_token(bad), "{bad}");
        }
    }

    #[test]
    fn escaping_covers_reserved_characters() {
        assert_eq!(escape(r"a,b|c$d\e"), r"a\,b\|c\$d\\e");
    }

    #[test]
    fn each_principal_gets_its_own_label() {
        let dir = CvrDirectory::from_pairs([("12345678", vec!["111", "222"])]);
        let c = Constraint::for_principal(&station("dev-1"), &systems(), &dir).unwrap();
        assert_eq!(c.search_value(), "urn:eds-proxy:label:device-id|dev-1");
        let citizen = Principal::Citizen {
            cpr: "0101701234".into(),
            grants: Grants::default(),
        };
        assert_eq!(
            Constraint::for_principal(&citizen, &systems(), &dir)
                .unwrap()
                .search_value(),
            "urn:eds-proxy:label:cpr|0101701234"
        );
        let supporter = Principal::Supporter {
            cvr: "12345678".into(),
            grants: Grants::default(),
        };
        assert_eq!(
            Constraint::for_principal(&supporter, &systems(), &dir)
                .unwrap()
                .search_value(),
            "urn:eds-proxy:label:sor|111,urn:eds-proxy:label:sor|222"
        );
        let unknown = Principal::Supporter {
            cvr: "99999999".into(),
            grants: Grants::default(),
        };
        assert_eq!(
            Constraint::for_principal(&unknown, &systems(), &dir).map_err(|e| e.reason()),
            Err("unknown_cvr")
        );
    }

    #[test]
    fn admits_only_exact_label() {
        let dir = CvrDirectory::default();
        let c = Constraint::for_principal(&station("dev-1"), &systems(), &dir).unwrap();
        let mine = json!({"meta": {"security": [{"system": "urn:eds-proxy:label:device-id", "code": "dev-1"}]}});
        let other = json!({"meta": {"security": [{"system": "urn:eds-proxy:label:device-id", "code": "dev-2"}]}});
        let wrong_system =
            json!({"meta": {"security": [{"system": "urn:eds-proxy:label:cpr", "code": "dev-1"}]}});
        let none = json!({"meta": {}});
        assert!(c.admits(&mine));
        assert!(!c.admits(&other));
        assert!(!c.admits(&wrong_system));
        assert!(!c.admits(&none));
        assert!(!c.admits(&json!({})));
    }

    #[test]
    fn released_records_name_ids_and_cprs() {
        let body = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "AuditEvent", "id": "a", "meta": {"security": [
                {"system": "urn:eds-proxy:label:cpr", "code": "0101701234"},
                {"system": "urn:eds-proxy:label:sor", "code": "1"}]}}},
            {"resource": {"resourceType": "AuditEvent", "id": "b", "contained": [
                {"resourceType": "AuditEvent", "id": "c", "meta": {"security": [
                    {"system": "urn:eds-proxy:label:cpr", "code": "0202702345"}]}}]}}]});
        let r = released_records(body.to_string().as_bytes(), "urn:eds-proxy:label:cpr");
        assert_eq!(
            r,
            vec![
                ("a".to_string(), vec!["0101701234".to_string()]),
                ("b".to_string(), vec![]),
                ("c".to_string(), vec!["0202702345".to_string()])
            ]
        );
    }

    #[test]
    fn reserved_systems() {
        let s = systems();
        assert!(s.is_reserved("urn:eds-proxy:label:anything"));
        assert!(!s.is_reserved("http://terminology.hl7.org/CodeSystem/v3-Confidentiality"));
    }

    #[test]
    fn equivalent_spellings_of_reserved_systems_are_reserved() {
        let s = systems();
        for system in [
            "urn:eds-proxy:label:device-id",
            // RFC 8141 §3.1: scheme and NID are case-insensitive.
            "URN:EDS-PROXY:label:device-id",
            "urn:EDS-Proxy:label:sor",
            "Urn:eds-proxy:label:cpr",
            // Over-matching is harmless in a refusal: NSS case, padding, components.
            "urn:eds-proxy:LABEL:device-id",
            " urn:eds-proxy:label:device-id",
            "urn:eds-proxy:label:device-id\n",
            "urn:eds-proxy:label:device-id#x",
            "urn:eds-proxy:label:device-id?=x",
        ] {
            assert!(s.is_reserved(system), "{system:?}");
        }
        for system in [
            "urn:eds-proxy:labelx",
            "urn:eds-proxy:",
            "urn:other:label:device-id",
            "",
            "urn:eds-proxy:labe",
        ] {
            assert!(!s.is_reserved(system), "{system:?}");
        }
        // Consistent with the URN rule: every spelling equivalent to a reserved one is refused.
        for system in ["URN:eds-proxy:label:cpr", "urn:EDS-PROXY:label:sor"] {
            assert!(
                crate::urn::equivalent(system, &s.cpr) || crate::urn::equivalent(system, &s.sor)
            );
            assert!(s.is_reserved(system));
        }
        let url = LabelSystems {
            reserved_prefix: "https://proxy.example/labels/".into(),
            device: "https://proxy.example/labels/device-id".into(),
            sor: "https://proxy.example/labels/sor".into(),
            cpr: "https://proxy.example/labels/cpr".into(),
        };
        assert!(url.is_reserved("HTTPS://PROXY.EXAMPLE/labels/device-id"));
        assert!(!url.is_reserved("https://proxy.example/other/device-id"));
    }
}
