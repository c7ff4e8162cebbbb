//! The FHIR server connection: one request, fully buffered response, over Pingora's pooled
//! upstream connector. Only headers the proxy chose are sent; nothing of the client's is
//! copied through.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use url::Url;

use crate::error::{BadGateway, Refusal};

/// `X-Forwarded-*` values derived from the public base URL, so the FHIR server builds links
/// that point at the proxy.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded {
    pub host: String,
    pub proto: String,
    pub port: String,
    pub prefix: String,
}

impl Forwarded {
    pub(crate) fn from_public_base(public: &Url) -> Forwarded {
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

pub(crate) struct UpstreamResponse {
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

pub(crate) struct Upstream {
    connector: Connector,
    /// `host:port` of the base URL, resolved again when `resolved` is older than the TTL.
    address: String,
    tls: bool,
    sni: String,
    connect_timeout: Duration,
    resolve_ttl: Duration,
    resolved: Mutex<Option<(SocketAddr, Instant)>>,
    host_header: String,
    base_path: String,
    forwarded: Forwarded,
    idle_timeout: Duration,
    read_timeout: Duration,
    max_response_bytes: usize,
    max_target_bytes: usize,
}

pub(crate) struct UpstreamSettings {
    pub base: Url,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_response_bytes: usize,
    /// Longest request target sent upstream (`limits.max_uri_bytes`): the same limit applies
    /// to what the proxy builds as to what it receives.
    pub max_target_bytes: usize,
    /// `upstream.resolve_ttl_seconds`.
    pub resolve_ttl: Duration,
    /// `upstream.ca`: CA bundle for an `https` FHIR server (default: the system roots).
    pub ca: Option<PathBuf>,
    /// `upstream.client_cert` and `upstream.client_key`: the proxy's client certificate.
    pub client_cert_key: Option<(PathBuf, PathBuf)>,
    /// `upstream.sni`: the name the FHIR server's certificate is checked against (default
    /// the base URL's host).
    pub sni: Option<String>,
}

/// Pingora's own connection pool size (`connectors::DEFAULT_POOL_SIZE`), kept when options
/// are given.
const POOL_SIZE: usize = 128;

/// Check the `https` upstream's files the way Pingora will load them, so a bad file is a
/// configuration error rather than a panic inside Pingora's connector (which unwraps).
fn check_upstream_tls(s: &UpstreamSettings) -> Result<(), String> {
    if let Some(ca) = &s.ca {
        crate::tls::read_certs(ca).map_err(|e| format!("upstream.ca: {e}"))?;
    }
    if let Some((cert, key)) = &s.client_cert_key {
        let chain =
            crate::tls::read_certs(cert).map_err(|e| format!("upstream.client_cert: {e}"))?;
        use rustls_pki_types::pem::PemObject;
        let key_der = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("upstream.client_key: {}: {e}", key.display()))?;
        pingora::tls::install_default_crypto_provider();
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| format!("upstream.client_cert / upstream.client_key: {e}"))?;
    }
    Ok(())
}

impl Upstream {
    /// The FHIR server's connection settings; its host name is resolved when a request needs
    /// a connection (`peer`), not here, so a FHIR server that is not up yet, or that comes
    /// back at another address, is found. Errors: no host or port, unusable TLS files.
    pub(crate) fn new(s: UpstreamSettings, forwarded: Forwarded) -> Result<Upstream, String> {
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
        // `Url` keeps IPv6 hosts in brackets, which is also how `host:port` wants them.
        let address = format!("{host}:{port}");
        // An empty SNI would make Pingora skip certificate verification altogether.
        let sni = s.sni.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        if tls && sni.is_empty() {
            return Err("upstream: no name to verify the FHIR server's certificate".into());
        }
        let connector = if tls && (s.ca.is_some() || s.client_cert_key.is_some()) {
            check_upstream_tls(&s)?;
            let path = |p: &PathBuf| p.to_string_lossy().into_owned();
            let mut options = ConnectorOptions::new(POOL_SIZE);
            options.ca_file = s.ca.as_ref().map(path);
            options.cert_key_file = s.client_cert_key.as_ref().map(|(c, k)| (path(c), path(k)));
            Connector::new(Some(options))
        } else {
            Connector::new(None)
        };
        let host_header = match s.base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        Ok(Upstream {
            connector,
            address,
            tls,
            sni,
            connect_timeout: s.connect_timeout,
            resolve_ttl: s.resolve_ttl,
            resolved: Mutex::new(None),
            host_header,
            base_path: s.base.path().trim_end_matches('/').to_string(),
            forwarded,
            idle_timeout: s.idle_timeout,
            read_timeout: s.read_timeout,
            max_response_bytes: s.max_response_bytes,
            max_target_bytes: s.max_target_bytes,
        })
    }

