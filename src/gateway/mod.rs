//! The request pipeline on Pingora's HTTP server: TLS peer certificate → principal →
//! interaction → constrained upstream request → verified response.
//!
//! eds-proxy is a buffering gateway rather than a streaming proxy: a response is checked in
//! full before its status line is sent (a read of someone else's record must become 404), so
//! it implements Pingora's `ServeHttp` and talks to the FHIR server through Pingora's pooled
//! upstream connector. All decisions are made by the pure modules in `auth` and `fhir`.

pub mod admin;
pub mod authn;
pub mod listener;
pub mod probe;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::auth::principal::Principal;
use crate::cvr_directory::CvrDirectory;
use crate::error::{BadGateway, Invalid, Refusal, TokenFailure};
use crate::fhir::interaction::{self, Interaction, RequestParts};
use crate::fhir::labels::{Constraint, LabelSystems};
use crate::fhir::paging::PageSigner;
use crate::fhir::plan::{self, AnswerCheck, Plan};
use crate::fhir::response::{self, ResourceCheck, ResponseContext};
use crate::metrics;
use authn::Authenticator;
use upstream::{Upstream, UpstreamResponse};

pub struct Gateway {
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
    pub request_counter: AtomicU64,
    /// The backend conformance probe's verdict (`None`: probe off).
    pub probe: Option<Arc<probe::ProbeState>>,
}

/// Most request body bytes read (and discarded) before a 413 is answered.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
/// Longest wait for the rest of an oversized body before answering 413.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The one access-log line (log target `access`) of a request: `request` is its method and
/// path template, `None` for a head that could not be read.
fn access_line(
    request_id: &str,
    client: Option<String>,
    request: Option<(&str, &str)>,
    o: &Outcome,
    status: u16,
    started: Instant,
) {
    let line = json!({
        "ts": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "request_id": request_id,
        "client": client,
        "method": request.map(|(m, _)| m),
        "path": request.map(|(_, p)| p),
        "interaction": o.interaction,
        "principal": o.principal,
        "status": status,
        "reason": if status < 400 { "ok" } else { o.reason },
        "dropped": o.dropped,
        "duration_ms": listener::millis(started),
    });
    log::info!(target: "access", "{line}");
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

/// What the access log and metrics learn about one request.
#[derive(Default)]
struct Outcome {
    interaction: &'static str,
    principal: &'static str,
    reason: &'static str,
    dropped: usize,
}

#[async_trait]
impl ServeHttp for Gateway {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let request_id = self.next_request_id();
        let mut outcome = Outcome {
            interaction: "unknown",
            principal: "none",
            ..Default::default()
        };
        let answer = match self.handle(session, &request_id, &mut outcome).await {
            Ok(a) => a,
            Err(r) => {
                outcome.reason = r.reason();
                Answer::refusal(&r)
            }
        };
        let decision = if answer.status < 400 {
            "allowed"
        } else {
            "refused"
        };
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
        self.access_log(session, &request_id, &outcome, answer.status, started);
        build_response(answer, &request_id)
    }
}

