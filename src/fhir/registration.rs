//! Registration checks: a station may create an AuditEvent only if it is an EDS delivery
//! status, names the station itself as the observing device, and names the token's
//! organisational context (SOR + GLN) as its sender or receiver. A registration that passes
//! gets the access labels stamped into `meta.security`.

use serde_json::{json, Value};

use crate::auth::principal::Station;
use crate::error::{Forbidden, Invalid, Refusal};
use crate::fhir::inert;
use crate::fhir::json_path::JsonPath;
use crate::fhir::labels::{Label, LabelSystems};
use crate::fhir::strict_json;

/// Canonical URL of the IG's `EdsPatientDeliveryStatus` profile (an AuditEvent about a
/// citizen: it needs an `ehmiPatient` entity).
pub(crate) const EDS_PATIENT_PROFILE: &str =
    "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatus";
/// Canonical URL of the IG's `EdsBasicDeliveryStatus` profile (no citizen).
pub(crate) const EDS_BASIC_PROFILE: &str =
    "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsBasicDeliveryStatus";
/// The EDS profiles a registration may claim in `meta.profile`: the IG's two AuditEvent
/// profiles (canonical base `http://medcomehmi.dk/ig/eds`); a version suffix `|x.y` is allowed.
pub(crate) const EDS_PROFILES: &[&str] = &[EDS_PATIENT_PROFILE, EDS_BASIC_PROFILE];

/// `Some(version)` if `profile` is one of the [`EDS_PROFILES`], exactly (`Some(None)`) or with
/// a `|version` suffix (`Some(Some(version))`, FHIR canonical references); `None` otherwise.
pub(crate) fn eds_profile_version(profile: &str) -> Option<Option<&str>> {
    EDS_PROFILES
        .iter()
        .find_map(|e| match profile.strip_prefix(e)? {
            "" => Some(None),
            rest => rest.strip_prefix('|').map(Some),
        })
}
const OTHER_ID_EXTENSION: &str = "http://medcomehmi.dk/ig/eds/StructureDefinition/eds-otherId";

/// Facts read from a registration that pass its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The station's device id: `source.observer` (its identifier, or the contained Device it
    /// references).
    pub device_id: String,
    /// The `ehmiSender` agent.
    pub sender: Party,
    /// The `ehmiReceiver` agent.
    pub receiver: Party,
    /// The `ehmiPatient` entity's identifier value (a CPR number), if there is one; required by
    /// `EdsPatientDeliveryStatus`.
    pub cpr: Option<String>,
}

/// An organisation taking part in a delivery (sender or receiver agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// `who.identifier.value`: the SOR code.
    pub sor: String,
    /// The GLN of the agent's `eds-otherId` extension, if it has one.
    pub gln: Option<String>,
}

/// A registration that passed every check: the body to forward and the labels stamped on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// The JSON body to forward: server-assigned members removed, labels stamped.
    pub body: Vec<u8>,
    /// The access labels stamped into `meta.security` (sorted, unique).
    pub labels: Vec<Label>,
}

/// Check a create body for `station` and return the body to forward, labels stamped.
///
/// Errors: [`Refusal::Forbidden`] when the token may not register this record,
/// [`Refusal::Invalid`] when the body is not an inert EDS registration (see `fhir::inert`).
pub fn validate_and_label(
    body: &[u8],
    station: &Station,
    systems: &LabelSystems,
) -> Result<Labelled, Refusal> {
    if !station.grants.create {
        return Err(Refusal::Forbidden(Forbidden::NoCreateGrant));
    }
    let org = station
        .org
        .as_ref()
        .ok_or(Refusal::Forbidden(Forbidden::NoOrgContext))?;
    let mut resource = strict_json::parse(body).map_err(|e| {
        Refusal::Invalid(Invalid::NotJson {
            error: e.to_string(),
        })
    })?;
    let reg = read_registration(&resource, systems)?;
    inert::check_inert(&resource)?;
    if reg.device_id != station.device_id {
        return Err(Refusal::Forbidden(Forbidden::DeviceMismatch));
    }
    let is_party = |p: &Party| p.sor == org.sor && p.gln.as_deref() == Some(org.gln.as_str());
    if !is_party(&reg.sender) && !is_party(&reg.receiver) {
        return Err(Refusal::Forbidden(Forbidden::OrgNotParty));
    }
    inert::strip_server_assigned(&mut resource);
    let labels = labels_for(&reg, systems);
    stamp(&mut resource, &labels);
    let body = serde_json::to_vec(&resource).map_err(|e| {
        Refusal::Invalid(Invalid::Unserialisable {
            error: e.to_string(),
        })
    })?;
    Ok(Labelled { body, labels })
}

