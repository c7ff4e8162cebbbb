//! The request pipeline on Pingora's HTTP server: TLS peer certificate → principal →
//! interaction → constrained upstream request → verified response.
//!
//! eds-proxy is a buffering gateway rather than a streaming proxy: a response is checked in
//! full before its status line is sent (a read of someone else's record must become 404), so
//! it answers whole requests (`Gateway::response`, called by `listener`) and talks to the
//! FHIR server through Pingora's pooled upstream connector. All decisions are made by the pure modules in `auth` and `fhir`.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod authn;
pub(crate) mod listener;
pub(crate) mod probe;
pub(crate) mod upstream;

use std::sync::Arc;
use std::time::Instant;

use http::Response;
use pingora::protocols::http::ServerSession;

use crate::auth::principal::Principal;
use crate::cvr_directory::CvrDirectory;
use crate::error::{BadGateway, Invalid, Refusal, TokenFailure};
use crate::fhir::compat::{self, ReturnPreference};
use crate::fhir::interaction::{self, Interaction, RequestParts};
use crate::fhir::labels::{Constraint, LabelSystems};
use crate::fhir::paging::PageSigner;
use crate::fhir::plan::{self, AnswerCheck, Plan};
use crate::fhir::response::{self, ResourceCheck, ResponseContext};
use crate::metrics;
use authn::Authenticator;
use upstream::{Upstream, UpstreamResponse};

pub(crate) struct Gateway {
    pub authenticator: Arc<Authenticator>,
    pub upstream: Upstream,
    pub labels: LabelSystems,
    pub directory: CvrDirectory,
    pub signer: PageSigner,
    pub public_base: String,
    pub public_base_path: String,
    pub upstream_base: String,
    pub max_body_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_count: u32,
    /// `response.drop_totals`: no `total` in searchsets, `_summary=count` refused.
    pub drop_totals: bool,
    pub capability: Vec<u8>,
    /// Where MinLog audit records go (`audit.path`).
    pub audit: audit::AuditSink,
    /// Key of the pseudonymous principal ids (`crate::audit::pseudonym_key`).
    pub pseudonym_key: Vec<u8>,
    /// The backend conformance probe's verdict (`None`: probe off).
    pub probe: Option<Arc<probe::ProbeState>>,
}

/// Most request body bytes read (and discarded) before a 413 is answered.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
/// Longest wait for the rest of an oversized body before answering 413.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The one access-log line (log target `access`) of a request: `request` is its method and
/// path template, `None` for a head that could not be read; `bytes_out` the length of the
/// content sent (after compression; 0 for a HEAD or a 304). Fields: `ts`, `request_id`, `client`, `method`, `path` (ids and values replaced:
/// `redact::path_template`), `interaction`, `principal` (kind), `principal_id` (pseudonym,
/// `crate::audit::pseudonym`), `decision`, `reason`, `status`, `dropped`, `duration_ms`,
/// `upstream_ms` (time waiting for the FHIR server), `bytes_in`, `bytes_out`.
fn access_line(
    request_id: &str,
    client: Option<&dyn std::fmt::Display>,
    request: Option<(&str, &str)>,
    o: &Outcome,
    status: u16,
    started: Instant,
    bytes_out: usize,
) {
    let ts = now_rfc3339();
    let line = AccessLine {
        ts: &ts,
        request_id,
        client: client.map(Shown),
        method: request.map(|(m, _)| m),
        path: request.map(|(_, p)| p),
        interaction: o.interaction,
        principal: o.principal,
        principal_id: o.pseudonym.as_deref(),
        decision: decision(status),
        status,
        reason: if status < 400 { "ok" } else { o.reason },
        dropped: o.dropped,
        duration_ms: listener::millis(started),
        upstream_ms: o.upstream_ms,
        bytes_in: o.bytes_in,
        bytes_out,
    };
    // Serialising borrowed fields cannot fail; if it ever did, the line says so rather than
    // vanishing.
    match serde_json::to_string(&line) {
        Ok(text) => log::info!(target: "access", "{text}"),
        Err(_) => log::error!(target: "access", "access log line not serialisable"),
    }
}

