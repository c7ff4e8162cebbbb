//! Nothing secret in any log line (issue 7 §4): the real `eds-proxy` binary at the most verbose
//! level (`RUST_LOG=trace`), fed well-formed and malformed requests that carry marker tokens,
//! marker CPR numbers and marker ids in the path, query, headers and body; then every byte it
//! wrote to stdout and stderr is searched for the markers.

// Runs the proxy, the dev issuer or the `dev` subcommands: needs the `dev` feature (default).
#![cfg(feature = "dev")]
// Test code: a panic is a failure, and it reads JSON answers with plain serde_json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::raw;
use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

const CPR: &str = "0101019999";
const CPR_DASH: &str = "010101-9999";
const ID: &str = "idmarker-4711";
const BODY: &str = "BODYMARKER";
const GARBAGE_TOKEN: &str = "MARKER.TOKEN.x";
const DEVICE: &str = "logs-device";
const SOR: &str = "937961000016000";
const GLN: &str = "GLN-1234";
/// How every MinLog audit record starts (`eds_proxy::audit::record`).
const AUDIT_RECORD: &str = r#"{"type":"eds-proxy.audit.v1","#;

/// The binary, running with `config`, its output (stdout and stderr) in one file.
struct Proxy {
    child: Child,
    output: PathBuf,
}

impl Proxy {
    fn start(dir: &std::path::Path, config: String, port: u16) -> Proxy {
        let (child, _, output) = spawn_proxy(dir, &config, "trace", port);
        Proxy { child, output }
    }

