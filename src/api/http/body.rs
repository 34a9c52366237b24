//! Reading HTTP request bodies within the size limit and the time limit, for every HTTP route
//! that takes one.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::HeaderMap;

use crate::error::Error;

/// The error of a body over `limit` bytes.
pub fn too_large(limit: usize) -> Error {
    Error::TooLarge(format!(
        "the body exceeds the limit of {limit} bytes (--max-body-bytes)"
    ))
}

/// Refuses a body whose declared length is over the limit before reading any of it.
pub fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// The whole body, or 413 past `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if over_limit {
            too_large(limit)
        } else {
            Error::BadRequest(format!("cannot read the body: {e}"))
        }
    })
}

/// Runs `reading` (a body read and its parsing) for at most `limit`: a client that stalls while
/// sending its body must not hold its admission slot for ever.
pub async fn within<T>(
    limit: Duration,
    reading: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, reading)
        .await
        .unwrap_or_else(|_| {
            Err(Error::RequestTimeout(format!(
                "the body was not received within {} ms",
                limit.as_millis()
            )))
        })
}
