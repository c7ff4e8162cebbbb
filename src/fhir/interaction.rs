//! Classify an HTTP request into the one FHIR interaction it is, or refuse it. Deny by
//! default: only the forms listed in DESIGN §1.4 get through.

use crate::error::{Forbidden, Invalid, MethodNotAllowed, Refusal, UnsupportedMediaType};
use crate::fhir::paging::{self, PageRequest};
use crate::fhir::query::{self, SearchQuery};

/// The parts of a request the classifier looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The HTTP method, as sent (methods are case-sensitive, RFC 9110 §9.1).
    pub method: &'a str,
    /// Raw path, without the query.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The `Content-Type` header value, if any.
    pub content_type: Option<&'a str>,
    /// Any of If-None-Exist, If-Match, If-Unmodified-Since is present
    /// ([`crate::fhir::plan::CONDITIONAL_HEADERS`]): refused everywhere.
    pub conditional: bool,
    /// If-None-Match or If-Modified-Since is present
    /// ([`crate::fhir::plan::VALIDATOR_HEADERS`]): a conditional read, answered by the proxy
    /// after the label check on read and vread (RFC 9110 §13.1.2, §13.1.3); refused elsewhere,
    /// since no other answer carries a validator the proxy could compare.
    pub validators: bool,
    /// The request body (empty when there is none).
    pub body: &'a [u8],
}

/// The one FHIR RESTful interaction a request is
/// (<https://hl7.org/fhir/R4/http.html>); anything else was refused by `classify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// `GET [base]/metadata` (capabilities).
    Capabilities,
    /// `GET [base]/AuditEvent?…` or `POST [base]/AuditEvent/_search` (search), parameters
    /// checked.
    Search(SearchQuery),
    /// `GET [base]/AuditEvent/[id]` (read) or `…/_history/[vid]` (vread).
    Read {
        /// The logical id (FHIR `id` syntax).
        id: String,
        /// The version id of a vread.
        version: Option<String>,
    },
    /// `POST [base]/AuditEvent` (create): a registration.
    Create,
    /// `GET [base]?_getpages=…` or `GET [base]?_eds_page=…` with the proxy's signature: a
    /// paging link the proxy issued (`fhir::paging`).
    Page(PageRequest),
}

impl Interaction {
    /// `capabilities`, `search`, `read`, `vread`, `create` or `page`: the `interaction` label of
    /// metrics and the access log.
    pub fn name(&self) -> &'static str {
        match self {
            Interaction::Capabilities => "capabilities",
            Interaction::Search(_) => "search",
            Interaction::Read { version: None, .. } => "read",
            Interaction::Read { .. } => "vread",
            Interaction::Create => "create",
            Interaction::Page(_) => "page",
        }
    }
}

const RESOURCE: &str = "AuditEvent";

