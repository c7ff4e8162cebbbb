//! DEVELOPMENT ONLY: a token endpoint shaped like the one the EDS security page describes.
//! `client_credentials` over mutual TLS for enrolled system clients: the presented
//! certificate's subject must be the enrolled `tls_client_auth_subject_dn`, requested scopes
//! must be enrolled, `SOR:`/`GLN:` must name one of the client's organisational contexts, and
//! the token is bound to the presented certificate (`cnf.x5t#S256`). Also serves `/jwks`.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{TlsAccept, TlsAcceptCallbacks};
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use pingora::tls::{RootCertStore, WebPkiClientVerifier};
use serde::Deserialize;
use serde_json::{json, Value};

use super::keys::SigningKey;

/// `eds-proxy dev issuer --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// `host:port` of the token endpoint (HTTPS with a required client certificate).
    pub listen: String,
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// PEM certificate chain the issuer presents.
    pub server_cert: PathBuf,
    /// PEM private key of `server_cert`.
    pub server_key: PathBuf,
    /// PEM CA certificates a client certificate must chain to.
    pub client_ca: PathBuf,
    /// The ES256 signing key (PKCS#8 PEM) written by `dev pki` as `issuer.key`.
    pub signing_key: PathBuf,
    /// `kid` of issued tokens and of `/jwks`; default `dev-issuer-1`.
    #[serde(default = "default_kid")]
    pub kid: String,
    /// A JSON array of client metadata documents (the EDS security page's format).
    pub enrolment: PathBuf,
    /// Lifetime of issued tokens, in seconds; default 600.
    #[serde(default = "default_lifetime")]
    pub token_lifetime_seconds: i64,
}

fn default_kid() -> String {
    super::cli::ISSUER_KID.to_string()
}
fn default_lifetime() -> i64 {
    600
}

/// One enrolled client, as in the security page's metadata example.
#[derive(Debug, Clone, Deserialize)]
pub struct Enrolment {
    /// OAuth `client_id` (RFC 6749 §2.2).
    pub client_id: String,
    /// Human-readable name (RFC 7591 §2).
    #[serde(default)]
    pub client_name: Option<String>,
    /// The subject DN the client's certificate must have (RFC 8705 §2.1.1).
    pub tls_client_auth_subject_dn: String,
    /// The scopes the client may be issued (space-separated).
    pub scope: String,
    /// `ehmi:eer:device_id` put in a station's tokens.
    #[serde(rename = "ehmi:eer:device_id")]
    pub device_id: Option<String>,
    /// The organisational contexts a station may ask a token for (`SOR:`/`GLN:` scopes).
    #[serde(rename = "ehmi:org_context", default)]
    pub org_context: Vec<OrgContext>,
}

/// One `ehmi:org_context` a station is enrolled for.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct OrgContext {
    /// Organisation name.
    pub name: String,
    /// SOR code.
    pub sor: String,
    /// Location number (GLN).
    pub gln: String,
}

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status of the error answer.
    pub status: u16,
    /// The `error` code, e.g. `invalid_client`.
    pub error: &'static str,
    /// The `error_description`.
    pub description: String,
}

fn oauth(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status,
        error,
        description: description.into(),
    }
}

/// Subject DNs compare without the `subject=` prefix and spaces after separators.
pub fn normalise_dn(dn: &str) -> String {
    let dn = dn.trim().strip_prefix("subject=").unwrap_or(dn.trim());
    dn.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

/// The presented client certificate: its subject DN and RFC 8705 thumbprint.
pub struct Presented<'a> {
    /// Subject DN of the certificate (OpenSSL one-line form).
    pub subject_dn: &'a str,
    /// Its `x5t#S256` thumbprint (RFC 8705 §3.1).
    pub thumbprint: &'a str,
}

/// What every issued token says about its issuer and lifetime.
pub struct Issuance<'a> {
    /// `iss` of the token.
    pub issuer: &'a str,
    /// `aud` of the token.
    pub audience: &'a str,
    /// Issue time, seconds since the epoch.
    pub now: i64,
    /// Lifetime in seconds.
    pub lifetime: i64,
}

