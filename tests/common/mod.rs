//! Test harness: a real eds-proxy (real Pingora server, real mTLS with certificates made here)
//! in front of an in-process recording FHIR upstream ([`upstream`]), one caller helper
//! ([`caller::Caller`]: a client certificate, its HTTPS client and the token bound to it) and
//! one way to state an outcome ([`expect`]: status, issue code, the reason that refused, and
//! what the FHIR server saw). Raw bytes over mTLS live in [`raw`].
//!
//! # Writing a case (migration note for files written against the old helpers)
//!
//! ```ignore
//! let h = Harness::start("my-concern", Options::default());   // a proxy of the file's own
//! let s = h.caller("my-station", station_claims("dev-1", SOR, GLN));  // or h.station(cert, device)
//! let c = h.caller("my-citizen", citizen_claims("0101010101")).http2();
//! // One request, asserted at once (panics with every problem), its answer returned:
//! s.get("/AuditEvent/1").expect(&h, not_found()).await;
//! s.search("_include=*").expect(&h, invalid().because("refused_parameter")).await;
//! let a = s.create(&body).expect(&h, created()).await;        // a.json, a.header("location")
//! // Or a table, every failing case reported at once:
//! verdict(&[run_cases(&h, "my table", vec![
//!     case("control: search", s.search("message-id=a"), search(CONSTRAINT, "message-id=a")),
//!     case("a citizen creates", c.create(&body), forbidden().because("not_a_station")),
//! ]).await]);
//! ```
//!
//! Old → new: `h.client(&cert).get(h.url(rel)).bearer_auth(&token)` → `h.caller(name,
//! claims).get(rel)` (or `h.caller_for(cert, Some(token))` for a token minted elsewhere,
//! `.with_token(t)` / `.without_token()` for forged or missing ones, `Pki::caller(port, …)` for
//! a proxy started as a process); `outcome_code(resp)` + `assert_eq!(status, …)` →
//! `.expect(&h, refused(status, code).because(reason))`. Every refusal (status 400 or more)
//! names its reason (`Refusal::reason`, README's reason table) or the case fails; a refusal
//! below the proxy (the HTTP/2 codec) says so with `Expect::no_reason(why)`. On a proxy shared
//! by tests running at once, state what the upstream saw with `Expect::marked(marker, …)`
//! instead of `Seen::Nothing`/`Seen::One`.

#![allow(dead_code, unused_imports)]

pub mod caller;
pub mod expect;
pub mod hapi;
pub mod raw;
pub mod upstream;

pub use caller::Caller;
pub use expect::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eds_proxy::dev::keys::SigningKey;
use eds_proxy::dev::pki::{CertificateAuthority, CertifiedKey};
use serde_json::{json, Value};

pub use upstream::{RecordingUpstream, UpstreamMode};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "eds";
pub const NSIS_SUBSTANTIAL: &str = "https://data.gov.dk/concept/core/nsis/loa/Substantial";
pub const SUPPORTER_ROLE: &str = "urn:dk:healthcare:ehmi:eds:role:supporter";
pub const PAGE_SECRET: &str = "test page secret that is long enough to use";
/// The start of every 401 `WWW-Authenticate` for a token that is there but not good.
pub const INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";
pub const FORM: &str = "application/x-www-form-urlencoded";
pub const FHIR_JSON: &str = "application/fhir+json";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Certificates and keys for one test run.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertificateAuthority,
    pub server: CertifiedKey,
    pub issuer_key: SigningKey,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = CertificateAuthority::new("test CA").unwrap();
        ca.cert.write(dir, "ca").unwrap();
        let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
        server.write(dir, "server").unwrap();
        let issuer_key = SigningKey::generate("test-key-1").unwrap();
        std::fs::write(dir.join("jwks.json"), issuer_key.jwks().to_string()).unwrap();
        std::fs::write(dir.join("page-secret"), PAGE_SECRET).unwrap();
        std::fs::write(
            dir.join("cvr.toml"),
            "[cvr]\n\"29189846\" = [\"937961000016000\"]\n\"11111111\" = [\"698141000016008\", \"555555555\"]\n",
        )
        .unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            server,
            issuer_key,
        }
    }

    pub fn client(&self, name: &str) -> CertifiedKey {
        self.ca.client(name, "test").unwrap()
    }

    /// Start the dev token issuer with this PKI and `enrolment` (a JSON array); its port.
    pub fn start_dev_issuer(&self, enrolment: &serde_json::Value) -> u16 {
        let dir = &self.dir;
        std::fs::write(dir.join("enrolment.json"), enrolment.to_string()).unwrap();
        std::fs::write(dir.join("issuer.key"), &self.issuer_key.private_pem).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("dev-issuer.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nserver_cert = \"server.crt\"\nserver_key = \"server.key\"\nclient_ca = \"ca.crt\"\nsigning_key = \"issuer.key\"\nkid = \"{}\"\nenrolment = \"enrolment.json\"\n",
                self.issuer_key.kid
            ),
        )
        .unwrap();
        let config = eds_proxy::dev::issuer::load_config(&dir.join("dev-issuer.toml")).unwrap();
        let server = eds_proxy::dev::issuer::build_server(config).unwrap();
        std::thread::spawn(move || server.run_forever());
        wait_for_port(port);
        port
    }
}

