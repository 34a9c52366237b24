//! Our HTTP API: `POST /classify` (its query and the three body forms), `/v1/models`, health,
//! readiness and metrics, each route with its OpenAPI description.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{check_declared_length, read_body, within};
use super::timing::server_timing;
use crate::api::errors::ErrorBody;
use crate::engine::network::Precision;
use crate::engine::pool::Unavailable;
use crate::error::Error;
use crate::pipeline::decode::Resize;
use crate::serving::router::{Selection, SelectionParams};
use crate::serving::{ClassifyRequest, ClassifyResponse, ModelInfo, Prediction, Service, Timings};

/// Protocol label of HTTP requests in the metrics.
const PROTOCOL: &str = "http";
/// Predictions per image when the request does not say.
const DEFAULT_TOP_K: usize = 5;

/// This API's own routes (`/classify`, `/v1/models`, health, metrics), each with its OpenAPI
/// description.
pub fn routes() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::new()
        .routes(routes!(classify))
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The query string of `POST /classify`. The variant is chosen one way at most: by `model`, by
/// `alpha` with `resolution`, or by a target (`max_latency_ms` and/or `min_top1`); with none of
/// them the default variant answers.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ClassifyQuery {
    /// A variant by name (see `GET /v1/models`).
    #[param(example = "mobilenet_v1_0.5_160")]
    model: Option<String>,
    /// Width multiplier of the variant (0.25, 0.5, 0.75 or 1.0), with `resolution`.
    #[param(example = 0.5)]
    alpha: Option<f32>,
    /// Input resolution of the variant (128, 160, 192 or 224), with `alpha`.
    #[param(example = 160)]
    resolution: Option<usize>,
    /// Latency budget in milliseconds: the most accurate variant predicted to answer within it.
    #[param(exclusive_minimum = 0.0, example = 20.0)]
    max_latency_ms: Option<f64>,
    /// Accuracy floor: the fastest variant whose ImageNet top-1 (percent) is at least this.
    #[param(minimum = 0.0, maximum = 100.0, example = 60.0)]
    min_top1: Option<f64>,
    /// Number format, `fp32` or `int8`: of the `alpha`/`resolution` cell (fp32 when not given),
    /// of the variants a target chooses from (any when not given), or alone the default
    /// variant's cell in that precision. A `model` name already says it.
    #[param(inline)]
    precision: Option<Precision>,
    /// Predictions per image (default 5).
    #[param(minimum = 1, maximum = 1000, example = 5)]
    top_k: Option<usize>,
    /// Deadline of the whole request in milliseconds (default and bound set by the server);
    /// past it the answer is 504.
    #[param(minimum = 1, example = 2000)]
    timeout_ms: Option<u64>,
    /// With a target that no variant meets: answer with the fastest instead of 422.
    #[param(inline)]
    fallback: Option<Fallback>,
    /// `fast`: a JPEG of at least four times the size the model needs is decoded at 1/2, 1/4
    /// or 1/8 of its size (keeping twice that size), then resized; `exact`: the full image,
    /// bit-exact with the reference (Pillow) pipeline. Default: the server's `--resize` (`fast`
    /// unless set).
    #[param(inline)]
    resize: Option<Resize>,
}

/// What to do when no variant meets the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum Fallback {
    /// Answer with the fastest variant (`target_met` is then false).
    Fastest,
}

impl ClassifyQuery {
    fn parse(raw: Option<&str>) -> Result<Self, Error> {
        serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| Error::BadRequest(format!("invalid query: {e}")))
    }

    fn selection(&self) -> Result<Selection, Error> {
        let fallback_fastest = self.fallback == Some(Fallback::Fastest);
        SelectionParams {
            model: self.model.clone(),
            alpha: self.alpha,
            resolution: self.resolution,
            max_latency_ms: self.max_latency_ms,
            min_top1: self.min_top1,
            fallback_fastest,
            precision: self.precision,
        }
        .selection()
    }
}

/// JSON request bodies: exactly one of `image` and `images`, base64-encoded (a `data:` URL
/// prefix and line breaks are accepted).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"image": TINY_PNG_BASE64}))]
struct JsonImages {
    /// One image: the answer holds one list of predictions.
    image: Option<String>,
    /// Several images: the answer holds one list of predictions per image, in order.
    images: Option<Vec<String>>,
}

/// A 1x1 PNG, the smallest image the examples can carry.
const TINY_PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// An encoded image (JPEG, PNG, WebP, GIF or BMP) as the whole request body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // describes a body the handler reads as bytes
struct ImageBytes(Vec<u8>);

