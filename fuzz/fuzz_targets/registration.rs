//! Registration: `validate_and_label` accepts a create body only for a station that may
//! register, and what it forwards is the checked body plus exactly the access labels:
//! it parses as JSON (no duplicate keys), is an AuditEvent, its `meta.security` holds the
//! device label with the station's device_id, the station's (SOR, GLN) is the sender's or the
//! receiver's (re-read with `read_registration`), the reserved codings are exactly
//! `labels_for` the registration, and nothing else in the body changed. Never a panic.
//!
//! Each input is used as a raw body, and as structured bytes (`arbitrary`) that mutate the
//! IG example `tests/fixtures/AuditEvent-EDS-PDS-01.1.json`; both for several stations.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use eds_proxy::auth::principal::Station;
use eds_proxy::fhir::labels::{security_codings, Label};
use eds_proxy::fhir::registration::{labels_for, read_registration, validate_and_label};
use eds_proxy::fhir::strict_json;
use eds_proxy_fuzz::{
    known, registering_station, remove_pointer, set_pointer, systems, DEVICE_SYSTEM,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const IG_EXAMPLE: &str = include_str!("../../tests/fixtures/AuditEvent-EDS-PDS-01.1.json");

const SENDER_SOR: &str = "937961000016000";
const RECEIVER_SOR: &str = "698141000016008";

fn stations() -> Vec<Station> {
    let mut no_create = registering_station("Cura-EUA", SENDER_SOR, "GLN-1234");
    no_create.grants.create = false;
    let mut no_org = registering_station("Cura-EUA", SENDER_SOR, "GLN-1234");
    no_org.org = None;
    vec![
        // The IG example's sender and receiver.
        registering_station("Cura-EUA", SENDER_SOR, "GLN-1234"),
        registering_station("Cura-EUA", RECEIVER_SOR, "GLN-12345"),
        // Sender's SOR with the receiver's GLN: not a party.
        registering_station("Cura-EUA", SENDER_SOR, "GLN-12345"),
        // Another station of the same organisation.
        registering_station("MultiMed-AP", SENDER_SOR, "GLN-1234"),
        no_create,
        no_org,
    ]
}

fn is_reserved(system: &str) -> bool {
    systems().is_reserved(system)
}

/// `meta.security` without the proxy's codings: what the client sent.
fn strip_reserved(mut v: Value) -> Value {
    if let Some(sec) = v
        .pointer_mut("/meta/security")
        .and_then(Value::as_array_mut)
    {
        sec.retain(|c| {
            !c.get("system")
                .and_then(Value::as_str)
                .is_some_and(is_reserved)
        });
    }
    v
}

/// `id`, `meta.versionId`, `meta.lastUpdated`, `meta.source` removed (the server assigns
/// them) and the narrative (`text`, also of contained resources), which the proxy drops.
fn without_server_assigned(mut v: Value) -> Value {
    if let Some(contained) = v.get_mut("contained").and_then(Value::as_array_mut) {
        for item in contained.iter_mut().filter_map(Value::as_object_mut) {
            item.remove("text");
        }
    }
    if let Some(top) = v.as_object_mut() {
        top.remove("id");
        top.remove("text");
    }
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        for name in ["versionId", "lastUpdated", "source"] {
            meta.remove(name);
        }
    }
    v
}

fn without_security(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("security");
    }
    v
}

/// Every `reference` member anywhere is a string naming a contained resource (`#id`).
fn assert_local_references(v: &Value, contained: &[String]) {
    match v {
        Value::Array(items) => items
            .iter()
            .for_each(|i| assert_local_references(i, contained)),
        Value::Object(members) => {
            for (name, member) in members {
                if name == "reference" {
                    let r = member
                        .as_str()
                        .unwrap_or_else(|| panic!("non-string reference forwarded: {member}"));
                    assert!(
                        contained.iter().any(|c| c == r),
                        "forwarded a resolvable reference {r:?}"
                    );
                }
                assert_local_references(member, contained);
            }
        }
        _ => {}
    }
}

