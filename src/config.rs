//! Configuration: one TOML file, parsed into typed settings and checked key by key.
//!
//! `load` is what the proxy runs with; `check` is what `eds-proxy check-config` prints. Both
//! go through the same validation so a file that passes the check also starts.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// One thing wrong with a configuration file, named by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key path, e.g. `token.jwks_url` (`<file>` for the file as a whole).
    pub key: String,
    /// What is wrong with it, for a person to read.
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn problem(key: &str, reason: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The whole configuration file: each field is the TOML table of the same name.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `[listen]`: the FHIR listener (mTLS).
    pub listen: ListenConfig,
    /// `[admin]`: metrics and health probes.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[upstream]`: the FHIR server behind the proxy.
    pub upstream: UpstreamConfig,
    /// `[public]`: how clients address the proxy.
    pub public: PublicConfig,
    /// `[token]`: access-token validation.
    pub token: TokenConfig,
    /// `[access]`: principals and the labels that constrain them.
    #[serde(default)]
    pub access: AccessConfig,
    /// `[paging]`: page-handle signing.
    pub paging: PagingConfig,
    /// `[limits]`: sizes beyond which requests are refused.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[response]`: how answers are shaped beyond the access check.
    #[serde(default)]
    pub response: ResponseConfig,
    /// `[server]`: the server process.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[audit]`: the MinLog audit stream.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]`: where the MinLog audit records go (`crate::audit`, `docs/audit-record.md`).
/// The stream is not the log: the log level does not govern it, and an answer whose record
/// cannot be written is refused (503).
#[derive(Debug, Clone, Deserialize)]
pub struct AuditConfig {
    /// `stdout` (default: the log goes to stderr, so stdout carries only audit records),
    /// `stderr`, or a file the records are appended to (opened for each record, so a rotated
    /// file is picked up; written and `fsync`ed before the answer is sent).
    #[serde(default = "default_audit_path")]
    pub path: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: default_audit_path(),
        }
    }
}

fn default_audit_path() -> String {
    "stdout".into()
}

impl AuditConfig {
    /// The file the records go to; `None` for `stdout`/`stderr`.
    pub fn file(&self) -> Option<&Path> {
        match self.path.as_str() {
            "stdout" | "stderr" => None,
            p => Some(Path::new(p)),
        }
    }
}

/// How answers are shaped beyond the access check.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseConfig {
    /// Remove `Bundle.total` from every searchset and refuse `_summary=count` (400). A count
    /// is a number the proxy cannot check entry by entry: turn this on when the FHIR server is
    /// not trusted to count only what the `_security` constraint admits. Off by default: the
    /// server answers the constrained query, and `total` is always removed when the check
    /// withheld an entry.
    #[serde(default)]
    pub drop_totals: bool,
}

/// `[listen]`: the FHIR listener. TLS with a required client certificate, which access tokens
/// are bound to (RFC 8705 §3).
#[derive(Debug, Clone, Deserialize)]
pub struct ListenConfig {
    /// `host:port` to listen on.
    pub address: String,
    /// PEM certificate chain the proxy presents.
    pub server_cert: PathBuf,
    /// PEM private key of `server_cert`.
    pub server_key: PathBuf,
    /// PEM CA certificates a client certificate must chain to.
    pub client_ca: PathBuf,
    /// Offer HTTP/2 (ALPN `h2`) besides HTTP/1.1; default `true`.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Certificate revocation lists (PEM `X509 CRL` blocks or one DER CRL per file) checked
    /// at every handshake (RFC 5280 §6.3); default none. With CRLs configured, every
    /// certificate of the client's chain must have a CRL from its issuer here, else the
    /// handshake fails (fail closed); a CRL past its `nextUpdate` is still used. Re-read on
    /// SIGHUP (README, "Operating eds-proxy").
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
    /// Bytes of the read buffer Pingora puts under each client connection's TLS layer
    /// (`L4BufferSettings::read`), held for the connection's life; default 0: none, rustls
    /// reads the socket itself, 4 KiB at a time. Pingora's own default (64 KiB) is 60% of what
    /// an idle keep-alive connection costs and saves only read calls on bodies of several TLS
    /// records (3 per 12 KB create); a buffer of 4 KiB or less saves none, since rustls'
    /// 4 KiB reads bypass it (PERFORMANCE.md, "Memory").
    #[serde(default)]
    pub read_buffer_bytes: usize,
}

