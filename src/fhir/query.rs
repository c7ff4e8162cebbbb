//! The canonical search model: a query string parsed into named parameters, checked against
//! an allowlist, and serialised again. The raw client query is never forwarded.

use std::fmt::Write;

use crate::error::{Invalid, Refusal};

/// AuditEvent search parameters a client may use: FHIR R4's own and the EDS IG's.
pub const SEARCH_PARAMETERS: &[&str] = &[
    // FHIR R4 AuditEvent and common resource parameters.
    "_id",
    "_lastUpdated",
    "_profile",
    "_tag",
    "action",
    "address",
    "agent",
    "agent-name",
    "agent-role",
    "altid",
    "date",
    "entity",
    "entity-name",
    "entity-role",
    "entity-type",
    "outcome",
    "patient",
    "policy",
    "site",
    "source",
    "subtype",
    "type",
    // EDS implementation guide (fsh/SearchParameters): the last
    // `IG_SEARCH_PARAMETER_COUNT` entries, [`IG_SEARCH_PARAMETERS`].
    "cpr",
    "ehmiMessageType",
    "entityIdentifier",
    "message-id",
    "orig-message-id",
    "participant-sor",
    "receiver-gln",
    "receiver-name",
    "receiver-sor",
    "receiverOrg",
    "sender-gln",
    "sender-name",
    "sender-sor",
    "senderOrg",
];

/// How many of [`SEARCH_PARAMETERS`] are the EDS IG's (they come last).
const IG_SEARCH_PARAMETER_COUNT: usize = 14;

/// The EDS implementation guide's AuditEvent search parameters (fsh/SearchParameters): the
/// tail of [`SEARCH_PARAMETERS`], one list for the allowlist, the CapabilityStatement and the
/// backend conformance probe.
pub const IG_SEARCH_PARAMETERS: &[&str] = SEARCH_PARAMETERS
    .split_at(SEARCH_PARAMETERS.len() - IG_SEARCH_PARAMETER_COUNT)
    .1;

/// Modifiers that only narrow or reshape a match on the parameter's own value. Type
/// modifiers (`:Device`), `:iterate`, `:in`/`:not-in` and everything unknown are refused.
const MODIFIERS: &[&str] = &[
    "exact",
    "contains",
    "missing",
    "not",
    "text",
    "identifier",
    "of-type",
    "above",
    "below",
];

/// Parameters that turn a search into more than a constrained AuditEvent search.
const FORBIDDEN: &[(&str, &str)] = &[
    ("_include", "_include is not allowed"),
    ("_revinclude", "_revinclude is not allowed"),
    ("_has", "_has (reverse chaining) is not allowed"),
    ("_filter", "_filter is not allowed"),
    ("_query", "named queries (_query) are not allowed"),
    ("_list", "_list is not allowed"),
    ("_contained", "_contained is not allowed"),
    ("_containedType", "_containedType is not allowed"),
    ("_text", "_text is not allowed"),
    ("_content", "_content is not allowed"),
    (
        "_security",
        "_security is reserved for the proxy's access labels",
    ),
    ("_source", "_source is not allowed"),
    (
        "_getpages",
        "_getpages is only allowed on a signed paging link",
    ),
];

/// Parameters a search accepts and does not forward: each only shapes the output, so leaving
/// it out can never widen what the search matches (issue 11). `_format` (JSON values only)
/// and `_pretty` (a boolean) are checked first; `_totalMethod` (fhirpy's `.count()`, an
/// Aidbox hint that HAPI ignores) takes any value. Everything else the proxy does not know is
/// refused (`unknown_parameter`), never dropped.
pub const DROPPED_OUTPUT_PARAMETERS: &[&str] = &["_format", "_pretty", "_totalMethod"];

/// True for a parameter the search allowlist refuses outright (`_include`, `_has`,
/// `_security`, `_getpages`, …): a paging link carrying one is not the proxy's to hand out.
pub fn is_refused_parameter(name: &str) -> bool {
    FORBIDDEN.iter().any(|(n, _)| *n == name)
}

