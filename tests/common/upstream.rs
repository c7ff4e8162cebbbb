//! A recording FHIR upstream: a small HTTP/1.1 server that stores AuditEvents, answers reads
//! and `_security` searches with `_getpages` paging the way HAPI does, and records every
//! request it sees so tests can assert what reached the FHIR server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The `Last-Modified` of every stored version (HAPI sends one on reads and creates).
pub const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Honours `_security` like a real FHIR server.
    Honest,
    /// Ignores `_security`: returns every stored AuditEvent (a misconfigured backend).
    Leaky,
    /// Waits 3 s before every answer.
    Slow,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct RecordingUpstream {
    pub port: u16,
    mode: UpstreamMode,
    requests: Mutex<Vec<Recorded>>,
    /// The proxy's backend conformance probe requests, kept apart so they never count as
    /// what a client's request made the proxy send.
    probes: Mutex<Vec<Recorded>>,
    resources: Mutex<Vec<Value>>,
    searches: Mutex<HashMap<String, Vec<Value>>>,
    next_id: AtomicU64,
    scripted: Mutex<Vec<Scripted>>,
}

/// A canned answer for requests whose method is `method` and whose target starts with
/// `target_prefix`: how a misbehaving FHIR server would answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub method: String,
    pub target_prefix: String,
    pub status: u16,
    /// Headers of the answer; `Content-Type` defaults to `application/fhir+json`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordingUpstream {
    pub fn start(mode: UpstreamMode) -> Arc<RecordingUpstream> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let me = Arc::new(RecordingUpstream {
            port,
            mode,
            requests: Mutex::new(Vec::new()),
            probes: Mutex::new(Vec::new()),
            resources: Mutex::new(Vec::new()),
            searches: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            scripted: Mutex::new(Vec::new()),
        });
        let server = me.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let s = server.clone();
                    tokio::spawn(async move { s.serve(stream).await });
                }
            });
        });
        me
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The conformance probe's requests (`fhir::conformance`): `metadata` and searches for
    /// a probe value.
    pub fn probe_requests(&self) -> Vec<Recorded> {
        self.probes.lock().unwrap().clone()
    }

    /// Requests whose target contains `needle` (tests share one upstream).
    pub fn requests_matching(&self, needle: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.target.contains(needle) || String::from_utf8_lossy(&r.body).contains(needle)
            })
            .collect()
    }

    /// Answer matching requests with `answer` from now on (the first matching script wins).
    pub fn script(&self, answer: Scripted) {
        self.scripted.lock().unwrap().push(answer);
    }

    /// Forget every script: answer like a FHIR server again.
    pub fn clear_scripts(&self) {
        self.scripted.lock().unwrap().clear();
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn stored(&self) -> Vec<Value> {
        self.resources.lock().unwrap().clone()
    }

    /// Store a resource directly, as data written before the proxy existed would be.
    pub fn seed(&self, mut resource: Value) -> String {
        let id = format!("seed-{}", self.next_id.fetch_add(1, Ordering::SeqCst));
        resource["id"] = json!(id);
        resource["meta"]["versionId"] = json!("1");
        self.resources.lock().unwrap().push(resource);
        id
    }

    async fn serve(&self, mut stream: tokio::net::TcpStream) {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let head_end = loop {
                if let Some(pos) = find(&buf, b"\r\n\r\n") {
                    break pos;
                }
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_string();
            let mut parts = request_line.split(' ');
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| {
                    l.split_once(':')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + 4 + len {
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[head_end + 4..head_end + 4 + len].to_vec();
            buf.drain(..head_end + 4 + len);
            let rec = Recorded {
                method,
                target,
                headers,
                body,
            };
            let probe = rec.target == "/fhir/metadata"
                || rec
                    .target
                    .contains(eds_proxy::fhir::conformance::PROBE_PREFIX);
            if probe {
                self.probes.lock().unwrap().push(rec.clone());
            } else {
                self.requests.lock().unwrap().push(rec.clone());
            }
            if self.mode == UpstreamMode::Slow {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let scripted = self
                .scripted
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.method == rec.method && rec.target.starts_with(&s.target_prefix))
                .cloned();
            let (status, mut extra, body) = match scripted {
                Some(s) => (s.status, s.headers, s.body),
                None => self.answer(&rec),
            };
            if !extra
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                extra.push(("Content-Type".into(), "application/fhir+json".into()));
            }
            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for (k, v) in extra {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&body);
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }

    fn public_base(&self, rec: &Recorded) -> String {
        match (
            rec.header("x-forwarded-host"),
            rec.header("x-forwarded-proto"),
        ) {
            (Some(host), Some(proto)) => {
                let port = rec
                    .header("x-forwarded-port")
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                format!(
                    "{proto}://{host}{port}{}",
                    rec.header("x-forwarded-prefix").unwrap_or("")
                )
            }
            _ => format!("http://127.0.0.1:{}/fhir", self.port),
        }
    }

    fn answer(&self, rec: &Recorded) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let (path, query) = rec.target.split_once('?').unwrap_or((&rec.target, ""));
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let base = self.public_base(rec);
        match (rec.method.as_str(), segments.as_slice()) {
            ("POST", ["fhir", "AuditEvent"]) => {
                let Ok(mut resource) = serde_json::from_slice::<Value>(&rec.body) else {
                    return (400, vec![], outcome("invalid", "bad json"));
                };
                let id = format!("ae-{}", self.next_id.fetch_add(1, Ordering::SeqCst));
                resource["id"] = json!(id);
                resource["meta"]["versionId"] = json!("1");
                self.resources.lock().unwrap().push(resource.clone());
                let location = format!("{base}/AuditEvent/{id}/_history/1");
                (
                    201,
                    vec![
                        ("Content-Location".into(), location.clone()),
                        ("Location".into(), location),
                        ("ETag".into(), "W/\"1\"".into()),
                        ("Last-Modified".into(), LAST_MODIFIED.into()),
                    ],
                    serde_json::to_vec(&resource).unwrap(),
                )
            }
            ("GET", ["fhir", "metadata"]) => {
                // A CapabilityStatement listing the EDS IG's search parameters, as HAPI's does
                // with them loaded.
                let params: Vec<Value> = eds_proxy::fhir::conformance::IG_SEARCH_PARAMETERS
                    .iter()
                    .map(|p| json!({"name": p, "type": "string"}))
                    .collect();
                let cs = json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
                    "rest": [{"mode": "server", "resource": [{"type": "AuditEvent", "searchParam": params}]}]});
                (200, vec![], serde_json::to_vec(&cs).unwrap())
            }
            ("GET", ["fhir", "AuditEvent", id])
            | ("GET", ["fhir", "AuditEvent", id, "_history", _]) => {
                let found = self
                    .resources
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|r| r["id"] == *id)
                    .cloned();
                // As HAPI answers: the version's validators and its versioned location.
                match found {
                    Some(r) => (
                        200,
                        vec![
                            ("ETag".into(), "W/\"1\"".into()),
                            ("Last-Modified".into(), LAST_MODIFIED.into()),
                            (
                                "Content-Location".into(),
                                format!("{base}/AuditEvent/{id}/_history/1"),
                            ),
                        ],
                        serde_json::to_vec(&r).unwrap(),
                    ),
                    None => (
                        404,
                        vec![],
                        outcome(
                            "not-found",
                            &format!("Resource AuditEvent/{id} is not known"),
                        ),
                    ),
                }
            }
            ("GET", ["fhir", "AuditEvent"]) => {
                let count: usize = pairs
                    .iter()
                    .find(|(k, _)| k == "_count")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(10);
                let matches: Vec<Value> = self
                    .resources
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| self.matches(r, &pairs))
                    .cloned()
                    .collect();
                (200, vec![], self.page(&base, matches, 0, count))
            }
            ("GET", ["fhir"]) if pairs.iter().any(|(k, _)| k == "_getpages") => {
                let get = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let id = get("_getpages").unwrap_or_default();
                let offset: usize = get("_getpagesoffset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let count: usize = get("_count").and_then(|v| v.parse().ok()).unwrap_or(10);
                let stored = self.searches.lock().unwrap().get(&id).cloned();
                match stored {
                    Some(all) => (200, vec![], self.bundle(&base, &id, &all, offset, count)),
                    None => (410, vec![], outcome("not-found", "search expired")),
                }
            }
            _ => (
                400,
                vec![],
                outcome("not-supported", "recording upstream: unsupported request"),
            ),
        }
    }

    fn matches(&self, r: &Value, pairs: &[(String, String)]) -> bool {
        pairs.iter().all(|(k, v)| match k.as_str() {
            "_security" if self.mode == UpstreamMode::Leaky => true,
            "_security" => split_unescaped(v, ',').iter().any(|label| {
                let parts = split_unescaped(label, '|');
                let (sys, code) = (
                    parts.first().cloned().unwrap_or_default(),
                    parts.get(1).cloned().unwrap_or_default(),
                );
                r["meta"]["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["system"] == sys.as_str() && c["code"] == code.as_str())
            }),
            "message-id" => r["entity"].as_array().into_iter().flatten().any(|e| {
                e["type"]["code"] == "ehmiMessage" && e["what"]["identifier"]["value"] == v.as_str()
            }),
            // The conformance probe's random values exist nowhere: a server that honours its
            // search parameters finds nothing (other values match everything here).
            _ if v.starts_with(eds_proxy::fhir::conformance::PROBE_PREFIX) => false,
            _ => true,
        })
    }

    fn page(&self, base: &str, all: Vec<Value>, offset: usize, count: usize) -> Vec<u8> {
        let id = format!("search-{}", self.next_id.fetch_add(1, Ordering::SeqCst));
        self.searches
            .lock()
            .unwrap()
            .insert(id.clone(), all.clone());
        self.bundle(base, &id, &all, offset, count)
    }

    fn bundle(
        &self,
        base: &str,
        search_id: &str,
        all: &[Value],
        offset: usize,
        count: usize,
    ) -> Vec<u8> {
        let entries: Vec<Value> = all
            .iter()
            .skip(offset)
            .take(count)
            .map(|r| json!({"fullUrl": format!("{base}/AuditEvent/{}", r["id"].as_str().unwrap_or_default()), "resource": r, "search": {"mode": "match"}}))
            .collect();
        let mut links = vec![json!({"relation": "self", "url": format!("{base}/AuditEvent")})];
        if offset + count < all.len() {
            links.push(json!({"relation": "next", "url": format!("{base}?_getpages={search_id}&_getpagesoffset={}&_count={count}&_bundletype=searchset", offset + count)}));
        }
        serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "searchset", "total": all.len(), "link": links, "entry": entries})).unwrap()
    }
}

fn outcome(code: &str, msg: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": msg}]})).unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Split on `sep` not preceded by a backslash, removing FHIR escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                if let Some(last) = out.last_mut() {
                    last.push(n);
                }
            }
        } else if c == sep {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}
