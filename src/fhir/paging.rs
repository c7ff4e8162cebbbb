//! Caller-bound paging links for any FHIR server (issue 13 item 1).
//!
//! A FHIR server's paging links come in many forms: HAPI's `_getpages` handle (a bearer id
//! for a search it keeps, with the constraint inside), stateless offsets
//! (`AuditEvent?…&_security=…&_page=2`, `_offset`, `_getpagesoffset`) and opaque cursors
//! (`AuditEvent?…&_security=…&_cursor=…`). The proxy never passes one on as the server wrote
//! it. It works out the *exact upstream target* it will request when the link is followed
//! ([`PageTarget`], relative to the FHIR base), signs it for the caller, and on replay
//! forwards exactly that target:
//!
//! - a `_getpages` handle: `?_getpages=…[&_getpagesoffset=…][&_count=…]&_bundletype=searchset`
//!   (the server keeps the constraint with the stored search);
//! - a search on `AuditEvent` carrying exactly the caller's constraint as its one `_security`
//!   parameter: `AuditEvent?_security=<constraint>&<the link's other parameters>`.
//!
//! A link in any other form (another host or base, not a search on AuditEvent, no or another
//! constraint, a parameter a constrained search never carries) is dropped: a client that
//! cannot page on is better than one handed a link the proxy cannot vouch for.
//!
//! The signed link (the format clients see):
//!
//! - handle: `[base]?_getpages=ID[&_getpagesoffset=N][&_count=N]&_bundletype=searchset&_eds_sig=MAC`
//! - search: `[base]?_eds_page=B64&_eds_sig=MAC`, where `B64` is base64url (no padding) of the
//!   target's query *without* the `_security` parameter: the caller's labels (a CPR, a device
//!   id) never appear in a URL the client holds, logs or bookmarks; the proxy puts the
//!   caller's constraint back on replay. (Base64 conceals nothing: the search's own
//!   parameters, e.g. a supporter's `cpr=`, are readable in it, as in the caller's request.)
//!
//! `MAC` is base64url (no padding) HMAC-SHA-256 over a version tag, the principal's
//! `binding_key`, its constraint and the exact upstream target. A link therefore works for
//! the principal it was issued to and no one else, on any replica sharing
//! `paging.secret_file`, with no shared state; changing any byte of it (offset, count, cursor)
//! is refused, and any link (a `_getpages` handle too, whose target does not show the
//! constraint) stops working when the caller's constraint changes: a SOR code removed from a
//! supporter's CVR, label systems changed by a reload.
//!
//! Size: a link is issued only if it and its upstream target both fit in
//! `limits.max_uri_bytes`, the limit every request to the proxy is held to (RFC 9110 §4.1
//! recommends at least 8000 octets); a longer one is dropped like any other link the proxy
//! cannot hand out.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Forbidden, Invalid, Refusal};
use crate::fhir::labels::Constraint;
use crate::fhir::query;

/// Query parameter carrying a paging link's signature.
pub const SIGNATURE_PARAM: &str = "_eds_sig";

/// Query parameter carrying a search-style paging target (base64url, no padding).
pub const TARGET_PARAM: &str = "_eds_page";

/// The HMAC's version tag: v3 signs the caller's constraint and the exact upstream target (v2
/// signed the target only, so a handle link outlived a change of the caller's constraint; v1
/// signed the handle only).
const MAC_TAG: &[u8] = b"eds-proxy page v3\0";

/// A secret of at least 32 bytes (checked by the configuration).
#[derive(Clone)]
pub struct PageSigner {
    secret: Vec<u8>,
}

/// Where a paging link leads on the FHIR server, before the caller's constraint is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageTarget {
    /// A HAPI-style stored search: `?_getpages=…`.
    Handle {
        /// The server's `_getpages` id (ASCII letters, digits and `-`, at most 64).
        id: String,
        /// `_getpagesoffset`: index of the page's first entry.
        offset: Option<u32>,
        /// `_count`: entries per page, lowered to `limits.max_count`.
        count: Option<u32>,
    },
    /// A search on AuditEvent (offset or cursor paging): the link's parameters other than
    /// `_security`, decoded, in the server's order.
    Search {
        /// Name/value pairs (names may carry a modifier).
        params: Vec<(String, String)>,
    },
}