fn check(body: &[u8], station: &Station) {
    let Ok(labelled) = validate_and_label(body, station, &systems()) else {
        return;
    };
    let out = labelled.body;
    let org = station
        .org
        .as_ref()
        .expect("accepted a registration from a station without an org context");
    assert!(
        station.grants.create,
        "accepted a registration without the create grant"
    );

    let input = strict_json::parse(body).expect("accepted a body that is not strict JSON");
    let forwarded = strict_json::parse(&out).expect("forwarded body is not strict JSON");
    assert_eq!(
        forwarded.get("resourceType").and_then(Value::as_str),
        Some("AuditEvent"),
        "forwarded a non-AuditEvent"
    );
    // Inert: nothing the server would resolve, nothing it assigns itself.
    let contained: Vec<String> = forwarded
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c.get("id")
                .and_then(Value::as_str)
                .map(|id| format!("#{id}"))
        })
        .collect();
    assert_local_references(&forwarded, &contained);
    assert!(forwarded.get("id").is_none(), "forwarded a client id");
    let device = (DEVICE_SYSTEM, station.device_id.as_str());
    assert!(
        security_codings(&forwarded).any(|c| c == device),
        "forwarded body lacks the device label for {}",
        station.device_id
    );

    // The checked facts, from what the client sent and from what the server will store.
    let reg = read_registration(&input, &systems()).expect("accepted body fails read_registration");
    let stored = read_registration(&strip_reserved(forwarded.clone()), &systems())
        .expect("forwarded body (labels removed) fails read_registration");
    assert_eq!(
        reg, stored,
        "the server stores other facts than the proxy checked"
    );
    assert_eq!(
        reg.device_id, station.device_id,
        "registration for another device"
    );
    let is_party = |p: &eds_proxy::fhir::registration::Party| {
        p.sor == org.sor && p.gln.as_deref() == Some(org.gln.as_str())
    };
    assert!(
        is_party(&reg.sender) || is_party(&reg.receiver),
        "station org ({}, {}) is neither sender {:?} nor receiver {:?}",
        org.sor,
        org.gln,
        reg.sender,
        reg.receiver
    );

    // The reserved codings are exactly the labels of this registration, each once.
    let mut reserved: Vec<Label> = security_codings(&forwarded)
        .filter(|(s, _)| is_reserved(s))
        .map(|(s, c)| Label {
            system: s.into(),
            code: c.into(),
        })
        .collect();
    reserved.sort();
    assert_eq!(
        reserved,
        labels_for(&reg, &systems()),
        "stamped labels differ from labels_for"
    );
    // Every stamped coding is a plain {system, code}.
    let sec = forwarded
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .expect("forwarded meta.security is not an array");
    let stamped = sec
        .iter()
        .filter(|c| {
            c.get("system")
                .and_then(Value::as_str)
                .is_some_and(is_reserved)
        })
        .count();
    assert_eq!(
        stamped,
        reserved.len(),
        "a reserved coding without a string code slipped in"
    );

    // No meta.security element other than the stamped ones names a reserved system in any
    // JSON shape: serde reads a struct from an array by field order, so `[system, code]` is
    // a coding to the proxy's own searchset check (see response_check, finding
    // `array-form`). Finding id: `registration-array-coding`.
    if !known("registration-array-coding") {
        for c in sec.iter().filter(|c| !c.is_object()) {
            assert!(
                !c.as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(is_reserved))),
                "forwarded meta.security holds a reserved label in array form: {c} in {}",
                Value::Array(sec.clone())
            );
        }
    }

    // Nothing but meta.security and the members the server assigns itself changed, and the
    // client brought no coding of its own in meta.security (the proxy writes it alone).
    assert_eq!(
        without_server_assigned(without_security(input.clone())),
        without_security(forwarded.clone()),
        "the forwarded body differs from the checked body outside meta.security"
    );
    let client_sec = input
        .pointer("/meta/security")
        .cloned()
        .unwrap_or(json!([]));
    assert_eq!(
        client_sec,
        json!([]),
        "a client meta.security coding was accepted"
    );
    assert_eq!(
        strip_reserved(forwarded).pointer("/meta/security").cloned(),
        Some(json!([])),
        "meta.security holds more than the stamped labels"
    );
}