/// `[admin]`: plain-HTTP listener for `/metrics`, `/healthz` and `/readyz`. Keep it off the
/// public network.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminConfig {
    /// `host:port`; default `127.0.0.1:9100`.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Milliseconds between two reachability probes of the FHIR server (`/readyz`); default
    /// 5000. One background task probes; a scrape of `/readyz` reads the last result.
    #[serde(default = "default_probe_interval_ms")]
    pub upstream_probe_interval_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
            upstream_probe_interval_ms: default_probe_interval_ms(),
        }
    }
}

fn default_probe_interval_ms() -> u64 {
    5_000
}

/// `[upstream]`: the FHIR server the proxy forwards to.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamConfig {
    /// Base URL of the FHIR server (`http` or `https`), e.g. `http://hapi:8080/fhir`.
    pub base_url: String,
    /// Milliseconds to connect to the FHIR server; default 2000. Beyond it: 504.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Milliseconds to wait for the FHIR server's answer; default 30000. Beyond it: 504.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Kept below the FHIR server's keep-alive so a pooled connection is never reused after
    /// the server has closed it (only idempotent requests could be retried safely).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Seconds a resolved address of the `base_url` host is reused for new connections;
    /// default 5, 0 resolves for every new request. A container's address changes when it
    /// restarts; if resolving fails the last address is kept.
    #[serde(default = "default_resolve_ttl_seconds")]
    pub resolve_ttl_seconds: u64,
    /// `https` only: PEM CA bundle the FHIR server's certificate must chain to; default the
    /// system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// `https` only: PEM certificate chain the proxy presents to the FHIR server (mTLS);
    /// set together with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// `https` only: PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// `https` only: the name sent as SNI and checked against the FHIR server's certificate;
    /// default the `base_url` host.
    #[serde(default)]
    pub sni: Option<String>,
    /// `[upstream.probe]`: the backend conformance probe.
    #[serde(default)]
    pub probe: ProbeConfig,
}

/// `[upstream.probe]`: the backend conformance probe (`fhir::conformance`, issue 13).
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeConfig {
    /// Seconds between probe rounds; default 300; 0 turns the probe off. A round that fails
    /// is repeated after at most 10 s.
    #[serde(default = "default_probe_interval")]
    pub interval_seconds: u64,
    /// What a nonconformant FHIR server means: `warn` (default) or `refuse`. Either way
    /// `/readyz` answers 503 with the reason and `eds_proxy_backend_conformant` is 0.
    #[serde(default)]
    pub on_nonconformant: OnNonconformant,
    /// Make the `capability` check (the CapabilityStatement lists the EDS IG's search
    /// parameters) count; default false: advisory (counted and logged only), since HAPI 8.8
    /// does not list SearchParameters created at run time.
    #[serde(default)]
    pub require_capability_listing: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval_seconds: default_probe_interval(),
            on_nonconformant: OnNonconformant::default(),
            require_capability_listing: false,
        }
    }
}

/// `upstream.on_nonconformant`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonconformant {
    /// Report only (readiness, metric, log); FHIR requests are still served, the response
    /// check still withholding whatever the server returns outside the caller's constraint.
    #[default]
    Warn,
    /// Also answer FHIR requests that would reach the FHIR server with 503 (reason
    /// `backend_nonconformant`) until a probe round passes.
    Refuse,
}

/// `[public]`: how clients address the proxy.
#[derive(Debug, Clone, Deserialize)]
pub struct PublicConfig {
    /// The proxy's public base URL (`https`): links and `fullUrl`s in answers are rebased onto it.
    pub base_url: String,
}

/// `[token]`: JWT access tokens (RFC 9068) signed by one issuer, bound to the client
/// certificate (RFC 8705 §3).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenConfig {
    /// Expected `iss` claim, compared exactly (RFC 7519 §4.1.1).
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one (RFC 7519 §4.1.3).
    pub audience: Vec<String>,
    /// HTTPS URL of the issuer's JWK Set (RFC 7517 §5); set this or `jwks_file`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWK Set file (RFC 7517 §5) read instead of `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Extra CA bundle trusted for the JWKS HTTPS endpoint (besides the system roots).
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// Accepted JWS `alg` names (RFC 7518 §3.1), each one of `SUPPORTED_ALGORITHMS`; default
    /// `PS256`, `ES256`, `EdDSA`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on the time claims, in seconds; default 30.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Longest accepted token lifetime, `exp − iat` (or `exp − now` without `iat`).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_seconds: u64,
    /// Least time between two JWKS loads, in seconds (default 30): tokens naming unknown keys
    /// cannot make the proxy hammer the issuer.
    #[serde(default = "default_refresh_floor")]
    pub jwks_refresh_floor_seconds: u64,
    /// Seconds after a successful JWKS load at which the keys count as stale and are reloaded on
    /// use; default 3600.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_seconds: u64,
    /// Most validated tokens kept in the token cache; default 10000.
    #[serde(default = "default_token_cache_entries")]
    pub cache_max_entries: u64,
}

