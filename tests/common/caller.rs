//! The one caller helper: a client certificate, the HTTPS client that presents it, and the
//! access token bound to it (or none), speaking to one proxy. Every integration test builds its
//! requests through it; [`super::expect`] checks the answers.

use eds_proxy::dev::pki::CertifiedKey;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

use super::{Harness, Pki, FHIR_JSON, FORM};

/// A caller of the proxy: who (certificate and token) and where (the proxy's FHIR base).
#[derive(Clone)]
pub struct Caller {
    /// The HTTPS client presenting [`Caller::cert`] (HTTP/1.1 unless [`Caller::http2`]).
    pub client: reqwest::Client,
    /// The client certificate and its key.
    pub cert: CertifiedKey,
    /// The bearer token sent with every request; `None`: no `Authorization` header.
    pub token: Option<String>,
    /// The proxy's FHIR base, `https://localhost:PORT/fhir`.
    pub base: String,
    /// The proxy's origin, `https://localhost:PORT`.
    pub origin: String,
    ca_pem: String,
}

impl Harness {
    /// A caller with a new client certificate named `cert_name` and a token bound to it
    /// carrying `claims` (on top of the registered claims, see [`super::claims_for`]).
    pub fn caller(&self, cert_name: &str, claims: Value) -> Caller {
        let cert = self.pki.client(cert_name);
        let token = self.token(&cert, claims);
        self.caller_for(cert, Some(token))
    }

    /// A station of the harness's CVR directory's first organisation (SOR 937961000016000,
    /// GLN-1234) with device id `device`.
    pub fn station(&self, cert_name: &str, device: &str) -> Caller {
        self.caller(
            cert_name,
            super::station_claims(device, "937961000016000", "GLN-1234"),
        )
    }

    /// A caller with a new client certificate and no token.
    pub fn anonymous(&self, cert_name: &str) -> Caller {
        self.caller_for(self.pki.client(cert_name), None)
    }

    /// A caller presenting `cert` with `token` (or none).
    pub fn caller_for(&self, cert: CertifiedKey, token: Option<String>) -> Caller {
        Caller::new(&self.pki, self.port, cert, token)
    }
}

impl Pki {
    /// A caller of a proxy on `port` started some other way (the binary), with a new client
    /// certificate named `cert_name` and a token carrying `claims`.
    pub fn caller(&self, port: u16, cert_name: &str, claims: Value) -> Caller {
        let cert = self.client(cert_name);
        let token = self
            .issuer_key
            .sign(&super::claims_for(&cert, claims))
            .unwrap();
        Caller::new(self, port, cert, Some(token))
    }
}

impl Caller {
    /// A caller of the proxy on `port` whose server certificate `pki` issued.
    pub fn new(pki: &Pki, port: u16, cert: CertifiedKey, token: Option<String>) -> Caller {
        let ca_pem = pki.ca.cert.cert_pem.clone();
        Caller {
            client: build_client(&ca_pem, &cert, true),
            cert,
            token,
            base: format!("https://localhost:{port}/fhir"),
            origin: format!("https://localhost:{port}"),
            ca_pem,
        }
    }

    /// The same caller, speaking HTTP/2 (ALPN `h2`).
    pub fn http2(mut self) -> Caller {
        self.client = build_client(&self.ca_pem, &self.cert, false);
        self
    }

    /// The same certificate with `token` instead (a forged, foreign or garbage token).
    pub fn with_token(mut self, token: impl Into<String>) -> Caller {
        self.token = Some(token.into());
        self
    }

    /// The same certificate without a token.
    pub fn without_token(mut self) -> Caller {
        self.token = None;
        self
    }

    /// `method` on an absolute URL (a paging link), with the caller's token.
    pub fn request_url(&self, method: &str, url: &str) -> RequestBuilder {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let r = self.client.request(m, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET an absolute URL (a paging link).
    pub fn get_url(&self, url: &str) -> RequestBuilder {
        self.request_url("GET", url)
    }

    /// `method` on `rel` below the FHIR base. `rel` is appended as written when it starts with
    /// `/` or `?` (`/AuditEvent?…`, `?_getpages=…`, `//AuditEvent`, `` for the base itself);
    /// otherwise after a `/` (`AuditEvent/1`).
    pub fn request(&self, method: &str, rel: &str) -> RequestBuilder {
        let sep = if rel.is_empty() || rel.starts_with('/') || rel.starts_with('?') {
            ""
        } else {
            "/"
        };
        self.request_url(method, &format!("{}{sep}{rel}", self.base))
    }

    /// GET `rel` below the FHIR base.
    pub fn get(&self, rel: &str) -> RequestBuilder {
        self.request("GET", rel)
    }

    /// A search: GET `/AuditEvent?{query}`.
    pub fn search(&self, query: &str) -> RequestBuilder {
        self.get(&format!("/AuditEvent?{query}"))
    }

    /// POST `body` to `rel` with `content_type` (`None`: no `Content-Type`).
    pub fn post(
        &self,
        rel: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> RequestBuilder {
        let r = self.request("POST", rel).body(body);
        match content_type {
            Some(ct) => r.header("Content-Type", ct),
            None => r,
        }
    }

    /// POST `body` as FHIR JSON to `rel`.
    pub fn post_json(&self, rel: &str, body: &Value) -> RequestBuilder {
        self.post(rel, Some(FHIR_JSON), body.to_string())
    }

    /// A create: POST `body` as FHIR JSON to `/AuditEvent`.
    pub fn create(&self, body: &Value) -> RequestBuilder {
        self.post_json("/AuditEvent", body)
    }

    /// POST a form-encoded `body` to `rel` (`/AuditEvent/_search`, or the base).
    pub fn form(&self, rel: &str, body: impl Into<reqwest::Body>) -> RequestBuilder {
        self.post(rel, Some(FORM), body)
    }

    /// `method` on a path outside the FHIR base, from the server's root (`/admin`).
    pub fn outside(&self, method: &str, path: &str) -> RequestBuilder {
        self.request_url(method, &format!("{}{path}", self.origin))
    }
}

/// An HTTPS client trusting only the test CA and presenting `cert` (HTTP/1.1 only if `http1`).
pub fn build_client(ca_pem: &str, cert: &CertifiedKey, http1: bool) -> reqwest::Client {
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes())
            .unwrap();
    let root = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .identity(identity)
        .timeout(std::time::Duration::from_secs(20));
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}