/// A parsed `name[:modifier]=value` pair, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The search parameter's name, e.g. `date` (FHIR R4 search,
    /// <https://hl7.org/fhir/R4/search.html>).
    pub name: String,
    /// The modifier after `:`, e.g. `exact` for `name:exact`.
    pub modifier: Option<String>,
    /// The value, percent-decoded.
    pub value: String,
}

/// A search the proxy is willing to forward, before the caller's constraint is added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// The search parameters, in request order (result parameters below).
    pub params: Vec<Param>,
    /// `_count`, lowered to `limits.max_count`.
    pub count: Option<u32>,
    /// `_offset`: entries to skip.
    pub offset: Option<u32>,
    /// `_sort`: keys (`-` for descending) among the supported parameters, `_id` and
    /// `_lastUpdated`.
    pub sort: Option<String>,
    /// `_summary`: `true`, `false`, `data`, `text` or `count`.
    pub summary: Option<String>,
    /// `_elements`: element names, with `meta` always added so the labels come back.
    pub elements: Option<String>,
    /// `_total`: `none`, `estimate` or `accurate`.
    pub total: Option<String>,
}

/// Decode an `application/x-www-form-urlencoded` string (query or `_search` body) into
/// raw name/value pairs. `+` is a space, as servlet containers read it.
pub fn decode_pairs(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .filter(|(k, v)| !(k.is_empty() && v.is_empty()))
        .collect()
}

/// Build a search from decoded pairs, refusing anything outside the allowlist.
pub fn parse_search(pairs: &[(String, String)], max_count: u32) -> Result<SearchQuery, Refusal> {
    let mut q = SearchQuery::default();
    for (raw_name, value) in pairs {
        let (name, modifier) = split_name(raw_name)?;
        if let Some((_, why)) = FORBIDDEN.iter().find(|(n, _)| *n == name) {
            return Err(Refusal::Invalid(Invalid::RefusedParameter { why }));
        }
        let control = matches!(
            name,
            "_count"
                | "_offset"
                | "_sort"
                | "_summary"
                | "_elements"
                | "_total"
                | "_format"
                | "_pretty"
                | "_totalMethod"
        );
        if control && modifier.is_some() {
            return Err(Refusal::Invalid(Invalid::ModifierOn {
                name: name.to_string(),
            }));
        }
        match name {
            "_count" => set_once(&mut q.count, name, parse_count(value, max_count)?)?,
            "_offset" => set_once(&mut q.offset, name, parse_number(name, value)?)?,
            "_sort" => set_once(&mut q.sort, name, parse_sort(value)?)?,
            "_summary" => set_once(&mut q.summary, name, parse_summary(value)?)?,
            "_elements" => set_once(&mut q.elements, name, parse_elements(value)?)?,
            "_total" => set_once(&mut q.total, name, parse_total(value)?)?,
            "_format" => check_format(value)?,
            "_pretty" => check_bool(name, value)?,
            "_totalMethod" => {}
            _ if modifier.is_some()
                && name.starts_with('_')
                && name != "_id"
                && name != "_tag"
                && name != "_profile"
                && name != "_lastUpdated" =>
            {
                return Err(Refusal::Invalid(Invalid::ModifierOn {
                    name: name.to_string(),
                }));
            }
            _ if SEARCH_PARAMETERS.contains(&name) => {
                if let Some(m) = modifier {
                    if !MODIFIERS.contains(&m) {
                        return Err(Refusal::Invalid(Invalid::Modifier {
                            modifier: m.to_string(),
                        }));
                    }
                }
                q.params.push(Param {
                    name: name.to_string(),
                    modifier: modifier.map(str::to_string),
                    value: value.clone(),
                });
            }
            _ => {
                return Err(Refusal::Invalid(Invalid::UnknownParameter {
                    name: name.to_string(),
                }))
            }
        }
    }
    Ok(q)
}