/// `[access]`: the principal rules and the `meta.security` labels they are enforced with
/// (EDS security page, "Calls to EDS").
#[derive(Debug, Clone, Deserialize)]
pub struct AccessConfig {
    /// `acr` values accepted in user tokens; default NSIS Substantial and High (the IG requires
    /// NSIS Substantial for users).
    #[serde(default = "default_acr_values")]
    pub accepted_acr: Vec<String>,
    /// The role in the `priv` claim that makes a user with a `cvr` a Supporter; default
    /// `urn:dk:healthcare:ehmi:eds:role:supporter`.
    #[serde(default = "default_supporter_role")]
    pub supporter_role: String,
    /// `meta.security` system of a registration's device-id label.
    #[serde(default = "default_device_label")]
    pub device_label_system: String,
    /// `meta.security` system of a registration's SOR-code labels (sender and receiver).
    #[serde(default = "default_sor_label")]
    pub sor_label_system: String,
    /// `meta.security` system of a registration's CPR label (the citizen).
    #[serde(default = "default_cpr_label")]
    pub cpr_label_system: String,
    /// Any `meta.security` system under this prefix belongs to the proxy: clients may not
    /// send such codings nor search on them.
    #[serde(default = "default_label_prefix")]
    pub reserved_label_prefix: String,
    /// TOML or JSON file mapping CVR numbers to SOR codes (`cvr_directory::CvrDirectory`).
    /// Without it no Supporter has anything to see, so supporters are refused (403).
    #[serde(default)]
    pub cvr_directory: Option<PathBuf>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            accepted_acr: default_acr_values(),
            supporter_role: default_supporter_role(),
            device_label_system: default_device_label(),
            sor_label_system: default_sor_label(),
            cpr_label_system: default_cpr_label(),
            reserved_label_prefix: default_label_prefix(),
            cvr_directory: None,
        }
    }
}

/// `[paging]`: page handles (`fhir::paging`).
#[derive(Debug, Clone, Deserialize)]
pub struct PagingConfig {
    /// File holding the HMAC-SHA-256 key that signs page handles; at least
    /// `MIN_PAGE_SECRET_BYTES` bytes after trimming.
    pub secret_file: PathBuf,
}

/// `[limits]`: sizes beyond which a request or answer is refused.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitsConfig {
    /// Largest request body, in bytes; default 1 MiB. Beyond it: 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest `_count`; default 100. A larger `_count` is lowered to it.
    #[serde(default = "default_max_count")]
    pub max_count: u32,
    /// Largest FHIR server answer the proxy reads, in bytes; default 32 MiB. Beyond it: 502.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Longest request target (path and query); the FHIR server behind has its own, often 8 KiB.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Largest sum of request header names and values.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: default_max_body(),
            max_count: default_max_count(),
            max_response_bytes: default_max_response_bytes(),
            max_uri_bytes: default_max_uri_bytes(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

/// `[server]`: the server process.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Worker threads per listener; default 2.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds in-flight requests get to finish on a graceful shutdown; default 30.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: default_threads(),
            grace_period_seconds: default_grace(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_admin_address() -> String {
    "127.0.0.1:9100".into()
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_read_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    5_000
}
fn default_resolve_ttl_seconds() -> u64 {
    5
}
fn default_algorithms() -> Vec<String> {
    vec!["PS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> u64 {
    30
}
/// One hour: the usual lifetime of an OAuth access token, and what `eds-proxy dev
/// mint-token` issues by default (the dev issuer issues 600 s). A stolen certificate-bound
/// token is of no use without the key, but a token that outlives the revocation of the
/// user's role or the station's enrolment keeps working until it expires.
fn default_max_lifetime() -> u64 {
    3_600
}
/// A day: beyond it, the limit no longer bounds anything an access token should do.
pub const MAX_MAX_LIFETIME_SECONDS: u64 = 86_400;

/// The largest `listen.read_buffer_bytes` accepted: Pingora's default (64 KiB) times 16; the
/// buffer is allocated per connection, so a typo would multiply the memory of every one.
pub const MAX_READ_BUFFER_BYTES: usize = 1 << 20;
fn default_refresh_floor() -> u64 {
    30
}
fn default_jwks_max_age() -> u64 {
    3_600
}
fn default_token_cache_entries() -> u64 {
    10_000
}
/// `acr` of NSIS assurance level Substantial (Danish NSIS level-of-assurance URI).
pub const NSIS_SUBSTANTIAL: &str = "https://data.gov.dk/concept/core/nsis/loa/Substantial";
/// `acr` of NSIS assurance level High.
pub const NSIS_HIGH: &str = "https://data.gov.dk/concept/core/nsis/loa/High";
fn default_acr_values() -> Vec<String> {
    vec![NSIS_SUBSTANTIAL.into(), NSIS_HIGH.into()]
}
fn default_supporter_role() -> String {
    "urn:dk:healthcare:ehmi:eds:role:supporter".into()
}
/// Default `access.reserved_label_prefix`; the default label systems lie under it.
pub const DEFAULT_LABEL_PREFIX: &str = "urn:eds-proxy:label:";
fn default_label_prefix() -> String {
    DEFAULT_LABEL_PREFIX.into()
}
fn default_device_label() -> String {
    format!("{DEFAULT_LABEL_PREFIX}device-id")
}
fn default_sor_label() -> String {
    format!("{DEFAULT_LABEL_PREFIX}sor")
}
fn default_cpr_label() -> String {
    format!("{DEFAULT_LABEL_PREFIX}cpr")
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_count() -> u32 {
    100
}
fn default_max_response_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_max_uri_bytes() -> usize {
    8 * 1024
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_probe_interval() -> u64 {
    300
}
fn default_threads() -> usize {
    2
}
fn default_grace() -> u64 {
    30
}

/// Algorithms the proxy can ever accept: asymmetric only, never `none` or HMAC.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "RS256",
];

/// Minimum length of the page-signing secret, in bytes.
pub const MIN_PAGE_SECRET_BYTES: usize = 32;

impl Config {
    /// `upstream.connect_timeout_ms` as a duration.
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream.connect_timeout_ms)
    }
    /// `upstream.read_timeout_ms` as a duration.
    pub fn upstream_read_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream.read_timeout_ms)
    }
    /// `upstream.idle_timeout_ms` as a duration.
    pub fn upstream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream.idle_timeout_ms)
    }
}