// ---------------------------------------------------------------------------------------
// Structured mutations of the IG example.

const PATHS: &[&str] = &[
    "/resourceType",
    "/meta",
    "/meta/profile",
    "/meta/profile/0",
    "/meta/profile/1",
    "/meta/security",
    "/meta/security/0",
    "/contained",
    "/contained/0",
    "/contained/1",
    "/contained/0/id",
    "/contained/0/resourceType",
    "/contained/0/identifier",
    "/contained/0/identifier/0/value",
    "/contained/0/identifier/1",
    "/source/observer",
    "/source/observer/reference",
    "/source/observer/identifier",
    "/source/observer/identifier/value",
    "/agent",
    "/agent/0",
    "/agent/2",
    "/agent/0/who/identifier/value",
    "/agent/1/who/identifier/value",
    "/agent/0/type/coding/0/code",
    "/agent/1/type/coding/0/code",
    "/agent/0/type/coding/1",
    "/agent/1/type/coding/1",
    "/agent/0/extension/0/url",
    "/agent/0/extension/0/valueIdentifier/value",
    "/agent/1/extension/0/valueIdentifier/value",
    "/agent/0/extension/0/valueIdentifier/type/coding/0/code",
    "/agent/1/extension/1",
    "/agent/0/extension/1",
    "/entity",
    "/entity/0/type/code",
    "/entity/0/what/identifier/value",
    "/entity/1/type/code",
    "/entity/3",
];

const STRINGS: &[&str] = &[
    "Cura-EUA",
    " Cura-EUA ",
    "MultiMed-AP",
    "#Cura-EUA",
    "#MultiMed-AP",
    "Device/Cura-EUA",
    "",
    " ",
    SENDER_SOR,
    RECEIVER_SOR,
    "GLN-1234",
    "GLN-12345",
    "GLN",
    "ehmiSender",
    "ehmiReceiver",
    " ehmiSender",
    "ehmiPatient",
    "PAT1234567890",
    "AuditEvent",
    "Device",
    "Patient",
    "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatus",
    "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsBasicDeliveryStatus",
    "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsBasicDeliveryStatus|1.0.2",
    "http://medcomehmi.dk/ig/eds/StructureDefinition/EdsPatientDeliveryStatusX",
    "http://medcomehmi.dk/ig/eds/StructureDefinition/eds-otherId",
    "urn:eds-proxy:label:device-id",
    "urn:eds-proxy:label:sor",
    "urn:eds-proxy:label:cpr",
    "urn:eds-proxy:label:other",
    "urn:eds-proxy:label",
];

#[derive(Arbitrary, Debug)]
enum Str {
    Known(u8),
    Raw(String),
}