/// `base_path` is the path of the public base URL (`/fhir`, or empty for the root).
pub fn classify(
    req: &RequestParts<'_>,
    base_path: &str,
    max_count: u32,
) -> Result<Interaction, Refusal> {
    let relative = strip_base(req.path, base_path)?;
    let segments = split_segments(relative)?;
    let raw_query = req.query.unwrap_or_default();
    // HEAD is answered like GET without a body (RFC 9110 §9.3.2): it is classified as GET.
    let method = match req.method {
        "HEAD" => "GET",
        m => m,
    };
    match segments.as_slice() {
        [] => {
            if method != "GET" {
                return Err(Refusal::Forbidden(Forbidden::Batch));
            }
            let pairs = query::decode_pairs(raw_query);
            if !pairs
                .iter()
                .any(|(n, _)| n == "_getpages" || n == paging::TARGET_PARAM)
            {
                return Err(Refusal::Forbidden(Forbidden::SystemInteraction));
            }
            refuse_conditional(req)?;
            Ok(Interaction::Page(paging::parse_page_request(
                &pairs, max_count,
            )?))
        }
        ["metadata"] => match method {
            "GET" => {
                check_metadata_query(raw_query)?;
                Ok(Interaction::Capabilities)
            }
            _ => Err(Refusal::MethodNotAllowed(MethodNotAllowed::Metadata)),
        },
        [RESOURCE] => match method {
            "GET" => {
                refuse_conditional(req)?;
                Ok(Interaction::Search(query::parse_search(
                    &query::decode_pairs(raw_query),
                    max_count,
                )?))
            }
            "POST" => {
                if req.conditional || req.validators {
                    return Err(Refusal::Forbidden(Forbidden::ConditionalCreate));
                }
                check_format_only(raw_query)?;
                require_json(req.content_type)?;
                Ok(Interaction::Create)
            }
            "PUT" | "PATCH" | "DELETE" => Err(Refusal::MethodNotAllowed(
                MethodNotAllowed::ConditionalWrite,
            )),
            _ => Err(Refusal::MethodNotAllowed(MethodNotAllowed::OnType {
                method: method.to_string(),
            })),
        },
        [RESOURCE, "_search"] => match method {
            // HAPI's generic client (`SearchStyleEnum.GET_WITH_SEARCH`) searches this way.
            "GET" => {
                refuse_conditional(req)?;
                Ok(Interaction::Search(query::parse_search(
                    &query::decode_pairs(raw_query),
                    max_count,
                )?))
            }
            "POST" => {
                refuse_conditional(req)?;
                // An empty body needs no media type (fhirpy sends none); a body must be a
                // form, compared case-insensitively with its parameters (RFC 9110 §8.3.1).
                let form = req
                    .content_type
                    .is_some_and(|ct| is_media_type(ct, &["application/x-www-form-urlencoded"]));
                if !form && !req.body.is_empty() {
                    return Err(Refusal::UnsupportedMediaType(
                        UnsupportedMediaType::SearchForm,
                    ));
                }
                let body = std::str::from_utf8(req.body)
                    .map_err(|_| Refusal::Invalid(Invalid::FormNotUtf8))?;
                let mut pairs = query::decode_pairs(raw_query);
                pairs.extend(query::decode_pairs(body));
                Ok(Interaction::Search(query::parse_search(&pairs, max_count)?))
            }
            _ => Err(Refusal::MethodNotAllowed(MethodNotAllowed::Search)),
        },
        [RESOURCE, id] if !id.starts_with('$') && !id.starts_with('_') => match method {
            "GET" => {
                refuse_write_conditional(req)?;
                check_format_only(raw_query)?;
                Ok(Interaction::Read {
                    id: valid_id(id)?,
                    version: None,
                })
            }
            "PUT" | "PATCH" | "DELETE" => Err(Refusal::MethodNotAllowed(MethodNotAllowed::Write)),
            _ => Err(Refusal::MethodNotAllowed(MethodNotAllowed::OnInstance {
                method: method.to_string(),
            })),
        },
        [RESOURCE, id, "_history", vid] if !id.starts_with('$') => match method {
            "GET" => {
                refuse_write_conditional(req)?;
                check_format_only(raw_query)?;
                Ok(Interaction::Read {
                    id: valid_id(id)?,
                    version: Some(valid_id(vid)?),
                })
            }
            _ => Err(Refusal::MethodNotAllowed(MethodNotAllowed::OnInstance {
                method: method.to_string(),
            })),
        },
        segs if segs.iter().any(|s| s.starts_with('$')) => {
            Err(Refusal::Forbidden(Forbidden::Operation))
        }
        segs if segs.contains(&"_history") => Err(Refusal::Forbidden(Forbidden::History)),
        [RESOURCE, ..] => Err(Refusal::Forbidden(Forbidden::Interaction)),
        [_, _, ..] if segs_is_compartment(&segments) => {
            Err(Refusal::Forbidden(Forbidden::Compartment))
        }
        _ => Err(Refusal::Forbidden(Forbidden::ResourceType)),
    }
}

fn segs_is_compartment(segments: &[&str]) -> bool {
    segments.len() >= 3
}