/// `name` or `name:modifier`; chains (`a.b`) and odd characters are refused outright.
fn split_name(raw: &str) -> Result<(&str, Option<&str>), Refusal> {
    let (name, modifier) = match raw.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (raw, None),
    };
    if name.contains('.') || modifier.is_some_and(|m| m.contains('.')) {
        return Err(Refusal::Invalid(Invalid::Chained));
    }
    if name.starts_with("_has") {
        return Err(Refusal::Invalid(Invalid::ReverseChained));
    }
    let well_formed = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !well_formed(name) || modifier.is_some_and(|m| !well_formed(m)) {
        return Err(Refusal::Invalid(Invalid::MalformedParameterName {
            name: printable(raw),
        }));
    }
    Ok((name, modifier))
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn set_once<T>(slot: &mut Option<T>, name: &str, v: T) -> Result<(), Refusal> {
    if slot.is_some() {
        return Err(Refusal::Invalid(Invalid::RepeatedParameter {
            name: name.to_string(),
        }));
    }
    *slot = Some(v);
    Ok(())
}

fn parse_number(name: &str, value: &str) -> Result<u32, Refusal> {
    value.parse::<u32>().map_err(|_| {
        Refusal::Invalid(Invalid::NotAnInteger {
            name: name.to_string(),
        })
    })
}

/// `_count` above the limit is clamped, not refused: clients ask for "as many as you give".
pub(crate) fn parse_count(value: &str, max_count: u32) -> Result<u32, Refusal> {
    Ok(parse_number("_count", value)?.min(max_count))
}

fn parse_sort(value: &str) -> Result<String, Refusal> {
    for key in value.split(',') {
        let key = key.strip_prefix('-').unwrap_or(key);
        if !(SEARCH_PARAMETERS.contains(&key) || key == "_lastUpdated" || key == "_id") {
            return Err(Refusal::Invalid(Invalid::SortKey {
                key: printable(key),
            }));
        }
    }
    Ok(value.to_string())
}

fn parse_summary(value: &str) -> Result<String, Refusal> {
    match value {
        "true" | "false" | "data" | "count" | "text" => Ok(value.to_string()),
        _ => Err(Refusal::Invalid(Invalid::Summary)),
    }
}

/// `meta` is always added so the response check sees the access labels.
fn parse_elements(value: &str) -> Result<String, Refusal> {
    let mut elements: Vec<&str> = Vec::new();
    for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !e
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '[' || c == ']')
        {
            return Err(Refusal::Invalid(Invalid::ElementsEntry {
                entry: printable(e),
            }));
        }
        elements.push(e);
    }
    if !elements.contains(&"meta") {
        elements.push("meta");
    }
    Ok(elements.join(","))
}

fn parse_total(value: &str) -> Result<String, Refusal> {
    match value {
        "none" | "estimate" | "accurate" => Ok(value.to_string()),
        _ => Err(Refusal::Invalid(Invalid::Total)),
    }
}

/// Responses are checked as JSON, so only JSON may be asked for: `json`, or a FHIR JSON media
/// type ([`crate::fhir::interaction::FHIR_JSON_TYPES`], `text/json`) compared as `Accept` and
/// `Content-Type` are — case-insensitively, parameters such as `fhirVersion` ignored (FHIR R4
/// http.html#mime-type, #version-parameter). A space in the type is read as `+`: an unescaped
/// `+` in a query (`_format=application/fhir+json`) decodes to a space, and FHIR servers take
/// it (HAPI's `EncodingEnum.forContentType`). The value is dropped, never forwarded.
///
/// Errors: 400 `format` for anything else.
pub(crate) fn check_format(value: &str) -> Result<(), Refusal> {
    let media_type = crate::fhir::interaction::media_type(value).replace(' ', "+");
    let json = media_type.eq_ignore_ascii_case("json")
        || crate::fhir::interaction::is_media_type(
            &media_type,
            crate::fhir::interaction::FHIR_JSON_TYPES,
        )
        || media_type.eq_ignore_ascii_case("text/json");
    if json {
        Ok(())
    } else {
        Err(Refusal::Invalid(Invalid::Format))
    }
}

