//! The FHIR server connection: one request, fully buffered response, over Pingora's pooled
//! upstream connector. Only headers the proxy chose are sent; nothing of the client's is
//! copied through.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use url::Url;

use crate::error::{BadGateway, Refusal};
use crate::metrics;

/// `X-Forwarded-*` values derived from the public base URL, so the FHIR server builds links
/// that point at the proxy.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub host: String,
    pub proto: String,
    pub port: String,
    pub prefix: String,
}

impl Forwarded {
    pub fn from_public_base(public: &Url) -> Forwarded {
        Forwarded {
            host: public.host_str().unwrap_or_default().to_string(),
            proto: public.scheme().to_string(),
            port: public
                .port_or_known_default()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            prefix: public.path().trim_end_matches('/').to_string(),
        }
    }
}

pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `Content-Location` (read, vread, create): passed on only as
    /// `fhir::compat::content_location` rebuilds it.
    pub content_location: Option<String>,
    pub body: Vec<u8>,
}

pub struct Upstream {
    connector: Connector,
    peer: HttpPeer,
    host_header: String,
    base_path: String,
    forwarded: Forwarded,
    idle_timeout: Duration,
    read_timeout: Duration,
    max_response_bytes: usize,
    max_target_bytes: usize,
}

pub struct UpstreamSettings {
    pub base: Url,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_response_bytes: usize,
    /// Longest request target sent upstream (`limits.max_uri_bytes`): the same limit applies
    /// to what the proxy builds as to what it receives.
    pub max_target_bytes: usize,
}

impl Upstream {
    /// Resolves the FHIR server's address once, at start-up.
    pub fn new(s: UpstreamSettings, forwarded: Forwarded) -> Result<Upstream, String> {
        let host = s
            .base
            .host_str()
            .ok_or("upstream URL has no host")?
            .to_string();
        let port = s
            .base
            .port_or_known_default()
            .ok_or("upstream URL has no port")?;
        let tls = s.base.scheme() == "https";
        let address = format!("{host}:{port}");
        use std::net::ToSocketAddrs;
        let resolved = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {address}: {e}"))?
            .next()
            .ok_or_else(|| format!("{address} resolves to nothing"))?;
        let mut peer = HttpPeer::new(resolved, tls, host.clone());
        peer.options.connection_timeout = Some(s.connect_timeout);
        peer.options.total_connection_timeout = Some(s.connect_timeout);
        peer.options.read_timeout = Some(s.read_timeout);
        peer.options.write_timeout = Some(s.read_timeout);
        peer.options.idle_timeout = Some(s.idle_timeout);
        let host_header = match s.base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        Ok(Upstream {
            connector: Connector::new(None),
            peer,
            host_header,
            base_path: s.base.path().trim_end_matches('/').to_string(),
            forwarded,
            idle_timeout: s.idle_timeout,
            read_timeout: s.read_timeout,
            max_response_bytes: s.max_response_bytes,
            max_target_bytes: s.max_target_bytes,
        })
    }

