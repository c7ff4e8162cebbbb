//! The benchmark's own mTLS client (bench/run.sh) for the two measurements oha cannot make:
//!
//! - `handshakes`: full mTLS handshakes per second, **TLS session resumption off** (oha
//!   resumes TLS 1.3 sessions, and rustls servers accept them). Each connection gets a fresh
//!   rustls `ClientConfig`, so no session store is ever shared and every handshake is full
//!   (certificate exchange, client certificate verified, fresh key exchange). Each connection
//!   sends one request with `Connection: close` and reads the answer to its end.
//! - `hold`: opens COUNT keep-alive mTLS connections, sends one request on each, and holds
//!   them idle for SECONDS (the proxy's RSS is read meanwhile), printing `held N` when all are
//!   open.
//!
//! Both print one JSON line with the counts, per-status answers and latencies.
//!
//! ```text
//! bench_client handshakes ADDR CA CERT KEY PATH TOKEN CONCURRENCY SECONDS
//! bench_client hold       ADDR CA CERT KEY PATH TOKEN COUNT SECONDS
//! ```
//! ADDR is `127.0.0.1:PORT`; the server name checked is `localhost`; TOKEN `-` sends none.

// A benchmark tool, not request-path code: bad arguments or files end it with a message.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::tls::{ClientConfig, RootCertStore, TlsConnector};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Client {
    addr: String,
    roots: RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    request_head: String,
}

impl Client {
    /// A fresh config per connection: its session store is empty, so rustls cannot offer a
    /// ticket or session id and the handshake is a full one.
    fn fresh_connector(&self) -> TlsConnector {
        let config = ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .expect("client certificate and key");
        TlsConnector::from(Arc::new(config))
    }

    async fn connect(&self) -> std::io::Result<tokio_rustls_stream::Stream> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("server name");
        self.fresh_connector().connect(name, tcp).await
    }
}

/// The TLS stream type without naming tokio-rustls (reached through Pingora's re-export).
mod tokio_rustls_stream {
    pub type Stream = pingora::tls::ClientTlsStream<tokio::net::TcpStream>;
}

/// Read one HTTP/1.1 answer with a Content-Length body; returns its status.
async fn read_answer(stream: &mut tokio_rustls_stream::Stream) -> std::io::Result<u16> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the answer's head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| std::io::Error::other("answer without Content-Length"))?;
    let mut have = buf.len() - head_end;
    while have < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed inside the body"));
        }
        have += n;
    }
    Ok(status)
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
    errors: BTreeMap<String, u64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(mode: &str, tally: Tally, seconds: f64, extra: &str) {
    let mut l = tally.latencies_ms;
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let ok: u64 = tally.statuses.values().sum();
    let statuses = serde_json::to_string(&tally.statuses).unwrap();
    let errors = serde_json::to_string(&tally.errors).unwrap();
    println!(
        "{{\"mode\":\"{mode}\",\"answers\":{ok},\"seconds\":{seconds:.3},\"rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"statuses\":{statuses},\"errors\":{errors}{extra}}}",
        ok as f64 / seconds,
        percentile(&l, 0.5),
        percentile(&l, 0.99),
    );
}

async fn handshakes(client: Arc<Client>, concurrency: usize, seconds: f64) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, tally, stop) = (client.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let result = async {
                    let mut s = client.connect().await?;
                    s.write_all(client.request_head.as_bytes()).await?;
                    read_answer(&mut s).await
                }
                .await;
                let mut tally = tally.lock().unwrap();
                match result {
                    Ok(status) => {
                        *tally.statuses.entry(status.to_string()).or_default() += 1;
                        tally.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Err(e) => *tally.errors.entry(e.to_string()).or_default() += 1,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    report("handshakes", tally, elapsed, ",\"resumption\":false");
}

async fn hold(client: Arc<Client>, count: usize, seconds: f64) {
    let mut tally = Tally::default();
    let mut held = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        let result = async {
            let mut s = client.connect().await?;
            s.write_all(client.request_head.as_bytes()).await?;
            let status = read_answer(&mut s).await?;
            Ok::<_, std::io::Error>((s, status))
        }
        .await;
        match result {
            Ok((s, status)) => {
                *tally.statuses.entry(status.to_string()).or_default() += 1;
                tally.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
                held.push(s);
            }
            Err(e) => *tally.errors.entry(e.to_string()).or_default() += 1,
        }
    }
    let opening = start.elapsed().as_secs_f64();
    eprintln!("held {}", held.len());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    // Still open at the end? A read that would block means the proxy kept the connection.
    let mut open = 0;
    for s in &mut held {
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await;
        if read.is_err() {
            open += 1;
        }
    }
    report(
        "hold",
        tally,
        opening,
        &format!(",\"held\":{},\"still_open\":{open}", held.len()),
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 10 || !matches!(a[1].as_str(), "handshakes" | "hold") {
        panic!("usage: bench_client handshakes|hold ADDR CA CERT KEY PATH TOKEN N SECONDS");
    }
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&a[3]).expect("CA") {
        roots.add(cert.expect("CA")).expect("CA");
    }
    let certs = CertificateDer::pem_file_iter(&a[4])
        .expect("CERT")
        .collect::<Result<Vec<_>, _>>()
        .expect("CERT");
    let key = PrivateKeyDer::from_pem_file(&a[5]).expect("KEY");
    let token = if a[7] == "-" {
        String::new()
    } else {
        format!("Authorization: Bearer {}\r\n", a[7])
    };
    let connection = if a[1] == "handshakes" {
        "close"
    } else {
        "keep-alive"
    };
    let request_head = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\n{token}Connection: {connection}\r\n\r\n",
        a[6]
    );
    let client = Arc::new(Client {
        addr: a[2].clone(),
        roots,
        certs,
        key,
        request_head,
    });
    let n: usize = a[8].parse().expect("N");
    let seconds: f64 = a[9].parse().expect("SECONDS");
    if a[1] == "handshakes" {
        handshakes(client, n, seconds).await;
    } else {
        hold(client, n, seconds).await;
    }
}
