//! The HTTP side of `fetch-zoo`: a blocking client (ureq over rustls, so no OpenSSL in the
//! build) with timeouts and a size limit, whose body reader remembers why it failed.
//!
//! Plain `http://` is accepted (a mirror, a test server): what vouches for a file is its digest,
//! not the transport. Proxies follow `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, as ureq reads them.

use std::io::{self, Read};
use std::time::Duration;

use indicatif::ProgressBar;
use ureq::{Agent, BodyReader};

/// Default of `--max-bytes`, per archive (which also holds checkpoints and a frozen graph):
/// a bound against a runaway or wrong download, not a size we measured.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Default of `--connect-timeout-s`.
pub const DEFAULT_CONNECT_S: u64 = 30;
/// Default of `--timeout-s`: 256 MiB at 300 KB/s.
pub const DEFAULT_TIMEOUT_S: u64 = 900;

/// A read that waits longer than this for a single byte gives up, whatever time is left of
/// the overall timeout: a stalled connection fails in a minute, not at the end of the budget.
const STALL: Duration = Duration::from_secs(60);

/// How long and how much one archive may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Name resolution and connecting, each.
    pub connect: Duration,
    /// The whole exchange, body included.
    pub total: Duration,
    /// Bytes of one archive at most.
    pub max_bytes: u64,
}

/// An HTTP client for the release archives.
#[derive(Debug)]
pub struct Client {
    agent: Agent,
    limits: Limits,
}

/// A response whose body is about to be read.
pub struct Download {
    /// The body's length, when the server says it.
    pub length: Option<u64>,
    /// The body.
    pub body: Body,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connect: Duration::from_secs(DEFAULT_CONNECT_S),
            total: Duration::from_secs(DEFAULT_TIMEOUT_S),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl Client {
    /// A client that applies `limits` to every request.
    pub fn new(limits: Limits) -> Client {
        let config = Agent::config_builder()
            .timeout_resolve(Some(limits.connect))
            .timeout_connect(Some(limits.connect))
            .timeout_global(Some(limits.total))
            .timeout_per_read(Some(STALL.min(limits.total)))
            // A status is an answer to report in our words (`HTTP 404 Not Found`), not an error.
            .http_status_as_error(false)
            .build();
        Client {
            agent: Agent::new_with_config(config),
            limits,
        }
    }

    /// Starts `GET url`. Fails, with a message that names the URL, on a network error, a
    /// status other than 2xx, or a length over the limit.
    pub fn get(&self, url: &str) -> Result<Download, String> {
        let response = self
            .agent
            .get(url)
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "{url}: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_string());
        }
        let body = response.into_body();
        let length = body.content_length();
        let max = self.limits.max_bytes;
        if let Some(n) = length.filter(|&n| n > max) {
            return Err(format!(
                "{url}: the archive is {n} bytes, more than --max-bytes {max}"
            ));
        }
        Ok(Download {
            length,
            body: Body {
                inner: body.into_reader(),
                url: url.to_string(),
                read: 0,
                limit: max,
                progress: ProgressBar::hidden(),
                failure: None,
            },
        })
    }
}

/// A response body that stops past the size limit, moves a progress bar, and keeps the first
/// error it met: once gzip and tar have wrapped an error, the caller asks [`Body::failure`]
/// whether the network or the archive was at fault.
pub struct Body {
    inner: BodyReader<'static>,
    url: String,
    read: u64,
    limit: u64,
    progress: ProgressBar,
    failure: Option<String>,
}

impl Body {
    /// Moves `bar` by the bytes read from now on.
    pub fn with_progress(mut self, bar: ProgressBar) -> Body {
        self.progress = bar;
        self
    }

    /// Why reading failed, when the download (not its content) was at fault.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than the limit is asked for, so that a body of exactly the limit passes
        // and a longer one is caught.
        let room = (self.limit + 1).saturating_sub(self.read);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let why = format!("{}: {e}", self.url);
                self.failure.get_or_insert(why);
                return Err(e);
            }
        };
        self.read += n as u64;
        if self.read > self.limit {
            let why = format!("{}: more than --max-bytes {} bytes", self.url, self.limit);
            self.failure.get_or_insert(why.clone());
            return Err(io::Error::other(why));
        }
        self.progress.inc(n as u64);
        Ok(n)
    }
}
