//! What may reach a log line. Two pure decisions the logger (`crate::logging`) and the access
//! log rely on:
//!
//! - [`redact`]: the last line of defence, run over every formatted log line (the MinLog
//!   audit records are not log lines: they go to their own sink, `audit.path`). It replaces whatever *looks like* a secret or a person number,
//!   whoever wrote the line (this crate, Pingora, rustls, …): JWTs, `Bearer` tokens, the values
//!   of `Authorization`/`Cookie`-like fields, PEM blocks and CPR-like numbers.
//! - [`path_template`]: the request path as the access log shows it, with every id and every
//!   piece of client text replaced by a placeholder.
//!
//! [`sanitize`] combines them with the per-source policy (which records are withheld, which are
//! cut, which are exempt) so the whole decision is testable without a logger.

use std::borrow::Cow;

/// Placeholders written instead of what was removed. They are fixed strings, so a reader sees
/// that (and what kind of) something was removed, and the line keeps its shape.
pub const JWT: &str = "[jwt]";
/// Written instead of a credential value (password, secret, authorization header, cookie).
pub const SECRET: &str = "[redacted]";
/// Written instead of a PEM block (keys, certificates).
pub const PEM: &str = "[pem]";
/// Written instead of a CPR number (ten digits, with or without the dash).
pub const CPR: &str = "[cpr]";

/// Field names whose value is a credential wherever they appear (`name: value`, `name=value`,
/// `"name": "value"`), compared ASCII case-insensitively. `authorization` also covers
/// `Proxy-Authorization`, `cookie` also `Set-Cookie`.
const SECRET_FIELDS: &[&str] = &[
    "authorization",
    "cookie",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "client_assertion",
    "password",
];

/// Replace everything in `line` that looks like a token, a credential, a certificate or a
/// CPR number. One pass over the bytes with no allocation when nothing is found (the common
/// case: access-log lines are built from templates and fixed labels), so it is cheap enough
/// for every line. What is replaced, and why each rule is shaped as it is:
///
/// - **JWT / JWS / JWE**: a run of base64url characters and dots starting with `eyJ` (the
///   base64url form of `{"`, how every JOSE header and JSON claims segment begins), not
///   preceded by a base64url character → `[jwt]`. A payload segment seen on its own is caught
///   too; host names and version numbers (`a.b.c`) are not.
/// - **`Bearer <token>`** (any case) → `Bearer [redacted]`, whatever the token looks like (a
///   client can send garbage).
/// - **credential fields** (`SECRET_FIELDS`) followed by `:` or `=` (optionally quoted, as
///   in a header map's `Debug` output): the value up to the next quote, backslash, CR or LF
///   → `[redacted]`. This covers raw request heads, escaped buffers (`\r\n` printed as text)
///   and `Debug` output of header maps.
/// - **PEM blocks** `-----BEGIN … -----END …-----` (or to the end of the line if cut) →
///   `[pem]`.
/// - **CPR-like numbers**: exactly ten digits, or six digits, `-`, four digits, not part of a
///   longer digit run → `[cpr]`. No date check: a ten-digit epoch second lost from a log line
///   is a small price for never printing a replacement CPR (day + 60) or a typo'd one.
///
/// A hyphenated UUID (8-4-4-4-12 hex digits, not inside a longer word) is kept whole: the
/// request ids (UUID v7) of the access log would otherwise lose one in forty to the CPR rule
/// (ten decimal digits in a row in their last group), and a UUID never holds a CPR number
/// this crate wrote.
pub fn redact(line: &str) -> Cow<'_, str> {
    let b = line.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if inside_word(b, i) {
            i += 1;
            continue;
        }
        if let Some(len) = uuid_at(b, i) {
            i += len;
            continue;
        }
        match secret_at(b, i) {
            Some((start, end, placeholder)) => {
                // Every start and end is next to an ASCII byte, so both are char boundaries.
                let o = out.get_or_insert_with(|| String::with_capacity(line.len()));
                o.push_str(line.get(copied..start).unwrap_or_default());
                o.push_str(placeholder);
                copied = end;
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(line),
        Some(mut o) => {
            o.push_str(line.get(copied..).unwrap_or_default());
            Cow::Owned(o)
        }
    }
}

