//! Client compatibility: the header-level decisions that let a FHIR client talk to the proxy
//! as to a FHIR server (issue 11), each pure and unit-tested. The gateway reads the headers,
//! calls these, and writes what they return.
//!
//! | header | decision | source |
//! |---|---|---|
//! | `Accept` | JSON admitted (or absent) → served; only XML/other types → 406 | RFC 9110 §12.5.1, FHIR R4 http.html#mime-type |
//! | `Accept-Encoding` | `gzip`/`x-gzip`/`*` with q > 0 → the checked answer is gzip-compressed | RFC 9110 §12.5.3 |
//! | `Prefer: return=` | `minimal` → no body; `OperationOutcome` → an outcome; else the resource | RFC 7240, FHIR R4 http.html#ops |
//! | `If-None-Match`, `If-Modified-Since` | on read/vread, after the label check: 304 when the validator matches | RFC 9110 §13.1.2, §13.1.3 |
//! | `ETag`, `Last-Modified`, `Content-Location` | passed only as an entity tag / a parsed date / a location on the proxy's base for the record asked for | RFC 9110 §8.8.3, §8.8.2, §8.7 |

use crate::fhir::interaction::{is_fhir_id, is_media_type, FHIR_JSON_TYPES};

/// One element of a comma-separated header list with its `q` weight (RFC 9110 §12.4.2): the
/// value before `;` (trimmed) and whether its weight is above zero. A malformed `q` counts as
/// 1 (be liberal in what is accepted; a weight can only narrow).
fn weighted(list: &str) -> impl Iterator<Item = (&str, bool)> {
    list.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let value = parts.next().unwrap_or_default().trim();
        if value.is_empty() {
            return None;
        }
        let positive = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .is_none_or(|q| q > 0.0);
        Some((value, positive))
    })
}

/// True when the `Accept` header values (all of them, in order) admit FHIR JSON: no header,
/// an empty one, or a media range with q > 0 that is a JSON FHIR type, `application/*` or
/// `*/*`. False means 406 ([`crate::error::Refusal::NotAcceptable`]): the proxy checks and
/// serves JSON only, and a client asking only for `application/fhir+xml` is told so rather
/// than handed JSON it did not ask for. HAPI's client and fhirpy list JSON among their types.
pub fn accepts_json<'a>(accept: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for header in accept {
        for (range, positive) in weighted(header) {
            any = true;
            let json = is_media_type(range, FHIR_JSON_TYPES)
                || is_media_type(range, &["application/*", "*/*"]);
            if json && positive {
                return true;
            }
        }
    }
    !any
}

/// True when `Accept-Encoding` admits gzip (`gzip`, `x-gzip` or `*` with q > 0, and `gzip`
/// not explicitly q=0); RFC 9110 §12.5.3. Identity is always acceptable too, so `false` just
/// means "send it uncompressed".
pub fn accepts_gzip<'a>(accept_encoding: impl IntoIterator<Item = &'a str>) -> bool {
    let mut gzip = None;
    let mut star = None;
    for header in accept_encoding {
        for (coding, positive) in weighted(header) {
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(positive);
            } else if coding == "*" {
                star = Some(positive);
            }
        }
    }
    gzip.or(star).unwrap_or(false)
}

/// The smallest answer worth compressing: below it gzip's header costs more than it saves.
pub const GZIP_MIN_BYTES: usize = 1024;

/// What a create answers with (`Prefer: return=…`, RFC 7240 §4.2; FHIR R4 http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    /// The created resource (the default, and what an unknown value gets).
    Representation,
    /// No body; `Location`, `ETag`, `Last-Modified` only.
    Minimal,
    /// An OperationOutcome saying the record was created.
    OperationOutcome,
}

/// The `return` preference among the `Prefer` header values. Preference names are
/// case-insensitive, values may be quoted, unknown preferences are ignored (RFC 7240 §2);
/// the first `return` wins. The answer is checked in full first whatever is preferred: the
/// preference only shapes what is sent.
pub fn return_preference<'a>(prefer: impl IntoIterator<Item = &'a str>) -> ReturnPreference {
    for header in prefer {
        for item in header.split(',') {
            let pref = item.split(';').next().unwrap_or_default();
            let Some((name, value)) = pref.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("return") {
                continue;
            }
            let value = value.trim().trim_matches('"');
            return match value {
                "minimal" => ReturnPreference::Minimal,
                "OperationOutcome" => ReturnPreference::OperationOutcome,
                _ => ReturnPreference::Representation,
            };
        }
    }
    ReturnPreference::Representation
}

/// The body a create answers with under `pref`, from the checked body the FHIR server sent.
pub fn created_body(pref: ReturnPreference, checked: Vec<u8>) -> Vec<u8> {
    match pref {
        ReturnPreference::Representation => checked,
        ReturnPreference::Minimal => Vec::new(),
        ReturnPreference::OperationOutcome => crate::error::operation_outcome(
            "information",
            "informational",
            "the registration was created",
        ),
    }
}

