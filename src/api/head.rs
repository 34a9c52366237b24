//! The size limit of a request's head (request line and headers). On the HTTP port, in two
//! steps:
//! - up to [`MAX_HEAD_BYTES`], a request is handled; above, it gets 431 with the usual JSON
//!   error body, before any other work;
//! - the transport stops reading a head at [`MAX_HEAD_BUFFER`] (hyper's HTTP/1 read buffer,
//!   HTTP/2's header list): beyond that, hyper or h2 answer 431 themselves, without a body, and
//!   the connection is not read further. This bounds each connection's memory.
//!
//! On the gRPC port, h2 refuses a header list over [`MAX_HEAD_BYTES`] itself (tonic has no
//! middleware for it; the same figure is hyper's default there).
//!
//! 16 KiB is Node.js's default limit, the same order as nginx's (lines of at most 8 KiB) and
//! Apache's (8 KiB per field); our clients send a few short headers (the content type, an API
//! key, a request id, a trace context), well under 1 KiB. Before, hyper's default buffer let a
//! 200 KB header through to a 200.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::api::errors::for_path;
use crate::error::Error;

/// The largest request head answered normally, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The largest head the transport reads, in bytes.
pub const MAX_HEAD_BUFFER: usize = 64 * 1024;

/// The head's size as the client sent it on HTTP/1.1: request line and `name: value` lines.
fn head_size(request: &Request) -> usize {
    // The request target as sent: origin form (path and query) on HTTP/1.1; on HTTP/2 the
    // authority travels as a header of its own, counted here with the target.
    let uri = request.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = request.method().as_str().len() + target + 11;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields + 2
}

/// Refuses a request whose head is over [`MAX_HEAD_BYTES`] with 431.
pub async fn limit(request: Request, next: Next) -> Response {
    let size = head_size(&request);
    if size > MAX_HEAD_BYTES {
        let e = Error::HeadersTooLarge(format!(
            "the request line and headers take {size} bytes; at most {MAX_HEAD_BYTES} are accepted"
        ));
        return for_path(request.uri().path(), e);
    }
    next.run(request).await
}
