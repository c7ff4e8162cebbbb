//! OIO Basic Privilege Profile (OIO-BPP) lists from the `priv` claim: does the user hold a
//! given role for a given CVR number?
//!
//! Two encodings are accepted: the JSON form
//! `[{"scope":"urn:dk:gov:saml:cvrNumberIdentifier:<cvr>","privileges":["<role>",…]}]`
//! and a string holding base64-encoded OIO-BPP XML (`<PrivilegeList><PrivilegeGroup
//! Scope="…"><Privilege>…</Privilege></PrivilegeGroup></PrivilegeList>`).

use base64::Engine;
use quick_xml::events::Event;
use serde::Deserialize;
use serde_json::Value;

pub const CVR_SCOPE_PREFIX: &str = "urn:dk:gov:saml:cvrNumberIdentifier:";

/// One privilege group: the privileges a user holds within one scope (an organisation).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrivilegeGroup {
    pub scope: String,
    #[serde(default)]
    pub privileges: Vec<String>,
}

/// Parse the `priv` claim in either encoding.
pub fn parse(claim: &Value) -> Result<Vec<PrivilegeGroup>, String> {
    match claim {
        // Objects only: serde would also read `["scope", ["role"]]` field by field.
        Value::Array(items) if !items.iter().all(Value::is_object) => {
            Err("priv claim entries must be objects".to_string())
        }
        Value::Array(_) => serde_json::from_value(claim.clone())
            .map_err(|e| format!("priv claim is not an OIO-BPP JSON list: {e}")),
        Value::String(s) => {
            let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let xml = base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&compact))
                .map_err(|_| {
                    "priv claim is neither a JSON list nor base64 OIO-BPP XML".to_string()
                })?;
            parse_xml(&xml)
        }
        _ => Err("priv claim has an unexpected type".to_string()),
    }
}

/// True if `groups` give `role` for exactly the organisation `cvr`.
pub fn grants(groups: &[PrivilegeGroup], cvr: &str, role: &str) -> bool {
    groups.iter().any(|g| {
        g.scope.strip_prefix(CVR_SCOPE_PREFIX) == Some(cvr)
            && g.privileges.iter().any(|p| p == role)
    })
}

fn parse_xml(xml: &[u8]) -> Result<Vec<PrivilegeGroup>, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut groups = Vec::new();
    let mut current: Option<PrivilegeGroup> = None;
    let mut in_privilege = false;
    let mut saw_list = false;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Err(e) => return Err(format!("priv XML is malformed: {e}")),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) => match e.local_name().as_ref() {
                b"PrivilegeList" => saw_list = true,
                b"PrivilegeGroup" => {
                    let scope = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == b"Scope")
                        .and_then(|a| a.unescape_value().ok())
                        .map(|v| v.into_owned())
                        .ok_or("PrivilegeGroup without Scope")?;
                    current = Some(PrivilegeGroup {
                        scope,
                        privileges: Vec::new(),
                    });
                }
                b"Privilege" => in_privilege = true,
                _ => {}
            },
            Ok(Event::Text(t)) if in_privilege => {
                let text = t.unescape().map_err(|e| format!("priv XML text: {e}"))?;
                if let Some(g) = current.as_mut() {
                    g.privileges.push(text.trim().to_string());
                }
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                b"Privilege" => in_privilege = false,
                b"PrivilegeGroup" => groups.extend(current.take()),
                _ => {}
            },
            Ok(_) => {}
        }
        buf.clear();
    }
    if !saw_list {
        return Err("priv XML has no PrivilegeList".to_string());
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROLE: &str = "urn:dk:healthcare:ehmi:eds:role:supporter";

    fn xml_claim(xml: &str) -> Value {
        Value::String(base64::engine::general_purpose::STANDARD.encode(xml))
    }

    #[test]
    fn json_form_grants_role_for_its_cvr_only() {
        let claim = json!([{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:12345678", "privileges": [ROLE]}]);
        let groups = parse(&claim).unwrap();
        assert!(grants(&groups, "12345678", ROLE));
        assert!(!grants(&groups, "87654321", ROLE));
        assert!(!grants(&groups, "12345678", "urn:other:role"));
    }

    #[test]
    fn xml_form_is_accepted() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<bpp:PrivilegeList xmlns:bpp="http://itst.dk/oiosaml/basic_privilege_profile">
  <PrivilegeGroup Scope="urn:dk:gov:saml:cvrNumberIdentifier:12345678">
    <Privilege>urn:dk:some:other</Privilege>
    <Privilege>urn:dk:healthcare:ehmi:eds:role:supporter</Privilege>
  </PrivilegeGroup>
  <PrivilegeGroup Scope="urn:dk:gov:saml:cvrNumberIdentifier:11111111">
    <Privilege>urn:dk:some:other</Privilege>
  </PrivilegeGroup>
</bpp:PrivilegeList>"#;
        let groups = parse(&xml_claim(xml)).unwrap();
        assert_eq!(groups.len(), 2);
        assert!(grants(&groups, "12345678", ROLE));
        assert!(!grants(&groups, "11111111", ROLE));
    }

    #[test]
    fn scope_must_be_exactly_the_cvr_urn() {
        let claim = json!([{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:123456789", "privileges": [ROLE]}]);
        assert!(!grants(&parse(&claim).unwrap(), "12345678", ROLE));
        let claim = json!([{"scope": "12345678", "privileges": [ROLE]}]);
        assert!(!grants(&parse(&claim).unwrap(), "12345678", ROLE));
    }

    #[test]
    fn garbage_is_an_error_not_a_grant() {
        assert!(parse(&json!(42)).is_err());
        assert!(parse(&json!("not base64 !!")).is_err());
        assert!(parse(&xml_claim("<a><b>")).is_err());
        assert!(parse(&json!([{"privileges": [ROLE]}])).is_err());
        assert!(parse(&json!([[
            "urn:dk:gov:saml:cvrNumberIdentifier:12345678",
            [ROLE]
        ]]))
        .is_err());
    }
}
