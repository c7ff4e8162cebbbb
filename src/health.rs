//! `eds-proxy health --url URL`: the container health check. The runtime image has no shell
//! and no `curl` (distroless), so the binary asks its own admin listener: exit 0 when
//! `GET URL` answers 2xx, 1 otherwise. `tcp://host:port` only checks that a TCP connection
//! is accepted (the dev issuer speaks mutual TLS only). Plain HTTP/1.1 over `std::net`: the
//! admin listener is plain HTTP on a private address, and the check must stay cheap (no
//! runtime, no TLS stack started every few seconds).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What `health` checks, parsed from its `--url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port/path`: `GET` it, succeed on a 2xx status (RFC 9110 §15.3).
    Http {
        /// `host:port` to connect to (port 80 when the URL has none).
        address: String,
        /// The `Host` field value (RFC 9110 §7.2): the URL's authority.
        host: String,
        /// Path and query, at least `/`.
        path: String,
    },
    /// `tcp://host:port`: succeed when a connection is accepted.
    Tcp {
        /// `host:port` to connect to.
        address: String,
    },
}

/// Parses `--url`: `http://` (no `https`: the admin listener is plain HTTP) or `tcp://` with
/// an explicit port. Errors name what is wrong; no user info or fragment is accepted.
pub fn parse_target(raw: &str) -> Result<Target, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or_else(|| "the URL has no host".to_string())?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err("user info and fragments are not accepted".into());
    }
    match url.scheme() {
        "http" => {
            let port = url.port().unwrap_or(80);
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let authority = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            };
            Ok(Target::Http {
                address: format!("{host}:{port}"),
                host: authority,
                path,
            })
        }
        "tcp" => {
            let port = url
                .port()
                .ok_or_else(|| "a tcp:// URL needs a port".to_string())?;
            Ok(Target::Tcp {
                address: format!("{host}:{port}"),
            })
        }
        other => Err(format!(
            "scheme {other:?} is not checked (use http:// or tcp://)"
        )),
    }
}

/// The status code of an HTTP/1.x status line (RFC 9112 §4: `HTTP/1.x SP 3DIGIT SP …`), or
/// `None` if `head` does not start with one.
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(head.get(..line_end)?).ok()?;
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    let version = parts.next()?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// Runs the check against `target` within `timeout` in all (connect, write and reads: an
/// answer dripping in byte by byte does not stretch it). Every address the host resolves to
/// is tried in turn (`localhost` may be `::1` first while the listener is IPv4). `Ok` with a
/// one-line description when healthy; `Err` with the reason otherwise.
pub fn check(target: &Target, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let address = match target {
        Target::Http { address, .. } | Target::Tcp { address } => address,
    };
    let late = || {
        format!(
            "{address}: no answer within {} s (timeout in all)",
            timeout.as_secs()
        )
    };
    let left = |deadline: Instant| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut last = format!("{address}: no address");
    let mut connected = None;
    for socket in address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
    {
        let Some(rest) = left(deadline) else {
            return Err(late());
        };
        match TcpStream::connect_timeout(&socket, rest) {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    let mut stream = connected.ok_or(last)?;
    let (host, path) = match target {
        Target::Tcp { .. } => return Ok(format!("{address}: connection accepted")),
        Target::Http { host, path, .. } => (host, path),
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => late(),
        _ => format!("{address}: {e}"),
    };
    let rest = left(deadline).ok_or_else(late)?;
    stream.set_write_timeout(Some(rest)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: eds-proxy-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    // The status line is all that is needed; 512 bytes hold it (or show it is not HTTP).
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while head.len() < 512 && !head.contains(&b'\n') {
        let rest = left(deadline).ok_or_else(late)?;
        stream.set_read_timeout(Some(rest)).map_err(io)?;
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    match status_code(&head) {
        Some(code) if (200..300).contains(&code) => Ok(format!("GET {path}: {code}")),
        Some(code) => Err(format!("GET {path}: {code}")),
        None => Err(format!("GET {path}: no HTTP status line in the answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_become_address_host_and_path() {
        assert_eq!(
            parse_target("http://127.0.0.1:9100/readyz"),
            Ok(Target::Http {
                address: "127.0.0.1:9100".into(),
                host: "127.0.0.1:9100".into(),
                path: "/readyz".into(),
            })
        );
        assert_eq!(
            parse_target("http://admin/readyz?x=1"),
            Ok(Target::Http {
                address: "admin:80".into(),
                host: "admin".into(),
                path: "/readyz?x=1".into(),
            })
        );
        assert_eq!(
            parse_target("tcp://localhost:9443"),
            Ok(Target::Tcp {
                address: "localhost:9443".into()
            })
        );
    }

    #[test]
    fn other_urls_are_refused_with_the_reason() {
        assert_eq!(
            parse_target("https://127.0.0.1:9100/readyz"),
            Err("scheme \"https\" is not checked (use http:// or tcp://)".into())
        );
        assert_eq!(
            parse_target("tcp://localhost"),
            Err("a tcp:// URL needs a port".into())
        );
        assert_eq!(
            parse_target("http://u:p@127.0.0.1:9100/"),
            Err("user info and fragments are not accepted".into())
        );
        assert!(parse_target("127.0.0.1:9100")
            .unwrap_err()
            .starts_with("not a URL"));
    }

    #[test]
    fn status_lines_are_read_strictly() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"HTTP/1.1 204"), Some(204));
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn check_gives_up_after_the_timeout_in_all_even_when_the_answer_drips() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).unwrap();
            // One byte every 300 ms: each read succeeds well within the timeout.
            for b in b"HTTP/1.1 200 OK\r\n\r\n" {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let target = parse_target(&format!("http://127.0.0.1:{port}/readyz")).unwrap();
        let t0 = std::time::Instant::now();
        let got = check(&target, Duration::from_secs(1));
        let took = t0.elapsed();
        assert_eq!(
            got,
            Err(format!(
                "127.0.0.1:{port}: no answer within 1 s (timeout in all)"
            ))
        );
        assert!(took < Duration::from_millis(1800), "{took:?}");
        server.join().unwrap();
    }

    #[test]
    fn check_reports_a_closed_port_and_a_live_listener() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for code in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).unwrap();
                assert!(req[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
                s.write_all(format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .unwrap();
            }
        });
        let target = parse_target(&format!("http://127.0.0.1:{port}/readyz")).unwrap();
        assert_eq!(
            check(&target, Duration::from_secs(3)),
            Ok("GET /readyz: 200".into())
        );
        assert_eq!(
            check(&target, Duration::from_secs(3)),
            Err("GET /readyz: 503".into())
        );
        server.join().unwrap();
        // The listener is gone: nothing accepts on that port any more.
        let err = check(&target, Duration::from_secs(3)).unwrap_err();
        assert!(err.starts_with(&format!("127.0.0.1:{port}: ")), "{err}");
    }
}
