//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers' own types and
//! attributes: every route is registered together with its description (utoipa-axum), so the
//! document and the router cannot drift apart.

use std::sync::{Arc, OnceLock};

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::service::Service;

/// The document's frame: title, description, tags. The paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mobilenet-serve",
        description = "MobileNet v1 image classification on CPUs: 16 variants (width multiplier \
            alpha x input resolution) served by our own engine. Pick the variant per request by \
            name, by grid cell or by a latency/accuracy target. Errors are JSON: \
            `{\"error\": {\"code\", \"message\"}}` here, `{\"error\": \"...\"}` under `/v2` (the \
            Open Inference Protocol's format).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "classify", description = "Image classification"),
        (name = "models", description = "The variants, their cost, accuracy and live latency"),
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "open inference protocol",
            description = "KServe v2 / Open Inference Protocol REST binding"),
        (name = "pages", description = "The web pages and this description"),
    )
)]
struct Frame;

/// Every route of the HTTP application with its description; `api::http::app` serves them.
pub fn router() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::with_openapi(Frame::openapi())
        .merge(super::http::routes())
        .merge(super::oip_http::routes())
        .merge(super::web::routes())
        .routes(routes!(openapi_json))
}

/// The description as pretty JSON, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut api = router().into_openapi();
        api.info.version = env!("CARGO_PKG_VERSION").to_string();
        // Built from our own types only: serialising it cannot fail.
        api.to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"OpenAPI document: {e}\"}}"))
    })
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "pages",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-cache"),
        ],
        document(),
    )
}
