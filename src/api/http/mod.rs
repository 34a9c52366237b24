//! The HTTP server (axum): our API ([`classifier`]) and the Open Inference Protocol's REST binding
//! ([`oip`], its body format [`oip_body`]) side by side, with the pages, the API key where
//! required, request ids, and one error format per protocol for unknown routes. The bindings
//! share [`body`], [`timing`] and `api::errors`, not each other.

pub(crate) mod body;
pub(crate) mod classifier;
pub(crate) mod oip;
pub(crate) mod oip_body;
pub(crate) mod repository;
pub(crate) mod timing;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::response::Response;
use axum::Router;

use crate::api::auth::{self, Auth};
use crate::api::errors::{for_path, is_oip_path};
use crate::api::{head, openapi, request_id};
use crate::error::Error;
use crate::serving::Service;

/// The HTTP application over `service`, asking for the API key as `auth` says; tests drive it
/// without a socket.
pub fn app(service: Arc<Service>, auth: Auth) -> Router {
    // Multipart bodies obey axum's body limit (2 MB unless set): make it ours.
    let body_limit = DefaultBodyLimit::max(service.config().decode_limits.max_bytes);
    let (routes, _) = openapi::router().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(body_limit)
        // A request without the key costs nothing else.
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(auth),
            auth::require_key,
        ))
        // Before anything reads the headers further.
        .layer(axum::middleware::from_fn(head::limit))
        // Outermost, so that even a refusal is logged under its request id.
        .layer(axum::middleware::from_fn(request_id::propagate))
        .with_state(service)
}

/// Unknown routes; under `/v2` in the Open Inference Protocol's error format.
async fn not_found(uri: Uri) -> Response {
    let message = if is_oip_path(uri.path()) {
        "no such route of the Open Inference Protocol"
    } else {
        "no such route; see /docs or /openapi.json (every route), / (the web page), \
         /v1/models, /classify, /v2 (Open Inference Protocol), /healthz, /readyz, /metrics"
    };
    for_path(uri.path(), Error::NotFound(message.into()))
}

async fn method_not_allowed(uri: Uri) -> Response {
    let e = Error::MethodNotAllowed("this route does not take that method".into());
    for_path(uri.path(), e)
}
