//! Message framing of an HTTP/1.x request head (RFC 9112 §6): anything two HTTP parsers
//! could read as different message boundaries is refused, so no request can hide inside
//! another one on the way through a front proxy, the TLS terminator or this proxy.
//!
//! Pingora 0.9.1 already refuses, before the proxy sees the request: differing or unparsable
//! `Content-Length` values, a final transfer coding other than `chunked`, `Transfer-Encoding`
//! on HTTP/1.0, obs-fold and malformed field lines. It *accepts* — and this check refuses —
//! `Transfer-Encoding` together with `Content-Length` (Pingora drops the `Content-Length` and
//! reads chunked; RFC 9112 §6.1 allows that only with the connection closed afterwards, and a
//! front proxy that prefers `Content-Length` would see another request), a transfer-coding
//! list (`gzip, chunked`) or repeated `Transfer-Encoding` lines, repeated identical
//! `Content-Length` values (RFC 9110 §8.6 allows either), and a body on GET, HEAD, DELETE,
//! OPTIONS, TRACE or CONNECT.

use crate::error::{Invalid, Refusal};

/// Check the framing fields of `raw_head` (the request line and field lines as received, up
/// to the empty line; bare LF line ends are accepted like Pingora accepts them). `method` is
/// the parsed method. The caller must close the connection after answering a refusal: the
/// body's extent is exactly what is in doubt.
pub fn check(raw_head: &[u8], method: &str) -> Result<(), Refusal> {
    let mut transfer_encoding: Vec<&[u8]> = Vec::new();
    let mut content_length: Vec<&[u8]> = Vec::new();
    let lines = raw_head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip(1)
        .take_while(|l| !l.is_empty());
    for line in lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(Refusal::Invalid(Invalid::ObsFold));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(Refusal::Invalid(Invalid::NoColon));
        };
        let (name, value) = line.split_at(colon);
        let value = trim(value.get(1..).unwrap_or_default());
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding.push(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_length.push(value);
        }
    }
    if !transfer_encoding.is_empty() && !content_length.is_empty() {
        return Err(Refusal::Invalid(Invalid::LengthAndChunked));
    }
    match transfer_encoding.as_slice() {
        [] => {}
        [te] if te.eq_ignore_ascii_case(b"chunked") => {}
        _ => return Err(Refusal::Invalid(Invalid::TransferEncoding)),
    }
    let has_body = match content_length.as_slice() {
        [] => !transfer_encoding.is_empty(),
        [cl] if cl.iter().all(u8::is_ascii_digit) && !cl.is_empty() => {
            cl.iter().any(|d| *d != b'0')
        }
        _ => return Err(Refusal::Invalid(Invalid::ContentLength)),
    };
    if has_body && BODILESS.contains(&method) {
        return Err(Refusal::Invalid(Invalid::BodyNotAllowed {
            method: method.to_string(),
        }));
    }
    Ok(())
}

/// Methods whose content has no defined meaning (RFC 9110 §9.3): a front proxy may ignore
/// such a body and read it as the next request. PUT and PATCH bodies are framed like POST
/// ones and reach the classifier (405).
const BODILESS: &[&str] = &["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    let rest = v.get(start..).unwrap_or_default();
    let end = rest.len()
        - rest
            .iter()
            .rev()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
    rest.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, fields: &str) -> Vec<u8> {
        format!("{method} /fhir/AuditEvent/_search HTTP/1.1\r\nHost: x\r\n{fields}\r\n")
            .into_bytes()
    }

    #[test]
    fn ordinary_framing_passes() {
        for (method, fields) in [
            ("POST", "Content-Length: 12\r\n"),
            ("POST", "content-length:12 \r\n"),
            ("POST", "Transfer-Encoding: chunked\r\n"),
            ("POST", "Transfer-Encoding: Chunked\r\n"),
            ("POST", ""),
            ("GET", ""),
            ("GET", "Content-Length: 0\r\n"),
            ("PUT", "Content-Length: 5\r\n"),
            (
                "GET",
                "X-Content-Length: 5\r\nX-Transfer-Encoding: gzip\r\n",
            ),
        ] {
            assert!(
                check(&head(method, fields), method).is_ok(),
                "{method} {fields:?}"
            );
        }
        assert!(check(b"GET / HTTP/1.1\nHost: x\n\n", "GET").is_ok());
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (method, fields, why) in [
            (
                "POST",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "length_and_chunked",
            ),
            (
                "POST",
                "Transfer-Encoding: chunked\r\ncontent-length: 0\r\n",
                "length_and_chunked",
            ),
            (
                "POST",
                "Transfer-Encoding: gzip, chunked\r\n",
                "transfer_encoding",
            ),
            (
                "POST",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "transfer_encoding",
            ),
            (
                "POST",
                "Transfer-Encoding: identity\r\n",
                "transfer_encoding",
            ),
            (
                "POST",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "content_length",
            ),
            ("POST", "Content-Length: 5, 5\r\n", "content_length"),
            ("POST", "Content-Length: +5\r\n", "content_length"),
            ("POST", "Content-Length:\r\n", "content_length"),
            ("POST", "X-A: a\r\n folded\r\n", "obs_fold"),
            ("GET", "Content-Length: 5\r\n", "body_not_allowed"),
            ("GET", "Transfer-Encoding: chunked\r\n", "body_not_allowed"),
            ("DELETE", "Content-Length: 1\r\n", "body_not_allowed"),
            (
                "OPTIONS",
                "Transfer-Encoding: chunked\r\n",
                "body_not_allowed",
            ),
        ] {
            let r = check(&head(method, fields), method);
            assert!(matches!(r, Err(Refusal::Invalid(_))), "{method} {fields:?}");
            assert_eq!(r.map_err(|e| e.reason()), Err(why), "{method} {fields:?}");
        }
    }
}