/// A form with one or more image files; every file is classified, in order.
#[derive(ToSchema)]
#[allow(dead_code)] // describes a body the handler reads field by field
struct ImageForm {
    /// An image file (any field name is accepted; repeat it for several images).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Predictions of one image, or of each image when the request carried several.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum PredictionLists {
    /// The top-k of the one image, best first.
    One(Vec<Prediction>),
    /// The top-k of each image, in request order.
    Many(Vec<Vec<Prediction>>),
}

/// The answer of `POST /classify`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "model": "mobilenet_v1_0.5_160",
    "predictions": [{"index": 207, "label": "golden retriever", "score": 0.91},
                    {"index": 208, "label": "Labrador retriever", "score": 0.05}],
    "target_met": true,
    "timings_ms": {"decode": 1.2, "preprocess": 0.8, "queue": 0.4, "inference": 6.1,
                   "postprocess": 0.1, "total": 8.9}
}))]
struct ClassifyBody {
    /// The variant that answered.
    model: String,
    /// Best first.
    predictions: PredictionLists,
    /// Whether the variant met the latency/accuracy target (only when one was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    target_met: Option<bool>,
    /// Where the time went.
    timings_ms: Timings,
}

/// Classifies one or more images with the variant the query selects.
#[utoipa::path(
    post,
    path = "/classify",
    tag = "classify",
    params(ClassifyQuery),
    request_body(
        description = "The image as the whole body (its image/* type or \
            application/octet-stream), a multipart form of image files, or JSON with base64.",
        content(
            (ImageBytes = "image/jpeg"),
            (ImageBytes = "image/png"),
            (ImageBytes = "image/webp"),
            (ImageBytes = "image/gif"),
            (ImageBytes = "image/bmp"),
            (ImageBytes = "application/octet-stream"),
            (ImageForm = "multipart/form-data"),
            (JsonImages = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "The top-k of each image", body = ClassifyBody,
            headers(("server-timing" = String,
                description = "The same timings in W3C Server-Timing form"))),
        (status = 400, description = "Bad query, body or image", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 408, description = "The body arrived too slowly", body = ErrorBody),
        (status = 413, description = "Body, image or image count over the limits",
            body = ErrorBody),
        (status = 415, description = "Media type or image format not accepted",
            body = ErrorBody),
        (status = 422, description = "No variant meets the target (and no fallback)",
            body = ErrorBody),
        (status = 429, description = "Overloaded: retry later", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 500, description = "A fault of the server", body = ErrorBody),
        (status = 503, description = "Warming up or draining", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 504, description = "The deadline passed", body = ErrorBody),
    )
)]
async fn classify(
    State(service): State<Arc<Service>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, Error> {
    // Admission first: a refused request costs no body read.
    let mut admission = service.admit(PROTOCOL)?;
    let limit = service.config().decode_limits.max_bytes;
    let parse = parse_classify(limit, query.as_deref(), request);
    let (request, several) =
        admission.check(within(service.config().request_timeout, parse).await)?;
    let answer = service.classify(admission, request).await?;
    Ok(classify_response(answer, several))
}

fn classify_response(answer: ClassifyResponse, several: bool) -> Response {
    let server_timing = server_timing(&answer.timings);
    let mut predictions = answer.predictions;
    let predictions = if several || predictions.len() != 1 {
        PredictionLists::Many(predictions)
    } else {
        PredictionLists::One(predictions.pop().unwrap_or_default())
    };
    let body = ClassifyBody {
        model: answer.model,
        predictions,
        target_met: answer.target_met,
        timings_ms: answer.timings,
    };
    let mut response = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&server_timing) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// Reads the query and the body (at most `limit` bytes per image). Returns the request and
/// whether it was a multi-image form (several images, `images` in JSON, or several multipart
/// files), which answers with one prediction list per image.
pub(crate) async fn parse_classify(
    limit: usize,
    query: Option<&str>,
    request: Request,
) -> Result<(ClassifyRequest, bool), Error> {
    let query = ClassifyQuery::parse(query)?;
    let selection = query.selection()?;
    check_declared_length(request.headers(), limit)?;
    let mime = media_type(request.headers());
    let (images, several) = match mime.as_str() {
        "multipart/form-data" => {
            let files = read_multipart(request).await?;
            let several = files.len() > 1;
            (files, several)
        }
        "application/json" => read_json(request.into_body(), limit).await?,
        m if m.is_empty() || m.starts_with("image/") || m == "application/octet-stream" => {
            (vec![read_body(request.into_body(), limit).await?], false)
        }
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "`{other}`; send the image as image/* or application/octet-stream (curl: -H \
                 'content-type: image/jpeg' --data-binary @file.jpg), as multipart/form-data \
                 (curl -F file=@file.jpg), or as JSON {{\"image\": \"<base64>\"}}"
            )))
        }
    };
    Ok((
        ClassifyRequest {
            images,
            selection,
            top_k: query.top_k.unwrap_or(DEFAULT_TOP_K),
            timeout: query.timeout_ms.map(Duration::from_millis),
            resize: query.resize,
        },
        several,
    ))
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