/// The labels a registration gets: its device, both parties' SOR codes, the patient's CPR.
pub fn labels_for(reg: &Registration, systems: &LabelSystems) -> Vec<Label> {
    let mut labels = vec![
        systems.device(&reg.device_id),
        systems.sor(&reg.sender.sor),
        systems.sor(&reg.receiver.sor),
    ];
    if let Some(cpr) = &reg.cpr {
        labels.push(systems.cpr(cpr));
    }
    labels.sort();
    labels.dedup();
    labels
}

fn stamp(resource: &mut Value, labels: &[Label]) {
    let codings = labels
        .iter()
        .map(|l| json!({"system": l.system, "code": l.code}));
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        let security = meta.entry("security").or_insert_with(|| json!([]));
        if let Some(arr) = security.as_array_mut() {
            arr.extend(codings);
        }
    }
}

/// The value at `pointer`, a JSON pointer of member names only (`/type/coding`): what
/// `Value::pointer` finds for such a pointer (an array has no named member either way),
/// without its per-segment allocation.
fn at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    pointer
        .strip_prefix('/')?
        .split('/')
        .try_fold(v, |v, name| v.get(name))
}

fn text_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    at(v, pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The shape of every element the access rules read: `{}` an object, `[]` an array, `$` a
/// string, wherever present. A FHIR server's parser is lenient where this proxy's JSON
/// pointers are not: HAPI keeps the first item of an array given for a single-valued element
/// and stores a number given for a string, so a second `ehmiPatient` entity with `type` as an
/// array, or a second identifier with a numeric `value`, would be invisible to the checks and
/// stored all the same (FHIR R4 JSON, <https://hl7.org/fhir/R4/json.html>: cardinality and
/// primitive types are fixed).
const READ_SHAPES: &[&str] = &[
    "meta{}",
    "meta.profile[]",
    "meta.profile[]$",
    "contained[]",
    "contained[]{}",
    "contained[].resourceType$",
    "contained[].id$",
    "contained[].identifier[]",
    "contained[].identifier[]{}",
    "contained[].identifier[].value$",
    "source{}",
    "source.observer{}",
    "source.observer.reference$",
    "source.observer.identifier{}",
    "source.observer.identifier.value$",
    "entity[]",
    "entity[]{}",
    "entity[].type{}",
    "entity[].type.code$",
    "entity[].what{}",
    "entity[].what.identifier{}",
    "entity[].what.identifier.value$",
    "agent[]",
    "agent[]{}",
    "agent[].type{}",
    "agent[].type.coding[]",
    "agent[].type.coding[]{}",
    "agent[].type.coding[].code$",
    "agent[].who{}",
    "agent[].who.identifier{}",
    "agent[].who.identifier.value$",
    "agent[].extension[]",
    "agent[].extension[]{}",
    "agent[].extension[].url$",
    "agent[].extension[].valueIdentifier{}",
    "agent[].extension[].valueIdentifier.type{}",
    "agent[].extension[].valueIdentifier.type.coding[]",
    "agent[].extension[].valueIdentifier.type.coding[]{}",
    "agent[].extension[].valueIdentifier.type.coding[].code$",
    "agent[].extension[].valueIdentifier.value$",
];

/// Check one [`READ_SHAPES`] entry against `v`; `Err` names the path.
fn check_shape(v: &Value, spec: &str) -> Result<(), String> {
    // The path is rendered only for a refusal (`JsonPath`).
    fn step(v: &Value, path: &[&str], shown: &JsonPath<'_>, want: &str) -> Result<(), String> {
        let Some((head, rest)) = path.split_first() else {
            let ok = match want {
                "{}" => v.is_object(),
                "[]" => v.is_array(),
                "$" => v.is_string(),
                _ => true,
            };
            return if ok { Ok(()) } else { Err(shown.render()) };
        };
        let (name, each) = match head.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (*head, false),
        };
        let here = shown.child(name);
        let Some(member) = v.get(name) else {
            return Ok(());
        };
        match (each, member) {
            (true, Value::Array(items)) if !rest.is_empty() || want != "[]" => items
                .iter()
                .try_for_each(|item| step(item, rest, &here, want)),
            _ => step(member, rest, &here, want),
        }
    }
    let (path, want) = if let Some(p) = spec.strip_suffix("[]{}") {
        (format!("{p}[]"), "{}")
    } else if let Some(p) = spec.strip_suffix("[]$") {
        (format!("{p}[]"), "$")
    } else if let Some(p) = spec.strip_suffix("{}") {
        (p.to_string(), "{}")
    } else if let Some(p) = spec.strip_suffix('$') {
        (p.to_string(), "$")
    } else if let Some(p) = spec.strip_suffix("[]") {
        (p.to_string(), "[]")
    } else {
        (spec.to_string(), "")
    };
    let parts: Vec<&str> = path.split('.').collect();
    step(v, &parts, &JsonPath::ROOT, want)
}

