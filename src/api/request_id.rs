//! Request ids: every HTTP and gRPC request runs in a span carrying one, so that each log line
//! of a request names it. A client's own `x-request-id` (visible ASCII, at most 128 bytes) is
//! kept, so ids follow a request across services; otherwise one is made. HTTP answers echo it,
//! and the id is the request's task-local [`current`] one, so that an error can name it.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tokio::task::futures::TaskLocalFuture;
use tracing::instrument::Instrumented;
use tracing::Instrument;

tokio::task_local! {
    static CURRENT: String;
}

/// The header carrying the id, both ways.
pub const HEADER: &str = "x-request-id";
/// Longest client id kept; a longer one is replaced.
const MAX_LEN: usize = 128;

/// A new id: a per-process random start plus a counter, as 16 hex digits. Unique within the
/// process, and unlikely to collide across replicas.
pub fn generate() -> String {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU64::new(RandomState::new().hash_one(std::process::id())));
    format!("{:016x}", next.fetch_add(1, Ordering::Relaxed))
}

/// The client's id when it is a usable one, else a new one.
pub fn of(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_LEN && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(generate)
}

/// The span of one request.
pub fn span(protocol: &'static str, id: &str, path: &str) -> tracing::Span {
    tracing::info_span!("req", request_id = id, protocol, path)
}

/// The id of the request this task serves, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(String::clone).ok()
}

/// Runs `work` as the request `id`.
pub fn scope<F: Future>(id: String, work: F) -> TaskLocalFuture<String, F> {
    CURRENT.scope(id, work)
}

/// HTTP middleware: runs the request in its span and as its id, and echoes the id.
pub async fn propagate(request: Request, next: Next) -> Response {
    let id = of(request.headers());
    let span = span("http", &id, request.uri().path());
    let mut response = scope(id.clone(), next.run(request)).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// gRPC middleware (a layer of the tonic server): runs each call in its span and as its id.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRequestIds;

impl<S> tower::Layer<S> for GrpcRequestIds {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithRequestId { inner }
    }
}

/// A gRPC service whose calls run in their span and as their id (see [`GrpcRequestIds`]).
#[derive(Debug, Clone)]
pub struct WithRequestId<S> {
    inner: S,
}

impl<S, B> tower::Service<axum::http::Request<B>> for WithRequestId<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<TaskLocalFuture<String, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let id = of(request.headers());
        let span = span("grpc", &id, request.uri().path());
        let call = span.in_scope(|| self.inner.call(request));
        scope(id, call).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_when_sane_and_replaced_otherwise() {
        let mut headers = HeaderMap::new();
        let made = of(&headers);
        assert_eq!(made.len(), 16);
        assert_ne!(of(&headers), made, "each new id differs");
        headers.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(of(&headers), "abc-123");
        headers.insert(HEADER, HeaderValue::from_static("has space"));
        assert_ne!(of(&headers), "has space");
        let long = "x".repeat(MAX_LEN + 1);
        headers.insert(HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(of(&headers).len(), 16);
    }
}
