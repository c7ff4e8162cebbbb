//! OIO Basic Privilege Profile (OIO-BPP) lists from the `priv` claim: does the user hold a
//! given role for a given CVR number?
//!
//! Two encodings are accepted: the JSON form
//! `[{"scope":"urn:dk:gov:saml:cvrNumberIdentifier:<cvr>","privileges":["<role>",…]}]`
//! and a string holding base64-encoded OIO-BPP XML (`<bpp:PrivilegeList
//! xmlns:bpp="…"><PrivilegeGroup Scope="…"><Privilege>…</Privilege></PrivilegeGroup>
//! </bpp:PrivilegeList>`).
//!
//! The XML is read by a conformant parser (`roxmltree`) and checked against the OIO-BPP
//! schema's shape, so what the proxy reads is what any other XML reader of the same bytes
//! reads. Rules, each refusing the whole claim (no role is granted) when broken:
//! - UTF-8 only: bytes that are not UTF-8, or a declaration naming another encoding.
//! - Well-formed XML 1.0 with namespaces; no DTD at all (so no entity definitions, no
//!   entity expansion); duplicate attributes, unknown entities and undeclared prefixes are
//!   errors of the parser.
//! - The root is `PrivilegeList` in an OIO-BPP namespace: `http://itst.dk/oiosaml/
//!   basic_privilege_profile` (OIO-BPP 1.0/1.1) or `http://digst.dk/oiosaml/
//!   basic_privilege_profile` (1.2). A root without a namespace is refused: every issuer and
//!   example uses one, and a name alone does not say which vocabulary is meant.
//! - Below it, the schema's local elements are unqualified (no namespace), matched by
//!   namespace and local name, never by prefix: `PrivilegeGroup` (attribute `Scope`, no
//!   namespace, required) holding `Privilege` and `Constraint` elements; nothing else, and no
//!   text but whitespace between elements.
//! - The text of `Privilege` and of `Scope` is XML's value: entity and character references
//!   resolved, CDATA included, comments and processing instructions removed (never splitting
//!   a value in two), then trimmed of XML whitespace. A `Privilege` with child elements is
//!   refused: its value is a string, not mixed content.
//! - A `PrivilegeGroup` with any `Constraint` (OIO-BPP 1.2) grants nothing: its privileges
//!   hold only within constraints the proxy cannot evaluate (like a JOSE `crit`).
//!
//! Matching (`grants`): the group's scope and the privilege are compared to the CVR URN and
//! the role as URNs (`crate::urn::equivalent`: `urn` scheme and NID in any case, the rest
//! exact), so an equivalent spelling the issuer chose is still recognised.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::urn;

/// A privilege group's scope for an organisation: this prefix and the CVR number (OIO-BPP).
pub const CVR_SCOPE_PREFIX: &str = "urn:dk:gov:saml:cvrNumberIdentifier:";

/// OIO-BPP 1.0/1.1 namespace of `PrivilegeList`.
pub(crate) const BPP_NAMESPACE: &str = "http://itst.dk/oiosaml/basic_privilege_profile";
/// OIO-BPP 1.2 namespace of `PrivilegeList`.
pub(crate) const BPP_NAMESPACE_1_2: &str = "http://digst.dk/oiosaml/basic_privilege_profile";

/// One privilege group: the privileges a user holds within one scope (an organisation).
///
/// In the JSON form an unknown member (e.g. a constraint list) makes the claim unreadable,
/// so it grants nothing, as a `Constraint` does in the XML form: the proxy cannot evaluate
/// what it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivilegeGroup {
    /// The group's scope, e.g. `urn:dk:gov:saml:cvrNumberIdentifier:12345678`.
    pub scope: String,
    /// The privileges (role URNs) held within that scope.
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

/// True if `groups` give `role` for exactly the organisation `cvr` (URN equivalence).
pub fn grants(groups: &[PrivilegeGroup], cvr: &str, role: &str) -> bool {
    let scope = format!("{CVR_SCOPE_PREFIX}{cvr}");
    groups.iter().any(|g| {
        urn::equivalent(&g.scope, &scope) && g.privileges.iter().any(|p| urn::equivalent(p, role))
    })
}