/// A running proxy and its recording upstream.
pub struct Harness {
    pub pki: Pki,
    pub upstream: Arc<RecordingUpstream>,
    pub port: u16,
    pub admin_port: u16,
    pub base: String,
}

pub struct Options {
    pub upstream_mode: UpstreamMode,
    /// Point the proxy at a port where nothing listens.
    pub dead_upstream: bool,
    pub read_timeout_ms: u64,
    /// A real FHIR server's base URL instead of the recording upstream.
    pub upstream_base: Option<String>,
    /// More configuration, appended to the file as written (TOML tables).
    pub extra_config: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            upstream_mode: UpstreamMode::Honest,
            dead_upstream: false,
            read_timeout_ms: 5_000,
            upstream_base: None,
            extra_config: String::new(),
        }
    }
}

pub fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "eds-proxy-test-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The proxy configuration the tests run with (files relative to the PKI folder).
pub fn proxy_config(
    port: u16,
    admin_port: u16,
    upstream_base: &str,
    read_timeout_ms: u64,
    extra_config: &str,
) -> String {
    format!(
        r#"
[listen]
address = "127.0.0.1:{port}"
server_cert = "server.crt"
server_key = "server.key"
client_ca = "ca.crt"
[admin]
address = "127.0.0.1:{admin_port}"
[upstream]
base_url = "{upstream_base}"
connect_timeout_ms = 1000
read_timeout_ms = {read_timeout}
idle_timeout_ms = 2000
[public]
base_url = "https://localhost:{port}/fhir"
[token]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
jwks_file = "jwks.json"
[access]
supporter_role = "{SUPPORTER_ROLE}"
cvr_directory = "cvr.toml"
[paging]
secret_file = "page-secret"
[limits]
max_body_bytes = 65536
max_count = 50
[server]
threads = 1
grace_period_seconds = 0
{extra}
"#,
        read_timeout = read_timeout_ms,
        extra = extra_config
    )
}

impl Harness {
    pub fn start(tag: &str, opts: Options) -> Harness {
        let dir = tmp_dir(tag);
        let pki = Pki::new(&dir);
        let upstream = RecordingUpstream::start(opts.upstream_mode);
        let upstream_port = if opts.dead_upstream {
            free_port()
        } else {
            upstream.port
        };
        let upstream_base = opts
            .upstream_base
            .clone()
            .unwrap_or(format!("http://127.0.0.1:{upstream_port}/fhir"));
        let port = free_port();
        let admin_port = free_port();
        let config = proxy_config(
            port,
            admin_port,
            &upstream_base,
            opts.read_timeout_ms,
            &opts.extra_config,
        );
        let path = dir.join("eds-proxy.toml");
        std::fs::write(&path, config).unwrap();
        let config = eds_proxy::config::load(&path).unwrap_or_else(|p| panic!("config: {p:?}"));
        let server = eds_proxy::server::build_server(&config).expect("server builds");
        std::thread::spawn(move || {
            server.run(pingora::server::RunArgs {
                shutdown_signal: Box::new(NeverShutdown),
            })
        });
        wait_for_port(port);
        wait_for_port(admin_port);
        Harness {
            pki,
            upstream,
            port,
            admin_port,
            base: format!("https://localhost:{port}/fhir"),
        }
    }

