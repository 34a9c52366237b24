//! The HTTP API (axum): routes, request parsing, response bodies, and the one mapping from
//! [`Error`] to a status code with a JSON body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::body::{check_declared_length, read_body, within};
use crate::error::Error;
use crate::metrics::NO_VARIANT;
use crate::router::{Selection, SelectionParams};
use crate::service::{ClassifyRequest, ClassifyResponse, ModelInfo, Prediction, Service, Timings};

/// Protocol label of HTTP requests in the metrics.
const PROTOCOL: &str = "http";
/// Predictions per image when the request does not say.
const DEFAULT_TOP_K: usize = 5;

/// The HTTP application over `service`; tests drive it without a socket.
pub fn app(service: Arc<Service>) -> Router {
    // Multipart bodies obey axum's body limit (2 MB unless set): make it ours.
    let body_limit = DefaultBodyLimit::max(service.config().decode_limits.max_bytes);
    Router::new()
        .route("/classify", post(classify))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}", get(get_model))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::oip_http::routes())
        .merge(super::web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(body_limit)
        .with_state(service)
}

/// `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind().code,
                message: self.to_string(),
            },
        };
        error_response(&self, body)
    }
}

/// The response to `error` with `body` (each protocol has its own error body): the status of its
/// kind, `Retry-After` when retrying can help, and a log line for faults of ours.
pub(crate) fn error_response(error: &Error, body: impl Serialize) -> Response {
    let kind = error.kind();
    if kind.status >= 500 && kind.status != 503 && kind.status != 504 {
        tracing::error!(error = %error, "request failed");
    }
    let status = StatusCode::from_u16(kind.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body)).into_response();
    if let Some(s) = kind.retry_after_s {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(s));
    }
    response
}

/// The query string of `POST /classify`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyQuery {
    model: Option<String>,
    alpha: Option<f32>,
    resolution: Option<usize>,
    max_latency_ms: Option<f64>,
    min_top1: Option<f64>,
    top_k: Option<usize>,
    timeout_ms: Option<u64>,
    fallback: Option<String>,
}

impl ClassifyQuery {
    fn parse(raw: Option<&str>) -> Result<Self, Error> {
        serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| Error::BadRequest(format!("invalid query: {e}")))
    }

    fn selection(&self) -> Result<Selection, Error> {
        let fallback_fastest = match self.fallback.as_deref() {
            None => false,
            Some("fastest") => true,
            Some(other) => {
                return Err(Error::BadRequest(format!(
                    "unknown fallback `{other}` (the only one is `fastest`)"
                )))
            }
        };
        SelectionParams {
            model: self.model.clone(),
            alpha: self.alpha,
            resolution: self.resolution,
            max_latency_ms: self.max_latency_ms,
            min_top1: self.min_top1,
            fallback_fastest,
        }
        .selection()
    }
}

/// JSON request bodies: one image or several, base64-encoded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonImages {
    image: Option<String>,
    images: Option<Vec<String>>,
}

/// Predictions of one image, or of each image when the request carried several.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum PredictionLists {
    One(Vec<Prediction>),
    Many(Vec<Vec<Prediction>>),
}

#[derive(Debug, Serialize)]
struct ClassifyBody {
    model: String,
    predictions: PredictionLists,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_met: Option<bool>,
    timings_ms: Timings,
}

async fn classify(
    State(service): State<Arc<Service>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    // Admission first: a refused request costs no body read.
    let admission = match service.admit(PROTOCOL) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let parsed = within(
        service.config().request_timeout,
        parse_classify(&service, query.as_deref(), request),
    )
    .await;
    let (request, several) = match parsed {
        Ok(p) => p,
        Err(e) => {
            service.record_outcome(NO_VARIANT, PROTOCOL, Err(&e));
            return e.into_response();
        }
    };
    match service.classify(admission, request, PROTOCOL).await {
        Ok(answer) => classify_response(answer, several),
        Err(e) => e.into_response(),
    }
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

/// The W3C `Server-Timing` header for the same timings.
pub(crate) fn server_timing(t: &Timings) -> String {
    t.stages()
        .iter()
        .map(|(name, ms)| format!("{name};dur={ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the query and the body. Returns the request and whether it was a multi-image form
/// (several images, `images` in JSON, or several multipart files), which answers with one
/// prediction list per image.
async fn parse_classify(
    service: &Service,
    query: Option<&str>,
    request: Request,
) -> Result<(ClassifyRequest, bool), Error> {
    let query = ClassifyQuery::parse(query)?;
    let selection = query.selection()?;
    let limit = service.config().decode_limits.max_bytes;
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

#[derive(Debug, Serialize)]
struct ModelList {
    models: Vec<ModelInfo>,
}

async fn list_models(State(service): State<Arc<Service>>) -> Json<ModelList> {
    Json(ModelList {
        models: service.models(),
    })
}

async fn get_model(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> Result<Json<ModelInfo>, Error> {
    service.model(&name).map(Json)
}

#[derive(Debug, Serialize)]
struct Status {
    status: &'static str,
}

async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

async fn readyz(State(service): State<Arc<Service>>) -> Result<Json<Status>, Error> {
    if service.is_draining() {
        Err(Error::Unavailable("draining".into()))
    } else if service.is_ready() {
        Ok(Json(Status { status: "ready" }))
    } else {
        Err(Error::Unavailable("warming up".into()))
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        service.metrics().render(),
    )
        .into_response()
}

/// Unknown routes; under `/v2` in the Open Inference Protocol's error format.
async fn not_found(uri: Uri) -> Response {
    if super::oip_http::is_oip_path(uri.path()) {
        return super::oip_http::error(Error::NotFound(
            "no such route of the Open Inference Protocol".into(),
        ));
    }
    Error::NotFound(
        "no such route; see / (the web page), /v1/models, /classify, /v2 (Open Inference \
         Protocol), /healthz, /readyz, /metrics"
            .into(),
    )
    .into_response()
}

async fn method_not_allowed(uri: Uri) -> Response {
    let e = Error::MethodNotAllowed("this route does not take that method".into());
    if super::oip_http::is_oip_path(uri.path()) {
        super::oip_http::error(e)
    } else {
        e.into_response()
    }
}