/// `Last-Modified` as the proxy passes it: the server's value only if it is an HTTP-date
/// (RFC 9110 §5.6.7), re-formatted as an IMF-fixdate; anything else is dropped.
pub fn http_date(value: &str) -> Option<String> {
    httpdate::parse_http_date(value.trim())
        .ok()
        .map(httpdate::fmt_http_date)
}

/// Should a read answer be 304 Not Modified (RFC 9110 §13.1.2, §13.1.3, evaluated in the
/// order of §13.2.2)? Called only for a record the caller may see (after the label check), so
/// a 304 never confirms a record that would be 404.
///
/// - `If-None-Match` present: 304 when `*` or any listed entity tag equals `etag` by the weak
///   comparison (`W/` ignored, opaque tags compared exactly).
/// - else `If-Modified-Since` present and a valid HTTP-date: 304 when `last_modified` is a
///   valid HTTP-date not later than it. An invalid date is ignored (§13.1.3).
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> bool {
    if let Some(inm) = if_none_match {
        let Some(etag) = etag else {
            return inm.trim() == "*";
        };
        let ours = opaque_tag(etag);
        return inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || (ours.is_some() && opaque_tag(t) == ours)
        });
    }
    let (Some(since), Some(modified)) = (if_modified_since, last_modified) else {
        return false;
    };
    match (
        httpdate::parse_http_date(since.trim()),
        httpdate::parse_http_date(modified.trim()),
    ) {
        (Ok(since), Ok(modified)) => modified <= since,
        _ => false,
    }
}

/// `ETag` as the proxy passes it: the server's value only if it is an entity tag
/// (RFC 9110 §8.8.3: optional `W/`, then a quoted string of visible characters other than
/// `"`); anything else is dropped, and a read is then never answered 304 by `If-None-Match`.
pub fn entity_tag(value: &str) -> Option<String> {
    let t = value.trim();
    let opaque = t.strip_prefix("W/").unwrap_or(t);
    let inner = opaque.strip_prefix('"')?.strip_suffix('"')?;
    inner
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
        .then(|| t.to_string())
}

/// The opaque part of an entity tag (`W/"x"` and `"x"` both give `"x"`), or `None` when it is
/// not one (RFC 9110 §8.8.3).
fn opaque_tag(tag: &str) -> Option<&str> {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    (t.len() >= 2 && t.starts_with('"') && t.ends_with('"')).then_some(t)
}