fn build_response(answer: Answer, request_id: &str) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(answer.status)
        .header("Content-Type", "application/fhir+json; charset=utf-8")
        .header("Content-Length", answer.body.len())
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
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
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
        let authorization = session
            .get_header("authorization")
            .map(|v| v.as_bytes().to_vec());
        let principal = self
            .authenticator
            .authenticate(authorization.as_deref(), &cert)
            .await?;
        outcome.principal = principal.kind();

        let body = self.read_body(session).await?;
        let conditional = plan::CONDITIONAL_HEADERS
            .iter()
            .any(|h| session.get_header(*h).is_some());
        let parts = RequestParts {
            method: &method,
            path: &path,
            query: query.as_deref(),
            content_type: header(session, "content-type"),
            conditional,
            body: &body,
        };
        let interaction = interaction::classify(&parts, &self.public_base_path, self.max_count)?;
        outcome.interaction = interaction.name();
        self.dispatch(interaction, &principal, body, request_id, outcome)
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
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
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
        let resp = self
            .upstream_call(
                outcome.interaction,
                upstream.method,
                &upstream.target,
                upstream.body,
                request_id,
            )
            .await?;
        let answer = match check {
            AnswerCheck::Searchset { constraint } => {
                self.searchset(resp, &constraint, principal, outcome)
            }
            AnswerCheck::Resource { constraint, id } => {
                self.resource(resp, &constraint, &id, principal, outcome)
            }
            AnswerCheck::Created {
                constraint,
                stamped,
            } => self.created(resp, &constraint, &stamped, principal, outcome),
        }?;
        if let Some(cvr) = audit {
            self.supporter_audit(&cvr, outcome.interaction, request_id, &answer);
        }
        Ok(answer)
    }

    /// A read or vread answer: the caller's record (200), not the caller's (404), or something
    /// foreign (502): see `response::check_resource`.
    fn resource(
        &self,
        resp: UpstreamResponse,
        constraint: &Constraint,
        id: &str,
        principal: &Principal,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
        self.require_ok_json(&resp, principal, outcome)?;
        match response::check_resource(&resp.body, constraint, id)? {
            ResourceCheck::Visible => {
                let mut a = Answer::ok(200, resp.body);
                a.headers.extend(resp.etag.map(|v| ("ETag", v)));
                a.headers
                    .extend(resp.last_modified.map(|v| ("Last-Modified", v)));
                Ok(a)
            }
            ResourceCheck::Hidden => {
                metrics::RESPONSE_DROPS
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
        principal: &Principal,
        outcome: &mut Outcome,
    ) -> Result<Answer, Refusal> {
        self.require_ok_json(&resp, principal, outcome)?;
        let key = principal.binding_key();
        let checked =
            response::check_searchset(&resp.body, &self.response_context(constraint, &key))?;
        if checked.dropped > 0 {
            log::error!("response check withheld {} entries the FHIR server returned outside the caller's constraint", checked.dropped);
            metrics::RESPONSE_DROPS
                .with_label_values(&[outcome.interaction, principal.kind()])
                .inc_by(checked.dropped as u64);
            outcome.dropped = checked.dropped;
        }
        Ok(Answer::ok(200, checked.body))
    }

    /// A create answer must be the record just created: see `response::check_created`.
    fn created(
        &self,
        resp: UpstreamResponse,
        constraint: &Constraint,
        stamped: &[crate::fhir::labels::Label],
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
        let mut a = Answer::ok(resp.status, resp.body);
        a.headers.push(("Location", location));
        a.headers.extend(resp.etag.map(|v| ("ETag", v)));
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
    /// their data: one audit record per supporter answer, naming each citizen shown.
    fn supporter_audit(&self, cvr: &str, interaction: &str, request_id: &str, answer: &Answer) {
        if answer.status != 200 {
            return;
        }
        let released = crate::fhir::labels::released_records(&answer.body, &self.labels.cpr);
        if released.iter().all(|(_, cprs)| cprs.is_empty()) {
            return;
        }
        let records: Vec<serde_json::Value> = released
            .iter()
            .filter(|(_, cprs)| !cprs.is_empty())
            .map(|(id, cprs)| json!({"auditevent": id, "cpr": cprs}))
            .collect();
        let line = json!({
            "ts": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "request_id": request_id,
            "event": "supporter-read",
            "cvr": cvr,
            "interaction": interaction,
            "records": records,
        });
        log::info!(target: "audit", "{line}");
    }

    fn access_log(
        &self,
        session: &ServerSession,
        request_id: &str,
        o: &Outcome,
        status: u16,
        started: Instant,
    ) {
        let req = session.req_header();
        // Never the client's path: ids (and CPRs sent as ids) stay out of the log.
        let path = crate::redact::path_template(req.uri.path(), &self.public_base_path);
        access_line(
            request_id,
            session.client_addr().map(|a| a.to_string()),
            Some((req.method.as_str(), path.as_str())),
            o,
            status,
            started,
        );
    }

    /// `pid-counter` (hex): unique within this process.
    fn next_request_id(&self) -> String {
        format!(
            "{:x}-{:x}",
            std::process::id(),
            self.request_counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}