/// Parse and validate a configuration file. Relative paths inside it are resolved against
/// the file's own folder, so a config works wherever the proxy is started from.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigProblem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![problem(
            "<file>",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&text, base)
}

/// Parse TOML text; `base` resolves relative paths.
pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigProblem>> {
    let mut unknown = BTreeSet::new();
    let de = toml::Deserializer::new(text);
    let mut record_unknown = |path: serde_ignored::Path<'_>| {
        unknown.insert(path.to_string());
    };
    let ignoring = serde_ignored::Deserializer::new(de, &mut record_unknown);
    let parsed: Result<Config, _> = serde_path_to_error::deserialize(ignoring);
    let mut problems: Vec<ConfigProblem> =
        unknown.iter().map(|k| problem(k, "unknown key")).collect();
    let mut config = match parsed {
        Ok(c) => c,
        Err(e) => {
            let key = e.path().to_string();
            let reason = e.into_inner().message().to_string();
            problems.push(problem(&key, reason));
            return Err(problems);
        }
    };
    resolve_paths(&mut config, base);
    problems.extend(validate(&config));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn resolve_paths(c: &mut Config, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    fix(&mut c.listen.server_cert);
    fix(&mut c.listen.server_key);
    fix(&mut c.listen.client_ca);
    fix(&mut c.paging.secret_file);
    for p in c.listen.client_crls.iter_mut() {
        fix(p);
    }
    for p in [
        &mut c.upstream.ca,
        &mut c.upstream.client_cert,
        &mut c.upstream.client_key,
    ]
    .into_iter()
    .flatten()
    {
        fix(p);
    }
    if let Some(p) = c.token.jwks_file.as_mut() {
        fix(p);
    }
    if let Some(p) = c.token.jwks_ca.as_mut() {
        fix(p);
    }
    if let Some(p) = c.access.cvr_directory.as_mut() {
        fix(p);
    }
    if let Some(p) = c.audit.file() {
        if p.is_relative() {
            c.audit.path = base.join(p).to_string_lossy().into_owned();
        }
    }
}

