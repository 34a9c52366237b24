//! The web pages: the classifier at `GET /` and the API reference at `GET /docs`. Plain HTML, CSS
//! and JavaScript compiled into the binary, so that they work offline with no build step and no
//! CDN.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");
const DOCS: &str = include_str!("docs.html");
const DOCS_SCRIPT: &str = include_str!("docs.js");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The pages' routes with their OpenAPI descriptions, to merge into the HTTP application.
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(docs))
        .routes(routes!(script))
        .routes(routes!(docs_script))
        .routes(routes!(style))
}

/// The classifier page: drop an image, pick a variant, see the trade-off chart.
#[utoipa::path(get, path = "/", tag = "pages",
    responses((status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8")))]
async fn index() -> impl IntoResponse {
    page(HTML, INDEX)
}

/// This API's reference, rendered from `/openapi.json`.
#[utoipa::path(get, path = "/docs", tag = "pages",
    responses((status = 200, description = "The page", body = String, content_type = "text/html; charset=utf-8")))]
async fn docs() -> impl IntoResponse {
    page(HTML, DOCS)
}

/// The classifier page's script.
#[utoipa::path(get, path = "/static/app.js", tag = "pages",
    responses((status = 200, description = "The script", body = String,
        content_type = "text/javascript; charset=utf-8")))]
async fn script() -> impl IntoResponse {
    page(JAVASCRIPT, SCRIPT)
}

/// The reference page's script.
#[utoipa::path(get, path = "/static/docs.js", tag = "pages",
    responses((status = 200, description = "The script", body = String,
        content_type = "text/javascript; charset=utf-8")))]
async fn docs_script() -> impl IntoResponse {
    page(JAVASCRIPT, DOCS_SCRIPT)
}

/// The pages' style sheet.
#[utoipa::path(get, path = "/static/style.css", tag = "pages",
    responses((status = 200, description = "The style sheet", body = String, content_type = "text/css; charset=utf-8")))]
async fn style() -> impl IntoResponse {
    page(CSS, STYLE)
}

/// The files are small and change with the binary: never cached, so an upgrade never shows a
/// stale page. The pages load only their own files and show only local previews (`blob:`).
fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'",
            ),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
