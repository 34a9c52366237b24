//! A minimal blocking HTTP/1.1 client for the command line: `healthcheck` (container probes on
//! images without curl) and `classify --url`. Plain `http://` only: it talks to our own server.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

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

/// A response: its status code and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// Largest response read: the CLI's answers are small JSON documents.
const MAX_RESPONSE: usize = 16 << 20;

/// Sends one request (`body` with `content_type` when given) and reads the whole response, all
/// within `timeout`.
pub fn request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
    api_key: Option<&str>,
) -> Result<Reply> {
    let target = parse_url(url)?;
    let deadline = Instant::now() + timeout;
    let io = |e: std::io::Error| Error::Unavailable(format!("{url}: {e}"));
    let mut stream = connect(&target.authority, timeout).map_err(io)?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        target.path,
        target.authority,
        body.len()
    );
    if let Some(t) = content_type {
        head.push_str(&format!("Content-Type: {t}\r\n"));
    }
    if let Some(key) = api_key {
        head.push_str(&format!("Authorization: Bearer {}\r\n", key.trim_end()));
    }
    head.push_str("\r\n");
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    // A server may answer (413, say) and close before the body is all sent: its answer is
    // still worth reading.
    let raw = read_until_close(&mut stream, deadline).map_err(io);
    let raw = match (raw, sent) {
        (Ok(raw), _) if !raw.is_empty() => raw,
        (_, Err(e)) => return Err(io(e)),
        (Err(e), Ok(())) => return Err(e),
        (Ok(raw), Ok(())) => raw,
    };
    parse_response(&raw).ok_or_else(|| Error::Unavailable(format!("{url}: not an HTTP response")))
}

/// A connection to the first address of `authority` that accepts one (a name may resolve to
/// IPv6 and IPv4 addresses, and the server listen on only one family).
fn connect(authority: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolves to nothing")
    }))
}

/// Everything the server sends until it closes (`Connection: close`), by `deadline`, refusing
/// more than [`MAX_RESPONSE`] bytes.
fn read_until_close(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete answer in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        if raw.len() + n > MAX_RESPONSE {
            return Err(std::io::Error::other(format!(
                "the answer exceeds {MAX_RESPONSE} bytes"
            )));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// GETs `url` (with the API key when given) and returns its HTTP status code.
pub fn probe(url: &str, timeout: Duration, api_key: Option<&str>) -> Result<u16> {
    request("GET", url, None, &[], timeout, api_key).map(|r| r.status)
}

/// Splits a raw response into status and body, decoding a chunked body.
fn parse_response(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status = status_code(head.as_bytes())?;
    let body = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some(Reply { status, body })
}

/// The data of a chunked body (`<hex size>\r\n<data>\r\n`... `0\r\n\r\n`).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
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
    fn chunked_and_plain_bodies_are_read() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").unwrap();
        assert_eq!(
            (plain.status, plain.body.as_slice()),
            (200, b"hi".as_slice())
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().body, b"abc0123456789");
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_none()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK").is_none());
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
        assert_eq!(probe(&ok, t, None).unwrap(), 200);
        let down = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(probe(&down, t, None).unwrap(), 503);
        let silent = serve_once(b"");
        assert!(probe(&silent, t, None).is_err());
        // Nothing listens there any more.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        assert!(probe(&closed, t, None).is_err());
    }
}