fn validate(c: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    check_socket_addr(&mut out, "listen.address", &c.listen.address);
    check_socket_addr(&mut out, "admin.address", &c.admin.address);
    check_pem(
        &mut out,
        "listen.server_cert",
        &c.listen.server_cert,
        PemKind::Certificates,
    );
    check_pem(
        &mut out,
        "listen.server_key",
        &c.listen.server_key,
        PemKind::PrivateKey,
    );
    check_pem(
        &mut out,
        "listen.client_ca",
        &c.listen.client_ca,
        PemKind::Certificates,
    );
    for (i, crl) in c.listen.client_crls.iter().enumerate() {
        if let Err(e) = std::fs::read(crl)
            .map_err(|e| e.to_string())
            .and_then(|b| crl_ders(&b).map(|_| ()))
        {
            out.push(problem(
                &format!("listen.client_crls[{i}]"),
                format!("{}: {e}", crl.display()),
            ));
        }
    }
    check_url(
        &mut out,
        "upstream.base_url",
        &c.upstream.base_url,
        &["http", "https"],
    );
    check_upstream_tls(&mut out, &c.upstream);
    check_url(&mut out, "public.base_url", &c.public.base_url, &["https"]);
    for (key, v) in [
        ("upstream.connect_timeout_ms", c.upstream.connect_timeout_ms),
        ("upstream.read_timeout_ms", c.upstream.read_timeout_ms),
        ("upstream.idle_timeout_ms", c.upstream.idle_timeout_ms),
        (
            "admin.upstream_probe_interval_ms",
            c.admin.upstream_probe_interval_ms,
        ),
    ] {
        if v == 0 {
            out.push(problem(key, "must be greater than 0"));
        }
    }
    if c.token.issuer.trim().is_empty() {
        out.push(problem("token.issuer", "must not be empty"));
    }
    if c.token.audience.is_empty() || c.token.audience.iter().any(|a| a.trim().is_empty()) {
        out.push(problem(
            "token.audience",
            "needs at least one non-empty audience",
        ));
    }
    match (&c.token.jwks_url, &c.token.jwks_file) {
        (None, None) => out.push(problem("token", "set one of jwks_url or jwks_file")),
        (Some(_), Some(_)) => out.push(problem("token", "set only one of jwks_url and jwks_file")),
        (Some(u), None) => check_url(&mut out, "token.jwks_url", u, &["https"]),
        (None, Some(f)) => {
            if let Err(e) = std::fs::read_to_string(f)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    crate::fhir::strict_json::parse_into::<jsonwebtoken::jwk::JwkSet>(t.as_bytes())
                })
            {
                out.push(problem("token.jwks_file", format!("{}: {e}", f.display())));
            }
        }
    }
    if let Some(ca) = &c.token.jwks_ca {
        check_pem(&mut out, "token.jwks_ca", ca, PemKind::Certificates);
    }
    if c.token.max_lifetime_seconds == 0 || c.token.max_lifetime_seconds > MAX_MAX_LIFETIME_SECONDS
    {
        out.push(problem(
            "token.max_lifetime_seconds",
            format!("must be between 1 and {MAX_MAX_LIFETIME_SECONDS}"),
        ));
    }
    if c.token.algorithms.is_empty() {
        out.push(problem("token.algorithms", "needs at least one algorithm"));
    }
    for alg in &c.token.algorithms {
        if !SUPPORTED_ALGORITHMS.contains(&alg.as_str()) {
            out.push(problem(
                "token.algorithms",
                format!(
                    "`{alg}` is not allowed (asymmetric only: {})",
                    SUPPORTED_ALGORITHMS.join(", ")
                ),
            ));
        }
    }
    if c.access.accepted_acr.is_empty() {
        out.push(problem("access.accepted_acr", "needs at least one value"));
    }
    if c.access.supporter_role.trim().is_empty() {
        out.push(problem("access.supporter_role", "must not be empty"));
    }
    let prefix = &c.access.reserved_label_prefix;
    if prefix.is_empty() {
        out.push(problem("access.reserved_label_prefix", "must not be empty"));
    }
    for (key, system) in [
        ("access.device_label_system", &c.access.device_label_system),
        ("access.sor_label_system", &c.access.sor_label_system),
        ("access.cpr_label_system", &c.access.cpr_label_system),
    ] {
        if !system.starts_with(prefix.as_str()) {
            out.push(problem(
                key,
                format!("must start with access.reserved_label_prefix `{prefix}`"),
            ));
        }
        if !crate::fhir::labels::is_plain_token(system) {
            out.push(problem(key, "must not contain | , $ or \\"));
        }
    }
    // Each kind of label needs its own system: shared, a station whose device id equals a
    // citizen's CPR number (or an organisation's SOR code) would be admitted to their records.
    let systems = [
        ("access.device_label_system", &c.access.device_label_system),
        ("access.sor_label_system", &c.access.sor_label_system),
        ("access.cpr_label_system", &c.access.cpr_label_system),
    ];
    for (i, (key, system)) in systems.iter().enumerate() {
        if let Some((earlier, _)) = systems.iter().take(i).find(|(_, s)| s == system) {
            out.push(problem(
                key,
                format!("must differ from {earlier} (each kind of label needs its own system)"),
            ));
        }
    }
    if c.upstream.probe.on_nonconformant == OnNonconformant::Refuse
        && c.upstream.probe.interval_seconds == 0
    {
        out.push(problem(
            "upstream.probe.on_nonconformant",
            "`refuse` needs the probe (upstream.probe.interval_seconds > 0)",
        ));
    }
    if let Some(dir) = &c.access.cvr_directory {
        if let Err(e) = crate::cvr_directory::CvrDirectory::load(dir) {
            out.push(problem("access.cvr_directory", e));
        }
    }
    match std::fs::read(&c.paging.secret_file) {
        Err(e) => out.push(problem(
            "paging.secret_file",
            format!("missing secret {}: {e}", c.paging.secret_file.display()),
        )),
        Ok(bytes) if trim_secret(&bytes).len() < MIN_PAGE_SECRET_BYTES => out.push(problem(
            "paging.secret_file",
            format!("secret must be at least {MIN_PAGE_SECRET_BYTES} bytes"),
        )),
        Ok(_) => {}
    }
    if c.limits.max_body_bytes == 0 {
        out.push(problem("limits.max_body_bytes", "must be greater than 0"));
    }
    if c.limits.max_uri_bytes < 256 {
        out.push(problem("limits.max_uri_bytes", "must be at least 256"));
    }
    if c.limits.max_header_bytes < 1024 {
        out.push(problem("limits.max_header_bytes", "must be at least 1024"));
    }
    if c.limits.max_count == 0 {
        out.push(problem("limits.max_count", "must be greater than 0"));
    }
    if c.server.threads == 0 {
        out.push(problem("server.threads", "must be greater than 0"));
    }
    if c.listen.read_buffer_bytes > MAX_READ_BUFFER_BYTES {
        out.push(problem(
            "listen.read_buffer_bytes",
            format!("must be at most {MAX_READ_BUFFER_BYTES} (it is allocated per connection)"),
        ));
    }
    if let Some(file) = c.audit.file() {
        // Not created here (check-config has no side effects): the folder must exist, and an
        // existing file must be a file.
        match file.parent().map(|d| d.is_dir()) {
            Some(true) if !file.is_dir() => {}
            _ => out.push(problem(
                "audit.path",
                format!(
                    "`{}` is not stdout, stderr or a file in an existing folder",
                    file.display()
                ),
            )),
        }
    }
    out
}