async fn read_json(body: Body, limit: usize) -> Result<(Vec<Bytes>, bool), Error> {
    let bytes = read_body(body, limit).await?;
    let parsed: JsonImages = serde_json::from_slice(&bytes).map_err(|e| {
        Error::BadRequest(format!(
            "invalid JSON body (expected {{\"image\": \"<base64>\"}} or {{\"images\": [...]}}): {e}"
        ))
    })?;
    let (encoded, several) = match (parsed.image, parsed.images) {
        (Some(one), None) => (vec![one], false),
        (None, Some(many)) if many.is_empty() => {
            return Err(Error::BadRequest("`images` is an empty list".into()))
        }
        (None, Some(many)) => (many, true),
        _ => {
            return Err(Error::BadRequest(
                "the JSON body needs exactly one of `image` and `images`".into(),
            ))
        }
    };
    let images = encoded
        .iter()
        .enumerate()
        .map(|(i, text)| {
            decode_base64(text).map_err(|e| Error::BadRequest(format!("image {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((images, several))
}

/// Standard base64, tolerating a `data:...;base64,` prefix and line breaks.
fn decode_base64(text: &str) -> Result<Bytes, String> {
    let payload = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map(Bytes::from)
        .map_err(|e| format!("not valid base64: {e}"))
}

async fn read_multipart(request: Request) -> Result<Vec<Bytes>, Error> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| Error::BadRequest(format!("invalid multipart body: {}", e.body_text())))?;
    let mut files = Vec::new();
    loop {
        let field = form.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else { break };
        files.push(field.bytes().await.map_err(multipart_error)?);
    }
    if files.is_empty() {
        return Err(Error::BadRequest("the multipart body holds no file".into()));
    }
    Ok(files)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge(e.body_text())
    } else {
        Error::BadRequest(format!("invalid multipart body: {}", e.body_text()))
    }
}

/// Every loaded variant.
#[derive(Debug, Serialize, ToSchema)]
struct ModelList {
    /// The variants served, in catalogue order.
    models: Vec<ModelInfo>,
    /// The variants of the catalogue that failed to load, and why.
    unavailable: Vec<Unavailable>,
}

/// Every variant with its cost, accuracy and live latency.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "Every loaded variant", body = ModelList)))]
async fn list_models(State(service): State<Arc<Service>>) -> Json<ModelList> {
    Json(ModelList {
        models: service.models(),
        unavailable: service.unavailable().to_vec(),
    })
}

/// One variant.
#[utoipa::path(get, path = "/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "Variant name",
        example = "mobilenet_v1_0.5_160")),
    responses(
        (status = 200, description = "The variant", body = ModelInfo),
        (status = 404, description = "No such variant, or it failed to load", body = ErrorBody),
    ))]
async fn get_model(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> Result<Json<ModelInfo>, Error> {
    service.model(&name).map(Json)
}

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
struct Status {
    /// `ok` (alive) or `ready`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
    /// Names of the variants that failed to load (the others are served); `/v1/models` says
    /// why. Only names: health routes may be open when the rest needs the API key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unavailable: Vec<String>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok",
        unavailable: Vec::new(),
    })
}

/// Readiness: warmed up and not draining. Variants that failed to load do not make it fail
/// (the others are served); it lists them.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Warming up or draining", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
    ))]
async fn readyz(State(service): State<Arc<Service>>) -> Result<Json<Status>, Error> {
    if service.is_draining() {
        Err(Error::Unavailable("draining".into()))
    } else if service.is_ready() {
        Ok(Json(Status {
            status: "ready",
            unavailable: service
                .unavailable()
                .iter()
                .map(|u| u.name.clone())
                .collect(),
        }))
    } else {
        Err(Error::Unavailable("warming up".into()))
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Every metric", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
async fn metrics(State(service): State<Arc<Service>>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        service.metrics().render(),
    )
        .into_response()
}
