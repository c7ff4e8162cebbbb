//! Expectations and the table runner: one request, its exact expected outcome (status,
//! OperationOutcome issue code or `resourceType`, the rule that refused, and what the FHIR
//! server saw), checked case by case.
//!
//! The rule of this module: **a refusal names its reason.** An [`Expect`] whose status is 400
//! or above (or 0, "refused or dropped") without [`Expect::because`] fails its case, unless it
//! says why no rule of the proxy can name it ([`Expect::no_reason`]). The reason is read from
//! the admin listener's `eds_proxy_requests_total{decision="refused",reason=…}` (the one
//! channel that names the rule without telling the caller more than the status does): the
//! counter for that reason must rise while the case runs.

use reqwest::{Client, RequestBuilder, Version};
use serde_json::Value;

use super::upstream::{Recorded, Scripted};
use super::{Harness, INVALID_TOKEN};

/// An expectation on one header of the request the upstream received.
#[derive(Debug, Clone)]
pub enum Want {
    /// The header has exactly this value.
    Is(String),
    /// The header is not there.
    Absent,
    /// The header is not this value (or absent).
    Not(String),
}

/// What the FHIR server must have seen for one case.
#[derive(Debug, Clone)]
pub enum Seen {
    /// No request at all while the case ran (a proxy of the test's own).
    Nothing,
    /// Exactly one request while the case ran (a proxy of the test's own).
    One {
        /// Its method.
        method: &'static str,
        /// Its target (path and query).
        target: String,
    },
    /// On a proxy shared by tests running at once: of the requests that reached the upstream
    /// while the case ran, those whose target or body contains `marker` are exactly these
    /// (method, target), in order.
    Marked {
        /// A string only this case's requests carry (a message id).
        marker: String,
        /// The (method, target) of each.
        requests: Vec<(&'static str, String)>,
    },
}

/// The exact expected outcome of one request.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Exact status; 0 means "any 4xx, or the connection dropped without an answer".
    pub status: u16,
    /// Issue code of the OperationOutcome for errors, `resourceType` for successes; empty:
    /// no body expected (HEAD, an empty 201) or not checked (status 0).
    pub code: &'static str,
    /// What the FHIR server saw.
    pub seen: Seen,
    /// Required prefix of `WWW-Authenticate`.
    pub www: Option<&'static str>,
    /// Headers of the one request the upstream received ([`Seen::One`]).
    pub upstream_headers: Vec<(&'static str, Want)>,
    /// HTTP version of the answer.
    pub version: Option<Version>,
    /// Number of Bundle entries in a successful answer.
    pub entries: Option<usize>,
    /// Strings the answer must not contain.
    pub lacks: Vec<String>,
    /// The connection may also be dropped instead of answering (see `too_large_or_reset`).
    pub may_drop: bool,
    /// The rule that refused (`Refusal::reason`), read from the admin listener's
    /// `eds_proxy_requests_total{decision="refused",reason=…}`.
    pub reason: Option<&'static str>,
    /// Why a refusal has no reason of the proxy's (a layer below it refused).
    pub no_reason: Option<&'static str>,
}

impl Expect {
    /// `status` with `code`, the upstream having seen `seen`.
    pub fn new(status: u16, code: &'static str, seen: Seen) -> Expect {
        Expect {
            status,
            code,
            seen,
            www: None,
            upstream_headers: Vec::new(),
            version: None,
            entries: None,
            lacks: Vec::new(),
            may_drop: false,
            reason: None,
            no_reason: None,
        }
    }
    /// Refused by exactly this rule (`Refusal::reason`, the README's reason table).
    pub fn because(mut self, reason: &'static str) -> Expect {
        self.reason = Some(reason);
        self
    }
    /// Refused below the proxy (TLS, the HTTP/2 codec), so no rule of the proxy counts it;
    /// `why` says which layer.
    pub fn no_reason(mut self, why: &'static str) -> Expect {
        self.no_reason = Some(why);
        self
    }
    /// `WWW-Authenticate` starts with `prefix`.
    pub fn www(mut self, prefix: &'static str) -> Expect {
        self.www = Some(prefix);
        self
    }
    /// The one request the upstream saw has header `name` as `want` says.
    pub fn upstream_header(mut self, name: &'static str, want: Want) -> Expect {
        self.upstream_headers.push((name, want));
        self
    }
    /// Answered over HTTP/2.
    pub fn h2(mut self) -> Expect {
        self.version = Some(Version::HTTP_2);
        self
    }
    /// A Bundle with exactly `n` entries.
    pub fn entries(mut self, n: usize) -> Expect {
        self.entries = Some(n);
        self
    }
    /// The answer does not contain `s`.
    pub fn lacks(mut self, s: &str) -> Expect {
        self.lacks.push(s.to_string());
        self
    }
    /// On a shared proxy: the upstream saw exactly `requests` carrying `marker`.
    pub fn marked(mut self, marker: &str, requests: Vec<(&'static str, String)>) -> Expect {
        self.seen = Seen::Marked {
            marker: marker.to_string(),
            requests,
        };
        self
    }
    /// A refusal: an error status, or "refused or dropped" (0).
    pub fn is_refusal(&self) -> bool {
        self.status == 0 || self.status >= 400
    }
}

/// Refused with `status` and issue `code`, nothing forwarded (add [`Expect::because`]).
pub fn refused(status: u16, code: &'static str) -> Expect {
    Expect::new(status, code, Seen::Nothing)
}
/// 400 `invalid`.
pub fn invalid() -> Expect {
    refused(400, "invalid")
}
/// 403 `forbidden`.
pub fn forbidden() -> Expect {
    refused(403, "forbidden")
}
/// 404 `not-found` answered by the proxy itself.
pub fn not_found() -> Expect {
    refused(404, "not-found").because("not_found")
}
/// 405 `not-supported`.
pub fn method_not_allowed() -> Expect {
    refused(405, "not-supported")
}
/// 415 `not-supported`.
pub fn unsupported_media() -> Expect {
    refused(415, "not-supported")
}
/// 413 `too-costly`, reason `too_large`.
pub fn too_large() -> Expect {
    refused(413, "too-costly").because("too_large")
}
/// 413 for a body over the limit sent on HTTP/1.1. The proxy answers as soon as it sees the
/// Content-Length and Pingora then closes the connection without draining the body, so a
/// client still writing it may see a reset (EPIPE/ECONNRESET) instead of the answer (about
/// one run in three here). Either way nothing may reach the upstream, and the refusal is
/// counted as `too_large`. HTTP/2 is exact.
pub fn too_large_or_reset() -> Expect {
    let mut e = too_large();
    e.may_drop = true;
    e
}
/// 401 `login` with `WWW-Authenticate: Bearer error="invalid_token"…` (add the reason).
pub fn bad_token() -> Expect {
    refused(401, "login").www(INVALID_TOKEN)
}
/// A 401 whose `error_description` names exactly this reason.
pub fn bad_token_because(f: eds_proxy::error::TokenFailure) -> Expect {
    let www = format!("{INVALID_TOKEN}, error_description=\"{}\"", f.description());
    refused(401, "login")
        .www(Box::leak(www.into_boxed_str()))
        .because(f.as_str())
}
/// 401 with a bare `WWW-Authenticate: Bearer`: no token at all.
pub fn no_token() -> Expect {
    refused(401, "login").www("Bearer").because("missing")
}
/// A clean refusal for `reason`: any 4xx, or the connection closed without an answer (a
/// client still writing a huge head may see the reset first); the proxy counts it either way.
pub fn refused_or_dropped(reason: &'static str) -> Expect {
    refused(0, "").because(reason)
}
/// `status` with `code` after exactly one upstream request `method target`.
pub fn upstream(
    status: u16,
    code: &'static str,
    method: &'static str,
    target: impl Into<String>,
) -> Expect {
    Expect::new(
        status,
        code,
        Seen::One {
            method,
            target: target.into(),
        },
    )
}
/// A 200 searchset after exactly one upstream search with `constraint` first.
pub fn search(constraint: &str, rest: &str) -> Expect {
    let q = if rest.is_empty() {
        constraint.to_string()
    } else {
        format!("{constraint}&{rest}")
    };
    upstream(200, "Bundle", "GET", format!("/fhir/AuditEvent?{q}"))
}
/// A 201 AuditEvent after exactly one upstream create.
pub fn created() -> Expect {
    upstream(201, "AuditEvent", "POST", "/fhir/AuditEvent")
}

/// One named request and its expected outcome.
pub struct Case {
    /// What the case tries, as a rule reads.
    pub name: String,
    /// The request.
    pub req: RequestBuilder,
    /// Its outcome.
    pub expect: Expect,
}

/// A case.
pub fn case(name: impl Into<String>, req: RequestBuilder, expect: Expect) -> Case {
    Case {
        name: name.into(),
        req,
        expect,
    }
}

fn describe(seen: &[Recorded]) -> Vec<String> {
    seen.iter()
        .map(|r| {
            let t: String = r.target.chars().take(200).collect();
            format!("{} {t}", r.method)
        })
        .collect()
}

/// Every refusal the proxy has counted, by reason (`eds_proxy_requests_total`, summed over its
/// other labels), read from the admin listener. The registry is the process's, shared with the
/// tests running in parallel: a rise proves a case's reason unless another test was refused
/// for the very same rule at the same moment.
pub async fn refusals(admin_port: u16) -> std::collections::BTreeMap<String, f64> {
    let text = metrics_text(admin_port).await;
    let mut by_reason = std::collections::BTreeMap::new();
    for l in text.lines().filter(|l| {
        l.starts_with("eds_proxy_requests_total{") && l.contains("decision=\"refused\"")
    }) {
        let reason = l
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let n: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by_reason.entry(reason).or_insert(0.0) += n;
    }
    by_reason
}

/// The reasons whose count rose from `before` to `after`.
pub fn rose(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Vec<String> {
    after
        .iter()
        .filter(|(k, v)| **v > before.get(*k).copied().unwrap_or(0.0))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The problems with a case's reason: `want` must have risen (or, with `no_reason`, nothing);
/// a refusal must name one.
pub fn reason_problems(
    is_refusal: bool,
    want: Option<&str>,
    no_reason: Option<&str>,
    rose: &[String],
) -> Vec<String> {
    match (want, no_reason) {
        (Some(r), _) if !rose.iter().any(|x| x == r) => {
            vec![format!(
                "not refused for {r:?} (eds_proxy_requests_total rose for {rose:?})"
            )]
        }
        (Some(_), _) => Vec::new(),
        // Nothing to count: a refusal of another test running at once may rise meanwhile.
        (None, Some(_)) => Vec::new(),
        (None, None) if is_refusal => vec![format!(
            "a refusal must name its reason (Expect::because); the proxy counted {rose:?}"
        )],
        (None, None) => Vec::new(),
    }
}

/// The answer to one request, as [`check`] read it.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// HTTP status (0: no answer).
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` if it is not JSON).
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl Answer {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send one request and compare everything `e` expects: the problems found, and the answer.
pub async fn check(h: &Harness, req: RequestBuilder, e: &Expect) -> (Vec<String>, Answer) {
    let before = h.upstream.request_count();
    let refused_before = refusals(h.admin_port).await;
    let sent = req.send().await;
    let mut problems = Vec::new();
    let mut answer = Answer::default();
    match sent {
        Err(err) => {
            if e.status != 0 && !e.may_drop {
                let err: String = err.to_string().chars().take(200).collect();
                problems.push(format!("no answer: {err}"));
            }
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            let version = resp.version();
            answer.status = status;
            answer.headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            let text = String::from_utf8_lossy(&body).to_string();
            let short: String = text.chars().take(300).collect();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if e.status == 0 {
                if !(400..500).contains(&status) {
                    problems.push(format!(
                        "status {status}, expected a 4xx refusal or a dropped connection: {short}"
                    ));
                }
            } else if status != e.status {
                problems.push(format!("status {status}, expected {}: {short}", e.status));
            }
            if !e.code.is_empty() {
                let got = if e.status >= 400 {
                    if v["resourceType"] != "OperationOutcome" {
                        problems.push(format!("not an OperationOutcome: {short}"));
                    }
                    v["issue"][0]["code"].as_str()
                } else {
                    v["resourceType"].as_str()
                };
                if got != Some(e.code) {
                    problems.push(format!("code {got:?}, expected {:?}", e.code));
                }
            }
            if let Some(prefix) = e.www {
                let www = answer.header("www-authenticate");
                if !www.is_some_and(|w| w.starts_with(prefix)) {
                    problems.push(format!("WWW-Authenticate {www:?}, expected {prefix}…"));
                }
            }
            if let Some(want) = e.version {
                if version != want {
                    problems.push(format!("HTTP version {version:?}, expected {want:?}"));
                }
            }
            if let Some(n) = e.entries {
                let got = v["entry"].as_array().map_or(0, Vec::len);
                if got != n {
                    problems.push(format!("{got} entries, expected {n}"));
                }
            }
            for l in &e.lacks {
                if text.contains(l.as_str()) {
                    problems.push(format!("the answer mentions {l:?}: {short}"));
                }
            }
            answer.json = v;
            answer.text = text;
        }
    }
    let refused_after = refusals(h.admin_port).await;
    problems.extend(reason_problems(
        e.is_refusal(),
        e.reason,
        e.no_reason,
        &rose(&refused_before, &refused_after),
    ));
    let seen: Vec<Recorded> = h.upstream.requests().into_iter().skip(before).collect();
    match &e.seen {
        Seen::Nothing => {
            if !seen.is_empty() {
                problems.push(format!(
                    "the upstream saw {:?}, expected nothing",
                    describe(&seen)
                ));
            }
        }
        Seen::One { method, target } => {
            if seen.len() != 1 || seen[0].method != *method || seen[0].target != *target {
                problems.push(format!(
                    "the upstream saw {:?}, expected exactly [{method} {target}]",
                    describe(&seen)
                ));
            } else {
                problems.extend(header_problems(&seen[0], &e.upstream_headers));
            }
        }
        Seen::Marked { marker, requests } => {
            let seen: Vec<Recorded> = seen
                .iter()
                .filter(|r| {
                    r.target.contains(marker.as_str())
                        || String::from_utf8_lossy(&r.body).contains(marker.as_str())
                })
                .cloned()
                .collect();
            let got: Vec<(String, String)> = seen
                .iter()
                .map(|r| (r.method.clone(), r.target.clone()))
                .collect();
            let want: Vec<(String, String)> = requests
                .iter()
                .map(|(m, t)| (m.to_string(), t.clone()))
                .collect();
            if got != want {
                problems.push(format!(
                    "the upstream saw {:?} with {marker:?}, expected {want:?}",
                    describe(&seen)
                ));
            } else if let [one] = seen.as_slice() {
                problems.extend(header_problems(one, &e.upstream_headers));
            }
        }
    }
    (problems, answer)
}

fn header_problems(seen: &Recorded, wants: &[(&'static str, Want)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, want) in wants {
        let got = seen.header(name);
        let ok = match want {
            Want::Is(v) => got == Some(v.as_str()),
            Want::Absent => got.is_none(),
            Want::Not(v) => got != Some(v.as_str()),
        };
        if !ok {
            problems.push(format!(
                "upstream header {name} was {got:?}, expected {want:?}"
            ));
        }
    }
    problems
}

/// Send one request, assert everything `e` expects (panicking with every problem), and return
/// the answer: `s.get("/AuditEvent/1").expect(&h, not_found()).await`.
pub trait Check {
    /// See the trait.
    fn expect(self, h: &Harness, e: Expect) -> impl std::future::Future<Output = Answer> + Send;
}

impl Check for RequestBuilder {
    async fn expect(self, h: &Harness, e: Expect) -> Answer {
        let (problems, answer) = check(h, self, &e).await;
        assert!(problems.is_empty(), "{}", problems.join("; "));
        answer
    }
}

/// The result of one table.
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// How many cases it ran.
    pub cases: usize,
    /// `[case] problem; problem` for each failing case.
    pub failures: Vec<String>,
}

/// Fail with every failing case of every table listed.
pub fn verdict(tables: &[Table]) {
    let mut all = Vec::new();
    for t in tables {
        eprintln!("{}: {} cases, {} failed", t.name, t.cases, t.failures.len());
        all.extend(t.failures.iter().map(|f| format!("{}: {f}", t.name)));
    }
    let total: usize = tables.iter().map(|t| t.cases).sum();
    assert!(
        all.is_empty(),
        "{} of {total} cases failed:\n  {}",
        all.len(),
        all.join("\n  ")
    );
}

/// Run a table case by case (never concurrently), collecting every failing case.
pub async fn run_cases(h: &Harness, name: &'static str, cases: Vec<Case>) -> Table {
    let n = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let (problems, _) = check(h, c.req, &c.expect).await;
        if !problems.is_empty() {
            failures.push(format!("[{}] {}", c.name, problems.join("; ")));
        }
    }
    Table {
        name,
        cases: n,
        failures,
    }
}

/// Run cases one at a time, each with the FHIR server answering as its script says (`None`:
/// as a FHIR server would).
pub async fn run_scripted(
    h: &Harness,
    name: &'static str,
    cases: Vec<(Option<Scripted>, Case)>,
) -> Table {
    let n = cases.len();
    let mut failures = Vec::new();
    for (script, c) in cases {
        h.upstream.clear_scripts();
        if let Some(s) = script {
            h.upstream.script(s);
        }
        let (problems, _) = check(h, c.req, &c.expect).await;
        if !problems.is_empty() {
            failures.push(format!("[{}] {}", c.name, problems.join("; ")));
        }
    }
    h.upstream.clear_scripts();
    Table {
        name,
        cases: n,
        failures,
    }
}

/// The admin listener's Prometheus text exposition.
pub async fn metrics_text(admin_port: u16) -> String {
    Client::new()
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .expect("admin listener")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one sample line of the exposition, e.g. `name{label="x"}` (exactly that
/// series: name and labels as written).
pub async fn metric(admin_port: u16, series: &str) -> Option<f64> {
    metrics_text(admin_port)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sum of a counter's series on the admin listener.
pub async fn metric_value(h: &Harness, name: &str) -> f64 {
    let text = metrics_text(h.admin_port).await;
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::reason_problems;

    #[test]
    fn a_refusal_without_a_reason_fails_its_case() {
        assert_eq!(reason_problems(true, None, None, &[]).len(), 1);
        assert!(reason_problems(false, None, None, &[]).is_empty());
        let rose = vec!["not_found".to_string()];
        assert!(reason_problems(true, Some("not_found"), None, &rose).is_empty());
        assert_eq!(
            reason_problems(true, Some("malformed"), None, &rose).len(),
            1
        );
        assert!(reason_problems(true, None, Some("h2 codec"), &[]).is_empty());
    }
}