    /// The FHIR server's address: the cached one while younger than the TTL, else resolved
    /// again. If resolving fails the last address is used (a DNS hiccup should not take the
    /// proxy down); with none, the request is answered 502.
    async fn resolve(&self) -> Result<SocketAddr, Refusal> {
        let cached = self.resolved.lock().ok().and_then(|g| *g);
        if let Some((addr, at)) = cached {
            if at.elapsed() < self.resolve_ttl {
                return Ok(addr);
            }
        }
        let looked_up = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::lookup_host(self.address.as_str()),
        )
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_string()));
        let addr = match (looked_up, cached) {
            (Ok(addr), _) => {
                if cached.is_some_and(|(old, _)| old != addr) {
                    log::info!("the FHIR server {} is now at {addr}", self.address);
                }
                addr
            }
            (Err(e), Some((addr, _))) => {
                log::warn!(
                    "cannot resolve the FHIR server {}: {e}; using its last address {addr}",
                    self.address
                );
                addr
            }
            (Err(e), None) => {
                log::warn!("cannot resolve the FHIR server {}: {e}", self.address);
                return Err(Refusal::BadGateway(BadGateway::Unavailable));
            }
        };
        if let Ok(mut g) = self.resolved.lock() {
            *g = Some((addr, Instant::now()));
        }
        Ok(addr)
    }

    /// `host:port` of the FHIR server (the readiness probe connects to it).
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// `upstream.connect_timeout_ms` (the readiness probe's too).
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The peer for one exchange; Pingora pools connections per peer (address included), so
    /// a new address gets new connections and the old ones idle out.
    async fn peer(&self) -> Result<HttpPeer, Refusal> {
        let addr = self.resolve().await?;
        let mut peer = HttpPeer::new(addr, self.tls, self.sni.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        Ok(peer)
    }

    /// Send one request. `relative` is the path and query under the FHIR base, e.g.
    /// `AuditEvent?_security=…` or `?_getpages=…`.
    pub(crate) async fn send(
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
        // Counted in `eds_proxy_upstream_errors_total` by the gateway, with every other 502/504.
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
        let peer = self.peer().await.map_err(|r| (r, false))?;
        let (mut session, reused) = self
            .connector
            .get_http_session(&peer)
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
        let (status, content_type, location, etag, last_modified, content_location, length) = {
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
                get("content-length").and_then(|l| l.parse::<usize>().ok()),
            )
        };
        // Sized once from the announced length (a 77 KB searchset otherwise grows through
        // ~12 reallocations and copies), never beyond what the proxy accepts at all nor beyond
        // PRESIZE_LIMIT (a server announcing a huge length and sending little reserves no more
        // than that); the length is only a hint: what arrives is counted against the limit
        // below.
        let mut out = Vec::with_capacity(
            length
                .unwrap_or(0)
                .min(self.max_response_bytes)
                .min(PRESIZE_LIMIT),
        );
        while let Some(chunk) = session.read_response_body().await.map_err(late)? {
            if out.len() + chunk.len() > self.max_response_bytes {
                return Err((Refusal::BadGateway(BadGateway::ResponseTooLarge), false));
            }
            out.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, &peer, Some(self.idle_timeout))
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
        // Borrowed values: each is copied once, into the header map.
        let content_length = body_len.map(|n| n.to_string());
        let mut headers: Vec<(&'static str, &str)> = vec![
            ("Host", &self.host_header),
            ("Accept", "application/fhir+json"),
            ("Accept-Encoding", "identity"),
            ("X-Forwarded-Host", &f.host),
            ("X-Forwarded-Proto", &f.proto),
            ("X-Forwarded-Port", &f.port),
            ("X-Forwarded-Prefix", &f.prefix),
            ("X-Request-ID", request_id),
        ];
        if let Some(len) = &content_length {
            headers.push(("Content-Type", "application/fhir+json; charset=utf-8"));
            headers.push(("Content-Length", len));
        }
        for (name, value) in headers {
            if !value.is_empty() {
                h.insert_header(name, value).map_err(internal)?;
            }
        }
        Ok(h)
    }
}

/// Most bytes reserved up front for an answer from its `Content-Length` (a larger answer grows
/// the buffer as it arrives, up to `upstream.max_response_bytes`).
const PRESIZE_LIMIT: usize = 1 << 20;

fn map_error(e: &pingora::Error) -> Refusal {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Refusal::GatewayTimeout
        }
        _ => Refusal::BadGateway(BadGateway::Unavailable),
    }
}