/// One access-log line as JSON: serialised straight from borrowed fields (no intermediate
/// `serde_json::Value`). Fields in alphabetical order, the order the line had when it was
/// built as a `Value` (a sorted map), so readers see the same line.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    bytes_in: usize,
    bytes_out: usize,
    client: Option<Shown<&'a dyn std::fmt::Display>>,
    decision: &'static str,
    dropped: usize,
    duration_ms: f64,
    interaction: &'a str,
    method: Option<&'a str>,
    path: Option<&'a str>,
    principal: &'a str,
    principal_id: Option<&'a str>,
    reason: &'a str,
    request_id: &'a str,
    status: u16,
    ts: &'a str,
    upstream_ms: f64,
}

/// A value serialised as a JSON string through its `Display`, without an intermediate
/// `String`.
struct Shown<T>(T);

impl<T: std::fmt::Display> serde::Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `allowed` for an answer below 400, else `refused`: the access log's `decision` and the
/// `decision` label of `eds_proxy_requests_total`.
fn decision(status: u16) -> &'static str {
    if status < 400 {
        "allowed"
    } else {
        "refused"
    }
}

/// The time now, RFC 3339 UTC (access log and audit records).
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A finished answer before it becomes an HTTP response.
struct Answer {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn ok(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status,
            body,
            headers: Vec::new(),
        }
    }
    fn refusal(r: &Refusal) -> Answer {
        Answer {
            status: r.status(),
            body: r.outcome_json(),
            headers: r.headers(),
        }
    }
}

/// What the client asked for beyond the interaction itself: how the answer is shaped
/// (`fhir::compat`), never what it may contain.
#[derive(Default)]
struct ClientAsks {
    /// `If-None-Match` (all field lines joined), for a conditional read.
    if_none_match: Option<String>,
    /// `If-Modified-Since`, for a conditional read.
    if_modified_since: Option<String>,
    /// `Prefer: return=…` of a create.
    prefer: Option<ReturnPreference>,
}

/// Every field line of `name` that is visible ASCII, in order.
fn header_values<'a>(session: &'a ServerSession, name: &str) -> Vec<&'a str> {
    session
        .req_header()
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Several field lines of a list header as one value (RFC 9110 §5.3).
fn joined(session: &ServerSession, name: &str) -> Option<String> {
    let values = header_values(session, name);
    (!values.is_empty()).then(|| values.join(", "))
}

/// The read or vread being answered and what its client asked for.
struct ReadAsked<'a> {
    id: &'a str,
    version: Option<&'a str>,
    asks: &'a ClientAsks,
}

/// What the access log and metrics learn about one request.
#[derive(Default)]
struct Outcome {
    interaction: &'static str,
    principal: &'static str,
    reason: &'static str,
    dropped: usize,
    /// The caller's pseudonymous id, once authenticated.
    pseudonym: Option<String>,
    /// Milliseconds spent waiting for the FHIR server.
    upstream_ms: f64,
    /// Request body bytes read.
    bytes_in: usize,
}

