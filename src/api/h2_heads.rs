//! A deadline on HTTP/2 request heads, which h2 does not have. hyper closes an HTTP/1
//! connection whose head has not arrived within its `header_read_timeout`; on HTTP/2, a peer
//! that sends a HEADERS frame without END_HEADERS and never the CONTINUATION that ends it holds
//! the connection, and the partial header block, for as long as it answers the keep-alive
//! pings.
//!
//! [`HeadDeadline`] wraps a connection's socket and follows the frames it reads: the client
//! preface, then 9-byte frame headers whose payloads it skips. While a head is incomplete (the
//! preface, a frame header, a HEADERS or CONTINUATION payload, or a header block without
//! END_HEADERS), it must complete within the deadline counted from the read it began in;
//! otherwise reads fail with `TimedOut`, which ends the connection. Between requests and while
//! bodies stream, there is no deadline: idle connections are the pings' business.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a request head may take on HTTP/2, as on HTTP/1.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
struct Frames {
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
    /// The payload being read belongs to a HEADERS or CONTINUATION frame.
    head_payload: bool,
    /// A HEADERS frame came without END_HEADERS: CONTINUATION frames must follow.
    block_open: bool,
    /// Heads (and the preface) read to their end so far.
    completed: u64,
}

impl Frames {
    fn new() -> Self {
        Frames {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            head_payload: false,
            block_open: false,
            completed: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let was_open = self.head_open();
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.head_payload = false;
                }
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    self.frame_header();
                }
            }
            if was_open && !self.head_open() {
                self.completed += 1;
            }
        }
    }

    fn frame_header(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.header_len = 0;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let ends = flags & END_HEADERS != 0;
        match kind {
            HEADERS | PUSH_PROMISE => self.block_open = !ends,
            CONTINUATION if ends => self.block_open = false,
            _ => {}
        }
        self.head_payload =
            matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) && self.payload_left > 0;
    }

    /// A head (or the preface) has begun and not ended.
    fn head_open(&self) -> bool {
        self.preface_left > 0 || self.header_len > 0 || self.head_payload || self.block_open
    }
}

/// A connection's socket whose reads fail once an HTTP/2 request head is late.
#[derive(Debug)]
pub struct HeadDeadline<T> {
    inner: T,
    frames: Frames,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// A head is open and the timer runs for it.
    armed: bool,
}

impl<T> HeadDeadline<T> {
    /// Wraps a new connection, from its first byte, with `limit` per head.
    pub fn new(inner: T, limit: Duration) -> Self {
        HeadDeadline {
            inner,
            frames: Frames::new(),
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: true,
        }
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

fn late() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "an HTTP/2 request head did not arrive in time",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) => {
                let completed = this.frames.completed;
                this.frames.feed(&buf.filled()[before..]);
                let open = this.frames.head_open();
                // The deadline runs from the read where the head still open began: a busy
                // client's reads may each end inside a new head.
                if open && (!this.armed || this.frames.completed != completed) {
                    let deadline = Instant::now() + this.limit;
                    this.timer.as_mut().reset(deadline);
                } else if open && this.timer.is_elapsed() {
                    // A head trickled in a byte at a time still has to end in time.
                    return Poll::Ready(Err(late()));
                }
                this.armed = open;
                Poll::Ready(Ok(()))
            }
            // Waiting for bytes: the timer wakes this task when the head is late.
            Poll::Pending if this.armed && this.timer.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(late()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for HeadDeadline<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload_len: usize) -> Vec<u8> {
        let len = (payload_len as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.resize(FRAME_HEADER_LEN + payload_len, 0xab);
        f
    }

    #[test]
    fn follows_heads_across_frames_and_splits() {
        let mut frames = Frames::new();
        assert!(frames.head_open(), "before the preface");
        frames.feed(PREFACE);
        frames.feed(&frame(0x4, 0, 6)); // SETTINGS
        assert!(!frames.head_open());
        let headers = frame(HEADERS, 0x1, 10); // END_STREAM, no END_HEADERS
        frames.feed(&headers[..5]);
        assert!(frames.head_open(), "inside a frame header");
        frames.feed(&headers[5..12]);
        assert!(frames.head_open(), "inside the HEADERS payload");
        frames.feed(&headers[12..]);
        assert!(frames.head_open(), "the block has no END_HEADERS yet");
        frames.feed(&frame(CONTINUATION, 0, 3));
        assert!(frames.head_open());
        frames.feed(&frame(CONTINUATION, END_HEADERS, 3));
        assert!(!frames.head_open(), "the block ended");
        // A DATA frame read in pieces is a body, not a head.
        let data = frame(0x0, 0, 100);
        frames.feed(&data[..50]);
        assert!(!frames.head_open());
        frames.feed(&data[50..]);
        frames.feed(&frame(HEADERS, END_HEADERS, 0));
        assert!(!frames.head_open(), "an empty, complete HEADERS frame");
    }

    /// The error that ends reading `sent` and then nothing.
    async fn stalls(sent: Vec<u8>) -> io::Error {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut server = HeadDeadline::new(server, Duration::from_millis(200));
        client.write_all(&sent).await.unwrap();
        let mut buf = vec![0; 1 << 16];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(2), server.read(&mut buf))
                .await
                .expect("the deadline did not end the read");
            match read {
                Ok(0) => panic!("end of stream"),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    #[tokio::test]
    async fn a_late_head_fails_the_read_and_an_idle_connection_does_not() {
        let mut half_block = PREFACE.to_vec();
        half_block.extend(frame(HEADERS, 0, 8));
        assert_eq!(stalls(half_block).await.kind(), io::ErrorKind::TimedOut);
        let half_preface = PREFACE[..10].to_vec();
        assert_eq!(stalls(half_preface).await.kind(), io::ErrorKind::TimedOut);

        let mut idle = PREFACE.to_vec();
        idle.extend(frame(HEADERS, END_HEADERS, 8));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut server = HeadDeadline::new(server, Duration::from_millis(200));
        client.write_all(&idle).await.unwrap();
        let mut buf = vec![0; 1 << 16];
        assert_eq!(server.read(&mut buf).await.unwrap(), idle.len());
        let waited = tokio::time::timeout(Duration::from_millis(600), server.read(&mut buf)).await;
        assert!(waited.is_err(), "an idle connection was cut: {waited:?}");

        // A busy client whose every read ends inside a new head, for longer than the limit.
        let head = frame(HEADERS, END_HEADERS, 8);
        client.write_all(&head[..4]).await.unwrap();
        for _ in 0..10 {
            assert!(server.read(&mut buf).await.unwrap() > 0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&head[4..]).await.unwrap();
            client.write_all(&head[..4]).await.unwrap();
        }
        assert!(server.read(&mut buf).await.unwrap() > 0);
    }
}