/// A paging request after parsing; its signature is checked by the access plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Where it leads.
    pub target: PageTarget,
    /// The `_eds_sig` value: base64url (no padding) HMAC-SHA-256.
    pub signature: String,
}

impl PageSigner {
    /// A signer with this HMAC-SHA-256 key (`paging.secret_file`).
    pub fn new(secret: Vec<u8>) -> Self {
        PageSigner { secret }
    }

    fn mac(
        &self,
        principal_key: &str,
        constraint: &Constraint,
        upstream_target: &str,
    ) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(MAC_TAG);
        mac.update(principal_key.as_bytes());
        mac.update(b"\0");
        // Label systems and codes are plain tokens without control characters: no `\0`.
        mac.update(constraint.search_value().as_bytes());
        mac.update(b"\0");
        mac.update(upstream_target.as_bytes());
        Some(mac)
    }

    /// The signature of `upstream_target` (relative to the FHIR base) for the principal with
    /// `principal_key` (`Principal::binding_key`) under `constraint` (its constraint when the
    /// link is issued): base64url (no padding) HMAC-SHA-256 over a version tag, the key, the
    /// constraint and the target. The constraint is signed for both link forms: a
    /// `_getpages` handle's target does not show it (the server keeps it with the stored
    /// search), and a link must stop working when the caller's constraint changes (a SOR code
    /// removed from its CVR, label systems changed by a reload).
    pub fn sign(
        &self,
        principal_key: &str,
        constraint: &Constraint,
        upstream_target: &str,
    ) -> String {
        self.mac(principal_key, constraint, upstream_target)
            .map(|m| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
            })
            .unwrap_or_default()
    }

    /// Constant-time check of a link's signature over `upstream_target` for this principal
    /// with its current `constraint`.
    ///
    /// Errors: 403 `page_not_issued` for a signature that is not this principal's for exactly
    /// this constraint and target.
    pub fn verify(
        &self,
        principal_key: &str,
        constraint: &Constraint,
        upstream_target: &str,
        signature: &str,
    ) -> Result<(), Refusal> {
        let refused = || Refusal::Forbidden(Forbidden::PageNotIssued);
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| refused())?;
        let mac = self
            .mac(principal_key, constraint, upstream_target)
            .ok_or_else(refused)?;
        mac.verify_slice(&sig).map_err(|_| refused())
    }
}

impl PageTarget {
    /// The exact request target sent to the FHIR server (relative to its base):
    /// `?_getpages=…` for a handle, `AuditEvent?_security=<constraint>&…` for a search.
    pub fn upstream_target(&self, constraint: &Constraint) -> String {
        match self {
            PageTarget::Handle { .. } => format!("?{}", self.handle_query()),
            PageTarget::Search { params } => {
                let mut t = format!(
                    "AuditEvent?_security={}",
                    query::encode(&constraint.search_value())
                );
                for (n, v) in params {
                    t.push_str(&format!("&{}={}", query::encode(n), query::encode(v)));
                }
                t
            }
        }
    }

