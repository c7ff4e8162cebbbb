//! The FHIR listener's per-connection loop: Pingora's `HttpServer` app with three changes
//! that are about the transport, not FHIR.
//!
//! 1. **Keep-alive as the request decided.** Pingora 0.9.1's `HttpServer` turns keep-alive on
//!    (60 s) for every request after reading it, overriding what `read_request` decided:
//!    `Connection: close`, HTTP/1.0, and RFC 9112 §6.1's "close after a request that had both
//!    `Transfer-Encoding` and `Content-Length`". Here the connection is reused only if
//!    Pingora's reading left keep-alive on (and the gateway did not turn it off).
//! 2. **An answer to an unreadable request head.** Pingora closes the connection without a
//!    word when the head is malformed or larger than its fixed 1 MiB read limit; this loop
//!    answers 400 (malformed) or 414 (over the limit) with an OperationOutcome, then closes.
//! 3. **No request data in its log lines.** Pingora's loop logs the raw request buffer
//!    (`Authorization` and body included) at ERROR when a head is malformed, the request head
//!    at TRACE and the response body at TRACE; this loop logs neither.

use std::sync::Arc;
use std::time::Instant;

use crate::tls::PeerChain;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{access_line, build_response, Answer, Gateway, Outcome, DRAIN_LIMIT, DRAIN_TIME};
use crate::error::{operation_outcome, Refusal};
use crate::lifecycle::{InFlight, Live};
use crate::metrics;

/// How long an idle HTTP/1.1 connection is kept for the next request (Pingora's own value).
const KEEPALIVE_SECONDS: u64 = 60;

/// Pingora 0.9.1's fixed limit on a request head (`MAX_HEADER_SIZE` in
/// `protocols/http/v1/common.rs`); not configurable.
pub(crate) const PINGORA_MAX_HEAD_BYTES: usize = 1_048_575;

/// The start of the context Pingora gives the error for a head above its limit
/// (`protocols/http/v1/server.rs`, `read_request`). Pinned by
/// `tests/adversarial.rs::adversarial_transport_framing`.
const HEAD_TOO_LARGE: &str = "Request header larger than";

/// The FHIR listener's app: the gateway behind the loop described above.
pub(crate) struct FhirApp {
    /// The live settings; each request loads the gateway once (`crate::lifecycle`).
    live: Arc<Live>,
}

impl FhirApp {
    pub(crate) fn new(live: Arc<Live>) -> FhirApp {
        FhirApp { live }
    }
}

#[async_trait]
impl HttpServerApp for FhirApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let started = Instant::now();
        let read = http.read_request().await;
        // From here to the written answer the request is in flight: a drain waits for it.
        let _in_flight = InFlight::start();
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                Box::pin(self.unreadable(
                    http,
                    e.etype(),
                    e.context.as_ref().map(|c| c.as_str()),
                    started,
                ))
                .await;
                return None;
            }
        }
        let reusable = http.get_keepalive().is_some() && !*shutdown.borrow();
        http.set_keepalive(reusable.then_some(KEEPALIVE_SECONDS));
        // One snapshot per request: a reload meanwhile does not change this request's rules.
        let gateway = self.live.gateway.load_full();
        // A reload since the handshake may have revoked the client's certificate.
        let tls = http.digest().and_then(|d| d.ssl_digest.clone());
        let peer_accepted = crate::tls::still_accepted(
            &self.live.tls,
            tls.as_deref().and_then(|d| d.extension.get::<PeerChain>()),
        );
        // Boxed: this future lives as long as the connection, idle between requests too, and
        // holds every state of its body inline; the request's own (kilobytes of checks) is
        // allocated only while a request is handled (PERFORMANCE.md, "Memory").
        let (parts, body) = Box::pin(gateway.response(&mut http, peer_accepted))
            .await
            .into_parts();
        // A drain that began while the request ran: this answer is the connection's last.
        if *shutdown.borrow() {
            http.set_keepalive(None);
        }
        let header: ResponseHeader = parts.into();
        if http.write_response_header(Box::new(header)).await.is_err() {
            log::debug!("the client went away before the response header was written");
            return None;
        }
        if !body.is_empty() && http.write_response_body(body.into(), true).await.is_err() {
            log::debug!("the client went away before the response body was written");
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(_) => None,
        }
    }
}