/// Read and check the parts of a registration the access rules depend on.
pub fn read_registration(r: &Value, systems: &LabelSystems) -> Result<Registration, Refusal> {
    if r.get("resourceType").and_then(Value::as_str) != Some("AuditEvent") {
        return Err(Refusal::Invalid(Invalid::NotAnAuditEvent));
    }
    for spec in READ_SHAPES {
        check_shape(r, spec).map_err(|path| {
            let kind = if spec.ends_with("{}") {
                "an object"
            } else if spec.ends_with('$') {
                "a string"
            } else {
                "an array"
            };
            Refusal::Invalid(Invalid::Shape {
                path: path.to_string(),
                kind,
            })
        })?;
    }
    let meta = r
        .get("meta")
        .ok_or(Refusal::Invalid(Invalid::NoEdsProfile))?;
    let profiles: Vec<&str> = meta
        .get("profile")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !profiles.iter().any(|p| eds_profile_version(p).is_some()) {
        return Err(Refusal::Invalid(Invalid::NoEdsProfile));
    }
    if let Some(sec) = meta.get("security") {
        let arr = sec
            .as_array()
            .ok_or(Refusal::Invalid(Invalid::SecurityNotArray))?;
        for coding in arr {
            // Only well-formed Codings: anything else could hide a label from this check.
            let system = match coding.as_object().map(|c| c.get("system")) {
                Some(None) => continue,
                Some(Some(Value::String(system))) => system,
                _ => return Err(Refusal::Invalid(Invalid::SecurityNotCodings)),
            };
            if systems.is_reserved(system) {
                return Err(Refusal::Invalid(Invalid::ReservedLabel));
            }
        }
    }
    if let Some(path) = reserved_system_anywhere(r, systems, &JsonPath::ROOT) {
        return Err(Refusal::Invalid(Invalid::ReservedLabelSystem {
            path: path.to_string(),
        }));
    }
    let device_id = device_identity(r)?;
    let sender = party(r, "ehmiSender")?;
    let receiver = party(r, "ehmiReceiver")?;
    let patients: Vec<&Value> = entities(r)
        .filter(|e| text_at(e, "/type/code") == Some("ehmiPatient"))
        .collect();
    let cpr = match patients.as_slice() {
        [] => None,
        [p] => Some(
            text_at(p, "/what/identifier/value")
                .ok_or(Refusal::Invalid(Invalid::PatientWithoutIdentifier))?
                .to_string(),
        ),
        _ => return Err(Refusal::Invalid(Invalid::SeveralPatients)),
    };
    let patient_profile = profiles.iter().any(|p| p.starts_with(EDS_PATIENT_PROFILE));
    if patient_profile && cpr.is_none() {
        return Err(Refusal::Invalid(Invalid::PatientMissing));
    }
    // Each of these becomes an access-label code: plain tokens only (`labels::is_plain_token`).
    for (what, code) in [
        ("device id", Some(device_id.as_str())),
        ("sender SOR code", Some(sender.sor.as_str())),
        ("receiver SOR code", Some(receiver.sor.as_str())),
        ("patient CPR", cpr.as_deref()),
    ] {
        if code.is_some_and(|c| !crate::fhir::labels::is_plain_token(c)) {
            return Err(Refusal::Invalid(Invalid::LabelCodeNotPlain { what }));
        }
    }
    Ok(Registration {
        device_id,
        sender,
        receiver,
        cpr,
    })
}