/// `[upstream]` TLS keys: only with an `https` base URL, certificate and key together, an SNI
/// that is a DNS name or IP address (an empty one would turn verification off in Pingora).
fn check_upstream_tls(out: &mut Vec<ConfigProblem>, u: &UpstreamConfig) {
    let https = Url::parse(&u.base_url).is_ok_and(|url| url.scheme() == "https");
    for (key, set) in [
        ("upstream.ca", u.ca.is_some()),
        ("upstream.client_cert", u.client_cert.is_some()),
        ("upstream.client_key", u.client_key.is_some()),
        ("upstream.sni", u.sni.is_some()),
    ] {
        if set && !https {
            out.push(problem(key, "only for an https upstream.base_url"));
        }
    }
    if u.client_cert.is_some() != u.client_key.is_some() {
        out.push(problem(
            "upstream.client_cert",
            "set client_cert and client_key together",
        ));
    }
    if let Some(ca) = &u.ca {
        check_pem(out, "upstream.ca", ca, PemKind::Certificates);
    }
    if let Some(cert) = &u.client_cert {
        check_pem(out, "upstream.client_cert", cert, PemKind::Certificates);
    }
    if let Some(key) = &u.client_key {
        check_pem(out, "upstream.client_key", key, PemKind::PrivateKey);
    }
    if let Some(sni) = &u.sni {
        if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
            out.push(problem(
                "upstream.sni",
                format!("`{sni}` is not a DNS name or IP address"),
            ));
        }
    }
}

/// The CRLs of one `listen.client_crls` file: every `X509 CRL` block of a PEM file, or the
/// file itself when it is DER (RFC 5280 §5; a DER CRL starts with a SEQUENCE tag, 0x30).
/// Only the framing is checked here; the proxy parses each CRL when it builds the client
/// verifier (at start, `check-config` and reload).
///
/// Errors: a PEM file without a CRL block or with a broken one, or bytes that are neither.
pub fn crl_ders(
    bytes: &[u8],
) -> Result<Vec<rustls_pki_types::CertificateRevocationListDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateRevocationListDer;
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM CRL: {e}"))?;
    if crls.is_empty() {
        return Err("no X509 CRL block (PEM) and not a DER CRL".into());
    }
    Ok(crls)
}