/// Decide a `client_credentials` request. Returns the claims to sign.
pub fn token_claims(
    enrolments: &[Enrolment],
    form: &[(String, String)],
    cert: &Presented<'_>,
    issuance: &Issuance<'_>,
) -> Result<Value, OAuthError> {
    let Presented {
        subject_dn,
        thumbprint,
    } = *cert;
    let Issuance {
        issuer,
        audience,
        now,
        lifetime,
    } = *issuance;
    let get = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    if get("grant_type") != Some("client_credentials") {
        return Err(oauth(
            400,
            "unsupported_grant_type",
            "only client_credentials is supported",
        ));
    }
    let client_id =
        get("client_id").ok_or_else(|| oauth(400, "invalid_request", "client_id is required"))?;
    let client = enrolments
        .iter()
        .find(|e| e.client_id == client_id)
        .ok_or_else(|| oauth(401, "invalid_client", "unknown client"))?;
    if normalise_dn(&client.tls_client_auth_subject_dn) != normalise_dn(subject_dn) {
        return Err(oauth(
            401,
            "invalid_client",
            "the client certificate is not the enrolled one",
        ));
    }
    let enrolled: Vec<&str> = client.scope.split_whitespace().collect();
    let requested = get("scope").unwrap_or(&client.scope);
    let mut granted = Vec::new();
    let (mut sor, mut gln) = (None, None);
    for s in requested.split_whitespace() {
        if let Some(v) = s.strip_prefix("SOR:") {
            if sor.replace(v).is_some() {
                return Err(oauth(400, "invalid_scope", "one SOR: scope per token"));
            }
        } else if let Some(v) = s.strip_prefix("GLN:") {
            if gln.replace(v).is_some() {
                return Err(oauth(400, "invalid_scope", "one GLN: scope per token"));
            }
        } else if !enrolled.contains(&s) {
            return Err(oauth(
                400,
                "invalid_scope",
                format!("scope {s} is not enrolled"),
            ));
        }
        granted.push(s.to_string());
    }
    let now_claims = json!({
        "iss": issuer, "aud": audience, "sub": client.client_id, "client_id": client.client_id,
        "iat": now, "nbf": now, "exp": now + lifetime,
        "jti": format!("{}-{now}-{}", client.client_id, thumbprint.get(..8).unwrap_or_default()),
        "scope": granted.join(" "),
        "cnf": {"x5t#S256": thumbprint},
    });
    let mut claims = now_claims;
    if let (Some(device), Some(members)) = (&client.device_id, claims.as_object_mut()) {
        members.insert("ehmi:eer:device_id".into(), json!(device));
    }
    match (sor, gln) {
        (None, None) => {}
        (Some(sor), Some(gln)) => {
            let ctx = client
                .org_context
                .iter()
                .find(|c| c.sor == sor && c.gln == gln)
                .ok_or_else(|| {
                    oauth(
                        400,
                        "invalid_scope",
                        "the client is not enrolled for this SOR/GLN context",
                    )
                })?;
            if let Some(members) = claims.as_object_mut() {
                members.insert("ehmi:org_context".into(), json!(ctx));
            }
        }
        _ => {
            return Err(oauth(
                400,
                "invalid_scope",
                "SOR: and GLN: scopes go together",
            ))
        }
    }
    Ok(claims)
}

struct Issuer {
    config: IssuerConfig,
    key: SigningKey,
    enrolments: Vec<Enrolment>,
}

/// The leaf certificate, kept from the handshake so `/token` can read its subject.
struct PeerCertificate(Vec<u8>);

struct KeepPeerCertificate;

#[async_trait]
impl TlsAccept for KeepPeerCertificate {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        tls.peer_certificate_der()
            .map(|d| Arc::new(PeerCertificate(d.to_vec())) as Arc<dyn Any + Send + Sync>)
    }
}

fn json_reply(status: u16, body: &Value) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", bytes.len())
        .header("Cache-Control", "no-store")
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for Issuer {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.as_str().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/jwks") => json_reply(200, &self.key.jwks()),
            ("POST", "/token") => {
                let der = session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .and_then(|s| s.extension.get::<PeerCertificate>())
                    .map(|p| p.0.clone());
                let Some(der) = der else {
                    return json_reply(
                        401,
                        &json!({"error": "invalid_client", "error_description": "no client certificate"}),
                    );
                };
                let subject = match x509_parser::parse_x509_certificate(&der) {
                    Ok((_, cert)) => cert.subject().to_string(),
                    Err(_) => String::new(),
                };
                let mut body = Vec::new();
                while let Ok(Some(chunk)) = session.read_request_body().await {
                    body.extend_from_slice(&chunk);
                    if body.len() > 16 * 1024 {
                        return json_reply(400, &json!({"error": "invalid_request"}));
                    }
                }
                let form: Vec<(String, String)> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                let thumbprint = crate::auth::token::thumbprint_of(&der);
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let c = &self.config;
                let presented = Presented {
                    subject_dn: &subject,
                    thumbprint: &thumbprint,
                };
                let issuance = Issuance {
                    issuer: &c.issuer,
                    audience: &c.audience,
                    now,
                    lifetime: c.token_lifetime_seconds,
                };
                match token_claims(&self.enrolments, &form, &presented, &issuance) {
                    Ok(claims) => match self.key.sign(&claims) {
                        Ok(token) => json_reply(
                            200,
                            &json!({
                                "access_token": token, "token_type": "Bearer",
                                "expires_in": c.token_lifetime_seconds, "scope": claims.get("scope"),
                            }),
                        ),
                        Err(e) => json_reply(
                            500,
                            &json!({"error": "server_error", "error_description": e}),
                        ),
                    },
                    Err(e) => json_reply(
                        e.status,
                        &json!({"error": e.error, "error_description": e.description}),
                    ),
                }
            }
            _ => json_reply(404, &json!({"error": "not_found"})),
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        base.join(p)
    } else {
        p.to_path_buf()
    }
}