impl Str {
    fn get(&self) -> String {
        match self {
            Str::Known(i) => STRINGS[*i as usize % STRINGS.len()].into(),
            Str::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Val {
    Str(Str),
    Null,
    Bool(bool),
    Num(i64),
    EmptyArray,
    EmptyObject,
    Array(Vec<Str>),
    /// `{"value": s}`
    Identifier(Str),
    /// `[{"value": s}]`
    Identifiers(Vec<Str>),
    /// `{"coding": [{"code": s}]}`
    Coding(Str),
    /// `{"system": s, "code": s}`
    SystemCode(Str, Str),
    /// `[s, s]`
    Pair(Str, Str),
    /// A copy of the value at another path.
    CopyOf(u8),
    Json(String),
}

impl Val {
    fn get(&self, doc: &Value) -> Value {
        match self {
            Val::Str(s) => json!(s.get()),
            Val::Null => Value::Null,
            Val::Bool(b) => json!(b),
            Val::Num(n) => json!(n),
            Val::EmptyArray => json!([]),
            Val::EmptyObject => json!({}),
            Val::Array(v) => json!(v.iter().map(Str::get).collect::<Vec<_>>()),
            Val::Identifier(s) => json!({"value": s.get()}),
            Val::Identifiers(v) => {
                json!(v
                    .iter()
                    .map(|s| json!({"value": s.get()}))
                    .collect::<Vec<_>>())
            }
            Val::Coding(s) => json!({"coding": [{"code": s.get()}]}),
            Val::SystemCode(s, c) => json!({"system": s.get(), "code": c.get()}),
            Val::Pair(a, b) => json!([a.get(), b.get()]),
            Val::CopyOf(i) => doc
                .pointer(PATHS[*i as usize % PATHS.len()])
                .cloned()
                .unwrap_or(Value::Null),
            Val::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Path {
    Known(u8),
    Raw(String),
}

impl Path {
    fn get(&self) -> String {
        match self {
            Path::Known(i) => PATHS[*i as usize % PATHS.len()].into(),
            Path::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Set(Path, Val),
    Remove(Path),
    /// Append a copy of `/agent/i` (or entity, contained) to its array.
    DuplicateAgent(u8),
    DuplicateEntity(u8),
    DuplicateContained,
    AddSecurity(Str, Str),
    /// Push any value into meta.security.
    AddSecurityValue(Val),
}

#[derive(Arbitrary, Debug)]
struct Mutation {
    ops: Vec<Op>,
    /// Raw text spliced into the serialised body (duplicate keys, trailing bytes...).
    splice: Option<(u16, String)>,
}

fn duplicate(doc: &mut Value, array: &str, i: usize) {
    if let Some(a) = doc.pointer_mut(array).and_then(Value::as_array_mut) {
        if !a.is_empty() {
            let c = a[i % a.len()].clone();
            a.push(c);
        }
    }
}

fn mutate(m: &Mutation) -> Vec<u8> {
    let mut doc: Value = serde_json::from_str(IG_EXAMPLE).expect("IG example is JSON");
    for op in m.ops.iter().take(12) {
        match op {
            Op::Set(p, v) => {
                let v = v.get(&doc);
                set_pointer(&mut doc, &p.get(), v);
            }
            Op::Remove(p) => remove_pointer(&mut doc, &p.get()),
            Op::DuplicateAgent(i) => duplicate(&mut doc, "/agent", *i as usize),
            Op::DuplicateEntity(i) => duplicate(&mut doc, "/entity", *i as usize),
            Op::DuplicateContained => duplicate(&mut doc, "/contained", 0),
            Op::AddSecurity(_, _) | Op::AddSecurityValue(_) => {
                let coding = match op {
                    Op::AddSecurity(s, c) => json!({"system": s.get(), "code": c.get()}),
                    Op::AddSecurityValue(v) => v.get(&doc),
                    _ => unreachable!(),
                };
                match doc
                    .pointer_mut("/meta/security")
                    .and_then(Value::as_array_mut)
                {
                    Some(a) => a.push(coding),
                    None => {
                        set_pointer(&mut doc, "/meta/security", json!([coding]));
                    }
                }
            }
        }
    }
    let mut text = serde_json::to_string(&doc).expect("serialise");
    if let Some((pos, insert)) = &m.splice {
        eds_proxy_fuzz::splice(&mut text, u64::from(*pos), insert);
    }
    text.into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let stations = stations();
    for st in &stations {
        check(data, st);
    }
    let u = Unstructured::new(data);
    if let Ok(m) = Mutation::arbitrary_take_rest(u) {
        let body = mutate(&m);
        for st in &stations {
            check(&body, st);
        }
    }
});