    /// Stop the process and return everything it wrote.
    fn finish(mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        String::from_utf8_lossy(&std::fs::read(&self.output).unwrap()).into_owned()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn no_token_body_cpr_or_path_id_reaches_any_log_line() {
    let dir = tmp_dir("logs");
    let pki = Pki::new(&dir);
    let upstream = RecordingUpstream::start(UpstreamMode::Honest);
    let port = free_port();
    let admin_port = free_port();
    let config = proxy_config(
        port,
        admin_port,
        &format!("http://127.0.0.1:{}/fhir", upstream.port),
        5_000,
        "",
    );
    let proxy = Proxy::start(&dir, config, port);

    let station = pki.caller(port, "logs-station", station_claims(DEVICE, SOR, GLN));
    let citizen = pki.caller(port, "logs-citizen", citizen_claims(CPR));
    let supporter = pki.caller(port, "logs-supporter", supporter_claims("29189846"));
    let station_token = station.token.clone().unwrap();
    let citizen_token = citizen.token.clone().unwrap();
    let supporter_token = supporter.token.clone().unwrap();
    let station_cert = station.cert.clone();

    // Well-formed requests: create, search (URL and form), read and vread with the CPR and an
    // id marker in the path, a garbage token, and a supporter search (the audit record). The
    // refusals' reasons are asserted on the access log below.
    let mut registration = example_registration();
    registration["contained"][0]["identifier"] = json!([{ "value": DEVICE }]);
    registration["entity"][0]["what"]["identifier"]["value"] = json!(CPR);
    registration["entity"][1]["what"]["identifier"]["value"] = json!(format!("{BODY}-1"));
    let resp = station.create(&registration).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let resp = station
        .search(&format!("message-id={BODY}-1&patient={CPR}&cpr={CPR_DASH}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = station
        .form(
            &format!("/AuditEvent/_search?cpr={CPR}"),
            format!("message-id={BODY}-2&cpr={CPR_DASH}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for path in [
        format!("AuditEvent/{CPR}"),
        format!("AuditEvent/{ID}/_history/{CPR_DASH}"),
    ] {
        let resp = citizen.get(&path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    let resp = citizen
        .clone()
        .with_token(GARBAGE_TOKEN)
        .get(&format!("AuditEvent/{ID}?cpr={CPR}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = supporter
        .search(&format!("message-id={BODY}-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bundle: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(1));

    // The access log's bytes_out is what was sent: nothing for a HEAD, the compressed length
    // for a gzip answer (the statement is over the compression threshold).
    let head = station.request("HEAD", "/metadata").send().await.unwrap();
    assert_eq!(head.status(), 200);
    let plain_len: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let gz = station
        .get("/metadata")
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let gz_len = gz.bytes().await.unwrap().len();
    assert!(gz_len < plain_len);

    // Malformed requests, each carrying a token, the CPR and the body marker.
    let good = format!("Authorization: Bearer {station_token}\r\n");
    let garbage = format!("Authorization: Bearer {GARBAGE_TOKEN}\r\n");
    let form = format!("cpr={CPR}&message-id={BODY}-3");
    let overlong = format!(
        "GET /fhir/AuditEvent/{ID}?cpr={CPR}&x={} HTTP/1.1\r\nHost: localhost\r\n{good}\r\n",
        "a".repeat(1_100_000)
    );
    let malformed = [
        format!("GET /fhir/AuditEvent/{CPR}?cpr={CPR_DASH} HTTP/1.1\r\nHost: localhost\r\n{good}X-Bad: a\u{1}b {BODY}\r\n\r\n"),
        format!("POST /fhir/AuditEvent/_search HTTP/1.1\r\nHost: localhost\r\n{good}NoColon {CPR}\r\nContent-Length: {}\r\n\r\n{form}", form.len()),
        format!("POST /fhir/AuditEvent/_search HTTP/1.1\r\nHost: localhost\r\n{good}Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{form}\r\n0\r\n\r\n"),
        format!("G@T /fhir/AuditEvent/{ID}?cpr={CPR} HTTP/1.1\r\nHost: localhost\r\n{garbage}\r\n"),
        format!("POST /fhir/AuditEvent/_search HTTP/1.1\r\nHost: localhost\r\n{good}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{form}\r\n0\r\n\r\n", form.len(), form.len()),
        format!("GET /fhir/AuditEvent/{ID} HTTP/1.1\r\nHost: localhost\r\n{good}X-Folded: a\r\n {CPR} {BODY}\r\n\r\n"),
        format!("GET /fhir/AuditEvent/{ID} HTTP/1.0\r\nHost: localhost\r\n{garbage}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        overlong,
    ];
    let connector = raw::tls_connector(&pki.ca.cert.cert_der, &station_cert);
    for (i, bytes) in malformed.iter().enumerate() {
        let mut tls = raw::connect(port, &connector).await;
        let _ = tls.write_all(bytes.as_bytes()).await;
        let _ = tls.flush().await;
        let (answer, _) = raw::read_answers(&mut tls).await;
        let head = String::from_utf8_lossy(&answer);
        assert!(
            head.starts_with("HTTP/1.1 4"),
            "malformed request {i} was answered {:?}",
            head.chars().take(120).collect::<String>()
        );
    }

    // Dependencies' own lines with client text: rustls warns about an invalid SNI name from
    // the ClientHello (no certificate needed); Pingora's default loop on the admin listener
    // logs the request summary (method, URI, Host) at ERROR when the client resets.
    wait_for_port(admin_port);
    for sni in [format!("{ID} x"), format!("{CPR_DASH} x")] {
        let done = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                &sni,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client (Debian package openssl)");
        assert!(done.status.code().is_some());
    }
    for i in 0..10 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin_port))
            .await
            .unwrap();
        let pad = "p".repeat(i * 300);
        let req = format!(
            "GET /metrics?id={ID}&cpr={CPR_DASH}&{pad} HTTP/1.1\r\nHost: {ID}.example\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let _ = s.set_zero_linger();
        drop(s);
    }
    let output = proxy.finish();
    let token_parts: Vec<&str> = station_token.split('.').collect();
    let mut forbidden = vec![
        ("the station token", station_token.as_str()),
        ("the token's payload", token_parts[1]),
        ("the token's signature", token_parts[2]),
        ("the citizen token", citizen_token.as_str()),
        ("the supporter token", supporter_token.as_str()),
        ("the garbage token", GARBAGE_TOKEN),
        ("the garbage token's marker", "MARKER.TOKEN"),
        ("the id in a path", ID),
        ("the body marker", BODY),
        ("the CPR with a dash", CPR_DASH),
        ("a PEM block", "-----BEGIN"),
    ];
    forbidden.push(("the client certificate", &station_cert.cert_pem[28..90]));
    let mut problems = Vec::new();
    for line in output.lines() {
        for (what, marker) in &forbidden {
            if line.contains(marker) {
                problems.push(format!("{what} in: {}", excerpt(line)));
            }
        }
        // The MinLog audit records (audit.path = stdout by default, one JSON record a line)
        // are the one stream that names CPRs; no log line may.
        if line.contains(CPR) && !line.starts_with(AUDIT_RECORD) {
            problems.push(format!("the CPR in: {}", excerpt(line)));
        }
    }
    assert!(
        problems.is_empty(),
        "{} log line(s) leak:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // The test saw what it meant to: the audit record, Pingora's verbose output (withheld),
    // the refused heads, and the templated paths.
    let has = |needle: &str| output.lines().any(|l| l.contains(needle));
    assert!(
        output
            .lines()
            .any(|l| l.starts_with(AUDIT_RECORD) && l.contains(CPR)),
        "no supporter audit record naming the CPR"
    );
    assert!(has(
        "[message withheld: may carry request data; pingora-core"
    ));
    assert!(has(r#""reason":"malformed_request""#));
    assert!(has(r#""reason":"uri_too_long""#));
    // The access log names the rule that refused, not only the status: the search sent with
    // both Content-Length and Transfer-Encoding, and the garbage token.
    assert!(has(r#""reason":"length_and_chunked""#));
    assert!(has(r#""reason":"malformed""#));
    // The two reads of records that are not there (the CPR and the id marker in the path).
    assert!(
        output
            .lines()
            .filter(|l| l.contains(r#""status":404"#) && l.contains(r#""reason":"not_found""#))
            .count()
            >= 2,
        "the 404 reads' access log lines do not name not_found"
    );
    for template in [
        r#""path":"/fhir/AuditEvent/{id}""#,
        r#""path":"/fhir/AuditEvent/{id}/_history/{vid}""#,
        r#""path":"/fhir/AuditEvent/_search""#,
        r#""path":"/fhir/AuditEvent""#,
    ] {
        assert!(has(template), "no access log line with {template}");
    }
    let metadata_line = |method: &str| {
        output
            .lines()
            .find(|l| {
                l.contains(r#""path":"/fhir/metadata""#)
                    && l.contains(&format!(r#""method":"{method}""#))
            })
            .unwrap_or_else(|| panic!("no access log line for {method} /metadata"))
            .to_string()
    };
    let head_line = metadata_line("HEAD");
    assert!(head_line.contains(r#""bytes_out":0,"#), "{head_line}");
    let get_line = metadata_line("GET");
    assert!(
        get_line.contains(&format!(r#""bytes_out":{gz_len},"#)),
        "bytes_out is not the {gz_len} bytes sent: {get_line}"
    );
    let read_line = output
        .lines()
        .find(|l| l.contains(r#""path":"/fhir/AuditEvent/{id}""#) && l.contains(r#""status":404"#))
        .expect("the read's access log line");
    assert!(read_line.contains(r#""interaction":"read""#), "{read_line}");
}

fn excerpt(line: &str) -> String {
    line.chars().take(300).collect()
}
