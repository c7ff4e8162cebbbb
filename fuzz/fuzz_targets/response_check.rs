//! Response check: whatever the FHIR server answers, an accepted searchset holds only
//! AuditEvents the caller's constraint admits (plus OperationOutcomes with search.mode
//! `outcome`), every Bundle link points under the proxy's public base, every `_getpages` link
//! carries a signature that verifies for the caller (and for no other principal), other links
//! lose the `_security` constraint, and `check_resource` shows only admitted AuditEvents.
//!
//! Each input is used as a raw body (for a station, a citizen and a supporter), and as
//! structured bytes (`arbitrary`) for a generated searchset.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use eds_proxy::auth::principal::Principal;
use eds_proxy::fhir::labels::Constraint;
use eds_proxy::fhir::paging::{parse_page_request, PageSigner};
use eds_proxy::fhir::query::decode_pairs;
use eds_proxy::fhir::response::{check_resource, check_searchset, ResourceCheck, ResponseContext};
use eds_proxy_fuzz::{
    constraint_for, known, parse_first_wins, parse_last_wins, principals, signer, MAX_COUNT,
    PUBLIC_BASE, UPSTREAM_BASE,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

struct Fixture {
    principals: Vec<Principal>,
    constraints: Vec<Constraint>,
    signer: PageSigner,
}

fn fixture() -> Fixture {
    let principals = principals();
    let constraints = principals.iter().map(constraint_for).collect();
    Fixture {
        principals,
        constraints,
        signer: signer(),
    }
}

fn under_public_base(url: &str) -> bool {
    url.strip_prefix(PUBLIC_BASE)
        .is_some_and(|r| r.is_empty() || r.starts_with(['/', '?']))
}

fn check(body: &[u8], f: &Fixture, who: usize) {
    let key = f.principals[who].binding_key();
    let constraint = &f.constraints[who];
    let ctx = ResponseContext {
        constraint,
        public_base: PUBLIC_BASE,
        upstream_base: UPSTREAM_BASE,
        signer: &f.signer,
        principal_key: &key,
        drop_totals: false,
        max_count: MAX_COUNT,
        max_link_bytes: 8192,
    };

    // Single resources (read, vread): asked for the id the body names (or another one). The
    // check refuses duplicates only where it decides; whichever of two duplicates a client
    // keeps (first or last), what it sees must pass.
    let named_id = parse_first_wins(body)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
    for requested in [named_id.as_deref().unwrap_or("x"), "other-id"] {
        let Ok(r) = check_resource(body, constraint, requested) else {
            continue;
        };
        for (policy, parse) in [
            (
                "first-wins",
                parse_first_wins as fn(&[u8]) -> Result<Value, String>,
            ),
            ("last-wins", parse_last_wins),
        ] {
            let v = match parse(body) {
                Err(e) if e.starts_with("number out of range") => continue,
                other => other
                    .unwrap_or_else(|e| panic!("check_resource accepted non-JSON ({policy}): {e}")),
            };
            let visible = v.get("resourceType").and_then(Value::as_str) == Some("AuditEvent")
                && constraint.admits(&v)
                && v.get("id").and_then(Value::as_str) == Some(requested);
            if r == ResourceCheck::Visible {
                assert!(
                    visible,
                    "check_resource showed ({policy}) {}",
                    String::from_utf8_lossy(body)
                );
                assert_nothing_foreign(&v, constraint, policy);
            }
            if r == ResourceCheck::Hidden {
                assert!(
                    !constraint.admits(&v),
                    "hid an admitted resource ({policy})"
                );
            }
        }
    }

    let Ok(checked) = check_searchset(body, &ctx) else {
        return;
    };
    // The check parses only what it decides on and carries the rest through verbatim, so
    // duplicate keys in fields it does not read may reach the client. Whichever way a client
    // resolves them (first or last wins), the invariants must hold.
    for (policy, parse) in [
        (
            "first-wins",
            parse_first_wins as fn(&[u8]) -> Result<Value, String>,
        ),
        ("last-wins", parse_last_wins),
    ] {
        // The partial parse carries numbers outside f64's range (`1e400`) through verbatim;
        // serde_json's Value cannot hold them. Not a labelling question (every field the
        // decision reads is a string or an object), so such bodies are not checked further.
        let input = match parse(body) {
            Err(e) if e.starts_with("number out of range") => return,
            other => other.unwrap_or_else(|e| panic!("accepted non-JSON ({policy}): {e}")),
        };
        let out = parse(&checked.body)
            .unwrap_or_else(|e| panic!("checked searchset is not JSON ({policy}): {e}"));
        check_bundle(&input, &out, checked.dropped, f, who, policy);
    }
}

/// Independent of the check's own walk: every object with a `resourceType` anywhere in a
/// shown answer is an AuditEvent the caller may see, or a type without record data of its own
/// (Device parts, envelopes).
fn assert_nothing_foreign(v: &Value, constraint: &Constraint, what: &str) {
    match v {
        Value::Array(items) => items
            .iter()
            .for_each(|i| assert_nothing_foreign(i, constraint, what)),
        Value::Object(members) => {
            match members.get("resourceType").and_then(Value::as_str) {
                Some("AuditEvent") => assert!(
                    constraint.admits(v),
                    "{what}: an AuditEvent the caller may not see was shown: {v}"
                ),
                Some("Device" | "Bundle" | "OperationOutcome" | "Parameters") | None => {}
                Some(other) => panic!("{what}: a {other} was shown: {v}"),
            }
            members
                .values()
                .for_each(|m| assert_nothing_foreign(m, constraint, what));
        }
        _ => {}
    }
}

fn check_bundle(input: &Value, out: &Value, dropped: usize, f: &Fixture, who: usize, policy: &str) {
    let key = f.principals[who].binding_key();
    let constraint = &f.constraints[who];
    assert_nothing_foreign(out, constraint, policy);
    assert_eq!(
        input.get("resourceType").and_then(Value::as_str),
        Some("Bundle")
    );
    assert_eq!(input.get("type").and_then(Value::as_str), Some("searchset"));
    assert_eq!(
        out.get("resourceType").and_then(Value::as_str),
        Some("Bundle")
    );
    assert_eq!(out.get("type").and_then(Value::as_str), Some("searchset"));

    // Entries.
    let kept = match out.get("entry") {
        None => 0,
        Some(Value::Array(entries)) => {
            for e in entries {
                // Finding `array-form`: serde reads the entry/resource/meta/coding views from
                // JSON arrays by field order, so `[url, ["AuditEvent", [[[system, code]]]]]`
                // passes as an admitted AuditEvent although a client sees no resource.
                let array_form = !e.is_object()
                    || e.get("resource").is_some_and(|r| !r.is_object())
                    || e.pointer("/resource/meta")
                        .is_some_and(|m| !m.is_object() && !m.is_null())
                    || e.pointer("/search")
                        .is_some_and(|m| !m.is_object() && !m.is_null())
                    || e.pointer("/resource/meta/security")
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|c| !c.is_object() && !c.is_null()));
                if array_form && known("array-form") {
                    continue;
                }
                let resource = e
                    .get("resource")
                    .filter(|r| r.is_object())
                    .unwrap_or_else(|| {
                        panic!("entry without a resource object kept for {key:?} ({policy}): {e}")
                    });
                match resource.get("resourceType").and_then(Value::as_str) {
                    Some("AuditEvent") => assert!(
                        constraint.admits(resource),
                        "AuditEvent not admitted by the constraint kept for {key:?} ({policy}): {e}"
                    ),
                    Some("OperationOutcome") => assert_eq!(
                        e.pointer("/search/mode").and_then(Value::as_str),
                        Some("outcome"),
                        "OperationOutcome kept without search.mode outcome ({policy}): {e}"
                    ),
                    other => panic!("entry of type {other:?} kept ({policy}): {e}"),
                }
                if let Some(u) = e.get("fullUrl").and_then(Value::as_str) {
                    let was = input
                        .get("entry")
                        .and_then(Value::as_array)
                        .is_some_and(|a| {
                            a.iter()
                                .any(|x| x.get("fullUrl").and_then(Value::as_str) == Some(u))
                        });
                    assert!(
                        under_public_base(u) || was,
                        "fullUrl {u:?} invented by the check"
                    );
                }
            }
            entries.len()
        }
        Some(other) => panic!("entry is not an array in a checked searchset: {other}"),
    };
    let before = input
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert_eq!(
        kept + dropped,
        before,
        "entries neither kept nor counted as dropped ({policy})"
    );
    if dropped > 0 {
        assert!(
            out.get("total").is_none(),
            "total kept although entries were dropped"
        );
    }

    // Links.
    match out.get("link") {
        None => {}
        Some(Value::Array(links)) => {
            for link in links {
                let url = link
                    .get("url")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("link without a string url kept: {link}"));
                assert!(
                    under_public_base(url),
                    "link outside the public base: {url:?}"
                );
                let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
                let pairs = decode_pairs(query);
                assert!(
                    !pairs.iter().any(|(n, _)| n.starts_with("_security")),
                    "link shows the constraint: {url:?}"
                );
                // Every kept link is a signed paging link (issue 13): it parses, and it
                // verifies over its exact upstream target for this caller only.
                let page = parse_page_request(&pairs, MAX_COUNT)
                    .unwrap_or_else(|e| panic!("kept link does not parse ({}): {url:?}", e.reason()));
                assert!(
                    f.signer
                        .verify(&key, constraint, &page.target.upstream_target(constraint), &page.signature)
                        .is_ok(),
                    "page link signature does not verify for its principal: {url:?}"
                );
                for (i, p) in f.principals.iter().enumerate() {
                    if i != who {
                        let target = page.target.upstream_target(&f.constraints[i]);
                        assert!(
                            f.signer
                                .verify(&p.binding_key(), &f.constraints[i], &target, &page.signature)
                                .is_err(),
                            "page link verifies for another principal: {url:?}"
                        );
                    }
                }
            }
        }
        Some(other) => panic!("Bundle.link that is not an array passed unchecked: {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Structured searchsets.

#[derive(Arbitrary, Debug)]
enum Base {
    Public,
    Upstream,
    UpstreamNoSlash,
    Evil,
    Prefixed,
    Userinfo,
    Raw(String),
}

impl Base {
    fn get(&self) -> String {
        match self {
            Base::Public => PUBLIC_BASE.into(),
            Base::Upstream => UPSTREAM_BASE.into(),
            Base::UpstreamNoSlash => "http://hapi:8080/fhirX".into(),
            Base::Evil => "https://evil.example/fhir".into(),
            Base::Prefixed => "http://hapi:8080".into(),
            Base::Userinfo => "http://hapi:8080/fhir@evil.example".into(),
            Base::Raw(s) => s.clone(),
        }
    }
}

const PARAM_NAMES: &[&str] = &[
    "_getpages",
    "_getpagesoffset",
    "_count",
    "_bundletype",
    "_format",
    "_pretty",
    "_security",
    "_security:not",
    "_eds_sig",
    "_elements",
    "message-id",
    "%5Fgetpages",
    "_getpages%00",
];

const PARAM_VALUES: &[&str] = &[
    "abc-123",
    "10",
    "20",
    "searchset",
    "json",
    "true",
    "urn:eds-proxy:label:device-id|dev-1",
    "urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cdev-1",
    "x",
    "",
    "a/b",
    "100000",
];

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Raw(String),
}

