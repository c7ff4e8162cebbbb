//! Search rewrite: whatever a client sends, the query the FHIR server receives starts with the
//! proxy's `_security` constraint, carries no second `_security`, no `_include`/`_revinclude`/
//! `_has`/`_filter`/`_getpages`/`_contained`/chains, and `_count` ≤ the limit.
//!
//! Each input is used twice:
//! 1. as a raw query string (lossy UTF-8) → `decode_pairs` → `parse_search`;
//! 2. as structured bytes (`arbitrary`) → a whole request → `classify`, which must never
//!    panic, must allow only the forms of DESIGN §1.4, and whose `Search` results obey (1).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use eds_proxy::auth::principal::Principal;
use eds_proxy::fhir::interaction::{classify, media_type, Interaction, RequestParts};
use eds_proxy::fhir::plan::{plan, Plan, Policy};
use eds_proxy::fhir::query::{decode_pairs, parse_search};
use eds_proxy::fhir::paging::PageTarget;
use eds_proxy_fuzz::{
    assert_search_is_constrained, constraint_for, directory, principals, signer, systems, MAX_COUNT,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    LowerGet,
    Other(String),
}

impl Method {
    fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::LowerGet => "get",
            Method::Other(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum PathChoice {
    Root,
    RootSlash,
    Metadata,
    AuditEvent,
    AuditEventSlash,
    Search,
    Read(String),
    VRead(String, String),
    /// `<base>/` + anything.
    Under(String),
    /// Anything at all.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum ContentType {
    None,
    Form,
    FormCharset,
    FhirJson,
    Json,
    Xml,
    Other(String),
}

impl ContentType {
    fn as_opt(&self) -> Option<&str> {
        match self {
            ContentType::None => None,
            ContentType::Form => Some("application/x-www-form-urlencoded"),
            ContentType::FormCharset => Some("application/x-www-form-urlencoded; charset=UTF-8"),
            ContentType::FhirJson => Some("application/fhir+json"),
            ContentType::Json => Some("application/json"),
            ContentType::Xml => Some("application/fhir+xml"),
            ContentType::Other(s) => Some(s),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    method: Method,
    path: PathChoice,
    root_base: bool,
    content_type: ContentType,
    conditional: bool,
    validators: bool,
    has_query: bool,
    body: Vec<u8>,
    /// Last: takes the rest of the input, so query seeds stay meaningful.
    query: String,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn only_format_params(query: Option<&str>) -> bool {
    decode_pairs(query.unwrap_or_default())
        .iter()
        .all(|(n, _)| n == "_format" || n == "_pretty")
}

/// The access plan of an accepted interaction, for each kind of principal: a search goes out
/// with exactly the caller's constraint first, a read to exactly `AuditEvent/{id}`, nobody
/// but a station creates (the fixture stations have no create grant, so nobody does), and an
/// audit record is due for supporters only.
fn check_plan(interaction: &Interaction, body: &[u8]) {
    let labels = systems();
    let dir = directory();
    let pages = signer();
    let policy = Policy {
        labels: &labels,
        directory: &dir,
        signer: &pages,
        drop_totals: false,
    };
    for p in principals() {
        let Ok(plan) = plan(interaction.clone(), &p, body, &policy) else {
            continue;
        };
        let Plan::Forward {
            upstream, audit, ..
        } = plan
        else {
            assert!(matches!(interaction, Interaction::Capabilities));
            continue;
        };
        assert_eq!(audit.is_some(), matches!(p, Principal::Supporter { .. }));
        assert_eq!(
            upstream.method, "GET",
            "{interaction:?} planned a {}",
            upstream.method
        );
        match interaction {
            Interaction::Search(_) => {
                let first = upstream
                    .target
                    .strip_prefix("AuditEvent?")
                    .and_then(|q| decode_pairs(q).into_iter().next())
                    .unwrap_or_else(|| panic!("search target {}", upstream.target));
                assert_eq!(
                    first,
                    ("_security".to_string(), constraint_for(&p).search_value()),
                    "search target {}",
                    upstream.target
                );
            }
            Interaction::Read { id, version: None } => {
                assert_eq!(upstream.target, format!("AuditEvent/{id}"))
            }
            Interaction::Read {
                id,
                version: Some(v),
            } => {
                assert_eq!(upstream.target, format!("AuditEvent/{id}/_history/{v}"))
            }
            Interaction::Page(_) => {
                // A signed paging link: a stored-search handle, or a search on AuditEvent
                // whose first parameter is exactly the caller's constraint.
                let search_first = upstream
                    .target
                    .strip_prefix("AuditEvent?")
                    .and_then(|q| decode_pairs(q).into_iter().next());
                assert!(
                    upstream.target.starts_with("?_getpages=")
                        || search_first
                            == Some((
                                "_security".to_string(),
                                constraint_for(&p).search_value()
                            )),
                    "page target {}",
                    upstream.target
                )
            }
            Interaction::Create | Interaction::Capabilities => {
                panic!("{interaction:?} planned a forward for {p:?}")
            }
        }
    }
}

fn check_classify(r: &Request) {
    let base = if r.root_base { "" } else { "/fhir" };
    let path = match &r.path {
        PathChoice::Root => base.to_string(),
        PathChoice::RootSlash => format!("{base}/"),
        PathChoice::Metadata => format!("{base}/metadata"),
        PathChoice::AuditEvent => format!("{base}/AuditEvent"),
        PathChoice::AuditEventSlash => format!("{base}/AuditEvent/"),
        PathChoice::Search => format!("{base}/AuditEvent/_search"),
        PathChoice::Read(id) => format!("{base}/AuditEvent/{id}"),
        PathChoice::VRead(id, v) => format!("{base}/AuditEvent/{id}/_history/{v}"),
        PathChoice::Under(s) => format!("{base}/{s}"),
        PathChoice::Raw(s) => s.clone(),
    };
    let query = r.has_query.then_some(r.query.as_str());
    let parts = RequestParts {
        method: r.method.as_str(),
        path: &path,
        query,
        content_type: r.content_type.as_opt(),
        conditional: r.conditional,
        validators: r.validators,
        body: &r.body,
    };
    let Ok(interaction) = classify(&parts, base, MAX_COUNT) else {
        return;
    };
    check_plan(&interaction, &r.body);
    let method = parts.method;
    // The path relative to the base, as the proxy must have understood it.
    let relative = path
        .strip_prefix(base)
        .unwrap_or_else(|| panic!("accepted a path outside the base: {path:?}"));
    let relative = relative.strip_prefix('/').unwrap_or(relative);
    let relative = relative.strip_suffix('/').unwrap_or(relative);
    assert!(
        !relative.contains("//")
            && !relative.contains(['%', '\\', ';', '?', '#'])
            && !relative
                .chars()
                .any(|c| c.is_control() || c.is_whitespace()),
        "accepted an ambiguous path {path:?} as {interaction:?}"
    );
    let segments: Vec<&str> = if relative.is_empty() {
        Vec::new()
    } else {
        relative.split('/').collect()
    };
    assert!(
        segments.iter().all(|s| *s != "." && *s != ".."),
        "accepted a dot segment in {path:?}"
    );
    assert!(
        method == "GET" || method == "HEAD" || method == "POST",
        "accepted method {method:?} for {path:?} as {interaction:?}"
    );
    match &interaction {
        Interaction::Capabilities => {
            assert!(
                matches!(method, "GET" | "HEAD") && segments == ["metadata"],
                "capabilities from {r:?}"
            );
            assert!(
                decode_pairs(query.unwrap_or_default())
                    .iter()
                    .all(|(n, _)| ["_format", "_pretty", "_summary", "mode"].contains(&n.as_str())),
                "capabilities with parameters from {r:?}"
            );
        }
        Interaction::Search(q) => {
            assert!(
                !r.conditional && !r.validators,
                "conditional search accepted: {r:?}"
            );
            match (method, segments.as_slice()) {
                ("GET" | "HEAD", ["AuditEvent"] | ["AuditEvent", "_search"]) => {}
                ("POST", ["AuditEvent", "_search"]) => {
                    assert!(
                        r.body.is_empty()
                            || parts.content_type.is_some_and(|ct| media_type(ct)
                                .eq_ignore_ascii_case("application/x-www-form-urlencoded")),
                        "POST _search without a form body: {r:?}"
                    );
                }
                _ => panic!("search from an unexpected form: {method} {path:?}"),
            }
            assert_search_is_constrained(q, MAX_COUNT, r);
        }
        Interaction::Read { id, version } => {
            // Validators are answered by the proxy after the label check.
            assert!(
                matches!(method, "GET" | "HEAD") && !r.conditional,
                "read from {r:?}"
            );
            assert!(valid_id(id), "read of malformed id {id:?}");
            match (version, segments.as_slice()) {
                (None, ["AuditEvent", i]) => assert_eq!(i, id),
                (Some(v), ["AuditEvent", i, "_history", w]) => {
                    assert!(valid_id(v), "vread of malformed version {v:?}");
                    assert_eq!((*i, *w), (id.as_str(), v.as_str()));
                }
                _ => panic!("read from an unexpected path {path:?}: {interaction:?}"),
            }
            assert!(only_format_params(query), "read with parameters from {r:?}");
        }
        Interaction::Create => {
            assert!(
                method == "POST" && !r.conditional && !r.validators,
                "create from {r:?}"
            );
            assert_eq!(segments, ["AuditEvent"], "create at {path:?}");
            let ct = parts
                .content_type
                .map(media_type)
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                ct == "application/fhir+json"
                    || ct == "application/json"
                    || ct == "application/json+fhir",
                "create with content type {:?}",
                parts.content_type
            );
            assert!(
                only_format_params(query),
                "create with parameters from {r:?}"
            );
        }
        Interaction::Page(p) => {
            assert!(
                matches!(method, "GET" | "HEAD") && !r.conditional && !r.validators,
                "page from {r:?}"
            );
            assert!(segments.is_empty(), "page at {path:?}");
            let pairs = decode_pairs(query.unwrap_or_default());
            match &p.target {
                PageTarget::Handle { id, count, .. } => {
                    assert!(
                        !id.is_empty()
                            && id.len() <= 64
                            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                        "malformed page id {id:?}"
                    );
                    assert_eq!(
                        pairs.iter().filter(|(n, _)| n == "_getpages").count(),
                        1,
                        "page request with several _getpages: {query:?}"
                    );
                    assert!(
                        count.is_none_or(|c| c <= MAX_COUNT),
                        "page _count over the limit"
                    );
                }
                PageTarget::Search { params } => {
                    assert!(
                        params.iter().all(|(n, _)| !n.starts_with("_security")
                            && !n.starts_with("_include")
                            && !n.starts_with("_revinclude")
                            && !n.starts_with("_has")),
                        "page target widens the search: {params:?}"
                    );
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. The bytes as a query string.
    let raw = String::from_utf8_lossy(data);
    let pairs = decode_pairs(&raw);
    if let Ok(q) = parse_search(&pairs, MAX_COUNT) {
        assert_search_is_constrained(&q, MAX_COUNT, &raw);
    }
    // 2. The bytes as a whole request.
    let u = Unstructured::new(data);
    if let Ok(r) = Request::arbitrary_take_rest(u) {
        check_classify(&r);
    }
});
