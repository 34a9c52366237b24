//! The Open Inference Protocol's model repository extension over REST: `POST
//! /v2/repository/index`, `POST /v2/repository/models/{name}/load` and `.../unload`, with
//! Triton's body formats (each body optional). Errors are `{"error": "<message>"}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::errors::{oip_error, OipErrorBody};
use crate::error::{Error, Result};
use crate::oip::repository::{self, IndexModel};
use crate::serving::Service;

/// Largest repository request body: a few small JSON fields.
const MAX_BODY: usize = 16 << 10;

/// The repository routes with their OpenAPI descriptions.
pub fn routes() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(load))
        .routes(routes!(unload))
}

/// `POST /v2/repository/index`'s body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    /// The repository: omit it, or leave it empty (this server has one).
    #[serde(default)]
    repository_name: String,
    /// Only the models ready for inference.
    #[serde(default)]
    ready: bool,
}

/// The body of a load or unload request (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    /// Request parameters: only `unload_dependents` (of unload; there are no dependents).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// Every model of the repository and its state.
#[utoipa::path(post, path = "/v2/repository/index", tag = "open inference protocol",
    request_body(content = Option<IndexRequest>, content_type = "application/json",
        description = "Optional: `{\"ready\": true}` lists only the ready models"),
    responses(
        (status = 200, description = "The models, by name", body = Vec<IndexModel>),
        (status = 400, description = "Malformed body", body = OipErrorBody),
        (status = 404, description = "No such repository", body = OipErrorBody),
        (status = 413, description = "Body over 16 KiB", body = OipErrorBody),
    ))]
async fn index(State(service): State<Arc<Service>>, body: Bytes) -> Response {
    let answer = parse::<IndexRequest>(&body)
        .and_then(|r| repository::index(&service, &r.repository_name, r.ready));
    match answer {
        Ok(models) => Json(models).into_response(),
        Err(e) => oip_error(e),
    }
}

/// Loads or reloads a model from the models directory (`--model-control-mode explicit`). The
/// previous load answers until the new one is warmed up, and stays if it fails.
#[utoipa::path(post, path = "/v2/repository/models/{name}/load",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "Variant name",
        example = "mobilenet_v1_0.5_160")),
    request_body(content = Option<ChangeRequest>, content_type = "application/json",
        description = "Optional; no load parameter is supported"),
    responses(
        (status = 200, description = "Loaded (or already loaded with these bytes)"),
        (status = 400, description = "Not in explicit model control, a parameter, or its \
            load failed (the message says why; a previous \
            load keeps serving)", body = OipErrorBody),
        (status = 404, description = "No such model in the directory", body = OipErrorBody),
        (status = 413, description = "Body over 16 KiB", body = OipErrorBody),
    ))]
async fn load(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let answer = match parse::<ChangeRequest>(&body) {
        Ok(r) => {
            let parameters: Vec<String> = r.parameters.keys().cloned().collect();
            repository::load(&service, "", &name, &parameters).await
        }
        Err(e) => Err(e),
    };
    done(answer)
}

/// Unloads a model (`--model-control-mode explicit`): queued requests are answered, new ones
/// get 404.
#[utoipa::path(post, path = "/v2/repository/models/{name}/unload",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "Variant name",
        example = "mobilenet_v1_0.5_160")),
    request_body(content = Option<ChangeRequest>, content_type = "application/json",
        description = "Optional; `unload_dependents` is accepted (there are none)"),
    responses(
        (status = 200, description = "Unloaded (or was not loaded)"),
        (status = 400, description = "Not in explicit model control, or a parameter",
            body = OipErrorBody),
        (status = 404, description = "No such model", body = OipErrorBody),
        (status = 413, description = "Body over 16 KiB", body = OipErrorBody),
    ))]
async fn unload(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let answer = match parse::<ChangeRequest>(&body) {
        Ok(r) => {
            let parameters: Vec<String> = r
                .parameters
                .keys()
                .filter(|k| *k != "unload_dependents")
                .cloned()
                .collect();
            repository::unload(&service, "", &name, &parameters).await
        }
        Err(e) => Err(e),
    };
    done(answer)
}

/// An empty body means the defaults.
fn parse<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.len() > MAX_BODY {
        return Err(Error::TooLarge(format!(
            "a repository request body is at most {MAX_BODY} bytes"
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let malformed = |e: serde_json::Error| Error::BadRequest(format!("malformed body: {e}"));
    // serde would also fill a struct from a JSON array; the schema says object (or null).
    match serde_json::from_slice(body).map_err(malformed)? {
        serde_json::Value::Null => Ok(T::default()),
        object @ serde_json::Value::Object(_) => serde_json::from_value(object).map_err(malformed),
        _ => Err(Error::BadRequest(
            "malformed body: expected a JSON object".to_string(),
        )),
    }
}

fn done(answer: Result<()>) -> Response {
    match answer {
        Ok(()) => Json(serde_json::json!({})).into_response(),
        Err(e) => oip_error(e),
    }
}