impl Text {
    fn get(&self, table: &[&str]) -> String {
        match self {
            Text::Known(i) => table[*i as usize % table.len()].into(),
            Text::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Url {
    base: Base,
    path: Option<String>,
    params: Vec<(Text, Text)>,
    separator_semicolon: bool,
}

impl Url {
    fn get(&self) -> String {
        let mut u = self.base.get();
        if let Some(p) = &self.path {
            u.push('/');
            u.push_str(p);
        }
        if !self.params.is_empty() {
            u.push('?');
            let sep = if self.separator_semicolon { ";" } else { "&" };
            let q: Vec<String> = self
                .params
                .iter()
                .map(|(n, v)| format!("{}={}", n.get(PARAM_NAMES), v.get(PARAM_VALUES)))
                .collect();
            u.push_str(&q.join(sep));
        }
        u
    }
}

const SYSTEMS: &[&str] = &[
    "urn:eds-proxy:label:device-id",
    "urn:eds-proxy:label:cpr",
    "urn:eds-proxy:label:sor",
    "urn:eds-proxy:label:device-id ",
    "URN:eds-proxy:label:device-id",
];

const CODES: &[&str] = &[
    "dev-1",
    "dev-2",
    "0101701234",
    "111",
    "222",
    "12345678",
    "dev-1 ",
    "dev\\-1",
    "",
];

#[derive(Arbitrary, Debug)]
enum Coding {
    Label(Text, Text),
    SystemOnly(Text),
    CodeNumber(Text, i64),
    NotAnObject(String),
}

impl Coding {
    fn get(&self) -> Value {
        match self {
            Coding::Label(s, c) => json!({"system": s.get(SYSTEMS), "code": c.get(CODES)}),
            Coding::SystemOnly(s) => json!({"system": s.get(SYSTEMS)}),
            Coding::CodeNumber(s, n) => json!({"system": s.get(SYSTEMS), "code": n}),
            Coding::NotAnObject(s) => json!(s),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ResourceType {
    AuditEvent,
    OperationOutcome,
    Patient,
    Device,
    Bundle,
    LowerAuditEvent,
    Missing,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Meta {
    Security(Vec<Coding>),
    SecurityNotArray(Coding),
    NoSecurity,
    NotAnObject,
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Mode {
    Match,
    Include,
    Outcome,
    Missing,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    full_url: Option<Url>,
    resource_type: ResourceType,
    meta: Meta,
    /// A nested resource (contained) carrying its own labels.
    contained: Option<Vec<Coding>>,
    mode: Mode,
    no_resource: bool,
}

impl Entry {
    fn get(&self, i: usize) -> Value {
        let mut e = json!({});
        if let Some(u) = &self.full_url {
            e["fullUrl"] = json!(u.get());
        }
        if !self.no_resource {
            let mut r = json!({"id": format!("r{i}")});
            let rt = match &self.resource_type {
                ResourceType::AuditEvent => Some("AuditEvent".to_string()),
                ResourceType::OperationOutcome => Some("OperationOutcome".into()),
                ResourceType::Patient => Some("Patient".into()),
                ResourceType::Device => Some("Device".into()),
                ResourceType::Bundle => Some("Bundle".into()),
                ResourceType::LowerAuditEvent => Some("auditevent".into()),
                ResourceType::Missing => None,
                ResourceType::Raw(s) => Some(s.clone()),
            };
            if let Some(rt) = rt {
                r["resourceType"] = json!(rt);
            }
            match &self.meta {
                Meta::Security(c) => {
                    r["meta"] = json!({"security": c.iter().map(Coding::get).collect::<Vec<_>>()})
                }
                Meta::SecurityNotArray(c) => r["meta"] = json!({"security": c.get()}),
                Meta::NoSecurity => r["meta"] = json!({}),
                Meta::NotAnObject => r["meta"] = json!("meta"),
                Meta::Missing => {}
            }
            if let Some(c) = &self.contained {
                r["contained"] = json!([{"resourceType": "AuditEvent", "id": "c",
                    "meta": {"security": c.iter().map(Coding::get).collect::<Vec<_>>()}}]);
            }
            e["resource"] = r;
        }
        match &self.mode {
            Mode::Match => e["search"] = json!({"mode": "match"}),
            Mode::Include => e["search"] = json!({"mode": "include"}),
            Mode::Outcome => e["search"] = json!({"mode": "outcome"}),
            Mode::Missing => {}
            Mode::Raw(s) => e["search"] = json!({"mode": s}),
        }
        e
    }
}

#[derive(Arbitrary, Debug)]
enum Link {
    Url(String, Url),
    NoUrl(String),
    UrlNotString(i64),
    NotAnObject(String),
}

#[derive(Arbitrary, Debug)]
enum Links {
    Array(Vec<Link>),
    Object(Link),
    Missing,
}

impl Link {
    fn get(&self) -> Value {
        match self {
            Link::Url(rel, u) => json!({"relation": rel, "url": u.get()}),
            Link::NoUrl(rel) => json!({"relation": rel}),
            Link::UrlNotString(n) => json!({"relation": "next", "url": n}),
            Link::NotAnObject(s) => json!(s),
        }
    }
}

/// Entry text: generated, or built to probe the partial parse (duplicate keys, array forms).
#[derive(Arbitrary, Debug)]
enum EntryText {
    Gen(Entry),
    /// The members of two generated entries in one object: duplicate keys.
    DupEntry(Entry, Entry),
    /// One entry whose `resource` object holds the members of two generated resources.
    DupResource(Entry, Entry),
    /// The read fields in array form, as serde reads a struct from a sequence:
    /// `[fullUrl, [resourceType, [[[system, code]]]], [mode]]`.
    ArrayForm {
        full_url: bool,
        resource_type: u8,
        coding: Option<(Text, Text)>,
        mode: bool,
    },
    Raw(String),
}

fn merge_objects(a: &Value, b: &Value) -> String {
    let (a, b) = (a.to_string(), b.to_string());
    match (a.strip_suffix('}'), b.strip_prefix('{')) {
        (Some(a), Some(b)) if a.len() > 1 && b.len() > 1 => format!("{a},{b}"),
        _ => a + &b,
    }
}

impl EntryText {
    fn get(&self, i: usize) -> String {
        match self {
            EntryText::Gen(e) => e.get(i).to_string(),
            EntryText::DupEntry(a, b) => merge_objects(&a.get(i), &b.get(i)),
            EntryText::DupResource(a, b) => {
                let (ea, eb) = (a.get(i), b.get(i));
                let ra = ea.get("resource").cloned().unwrap_or(json!({}));
                let rb = eb.get("resource").cloned().unwrap_or(json!({}));
                let mut shell = ea.clone();
                shell["resource"] = json!("@RESOURCE@");
                shell
                    .to_string()
                    .replace("\"@RESOURCE@\"", &merge_objects(&ra, &rb))
            }
            EntryText::ArrayForm {
                full_url,
                resource_type,
                coding,
                mode,
            } => {
                let rt = ["AuditEvent", "OperationOutcome", "Patient"][*resource_type as usize % 3];
                let codings = match coding {
                    Some((s, c)) => json!([[[s.get(SYSTEMS), c.get(CODES)]]]),
                    None => json!([[]]),
                };
                let url = if *full_url {
                    json!("http://hapi:8080/fhir/AuditEvent/x")
                } else {
                    Value::Null
                };
                let mode = if *mode {
                    json!(["outcome"])
                } else {
                    Value::Null
                };
                json!([url, [rt, codings], mode]).to_string()
            }
            EntryText::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Searchset {
    who: u8,
    total: Option<u32>,
    entries: Option<Vec<EntryText>>,
    links: Links,
    /// Raw text spliced into the serialised bundle.
    splice: Option<(u16, String)>,
}

impl Searchset {
    fn get(&self) -> Vec<u8> {
        let mut b = json!({"resourceType": "Bundle", "type": "searchset"});
        if let Some(t) = self.total {
            b["total"] = json!(t);
        }
        if self.entries.is_some() {
            b["entry"] = json!("@ENTRIES@");
        }
        match &self.links {
            Links::Array(ls) => b["link"] = json!(ls.iter().map(Link::get).collect::<Vec<_>>()),
            Links::Object(l) => b["link"] = l.get(),
            Links::Missing => {}
        }
        let mut text = b.to_string();
        if let Some(es) = &self.entries {
            let entries: Vec<String> = es.iter().enumerate().map(|(i, e)| e.get(i)).collect();
            text = text.replace("\"@ENTRIES@\"", &format!("[{}]", entries.join(",")));
        }
        if let Some((pos, insert)) = &self.splice {
            eds_proxy_fuzz::splice(&mut text, u64::from(*pos), insert);
        }
        text.into_bytes()
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    for who in 0..f.principals.len() {
        check(data, &f, who);
    }
    let u = Unstructured::new(data);
    if let Ok(s) = Searchset::arbitrary_take_rest(u) {
        check(&s.get(), &f, s.who as usize % f.principals.len());
    }
});
