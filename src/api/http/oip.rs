//! The Open Inference Protocol's REST binding (`/v2/...`) on the HTTP port: health, metadata and
//! inference with JSON tensors and the binary tensor data extension
//! (`Inference-Header-Content-Length`). Errors are `{"error": "<message>"}`, as the protocol
//! specifies, with the same status codes as the rest of the API. The routes and their
//! descriptions are here; the body's format is [`super::oip_body`]'s.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{check_declared_length, read_body, within};
use super::oip_body::{infer_response, json_length, parse_request, RestRequest, RestResponse};
use crate::api::errors::{oip_error, OipErrorBody};
use crate::error::Error;
use crate::oip::{self, ElementLimits};
use crate::serving::Service;

/// Protocol label of these requests in the metrics.
const PROTOCOL: &str = "oip_http";
/// Bodies smaller than this are parsed on the async worker; larger ones on the blocking pool.
const PARSE_INLINE_BYTES: usize = 64 << 10;

/// The `/v2` routes with their OpenAPI descriptions, to merge into the HTTP application.
pub fn routes() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::new()
        .routes(routes!(server_metadata))
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(model_metadata))
        .routes(routes!(model_metadata_v))
        .routes(routes!(model_ready))
        .routes(routes!(model_ready_v))
        .routes(routes!(infer))
        .routes(routes!(infer_v))
}

/// `GET /v2/health/live`.
#[derive(Debug, Serialize, ToSchema)]
struct Liveness {
    /// Always true: the server answers.
    live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// Warmed up and not draining.
    ready: bool,
}

/// `GET /v2/models/{name}/ready`.
#[derive(Debug, Serialize, ToSchema)]
struct ModelReadiness {
    /// The model asked about.
    name: String,
    /// Whether it takes requests now.
    ready: bool,
}

/// An [`Error`] in the protocol's body format.
#[derive(Debug)]
struct OipError(Error);

impl From<Error> for OipError {
    fn from(e: Error) -> Self {
        OipError(e)
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        oip_error(self.0)
    }
}

/// The server's name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "open inference protocol",
    responses((status = 200, description = "Server metadata", body = oip::ServerMetadata)))]
async fn server_metadata() -> Json<oip::ServerMetadata> {
    Json(oip::server_metadata())
}

/// Liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "open inference protocol",
    responses((status = 200, description = "Alive", body = Liveness)))]
async fn live() -> Json<Liveness> {
    Json(Liveness { live: true })
}

/// Readiness of the server.
#[utoipa::path(get, path = "/v2/health/ready", tag = "open inference protocol",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Warming up or draining", body = Readiness),
    ))]
async fn ready(State(service): State<Arc<Service>>) -> Response {
    let ready = service.is_ready();
    (readiness_status(ready), Json(Readiness { ready })).into_response()
}

fn readiness_status(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// A model's inputs and outputs.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "open inference protocol",
    params(("name" = String, Path, description = "Variant name",
        example = "mobilenet_v1_0.5_160")),
    responses(
        (status = 200, description = "Model metadata", body = oip::ModelMetadata),
        (status = 404, description = "No such model", body = OipErrorBody),
    ))]
async fn model_metadata(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> Result<Json<oip::ModelMetadata>, OipError> {
    Ok(Json(oip::model_metadata(&service, &name, "")?))
}

/// A model's inputs and outputs at a version (only `1` exists).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}",
    tag = "open inference protocol",
    params(
        ("name" = String, Path, description = "Variant name", example = "mobilenet_v1_0.5_160"),
        ("version" = String, Path, description = "Model version", example = "1"),
    ),
    responses(
        (status = 200, description = "Model metadata", body = oip::ModelMetadata),
        (status = 404, description = "No such model or version", body = OipErrorBody),
    ))]
async fn model_metadata_v(
    State(service): State<Arc<Service>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<oip::ModelMetadata>, OipError> {
    Ok(Json(oip::model_metadata(&service, &name, &version)?))
}

/// Whether a model takes requests.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open inference protocol",
    params(("name" = String, Path, description = "Variant name",
        example = "mobilenet_v1_0.5_160")),
    responses(
        (status = 200, description = "Ready", body = ModelReadiness),
        (status = 404, description = "No such model", body = OipErrorBody),
        (status = 503, description = "Not ready", body = ModelReadiness),
    ))]
async fn model_ready(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> Result<Response, OipError> {
    ready_answer(&service, &name, "")
}

/// Whether a model takes requests, at a version (only `1` exists).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready",
    tag = "open inference protocol",
    params(
        ("name" = String, Path, description = "Variant name", example = "mobilenet_v1_0.5_160"),
        ("version" = String, Path, description = "Model version", example = "1"),
    ),
    responses(
        (status = 200, description = "Ready", body = ModelReadiness),
        (status = 404, description = "No such model or version", body = OipErrorBody),
        (status = 503, description = "Not ready", body = ModelReadiness),
    ))]