/// XML whitespace (XML 1.0 §2.3 `S`): space, tab, CR, LF. Not Unicode whitespace.
fn trim_xml_space(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

/// Parse OIO-BPP XML by the rules of the module documentation.
pub(crate) fn parse_xml(xml: &[u8]) -> Result<Vec<PrivilegeGroup>, String> {
    let text = std::str::from_utf8(xml).map_err(|_| "priv XML is not UTF-8".to_string())?;
    if declared_encoding(text).is_some_and(|e| !e.eq_ignore_ascii_case("UTF-8")) {
        return Err("priv XML declares an encoding other than UTF-8".to_string());
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options)
        .map_err(|e| format!("priv XML is malformed: {e}"))?;
    let list = doc.root_element();
    let in_bpp = matches!(namespace(list), Some(BPP_NAMESPACE | BPP_NAMESPACE_1_2));
    if list.tag_name().name() != "PrivilegeList" || !in_bpp {
        return Err("priv XML root is not an OIO-BPP PrivilegeList".to_string());
    }
    // Only schema-instance attributes (xsi:schemaLocation…) may decorate the root.
    if list
        .attributes()
        .any(|a| a.namespace() != Some("http://www.w3.org/2001/XMLSchema-instance"))
    {
        return Err("priv XML PrivilegeList has an unexpected attribute".to_string());
    }
    let mut groups = Vec::new();
    for group in element_children(list, "PrivilegeList")? {
        expect_name(group, "PrivilegeGroup")?;
        let mut scope = None;
        for a in group.attributes() {
            match (a.namespace(), a.name()) {
                (None, "Scope") => scope = Some(trim_xml_space(a.value()).to_string()),
                _ => return Err("priv XML PrivilegeGroup has an unexpected attribute".into()),
            }
        }
        let scope = scope.ok_or("priv XML PrivilegeGroup without Scope")?;
        let mut privileges = Vec::new();
        let mut constrained = false;
        for child in element_children(group, "PrivilegeGroup")? {
            match (namespace(child), child.tag_name().name()) {
                (None, "Privilege") => {
                    if child.attributes().len() > 0 {
                        return Err("priv XML Privilege has an attribute".into());
                    }
                    privileges.push(simple_text(child)?);
                }
                (None, "Constraint") => {
                    simple_text(child)?;
                    constrained = true;
                }
                _ => return Err("priv XML PrivilegeGroup holds an unexpected element".into()),
            }
        }
        if !constrained {
            groups.push(PrivilegeGroup { scope, privileges });
        }
    }
    Ok(groups)
}

/// The encoding named by the XML declaration, if any. Only called on text whose declaration
/// the parser then checks; here it is only located: `<?xml` at the very start (after a
/// BOM), up to `?>`, where `encoding` can only be the EncodingDecl's name.
fn declared_encoding(text: &str) -> Option<&str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let decl = text.strip_prefix("<?xml")?;
    // `<?xml-stylesheet …?>` is a processing instruction, not the declaration.
    if !decl.starts_with([' ', '\t', '\r', '\n']) {
        return None;
    }
    let decl = decl.get(..decl.find("?>")?)?;
    let after = decl.get(decl.find("encoding")? + "encoding".len()..)?;
    let after = trim_xml_space(after).strip_prefix('=')?;
    let after = trim_xml_space(after);
    let quote = after.chars().next().filter(|q| *q == '"' || *q == '\'')?;
    let value = after.get(1..)?;
    value.get(..value.find(quote)?)
}

/// The element children of `node`; any non-whitespace text beside them is refused.
fn element_children<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    what: &str,
) -> Result<Vec<roxmltree::Node<'a, 'input>>, String> {
    let mut out = Vec::new();
    for child in node.children() {
        if child.is_element() {
            out.push(child);
        } else if child.is_text() && !trim_xml_space(child.text().unwrap_or_default()).is_empty() {
            return Err(format!("priv XML {what} holds text"));
        }
    }
    Ok(out)
}