/// A FHIR boolean parameter value: exactly `true` or `false`.
///
/// Errors: 400 (`Refusal::Invalid`) naming the parameter.
pub(crate) fn check_bool(name: &str, value: &str) -> Result<(), Refusal> {
    match value {
        "true" | "false" => Ok(()),
        _ => Err(Refusal::Invalid(Invalid::NotABoolean {
            name: name.to_string(),
        })),
    }
}

/// Percent-encode one query component; everything but unreserved characters is escaped, so
/// `,`, `|`, `&`, `=` and `\` can never change meaning between here and the server.
pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Most parameters a request target sent upstream may carry, the caller's constraint
/// included. EDS searches use a handful; each parameter is another condition the FHIR server
/// must plan and join, so thousands of them (which fit in a 64 KiB form body) are refused.
pub const MAX_FORWARDED_PARAMS: usize = 100;

/// Check a request target (path and query) the proxy is about to send to the FHIR server.
/// The size limit for what arrives (`limits.max_uri_bytes`) applies to what is forwarded
/// too: a `POST _search` form, or a supporter's OR list of labels, can make a target far
/// longer than the client's URL, and a FHIR server would answer it with 414 (a 502 here) or
/// worse. Longer than `max_bytes` → 414 (RFC 9110 §15.5.15); more than
/// [`MAX_FORWARDED_PARAMS`] parameters → 400.
pub fn check_upstream_target(target: &str, max_bytes: usize) -> Result<(), Refusal> {
    if target.len() > max_bytes {
        return Err(Refusal::UriTooLong(max_bytes));
    }
    let params = target
        .split_once('?')
        .map_or(0, |(_, q)| q.split('&').filter(|p| !p.is_empty()).count());
    if params > MAX_FORWARDED_PARAMS {
        return Err(Refusal::Invalid(Invalid::TooManyParameters {
            limit: MAX_FORWARDED_PARAMS,
        }));
    }
    Ok(())
}

impl SearchQuery {
    /// True for `_summary=count`: the answer is nothing but the server's `total`.
    pub fn counts_only(&self) -> bool {
        self.summary.as_deref() == Some("count")
    }