/// The JSON path of the first `system` member anywhere in the body (codings, identifiers,
/// contained resources) that names one of the proxy's label systems: those are the proxy's
/// alone, wherever they would be stored.
fn reserved_system_anywhere(
    v: &Value,
    systems: &LabelSystems,
    path: &JsonPath<'_>,
) -> Option<String> {
    // The path is rendered only for the member found (`JsonPath`): the walk allocates nothing.
    match v {
        Value::Array(items) => items
            .iter()
            .find_map(|item| reserved_system_anywhere(item, systems, path)),
        Value::Object(members) => members.iter().find_map(|(name, member)| {
            let here = path.child(name);
            match member {
                Value::String(s) if name == "system" && systems.is_reserved(s) => {
                    Some(here.render())
                }
                _ => reserved_system_anywhere(member, systems, &here),
            }
        }),
        _ => None,
    }
}

fn entities(r: &Value) -> impl Iterator<Item = &Value> {
    r.get("entity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The station that records the event: `source.observer.identifier.value`, and/or the
/// identifier of the contained Device `source.observer` references. Every identity given
/// must agree; at least one must be given.
fn device_identity(r: &Value) -> Result<String, Refusal> {
    let observer = at(r, "/source/observer").ok_or(Refusal::Invalid(Invalid::ObserverMissing))?;
    let mut identities: Vec<String> = Vec::new();
    if observer.get("identifier").is_some() {
        let v = text_at(observer, "/identifier/value")
            .ok_or(Refusal::Invalid(Invalid::ObserverIdentifierWithoutValue))?;
        identities.push(v.to_string());
    }
    if let Some(reference) = observer.get("reference") {
        let reference = reference.as_str().unwrap_or_default();
        let local = reference
            .strip_prefix('#')
            .ok_or(Refusal::Invalid(Invalid::ObserverReference))?;
        let contained: Vec<&Value> = r
            .get("contained")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("id").and_then(Value::as_str) == Some(local))
            .collect();
        let [device] = contained.as_slice() else {
            return Err(Refusal::Invalid(Invalid::ObserverNotContained));
        };
        if device.get("resourceType").and_then(Value::as_str) != Some("Device") {
            return Err(Refusal::Invalid(Invalid::ObserverNotDevice));
        }
        let values: Vec<&str> = device
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| text_at(i, "/value"))
            .collect();
        if values.is_empty() {
            return Err(Refusal::Invalid(Invalid::DeviceWithoutIdentifier));
        }
        // Several identifiers must all name the same station: no smuggling a second one.
        identities.extend(values.into_iter().map(str::to_string));
    }
    let first = identities
        .first()
        .cloned()
        .ok_or(Refusal::Invalid(Invalid::ObserverUnidentified))?;
    if identities.iter().any(|i| *i != first) {
        return Err(Refusal::Forbidden(Forbidden::ObserverDisagrees));
    }
    Ok(first)
}