/// `Content-Location` of a read or vread as the proxy passes it: the server's value only if
/// it is `{base}/AuditEvent/{id}/_history/{vid}` on the server's or the proxy's base, for the
/// `id` asked for (and the `version`, for a vread); rebuilt on `public_base`. Anything else is
/// dropped (never an upstream address, never another record).
pub fn content_location(
    value: &str,
    id: &str,
    version: Option<&str>,
    public_base: &str,
    upstream_base: &str,
) -> Option<String> {
    let value = value.trim();
    let rest = [public_base, upstream_base]
        .iter()
        .find_map(|b| value.strip_prefix(b.trim_end_matches('/')))?;
    let rest = rest.strip_prefix("/AuditEvent/")?;
    let (got_id, vid) = rest.split_once("/_history/")?;
    if got_id != id || !is_fhir_id(vid) || version.is_some_and(|v| v != vid) {
        return None;
    }
    Some(format!(
        "{}/AuditEvent/{id}/_history/{vid}",
        public_base.trim_end_matches('/')
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_admits_json_or_is_refused() {
        for ok in [
            vec![],
            vec![""],
            vec!["application/fhir+json"],
            vec!["Application/FHIR+JSON; fhirVersion=4.0"],
            vec!["application/json+fhir"],
            vec!["*/*"],
            vec!["application/*;q=0.1"],
            // HAPI's generic client's default.
            vec!["application/fhir+xml;q=1.0, application/fhir+json;q=1.0, application/xml+fhir;q=0.9, application/json+fhir;q=0.9"],
            vec!["application/fhir+xml", "application/json"],
        ] {
            assert!(accepts_json(ok.iter().copied()), "{ok:?}");
        }
        for refused in [
            vec!["application/fhir+xml"],
            vec!["application/xml, text/html"],
            vec!["application/fhir+json;q=0, application/fhir+xml"],
            vec!["*/*;q=0.0"],
            vec!["text/turtle"],
        ] {
            assert!(!accepts_json(refused.iter().copied()), "{refused:?}");
        }
    }

    #[test]
    fn gzip_only_when_admitted() {
        for ok in [
            vec!["gzip"],
            vec!["deflate, GZIP;q=0.5"],
            vec!["*"],
            vec!["br", "x-gzip"],
        ] {
            assert!(accepts_gzip(ok.iter().copied()), "{ok:?}");
        }
        for no in [
            vec![],
            vec!["identity"],
            vec!["gzip;q=0"],
            vec!["*, gzip;q=0"],
            vec!["*;q=0"],
            vec!["br"],
        ] {
            assert!(!accepts_gzip(no.iter().copied()), "{no:?}");
        }
    }

    #[test]
    fn prefer_return() {
        use ReturnPreference::*;
        for (h, want) in [
            (vec![], Representation),
            (vec!["return=minimal"], Minimal),
            (vec!["RETURN = \"minimal\""], Minimal),
            (
                vec!["handling=strict, return=OperationOutcome"],
                OperationOutcome,
            ),
            (
                vec!["respond-async", "return=representation"],
                Representation,
            ),
            (vec!["return=unknown"], Representation),
            (vec!["return=minimal;x=1"], Minimal),
        ] {
            assert_eq!(return_preference(h.iter().copied()), want, "{h:?}");
        }
        assert_eq!(created_body(Minimal, b"{}".to_vec()), b"");
        assert_eq!(created_body(Representation, b"{}".to_vec()), b"{}");
        let oo: serde_json::Value =
            serde_json::from_slice(&created_body(OperationOutcome, b"{}".to_vec())).unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert_eq!(oo["issue"][0]["code"], "informational");
    }

    #[test]
    fn conditional_read_validators() {
        let etag = Some("W/\"3\"");
        let lm = Some("Tue, 01 Dec 2026 10:00:00 GMT");
        assert!(not_modified(Some("W/\"3\""), None, etag, lm));
        assert!(not_modified(Some("\"3\""), None, etag, lm));
        assert!(not_modified(Some("\"1\", W/\"3\""), None, etag, lm));
        assert!(not_modified(Some("*"), None, etag, lm));
        assert!(!not_modified(Some("W/\"2\""), None, etag, lm));
        assert!(!not_modified(Some("3"), None, etag, lm));
        // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
        assert!(!not_modified(
            Some("W/\"2\""),
            Some("Wed, 02 Dec 2026 10:00:00 GMT"),
            etag,
            lm
        ));
        assert!(not_modified(
            None,
            Some("Tue, 01 Dec 2026 10:00:00 GMT"),
            etag,
            lm
        ));
        assert!(not_modified(
            None,
            Some("Wed, 02 Dec 2026 10:00:00 GMT"),
            etag,
            lm
        ));
        assert!(!not_modified(
            None,
            Some("Mon, 30 Nov 2026 10:00:00 GMT"),
            etag,
            lm
        ));
        assert!(!not_modified(None, Some("yesterday"), etag, lm));
        assert!(!not_modified(
            None,
            Some("Wed, 02 Dec 2026 10:00:00 GMT"),
            etag,
            None
        ));
        assert!(!not_modified(None, None, etag, lm));
    }

    #[test]
    fn passed_headers_are_rebuilt() {
        assert_eq!(entity_tag(" W/\"1\" ").as_deref(), Some("W/\"1\""));
        assert_eq!(entity_tag("\"abc\"").as_deref(), Some("\"abc\""));
        for bad in ["1", "W/1", "\"a\"b\"", "\"a b\"", "\"", "w/\"1\""] {
            assert_eq!(entity_tag(bad), None, "{bad}");
        }
        assert_eq!(
            http_date("Tue, 01 Dec 2026 10:00:00 GMT").as_deref(),
            Some("Tue, 01 Dec 2026 10:00:00 GMT")
        );
        assert_eq!(http_date("http://evil/"), None);
        let p = "https://proxy/fhir";
        let u = "http://hapi:8080/fhir";
        assert_eq!(
            content_location(
                "http://hapi:8080/fhir/AuditEvent/a1/_history/2",
                "a1",
                None,
                p,
                u
            )
            .as_deref(),
            Some("https://proxy/fhir/AuditEvent/a1/_history/2")
        );
        assert_eq!(
            content_location(
                "https://proxy/fhir/AuditEvent/a1/_history/2",
                "a1",
                Some("2"),
                p,
                u
            )
            .as_deref(),
            Some("https://proxy/fhir/AuditEvent/a1/_history/2")
        );
        for bad in [
            "http://hapi:8080/fhir/AuditEvent/a2/_history/2",
            "http://elsewhere/fhir/AuditEvent/a1/_history/2",
            "http://hapi:8080/fhir/Patient/a1/_history/2",
            "http://hapi:8080/fhir/AuditEvent/a1",
            "http://hapi:8080/fhir/AuditEvent/a1/_history/2/x",
        ] {
            assert_eq!(content_location(bad, "a1", None, p, u), None, "{bad}");
        }
        assert_eq!(
            content_location(
                "http://hapi:8080/fhir/AuditEvent/a1/_history/2",
                "a1",
                Some("1"),
                p,
                u
            ),
            None
        );
    }
}