/// Read `eds-proxy dev issuer --config FILE` (TOML); relative paths are resolved against the
/// file's folder.
///
/// Errors: the file cannot be read or parsed (unknown keys included).
pub fn load_config(path: &Path) -> Result<IssuerConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut c: IssuerConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    for p in [
        &mut c.server_cert,
        &mut c.server_key,
        &mut c.client_ca,
        &mut c.signing_key,
        &mut c.enrolment,
    ] {
        *p = resolve(base, p);
    }
    Ok(c)
}

/// Build the issuer's Pingora server (one TLS listener).
pub fn build_server(c: IssuerConfig) -> Result<Server, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read_to_string(&c.signing_key)
        .map_err(|e| format!("{}: {e}", c.signing_key.display()))?;
    let key = SigningKey::from_pem(&c.kid, &pem)?;
    let enrolment_text = std::fs::read_to_string(&c.enrolment)
        .map_err(|e| format!("{}: {e}", c.enrolment.display()))?;
    let enrolments: Vec<Enrolment> =
        crate::fhir::strict_json::parse_into(enrolment_text.as_bytes())
            .map_err(|e| format!("{}: {e}", c.enrolment.display()))?;
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(&c.client_ca).map_err(|e| e.to_string())?
    {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    // /jwks is public; /token insists on a client certificate itself.
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
    let callbacks: TlsAcceptCallbacks = Box::new(KeepPeerCertificate);
    let mut tls = TlsSettings::with_callbacks(callbacks).map_err(|e| e.to_string())?;
    tls.set_certificate_chain_file(&c.server_cert.to_string_lossy())
        .map_err(|e| e.to_string())?;
    tls.set_private_key_file(&c.server_key.to_string_lossy())
        .map_err(|e| e.to_string())?;
    tls.set_client_cert_verifier(verifier);
    let listen = c.listen.clone();
    log::warn!("DEVELOPMENT token issuer on {listen}: not for production use");
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new(
        "eds-proxy dev issuer".to_string(),
        HttpServer::new_app(Issuer {
            config: c,
            key,
            enrolments,
        }),
    );
    service.add_tls_with_settings(&listen, None, tls);
    server.add_service(service);
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolments() -> Vec<Enrolment> {
        serde_json::from_value(json!([{
            "client_id": "cura-eua", "tls_client_auth_subject_dn": "subject=CN=Cura-EUA, O=Systematic",
            "scope": "EDS system/AuditEvent.crs", "ehmi:eer:device_id": "Cura-EUA",
            "ehmi:org_context": [{"name": "Aarhus Kommune", "sor": "937961000016000", "gln": "GLN-1234"}]
        }]))
        .unwrap()
    }

    fn form(scope: &str) -> Vec<(String, String)> {
        vec![
            ("grant_type".into(), "client_credentials".into()),
            ("client_id".into(), "cura-eua".into()),
            ("scope".into(), scope.into()),
        ]
    }

    fn issue(scope: &str, dn: &str) -> Result<Value, OAuthError> {
        token_claims(
            &enrolments(),
            &form(scope),
            &Presented {
                subject_dn: dn,
                thumbprint: "THUMB",
            },
            &Issuance {
                issuer: "https://iss",
                audience: "eds",
                now: 1000,
                lifetime: 600,
            },
        )
    }

    #[test]
    fn enrolled_context_gets_a_bound_token_with_eds_claims() {
        let c = issue(
            "EDS system/AuditEvent.crs SOR:937961000016000 GLN:GLN-1234",
            "CN=Cura-EUA, O=Systematic",
        )
        .unwrap();
        assert_eq!(c["cnf"]["x5t#S256"], "THUMB");
        assert_eq!(c["ehmi:eer:device_id"], "Cura-EUA");
        assert_eq!(c["ehmi:org_context"]["sor"], "937961000016000");
        assert_eq!(c["exp"], 1600);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            issue(
                "EDS system/AuditEvent.crs SOR:1 GLN:GLN-1234",
                "CN=Cura-EUA, O=Systematic"
            )
            .unwrap_err()
            .error,
            "invalid_scope"
        );
        assert_eq!(
            issue(
                "EDS system/AuditEvent.crs SOR:937961000016000",
                "CN=Cura-EUA, O=Systematic"
            )
            .unwrap_err()
            .error,
            "invalid_scope"
        );
        assert_eq!(
            issue("EDS system/*.crs", "CN=Cura-EUA, O=Systematic")
                .unwrap_err()
                .error,
            "invalid_scope"
        );
        assert_eq!(
            issue("EDS system/AuditEvent.crs", "CN=Other, O=Systematic")
                .unwrap_err()
                .error,
            "invalid_client"
        );
    }
}