fn party(r: &Value, role: &str) -> Result<Party, Refusal> {
    let agents: Vec<&Value> = r
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| {
            at(a, "/type/coding")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| text_at(c, "/code") == Some(role)))
        })
        .collect();
    let [agent] = agents.as_slice() else {
        return Err(Refusal::Invalid(Invalid::AgentCount {
            role: role.to_string(),
        }));
    };
    let sor = text_at(agent, "/who/identifier/value")
        .ok_or_else(|| {
            Refusal::Invalid(Invalid::AgentWithoutSor {
                role: role.to_string(),
            })
        })?
        .to_string();
    let glns: Vec<&str> = agent
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(OTHER_ID_EXTENSION))
        .filter(|e| {
            at(e, "/valueIdentifier/type/coding")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| text_at(c, "/code") == Some("GLN")))
        })
        .filter_map(|e| text_at(e, "/valueIdentifier/value"))
        .collect();
    let gln = match glns.as_slice() {
        [] => None,
        [g] => Some(g.to_string()),
        _ => {
            return Err(Refusal::Invalid(Invalid::AgentGlns {
                role: role.to_string(),
            }))
        }
    };
    Ok(Party { sor, gln })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Grants;
    use crate::auth::token::OrgContext;

    fn systems() -> LabelSystems {
        LabelSystems::default()
    }

    fn example() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/AuditEvent-EDS-PDS-01.1.json"
        ))
        .unwrap()
    }

    fn station(device: &str, sor: &str, gln: &str) -> Station {
        Station {
            device_id: device.into(),
            org: Some(OrgContext {
                name: None,
                sor: sor.into(),
                gln: gln.into(),
            }),
            grants: Grants {
                create: true,
                read: true,
                search: true,
            },
        }
    }

    fn sender_station() -> Station {
        station("Cura-EUA", "937961000016000", "GLN-1234")
    }

    fn run(body: &Value, st: &Station) -> Result<Value, Refusal> {
        validate_and_label(&serde_json::to_vec(body).unwrap(), st, &systems())
            .map(|l| serde_json::from_slice(&l.body).unwrap())
    }

    #[test]
    fn the_ig_example_is_accepted_and_labelled() {
        let out = run(&example(), &sender_station()).unwrap();
        let sec = out["meta"]["security"].as_array().unwrap();
        let has = |s: &str, c: &str| sec.iter().any(|x| x["system"] == s && x["code"] == c);
        assert!(has("urn:eds-proxy:label:device-id", "Cura-EUA"));
        assert!(has("urn:eds-proxy:label:sor", "937961000016000"));
        assert!(has("urn:eds-proxy:label:sor", "698141000016008"));
        assert!(has("urn:eds-proxy:label:cpr", "PAT1234567890"));
        assert_eq!(sec.len(), 4);
    }

    /// Issue 13 item 2: every value that becomes a label code is a plain token, or the
    /// registration is refused (400) before anything is forwarded.
    #[test]
    fn label_codes_must_be_plain_tokens() {
        let text = serde_json::to_string(&example()).unwrap();
        for special in [",", "|", "\\\\", "$"] {
            for (what, from, station) in [
                ("device id", "Cura-EUA", ("Cura-EUA", "937961000016000")),
                (
                    "sender SOR code",
                    "937961000016000",
                    ("Cura-EUA", "937961000016000"),
                ),
                (
                    "receiver SOR code",
                    "698141000016008",
                    ("Cura-EUA", "937961000016000"),
                ),
                (
                    "patient CPR",
                    "PAT1234567890",
                    ("Cura-EUA", "937961000016000"),
                ),
            ] {
                let to = format!("{from}{special}1");
                let body: Value = serde_json::from_str(&text.replace(from, &to)).unwrap();
                let (dev, sor) = station;
                let dev = if dev == from { to.as_str() } else { dev };
                let sor = if sor == from { to.as_str() } else { sor };
                assert_eq!(
                    run(&body, &station_of(dev, sor)),
                    Err(Refusal::Invalid(Invalid::LabelCodeNotPlain { what })),
                    "{what} with {special}"
                );
            }
        }
    }

    fn station_of(dev: &str, sor: &str) -> Station {
        station(dev, sor, "GLN-1234")
    }

    #[test]
    fn receiver_org_context_is_accepted_too() {
        assert!(run(
            &example(),
            &station("Cura-EUA", "698141000016008", "GLN-12345")
        )
        .is_ok());
    }

    #[test]
    fn wrong_device_or_org_is_forbidden() {
        for (st, why) in [
            (
                station("MultiMed-AP", "937961000016000", "GLN-1234"),
                Forbidden::DeviceMismatch,
            ),
            (
                station("Cura-EUA", "111", "GLN-1234"),
                Forbidden::OrgNotParty,
            ),
            (
                station("Cura-EUA", "937961000016000", "GLN-999"),
                Forbidden::OrgNotParty,
            ),
            // sender's SOR with receiver's GLN: each party must match as a pair.
            (
                station("Cura-EUA", "937961000016000", "GLN-12345"),
                Forbidden::OrgNotParty,
            ),
        ] {
            assert_eq!(run(&example(), &st), Err(Refusal::Forbidden(why)), "{st:?}");
        }
    }

    #[test]
    fn station_without_create_grant_or_org_is_forbidden() {
        let mut st = sender_station();
        st.grants.create = false;
        assert_eq!(
            run(&example(), &st),
            Err(Refusal::Forbidden(Forbidden::NoCreateGrant))
        );
        let mut st = sender_station();
        st.org = None;
        assert_eq!(
            run(&example(), &st),
            Err(Refusal::Forbidden(Forbidden::NoOrgContext))
        );
    }

    #[test]
    fn observer_identifier_must_agree_with_contained_device() {
        let mut body = example();
        body["source"]["observer"]["identifier"] = json!({"value": "Cura-EUA"});
        assert!(run(&body, &sender_station()).is_ok());
        body["source"]["observer"]["identifier"] = json!({"value": "Someone-Else"});
        assert_eq!(
            run(&body, &sender_station()),
            Err(Refusal::Forbidden(Forbidden::ObserverDisagrees))
        );
        let mut body = example();
        body["contained"][0]["identifier"] = json!([{"value": "Cura-EUA"}, {"value": "Other"}]);
        assert_eq!(
            run(&body, &sender_station()),
            Err(Refusal::Forbidden(Forbidden::ObserverDisagrees))
        );
    }

    #[test]
    fn identifier_alone_is_enough() {
        let mut body = example();
        body["source"]["observer"] = json!({"identifier": {"value": "Cura-EUA"}});
        body.as_object_mut().unwrap().remove("contained");
        assert!(run(&body, &sender_station()).is_ok());
    }

    #[test]
    fn malformed_registrations_are_invalid() {
        let mut cases: Vec<Value> = Vec::new();
        // The rule each case below breaks, in order.
        let why = [
            "not_an_audit_event",
            "no_eds_profile",
            "reserved_label",
            "observer_reference",
            "observer_not_contained",
            "agent_count",
            "agent_count",
            "patient_missing",
        ];
        let mut v = example();
        v["resourceType"] = json!("Patient");
        cases.push(v);
        let mut v = example();
        v["meta"]["profile"] = json!(["http://example.org/other"]);
        cases.push(v);
        let mut v = example();
        v["meta"]["security"] =
            json!([{"system": "urn:eds-proxy:label:cpr", "code": "0101701234"}]);
        cases.push(v);
        let mut v = example();
        v["source"]["observer"] = json!({"reference": "Device/123"});
        cases.push(v);
        let mut v = example();
        v["source"]["observer"] = json!({"reference": "#missing"});
        cases.push(v);
        let mut v = example();
        v["agent"].as_array_mut().unwrap().remove(0);
        cases.push(v);
        let mut v = example();
        let dup = v["agent"][0].clone();
        v["agent"].as_array_mut().unwrap().push(dup);
        cases.push(v);
        let mut v = example();
        v["entity"].as_array_mut().unwrap().remove(0);
        cases.push(v);
        assert_eq!(cases.len(), why.len());
        for (i, (body, why)) in cases.iter().zip(why).enumerate() {
            let refused = run(body, &sender_station()).unwrap_err();
            assert!(matches!(refused, Refusal::Invalid(_)), "case {i}");
            assert_eq!(refused.reason(), why, "case {i}");
        }
    }

    #[test]
    fn security_must_hold_codings_only() {
        for security in [
            json!([["urn:eds-proxy:label:sor"]]),
            json!(["urn:eds-proxy:label:sor"]),
            json!([{"system": ["urn:eds-proxy:label:sor"], "code": "1"}]),
            json!([{"system": 5}]),
        ] {
            let mut v = example();
            v["meta"]["security"] = security.clone();
            assert_eq!(
                run(&v, &sender_station()),
                Err(Refusal::Invalid(Invalid::SecurityNotCodings)),
                "{security}"
            );
        }
        // Any client coding in meta.security: the proxy writes that element alone.
        let mut v = example();
        v["meta"]["security"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}, {"code": "x"}]);
        assert_eq!(
            run(&v, &sender_station()),
            Err(Refusal::Invalid(Invalid::ClientSecurity))
        );
    }

    #[test]
    fn duplicate_keys_and_non_json_are_invalid() {
        let st = sender_station();
        for body in [
            &br#"{"resourceType":"AuditEvent","resourceType":"Patient"}"#[..],
            b"<AuditEvent/>",
        ] {
            let refused = validate_and_label(body, &st, &systems()).unwrap_err();
            assert!(
                matches!(refused, Refusal::Invalid(Invalid::NotJson { .. })),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn reserved_systems_are_refused_anywhere_in_the_body() {
        for (path, patch) in [
            (
                "meta.tag.system",
                json!({"meta": {"tag": [{"system": "urn:eds-proxy:label:device-id", "code": "Other"}]}}),
            ),
            (
                "contained.identifier.system",
                json!({"contained": [{"resourceType": "Device", "id": "Cura-EUA", "identifier": [{"system": "urn:eds-proxy:label:cpr", "value": "Cura-EUA"}]}]}),
            ),
            (
                "entity.what.identifier.system",
                json!({"entity": [{"what": {"identifier": {"system": "urn:eds-proxy:label:sor", "value": "1"}}}]}),
            ),
        ] {
            let mut v = example();
            for (k, val) in patch.as_object().unwrap() {
                match (v[k].as_object_mut(), val.as_object()) {
                    (Some(obj), Some(add)) => obj.extend(add.clone()),
                    _ => {
                        if let (Some(arr), Some(add)) = (v[k].as_array_mut(), val.as_array()) {
                            if k == "contained" {
                                *arr = add.clone();
                            } else {
                                arr.extend(add.iter().cloned());
                            }
                        }
                    }
                }
            }
            assert_eq!(
                run(&v, &sender_station()),
                Err(Refusal::Invalid(Invalid::ReservedLabelSystem {
                    path: path.to_string(),
                })),
                "{path}"
            );
        }
    }

    #[test]
    fn a_registration_that_makes_the_server_look_something_up_is_refused() {
        let mut v = example();
        v["entity"].as_array_mut().unwrap().push(json!({"what": {"reference":
            "AuditEvent?_security=urn:eds-proxy:label:cpr|0101010000&_security=urn:eds-proxy:label:device-id|Other-Station"}}));
        assert!(matches!(
            run(&v, &sender_station()),
            Err(Refusal::Invalid(Invalid::ResolvableReference { path })) if path == "entity.what.reference"
        ));
    }

    #[test]
    fn server_assigned_members_never_reach_the_server() {
        let mut v = example();
        v["id"] = json!("another-stations-record");
        v["meta"]["versionId"] = json!("3");
        v["meta"]["source"] = json!("http://elsewhere#x");
        let out = run(&v, &sender_station()).unwrap();
        assert!(out.get("id").is_none());
        assert!(out["meta"].get("versionId").is_none());
        assert!(out["meta"].get("source").is_none());
    }

    /// Critic round 2: a lenient FHIR parser reads an array given for a single element (first
    /// item) and a number given for a string; the checks must see what the server will store.
    #[test]
    fn elements_the_rules_read_have_their_fhir_shape() {
        let patient_type = json!({"system": "http://medcomehmi.dk/ig/terminology/CodeSystem/ehmi-delivery-status-entity-type", "code": "ehmiPatient"});
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"entity": [{"what": {"identifier": {"value": "0303030303"}}, "type": [patient_type]}]}),
                "entity.type must be an object (FHIR R4 JSON)",
            ),
            (
                json!({"agent": [{"type": [{"coding": [{"code": "ehmiSender"}]}], "who": {"identifier": {"value": "VICTIM"}}}]}),
                "agent.type must be an object (FHIR R4 JSON)",
            ),
            (
                json!({"agent": [{"type": {"coding": [{"code": "ehmiSender"}]}, "who": [{"identifier": {"value": "VICTIM"}}]}]}),
                "agent.who must be an object (FHIR R4 JSON)",
            ),
            (
                json!({"entity": [{"what": {"identifier": {"value": 303030303}}}]}),
                "entity.what.identifier.value must be a string (FHIR R4 JSON)",
            ),
            (
                json!({"entity": [{"what": [{"identifier": {"value": "x"}}]}]}),
                "entity.what must be an object (FHIR R4 JSON)",
            ),
            (
                json!({"entity": [{"type": {"code": 5}}]}),
                "entity.type.code must be a string (FHIR R4 JSON)",
            ),
            (
                json!({"entity": {"what": {}}}),
                "entity must be an array (FHIR R4 JSON)",
            ),
        ];
        for (extra, why) in cases {
            let mut v = example();
            for (k, val) in extra.as_object().unwrap() {
                match (v[k].as_array_mut(), val.as_array()) {
                    (Some(arr), Some(add)) => arr.extend(add.iter().cloned()),
                    _ => v[k] = val.clone(),
                }
            }
            let refused = run(&v, &sender_station()).unwrap_err();
            assert_eq!(
                (refused.reason(), refused.to_string().as_str()),
                ("shape", why),
                "{extra}"
            );
        }
        let mut v = example();
        v["contained"][0]["identifier"] = json!([{"value": "Cura-EUA"}, {"value": 4242}]);
        assert_eq!(
            run(&v, &sender_station()),
            Err(Refusal::Invalid(Invalid::Shape {
                path: "contained.identifier.value".into(),
                kind: "a string"
            }))
        );
        let mut v = example();
        v["agent"][0]["extension"][0]["valueIdentifier"]["value"] = json!(1234);
        assert_eq!(
            run(&v, &sender_station()),
            Err(Refusal::Invalid(Invalid::Shape {
                path: "agent.extension.valueIdentifier.value".into(),
                kind: "a string"
            }))
        );
    }

    #[test]
    fn profile_with_version_counts() {
        let mut v = example();
        v["meta"]["profile"] = json!([
            "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatus|1.0.2"
        ]);
        assert!(run(&v, &sender_station()).is_ok());
    }
}