/// The element's namespace name; `xmlns=""` (no namespace, XML Namespaces §6.2) is `None`.
fn namespace<'a>(node: roxmltree::Node<'a, '_>) -> Option<&'a str> {
    node.tag_name().namespace().filter(|n| !n.is_empty())
}

fn expect_name(node: roxmltree::Node<'_, '_>, name: &str) -> Result<(), String> {
    if namespace(node).is_none() && node.tag_name().name() == name {
        Ok(())
    } else {
        Err(format!("priv XML expected an unqualified {name}"))
    }
}

/// XML's value of a simple-content element: all its text (CDATA included, references
/// resolved), comments and processing instructions left out, trimmed of XML whitespace.
fn simple_text(node: roxmltree::Node<'_, '_>) -> Result<String, String> {
    let mut out = String::new();
    for child in node.children() {
        if child.is_element() {
            return Err("priv XML value holds an element".into());
        }
        if child.is_text() {
            out.push_str(child.text().unwrap_or_default());
        }
    }
    Ok(trim_xml_space(&out).to_string())
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
    fn json_groups_with_unknown_members_grant_nothing() {
        let claim = json!([{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:12345678", "privileges": [ROLE], "constraints": ["x"]}]);
        assert!(parse(&claim).is_err());
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

    const NS: &str = "http://itst.dk/oiosaml/basic_privilege_profile";

    /// An OIO-BPP document granting `privilege` (raw XML) for CVR 12345678.
    fn doc(privilege: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><bpp:PrivilegeList xmlns:bpp="{NS}"><PrivilegeGroup Scope="urn:dk:gov:saml:cvrNumberIdentifier:12345678"><Privilege>{privilege}</Privilege></PrivilegeGroup></bpp:PrivilegeList>"#
        )
    }

    fn grants_xml(xml: &str) -> Result<bool, String> {
        parse(&xml_claim(xml)).map(|g| grants(&g, "12345678", ROLE))
    }

    #[test]
    fn privilege_text_is_the_xml_value() {
        let granting = [
            ("plain", ROLE.to_string()),
            ("whitespace around", format!(" \n\t{ROLE}\r\n ")),
            ("CDATA", format!("<![CDATA[{ROLE}]]>")),
            (
                "CDATA in part",
                "urn:dk:healthcare:<![CDATA[ehmi:eds]]>:role:supporter".into(),
            ),
            (
                "character reference",
                "urn&#x3A;dk:healthcare:ehmi:eds:role:supporter".into(),
            ),
            (
                "comment between halves",
                "urn:dk:healthcare:ehmi:eds:<!-- x -->role:supporter".into(),
            ),
            (
                "PI between halves",
                "urn:dk:healthcare:ehmi:eds:<?pi x?>role:supporter".into(),
            ),
            (
                "equivalent URN spelling",
                "URN:DK:healthcare:ehmi:eds:role:supporter".into(),
            ),
        ];
        for (name, p) in granting {
            assert_eq!(grants_xml(&doc(&p)), Ok(true), "{name}");
        }
        let not_granting = [
            ("comment then suffix", format!("{ROLE}<!---->-suspended")),
            ("PI then suffix", format!("{ROLE}<?x?>-suspended")),
            ("CDATA suffix", format!("{ROLE}<![CDATA[-suspended]]>")),
            ("entity suffix", format!("{ROLE}&#x2D;suspended")),
            ("comment prefix", format!("not-<!---->{ROLE}")),
            (
                "NSS in another case",
                ROLE.to_uppercase().replace("URN:DK:", "urn:dk:"),
            ),
            ("non-breaking space around", format!("\u{a0}{ROLE}")),
        ];
        for (name, p) in not_granting {
            assert_eq!(grants_xml(&doc(&p)), Ok(false), "{name}");
        }
    }

    #[test]
    fn malformed_or_unexpected_xml_is_refused() {
        let role_doc = doc(ROLE);
        let refused: Vec<(&str, String)> = vec![
            ("element inside Privilege", doc(&format!("{ROLE}<b/>"))),
            ("element wrapping the role", doc(&format!("<b>{ROLE}</b>"))),
            ("unknown entity", doc(&format!("{ROLE}&x;"))),
            (
                "DOCTYPE with internal entity",
                format!(
                    r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY r "{ROLE}">]><bpp:PrivilegeList xmlns:bpp="{NS}"><PrivilegeGroup Scope="urn:dk:gov:saml:cvrNumberIdentifier:12345678"><Privilege>&r;</Privilege></PrivilegeGroup></bpp:PrivilegeList>"#
                ),
            ),
            (
                "billion laughs",
                format!(
                    r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><bpp:PrivilegeList xmlns:bpp="{NS}"><PrivilegeGroup Scope="urn:dk:gov:saml:cvrNumberIdentifier:12345678"><Privilege>&d;</Privilege></PrivilegeGroup></bpp:PrivilegeList>"#
                ),
            ),
            (
                "empty DOCTYPE",
                role_doc.replace("?><bpp:", "?><!DOCTYPE bpp:PrivilegeList><bpp:"),
            ),
            (
                "duplicate Scope",
                role_doc.replace(
                    "<PrivilegeGroup Scope=",
                    r#"<PrivilegeGroup Scope="urn:dk:gov:saml:cvrNumberIdentifier:1" Scope="#,
                ),
            ),
            (
                "Scope in a namespace",
                role_doc.replace("<PrivilegeGroup Scope=", "<PrivilegeGroup bpp:Scope="),
            ),
            (
                "Scope twice, once in a namespace",
                role_doc.replace(
                    "<PrivilegeGroup Scope=",
                    r#"<PrivilegeGroup bpp:Scope="urn:dk:gov:saml:cvrNumberIdentifier:1" Scope="#,
                ),
            ),
            (
                "two PrivilegeList roots",
                format!(
                    "{role_doc}{}",
                    role_doc.replace(r#"<?xml version="1.0" encoding="UTF-8"?>"#, "")
                ),
            ),
            (
                "root without namespace",
                role_doc.replace("bpp:PrivilegeList", "PrivilegeList"),
            ),
            (
                "root in another namespace",
                role_doc.replace(NS, "http://evil.example/basic_privilege_profile"),
            ),
            (
                "qualified PrivilegeGroup",
                role_doc.replace("PrivilegeGroup", "bpp:PrivilegeGroup"),
            ),
            (
                "qualified Privilege",
                role_doc.replace("Privilege>", "bpp:Privilege>"),
            ),
            (
                "default namespace on the children",
                role_doc.replace(
                    "<PrivilegeGroup ",
                    &format!(r#"<PrivilegeGroup xmlns="{NS}" "#),
                ),
            ),
            (
                "undeclared prefix",
                role_doc
                    .replace("bpp:", "x:")
                    .replace("xmlns:x", "xmlns:bpp"),
            ),
            (
                "unknown element in a group",
                role_doc.replace("</PrivilegeGroup>", "<Extra/></PrivilegeGroup>"),
            ),
            (
                "text in the list",
                role_doc.replace("</bpp:PrivilegeList>", "text</bpp:PrivilegeList>"),
            ),
            (
                "attribute on Privilege",
                role_doc.replace("<Privilege>", r#"<Privilege a="b">"#),
            ),
            (
                "Latin-1 declaration",
                role_doc.replace("UTF-8", "ISO-8859-1"),
            ),
            ("UTF-16 declaration", role_doc.replace("UTF-8", "UTF-16")),
            ("not closed", role_doc.replace("</bpp:PrivilegeList>", "")),
        ];
        for (name, xml) in refused {
            assert!(parse(&xml_claim(&xml)).is_err(), "{name}: {xml}");
        }
        let mut latin1 = role_doc.clone().into_bytes();
        latin1.extend_from_slice(b"<!-- \xe6 -->");
        let claim = Value::String(base64::engine::general_purpose::STANDARD.encode(&latin1));
        assert!(parse(&claim).is_err(), "non-UTF-8 bytes");
    }

    #[test]
    fn good_variants_are_accepted() {
        let role_doc = doc(ROLE);
        let accepted: Vec<(&str, String)> = vec![
            ("as is", role_doc.clone()),
            ("OIO-BPP 1.2 namespace", role_doc.replace(NS, BPP_NAMESPACE_1_2)),
            ("another prefix", role_doc.replace("bpp:", "p:").replace("xmlns:bpp", "xmlns:p")),
            ("default namespace on the root only", role_doc.replace("bpp:PrivilegeList", "PrivilegeList").replace("xmlns:bpp", "xmlns").replace("<PrivilegeGroup ", r#"<PrivilegeGroup xmlns="" "#)),
            ("lower-case encoding name", role_doc.replace("UTF-8", "utf-8")),
            ("no declaration", role_doc.replace(r#"<?xml version="1.0" encoding="UTF-8"?>"#, "")),
            ("BOM", format!("\u{feff}{role_doc}")),
            (
                "xsi attributes on the root",
                role_doc.replace(
                    "<bpp:PrivilegeList ",
                    r#"<bpp:PrivilegeList xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="x y" "#,
                ),
            ),
            ("comments and PIs around", role_doc.replace("<PrivilegeGroup", "<!-- c --><?p?><PrivilegeGroup")),
            ("Scope with spaces", role_doc.replace(r#"Scope=""#, r#"Scope=" "#)),
            ("Scope with a character reference", role_doc.replace("Identifier:", "Identifier&#x3A;")),
        ];
        for (name, xml) in accepted {
            assert_eq!(grants_xml(&xml), Ok(true), "{name}: {xml}");
        }
    }

    #[test]
    fn a_group_with_constraints_grants_nothing() {
        let xml = doc(ROLE).replace(
            "</PrivilegeGroup>",
            r#"<Constraint Name="urn:dk:kombit:KLE">25.*</Constraint></PrivilegeGroup>"#,
        );
        assert_eq!(parse(&xml_claim(&xml)), Ok(vec![]));
    }

    #[test]
    fn scope_and_role_match_as_urns() {
        let groups = |scope: &str, role: &str| {
            vec![PrivilegeGroup {
                scope: scope.into(),
                privileges: vec![role.into()],
            }]
        };
        let scope = "urn:dk:gov:saml:cvrNumberIdentifier:12345678";
        assert!(grants(
            &groups("URN:DK:gov:saml:cvrNumberIdentifier:12345678", ROLE),
            "12345678",
            ROLE
        ));
        assert!(grants(
            &groups(scope, "urn:DK:healthcare:ehmi:eds:role:supporter"),
            "12345678",
            ROLE
        ));
        // NSS differences and components are not the same URN (fails closed).
        assert!(!grants(
            &groups("urn:dk:gov:saml:CvrNumberIdentifier:12345678", ROLE),
            "12345678",
            ROLE
        ));
        assert!(!grants(
            &groups(&format!("{scope}#x"), ROLE),
            "12345678",
            ROLE
        ));
        assert!(!grants(
            &groups(scope, &format!("{ROLE}?=x")),
            "12345678",
            ROLE
        ));
        assert!(!grants(
            &groups(scope, &format!("{ROLE}-suspended")),
            "12345678",
            ROLE
        ));
        // A non-URN role is compared exactly.
        assert!(grants(
            &groups(scope, "https://roles.example/Supporter"),
            "12345678",
            "https://roles.example/Supporter"
        ));
        assert!(!grants(
            &groups(scope, "https://roles.example/supporter"),
            "12345678",
            "https://roles.example/Supporter"
        ));
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
