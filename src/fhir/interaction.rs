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
    /// Any of If-None-Exist, If-Match, If-None-Match, If-Modified-Since is present.
    pub conditional: bool,
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
    let method = req.method;
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
                check_format_only(raw_query)?;
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
                if req.conditional {
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
            "POST" => {
                refuse_conditional(req)?;
                let form = req.content_type.map(media_type);
                if form != Some("application/x-www-form-urlencoded") {
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
                refuse_conditional(req)?;
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
                refuse_conditional(req)?;
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
pub fn is_fhir_id(s: &str) -> bool {
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

fn refuse_conditional(req: &RequestParts<'_>) -> Result<(), Refusal> {
    if req.conditional {
        return Err(Refusal::Forbidden(Forbidden::Conditional));
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
/// (RFC 9110 §8.3.1). Not lower-cased.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

fn require_json(content_type: Option<&str>) -> Result<(), Refusal> {
    match content_type.map(media_type) {
        Some(t)
            if t.eq_ignore_ascii_case("application/fhir+json")
                || t.eq_ignore_ascii_case("application/json") =>
        {
            Ok(())
        }
        _ => Err(Refusal::UnsupportedMediaType(
            UnsupportedMediaType::Registration,
        )),
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
            (req("HEAD", "/fhir/AuditEvent", None), "method_on_type"),
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
                req("GET", "/fhir/metadata", Some("mode=full")),
                "interaction_parameter",
            ),
            (
                req("POST", "/fhir/AuditEvent", None),
                "registration_not_json",
            ),
            (
                req("GET", "/fhir/AuditEvent/_search", None),
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