/// The answer to a request head Pingora could not read: `None` when there is nobody to answer
/// (the connection broke or timed out), else the status, reason label and OperationOutcome.
/// The text never repeats the client's bytes.
pub(crate) fn unreadable_answer(
    etype: &ErrorType,
    context: Option<&str>,
) -> Option<(u16, &'static str, Vec<u8>)> {
    if *etype != ErrorType::InvalidHTTPHeader {
        return None;
    }
    if context.is_some_and(|c| c.starts_with(HEAD_TOO_LARGE)) {
        // Pingora cannot say whether the request line or the fields overflowed; a URL is the
        // realistic case, and the issue code is the same either way.
        let text = format!(
            "the request line and headers exceed {PINGORA_MAX_HEAD_BYTES} bytes; request URLs are limited to far less (limits.max_uri_bytes)"
        );
        return Some((
            414,
            "uri_too_long",
            operation_outcome("error", "too-long", &text),
        ));
    }
    Some((
        400,
        "malformed_request",
        operation_outcome(
            "error",
            "invalid",
            "the request head is not valid HTTP/1.1, or its message framing is ambiguous (RFC 9112)",
        ),
    ))
}

impl FhirApp {
    async fn unreadable(
        &self,
        mut http: ServerSession,
        etype: &ErrorType,
        context: Option<&str>,
        started: Instant,
    ) {
        let Some((status, reason, body)) = unreadable_answer(etype, context) else {
            log::debug!("a connection closed before a whole request head arrived");
            return;
        };
        let request_id = self.live.gateway.load().next_request_id();
        metrics::REQUESTS
            .with_label_values(&["unknown", "none", "refused", reason])
            .inc();
        let outcome = Outcome {
            interaction: "unknown",
            principal: "none",
            reason,
            ..Outcome::default()
        };
        access_line(
            &request_id,
            http.client_addr().map(|a| a as &dyn std::fmt::Display),
            None,
            &outcome,
            status,
            started,
            body.len(),
        );
        let answer = Answer {
            status,
            body,
            headers: Vec::new(),
        };
        let (parts, body) = build_response(answer, &request_id).into_parts();
        // `write_error_response` turns keep-alive off.
        if http
            .write_error_response(parts.into(), body.into())
            .await
            .is_err()
        {
            return;
        }
        // Read (and drop) what the client is still sending, so closing does not reset the
        // connection under the answer before the client has read it; stop as soon as it is
        // quiet.
        if let ServerSession::H1(h1) = http {
            let mut stream = h1.into_inner();
            let drain = async {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = 0usize;
                let quiet = std::time::Duration::from_millis(100);
                while let Ok(Ok(n)) = tokio::time::timeout(quiet, stream.read(&mut buf)).await {
                    seen = seen.saturating_add(n);
                    if n == 0 || seen > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Milliseconds since `started`, to the microsecond: log lines carry no long digit runs
/// (which the redaction would take for CPR numbers) and no false precision.
pub(super) fn millis(started: Instant) -> f64 {
    started.elapsed().as_micros() as f64 / 1000.0
}

impl Gateway {
    /// RFC 9112 §6 framing of an HTTP/1.x request (`crate::framing::check`); a refused
    /// request's connection is closed after the answer, since where its body ends is exactly
    /// what is in doubt. HTTP/2 frames bodies itself.
    pub(super) fn check_framing(&self, session: &mut ServerSession) -> Result<(), Refusal> {
        let Some(h1) = session.as_http1() else {
            return Ok(());
        };
        let raw = h1.get_headers_raw_bytes();
        let result = crate::framing::check(&raw, session.req_header().method.as_str());
        if result.is_err() {
            session.set_keepalive(None);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome");
        v["issue"][0]["code"].as_str().unwrap().to_string()
    }

    #[test]
    fn unreadable_heads_are_answered_without_echoing_them() {
        let (status, reason, body) = unreadable_answer(
            &ErrorType::InvalidHTTPHeader,
            Some("Request header larger than 1048575"),
        )
        .unwrap();
        assert_eq!(
            (status, reason, code(&body).as_str()),
            (414, "uri_too_long", "too-long")
        );
        let (status, reason, body) = unreadable_answer(
            &ErrorType::InvalidHTTPHeader,
            Some("buf: GET /fhir/AuditEvent/0101019999 HTTP/1.1\r\nAuthorization: Bearer x"),
        )
        .unwrap();
        assert_eq!(
            (status, reason, code(&body).as_str()),
            (400, "malformed_request", "invalid")
        );
        assert!(!String::from_utf8_lossy(&body).contains("0101019999"));
        // A broken or silent connection has nobody to answer.
        assert!(unreadable_answer(&ErrorType::ReadError, None).is_none());
        assert!(unreadable_answer(&ErrorType::ConnectionClosed, Some("x")).is_none());
    }
}