    /// Send one request. `relative` is the path and query under the FHIR base, e.g.
    /// `AuditEvent?_security=…` or `?_getpages=…`.
    pub async fn send(
        &self,
        method: &str,
        relative: &str,
        body: Option<Vec<u8>>,
        request_id: &str,
    ) -> Result<UpstreamResponse, Refusal> {
        let path = if relative.starts_with('?') {
            format!(
                "{}{relative}",
                if self.base_path.is_empty() {
                    "/"
                } else {
                    &self.base_path
                }
            )
        } else {
            format!("{}/{relative}", self.base_path)
        };
        // Every target the proxy builds (search from URL and form, the supporter's OR list,
        // paging, reads) passes here: checked once, before anything is sent.
        crate::fhir::query::check_upstream_target(&path, self.max_target_bytes)?;
        let body = body.map(Bytes::from);
        // A pooled connection may have been closed by the server while idle; an idempotent
        // request is retried once on a fresh connection, a create never.
        let attempts = if method == "GET" { 2 } else { 1 };
        let mut last_err = Refusal::BadGateway(BadGateway::Unavailable);
        for _ in 0..attempts {
            match self.exchange(method, &path, body.clone(), request_id).await {
                Ok(r) => return Ok(r),
                Err((refusal, retryable)) => {
                    last_err = refusal;
                    if !retryable {
                        break;
                    }
                }
            }
        }
        metrics::UPSTREAM_ERRORS
            .with_label_values(&[last_err.reason()])
            .inc();
        Err(last_err)
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
        request_id: &str,
    ) -> Result<UpstreamResponse, (Refusal, bool)> {
        let header = self
            .request_header(method, path, body.as_ref().map(Bytes::len), request_id)
            .map_err(|r| (r, false))?;
        let (mut session, reused) = self
            .connector
            .get_http_session(&self.peer)
            .await
            .map_err(|e| (map_error(&e), false))?;
        // The connector applies only connect timeouts; reads and writes are timed here.
        session.set_read_timeout(Some(self.read_timeout));
        session.set_write_timeout(Some(self.read_timeout));
        let early = |e: Box<pingora::Error>| (map_error(&e), reused);
        session
            .write_request_header(Box::new(header))
            .await
            .map_err(early)?;
        if let Some(b) = body {
            session.write_request_body(b, true).await.map_err(early)?;
        }
        session.finish_request_body().await.map_err(early)?;
        session.read_response_header().await.map_err(early)?;
        let late = |e: Box<pingora::Error>| (map_error(&e), false);
        let (status, content_type, location, etag, last_modified, content_location) = {
            let resp = session
                .response_header()
                .ok_or((Refusal::BadGateway(BadGateway::NoResponse), false))?;
            let get = |name: &str| {
                resp.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            (
                resp.status.as_u16(),
                get("content-type"),
                get("location"),
                get("etag"),
                get("last-modified"),
                get("content-location"),
            )
        };
        let mut out = Vec::new();
        while let Some(chunk) = session.read_response_body().await.map_err(late)? {
            if out.len() + chunk.len() > self.max_response_bytes {
                return Err((Refusal::BadGateway(BadGateway::ResponseTooLarge), false));
            }
            out.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, &self.peer, Some(self.idle_timeout))
            .await;
        Ok(UpstreamResponse {
            status,
            content_type,
            location,
            etag,
            last_modified,
            content_location,
            body: out,
        })
    }

    fn request_header(
        &self,
        method: &str,
        path: &str,
        body_len: Option<usize>,
        request_id: &str,
    ) -> Result<RequestHeader, Refusal> {
        let internal = |e: Box<pingora::Error>| {
            Refusal::BadGateway(BadGateway::Request {
                error: e.to_string(),
            })
        };
        let mut h = RequestHeader::build(method, path.as_bytes(), None).map_err(internal)?;
        let f = &self.forwarded;
        let mut headers: Vec<(&'static str, String)> = vec![
            ("Host", self.host_header.clone()),
            ("Accept", "application/fhir+json".into()),
            ("Accept-Encoding", "identity".into()),
            ("X-Forwarded-Host", f.host.clone()),
            ("X-Forwarded-Proto", f.proto.clone()),
            ("X-Forwarded-Port", f.port.clone()),
            ("X-Forwarded-Prefix", f.prefix.clone()),
            ("X-Request-ID", request_id.to_string()),
        ];
        if let Some(len) = body_len {
            headers.push((
                "Content-Type",
                "application/fhir+json; charset=utf-8".into(),
            ));
            headers.push(("Content-Length", len.to_string()));
        }
        for (name, value) in headers {
            if !value.is_empty() {
                h.insert_header(name, value).map_err(internal)?;
            }
        }
        Ok(h)
    }
}

fn map_error(e: &pingora::Error) -> Refusal {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Refusal::GatewayTimeout
        }
        _ => Refusal::BadGateway(BadGateway::Unavailable),
    }
}
