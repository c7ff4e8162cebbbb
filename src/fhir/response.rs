//! Response verification: nothing the FHIR server returns reaches the caller unless it carries
//! the caller's access label. Searchsets lose every entry that does not (fail closed: the
//! entry is dropped and counted); a read of a resource without it becomes 404. Links are
//! rewritten to the proxy's public base and paging handles are signed for the caller.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::Refusal;
use crate::fhir::labels::Constraint;
use crate::fhir::paging::{PageSigner, SIGNATURE_PARAM};
use crate::fhir::query::{decode_pairs, encode};
use crate::fhir::strict_json;

/// What a response is checked and rewritten against.
pub struct ResponseContext<'a> {
    pub constraint: &'a Constraint,
    /// The proxy's public base URL, without a trailing slash.
    pub public_base: &'a str,
    /// The FHIR server's base URL, without a trailing slash.
    pub upstream_base: &'a str,
    pub signer: &'a PageSigner,
    pub principal_key: &'a str,
}

#[derive(Debug)]
pub struct CheckedBundle {
    pub body: Vec<u8>,
    /// Entries removed because they did not carry the caller's label.
    pub dropped: usize,
}

const PAGE_PARAMS: &[&str] = &[
    "_getpages",
    "_getpagesoffset",
    "_count",
    "_bundletype",
    "_format",
    "_pretty",
];

fn parse_json(body: &[u8]) -> Result<Value, Refusal> {
    strict_json::parse(body).map_err(|_| {
        Refusal::BadGateway("the FHIR server answered with something that is not JSON".into())
    })
}

/// Check a searchset: drop entries the caller may not see, rewrite and sign links.
///
/// Only what the decision needs is parsed (each entry's `fullUrl`, `resource.resourceType`,
/// `resource.meta.security`, `search.mode`); everything else is carried through as the server
/// wrote it. Duplicate keys at the bundle level and in every field that is read are refused.
pub fn check_searchset(body: &[u8], ctx: &ResponseContext<'_>) -> Result<CheckedBundle, Refusal> {
    let not_json =
        || Refusal::BadGateway("the FHIR server answered with something that is not JSON".into());
    let malformed = || Refusal::BadGateway("malformed searchset".into());
    let text = std::str::from_utf8(body).map_err(|_| not_json())?;
    let members = strict_json::object_members(text).map_err(|_| not_json())?;
    let member = |name: &str| {
        members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.get())
    };
    let as_string = |raw: Option<&str>| raw.and_then(|r| serde_json::from_str::<String>(r).ok());
    if as_string(member("resourceType")).as_deref() != Some("Bundle")
        || as_string(member("type")).as_deref() != Some("searchset")
    {
        return Err(Refusal::BadGateway(
            "the FHIR server did not answer a search with a searchset".into(),
        ));
    }
    let mut dropped = 0;
    let mut entries_out: Vec<String> = Vec::new();
    if let Some(raw) = member("entry") {
        let entries: Vec<&RawValue> = serde_json::from_str(raw).map_err(|_| malformed())?;
        for entry in entries {
            let Obj(view): Obj<EntryView<'_>> =
                serde_json::from_str(entry.get()).map_err(|_| malformed())?;
            if !view.visible(ctx.constraint) {
                dropped += 1;
                continue;
            }
            let rebased = view
                .full_url
                .as_deref()
                .and_then(|u| rebase(u, ctx.public_base, ctx.upstream_base));
            // A fullUrl outside both bases would reveal an internal address: it is removed.
            let replacement = match (&view.full_url, rebased) {
                (None, _) => None,
                (Some(old), Some(url)) if *old == url => None,
                (Some(_), url) => Some(url),
            };
            match replacement {
                None => entries_out.push(entry.get().to_string()),
                Some(url) => entries_out.push(
                    replace_member(entry.get(), "fullUrl", url.as_deref())
                        .map_err(|_| malformed())?,
                ),
            }
        }
    }
    let links = match member("link") {
        Some(raw) => {
            let mut links: Vec<Value> = serde_json::from_str(raw).map_err(|_| malformed())?;
            links.retain_mut(|link| {
                let rewritten = link
                    .get("url")
                    .and_then(Value::as_str)
                    .and_then(|u| rewrite_link(u, ctx));
                match rewritten {
                    Some(u) => {
                        link["url"] = Value::String(u);
                        true
                    }
                    None => false,
                }
            });
            serde_json::to_string(&links).map_err(|_| malformed())?
        }
        None => "[]".to_string(),
    };
    let mut out = String::with_capacity(body.len());
    out.push('{');
    for (key, raw) in &members {
        let value = match key.as_str() {
            // The server's count included what the caller may not see.
            "total" if dropped > 0 => continue,
            "entry" => format!("[{}]", entries_out.join(",")),
            "link" => links.clone(),
            _ => raw.get().to_string(),
        };
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).map_err(|_| malformed())?);
        out.push(':');
        out.push_str(&value);
    }
    out.push('}');
    Ok(CheckedBundle {
        body: out.into_bytes(),
        dropped,
    })
}