    /// An HTTPS client presenting `cert` (HTTP/1.1 only if `http1`); a building block of
    /// [`Caller`], for certificates the harness did not issue.
    pub fn client_with(&self, cert: &CertifiedKey, http1: bool) -> reqwest::Client {
        caller::build_client(&self.pki.ca.cert.cert_pem, cert, http1)
    }

    pub fn client(&self, cert: &CertifiedKey) -> reqwest::Client {
        self.client_with(cert, true)
    }

    pub fn url(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    /// A token signed by the test issuer, bound to `cert`, with `extra` claims on top.
    pub fn token(&self, cert: &CertifiedKey, extra: Value) -> String {
        let claims = claims_for(cert, extra);
        self.pki.issuer_key.sign(&claims).unwrap()
    }
}

/// The registered claims of a test token bound to `cert`, with `extra` on top (a `null`
/// in `extra` removes that claim).
pub fn claims_for(cert: &CertifiedKey, extra: Value) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600,
        "cnf": {"x5t#S256": cert.thumbprint()},
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(&k);
        } else {
            claims[k] = v;
        }
    }
    claims
}

pub fn station_claims(device_id: &str, sor: &str, gln: &str) -> Value {
    json!({
        "scope": format!("EDS system/AuditEvent.crs SOR:{sor} GLN:{gln}"),
        "ehmi:eer:device_id": device_id,
        "ehmi:org_context": {"name": "Org", "sor": sor, "gln": gln},
    })
}

pub fn citizen_claims(cpr: &str) -> Value {
    json!({"scope": "EDS user/AuditEvent.rs", "cpr": cpr, "acr": NSIS_SUBSTANTIAL})
}

pub fn supporter_claims(cvr: &str) -> Value {
    json!({
        "scope": "EDS user/AuditEvent.rs", "cvr": cvr, "acr": NSIS_SUBSTANTIAL,
        "priv": [{"scope": format!("urn:dk:gov:saml:cvrNumberIdentifier:{cvr}"), "privileges": [SUPPORTER_ROLE]}],
    })
}

/// The IG's example registration (station Cura-EUA, sender 937961000016000/GLN-1234,
/// receiver 698141000016008/GLN-12345, patient PAT1234567890).
pub fn example_registration() -> Value {
    serde_json::from_str(include_str!("../fixtures/AuditEvent-EDS-PDS-01.1.json")).unwrap()
}

/// Run the eds-proxy binary as a process: `config` written to `DIR/eds-proxy.toml`,
/// `RUST_LOG=rust_log`, stdout and stderr both in `DIR/proxy-output.log`; returns once `port`
/// accepts connections, with the child, the config path and the output path.
pub fn spawn_proxy(
    dir: &Path,
    config: &str,
    rust_log: &str,
    port: u16,
) -> (std::process::Child, PathBuf, PathBuf) {
    use std::process::{Command, Stdio};
    let path = dir.join("eds-proxy.toml");
    std::fs::write(&path, config).unwrap();
    let output = dir.join("proxy-output.log");
    let file = std::fs::File::create(&output).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_eds-proxy"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    wait_for_port(port);
    (child, path, output)
}

pub fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("port {port} never opened");
}

struct NeverShutdown;

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for NeverShutdown {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        std::future::pending().await
    }
}

/// Parse a response as an OperationOutcome and return its first issue code. For files not yet
/// moved to [`Check::expect`], which also asserts the reason.
pub async fn outcome_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(
        body["resourceType"], "OperationOutcome",
        "status {status}: {body}"
    );
    (
        status,
        body["issue"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}