/// Secrets are read from files that often end in a newline; it is not part of the secret.
pub fn trim_secret(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

fn check_socket_addr(out: &mut Vec<ConfigProblem>, key: &str, v: &str) {
    if v.parse::<std::net::SocketAddr>().is_err() {
        out.push(problem(
            key,
            format!("`{v}` is not an address like 0.0.0.0:8443"),
        ));
    }
}

fn check_url(out: &mut Vec<ConfigProblem>, key: &str, v: &str, schemes: &[&str]) {
    match Url::parse(v) {
        Err(e) => out.push(problem(key, format!("`{v}` is not a URL: {e}"))),
        Ok(u) if !schemes.contains(&u.scheme()) => out.push(problem(
            key,
            format!("scheme must be one of {}", schemes.join(", ")),
        )),
        Ok(u) if u.host_str().is_none() => out.push(problem(key, "URL has no host")),
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            out.push(problem(key, "URL must not have a query or fragment"))
        }
        Ok(_) => {}
    }
}

enum PemKind {
    Certificates,
    PrivateKey,
}

fn check_pem(out: &mut Vec<ConfigProblem>, key: &str, path: &Path, kind: PemKind) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            out.push(problem(key, format!("cannot read {}: {e}", path.display())));
            return;
        }
    };
    let ok = match kind {
        PemKind::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            matches!(certs, Ok(c) if !c.is_empty())
        }
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if !ok {
        let what = match kind {
            PemKind::Certificates => "no PEM certificate",
            PemKind::PrivateKey => "no PEM private key",
        };
        out.push(problem(key, format!("{what} in {}", path.display())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_named_by_path() {
        let text = r#"
[listen]
address = "nope"
server_cert = "/nonexistent/cert.pem"
server_key = "/nonexistent/key.pem"
client_ca = "/nonexistent/ca.pem"
colour = "blue"
read_buffer_bytes = 1048577
[upstream]
base_url = "ftp://x"
[public]
base_url = "https://proxy.example/fhir"
[token]
issuer = "https://issuer"
audience = ["eds"]
jwks_url = "https://issuer/jwks"
algorithms = ["HS256"]
max_lifetime_seconds = 0
[paging]
secret_file = "/nonexistent/secret"
"#;
        let problems = parse(text, Path::new("/")).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "listen.colour",
            "listen.address",
            "listen.server_cert",
            "listen.server_key",
            "listen.client_ca",
            "listen.read_buffer_bytes",
            "upstream.base_url",
            "token.algorithms",
            "token.max_lifetime_seconds",
            "paging.secret_file",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn audit_path_and_probe_interval_are_checked() {
        let base = "[listen]\naddress = \"127.0.0.1:1\"\nserver_cert = \"c\"\nserver_key = \"k\"\nclient_ca = \"a\"\n[upstream]\nbase_url = \"http://x\"\n[public]\nbase_url = \"https://p\"\n[token]\nissuer = \"i\"\naudience = [\"a\"]\njwks_url = \"https://i/j\"\n[paging]\nsecret_file = \"s\"\n";
        let keys = |extra: &str| -> Vec<String> {
            parse(&format!("{base}{extra}"), Path::new("/nonexistent"))
                .unwrap_err()
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        for ok in [
            "",
            "[audit]\npath = \"stdout\"\n",
            "[audit]\npath = \"stderr\"\n",
        ] {
            let k = keys(ok);
            assert!(!k.iter().any(|k| k.starts_with("audit")), "{ok}: {k:?}");
        }
        // Relative to the config's folder, which does not exist here; a folder is no file.
        assert!(keys("[audit]\npath = \"audit.jsonl\"\n").contains(&"audit.path".to_string()));
        assert!(keys("[audit]\npath = \"/\"\n").contains(&"audit.path".to_string()));
        let tmp = std::env::temp_dir().join("audit-check.jsonl");
        let k = keys(&format!("[audit]\npath = \"{}\"\n", tmp.display()));
        assert!(!k.contains(&"audit.path".to_string()), "{k:?}");
        assert!(keys("[admin]\nupstream_probe_interval_ms = 0\n")
            .contains(&"admin.upstream_probe_interval_ms".to_string()));
    }

    /// Two label kinds sharing a system would let one principal's identifier select another
    /// kind's records: a station whose device id is a citizen's CPR number would see that
    /// citizen's registrations (c-any finding). And `refuse` without a probe would refuse
    /// nothing while looking configured.
    #[test]
    fn label_systems_are_distinct_and_refuse_needs_the_probe() {
        let base = "[listen]\naddress = \"127.0.0.1:1\"\nserver_cert = \"c\"\nserver_key = \"k\"\nclient_ca = \"a\"\n[public]\nbase_url = \"https://p\"\n[token]\nissuer = \"i\"\naudience = [\"a\"]\njwks_url = \"https://i/j\"\n[paging]\nsecret_file = \"s\"\n";
        let problems = |extra: &str| -> Vec<(String, String)> {
            parse(&format!("{base}{extra}"), Path::new("/nonexistent"))
                .unwrap_err()
                .into_iter()
                .map(|p| (p.key, p.reason))
                .collect()
        };
        let upstream = "[upstream]\nbase_url = \"http://x\"\n";
        let about = |extra: &str, key: &str| -> Vec<String> {
            problems(extra)
                .into_iter()
                .filter(|(k, _)| k == key)
                .map(|(_, m)| m)
                .collect()
        };
        assert_eq!(
            about(upstream, "access.cpr_label_system"),
            Vec::<String>::new()
        );
        let same = format!(
            "{upstream}[access]\ndevice_label_system = \"urn:eds-proxy:label:id\"\ncpr_label_system = \"urn:eds-proxy:label:id\"\n"
        );
        assert_eq!(
            about(&same, "access.cpr_label_system"),
            ["must differ from access.device_label_system (each kind of label needs its own system)"]
        );
        let sor_is_device =
            format!("{upstream}[access]\nsor_label_system = \"urn:eds-proxy:label:device-id\"\n");
        assert_eq!(
            about(&sor_is_device, "access.sor_label_system"),
            ["must differ from access.device_label_system (each kind of label needs its own system)"]
        );
        let refuse_off = "[upstream]\nbase_url = \"http://x\"\n[upstream.probe]\ninterval_seconds = 0\non_nonconformant = \"refuse\"\n";
        assert_eq!(
            about(refuse_off, "upstream.probe.on_nonconformant"),
            ["`refuse` needs the probe (upstream.probe.interval_seconds > 0)"]
        );
        let warn_off =
            "[upstream]\nbase_url = \"http://x\"\n[upstream.probe]\ninterval_seconds = 0\n";
        assert_eq!(
            about(warn_off, "upstream.probe.on_nonconformant"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let text = "[listen]\naddress = 5\n";
        let problems = parse(text, Path::new("/")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "listen.address");
    }

    #[test]
    fn crl_files_are_pem_blocks_or_der() {
        assert_eq!(crl_ders(&[0x30, 0x03, 1, 2, 3]).unwrap().len(), 1);
        let pem = "-----BEGIN X509 CRL-----\nMAMBAgM=\n-----END X509 CRL-----\n";
        assert_eq!(crl_ders(format!("{pem}{pem}").as_bytes()).unwrap().len(), 2);
        assert!(crl_ders(b"").is_err());
        assert!(
            crl_ders(b"-----BEGIN CERTIFICATE-----\nMAMBAgM=\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(crl_ders(b"garbage").is_err());
    }

    #[test]
    fn upstream_tls_keys_need_https_and_pairs() {
        let u = |base: &str, sni: Option<&str>, cert: bool| UpstreamConfig {
            base_url: base.into(),
            connect_timeout_ms: 1,
            read_timeout_ms: 1,
            idle_timeout_ms: 1,
            resolve_ttl_seconds: 5,
            ca: None,
            client_cert: cert.then(|| PathBuf::from("/nonexistent/c.pem")),
            client_key: None,
            sni: sni.map(str::to_string),
            probe: ProbeConfig::default(),
        };
        let keys = |u: &UpstreamConfig| {
            let mut out = Vec::new();
            check_upstream_tls(&mut out, u);
            out.into_iter().map(|p| p.key).collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&u("http://h/fhir", Some("h"), false)),
            ["upstream.sni"]
        );
        assert!(keys(&u("https://h/fhir", Some("fhir.example"), false)).is_empty());
        assert_eq!(
            keys(&u("https://h/fhir", Some(""), false)),
            ["upstream.sni"]
        );
        assert_eq!(
            keys(&u("https://h/fhir", None, true)),
            ["upstream.client_cert", "upstream.client_cert"]
        );
    }

    #[test]
    fn trims_secret_whitespace() {
        assert_eq!(trim_secret(b"abc\n"), b"abc");
        assert_eq!(trim_secret(b"\n"), b"");
    }
}