/// Re-emit a JSON object with one member's value replaced by a string, or removed (`None`).
fn replace_member(object: &str, name: &str, value: Option<&str>) -> Result<String, String> {
    let members = strict_json::object_members(object)?;
    let mut parts = Vec::with_capacity(members.len());
    for (k, raw) in &members {
        let v = match (k == name, value) {
            (true, None) => continue,
            (true, Some(value)) => serde_json::to_string(value).map_err(|e| e.to_string())?,
            (false, _) => raw.get().to_string(),
        };
        parts.push(format!(
            "{}:{v}",
            serde_json::to_string(k).map_err(|e| e.to_string())?
        ));
    }
    Ok(format!("{{{}}}", parts.join(",")))
}

/// A view that only a JSON object may fill: serde's derived structs also accept an array,
/// field by field, which a client would never read as the same thing.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &'de RawValue = Deserialize::deserialize(d)?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(serde::de::Error::custom("expected a JSON object"));
        }
        serde_json::from_str(raw.get())
            .map(Obj)
            .map_err(serde::de::Error::custom)
    }
}

/// The parts of a searchset entry the check reads.
#[derive(Deserialize)]
struct EntryView<'a> {
    #[serde(default, rename = "fullUrl", borrow)]
    full_url: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    resource: Option<Obj<ResourceView<'a>>>,
    #[serde(default, borrow)]
    search: Option<Obj<SearchView<'a>>>,
}

#[derive(Deserialize)]
struct ResourceView<'a> {
    #[serde(default, rename = "resourceType", borrow)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    meta: Option<Obj<MetaView<'a>>>,
}

#[derive(Deserialize)]
struct MetaView<'a> {
    #[serde(default, borrow)]
    security: Option<Vec<Obj<CodingView<'a>>>>,
}

#[derive(Deserialize)]
struct CodingView<'a> {
    #[serde(default, borrow)]
    system: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SearchView<'a> {
    #[serde(default, borrow)]
    mode: Option<Cow<'a, str>>,
}

impl EntryView<'_> {
    /// AuditEvents with the caller's label, and the server's own search outcome messages.
    fn visible(&self, constraint: &Constraint) -> bool {
        let Some(Obj(resource)) = &self.resource else {
            return false;
        };
        match resource.resource_type.as_deref() {
            Some("AuditEvent") => {
                let codings = resource
                    .meta
                    .as_ref()
                    .and_then(|Obj(m)| m.security.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|Obj(c)| Some((c.system.as_deref()?, c.code.as_deref()?)));
                constraint.admits_codings(codings)
            }
            Some("OperationOutcome") => {
                self.search.as_ref().and_then(|Obj(s)| s.mode.as_deref()) == Some("outcome")
            }
            _ => false,
        }
    }
}

/// Outcome of checking a single resource (read, vread).
#[derive(Debug, PartialEq, Eq)]
pub enum ResourceCheck {
    Visible,
    /// Present but not the caller's: answer 404, never 403.
    Hidden,
}

pub fn check_resource(body: &[u8], constraint: &Constraint) -> Result<ResourceCheck, Refusal> {
    let resource = parse_json(body)?;
    if resource.get("resourceType").and_then(Value::as_str) != Some("AuditEvent") {
        return Ok(ResourceCheck::Hidden);
    }
    Ok(if constraint.admits(&resource) {
        ResourceCheck::Visible
    } else {
        ResourceCheck::Hidden
    })
}

/// Map a URL under the server's or the proxy's base onto the proxy's base. Anything else is
/// not ours to hand out.
pub fn rebase(url: &str, public_base: &str, upstream_base: &str) -> Option<String> {
    let rest = [public_base, upstream_base].iter().find_map(|base| {
        url.strip_prefix(base)
            .filter(|r| r.is_empty() || r.starts_with(['/', '?']))
    })?;
    Some(format!("{public_base}{rest}"))
}

