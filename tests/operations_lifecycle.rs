//! Issue 9, items 1–3 and 8, against the real `eds-proxy` binary and real signals: SIGHUP
//! reloads (under load, with a broken file in between) and never ends the process; a revoked
//! client certificate fails the handshake, also after a reloaded CRL; SIGTERM lets a slow
//! request finish and an idle proxy exits at once; the upstream host is resolved per
//! request, not at start; an `https` upstream gets the configured CA, client certificate and
//! SNI.

// Runs the proxy binary with the test PKI: needs the `dev` feature (default).
#![cfg(feature = "dev")]
// Test code: a panic is a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use eds_proxy::dev::pki::{CertificateAuthority, CertifiedKey};

/// The binary running with `DIR/eds-proxy.toml`, its output in `DIR/proxy-output.log`.
struct Proxy {
    child: Child,
    output: PathBuf,
    config: PathBuf,
    port: u16,
    admin_port: u16,
}

impl Proxy {
    fn start(dir: &Path, config: &str, port: u16, admin_port: u16) -> Proxy {
        let (child, path, output) = spawn_proxy(dir, config, "info", port);
        wait_for_port(admin_port);
        Proxy {
            child,
            output,
            config: path,
            port,
            admin_port,
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.output).unwrap()).into_owned()
    }

    /// Wait until the log has `needle` `times` times.
    fn wait_for_log(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "log never had {needle:?} {times}x:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        metric(self.admin_port, series).await
    }

    /// How often this process refused a request for `reason` (`Refusal::reason`), summed over
    /// the other labels of `eds_proxy_requests_total`: the reason a refusal was counted under.
    async fn refused_for(&self, reason: &str) -> f64 {
        refusals(self.admin_port)
            .await
            .get(reason)
            .copied()
            .unwrap_or(0.0)
    }

    fn url(&self, rel: &str) -> String {
        format!("https://localhost:{}/fhir/{rel}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client presenting `cert`, trusting `ca`, HTTP/1.1, keeping the peer certificate.
fn client(ca: &CertificateAuthority, cert: &CertifiedKey) -> reqwest::Client {
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes())
            .unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.cert_pem.as_bytes()).unwrap())
        .identity(identity)
        .http1_only()
        .tls_info(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The server certificate (DER) a new handshake with the proxy is served.
async fn served_certificate(p: &Proxy, pki: &Pki, cert: &CertifiedKey) -> Vec<u8> {
    let resp = client(&pki.ca, cert)
        .get(p.url("metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec()
}

struct Setup {
    dir: PathBuf,
    pki: Pki,
    upstream: Arc<RecordingUpstream>,
    port: u16,
    admin_port: u16,
}

fn setup(tag: &str, mode: UpstreamMode) -> Setup {
    let dir = tmp_dir(tag);
    let pki = Pki::new(&dir);
    let upstream = RecordingUpstream::start(mode);
    Setup {
        dir,
        pki,
        upstream,
        port: free_port(),
        admin_port: free_port(),
    }
}

impl Setup {
    /// The tests' proxy configuration with `listen_extra` added to `[listen]` and `tables`
    /// appended.
    fn config(&self, listen_extra: &str, grace: u64, tables: &str) -> String {
        proxy_config(
            self.port,
            self.admin_port,
            &format!("http://127.0.0.1:{}/fhir", self.upstream.port),
            10_000,
            tables,
        )
        .replace(
            "client_ca = \"ca.crt\"\n",
            &format!("client_ca = \"ca.crt\"\n{listen_extra}\n"),
        )
        .replace(
            "grace_period_seconds = 0",
            &format!("grace_period_seconds = {grace}"),
        )
    }

    fn start(&self, config: &str) -> Proxy {
        Proxy::start(&self.dir, config, self.port, self.admin_port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_end_the_process() {
    let s = setup("hup", UpstreamMode::Honest);
    let mut p = s.start(&s.config("", 30, ""));
    let cert = s.pki.client("hup-client");
    for n in 1..=3 {
        p.signal("HUP");
        p.wait_for_log("SIGHUP: configuration reloaded", n);
        assert!(p.alive(), "SIGHUP ended the process:\n{}", p.log());
    }
    let resp = client(&s.pki.ca, &cert)
        .get(p.url("metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        p.metric("eds_proxy_config_reloads_total{result=\"ok\"}")
            .await,
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_serves_the_new_certificate_and_refuses_a_broken_file() {
    let s = setup("reload", UpstreamMode::Honest);
    let mut p = s.start(&s.config("", 30, ""));
    let cert = s.pki.client("reload-client");
    let token = s
        .pki
        .issuer_key
        .sign(&claims_for(&cert, citizen_claims("0101014001")))
        .unwrap();
    let first = served_certificate(&p, &s.pki, &cert).await;
    assert_eq!(first, s.pki.server.cert_der);

    // Two client loops across every reload: one on a kept-alive connection, one with a new
    // connection (a new handshake) per request. Each request goes through the token check and
    // the FHIR server.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    for fresh in [false, true] {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let (cert, token, url) = (
            cert.clone(),
            token.clone(),
            p.url("AuditEvent?message-id=reload-load"),
        );
        let ca_pem = s.pki.ca.cert.cert_pem.clone();
        loops.push(tokio::spawn(async move {
            let make = || {
                let identity = reqwest::Identity::from_pem(
                    format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes(),
                )
                .unwrap();
                reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap(),
                    )
                    .identity(identity)
                    .http1_only()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap()
            };
            let mut c = make();
            while !stop.load(Ordering::SeqCst) {
                if fresh {
                    c = make();
                }
                match c.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("error {e:?}")),
                }
            }
        }));
    }
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    settle().await;

    // 1. A new server certificate (same CA, new key): the next handshake gets it.
    let renewed = s.pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    renewed.write(&s.dir, "server").unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 1);
    assert_eq!(
        served_certificate(&p, &s.pki, &cert).await,
        renewed.cert_der
    );
    settle().await;

    // 2. A broken key: refused with one line, the renewed certificate keeps being served.
    std::fs::write(s.dir.join("server.key"), "not a key").unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reload refused", 1);
    assert_eq!(
        served_certificate(&p, &s.pki, &cert).await,
        renewed.cert_der
    );
    settle().await;

    // 3. A configuration file that does not parse: refused, still serving.
    std::fs::write(&p.config, "[listen\n").unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reload refused", 2);
    settle().await;

    // 4. Good files again, with a changed limit and a changed listener address: applied,
    //    except the address, which the log line names.
    renewed.write(&s.dir, "server").unwrap();
    let changed = s
        .config("", 30, "")
        .replace("max_count = 50", "max_count = 7")
        .replace(
            &format!("address = \"127.0.0.1:{}\"\nserver_cert", s.port),
            &format!("address = \"127.0.0.1:{}\"\nserver_cert", free_port()),
        );
    std::fs::write(&p.config, changed).unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 2);
    settle().await;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok.load(Ordering::SeqCst) >= 10, "too few requests ran");
    assert!(p.alive());
    // Log lines reach the output in batches (within milliseconds): wait for it.
    p.wait_for_log(
        "not applied until restart: listen.address (kept as started)",
        1,
    );
    let log = p.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refused.len(), 2, "one line per refused reload: {refused:?}");
    assert!(refused[0].contains("server_key"), "{}", refused[0]);
    // The new limit is in force: `_count` above it is lowered to 7 upstream.
    let resp = client(&s.pki.ca, &cert)
        .get(p.url("AuditEvent?message-id=reload-count&_count=40"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = s.upstream.requests_matching("reload-count");
    assert!(seen[0].target.contains("_count=7"), "{}", seen[0].target);
    assert_eq!(
        p.metric("eds_proxy_config_reloads_total{result=\"ok\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        p.metric("eds_proxy_config_reloads_total{result=\"refused\"}")
            .await,
        Some(2.0)
    );
    assert!(
        p.metric("eds_proxy_config_age_seconds").await.unwrap() < 5.0,
        "config age did not restart at the reload"
    );
}

/// One request with a fresh connection presenting `cert`: the status, or the error text.
async fn try_handshake(p: &Proxy, pki: &Pki, cert: &CertifiedKey) -> Result<u16, String> {
    client(&pki.ca, cert)
        .get(p.url("metadata"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_fails_the_handshake_also_after_a_reload() {
    let s = setup("crl", UpstreamMode::Honest);
    let revoked = s.pki.client("revoked-client");
    let good = s.pki.client("good-client");
    // The first CRL as PEM, the reloaded one as DER: both forms are read.
    std::fs::write(s.dir.join("crl.pem"), s.pki.ca.crl(&[&revoked]).unwrap()).unwrap();
    let mut p = s.start(&s.config("client_crls = [\"crl.pem\"]", 30, ""));

    let err = try_handshake(&p, &s.pki, &revoked).await.unwrap_err();
    assert!(
        err.contains("CertificateRevoked") || err.contains("certificate revoked"),
        "{err}"
    );
    assert_eq!(try_handshake(&p, &s.pki, &good).await, Ok(200));
    assert_eq!(
        p.metric("eds_proxy_tls_handshake_failures_total{reason=\"revoked\"}")
            .await,
        Some(1.0)
    );

    // A client of another CA is still refused as before.
    let stranger = CertificateAuthority::new("other CA")
        .unwrap()
        .client("stranger", "x")
        .unwrap();
    assert!(try_handshake(&p, &s.pki, &stranger).await.is_err());

    // Revoke the good one too, as DER, and reload: its next handshake fails.
    let pem = s.pki.ca.crl(&[&revoked, &good]).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateRevocationListDer| c.to_vec())
        .unwrap();
    std::fs::write(s.dir.join("crl.der"), der).unwrap();
    std::fs::write(&p.config, s.config("client_crls = [\"crl.der\"]", 30, "")).unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 1);
    p.wait_for_log("(1 client CRLs)", 1);
    let err = try_handshake(&p, &s.pki, &good).await.unwrap_err();
    assert!(
        err.contains("CertificateRevoked") || err.contains("certificate revoked"),
        "{err}"
    );

    // A CRL file that does not parse is refused; the last good CRL stays in force.
    std::fs::write(s.dir.join("crl.der"), [0x30, 0x03, 1, 2, 3]).unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reload refused", 1);
    assert!(try_handshake(&p, &s.pki, &good).await.is_err());
    assert!(p.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits() {
    let s = setup("drain", UpstreamMode::Slow);
    let mut p = s.start(&s.config("", 20, ""));
    let cert = s.pki.client("drain-client");
    let token = s
        .pki
        .issuer_key
        .sign(&claims_for(&cert, citizen_claims("0101014002")))
        .unwrap();
    let c = client(&s.pki.ca, &cert);
    let url = p.url("AuditEvent?message-id=drain-slow");
    let slow = tokio::spawn(async move {
        let r = c.get(url).bearer_auth(token).send().await.unwrap();
        let connection = r
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            connection,
            r.text().await.unwrap(),
            Instant::now(),
        )
    });
    // In flight: the FHIR server has it (and answers in 3 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.upstream.requests_matching("drain-slow").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the request never reached upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    p.signal("TERM");
    // No new connections once the drain has begun.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        try_handshake(&p, &s.pki, &cert).await.is_err(),
        "a new connection was served during the drain"
    );
    let (status, connection, body, answered) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // The drain began while it ran: the connection is not offered for another request.
    assert_eq!(connection.as_deref(), Some("close"));
    assert!(body.contains("\"searchset\""), "{body}");
    let status = p.wait_exit(Duration::from_secs(5)).expect("still running");
    let exited = Instant::now();
    assert!(status.success(), "{status:?}");
    assert!(exited >= answered);
    // Well before the 20 s grace period: it left as soon as the request was done.
    assert!(
        exited.duration_since(signalled) < Duration::from_secs(6),
        "{:?}",
        exited.duration_since(signalled)
    );
    assert!(p.log().contains("SIGTERM: nothing in flight, exiting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_exits_well_under_a_second_after_sigterm() {
    let s = setup("idle", UpstreamMode::Honest);
    let mut p = s.start(&s.config("", 30, ""));
    // A kept-alive idle connection must not hold the drain up.
    let cert = s.pki.client("idle-client");
    let c = client(&s.pki.ca, &cert);
    assert_eq!(c.get(p.url("metadata")).send().await.unwrap().status(), 200);
    let signalled = Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(5)).expect("still running");
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(700), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_host_is_resolved_per_request_not_at_start() {
    // A name that does not resolve (RFC 6761 `.invalid`): the proxy starts anyway (it used to
    // refuse to) and answers 502 until the name resolves.
    let s = setup("resolve", UpstreamMode::Honest);
    let config = s.config("", 30, "").replace(
        &format!("http://127.0.0.1:{}/fhir", s.upstream.port),
        "http://eds-upstream.invalid:8080/fhir",
    );
    let mut p = s.start(&config);
    let citizen = s
        .pki
        .caller(p.port, "resolve-client", citizen_claims("0101014003"));
    let search = || citizen.search("message-id=resolve").send();
    assert_eq!(
        outcome_code(search().await.unwrap()).await,
        (502, "transient".to_string())
    );
    assert_eq!(p.refused_for("upstream_unavailable").await, 1.0);
    p.wait_for_log(
        "cannot resolve the FHIR server eds-upstream.invalid:8080",
        1,
    );
    // `localhost` resolves: a reload pointing there serves again.
    std::fs::write(
        &p.config,
        s.config("", 30, "")
            .replace("127.0.0.1:", "localhost:")
            .replace(
                &format!("address = \"localhost:{}\"", s.port),
                &format!("address = \"127.0.0.1:{}\"", s.port),
            )
            .replace(
                &format!("address = \"localhost:{}\"", s.admin_port),
                &format!("address = \"127.0.0.1:{}\"", s.admin_port),
            ),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 1);
    assert_eq!(search().await.unwrap().status(), 200);
    assert!(p.alive());
}

/// What the TLS front saw of one handshake: the SNI and the client certificate (DER).
type Handshake = (Option<String>, Option<Vec<u8>>);

/// A TLS front for the recording upstream: requires a client certificate of `client_ca`,
/// presents `server`, records the SNI and client certificate of each handshake.
struct TlsFront {
    port: u16,
    seen: Arc<Mutex<Vec<Handshake>>>,
}

fn tls_front(server: &CertifiedKey, client_ca: &CertifiedKey, backend: u16) -> TlsFront {
    use pingora::tls::{RootCertStore, ServerConfig, TlsAcceptor, WebPkiClientVerifier};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(client_ca.cert_der.clone()))
        .unwrap();
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    record.lock().unwrap().push((
                        conn.server_name().map(str::to_string),
                        conn.peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.to_vec()),
                    ));
                    let Ok(mut plain) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    TlsFront { port, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_gets_the_configured_ca_client_certificate_and_sni() {
    let s = setup("upstream-tls", UpstreamMode::Honest);
    // The FHIR server's own PKI: its certificate names only `fhir.internal`.
    let fhir_ca = CertificateAuthority::new("FHIR server CA").unwrap();
    let fhir_server = fhir_ca.server(&["fhir.internal"]).unwrap();
    let proxy_as_client = fhir_ca.client("eds-proxy", "test").unwrap();
    fhir_ca.cert.write(&s.dir, "fhir-ca").unwrap();
    proxy_as_client.write(&s.dir, "to-fhir").unwrap();
    let front = tls_front(&fhir_server, &fhir_ca.cert, s.upstream.port);
    let upstream_tables = |sni: &str| {
        format!(
            "base_url = \"https://127.0.0.1:{}/fhir\"\nca = \"fhir-ca.crt\"\nclient_cert = \"to-fhir.crt\"\nclient_key = \"to-fhir.key\"\nsni = \"{sni}\"\n",
            front.port
        )
    };
    let config = |sni: &str| {
        s.config("", 30, "").replace(
            &format!("base_url = \"http://127.0.0.1:{}/fhir\"\n", s.upstream.port),
            &upstream_tables(sni),
        )
    };
    let mut p = s.start(&config("fhir.internal"));
    let citizen = s
        .pki
        .caller(p.port, "tls-upstream-client", citizen_claims("0101014004"));
    let search = || async {
        citizen
            .search("message-id=tls-upstream")
            .send()
            .await
            .unwrap()
    };
    let resp = search().await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    {
        // Every connection (the request's, and the conformance probe's at start) sent the
        // configured SNI and presented the proxy's client certificate.
        let seen = front.seen.lock().unwrap();
        assert!(!seen.is_empty());
        for (sni, cert) in seen.iter() {
            assert_eq!(sni.as_deref(), Some("fhir.internal"));
            assert_eq!(cert.as_deref(), Some(proxy_as_client.cert_der.as_slice()));
        }
    }
    assert_eq!(s.upstream.requests_matching("tls-upstream").len(), 1);

    // A name the FHIR server's certificate does not carry: its certificate is refused, 502,
    // nothing reaches it.
    std::fs::write(&p.config, config("other.internal")).unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 1);
    assert_eq!(
        outcome_code(search().await).await,
        (502, "transient".to_string())
    );
    assert_eq!(p.refused_for("upstream_unavailable").await, 1.0);
    assert_eq!(s.upstream.requests_matching("tls-upstream").len(), 1);
    assert!(p.alive());
}

#[test]
fn check_config_refuses_what_would_not_start_or_reload() {
    let s = setup("check-tls", UpstreamMode::Honest);
    let run = |config: &str| {
        let path = s.dir.join("check.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_eds-proxy"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(run(&s.config("", 30, "")).0);
    // A certificate and a key that do not belong together.
    let other = s.pki.client("other");
    other.write(&s.dir, "other").unwrap();
    let (ok, out) = run(&s.config("", 30, "").replace("server.key", "other.key"));
    assert!(!ok && out.contains("server.crt with"), "{out}");
    // A CRL that is DER-framed but not a CRL.
    std::fs::write(s.dir.join("bad.crl"), [0x30, 0x03, 1, 2, 3]).unwrap();
    let (ok, out) = run(&s.config("client_crls = [\"bad.crl\"]", 30, ""));
    assert!(!ok && out.contains("client_crls"), "{out}");
    // A well-formed CRL of another CA: with it, no client of the configured CA could get its
    // revocation status, so every handshake would fail (`unknown_revocation_status`).
    let stranger = CertificateAuthority::new("other CA").unwrap();
    std::fs::write(s.dir.join("other.crl"), stranger.crl(&[]).unwrap()).unwrap();
    let (ok, out) = run(&s.config("client_crls = [\"other.crl\"]", 30, ""));
    assert!(
        !ok && out.contains("listen.client_crls: no CRL issued by the client CA"),
        "{out}"
    );
    // Upstream TLS keys on an http upstream.
    let (ok, out) = run(&s.config("", 30, "").replace(
        "idle_timeout_ms = 2000\n",
        "idle_timeout_ms = 2000\nsni = \"fhir.internal\"\n",
    ));
    assert!(
        !ok && out.contains("upstream.sni: only for an https upstream.base_url"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_changed_cvr_directory() {
    let s = setup("cvr", UpstreamMode::Honest);
    let mut p = s.start(&s.config("", 30, ""));
    let supporter = s
        .pki
        .caller(p.port, "cvr-client", supporter_claims("22334455"));
    let search = || async {
        supporter
            .search("message-id=cvr-reload")
            .send()
            .await
            .unwrap()
    };
    // Not in the directory: refused before anything reaches the FHIR server.
    assert_eq!(
        outcome_code(search().await).await,
        (403, "forbidden".into())
    );
    assert_eq!(p.refused_for("unknown_cvr").await, 1.0);
    assert!(s.upstream.requests_matching("cvr-reload").is_empty());
    std::fs::write(
        s.dir.join("cvr.toml"),
        "[cvr]\n\"22334455\" = [\"937961000016000\"]\n",
    )
    .unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 1);
    let resp = search().await;
    assert_eq!(resp.status(), 200);
    let seen = s.upstream.requests_matching("cvr-reload");
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].target.contains("937961000016000"),
        "{}",
        seen[0].target
    );
    assert!(p.alive());
}

/// Revocation reaches connections that are already open: a client that keeps its connection
/// (keep-alive, or one HTTP/2 connection for hours) is checked again under the reloaded CRLs
/// at its next request, refused 401 and disconnected, rather than served until it hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_by_a_reload_is_refused_on_its_open_connection() {
    let s = setup("crl-open", UpstreamMode::Honest);
    let victim = s.pki.client("open-client");
    let other = s.pki.client("other-client");
    std::fs::write(s.dir.join("crl.pem"), s.pki.ca.crl(&[&other]).unwrap()).unwrap();
    let p = s.start(&s.config("client_crls = [\"crl.pem\"]", 30, ""));
    let kept = client(&s.pki.ca, &victim);
    let resp = kept.get(p.url("metadata")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    // Another revoked-to-be client whose connection is closed before the reload: its next
    // connection resumes the TLS session (no certificate is presented again).
    let resuming_cert = s.pki.client("resuming-client");
    let resuming = client(&s.pki.ca, &resuming_cert);
    let resp = resuming
        .get(p.url("metadata"))
        .header("Connection", "close")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();

    std::fs::write(
        s.dir.join("crl.pem"),
        s.pki.ca.crl(&[&other, &victim, &resuming_cert]).unwrap(),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 1);

    // The same client object reuses its open connection (a new handshake would fail).
    let resp = kept.get(p.url("metadata")).send().await.unwrap();
    let status = resp.status().as_u16();
    let close = resp
        .headers()
        .get("connection")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["issue"][0]["code"], "login");
    assert_eq!(
        body["issue"][0]["diagnostics"],
        "the client certificate is no longer accepted (revoked, or its CA withdrawn)"
    );
    assert_eq!(close.as_deref(), Some("close"));
    p.wait_for_log("\"reason\":\"certificate_not_accepted\"", 1);
    // Its next connection is refused too: a new handshake fails, and a resumed TLS session
    // (which presents no certificate to check) is refused at the request.
    for _ in 0..3 {
        match kept.get(p.url("metadata")).send().await {
            Ok(r) => assert_eq!(r.status(), 401),
            Err(e) => assert!(format!("{e:?}").contains("Revoked"), "{e:?}"),
        }
    }
    let err = try_handshake(&p, &s.pki, &victim).await.unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    match resuming.get(p.url("metadata")).send().await {
        Ok(r) => assert_eq!(r.status(), 401, "a resumed session escaped the revocation"),
        Err(e) => assert!(format!("{e:?}").contains("Revoked"), "{e:?}"),
    }
    // A certificate the reload did not revoke keeps its open connection.
    let fine = s.pki.client("fine-client");
    let c = client(&s.pki.ca, &fine);
    assert_eq!(c.get(p.url("metadata")).send().await.unwrap().status(), 200);
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 2);
    assert_eq!(c.get(p.url("metadata")).send().await.unwrap().status(), 200);
}

/// c-any: a reload that points the proxy at another FHIR server starts the conformance
/// verdict over. With `on_nonconformant = "refuse"` the new server gets no FHIR request until
/// it has passed a round of its own; the old server's verdict used to be kept until the next
/// round (`interval_seconds` later, 300 s here), serving a server that ignores `_security`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_another_fhir_server_is_probed_before_it_is_served() {
    let s = setup("probe-reload", UpstreamMode::Honest);
    let leaky = RecordingUpstream::start(UpstreamMode::Leaky);
    leaky.seed(
        serde_json::json!({"resourceType": "AuditEvent", "meta": {"security": [
        {"system": "urn:eds-proxy:label:device-id", "code": "another-station"}]}}),
    );
    let tables = "[upstream.probe]\ninterval_seconds = 300\non_nonconformant = \"refuse\"\n";
    let config = s.config("", 30, tables);
    let mut p = s.start(&config);
    let readyz = || async {
        reqwest::get(format!("http://127.0.0.1:{}/readyz", s.admin_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let until = |want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let body = readyz().await;
            if body.contains(want) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "readyz never showed {want:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until("conformance: ok").await;
    let station = s.pki.caller(
        p.port,
        "probe-reload-station",
        station_claims("probe-reload-dev", "111", "GLN-1"),
    );
    let search =
        |q: &'static str| async { station.search(q).send().await.unwrap().status().as_u16() };
    assert_eq!(search("message-id=before-reload").await, 200);
    std::fs::write(
        &p.config,
        config.replace(
            &format!("127.0.0.1:{}/fhir", s.upstream.port),
            &format!("127.0.0.1:{}/fhir", leaky.port),
        ),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_for_log("SIGHUP: configuration reloaded", 1);
    // At once (pending or already failed), and again once the new server's round failed.
    assert_eq!(search("message-id=after-reload").await, 503);
    let body = until("security: a search for a value that exists nowhere returned records").await;
    assert!(
        body.starts_with("keys: ok\nupstream: ok\nconformance: FHIR server not conformant"),
        "{body}"
    );
    assert_eq!(search("message-id=after-reload").await, 503);
    assert_eq!(p.refused_for("backend_nonconformant").await, 2.0);
    assert!(leaky.requests_matching("after-reload").is_empty());
    assert!(p.alive());
}