/// True when no rule can start at `b[i]`, so the scan may step over it: a byte that is
/// neither a letter, a digit nor `-` (every rule starts with one of those: a UUID with a hex
/// digit, a JWT with `e`, a PEM block with `-`, a CPR number with a digit, a field name or
/// `Bearer` with a letter), or a letter or digit right after a letter or digit, except a
/// digit after a letter (a CPR-like number may start there) and a byte after a printed escape
/// (`\n`, `\r`, `\t`), where a word starts (every letter and digit rule needs a word start,
/// [`starts_word`], and a UUID a non-word byte before it). So this only skips work
/// (`tests::skipping_inside_words_changes_nothing`).
fn inside_word(b: &[u8], i: usize) -> bool {
    let Some(&c) = b.get(i) else {
        return false;
    };
    if !c.is_ascii_alphanumeric() {
        return c != b'-';
    }
    let Some(&p) = i.checked_sub(1).and_then(|k| b.get(k)) else {
        return false;
    };
    p.is_ascii_alphanumeric()
        && (p.is_ascii_digit() || !c.is_ascii_digit())
        && !(matches!(p, b'n' | b'r' | b't')
            && i.checked_sub(2).and_then(|k| b.get(k)) == Some(&b'\\'))
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// RFC 6750 §2.1 `b64token` characters.
fn is_token68(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn starts_with_ignore_case(b: &[u8], i: usize, pat: &str) -> bool {
    b.get(i..i + pat.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(pat.as_bytes()))
}

fn run(b: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    b.get(from..)
        .map_or(0, |s| s.iter().take_while(|c| pred(**c)).count())
}

/// True if `b[i]` starts a word: the byte before is not a word byte, or it ends a printed
/// escape (`\n`, `\r`, `\t`), as in Pingora's `escape_ascii` dumps of a request buffer.
fn starts_word(b: &[u8], i: usize, is_word: impl Fn(u8) -> bool) -> bool {
    let at = |k: usize| i.checked_sub(k).and_then(|p| b.get(p)).copied();
    match at(1) {
        None => true,
        Some(p) if !is_word(p) => true,
        Some(b'n' | b'r' | b't') => at(2) == Some(b'\\'),
        Some(_) => false,
    }
}

/// The secret starting at `i`: (first byte to replace, end, placeholder).
fn secret_at(b: &[u8], i: usize) -> Option<(usize, usize, &'static str)> {
    let c = *b.get(i)?;
    match c {
        b'0'..=b'9' if starts_word(b, i, |p| p.is_ascii_digit()) => cpr_at(b, i),
        b'e' if b.get(i..).is_some_and(|s| s.starts_with(b"eyJ"))
            && starts_word(b, i, is_b64url) =>
        {
            let end = i + run(b, i, |c| is_b64url(c) || c == b'.' || c == b'=');
            Some((i, end, JWT))
        }
        b'-' if b.get(i..).is_some_and(|s| s.starts_with(b"-----BEGIN ")) => {
            let rest = b.get(i..).unwrap_or_default();
            let end = find(rest, b"-----END ")
                .and_then(|e| {
                    let after = e + "-----END ".len();
                    find(rest.get(after..)?, b"-----").map(|d| after + d + "-----".len())
                })
                .map_or(b.len(), |e| i + e);
            Some((i, end, PEM))
        }
        _ if c.is_ascii_alphabetic() && starts_word(b, i, |p| p.is_ascii_alphanumeric()) => {
            // Only names starting with this letter can match (most words start with none).
            let first = c.to_ascii_lowercase();
            if first == b'b' && starts_with_ignore_case(b, i, "bearer") {
                let after = i + "bearer".len();
                let spaces = run(b, after, |c| c == b' ' || c == b'\t');
                let token = run(b, after + spaces, is_token68);
                if spaces > 0 && token > 0 {
                    let start = after + spaces;
                    return Some((start, start + token, SECRET));
                }
                return None;
            }
            let name = SECRET_FIELDS
                .iter()
                .filter(|n| n.as_bytes().first() == Some(&first))
                .find(|n| starts_with_ignore_case(b, i, n))?;
            field_value(b, i + name.len())
        }
        _ => None,
    }
}

/// The value after a credential field name: `name` + optional quote + spaces + `:`/`=` +
/// spaces + optional quote, then everything up to a quote, backslash, CR or LF (after `=`,
/// as in a form or query, also up to `&`, `,` or white space).
fn field_value(b: &[u8], mut j: usize) -> Option<(usize, usize, &'static str)> {
    if matches!(b.get(j), Some(b'"' | b'\'')) {
        j += 1;
    }
    j += run(b, j, |c| c == b' ' || c == b'\t');
    let form = match b.get(j) {
        Some(b':') => false,
        Some(b'=') => true,
        _ => return None,
    };
    j += 1;
    j += run(b, j, |c| c == b' ' || c == b'\t');
    if matches!(b.get(j), Some(b'"' | b'\'')) {
        j += 1;
    }
    let len = run(b, j, |c| {
        !(matches!(c, b'"' | b'\'' | b'\\' | b'\r' | b'\n')
            || (form && (c == b'&' || c == b',' || c.is_ascii_whitespace())))
    });
    (len > 0).then_some((j, j + len, SECRET))
}

/// Exactly ten digits, or `DDMMYY-NNNN`, not followed by another digit.
fn cpr_at(b: &[u8], i: usize) -> Option<(usize, usize, &'static str)> {
    let digits = run(b, i, |c| c.is_ascii_digit());
    if digits == 10 {
        return Some((i, i + 10, CPR));
    }
    if digits == 6 && b.get(i + 6) == Some(&b'-') && run(b, i + 7, |c| c.is_ascii_digit()) == 4 {
        return Some((i, i + 11, CPR));
    }
    None
}

/// The length of the hyphenated UUID starting at `i` (36), if there is one that is a word of
/// its own (no letter, digit, `-` or `_` right before or after).
fn uuid_at(b: &[u8], i: usize) -> Option<usize> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    if i > 0 && b.get(i - 1).is_some_and(|c| word(*c)) {
        return None;
    }
    // The first group's end: most positions fail here, before any run is counted.
    if b.get(i + 8) != Some(&b'-') {
        return None;
    }
    let mut j = i;
    for (n, len) in GROUPS.iter().enumerate() {
        if n > 0 {
            if b.get(j) != Some(&b'-') {
                return None;
            }
            j += 1;
        }
        if run(b, j, |c| c.is_ascii_hexdigit()) < *len {
            return None;
        }
        j += len;
    }
    if b.get(j).is_some_and(|c| word(*c)) {
        return None;
    }
    Some(j - i)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The access log's `path`: the request path with ids and client text replaced, relative to
/// the public base path (`/fhir`, or empty). Known shapes keep their literal segments
/// (`/fhir/AuditEvent/{id}/_history/{vid}`, `/fhir/AuditEvent/_search`, `/fhir/metadata`,
/// `/fhir` for paging); `$operations` become `{operation}`; anything else under the base is
/// `<base>/{other}`, and a path outside the base is `{other}`: never a byte the client chose.
pub fn path_template(path: &str, base_path: &str) -> String {
    let base = base_path.trim_end_matches('/');
    match template_suffix(path, base) {
        Some("") if base.is_empty() => "/".to_string(),
        Some(suffix) => format!("{base}{suffix}"),
        None => "{other}".to_string(),
    }
}

fn template_suffix(path: &str, base: &str) -> Option<&'static str> {
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() || rest == "/" {
        return Some("");
    }
    let rest = rest.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = rest.split('/');
    let s = [
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ];
    if segments.next().is_some() {
        return Some("/{other}");
    }
    Some(match s {
        [Some("metadata"), None, ..] => "/metadata",
        [Some("AuditEvent"), None, ..] => "/AuditEvent",
        [Some("AuditEvent"), Some("_search"), None, _] => "/AuditEvent/_search",
        [Some("AuditEvent"), Some("_history"), None, _] => "/AuditEvent/_history",
        [Some("AuditEvent"), Some(op), None, _] if op.starts_with('$') => "/AuditEvent/{operation}",
        [Some("AuditEvent"), Some(_), None, _] => "/AuditEvent/{id}",
        [Some("AuditEvent"), Some(_), Some(op), None] if op.starts_with('$') => {
            "/AuditEvent/{id}/{operation}"
        }
        [Some("AuditEvent"), Some(_), Some("_history"), None] => "/AuditEvent/{id}/_history",
        [Some("AuditEvent"), Some(_), Some("_history"), Some(_)] => {
            "/AuditEvent/{id}/_history/{vid}"
        }
        _ => "/{other}",
    })
}

/// Where a log record comes from, as far as the redaction policy cares. No source is exempt:
/// the MinLog audit records, which name CPR numbers on purpose, are written to their own sink
/// (`audit.path`), never to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any record this crate writes.
    Own,
    /// A dependency (Pingora, rustls, h2, reqwest, …).
    Dependency,
}