fn strip_base<'a>(path: &'a str, base_path: &str) -> Result<&'a str, Refusal> {
    let base = base_path.trim_end_matches('/');
    let rest = path
        .strip_prefix(base)
        .ok_or(Refusal::Forbidden(Forbidden::UnknownPath))?;
    if rest.is_empty() || rest == "/" {
        return Ok("");
    }
    rest.strip_prefix('/')
        .ok_or(Refusal::Forbidden(Forbidden::UnknownPath))
}

/// Refuse anything a path normaliser could read two ways: encodings, empty or dot segments,
/// backslashes, matrix parameters.
fn split_segments(relative: &str) -> Result<Vec<&str>, Refusal> {
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    let relative = relative.strip_suffix('/').unwrap_or(relative);
    let segments: Vec<&str> = relative.split('/').collect();
    for s in &segments {
        if s.is_empty() || *s == "." || *s == ".." {
            return Err(Refusal::Invalid(Invalid::DotSegment));
        }
        if s.contains(['%', '\\', ';']) || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Refusal::Invalid(Invalid::PathCharacters));
        }
    }
    Ok(segments)
}

/// FHIR `id` (<https://hl7.org/fhir/R4/datatypes.html#id>): 1–64 of `[A-Za-z0-9\-.]`. The
/// one check for ids in paths, contained resources, `#id` references, `Location` headers and
/// profile versions.
pub(crate) fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A logical id from a request path, or the refusal.
fn valid_id(id: &str) -> Result<String, Refusal> {
    if is_fhir_id(id) {
        Ok(id.to_string())
    } else {
        Err(Refusal::Invalid(Invalid::MalformedId))
    }
}

/// Searches and paging: no conditional header at all (no validator to compare).
fn refuse_conditional(req: &RequestParts<'_>) -> Result<(), Refusal> {
    if req.conditional || req.validators {
        return Err(Refusal::Forbidden(Forbidden::Conditional));
    }
    Ok(())
}

/// Reads: If-None-Match / If-Modified-Since are answered by the proxy; the others would have
/// the server evaluate a condition, and are refused.
fn refuse_write_conditional(req: &RequestParts<'_>) -> Result<(), Refusal> {
    if req.conditional {
        return Err(Refusal::Forbidden(Forbidden::Conditional));
    }
    Ok(())
}

/// The parameters `GET /metadata` takes, each decided (the CapabilityStatement is the
/// proxy's own and public, so none can reveal or widen anything):
///
/// | parameter | values | effect |
/// |---|---|---|
/// | `_format` | `json`, `application/json`, `application/fhir+json` | none (always JSON) |
/// | `_pretty` | `true`, `false` | none (ignored, see README) |
/// | `_summary` | `true`, `false`, `text`, `data` | none: the whole statement is served |
/// | `mode` | `full`, `normal` | none: the one statement is both |
///
/// Anything else is refused (400); `mode=terminology` with `capabilities_mode`.
/// Pure: [`crate::fhir::plan::token_free`] lets exactly these through without a token.
pub fn check_metadata_query(raw_query: &str) -> Result<(), Refusal> {
    for (name, value) in query::decode_pairs(raw_query) {
        match name.as_str() {
            "_format" => query::check_format(&value)?,
            "_pretty" => query::check_bool(&name, &value)?,
            "_summary" => match value.as_str() {
                "true" | "false" | "text" | "data" => {}
                _ => return Err(Refusal::Invalid(Invalid::Summary)),
            },
            "mode" => match value.as_str() {
                "full" | "normal" => {}
                _ => return Err(Refusal::Invalid(Invalid::CapabilitiesMode)),
            },
            _ => return Err(Refusal::Invalid(Invalid::InteractionParameter { name })),
        }
    }
    Ok(())
}

/// Reads, creates and capabilities take no parameters but the JSON format ones.
fn check_format_only(raw_query: &str) -> Result<(), Refusal> {
    for (name, value) in query::decode_pairs(raw_query) {
        match name.as_str() {
            "_format" => query::check_format(&value)?,
            "_pretty" => query::check_bool(&name, &value)?,
            _ => return Err(Refusal::Invalid(Invalid::InteractionParameter { name })),
        }
    }
    Ok(())
}