    /// Serialise with `extra` (the caller's constraint) first. Parameter order is stable, so
    /// identical searches produce identical upstream URLs.
    pub fn to_query_string(&self, extra: &[(&str, String)]) -> String {
        let mut out = String::new();
        let mut push = |name: &str, value: &str| {
            if !out.is_empty() {
                out.push('&');
            }
            let _ = write!(out, "{}={}", encode(name), encode(value));
        };
        for (n, v) in extra {
            push(n, v);
        }
        for p in &self.params {
            let name = match &p.modifier {
                Some(m) => format!("{}:{m}", p.name),
                None => p.name.clone(),
            };
            push(&name, &p.value);
        }
        if let Some(v) = self.count {
            push("_count", &v.to_string());
        }
        if let Some(v) = self.offset {
            push("_offset", &v.to_string());
        }
        for (name, v) in [
            ("_sort", &self.sort),
            ("_summary", &self.summary),
            ("_elements", &self.elements),
            ("_total", &self.total),
        ] {
            if let Some(v) = v {
                push(name, v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<SearchQuery, Refusal> {
        parse_search(&decode_pairs(q), 100)
    }

    #[test]
    fn the_ig_parameters_are_the_allowlists_tail() {
        assert_eq!(
            IG_SEARCH_PARAMETERS,
            [
                "cpr",
                "ehmiMessageType",
                "entityIdentifier",
                "message-id",
                "orig-message-id",
                "participant-sor",
                "receiver-gln",
                "receiver-name",
                "receiver-sor",
                "receiverOrg",
                "sender-gln",
                "sender-name",
                "sender-sor",
                "senderOrg",
            ]
        );
    }

    #[test]
    fn ordinary_searches_round_trip() {
        let q = parse("message-id=MSG1&date=ge2025-01-01&_count=10&_sort=-date").unwrap();
        assert_eq!(
            q.to_query_string(&[]),
            "message-id=MSG1&date=ge2025-01-01&_count=10&_sort=-date"
        );
    }

    #[test]
    fn values_are_reencoded_so_separators_cannot_be_smuggled() {
        let q = parse("message-id=a%26_security%3Dx%7Cy").unwrap();
        assert_eq!(q.params[0].value, "a&_security=x|y");
        assert_eq!(q.to_query_string(&[]), "message-id=a%26_security%3Dx%7Cy");
    }

    #[test]
    fn count_is_clamped_and_validated() {
        assert_eq!(parse("_count=5000").unwrap().count, Some(100));
        let count = |name: &str| name.to_string();
        assert_eq!(
            parse("_count=-1"),
            Err(Refusal::Invalid(Invalid::NotAnInteger {
                name: count("_count")
            }))
        );
        assert_eq!(
            parse("_count=abc"),
            Err(Refusal::Invalid(Invalid::NotAnInteger {
                name: count("_count")
            }))
        );
        assert_eq!(
            parse("_count=1&_count=2"),
            Err(Refusal::Invalid(Invalid::RepeatedParameter {
                name: count("_count")
            }))
        );
    }

    #[test]
    fn forbidden_parameters_are_refused() {
        for (q, why) in [
            ("_include=AuditEvent:patient", "refused_parameter"),
            ("_include:iterate=AuditEvent:agent", "refused_parameter"),
            ("_revinclude=*", "refused_parameter"),
            ("_has:Provenance:target:agent=x", "reverse_chained"),
            ("_filter=x eq 1", "refused_parameter"),
            ("_query=everything", "refused_parameter"),
            ("_list=1", "refused_parameter"),
            ("_contained=true", "refused_parameter"),
            ("_containedType=contained", "refused_parameter"),
            ("_text=x", "refused_parameter"),
            ("_content=x", "refused_parameter"),
            ("_security=urn:x|y", "refused_parameter"),
            ("_security:not=urn:x|y", "refused_parameter"),
            ("_getpages=abc", "refused_parameter"),
            ("patient.name=x", "chained"),
            ("patient:Patient.name=x", "chained"),
            ("agent.identifier=x", "chained"),
            ("unknown=1", "unknown_parameter"),
            ("MESSAGE-ID=x", "unknown_parameter"),
            ("_format=xml", "format"),
            ("_pretty=yes", "not_a_boolean"),
            ("message-id:iterate=x", "modifier"),
            ("patient:Patient=1", "modifier"),
            ("type:in=http://vs", "modifier"),
            ("_id:exact%00=x", "malformed_parameter_name"),
            ("_sort=_security", "sort_key"),
            ("_count:foo=10", "modifier_on"),
            ("_sort:x=date", "modifier_on"),
        ] {
            assert_eq!(parse(q).map_err(|e| e.reason()), Err(why), "{q}");
        }
    }

    #[test]
    fn percent_encoded_names_are_decoded_before_matching() {
        assert_eq!(
            parse("%5Finclude=AuditEvent:patient"),
            Err(Refusal::Invalid(Invalid::RefusedParameter {
                why: "_include is not allowed"
            }))
        );
        assert_eq!(
            parse("_secur%69ty=x").map_err(|e| e.reason()),
            Err("refused_parameter")
        );
        assert!(parse("message%2Did=x").is_ok());
    }

    #[test]
    fn elements_always_keep_meta() {
        assert_eq!(
            parse("_elements=id,type").unwrap().elements.as_deref(),
            Some("id,type,meta")
        );
        assert_eq!(
            parse("_elements=meta").unwrap().elements.as_deref(),
            Some("meta")
        );
    }

    #[test]
    fn constraint_comes_first() {
        let q = parse("message-id=a").unwrap();
        assert_eq!(
            q.to_query_string(&[("_security", "urn:l|v".into())]),
            "_security=urn%3Al%7Cv&message-id=a"
        );
    }

    #[test]
    fn forwarded_targets_are_limited_in_bytes_and_parameters() {
        let at_limit = format!("/fhir/AuditEvent?message-id={}", "a".repeat(100));
        assert!(check_upstream_target(&at_limit, at_limit.len()).is_ok());
        assert_eq!(
            check_upstream_target(&at_limit, at_limit.len() - 1),
            Err(Refusal::UriTooLong(at_limit.len() - 1))
        );
        // A form body of 10,000 parameters merged into the URL: ~60 KB, refused as a whole.
        let form = "message-id=a&".repeat(10_000);
        let q = parse(&form).unwrap();
        let target = format!(
            "/fhir/AuditEvent?{}",
            q.to_query_string(&[("_security", "urn:l|v".into())])
        );
        assert!(target.len() > 60_000);
        assert_eq!(
            check_upstream_target(&target, 8192),
            Err(Refusal::UriTooLong(8192))
        );
        // Short parameters that fit the byte limit are counted.
        let many = |n: usize| format!("/fhir/AuditEvent?{}", vec!["_id=1"; n].join("&"));
        assert!(check_upstream_target(&many(MAX_FORWARDED_PARAMS), 8192).is_ok());
        assert_eq!(
            check_upstream_target(&many(MAX_FORWARDED_PARAMS + 1), 8192),
            Err(Refusal::Invalid(Invalid::TooManyParameters {
                limit: MAX_FORWARDED_PARAMS
            }))
        );
        assert!(check_upstream_target("/fhir/AuditEvent/abc/_history/1", 8192).is_ok());
        assert!(check_upstream_target("/fhir?_getpages=x&_bundletype=searchset", 8192).is_ok());
    }

    #[test]
    fn json_format_is_fine() {
        assert!(parse("_format=json&_pretty=true").is_ok());
        // Every JSON value a FHIR server takes (HAPI's EncodingEnum.forContentType): media
        // types with parameters (FHIR R4 http.html#version-parameter), in any case, the
        // legacy type, and an unescaped `+` that the query decoding turned into a space.
        for ok in [
            "_format=application/fhir%2Bjson",
            "_format=application/fhir+json",
            "_format=application/fhir%2Bjson;%20fhirVersion=4.0",
            "_format=Application/FHIR%2BJSON",
            "_format=application/json+fhir",
            "_format=application/json;charset=utf-8",
            "_format=text/json",
        ] {
            assert_eq!(
                parse(ok).map(|_| ()).map_err(|e| e.reason()),
                Ok(()),
                "{ok}"
            );
        }
        for refused in [
            "_format=xml",
            "_format=application/fhir%2Bxml",
            "_format=application/fhir+xml",
            "_format=html",
            "_format=",
            "_format=json&_format=xml",
            "_format=application/fhir json x",
        ] {
            assert_eq!(
                parse(refused).map(|_| ()).map_err(|e| e.reason()),
                Err("format"),
                "{refused}"
            );
        }
    }

    /// Output-shaping parameters are accepted and dropped: the forwarded search is exactly
    /// the one without them (never wider); anything unknown is still refused.
    #[test]
    fn dropped_parameters_never_change_the_search() {
        let plain = parse("message-id=M&_count=0").unwrap();
        for extra in [
            "&_totalMethod=count",
            "&_pretty=true",
            "&_format=application/fhir%2Bjson",
            "&_totalMethod=anything&_pretty=false&_format=json",
        ] {
            let q = parse(&format!("message-id=M&_count=0{extra}")).unwrap();
            assert_eq!(q, plain, "{extra}");
            assert_eq!(q.to_query_string(&[]), "message-id=M&_count=0");
        }
        assert_eq!(
            parse("_totalMethod:x=count").map_err(|e| e.reason()),
            Err("modifier_on")
        );
        assert_eq!(
            parse("_totalmethod=count").map_err(|e| e.reason()),
            Err("unknown_parameter")
        );
        for p in DROPPED_OUTPUT_PARAMETERS {
            assert!(!SEARCH_PARAMETERS.contains(p));
        }
    }
}
