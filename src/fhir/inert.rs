//! Inert registrations: nothing in a forwarded body may make the FHIR server look anything up
//! or act on client-chosen server state while it stores the resource.
//!
//! A FHIR server resolves references at write time (HAPI: conditional "inline match URL"
//! references such as `AuditEvent?_security=…` are searched over the whole store; relative
//! references are checked for existence, placeholders are created). Such a lookup runs
//! outside every constraint the proxy adds, and the server's answer (404, "multiple resources
//! match", a later error) tells the caller whether someone else's record exists. DESIGN.md §5
//! and SECURITY.md ("Inert registrations") list every element considered.
//!
//! Decisions, element by element (walk of the whole body, `contained` included):
//!
//! | element | decision | why |
//! |---|---|---|
//! | `Reference.reference` anywhere | only `#id` naming a contained resource of the same body | every other form (`Type/id`, `Type?query`, `urn:uuid:`/`urn:oid:`, absolute URLs, `#` alone) is resolved, searched or placeholder-created by some server |
//! | a `reference` member that is not a string | refused | not a Reference; a lenient parser might still read it |
//! | `contained` below the top level, or not an array of resources with unique ids | refused | FHIR forbids nested `contained`; duplicate ids make `#id` ambiguous |
//! | a contained resource's `id` that is not a FHIR id (`[A-Za-z0-9\-.]{1,64}`) | refused | HAPI reads any reference holding `?` as a match URL, local ones too: `#x/AuditEvent?…` naming a contained id `x/AuditEvent?…` is searched over the whole store |
//! | `meta` of a contained resource | refused | the IG's contained Devices carry none; tags and profiles are shared server state (below) |
//! | contained resource types | `Device` only (what the IG's examples contain) | any other type would be stored and, by servers that index contained resources, searched |
//! | `extension` / `modifierExtension` URLs | only the IG's (`http://medcomehmi.dk/ig/eds/`) and HL7 core (`http://hl7.org/fhir/StructureDefinition/`) | servers act on their own extensions (HAPI's `externalized-binary-id` inflates stored binaries, placeholder and tag extensions) |
//! | codings / identifiers in the proxy's reserved label systems, anywhere | refused (by the registration check) | labels are set by the proxy only |
//! | `id`, `meta.versionId`, `meta.lastUpdated`, `meta.source` | removed before forwarding | server-assigned; a server that honours a client `id` turns "id taken" into an oracle |
//! | `meta.tag`, `meta.security` (any coding) | refused | a server keeps one shared definition per tag or label (HAPI: system, code, version, userSelected) whose first `display` wins and is shown on every record carrying it: one station could learn that another's record carries a coding, read its display, or write the text shown on other stations' records; the proxy alone writes `meta.security` |
//! | `meta.profile` | only the EDS profiles, optionally `|version` in FHIR id syntax | profiles are stored as shared tag definitions too |
//! | `text` (narrative), also of contained resources | removed before forwarding | XHTML the server stores and every reader renders: active content and external images (a tracking pixel tells the writer when a citizen or supporter opened the record) |
//! | numbers in decimal or exponent form, integers beyond 64 bits | refused | they would not reach the server exactly (`1.10` becomes `1.1`) once the body is re-serialised |
//! | `language`, `implicitRules`, `identifier`s, codings elsewhere | passed on | stored with the resource, never resolved or shared |

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::error::{Invalid, Refusal};
use crate::fhir::interaction::is_fhir_id;
use crate::fhir::json_path::JsonPath;

/// Extension URL prefixes a registration may use: the EDS IG's own and HL7's core extensions.
/// Anything else may be an extension the FHIR server itself acts on.
pub(crate) const ALLOWED_EXTENSION_PREFIXES: &[&str] = &[
    "http://medcomehmi.dk/ig/eds/StructureDefinition/",
    "http://hl7.org/fhir/StructureDefinition/",
];

/// Resource types a registration may contain (the IG's examples contain the observing Device).
pub(crate) const ALLOWED_CONTAINED_TYPES: &[&str] = &["Device"];

/// Members the FHIR server assigns itself; removed from a registration before it is forwarded.
const SERVER_ASSIGNED_META: &[&str] = &["versionId", "lastUpdated", "source"];