impl Gateway {
    /// The answer to the request of `session`. `peer_accepted`: the connection's client
    /// certificate is still accepted by the TLS settings in force
    /// (`crate::tls::still_accepted`); if not, every request is refused.
    pub(crate) async fn response(
        &self,
        session: &mut ServerSession,
        peer_accepted: bool,
    ) -> Response<Vec<u8>> {
        let started = Instant::now();
        let request_id = self.next_request_id();
        let mut outcome = Outcome {
            interaction: "unknown",
            principal: "none",
            ..Default::default()
        };
        let answer = match self
            .handle(session, peer_accepted, &request_id, &mut outcome)
            .await
        {
            Ok(a) => a,
            Err(r) => {
                outcome.reason = r.reason();
                // Every 502/504, counted in one place, whichever step found it: the transport
                // (unreachable, timeout), the server's status (a 5xx) or its answer (not
                // FHIR JSON, foreign data): what the `upstream errors` alert watches.
                if matches!(r, Refusal::BadGateway(_) | Refusal::GatewayTimeout) {
                    metrics::UPSTREAM_ERRORS
                        .with_label_values(&[r.reason()])
                        .inc();
                }
                Answer::refusal(&r)
            }
        };
        let decision = decision(answer.status);
        let reason = if answer.status < 400 {
            "ok"
        } else {
            outcome.reason
        };
        metrics::REQUESTS
            .with_label_values(&[outcome.interaction, outcome.principal, decision, reason])
            .inc();
        metrics::REQUEST_DURATION
            .with_label_values(&[outcome.interaction])
            .observe(started.elapsed().as_secs_f64());
        // Shaped after every check: compression and HEAD only change how the checked answer
        // travels.
        let status = answer.status;
        let head = session.req_header().method == http::Method::HEAD;
        let gzip = compat::accepts_gzip(header_values(session, "accept-encoding"));
        let mut response = build_response(gzipped(answer, gzip), &request_id);
        if head {
            // RFC 9110 §9.3.2: the GET answer's fields (Content-Length included), no content;
            // writing content on an HTTP/2 HEAD stream is a protocol error.
            response.body_mut().clear();
        }
        // `bytes_out` is the content sent: compressed, and nothing for a HEAD.
        self.access_log(
            session,
            &request_id,
            &outcome,
            status,
            started,
            response.body().len(),
        );
        response
    }
}