impl Source {
    /// `module_path` of a `log::Record` (the target plays no part: a record on any target,
    /// `audit` included, is redacted).
    pub fn of(_target: &str, module_path: Option<&str>) -> Source {
        let own = module_path.is_some_and(|m| m == "eds_proxy" || m.starts_with("eds_proxy::"));
        if own {
            Source::Own
        } else {
            Source::Dependency
        }
    }
}

/// The text a log record may be written with.
///
/// - `static_text`: a message without runtime values (`format_args!` with no arguments) is
///   code, not data, and passes (redacted all the same).
/// - A dependency's record **with runtime values, at any level**, is withheld: Pingora prints
///   request heads, body chunks and response bodies at debug/trace, the raw request buffer
///   (`buf: …`) and the request summary (method, full URI, `Host`) at ERROR, rustls the
///   client's SNI text at WARN; no pattern can recognise an arbitrary id or body. The line
///   keeps its level, target and source location, so an operator can still see that
///   something happened and where.
/// - This crate's own records are redacted.
pub fn sanitize<'a>(
    source: Source,
    static_text: bool,
    location: &str,
    message: &'a str,
) -> Cow<'a, str> {
    match source {
        Source::Dependency if !static_text => Cow::Owned(format!(
            "[message withheld: may carry request data; {location}]"
        )),
        Source::Dependency | Source::Own => redact(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT_SAMPLE: &str =
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4IiwiY3ByIjoiMDEwMTAxOTk5OSJ9.c2lnbmF0dXJl";

    /// `redact` without the [`inside_word`] skip: the rules alone.
    fn redact_unskipped(line: &str) -> String {
        let b = line.as_bytes();
        let mut out = String::new();
        let mut copied = 0;
        let mut i = 0;
        while i < b.len() {
            if let Some(len) = uuid_at(b, i) {
                i += len;
                continue;
            }
            match secret_at(b, i) {
                Some((start, end, placeholder)) => {
                    out.push_str(&line[copied..start]);
                    out.push_str(placeholder);
                    copied = end;
                    i = end.max(i + 1);
                }
                None => i += 1,
            }
        }
        out.push_str(&line[copied..]);
        out
    }

    #[test]
    fn skipping_inside_words_changes_nothing() {
        // Lines built from the fragments every rule looks at, in random order (a fixed
        // xorshift sequence, so a failure repeats): the skip must give the same line.
        let pieces = [
            "eyJ",
            "eyJhbGciOi",
            ".",
            "=",
            "Bearer",
            "bearer ",
            " ",
            "\t",
            "\\n",
            "\\r",
            "\\t",
            "\n",
            "Authorization",
            "authorization",
            "cookie",
            "password",
            "access_token",
            ":",
            "\"",
            "'",
            "&",
            ",",
            "0101019999",
            "010101-9999",
            "12345",
            "99999",
            "-",
            "-----BEGIN ",
            "-----END ",
            "-----",
            "01a22a6b-5425-75fe-b0ac-78a1128caf89",
            "ab",
            "x",
            "n",
            "r",
            "t",
            "Z",
            "9",
            "_",
            "{",
            "}",
            "\\",
            "æ",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut line = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = 1 + (state % 12) as usize;
            for _ in 0..n {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                line.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            assert_eq!(redact(&line), redact_unskipped(&line), "{line:?}");
        }
        let access = r#"[2026-11-30T03:06:46Z INFO  access] {"bytes_in":12293,"bytes_out":3420,"client":"127.0.0.1:57598","decision":"allowed","dropped":0,"duration_ms":6.214,"interaction":"create","method":"POST","path":"/fhir/AuditEvent","principal":"station","principal_id":"glbgjfohojihjdhgddclacmcoakcoceg","reason":"ok","request_id":"01a22a6b-5425-75fe-b0ac-78a1128caf89","status":201,"ts":"2026-11-30T03:06:46.699413894Z","upstream_ms":6.118}"#;
        assert!(matches!(redact(access), Cow::Borrowed(_)));
        // `secret_at` compares a word's lower-cased first letter with the names'.
        assert!(SECRET_FIELDS
            .iter()
            .all(|n| !n.bytes().any(|c| c.is_ascii_uppercase())));
    }

    #[test]
    fn tokens_and_credentials_are_replaced() {
        let cases = [
            (
                format!("token {JWT_SAMPLE} end"),
                "token [jwt] end".to_string(),
            ),
            (
                "payload eyJzdWIiOiJ4In0 only".into(),
                "payload [jwt] only".into(),
            ),
            (
                "Authorization: Bearer MARKER.TOKEN.x\r\nHost: a".into(),
                "Authorization: [redacted]\r\nHost: a".into(),
            ),
            (
                r"buf: POST / HTTP/1.1\r\nauthorization: Bearer abc.def\r\n".into(),
                r"buf: POST / HTTP/1.1\r\nauthorization: [redacted]\r\n".into(),
            ),
            (
                r#"{"authorization": "DPoP xyz", "host": "h"}"#.into(),
                r#"{"authorization": "[redacted]", "host": "h"}"#.into(),
            ),
            (
                "said bearer  tok_en=".into(),
                "said bearer  [redacted]".into(),
            ),
            (
                "Cookie: s=1; t=2\nSet-Cookie: a=b".into(),
                "Cookie: [redacted]\nSet-Cookie: [redacted]".into(),
            ),
            (
                "access_token=abc&client_secret=s3cret".into(),
                "access_token=[redacted]&client_secret=[redacted]".into(),
            ),
            (
                "key -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY----- after".into(),
                "key [pem] after".into(),
            ),
            (
                "cut -----BEGIN CERTIFICATE-----\nMIIB".into(),
                "cut [pem]".into(),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(&input), want, "{input}");
        }
    }

    #[test]
    fn cpr_like_numbers_are_replaced_but_not_other_numbers() {
        let cases = [
            ("cpr 0101019999.", "cpr [cpr]."),
            ("cpr|010101-9999,x", "cpr|[cpr],x"),
            ("/AuditEvent/0101019999/x", "/AuditEvent/[cpr]/x"),
            ("a0101019999b", "a[cpr]b"),
            ("0101019999 0101019999", "[cpr] [cpr]"),
            ("12345678901 ms", "12345678901 ms"),
            ("123456789 ok", "123456789 ok"),
            ("1234567-8901", "1234567-8901"),
            (
                "12:30:00.123456 127.0.0.1:8443",
                "12:30:00.123456 127.0.0.1:8443",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn ordinary_lines_are_borrowed_unchanged() {
        for line in [
            r#"{"ts":"2025-01-01T00:00:00.123456789Z","request_id":"1a-2","client":"127.0.0.1:5000","method":"GET","path":"/fhir/AuditEvent/{id}","status":200,"duration_ms":1.25}"#,
            "Downstream handshake error from 127.0.0.1:4000: invalid peer certificate: UnknownIssuer",
            "host a.b.c version 1.2.3, authorization granted, eyeJ",
            "non-ASCII æøå",
        ] {
            assert!(matches!(redact(line), Cow::Borrowed(_)), "{line}");
        }
        // Multi-byte characters around a match stay intact.
        assert_eq!(redact("æ0101019999ø"), "æ[cpr]ø");
    }

    #[test]
    fn access_log_paths_are_templates() {
        let cases = [
            ("/fhir/AuditEvent/0101019999", "/fhir/AuditEvent/{id}"),
            (
                "/fhir/AuditEvent/abc/_history/2",
                "/fhir/AuditEvent/{id}/_history/{vid}",
            ),
            (
                "/fhir/AuditEvent/abc/_history",
                "/fhir/AuditEvent/{id}/_history",
            ),
            ("/fhir/AuditEvent/_search", "/fhir/AuditEvent/_search"),
            ("/fhir/AuditEvent/_history", "/fhir/AuditEvent/_history"),
            ("/fhir/AuditEvent/$validate", "/fhir/AuditEvent/{operation}"),
            (
                "/fhir/AuditEvent/1/$meta",
                "/fhir/AuditEvent/{id}/{operation}",
            ),
            ("/fhir/AuditEvent", "/fhir/AuditEvent"),
            ("/fhir/AuditEvent/", "/fhir/AuditEvent"),
            ("/fhir/metadata", "/fhir/metadata"),
            ("/fhir", "/fhir"),
            ("/fhir/", "/fhir"),
            ("/fhir/Patient/0101019999", "/fhir/{other}"),
            ("/fhir/AuditEvent/a/b/c/d", "/fhir/{other}"),
            ("/fhir0101019999", "{other}"),
            ("/other/x", "{other}"),
            ("*", "{other}"),
        ];
        for (path, want) in cases {
            assert_eq!(path_template(path, "/fhir"), want, "{path}");
            assert_eq!(path_template(path, "/fhir/"), want, "{path}");
        }
        assert_eq!(path_template("/", ""), "/");
        assert_eq!(path_template("/AuditEvent/x", ""), "/AuditEvent/{id}");
        assert_eq!(path_template("relative", ""), "{other}");
    }

    #[test]
    fn the_policy_per_source() {
        let secret = format!("Authorization: Bearer {JWT_SAMPLE}\ncpr 0101019999");
        // No log line names a CPR, the `audit` target's included (records have their own sink).
        assert_eq!(
            sanitize(
                Source::of("audit", Some("eds_proxy::gateway")),
                false,
                "x",
                &secret
            ),
            "Authorization: [redacted]\ncpr [cpr]"
        );
        let own = sanitize(Source::Own, false, "x", &secret);
        assert_eq!(own, "Authorization: [redacted]\ncpr [cpr]");
        // A dependency's record with values is withheld at every level, its fixed texts pass.
        for message in [
            "chunk: a-body-id",
            r#"HTTP server fails to read from downstream: InvalidHTTPHeader context: buf: "GET /fhir/AuditEvent/abc HTTP/1.1\r\nX: y""#,
            "HTTP server fails to write to downstream: WriteError, GET /metrics?id=abc&cpr=010170%201234, Host: h",
            r#"Illegal SNI hostname received "010170 1234""#,
        ] {
            assert_eq!(
                sanitize(Source::Dependency, false, "http_app.rs:84", message),
                "[message withheld: may carry request data; http_app.rs:84]"
            );
        }
        assert_eq!(
            sanitize(Source::Dependency, true, "x", "HTTP response written."),
            "HTTP response written."
        );
        // A request id (UUID v7) stays whole even where its last group has ten digits in a
        // row; the same digits elsewhere are still a CPR.
        let id = "0193a1b2-7c3d-7e4f-8a5b-a0123456789b";
        let line = format!(r#"{{"request_id":"{id}","x":"0123456789"}}"#);
        assert_eq!(
            redact(&line),
            format!(r#"{{"request_id":"{id}","x":"[cpr]"}}"#)
        );
        // Not a UUID of its own: redacted as before.
        assert_eq!(
            redact("x0193a1b2-7c3d-7e4f-8a5b-a0123456789b"),
            "x0193a1b2-7c3d-7e4f-8a5b-a[cpr]b"
        );
        assert_eq!(
            Source::of("audit", Some("pingora_core::x")),
            Source::Dependency
        );
        assert_eq!(
            Source::of("access", Some("eds_proxy::gateway")),
            Source::Own
        );
        assert_eq!(Source::of("eds_proxy", Some("eds_proxy")), Source::Own);
        assert_eq!(Source::of("x", None), Source::Dependency);
    }
}