/// The media type of a `Content-Type` value: the part before any `;` parameter, trimmed
/// (RFC 9110 §8.3.1). Not lower-cased: compare with [`is_media_type`].
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// True when `content_type`'s media type is one of `types` (lower-case), compared
/// case-insensitively and ignoring parameters (RFC 9110 §8.3.1: type and subtype are
/// case-insensitive). The one media-type comparison for requests and answers.
pub fn is_media_type(content_type: &str, types: &[&str]) -> bool {
    let t = media_type(content_type);
    types.iter().any(|want| t.eq_ignore_ascii_case(want))
}

/// FHIR JSON media types: R4's `application/fhir+json`, plain `application/json`, and the
/// DSTU2-era `application/json+fhir` older clients still send
/// (<https://hl7.org/fhir/R4/http.html#mime-type>).
pub const FHIR_JSON_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
];

fn require_json(content_type: Option<&str>) -> Result<(), Refusal> {
    if content_type.is_some_and(|ct| is_media_type(ct, FHIR_JSON_TYPES)) {
        Ok(())
    } else {
        Err(Refusal::UnsupportedMediaType(
            UnsupportedMediaType::Registration,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, path: &'a str, query: Option<&'a str>) -> RequestParts<'a> {
        RequestParts {
            method,
            path,
            query,
            content_type: None,
            conditional: false,
            validators: false,
            body: b"",
        }
    }

    fn classify_(r: RequestParts<'_>) -> Result<Interaction, Refusal> {
        classify(&r, "/fhir", 100)
    }

    #[test]
    fn allowed_forms() {
        assert_eq!(
            classify_(req("GET", "/fhir/metadata", None)).unwrap(),
            Interaction::Capabilities
        );
        assert!(matches!(
            classify_(req("GET", "/fhir/AuditEvent", Some("message-id=x"))).unwrap(),
            Interaction::Search(_)
        ));
        assert_eq!(
            classify_(req("GET", "/fhir/AuditEvent/abc-1", None)).unwrap(),
            Interaction::Read {
                id: "abc-1".into(),
                version: None
            }
        );
        assert_eq!(
            classify_(req("GET", "/fhir/AuditEvent/abc/_history/2", None)).unwrap(),
            Interaction::Read {
                id: "abc".into(),
                version: Some("2".into())
            }
        );
        let mut create = req("POST", "/fhir/AuditEvent", None);
        create.content_type = Some("application/fhir+json; charset=utf-8");
        assert_eq!(classify_(create).unwrap(), Interaction::Create);
        let mut search = req("POST", "/fhir/AuditEvent/_search", Some("_count=5"));
        search.content_type = Some("application/x-www-form-urlencoded");
        search.body = b"message-id=x";
        let Interaction::Search(q) = classify_(search).unwrap() else {
            panic!()
        };
        assert_eq!(q.params[0].value, "x");
        assert_eq!(q.count, Some(5));
        assert!(matches!(
            classify_(req("GET", "/fhir", Some("_getpages=abc&_eds_sig=x"))).unwrap(),
            Interaction::Page(_)
        ));
    }

    #[test]
    fn denied_forms() {
        let cases = [
            (req("POST", "/fhir", None), "batch"),
            (req("POST", "/fhir/", None), "batch"),
            (req("GET", "/fhir", None), "system_interaction"),
            (
                req("POST", "/fhir", Some("_getpages=abc&_eds_sig=x")),
                "batch",
            ),
            (req("GET", "/fhir/Patient", None), "resource_type"),
            (
                req("GET", "/fhir/Patient/1/AuditEvent", None),
                "compartment",
            ),
            (req("GET", "/fhir/Patient/1/$everything", None), "operation"),
            (req("GET", "/fhir/AuditEvent/$meta", None), "operation"),
            (req("POST", "/fhir/AuditEvent/$validate", None), "operation"),
            (req("GET", "/fhir/AuditEvent/1/$meta", None), "operation"),
            (req("GET", "/fhir/AuditEvent/_history", None), "history"),
            (req("GET", "/fhir/AuditEvent/1/_history", None), "history"),
            (req("GET", "/fhir/_history", None), "history"),
            (req("PUT", "/fhir/AuditEvent/1", None), "write"),
            (req("PATCH", "/fhir/AuditEvent/1", None), "write"),
            (req("DELETE", "/fhir/AuditEvent/1", None), "write"),
            (
                req("DELETE", "/fhir/AuditEvent", Some("_id=1")),
                "conditional_write",
            ),
            (
                req("PUT", "/fhir/AuditEvent", Some("_id=1")),
                "conditional_write",
            ),
            (req("OPTIONS", "/fhir/AuditEvent", None), "method_on_type"),
            (req("GET", "/fhir//AuditEvent", None), "dot_segment"),
            (req("GET", "/fhir/./AuditEvent", None), "dot_segment"),
            (req("GET", "/fhir/x/../AuditEvent", None), "dot_segment"),
            (req("GET", "/fhir/Audit%45vent", None), "path_characters"),
            (req("GET", "/fhir/auditevent", None), "resource_type"),
            (req("GET", "/fhir/AuditEvent;x=1", None), "path_characters"),
            (req("GET", "/other/AuditEvent", None), "unknown_path"),
            (req("GET", "/fhirAuditEvent", None), "unknown_path"),
            (req("GET", "/fhir/AuditEvent/a_b", None), "malformed_id"),
            (
                req("GET", "/fhir/AuditEvent/1", Some("_include=x")),
                "interaction_parameter",
            ),
            (
                req("GET", "/fhir/metadata", Some("mode=terminology")),
                "capabilities_mode",
            ),
            (
                req("GET", "/fhir/metadata", Some("_summary=count")),
                "summary",
            ),
            (
                req("GET", "/fhir/metadata", Some("_elements=id")),
                "interaction_parameter",
            ),
            (
                req("POST", "/fhir/AuditEvent", None),
                "registration_not_json",
            ),
            (
                req("PUT", "/fhir/AuditEvent/_search", None),
                "search_post_only",
            ),
        ];
        for (r, why) in cases {
            let what = format!("{} {} {:?}", r.method, r.path, r.query);
            assert_eq!(classify_(r).map_err(|e| e.reason()), Err(why), "{what}");
        }
    }

    #[test]
    fn conditional_requests_are_refused() {
        let mut create = req("POST", "/fhir/AuditEvent", None);
        create.content_type = Some("application/fhir+json");
        create.conditional = true;
        assert_eq!(
            classify_(create),
            Err(Refusal::Forbidden(Forbidden::ConditionalCreate))
        );
        let mut read = req("GET", "/fhir/AuditEvent/1", None);
        read.conditional = true;
        assert_eq!(
            classify_(read),
            Err(Refusal::Forbidden(Forbidden::Conditional))
        );
    }

    /// Issue 11: what a FHIR client sends that a FHIR server accepts, classified as that
    /// server would (each with its exact outcome).
    #[test]
    fn client_forms_are_classified_like_a_fhir_server() {
        let search = |r: RequestParts<'_>| match classify_(r) {
            Ok(Interaction::Search(q)) => q,
            other => panic!("{other:?}"),
        };
        // HEAD is GET without a body: the same interaction.
        assert_eq!(
            classify_(req("HEAD", "/fhir/metadata", None)),
            Ok(Interaction::Capabilities)
        );
        assert_eq!(
            classify_(req("HEAD", "/fhir/AuditEvent/a1", None)),
            Ok(Interaction::Read {
                id: "a1".into(),
                version: None
            })
        );
        assert_eq!(
            search(req("HEAD", "/fhir/AuditEvent", Some("message-id=x"))).params[0].value,
            "x"
        );
        // GET [base]/AuditEvent/_search (HAPI's GET_WITH_SEARCH) is the type search.
        assert_eq!(
            search(req(
                "GET",
                "/fhir/AuditEvent/_search",
                Some("message-id=x&_count=3")
            )),
            search(req(
                "GET",
                "/fhir/AuditEvent",
                Some("message-id=x&_count=3")
            ))
        );
        // POST _search: an empty body needs no Content-Type; media types case-insensitive.
        let mut empty = req("POST", "/fhir/AuditEvent/_search", Some("message-id=x"));
        assert_eq!(search(empty).params[0].value, "x");
        empty.content_type = Some("text/plain");
        assert_eq!(search(empty).params.len(), 1);
        let mut form = req("POST", "/fhir/AuditEvent/_search", None);
        form.content_type = Some("Application/X-WWW-Form-URLEncoded; charset=UTF-8");
        form.body = b"message-id=y";
        assert_eq!(search(form).params[0].value, "y");
        form.content_type = None;
        assert_eq!(
            classify_(form),
            Err(Refusal::UnsupportedMediaType(
                UnsupportedMediaType::SearchForm
            ))
        );
        // The legacy FHIR JSON type and any case on create.
        for ct in [
            "application/json+fhir",
            "APPLICATION/FHIR+JSON;fhirVersion=4.0",
            "application/json",
        ] {
            let mut create = req("POST", "/fhir/AuditEvent", None);
            create.content_type = Some(ct);
            assert_eq!(classify_(create), Ok(Interaction::Create), "{ct}");
        }
        // /metadata takes the parameters clients send.
        for q in [
            "_format=json&_pretty=true",
            "_summary=true",
            "mode=full",
            "mode=normal",
        ] {
            assert_eq!(
                classify_(req("GET", "/fhir/metadata", Some(q))),
                Ok(Interaction::Capabilities),
                "{q}"
            );
        }
    }

    /// If-None-Match / If-Modified-Since: answered by the proxy on read and vread, refused
    /// everywhere else; If-Match / If-None-Exist / If-Unmodified-Since refused everywhere.
    #[test]
    fn validators_only_on_reads() {
        let mut read = req("GET", "/fhir/AuditEvent/1", None);
        read.validators = true;
        assert!(matches!(classify_(read), Ok(Interaction::Read { .. })));
        let mut vread = req("GET", "/fhir/AuditEvent/1/_history/2", None);
        vread.validators = true;
        assert!(matches!(classify_(vread), Ok(Interaction::Read { .. })));
        let mut search = req("GET", "/fhir/AuditEvent", None);
        search.validators = true;
        assert_eq!(
            classify_(search),
            Err(Refusal::Forbidden(Forbidden::Conditional))
        );
        let mut page = req("GET", "/fhir", Some("_getpages=abc&_eds_sig=x"));
        page.validators = true;
        assert_eq!(
            classify_(page),
            Err(Refusal::Forbidden(Forbidden::Conditional))
        );
        let mut create = req("POST", "/fhir/AuditEvent", None);
        create.content_type = Some("application/fhir+json");
        create.validators = true;
        assert_eq!(
            classify_(create),
            Err(Refusal::Forbidden(Forbidden::ConditionalCreate))
        );
    }

    #[test]
    fn non_json_create_is_415() {
        let mut create = req("POST", "/fhir/AuditEvent", None);
        create.content_type = Some("application/fhir+xml");
        assert_eq!(
            classify_(create),
            Err(Refusal::UnsupportedMediaType(
                UnsupportedMediaType::Registration
            ))
        );
    }

    #[test]
    fn post_search_body_cannot_carry_forbidden_params() {
        let mut search = req("POST", "/fhir/AuditEvent/_search", None);
        search.content_type = Some("application/x-www-form-urlencoded");
        search.body = b"_security=urn:eds-proxy:label:cpr|1";
        assert_eq!(
            classify_(search).map_err(|e| e.reason()),
            Err("refused_parameter")
        );
        search.body = b"_include=AuditEvent:patient";
        assert_eq!(
            classify_(search),
            Err(Refusal::Invalid(Invalid::RefusedParameter {
                why: "_include is not allowed"
            }))
        );
    }

    #[test]
    fn root_base_path_works() {
        assert_eq!(
            classify(&req("GET", "/metadata", None), "", 100).unwrap(),
            Interaction::Capabilities
        );
        assert_eq!(
            classify(&req("GET", "/metadata", None), "/", 100).unwrap(),
            Interaction::Capabilities
        );
    }
}
