//! Issue 10: what an idle keep-alive mTLS connection costs, against the real `eds-proxy`
//! binary (its allocator included), each connection after a search through the proxy. Pingora's default read buffer alone is 64 KiB per
//! connection (`DEFAULT_L4_READ_BUFFER_SIZE`); the listener sets `listen.read_buffer_bytes`
//! (default: none) instead, and the connection loop boxes the request's future, so an idle
//! connection costs well under that (PERFORMANCE.md, "Memory").

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

use std::time::Duration;

use common::*;

/// `VmRSS` of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open file descriptors of process `pid` (each held connection is one).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `n` HTTPS connections of one station, each after one answered search (token checked,
/// forwarded, the searchset checked); kept open.
async fn hold(pki: &Pki, port: u16, n: usize) -> Vec<Caller> {
    let first = pki.caller(
        port,
        "memory-station",
        station_claims("Cura-EUA", "937961000016000", "GLN-1234"),
    );
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let caller = Caller::new(pki, port, first.cert.clone(), first.token.clone());
        let resp = caller.search("_count=1").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        held.push(caller);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_costs_less_than_pingoras_default_read_buffer() {
    const HELD: usize = 300;
    let dir = tmp_dir("memory");
    let pki = Pki::new(&dir);
    let upstream = RecordingUpstream::start(UpstreamMode::Honest);
    let (port, admin_port) = (free_port(), free_port());
    let upstream_base = format!("http://127.0.0.1:{}/fhir", upstream.port);
    let config = proxy_config(port, admin_port, &upstream_base, 5_000, "");
    let (mut child, _, _) = spawn_proxy(&dir, &config, "error", port);
    wait_for_port(admin_port);
    let pid = child.id();
    // Warm-up: the runtime's and the allocator's first allocations, and the handshake's
    // transient memory, are in the baseline, not charged to the held connections.
    drop(hold(&pki, port, 20).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (base_rss, base_fds) = (rss_kib(pid), open_fds(pid));
    let held = hold(&pki, port, HELD).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss, fds) = (rss_kib(pid), open_fds(pid));
    let _ = child.kill();
    let _ = child.wait();
    // The proxy kept every connection open (else the memory would be low for nothing).
    assert!(
        fds >= base_fds + HELD,
        "the proxy holds {fds} descriptors, {base_fds} before {HELD} connections"
    );
    let per_connection = rss.saturating_sub(base_rss) / HELD as u64;
    eprintln!(
        "{per_connection} KiB per idle connection (RSS {base_rss} -> {rss} KiB, {fds} descriptors)"
    );
    // Measured here (debug build, jemalloc): 39 KiB; with `read_buffer_bytes = 65536`
    // (Pingora's default): 91 KiB, and 110 KiB in the release build on glibc before issue 10.
    assert!(
        per_connection < 64,
        "{per_connection} KiB per idle connection (RSS {base_rss} -> {rss} KiB for {HELD})"
    );
    drop(held);
}
