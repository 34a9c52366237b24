//! `mobilenet-serve healthcheck`: one HTTP GET against a running server's probe, for container
//! HEALTHCHECKs on images that have no curl (the runtime image carries only this binary).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{Error, Result};

/// Where a probe URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// `host:port`.
    pub authority: String,
    /// The path, with its query, starting with `/`.
    pub path: String,
}

/// Splits an `http://host[:port][/path]` URL (port 80 when absent); other schemes are refused.
pub fn parse_url(url: &str) -> Result<ProbeTarget> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Config(format!("`{url}`: only http:// URLs can be probed")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(Error::Config(format!("`{url}` names no host")));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(ProbeTarget {
        authority,
        path: path.to_string(),
    })
}

/// GETs `url` and returns its HTTP status code; everything (connecting, writing, reading) within
/// `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<u16> {
    let target = parse_url(url)?;
    let addr: SocketAddr = target
        .authority
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("`{}`: {e}", target.authority)))?
        .next()
        .ok_or_else(|| Error::Config(format!("`{}` resolves to nothing", target.authority)))?;
    let io = |e: std::io::Error| Error::Unavailable(format!("{url}: {e}"));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    // The status line is all we need; it arrives first.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        let n = stream.read(&mut head[len..]).map_err(io)?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    status_code(&head[..len])
        .ok_or_else(|| Error::Unavailable(format!("{url}: not an HTTP response")))
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_are_split_with_a_default_port() {
        assert_eq!(
            parse_url("http://127.0.0.1:8000/healthz").unwrap(),
            ProbeTarget {
                authority: "127.0.0.1:8000".into(),
                path: "/healthz".into()
            }
        );
        assert_eq!(parse_url("http://example").unwrap().authority, "example:80");
        assert_eq!(parse_url("http://example").unwrap().path, "/");
        assert!(parse_url("https://example/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn status_lines_are_read_and_garbage_refused() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    /// A one-shot server answering `reply`, and the URL to reach it.
    fn serve_once(reply: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply);
        });
        url
    }

    #[test]
    fn probes_report_the_servers_status_or_fail() {
        let t = Duration::from_secs(5);
        let ok = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(probe(&ok, t).unwrap(), 200);
        let down = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(probe(&down, t).unwrap(), 503);
        let silent = serve_once(b"");
        assert!(probe(&silent, t).is_err());
        // Nothing listens there any more.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        assert!(probe(&closed, t).is_err());
    }
}