async fn model_ready_v(
    State(service): State<Arc<Service>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, OipError> {
    ready_answer(&service, &name, &version)
}

fn ready_answer(service: &Service, name: &str, version: &str) -> Result<Response, OipError> {
    let ready = oip::model_ready(service, name, version)?;
    let body = ModelReadiness {
        name: name.to_string(),
        ready,
    };
    Ok((readiness_status(ready), Json(body)).into_response())
}

/// Runs a model on FP32 tensors (`input`) or encoded images (`image`).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open inference protocol",
    params(
        ("name" = String, Path, description = "Variant name", example = "mobilenet_v1_0.5_160"),
        ("inference-header-content-length" = Option<u64>, Header,
            description = "Binary extension: the length of the JSON part of the body"),
    ),
    request_body(
        description = "JSON, or with the binary tensor data extension the JSON part \
            (its length in Inference-Header-Content-Length) followed by the inputs' raw bytes.",
        content(
            (RestRequest = "application/json"),
            (RestRequest = "application/octet-stream"),
        )
    ),
    responses(
        (status = 200, description = "The outputs; with binary outputs the body is the JSON \
            part followed by their raw bytes", content(
                (RestResponse = "application/json"),
                (RestResponse = "application/octet-stream"),
            ),
            headers(
                ("inference-header-content-length" = u64,
                    description = "Length of the JSON part, when binary outputs follow it"),
                ("server-timing" = String, description = "Where the time went"),
            )),
        (status = 400, description = "Malformed request or tensor", body = OipErrorBody),
        (status = 404, description = "No such model or version", body = OipErrorBody),
        (status = 408, description = "The body arrived too slowly", body = OipErrorBody),
        (status = 413, description = "Body or tensor over the limits", body = OipErrorBody),
        (status = 415, description = "Image format not accepted", body = OipErrorBody),
        (status = 429, description = "Overloaded: retry later", body = OipErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 500, description = "A fault of the server", body = OipErrorBody),
        (status = 503, description = "Warming up or draining", body = OipErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 504, description = "The deadline passed", body = OipErrorBody),
    ))]
async fn infer(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, OipError> {
    run_infer(service, name, String::new(), request).await
}

/// Runs a model at a version (only `1` exists).
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer",
    tag = "open inference protocol",
    params(
        ("name" = String, Path, description = "Variant name", example = "mobilenet_v1_0.5_160"),
        ("version" = String, Path, description = "Model version", example = "1"),
        ("inference-header-content-length" = Option<u64>, Header,
            description = "Binary extension: the length of the JSON part of the body"),
    ),
    request_body(
        description = "JSON, or with the binary tensor data extension the JSON part \
            (its length in Inference-Header-Content-Length) followed by the inputs' raw bytes.",
        content(
            (RestRequest = "application/json"),
            (RestRequest = "application/octet-stream"),
        )
    ),
    responses(
        (status = 200, description = "The outputs; with binary outputs the body is the JSON \
            part followed by their raw bytes", content(
                (RestResponse = "application/json"),
                (RestResponse = "application/octet-stream"),
            ),
            headers(
                ("inference-header-content-length" = u64,
                    description = "Length of the JSON part, when binary outputs follow it"),
                ("server-timing" = String, description = "Where the time went"),
            )),
        (status = 400, description = "Malformed request or tensor", body = OipErrorBody),
        (status = 404, description = "No such model or version", body = OipErrorBody),
        (status = 408, description = "The body arrived too slowly", body = OipErrorBody),
        (status = 413, description = "Body or tensor over the limits", body = OipErrorBody),
        (status = 415, description = "Image format not accepted", body = OipErrorBody),
        (status = 429, description = "Overloaded: retry later", body = OipErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 500, description = "A fault of the server", body = OipErrorBody),
        (status = 503, description = "Warming up or draining", body = OipErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 504, description = "The deadline passed", body = OipErrorBody),
    ))]
async fn infer_v(
    State(service): State<Arc<Service>>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Result<Response, OipError> {
    run_infer(service, name, version, request).await
}

async fn run_infer(
    service: Arc<Service>,
    model: String,
    version: String,
    request: Request,
) -> Result<Response, OipError> {
    // Admission first: a refused request costs no body read.
    let mut admission = service.admit(PROTOCOL)?;
    let limit = service.config().decode_limits.max_bytes;
    let limits = ElementLimits::of(&service);
    admission.count_as(&service.metrics_label(&model));
    // An unknown model or version is refused before its body is read.
    admission.check(
        service
            .variant(&model)
            .and_then(|_| oip::check_version(&model, &version)),
    )?;
    let parsed = within(service.config().request_timeout, async {
        check_declared_length(request.headers(), limit)?;
        let header_len = json_length(request.headers())?;
        let body = read_body(request.into_body(), limit).await?;
        if body.len() < PARSE_INLINE_BYTES {
            return parse_request(model, version, &body, header_len, &limits);
        }
        // Megabytes of JSON take milliseconds to parse: not on the async workers.
        tokio::task::spawn_blocking(move || {
            parse_request(model, version, &body, header_len, &limits)
        })
        .await
        .map_err(|e| Error::Internal(format!("parsing stopped: {e}")))?
    })
    .await;
    let parsed = admission.check(parsed)?;
    let answer = oip::infer(&service, admission, parsed.request).await?;
    Ok(infer_response(answer, parsed.id, &parsed.binary))
}