/// Refuse a registration body that would make the FHIR server resolve or look up anything.
///
/// `resource` is the parsed registration (an AuditEvent). Walks every element, `contained`
/// resources included. Errors: [`Refusal::Invalid`] naming the first offending element by its
/// JSON path (never its value, which may be personal data).
pub(crate) fn check_inert(resource: &Value) -> Result<(), Refusal> {
    let Some(top) = resource.as_object() else {
        return Err(Refusal::Invalid(Invalid::NotAnObject));
    };
    let contained_ids = contained_ids(top)?;
    check_meta(top.get("meta"))?;
    walk(resource, &JsonPath::ROOT, &contained_ids, Place::Top)
}

/// `meta` of a registration: no `tag`, no client `security` coding (the proxy writes that
/// element alone), only EDS profiles. The members a server assigns are removed later
/// ([`strip_server_assigned`]).
fn check_meta(meta: Option<&Value>) -> Result<(), Refusal> {
    let Some(meta) = meta else {
        return Ok(());
    };
    let meta = meta
        .as_object()
        .ok_or(Refusal::Invalid(Invalid::MetaNotObject))?;
    let non_empty = |name: &str| {
        meta.get(name)
            .is_some_and(|v| !v.as_array().is_some_and(Vec::is_empty))
    };
    if non_empty("tag") {
        return Err(Refusal::Invalid(Invalid::MetaTag));
    }
    if non_empty("security") {
        return Err(Refusal::Invalid(Invalid::ClientSecurity));
    }
    let profiles_ok = meta.get("profile").is_none_or(|p| {
        p.as_array().is_some_and(|ps| {
            ps.iter().all(|p| {
                p.as_str()
                    .and_then(crate::fhir::registration::eds_profile_version)
                    .is_some_and(|version| version.is_none_or(is_fhir_id))
            })
        })
    });
    if !profiles_ok {
        return Err(Refusal::Invalid(Invalid::ForeignProfile));
    }
    Ok(())
}

/// Remove the members a server assigns (`id`, `meta.versionId`, `meta.lastUpdated`,
/// `meta.source`) from a registration, so no server can honour client-chosen values, and the
/// narrative (`text`, also of contained resources), which readers render.
pub(crate) fn strip_server_assigned(resource: &mut Value) {
    if let Some(contained) = resource.get_mut("contained").and_then(Value::as_array_mut) {
        for item in contained.iter_mut().filter_map(Value::as_object_mut) {
            item.remove("text");
        }
    }
    if let Some(top) = resource.as_object_mut() {
        top.remove("id");
        top.remove("text");
        if let Some(meta) = top.get_mut("meta").and_then(Value::as_object_mut) {
            for name in SERVER_ASSIGNED_META {
                meta.remove(*name);
            }
        }
    }
}

/// The ids of the top-level contained resources; each must be a resource of an allowed type
/// with a unique, non-empty id.
fn contained_ids(top: &Map<String, Value>) -> Result<HashSet<&str>, Refusal> {
    let mut ids = HashSet::new();
    let Some(contained) = top.get("contained") else {
        return Ok(ids);
    };
    let items = contained
        .as_array()
        .ok_or(Refusal::Invalid(Invalid::ContainedNotArray))?;
    for item in items {
        let kind = item.get("resourceType").and_then(Value::as_str);
        if !kind.is_some_and(|k| ALLOWED_CONTAINED_TYPES.contains(&k)) {
            return Err(Refusal::Invalid(Invalid::ContainedType));
        }
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or(Refusal::Invalid(Invalid::ContainedWithoutId))?;
        if !is_fhir_id(id) {
            return Err(Refusal::Invalid(Invalid::ContainedIdMalformed));
        }
        if item.get("meta").is_some() {
            return Err(Refusal::Invalid(Invalid::ContainedMeta));
        }
        if !ids.insert(id) {
            return Err(Refusal::Invalid(Invalid::ContainedIdTwice));
        }
    }
    Ok(ids)
}

/// Where in the body a value sits, for the rules that depend on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The registration itself.
    Top,
    /// Directly in the top-level `contained` array.
    Contained,
    /// Inside an extension (complex extensions name their parts with relative URLs).
    Extension,
    /// Anywhere else.
    Element,
}