    /// The query of the link handed to the client, without the signature.
    fn link_query(&self) -> String {
        match self {
            PageTarget::Handle { .. } => self.handle_query(),
            PageTarget::Search { params } => {
                let rest = params
                    .iter()
                    .map(|(n, v)| format!("{}={}", query::encode(n), query::encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                format!(
                    "{TARGET_PARAM}={}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest)
                )
            }
        }
    }

    fn handle_query(&self) -> String {
        let PageTarget::Handle { id, offset, count } = self else {
            return String::new();
        };
        let mut q = format!("_getpages={}", query::encode(id));
        if let Some(o) = offset {
            q.push_str(&format!("&_getpagesoffset={o}"));
        }
        if let Some(c) = count {
            q.push_str(&format!("&_count={c}"));
        }
        q.push_str("&_bundletype=searchset");
        q
    }
}

/// The paging link to hand out for `target`: `public_base` (no trailing slash) + the link
/// query + `&_eds_sig=…`, signed for `principal_key` over the exact upstream target.
/// `None` when the link, or the request target sent upstream on replay (`upstream_base_path`,
/// the FHIR server's base path without a trailing slash, then the target, as
/// `gateway::upstream` joins them), is longer than `max_bytes` (the proxy's
/// `limits.max_uri_bytes`, which both are held to): the client could not send it back, or the
/// proxy would refuse to forward it (414).
pub fn signed_link(
    public_base: &str,
    target: &PageTarget,
    constraint: &Constraint,
    signer: &PageSigner,
    principal_key: &str,
    upstream_base_path: &str,
    max_bytes: usize,
) -> Option<String> {
    let upstream = target.upstream_target(constraint);
    let prefix = match (upstream.starts_with('?'), upstream_base_path.is_empty()) {
        // `/?_getpages=…` at the server's root, `/fhir?_getpages=…` under a path.
        (true, true) => 1,
        (true, false) => upstream_base_path.len(),
        (false, _) => upstream_base_path.len() + 1,
    };
    if prefix + upstream.len() > max_bytes {
        return None;
    }
    let link = format!(
        "{public_base}?{}&{SIGNATURE_PARAM}={}",
        target.link_query(),
        signer.sign(principal_key, constraint, &upstream)
    );
    (link.len() <= max_bytes).then_some(link)
}

/// What a FHIR server's paging link leads to, if the proxy can vouch for it. `relative` is
/// the link with the FHIR server's (or the proxy's) base removed: `?…`, `/?…` or
/// `/AuditEvent?…`. `None` (drop the link) for anything else, for a search that does not
/// carry exactly `constraint` as its one `_security` parameter, and for one carrying a
/// parameter a constrained search never has (see [`check_search_params`]).
pub fn target_of_link(
    relative: &str,
    constraint: &Constraint,
    max_count: u32,
) -> Option<PageTarget> {
    let (path, query) = relative.split_once('?')?;
    let pairs = query::decode_pairs(query);
    match path {
        "" | "/" => {
            // A server's own extras on a handle link (HAPI adds `_elements`, `_summary`) are
            // left out, as before: the stored search keeps the constraint either way.
            let known: Vec<(String, String)> = pairs
                .into_iter()
                .filter(|(n, _)| HANDLE_PARAMS.contains(&n.as_str()))
                .collect();
            parse_handle(&known, max_count).ok()
        }
        "/AuditEvent" => {
            let mut security = pairs.iter().filter(|(n, _)| n == "_security");
            let (_, value) = security.next()?;
            if security.next().is_some() || !same_labels(value, &constraint.search_value()) {
                return None;
            }
            let rest: Vec<(String, String)> = pairs
                .into_iter()
                .filter(|(n, _)| n != "_security")
                .collect();
            check_search_params(rest, max_count).ok()
        }
        _ => None,
    }
}

/// The same OR list of labels, in any order. Label codes are plain tokens (no `,`, `|`, `\`,
/// `$`: `labels::check_plain_token`), so splitting on `,` is exact.
fn same_labels(a: &str, b: &str) -> bool {
    fn set(s: &str) -> Vec<&str> {
        let mut v: Vec<&str> = s.split(',').collect();
        v.sort_unstable();
        v
    }
    set(a) == set(b)
}

/// The parameters of a search-style paging target other than the constraint: no `_security`
/// (only the proxy sets it), nothing in the search allowlist's refused list (`_include`,
/// `_has`, `_getpages`, …), no proxy parameter (`_eds…`), no chain; `_count` at most
/// `max_count`. Everything else (the original search's parameters, and the server's own
/// `_page`, `_offset`, cursors) is the server's business, and its answer is checked anyway.
///
/// Errors: 400 `page_target`.
pub fn check_search_params(
    params: Vec<(String, String)>,
    max_count: u32,
) -> Result<PageTarget, Refusal> {
    let bad = || Refusal::Invalid(Invalid::PageTarget);
    let mut out = Vec::with_capacity(params.len());
    if params.len() >= query::MAX_FORWARDED_PARAMS {
        return Err(bad());
    }
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or_default();
        let well_formed = !base.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'));
        if !well_formed
            || base.starts_with("_security")
            || base.starts_with("_eds")
            || base.starts_with("_has")
            || query::is_refused_parameter(base)
        {
            return Err(bad());
        }
        let value = if base == "_count" {
            let n = value.parse::<u32>().map_err(|_| bad())?;
            n.min(max_count).to_string()
        } else {
            value
        };
        out.push((name, value));
    }
    Ok(PageTarget::Search { params: out })
}

/// The parameters of a HAPI-style handle link.
const HANDLE_PARAMS: &[&str] = &[
    "_getpages",
    "_getpagesoffset",
    "_count",
    "_bundletype",
    "_format",
    "_pretty",
];

/// The HAPI-style handle of `pairs` (a server's link or a client's request, without the
/// signature): only the parameters HAPI's own links use.
fn parse_handle(pairs: &[(String, String)], max_count: u32) -> Result<PageTarget, Refusal> {
    let mut id = None;
    let mut offset = None;
    let mut count = None;
    for (name, value) in pairs {
        let slot_taken = || Refusal::Invalid(Invalid::RepeatedParameter { name: name.clone() });
        match name.as_str() {
            "_getpages" => {
                if id.replace(value.clone()).is_some() {
                    return Err(slot_taken());
                }
            }
            "_getpagesoffset" => {
                let v = value
                    .parse::<u32>()
                    .map_err(|_| Refusal::Invalid(Invalid::PageOffset))?;
                if offset.replace(v).is_some() {
                    return Err(slot_taken());
                }
            }
            "_count" => {
                if count
                    .replace(query::parse_count(value, max_count)?)
                    .is_some()
                {
                    return Err(slot_taken());
                }
            }
            "_bundletype" if value == "searchset" => {}
            "_format" => query::check_format(value)?,
            "_pretty" => query::check_bool(name, value)?,
            _ => {
                return Err(Refusal::Invalid(Invalid::PageParameter {
                    name: name.clone(),
                }))
            }
        }
    }
    let id = id.ok_or(Refusal::Invalid(Invalid::PageHandleMissing))?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(Refusal::Invalid(Invalid::PageHandleMalformed));
    }
    Ok(PageTarget::Handle { id, offset, count })
}

