//! `eds-proxy health`, the check the image's HEALTHCHECK and the compose file run (the image
//! has no curl): exit 0 with "healthy: …" on a 2xx, exit 1 with "unhealthy: …" otherwise.
//! The rest of the deployment is checked by scripts/docker-context-check.py,
//! scripts/deploy-check.py and scripts/replicas-test.sh (README, "Deploying").

#![cfg(feature = "server")]
// Test code: a panic is a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

fn health(url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_eds-proxy"))
        .args(["health", "--url", url, "--timeout-seconds", "2"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Answers each of `statuses` to one connection, in order; returns the port.
fn admin_stub(statuses: &'static [&'static str]) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for status in statuses {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            requests.push(String::from_utf8_lossy(&buf[..n]).to_string());
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .unwrap();
        }
        requests
    });
    (port, handle)
}

#[test]
fn health_passes_on_2xx_and_fails_otherwise() {
    let (port, stub) = admin_stub(&["200 OK", "503 Service Unavailable"]);
    let url = format!("http://127.0.0.1:{port}/readyz");
    assert_eq!(health(&url), (0, "healthy: GET /readyz: 200".to_string()));
    assert_eq!(health(&url), (1, "unhealthy: GET /readyz: 503".to_string()));
    let requests = stub.join().unwrap();
    assert!(requests[0].starts_with(&format!(
        "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    )));
    // Nothing listens there any more: unhealthy, with the reason.
    let (code, out) = health(&url);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!("unhealthy: 127.0.0.1:{port}: ")),
        "{out}"
    );
}

#[test]
fn health_tcp_checks_only_the_connection_and_refuses_other_schemes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(
        health(&format!("tcp://127.0.0.1:{port}")),
        (0, format!("healthy: 127.0.0.1:{port}: connection accepted"))
    );
    assert_eq!(
        health("https://127.0.0.1:9100/readyz"),
        (
            1,
            "unhealthy: scheme \"https\" is not checked (use http:// or tcp://)".to_string()
        )
    );
}