// The path is rendered only for a refusal (`JsonPath`): walking costs no allocation.
fn walk(
    value: &Value,
    path: &JsonPath<'_>,
    ids: &HashSet<&str>,
    place: Place,
) -> Result<(), Refusal> {
    match value {
        Value::Number(n) if n.is_f64() => Err(Refusal::Invalid(Invalid::Decimal {
            path: path.render(),
        })),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| walk(item, path, ids, place)),
        Value::Object(members) => {
            for (name, member) in members {
                let here = path.child(name);
                match name.as_str() {
                    "reference" => check_reference(member, &here, ids)?,
                    "contained" if place != Place::Top => {
                        return Err(Refusal::Invalid(Invalid::NestedContained {
                            path: here.render(),
                        }))
                    }
                    "contained" => walk(member, &here, ids, Place::Contained)?,
                    "extension" | "modifierExtension" => {
                        check_extensions(member, &here, place)?;
                        walk(member, &here, ids, Place::Extension)?;
                    }
                    _ => {
                        let inner = match place {
                            Place::Extension => Place::Extension,
                            _ => Place::Element,
                        };
                        walk(member, &here, ids, inner)?;
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_reference(value: &Value, path: &JsonPath<'_>, ids: &HashSet<&str>) -> Result<(), Refusal> {
    let Some(reference) = value.as_str() else {
        return Err(Refusal::Invalid(Invalid::NotAString {
            path: path.render(),
        }));
    };
    match reference.strip_prefix('#') {
        Some(id) if is_fhir_id(id) && ids.contains(id) => Ok(()),
        _ => Err(Refusal::Invalid(Invalid::ResolvableReference {
            path: path.render(),
        })),
    }
}

/// Extension URLs: absolute ones must be under an allowed prefix; relative names are only
/// the parts of a complex extension (inside another extension).
fn check_extensions(value: &Value, path: &JsonPath<'_>, place: Place) -> Result<(), Refusal> {
    let Some(items) = value.as_array() else {
        return Err(Refusal::Invalid(Invalid::NotAnArray {
            path: path.render(),
        }));
    };
    for item in items {
        let url = item.get("url").and_then(Value::as_str).unwrap_or_default();
        let allowed = ALLOWED_EXTENSION_PREFIXES
            .iter()
            .any(|p| url.len() > p.len() && url.starts_with(p))
            || (place == Place::Extension && is_part_name(url));
        if !allowed {
            return Err(Refusal::Invalid(Invalid::ForeignExtension {
                path: path.render(),
            }));
        }
    }
    Ok(())
}

/// A complex extension's part name: a plain token, never a URL.
fn is_part_name(url: &str) -> bool {
    !url.is_empty()
        && url
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/AuditEvent-EDS-PDS-01.1.json"
        ))
        .unwrap()
    }

    fn with_entity_reference(reference: Value) -> Value {
        let mut v = example();
        v["entity"]
            .as_array_mut()
            .unwrap()
            .push(json!({"what": {"reference": reference}}));
        v
    }

    fn refused(v: &Value) -> String {
        match check_inert(v) {
            Err(Refusal::Invalid(m)) => m.message(),
            other => panic!("expected Invalid, got {other:?} for {v}"),
        }
    }

    #[test]
    fn every_ig_example_is_inert() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ig");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() == "manifest.json" {
                continue;
            }
            let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            check_inert(&v).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            n += 1;
        }
        assert_eq!(n, 34);
        check_inert(&example()).unwrap();
    }

    #[test]
    fn every_resolvable_reference_is_refused() {
        for reference in [
            // The probe of the issue: a conditional reference searched over the whole store.
            "AuditEvent?_security=urn:eds-proxy:label:cpr|0101010000&_security=urn:eds-proxy:label:device-id|Other-Station",
            "AuditEvent?identifier=x",
            "?_id=1",
            "AuditEvent/123",
            "AuditEvent/123/_history/1",
            "Patient/p1",
            "Device/Cura-EUA",
            "urn:uuid:2f1b7f1e-6a0f-4a4e-9b0e-3c7a0f2b1d11",
            "urn:oid:1.2.3",
            "http://hapi:8080/fhir/AuditEvent/1",
            "https://proxy.example/fhir/AuditEvent/1",
            "https://elsewhere.example/fhir/Patient/1",
            "#",
            "#unknown",
            " #Cura-EUA",
            "#Cura-EUA ",
            "",
        ] {
            let m = refused(&with_entity_reference(json!(reference)));
            assert!(
                m.starts_with("entity.what.reference: only local references"),
                "{reference}: {m}"
            );
        }
        for reference in [json!(5), json!({"reference": "#Cura-EUA"}), json!(null)] {
            assert_eq!(
                refused(&with_entity_reference(reference)),
                "entity.what.reference must be a string"
            );
        }
    }

    #[test]
    fn local_references_to_contained_resources_pass() {
        check_inert(&with_entity_reference(json!("#Cura-EUA"))).unwrap();
    }

    #[test]
    fn references_are_found_anywhere() {
        let probe = json!("AuditEvent?_security=x");
        let mut v = example();
        v["contained"][0]["owner"] = json!({"reference": probe});
        assert!(refused(&v).starts_with("contained.owner.reference"));
        let mut v = example();
        v["agent"][0]["extension"][0]["valueReference"] = json!({"reference": probe});
        assert!(refused(&v).contains(".valueReference.reference"));
        let mut v = example();
        v["source"]["_site"] = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/x", "valueReference": {"reference": probe}}]});
        assert!(refused(&v).starts_with("source._site.extension.valueReference.reference"));
        let mut v = example();
        v["agent"][0]["location"] = json!({"reference": "Location/1"});
        assert!(refused(&v).starts_with("agent.location.reference"));
    }

    #[test]
    fn contained_rules() {
        let mut v = example();
        v["contained"][0]["contained"] = json!([{"resourceType": "Device", "id": "x"}]);
        assert_eq!(
            refused(&v),
            "contained.contained: contained resources may only appear at the top level"
        );
        for contained in [
            json!([{"resourceType": "Patient", "id": "p"}]),
            json!([{"resourceType": "AuditEvent", "id": "a"}]),
            json!([{"id": "nothing"}]),
            json!([["Device"]]),
        ] {
            let mut v = example();
            v["contained"] = contained;
            assert_eq!(
                refused(&v),
                "contained resources may only be of type Device"
            );
        }
        let mut v = example();
        v["contained"] = json!({"resourceType": "Device", "id": "x"});
        assert_eq!(refused(&v), "contained must be an array of resources");
        let mut v = example();
        let device = v["contained"][0].clone();
        v["contained"].as_array_mut().unwrap().push(device);
        assert_eq!(refused(&v), "two contained resources have the same id");
        let mut v = example();
        v["contained"][0].as_object_mut().unwrap().remove("id");
        assert_eq!(refused(&v), "every contained resource needs an id");
    }

    /// Critic finding: a local reference whose contained id is itself a match URL. HAPI reads
    /// any reference holding `?` as one, and searches it over the whole store.
    #[test]
    fn a_local_reference_cannot_carry_a_match_url() {
        let evil = "x/AuditEvent?_security=urn:eds-proxy:label:cpr|0101010000&_security=urn:eds-proxy:label:device-id|Other-Station";
        let mut v = example();
        let mut device = v["contained"][0].clone();
        device["id"] = json!(evil);
        v["contained"].as_array_mut().unwrap().push(device);
        v["entity"]
            .as_array_mut()
            .unwrap()
            .push(json!({"what": {"reference": format!("#{evil}")}}));
        assert_eq!(
            refused(&v),
            "a contained resource's id must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
        );
        for id in ["a/b", "a?b", "#a", "a b", "", &"x".repeat(65), "å"] {
            let mut v = example();
            v["contained"][0]["id"] = json!(id);
            v["source"]["observer"]["reference"] = json!(format!("#{id}"));
            assert_eq!(
                check_inert(&v),
                Err(Refusal::Invalid(if id.is_empty() {
                    // An empty id is no id at all.
                    Invalid::ContainedWithoutId
                } else {
                    Invalid::ContainedIdMalformed
                })),
                "{id:?}"
            );
        }
        assert!(is_fhir_id("Cura-EUA.1") && is_fhir_id(&"x".repeat(64)));
    }

    #[test]
    fn shared_server_state_in_meta_is_refused() {
        for (meta, why) in [
            (
                json!({"tag": [{"system": "urn:x-secret", "code": "0101010000", "display": "A's patient"}]}),
                "meta.tag is not accepted: tags are shared server state, visible on other records",
            ),
            (
                json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}),
                "meta.security is set by the proxy, not the client",
            ),
            (
                json!({"profile": ["http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatus", "http://example.org/probe"]}),
                "meta.profile may only name the EDS profiles",
            ),
            (
                json!({"profile": "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatus"}),
                "meta.profile may only name the EDS profiles",
            ),
            (json!([]), "meta must be an object"),
        ] {
            let mut v = example();
            if meta.is_object() {
                for (k, val) in meta.as_object().unwrap() {
                    v["meta"][k] = val.clone();
                }
            } else {
                v["meta"] = meta.clone();
            }
            assert_eq!(refused(&v), why, "{meta}");
        }
        let mut v = example();
        v["meta"]["tag"] = json!([]);
        v["meta"]["security"] = json!([]);
        check_inert(&v).unwrap();
        let mut v = example();
        v["contained"][0]["meta"] = json!({"tag": [{"system": "urn:x", "code": "y"}]});
        assert_eq!(refused(&v), "contained resources may not carry meta");
    }

    #[test]
    fn only_ig_and_core_extensions() {
        for url in [
            "http://hapifhir.io/fhir/StructureDefinition/externalized-binary-id",
            "http://hapifhir.io/fhir/StructureDefinition/resource-placeholder",
            "https://example.org/ext",
            "http://medcomehmi.dk/ig/eds/StructureDefinition/",
            "http://medcomehmi.dk/ig/eds/StructureDefinitionX",
            "value",
            "",
        ] {
            let mut v = example();
            v["agent"][0]["extension"][0]["url"] = json!(url);
            assert!(
                refused(&v).starts_with("agent.extension: extensions other than"),
                "{url}"
            );
            let mut v = example();
            v["modifierExtension"] = json!([{"url": url, "valueBoolean": true}]);
            assert!(
                refused(&v).starts_with("modifierExtension: extensions other than"),
                "{url}"
            );
        }
        let mut v = example();
        v["agent"][0]["extension"][0]["extension"] = json!([{"url": "part", "valueString": "x"}]);
        check_inert(&v).unwrap();
        let mut v = example();
        v["extension"] = json!({"url": "http://hl7.org/fhir/StructureDefinition/x"});
        assert_eq!(refused(&v), "extension must be an array");
    }

    #[test]
    fn numbers_that_would_change_are_refused() {
        for n in [
            "1.10",
            "1e2",
            "12345678901234567890123",
            "0.30000000000000000001",
            "-0.0",
        ] {
            let text = serde_json::to_string(&example()).unwrap().replacen(
                '{',
                &format!("{{\"x\":{{\"valueDecimal\":{n}}},"),
                1,
            );
            let v = crate::fhir::strict_json::parse(text.as_bytes()).unwrap();
            assert_eq!(
                refused(&v),
                "x.valueDecimal: numbers in decimal or exponent form are not accepted: they would not reach the FHIR server exactly",
                "{n}"
            );
        }
        let mut v = example();
        v["x"] = json!({"valueInteger": 42, "big": 18446744073709551615u64, "neg": -9223372036854775808i64});
        check_inert(&v).unwrap();
        // A member named "" at the top adds no segment (the eager paths' text, issue 10).
        let mut v = example();
        v[""] = json!({"valueDecimal": 1.5});
        assert_eq!(
            refused(&v),
            "valueDecimal: numbers in decimal or exponent form are not accepted: they would not reach the FHIR server exactly"
        );
    }

    #[test]
    fn profile_versions_are_ids() {
        let base = "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatus";
        for ok in [base.to_string(), format!("{base}|1.0.2")] {
            let mut v = example();
            v["meta"]["profile"] = json!([ok]);
            check_inert(&v).unwrap();
        }
        for bad in [
            format!("{base}|0101010000 any text ?x=y"),
            format!("{base}|"),
            format!("{base}x"),
        ] {
            let mut v = example();
            v["meta"]["profile"] = json!([bad]);
            assert_eq!(
                refused(&v),
                "meta.profile may only name the EDS profiles",
                "{bad}"
            );
        }
    }

    #[test]
    fn server_assigned_members_are_removed() {
        let mut v = example();
        v["id"] = json!("someone-elses-id");
        v["meta"]["versionId"] = json!("7");
        v["meta"]["lastUpdated"] = json!("2020-01-01T00:00:00Z");
        v["meta"]["source"] = json!("#abc");
        v["meta"]["tag"] = json!([{"system": "http://example.org", "code": "t"}]);
        strip_server_assigned(&mut v);
        assert!(v.get("id").is_none());
        let meta = v["meta"].as_object().unwrap();
        assert!(meta.get("versionId").is_none());
        assert!(meta.get("lastUpdated").is_none());
        assert!(meta.get("source").is_none());
        assert!(meta.get("profile").is_some());
        assert!(meta.get("tag").is_some());
        let mut v = example();
        v["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"https://tracker.example/p\"/></div>"});
        v["contained"][0]["text"] = v["text"].clone();
        strip_server_assigned(&mut v);
        assert!(v.get("text").is_none());
        assert!(v["contained"][0].get("text").is_none());
    }
}