/// Parse the query of a paging request (`GET [base]?…`): a signed handle link or a signed
/// `_eds_page` link, exactly as the proxy issued them; either may also carry a JSON `_format`
/// and a boolean `_pretty` (output shape, checked and never forwarded).
///
/// Errors: 400 for a repeated or foreign parameter or a malformed handle or target; 403
/// `page_unsigned` without a signature. The signature itself is checked by the access plan.
pub fn parse_page_request(
    pairs: &[(String, String)],
    max_count: u32,
) -> Result<PageRequest, Refusal> {
    let mut signature = None;
    let mut encoded = None;
    let mut rest = Vec::new();
    for (name, value) in pairs {
        let slot = match name.as_str() {
            SIGNATURE_PARAM => &mut signature,
            TARGET_PARAM => &mut encoded,
            _ => {
                rest.push((name.clone(), value.clone()));
                continue;
            }
        };
        if slot.replace(value.clone()).is_some() {
            return Err(Refusal::Invalid(Invalid::RepeatedParameter {
                name: name.clone(),
            }));
        }
    }
    let target = match encoded {
        Some(b64) => {
            // Beside the target, only what a handle link takes too: output shape, checked and
            // never forwarded (clients add `_format`/`_pretty` to every request).
            for (name, value) in &rest {
                match name.as_str() {
                    "_format" => query::check_format(value)?,
                    "_pretty" => query::check_bool(name, value)?,
                    _ => {
                        return Err(Refusal::Invalid(Invalid::PageParameter {
                            name: name.clone(),
                        }))
                    }
                }
            }
            let bad = || Refusal::Invalid(Invalid::PageTarget);
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|_| bad())?;
            let raw = String::from_utf8(raw).map_err(|_| bad())?;
            check_search_params(query::decode_pairs(&raw), max_count)?
        }
        None => parse_handle(&rest, max_count)?,
    };
    let signature = signature.ok_or(Refusal::Forbidden(Forbidden::PageUnsigned))?;
    Ok(PageRequest { target, signature })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::{Principal, Station};
    use crate::auth::scope::Grants;
    use crate::cvr_directory::CvrDirectory;
    use crate::fhir::labels::LabelSystems;
    use crate::fhir::query::decode_pairs;

    fn signer() -> PageSigner {
        PageSigner::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    fn constraint(device: &str) -> Constraint {
        let p = Principal::Station(Station {
            device_id: device.into(),
            org: None,
            grants: Grants::default(),
        });
        Constraint::for_principal(&p, &LabelSystems::default(), &CvrDirectory::default()).unwrap()
    }

    const DEV1: &str = "urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cdev-1";

    fn request(query: &str) -> Result<PageRequest, &'static str> {
        parse_page_request(&decode_pairs(query), 100).map_err(|e| e.reason())
    }

    /// Each paging style of a server's link: the target the proxy will request, or dropped.
    #[test]
    fn links_of_every_paging_style() {
        let c = constraint("dev-1");
        let t = |rel: &str| target_of_link(rel, &c, 50).map(|t| t.upstream_target(&c));
        let want = |q: &str| Some(format!("AuditEvent?_security={DEV1}{q}"));
        // HAPI handle.
        assert_eq!(
            t("?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset"),
            Some("?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset".into())
        );
        assert_eq!(
            t("/?_getpages=abc&_count=500"),
            Some("?_getpages=abc&_count=50&_bundletype=searchset".into())
        );
        // Offsets, in any position, percent-encoded or not.
        assert_eq!(
            t(&format!(
                "/AuditEvent?message-id=m&_security={DEV1}&_page=2"
            )),
            want("&message-id=m&_page=2")
        );
        assert_eq!(
            t("/AuditEvent?_security=urn:eds-proxy:label:device-id|dev-1&_offset=20&_count=10"),
            want("&_offset=20&_count=10")
        );
        assert_eq!(
            t(&format!(
                "/AuditEvent?_security={DEV1}&_getpagesoffset=5&_count=999"
            )),
            want("&_getpagesoffset=5&_count=50")
        );
        // An opaque cursor is carried byte for byte (re-encoded).
        assert_eq!(
            t(&format!(
                "/AuditEvent?_security={DEV1}&_cursor=eyJ%2Bk%22%3A1%7D"
            )),
            want("&_cursor=eyJ%2Bk%22%3A1%7D")
        );
        // Dropped: no constraint, another constraint, a second one, a widened OR list.
        for rel in [
            "/AuditEvent?_page=2",
            "/AuditEvent",
            "/AuditEvent?_security=urn:eds-proxy:label:device-id|dev-2&_page=2",
            &format!("/AuditEvent?_security={DEV1}&_security={DEV1}&_page=2"),
            &format!("/AuditEvent?_security={DEV1}%2Curn:eds-proxy:label:device-id|dev-2"),
            &format!("/AuditEvent?_security:not=x&_security={DEV1}"),
            // Not a search on AuditEvent, or something a constrained search never carries.
            &format!("/Patient?_security={DEV1}"),
            &format!("/AuditEvent/_search?_security={DEV1}"),
            &format!("/AuditEvent/1?_security={DEV1}"),
            &format!("/AuditEvent?_security={DEV1}&_include=*"),
            &format!("/AuditEvent?_security={DEV1}&_has:Device:x=y"),
            &format!("/AuditEvent?_security={DEV1}&_getpages=x"),
            &format!("/AuditEvent?_security={DEV1}&_eds_sig=x"),
            &format!("/AuditEvent?_security={DEV1}&agent.name=x"),
            &format!("/AuditEvent?_security={DEV1}&_count=many"),
            // A base-level link that is not a handle.
            "?_page=2",
            "?_getpages=../x",
            "?_getpages=a&_bundletype=batch",
            "",
        ] {
            assert_eq!(t(rel), None, "{rel}");
        }
    }

    #[test]
    fn a_signed_link_round_trips_for_its_principal_only() {
        let c = constraint("dev-1");
        let s = signer();
        let key = "station\0dev-1";
        for rel in [
            format!("/AuditEvent?_security={DEV1}&message-id=m&_page=2"),
            "?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset".to_string(),
        ] {
            let target = target_of_link(&rel, &c, 50).unwrap();
            let link = signed_link("https://p/fhir", &target, &c, &s, key, "/fhir", 8192).unwrap();
            assert!(!link.contains("dev-1"), "{link}");
            let query = link.strip_prefix("https://p/fhir?").unwrap();
            let page = request(query).unwrap();
            assert_eq!(page.target, target);
            let upstream = page.target.upstream_target(&c);
            assert!(s.verify(key, &c, &upstream, &page.signature).is_ok());
            // Another principal, another constraint, another secret.
            assert_eq!(
                s.verify("station\0dev-2", &c, &upstream, &page.signature)
                    .map_err(|e| e.reason()),
                Err("page_not_issued")
            );
            if let PageTarget::Search { .. } = page.target {
                // The constraint is part of what is signed.
                let dev2 = constraint("dev-2");
                let other = page.target.upstream_target(&dev2);
                assert_eq!(
                    s.verify(key, &dev2, &other, &page.signature)
                        .map_err(|e| e.reason()),
                    Err("page_not_issued")
                );
            }
            assert_eq!(
                PageSigner::new(vec![1; 32])
                    .verify(key, &c, &upstream, &page.signature)
                    .map_err(|e| e.reason()),
                Err("page_not_issued")
            );
        }
    }

    #[test]
    fn tampering_with_any_part_is_refused() {
        let c = constraint("dev-1");
        let s = signer();
        let key = "station\0dev-1";
        let target = PageTarget::Search {
            params: vec![("_page".into(), "2".into())],
        };
        let sig = s.sign(key, &c, &target.upstream_target(&c));
        for (tampered, why) in [
            (
                PageTarget::Search {
                    params: vec![("_page".into(), "3".into())],
                },
                "page_not_issued",
            ),
            (PageTarget::Search { params: vec![] }, "page_not_issued"),
        ] {
            assert_eq!(
                s.verify(key, &c, &tampered.upstream_target(&c), &sig)
                    .map_err(|e| e.reason()),
                Err(why)
            );
        }
        for bad in ["AAAA", "!!", ""] {
            assert_eq!(
                s.verify(key, &c, &target.upstream_target(&c), bad)
                    .map_err(|e| e.reason()),
                Err("page_not_issued")
            );
        }
    }

    #[test]
    fn links_longer_than_the_uri_limit_are_not_issued() {
        let c = constraint("dev-1");
        let target = PageTarget::Search {
            params: vec![("_cursor".into(), "x".repeat(300))],
        };
        assert!(signed_link("https://p/fhir", &target, &c, &signer(), "k", "/fhir", 600).is_some());
        assert_eq!(
            signed_link("https://p/fhir", &target, &c, &signer(), "k", "/fhir", 400),
            None
        );
        let long_constraint = constraint(&"d".repeat(500));
        assert_eq!(
            signed_link(
                "https://p",
                &target,
                &long_constraint,
                &signer(),
                "k",
                "/fhir",
                700
            ),
            None
        );
        // What is held to the limit is what the proxy sends: the FHIR server's base path, `/`
        // and the target (`gateway::upstream`). A link whose target fits but whose request
        // does not was issued, and its replay answered 414 (c-any finding).
        let upstream = target.upstream_target(&long_constraint).len();
        let fits = |base_path: &str, max: usize| {
            signed_link(
                "https://p",
                &target,
                &long_constraint,
                &signer(),
                "k",
                base_path,
                max,
            )
            .is_some()
        };
        assert!(fits("", upstream + 1));
        assert!(!fits("", upstream));
        assert!(fits("/fhir", upstream + 6));
        assert!(!fits("/fhir", upstream + 5));
        let handle = PageTarget::Handle {
            id: "abc".into(),
            offset: None,
            count: None,
        };
        let t = handle.upstream_target(&c).len();
        let ok = |base_path: &str, max: usize| {
            signed_link("h", &handle, &c, &signer(), "k", base_path, max).is_some()
        };
        assert!(ok("", (t + 1).max(100)));
        assert!(ok("/fhir", (t + 5).max(100)));
    }

    #[test]
    fn paging_requests_are_strict() {
        let page = |q: &str| format!("{TARGET_PARAM}={}", URL_SAFE(q));
        #[allow(non_snake_case)]
        fn URL_SAFE(q: &str) -> String {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(q)
        }
        for (q, why) in [
            ("_getpages=a".to_string(), "page_unsigned"),
            (
                "_getpages=a&_eds_sig=x&_getpages=b".into(),
                "repeated_parameter",
            ),
            (
                "_getpages=a&_eds_sig=x&_eds_sig=y".into(),
                "repeated_parameter",
            ),
            (
                "_getpages=a&_eds_sig=x&message-id=1".into(),
                "page_parameter",
            ),
            (
                "_getpages=a&_eds_sig=x&_security=x".into(),
                "page_parameter",
            ),
            ("_getpages=a/b&_eds_sig=x".into(), "page_handle_malformed"),
            ("_getpages=&_eds_sig=x".into(), "page_handle_malformed"),
            (
                "_getpages=a&_eds_sig=x&_bundletype=batch".into(),
                "page_parameter",
            ),
            ("_getpages=a&_eds_sig=x&_format=xml".into(), "format"),
            (
                format!("{}&_eds_sig=x&_page=3", page("_page=2")),
                "page_parameter",
            ),
            // Output shape only, as on a handle link: checked, never forwarded.
            (
                format!("{}&_eds_sig=x&_format=xml", page("_page=2")),
                "format",
            ),
            (
                format!("{}&_eds_sig=x&_pretty=yes", page("_page=2")),
                "not_a_boolean",
            ),
            (format!("{}&_eds_sig=x", page("_security=x")), "page_target"),
            (format!("{}&_eds_sig=x", page("_include=*")), "page_target"),
            (format!("{}&_eds_sig=x", page("_count=x")), "page_target"),
            (format!("{TARGET_PARAM}=%%%&_eds_sig=x"), "page_target"),
            (format!("{TARGET_PARAM}=_-8&_eds_sig=x"), "page_target"),
            (page("_page=2"), "page_unsigned"),
        ] {
            assert_eq!(request(&q).map(|_| ()), Err(why), "{q}");
        }
        // A client that adds `_format`/`_pretty` to every request (HAPI's generic client with
        // an encoding or pretty printing set) pages on either link form (c-any finding: the
        // `_eds_page` form answered 400 `page_parameter`).
        for extra in [
            "_format=json",
            "_pretty=true",
            "_format=application/fhir%2Bjson&_pretty=false",
        ] {
            assert_eq!(
                request(&format!("{}&_eds_sig=x&{extra}", page("_page=2"))).map(|p| p.target),
                Ok(PageTarget::Search {
                    params: vec![("_page".into(), "2".into())]
                }),
                "{extra}"
            );
        }
        assert_eq!(
            request(&format!("{}&_eds_sig=x", page("_page=2&_count=1000"))).map(|p| p.target),
            Ok(PageTarget::Search {
                params: vec![
                    ("_page".into(), "2".into()),
                    ("_count".into(), "100".into())
                ]
            })
        );
    }

    #[test]
    fn handle_upstream_target_is_canonical_and_unsigned() {
        let r = request("_getpages=abc&_getpagesoffset=10&_count=10&_eds_sig=sig").unwrap();
        assert_eq!(
            r.target.upstream_target(&constraint("x")),
            "?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset"
        );
    }
}