/// `answer` gzip-compressed when the client admits gzip (`fhir::compat::accepts_gzip`) and
/// the body is worth it; `Vary: Accept-Encoding` on every answer that could have been.
fn gzipped(mut answer: Answer, gzip: bool) -> Answer {
    use std::io::Write;
    if answer.status == 304 {
        // No content, but the fields of the 200 it stands for, Vary included
        // (RFC 9110 §15.4.5): a read's 200 is a whole record, compressible.
        answer.headers.push(("Vary", "Accept-Encoding".to_string()));
        return answer;
    }
    if answer.body.len() < compat::GZIP_MIN_BYTES {
        return answer;
    }
    answer.headers.push(("Vary", "Accept-Encoding".to_string()));
    if !gzip {
        return answer;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if encoder.write_all(&answer.body).is_err() {
        return answer;
    }
    if let Ok(compressed) = encoder.finish() {
        answer.body = compressed;
        answer
            .headers
            .push(("Content-Encoding", "gzip".to_string()));
    }
    answer
}

fn build_response(answer: Answer, request_id: &str) -> Response<Vec<u8>> {
    let mut builder = Response::builder().status(answer.status);
    // A 304 has no content and describes the 200 it stands for (RFC 9110 §15.4.5): no
    // Content-Type or Content-Length of an empty body.
    if answer.status != 304 {
        builder = builder
            .header("Content-Type", "application/fhir+json; charset=utf-8")
            .header("Content-Length", answer.body.len());
    }
    let mut builder = builder
        .header("Cache-Control", "no-store")
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Request-ID", request_id);
    for (name, value) in &answer.headers {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(answer.body).unwrap_or_else(|_| {
        let mut r = Response::new(Vec::new());
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn header<'a>(session: &'a ServerSession, name: &str) -> Option<&'a str> {
    session.get_header(name).and_then(|v| v.to_str().ok())
}

impl Gateway {
    async fn handle(
        &self,
        session: &mut ServerSession,
        peer_accepted: bool,
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
        if !peer_accepted {
            // Revoked (or its CA withdrawn) by a reload after this connection's handshake:
            // nothing more on this connection; the client's next handshake fails.
            session.set_keepalive(None);
            return Err(Refusal::Unauthenticated(
                TokenFailure::CertificateNotAccepted,
            ));
        }
        self.check_head_size(session)?;
        self.check_framing(session)?;
        let (method, path, query) = {
            let req = session.req_header();
            let uri = &req.uri;
            (
                req.method.as_str().to_string(),
                uri.path().to_string(),
                uri.query().map(str::to_string),
            )
        };
        if plan::is_metadata(&method, &path, &self.public_base_path) {
            outcome.interaction = "capabilities";
        }
        if !compat::accepts_json(header_values(session, "accept")) {
            return Err(Refusal::NotAcceptable);
        }
        if plan::token_free(&method, &path, query.as_deref(), &self.public_base_path) {
            return Ok(Answer::ok(200, self.capability.clone()));
        }
        let cert = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| s.cert_digest.clone())
            .unwrap_or_default();
        if cert.is_empty() {
            return Err(Refusal::Unauthenticated(TokenFailure::BindingMismatch));
        }
        if session
            .req_header()
            .headers
            .get_all("authorization")
            .iter()
            .count()
            > 1
        {
            return Err(Refusal::Unauthenticated(TokenFailure::Malformed));
        }
        // Borrowed: the token is not copied per request.
        let authorization = session.get_header("authorization").map(|v| v.as_bytes());
        let principal = self
            .authenticator
            .authenticate(authorization, &cert)
            .await?;
        outcome.principal = principal.kind();
        outcome.pseudonym = Some(crate::audit::pseudonym(
            &self.pseudonym_key,
            &principal.binding_key(),
        ));

        let body = self.read_body(session).await?;
        outcome.bytes_in = body.len();
        let conditional = plan::CONDITIONAL_HEADERS
            .iter()
            .any(|h| session.get_header(*h).is_some());
        let validators = plan::VALIDATOR_HEADERS
            .iter()
            .any(|h| session.get_header(*h).is_some());
        let parts = RequestParts {
            method: &method,
            path: &path,
            query: query.as_deref(),
            content_type: header(session, "content-type"),
            conditional,
            validators,
            body: &body,
        };
        let interaction = interaction::classify(&parts, &self.public_base_path, self.max_count)?;
        outcome.interaction = interaction.name();
        let prefer = header_values(session, "prefer");
        let asks = ClientAsks {
            if_none_match: joined(session, "if-none-match"),
            if_modified_since: header(session, "if-modified-since").map(str::to_string),
            prefer: (!prefer.is_empty()).then(|| compat::return_preference(prefer)),
        };
        self.dispatch(interaction, &principal, body, &asks, request_id, outcome)
            .await
    }

    /// Overlong targets and header blocks are refused here rather than passed on to a FHIR
    /// server whose own limits would turn them into a 5xx.
    fn check_head_size(&self, session: &ServerSession) -> Result<(), Refusal> {
        let req = session.req_header();
        if req.raw_path().len() > self.max_uri_bytes {
            return Err(Refusal::UriTooLong(self.max_uri_bytes));
        }
        let headers: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        if headers > self.max_header_bytes {
            return Err(Refusal::HeadersTooLarge(self.max_header_bytes));
        }
        Ok(())
    }

    /// The whole request body. Above the limit the rest is read and discarded (at most
    /// `DRAIN_LIMIT` bytes for at most `DRAIN_TIME`) so an HTTP/1.1 client that is still sending
    /// gets its 413 rather than a reset connection; the connection is then not reused.
    async fn read_body(&self, session: &mut ServerSession) -> Result<Vec<u8>, Refusal> {
        let declared =
            header(session, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let mut too_large = declared.is_some_and(|n| n > self.max_body_bytes);
        let mut body = Vec::new();
        while !too_large {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_body_bytes {
                        too_large = true;
                    } else {
                        body.extend_from_slice(&chunk);
                    }
                }
                Ok(None) => return Ok(body),
                Err(_) => return Err(Refusal::Invalid(Invalid::BodyUnreadable)),
            }
        }
        let drain = async {
            let mut seen = 0usize;
            while let Ok(Some(chunk)) = session.read_request_body().await {
                seen = seen.saturating_add(chunk.len());
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        session.set_keepalive(None);
        Err(Refusal::TooLarge(self.max_body_bytes))
    }

    /// Execute the request's access plan (`fhir::plan`): the proxy's own answer, or one
    /// upstream request whose answer gets the plan's check.
    async fn dispatch(
        &self,
        interaction: Interaction,
        principal: &Principal,
        body: Vec<u8>,
        asks: &ClientAsks,
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
        let version = match &interaction {
            Interaction::Read { version, .. } => version.clone(),
            _ => None,
        };
        let policy = plan::Policy {
            labels: &self.labels,
            directory: &self.directory,
            signer: &self.signer,
            drop_totals: self.drop_totals,
        };
        let (upstream, check, audit) = match plan::plan(interaction, principal, &body, &policy)? {
            Plan::Capabilities => return Ok(Answer::ok(200, self.capability.clone())),
            Plan::Forward {
                upstream,
                check,
                audit,
            } => (upstream, check, audit),
        };
        // `upstream.probe.on_nonconformant = "refuse"`: nothing reaches a FHIR server that
        // failed the conformance probe.
        if let Some(p) = &self.probe {
            p.admit()?;
        }
        let waited = Instant::now();
        let resp = self
            .upstream_call(
                outcome.interaction,
                upstream.method,
                &upstream.target,
                upstream.body,
                request_id,
            )
            .await;
        outcome.upstream_ms = listener::millis(waited);
        let resp = resp?;
        let answer = match check {
            AnswerCheck::Searchset {
                constraint,
                drop_totals,
            } => self.searchset(resp, &constraint, drop_totals, principal, outcome),
            AnswerCheck::Resource { constraint, id } => {
                let read = ReadAsked {
                    id: &id,
                    version: version.as_deref(),
                    asks,
                };
                self.resource(resp, &constraint, &read, principal, outcome)
            }
            AnswerCheck::Created {
                constraint,
                stamped,
            } => self.created(resp, &constraint, &stamped, asks, principal, outcome),
        }?;
        if let Some(cvr) = audit {
            self.supporter_audit(&cvr, outcome, request_id, &answer)?;
        }
        let mut answer = answer;
        if answer.status == 304 {
            // Audited above from the checked body it stands for; a 304 has no content
            // (RFC 9110 §15.4.5).
            answer.body.clear();
        }
        Ok(answer)
    }

    /// A read or vread answer: the caller's record (200), not the caller's (404), or something
    /// foreign (502): see `response::check_resource`.
    ///
    /// A conditional read is answered here, after the check: 304 only for a record the caller
    /// may see (`fhir::compat::not_modified`); a hidden record stays 404 whatever the
    /// validators say.
    fn resource(
        &self,
        resp: UpstreamResponse,
        constraint: &Constraint,
        read: &ReadAsked<'_>,
        principal: &Principal,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
        self.require_ok_json(&resp, principal, outcome)?;
        match response::check_resource(&resp.body, constraint, read.id)? {
            ResourceCheck::Visible => {
                let last_modified = resp.last_modified.as_deref().and_then(compat::http_date);
                let etag = resp.etag.as_deref().and_then(compat::entity_tag);
                let unchanged = compat::not_modified(
                    read.asks.if_none_match.as_deref(),
                    read.asks.if_modified_since.as_deref(),
                    etag.as_deref(),
                    last_modified.as_deref(),
                );
                // A 304 keeps the checked record until its audit record is written
                // (`dispatch`): it releases that record as a 200 would.
                let mut a = Answer::ok(if unchanged { 304 } else { 200 }, resp.body);
                a.headers.extend(etag.map(|v| ("ETag", v)));
                a.headers
                    .extend(last_modified.map(|v| ("Last-Modified", v)));
                a.headers.extend(
                    resp.content_location
                        .as_deref()
                        .and_then(|v| {
                            compat::content_location(
                                v,
                                read.id,
                                read.version,
                                &self.public_base,
                                &self.upstream_base,
                            )
                        })
                        .map(|v| ("Content-Location", v)),
                );
                Ok(a)
            }
            ResourceCheck::Hidden => {
                // Normal: a caller asked for an id that is not theirs (not a backend fault).
                metrics::READ_HIDDEN
                    .with_label_values(&[outcome.interaction, principal.kind()])
                    .inc();
                Err(Refusal::NotFound)
            }
            ResourceCheck::Foreign(why) => Err(self.foreign(why, principal, outcome)),
        }
    }

    async fn upstream_call(
        &self,
        step: &'static str,
        method: &str,
        relative: &str,
        body: Option<Vec<u8>>,
        request_id: &str,
    ) -> Result<UpstreamResponse, Refusal> {
        let started = Instant::now();
        let result = self.upstream.send(method, relative, body, request_id).await;
        metrics::UPSTREAM_DURATION
            .with_label_values(&[step])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn response_context<'a>(
        &'a self,
        constraint: &'a Constraint,
        principal_key: &'a str,
    ) -> ResponseContext<'a> {
        ResponseContext {
            constraint,
            public_base: &self.public_base,
            upstream_base: &self.upstream_base,
            signer: &self.signer,
            principal_key,
            drop_totals: self.drop_totals,
            max_count: self.max_count,
            max_link_bytes: self.max_uri_bytes,
        }
    }

    fn searchset(
        &self,
        resp: UpstreamResponse,
        constraint: &Constraint,
        drop_totals: bool,
        principal: &Principal,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
        self.require_ok_json(&resp, principal, outcome)?;
        let key = principal.binding_key();
        let mut ctx = self.response_context(constraint, &key);
        ctx.drop_totals = drop_totals;
        let checked = response::check_searchset(&resp.body, &ctx)?;
        if checked.dropped > 0 {
            log::error!("response check withheld {} entries the FHIR server returned outside the caller's constraint", checked.dropped);
            metrics::RESPONSE_DROPS
                .with_label_values(&[outcome.interaction, principal.kind()])
                .inc_by(checked.dropped as u64);
            outcome.dropped = checked.dropped;
        }
        if checked.next_dropped {
            // No URL: a server's link may hold a caller's label (a CPR).
            log::warn!(
                "the FHIR server's `next` paging link was dropped ({} link(s) in all): not a link eds-proxy can vouch for (README \"Requirements on the FHIR server\"), so the client gets no further page",
                checked.links_dropped
            );
        }
        Ok(Answer::ok(200, checked.body))
    }

    /// A create answer must be the record just created: see `response::check_created`.
    fn created(
        &self,
        resp: UpstreamResponse,
        constraint: &Constraint,
        stamped: &[crate::fhir::labels::Label],
        asks: &ClientAsks,
        principal: &Principal,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
        if !(200..300).contains(&resp.status) {
            return Err(response::upstream_refusal(resp.status, &resp.body));
        }
        if !resp.body.iter().all(u8::is_ascii_whitespace) {
            self.require_fhir_json(&resp, principal, outcome)?;
        }
        let ctx = response::CreatedContext {
            constraint,
            stamped,
            systems: &self.labels,
            public_base: &self.public_base,
            upstream_base: &self.upstream_base,
        };
        let location = response::check_created(&resp.body, resp.location.as_deref(), &ctx)
            .map_err(|w| self.foreign(response::withheld_text(w), principal, outcome))?;
        // Checked in full above; the preference only shapes what is sent (RFC 7240).
        let pref = asks.prefer.unwrap_or(ReturnPreference::Representation);
        let mut a = Answer::ok(resp.status, compat::created_body(pref, resp.body));
        match pref {
            ReturnPreference::Minimal => a
                .headers
                .push(("Preference-Applied", "return=minimal".to_string())),
            ReturnPreference::OperationOutcome => a
                .headers
                .push(("Preference-Applied", "return=OperationOutcome".to_string())),
            ReturnPreference::Representation => {}
        }
        // The checked Location (a versioned one on the proxy's base) is the created record's
        // Content-Location too (RFC 9110 §8.7), as the server's was.
        if resp.content_location.is_some() {
            a.headers.push(("Content-Location", location.clone()));
        }
        a.headers.push(("Location", location));
        a.headers.extend(
            resp.etag
                .as_deref()
                .and_then(compat::entity_tag)
                .map(|v| ("ETag", v)),
        );
        a.headers.extend(
            resp.last_modified
                .as_deref()
                .and_then(compat::http_date)
                .map(|v| ("Last-Modified", v)),
        );
        Ok(a)
    }

    /// A read's or a search's answer: 200 with FHIR JSON, else the server's status mapped
    /// (`response::upstream_refusal`) or the foreign-answer 502.
    fn require_ok_json(
        &self,
        resp: &UpstreamResponse,
        principal: &Principal,
        outcome: &mut Outcome,
    ) -> Result<(), Refusal> {
        if resp.status != 200 {
            return Err(response::upstream_refusal(resp.status, &resp.body));
        }
        self.require_fhir_json(resp, principal, outcome)
    }

    /// Answers with any other media type than FHIR JSON are not checked but refused.
    fn require_fhir_json(
        &self,
        resp: &UpstreamResponse,
        principal: &Principal,
        outcome: &mut Outcome,
    ) -> Result<(), Refusal> {
        if response::is_fhir_json(resp.content_type.as_deref()) {
            Ok(())
        } else {
            Err(self.foreign("an answer that is not FHIR JSON", principal, outcome))
        }
    }

    /// The FHIR server answered something that never belongs in this answer: counted as an
    /// alarm, logged (the reason only, never the content), answered 502.
    fn foreign(&self, why: &'static str, principal: &Principal, outcome: &mut Outcome) -> Refusal {
        metrics::RESPONSE_FOREIGN
            .with_label_values(&[outcome.interaction, principal.kind()])
            .inc();
        log::error!(
            "response check refused the FHIR server's answer to a {}: {why}",
            outcome.interaction
        );
        Refusal::BadGateway(BadGateway::ForeignResource { why })
    }

    /// The EHMI security page asks that citizens can see in MinLog when professionals read
    /// their data (a 304 to a conditional read counts: it confirms the copy the client
    /// shows): the answer's audit record (`crate::audit::record`) is written to the audit
    /// sink before the answer is released; if it cannot be, the answer is refused (503) and
    /// `eds_proxy_audit_write_failures_total` counts it. A conditional read's 304 is audited
    /// like the 200 it stands for (its checked body names the record): it tells the supporter
    /// that the citizen's record still exists unchanged.
    fn supporter_audit(
        &self,
        cvr: &str,
        outcome: &Outcome,
        request_id: &str,
        answer: &Answer,
    ) -> Result<(), Refusal> {
        // 200, and 304: a conditional read's "your copy is current" shows the record the
        // client holds (its body here is still the checked record, cleared after this).
        if answer.status != 200 && answer.status != 304 {
            return Ok(());
        }
        let shown = crate::fhir::labels::released_records(&answer.body, &self.labels.cpr);
        let viewer = crate::audit::Viewer {
            kind: outcome.principal,
            pseudonym: outcome.pseudonym.as_deref().unwrap_or_default(),
            organisation: cvr,
        };
        let Some(record) = crate::audit::record(
            &now_rfc3339(),
            request_id,
            outcome.interaction,
            &viewer,
            &shown,
        ) else {
            return Ok(());
        };
        match self.audit.write(&record) {
            Ok(()) => {
                metrics::AUDIT_RECORDS.with_label_values(&[]).inc();
                Ok(())
            }
            Err(e) => {
                metrics::AUDIT_WRITE_FAILURES.with_label_values(&[]).inc();
                // The I/O error's kind only: its text could name the path, never data.
                log::error!(
                    "audit record not written ({:?}); the answer is refused",
                    e.kind()
                );
                Err(Refusal::AuditUnavailable)
            }
        }
    }

    fn access_log(
        &self,
        session: &ServerSession,
        request_id: &str,
        o: &Outcome,
        status: u16,
        started: Instant,
        bytes_out: usize,
    ) {
        let req = session.req_header();
        // Never the client's path: ids (and CPRs sent as ids) stay out of the log.
        let path = crate::redact::path_template(req.uri.path(), &self.public_base_path);
        access_line(
            request_id,
            session.client_addr().map(|a| a as &dyn std::fmt::Display),
            Some((req.method.as_str(), path.as_str())),
            o,
            status,
            started,
            bytes_out,
        );
    }

    /// A UUID v7 (RFC 9562 §5.7: 48-bit Unix milliseconds, then random bits), in its
    /// hyphenated form: unique across replicas and restarts without coordination, and sorted
    /// by time. Sent to the client and to the FHIR server as `X-Request-ID`, and named in the
    /// access log and the audit record.
    fn next_request_id(&self) -> String {
        uuid::Uuid::now_v7().hyphenated().to_string()
    }
}