/// Rewrite a Bundle link: paging links are rebuilt from their known parameters and signed;
/// other links lose the proxy's own constraint parameter.
pub fn rewrite_link(url: &str, ctx: &ResponseContext<'_>) -> Option<String> {
    let rebased = rebase(url, ctx.public_base, ctx.upstream_base)?;
    let (path, query) = match rebased.split_once('?') {
        Some((p, q)) => (p, q),
        None => return Some(rebased),
    };
    let pairs = decode_pairs(query);
    let page_id = pairs
        .iter()
        .find(|(n, _)| n == "_getpages")
        .map(|(_, v)| v.clone());
    let kept: Vec<String> = match &page_id {
        Some(_) => pairs
            .iter()
            .filter(|(n, _)| PAGE_PARAMS.contains(&n.as_str()))
            .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
            .collect(),
        None => pairs
            .iter()
            .filter(|(n, _)| !n.starts_with("_security") && n != SIGNATURE_PARAM)
            .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
            .collect(),
    };
    let mut out = format!("{path}?{}", kept.join("&"));
    if let Some(id) = page_id {
        out.push_str(&format!(
            "&{SIGNATURE_PARAM}={}",
            ctx.signer.sign(ctx.principal_key, &id)
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::{Principal, Station};
    use crate::auth::scope::Grants;
    use crate::cvr_directory::CvrDirectory;
    use crate::fhir::labels::LabelSystems;
    use serde_json::json;

    fn systems() -> LabelSystems {
        LabelSystems::default()
    }

    fn constraint() -> Constraint {
        let p = Principal::Station(Station {
            device_id: "dev-1".into(),
            org: None,
            grants: Grants::default(),
        });
        Constraint::for_principal(&p, &systems(), &CvrDirectory::default()).unwrap()
    }

    fn audit(id: &str, device: &str) -> Value {
        json!({"fullUrl": format!("http://hapi:8080/fhir/AuditEvent/{id}"),
               "resource": {"resourceType": "AuditEvent", "id": id,
                            "meta": {"security": [{"system": "urn:eds-proxy:label:device-id", "code": device}]}}})
    }

    fn with_ctx<T>(f: impl FnOnce(&ResponseContext<'_>) -> T) -> T {
        let c = constraint();
        let signer = PageSigner::new(vec![7; 32]);
        let ctx = ResponseContext {
            constraint: &c,
            public_base: "https://proxy:8443/fhir",
            upstream_base: "http://hapi:8080/fhir",
            signer: &signer,
            principal_key: "station\0dev-1",
        };
        f(&ctx)
    }

    #[test]
    fn foreign_entries_are_dropped_and_counted() {
        let bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": 3,
            "entry": [audit("a", "dev-1"), audit("b", "dev-2"),
                      {"resource": {"resourceType": "AuditEvent", "id": "c"}},
                      {"resource": {"resourceType": "Patient", "id": "p", "meta": {"security": [{"system": "urn:eds-proxy:label:device-id", "code": "dev-1"}]}}}]});
        let out =
            with_ctx(|ctx| check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx).unwrap());
        assert_eq!(out.dropped, 3);
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["entry"].as_array().unwrap().len(), 1);
        assert_eq!(v["entry"][0]["resource"]["id"], "a");
        assert_eq!(
            v["entry"][0]["fullUrl"],
            "https://proxy:8443/fhir/AuditEvent/a"
        );
        assert!(v.get("total").is_none());
    }

    #[test]
    fn paging_links_are_signed_and_constraint_stripped() {
        let bundle = json!({"resourceType": "Bundle", "type": "searchset",
        "link": [
            {"relation": "self", "url": "https://proxy:8443/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cdev-1&message-id=x"},
            {"relation": "next", "url": "https://proxy:8443/fhir?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset&_elements=x"},
            {"relation": "other", "url": "https://evil.example/fhir?_getpages=abc"}
        ]});
        let (out, sig) = with_ctx(|ctx| {
            (
                check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx).unwrap(),
                ctx.signer.sign(ctx.principal_key, "abc"),
            )
        });
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        let links = v["link"].as_array().unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(
            links[0]["url"],
            "https://proxy:8443/fhir/AuditEvent?message-id=x"
        );
        assert_eq!(
            links[1]["url"],
            format!("https://proxy:8443/fhir?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset&_eds_sig={sig}")
        );
    }

    #[test]
    fn non_searchset_or_non_json_fails_closed() {
        with_ctx(|ctx| {
            assert!(check_searchset(b"<Bundle/>", ctx).is_err());
            assert!(
                check_searchset(br#"{"resourceType":"Bundle","type":"batch-response"}"#, ctx)
                    .is_err()
            );
            assert!(check_searchset(
                br#"{"resourceType":"Bundle","type":"searchset","entry":{}}"#,
                ctx
            )
            .is_err());
        });
    }

    #[test]
    fn ambiguous_entries_fail_closed() {
        with_ctx(|ctx| {
            // Two `meta` keys: a client might read the other one.
            let dup_meta = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":{"security":[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]},"meta":{}}}]}"#;
            assert!(check_searchset(dup_meta, ctx).is_err());
            let dup_resource = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent"},"resource":{}}]}"#;
            assert!(check_searchset(dup_resource, ctx).is_err());
            let dup_entry =
                br#"{"resourceType":"Bundle","type":"searchset","entry":[],"entry":[]}"#;
            assert!(check_searchset(dup_entry, ctx).is_err());
            let security_object = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":{"security":{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}}}}]}"#;
            assert!(check_searchset(security_object, ctx).is_err());
        });
    }

    #[test]
    fn unknown_full_urls_are_removed() {
        let body = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"fullUrl":"http://internal:9999/fhir/AuditEvent/a","resource":{"resourceType":"AuditEvent","id":"a","meta":{"security":[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]}}}]}"#;
        let out = with_ctx(|ctx| check_searchset(body, ctx).unwrap());
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert!(v["entry"][0].get("fullUrl").is_none());
        assert_eq!(v["entry"][0]["resource"]["id"], "a");
    }

    #[test]
    fn arrays_never_stand_in_for_objects() {
        with_ctx(|ctx| {
            for body in [
                &br#"{"resourceType":"Bundle","type":"searchset","entry":[[null,["OperationOutcome"],["outcome"]]]}"#[..],
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":["OperationOutcome"],"search":{"mode":"outcome"}}]}"#,
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"OperationOutcome"},"search":["outcome"]}]}"#,
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":[[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]]}}]}"#,
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":{"security":[["urn:eds-proxy:label:device-id","dev-1"]]}}}]}"#,
            ] {
                assert!(check_searchset(body, ctx).is_err(), "{}", String::from_utf8_lossy(body));
            }
        });
    }

    #[test]
    fn untouched_members_pass_through_verbatim() {
        let body = br#"{"resourceType":"Bundle","id":"x","meta":{"lastUpdated":"2025-01-01T00:00:00Z"},"type":"searchset","total":1,"entry":[{"resource":{"resourceType":"AuditEvent","id":"a","meta":{"security":[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]}},"search":{"mode":"match"}}]}"#;
        let out = with_ctx(|ctx| check_searchset(body, ctx).unwrap());
        assert_eq!(out.dropped, 0);
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            String::from_utf8(body.to_vec()).unwrap()
        );
    }

    #[test]
    fn read_check() {
        let c = constraint();
        let mine = serde_json::to_vec(&audit("a", "dev-1")["resource"]).unwrap();
        let other = serde_json::to_vec(&audit("a", "dev-2")["resource"]).unwrap();
        assert_eq!(check_resource(&mine, &c).unwrap(), ResourceCheck::Visible);
        assert_eq!(check_resource(&other, &c).unwrap(), ResourceCheck::Hidden);
        assert_eq!(
            check_resource(br#"{"resourceType":"Patient"}"#, &c).unwrap(),
            ResourceCheck::Hidden
        );
        assert!(check_resource(b"nope", &c).is_err());
    }

    #[test]
    fn rebase_only_known_bases() {
        with_ctx(|ctx| {
            assert_eq!(
                rebase(
                    "http://hapi:8080/fhir/AuditEvent/1/_history/1",
                    ctx.public_base,
                    ctx.upstream_base
                )
                .unwrap(),
                "https://proxy:8443/fhir/AuditEvent/1/_history/1"
            );
            assert!(rebase(
                "http://hapi:8080/fhirX/AuditEvent/1",
                ctx.public_base,
                ctx.upstream_base
            )
            .is_none());
            assert!(rebase(
                "http://other/fhir/AuditEvent/1",
                ctx.public_base,
                ctx.upstream_base
            )
            .is_none());
        });
    }
}
