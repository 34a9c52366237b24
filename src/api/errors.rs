//! The one mapping from [`Error`] to what clients see: HTTP statuses and the two HTTP error bodies
//! (ours, and the Open Inference Protocol's under `/v2`), and gRPC statuses. Both come from the
//! error's [`ErrorClass`]. A fault of ours (a 500 or `INTERNAL`) is logged with its details and
//! answered with a generic message and the request id: paths and internals stay in the log.

use std::time::Duration;

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use utoipa::ToSchema;

use super::request_id;
use crate::error::{Error, ErrorClass};

/// `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "bad_request",
    "message": "bad request: top_k must be between 1 and 1000, got 0"}}))]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorDetail {
    /// Stable machine-readable code: bad_request, unauthorized, undecodable_image,
    /// unknown_model, model_unavailable, not_found,
    /// method_not_allowed, request_timeout, too_large, unsupported_media_type,
    /// unsupported_image_format, target_unreachable, queue_full, overloaded, unavailable,
    /// deadline_exceeded or internal.
    #[schema(value_type = String)]
    code: &'static str,
    /// For people: what was wrong and, where it helps, how to fix it.
    message: String,
}

/// The Open Inference Protocol's error body.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "bad request: invalid inference request JSON: EOF while parsing"}))]
pub struct OipErrorBody {
    /// What was wrong.
    error: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind().code,
                message: client_message(&self),
            },
        };
        respond(&self, body)
    }
}

/// The response to `e` in the Open Inference Protocol's format: `{"error": "<message>"}`.
pub fn oip_error(e: Error) -> Response {
    let body = OipErrorBody {
        error: client_message(&e),
    };
    respond(&e, body)
}

/// Whether `path` belongs to the Open Inference Protocol (whose errors have its own format).
pub fn is_oip_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The response to `e` for a request of `path`, in the error format of its protocol.
pub fn for_path(path: &str, e: Error) -> Response {
    if is_oip_path(path) {
        oip_error(e)
    } else {
        e.into_response()
    }
}

/// The HTTP status of an error class.
pub fn http_status(class: ErrorClass) -> StatusCode {
    StatusCode::from_u16(class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The gRPC code of an error class.
pub fn grpc_code(class: ErrorClass) -> Code {
    match class {
        ErrorClass::BadRequest
        | ErrorClass::TooLarge
        | ErrorClass::HeadersTooLarge
        | ErrorClass::UnsupportedMediaType => Code::InvalidArgument,
        ErrorClass::Unauthorized => Code::Unauthenticated,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::MethodNotAllowed => Code::Unimplemented,
        ErrorClass::Unprocessable => Code::FailedPrecondition,
        ErrorClass::TooManyRequests => Code::ResourceExhausted,
        ErrorClass::Unavailable => Code::Unavailable,
        ErrorClass::RequestTimeout | ErrorClass::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorClass::Internal => Code::Internal,
    }
}

/// The gRPC status of `error`; retryable refusals carry a `google.rpc.RetryInfo` detail and a
/// `retry-after` header, as HTTP's 429 and 503 do.
pub fn status(error: Error) -> Status {
    let kind = error.kind();
    log_fault(&error);
    let code = grpc_code(kind.class);
    let message = client_message(&error);
    let Some(seconds) = kind.retry_after_s else {
        return Status::new(code, message);
    };
    let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds)));
    let mut status = Status::with_error_details(code, message, details);
    status
        .metadata_mut()
        .insert("retry-after", MetadataValue::from(seconds));
    status
}

/// The response to `error` with `body`: the status of its class, `Retry-After` when retrying
/// can help, and a log line for faults of ours.
fn respond(error: &Error, body: impl Serialize) -> Response {
    let kind = error.kind();
    log_fault(error);
    let mut response = (http_status(kind.class), Json(body)).into_response();
    if let Some(s) = kind.retry_after_s {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(s));
    }
    response
}

fn log_fault(error: &Error) {
    if error.kind().class == ErrorClass::Internal {
        tracing::error!(error = %error, "request failed");
    }
}

/// What the client is told: the error itself, or for a fault of ours only that it happened and
/// the request id to find its details in the log by.
fn client_message(error: &Error) -> String {
    if error.kind().class != ErrorClass::Internal {
        return error.to_string();
    }
    match request_id::current() {
        Some(id) => format!("internal error: the server's log has the details (request id {id})"),
        None => "internal error: the server's log has the details".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn error_classes_map_to_grpc_codes() {
        let cases = [
            (Error::BadRequest("x".into()), Code::InvalidArgument),
            (Error::Undecodable("x".into()), Code::InvalidArgument),
            (Error::TooLarge("x".into()), Code::InvalidArgument),
            (
                Error::UnknownModel {
                    name: "x".into(),
                    known: "y".into(),
                },
                Code::NotFound,
            ),
            (
                Error::TargetUnreachable("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::DeadlineExceeded("x".into()), Code::DeadlineExceeded),
            (Error::RequestTimeout("x".into()), Code::DeadlineExceeded),
            (Error::Unauthorized("x".into()), Code::Unauthenticated),
            (Error::MethodNotAllowed("x".into()), Code::Unimplemented),
            (Error::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(status(error).code(), code);
        }
        let full = status(Error::QueueFull {
            variant: "v".into(),
            capacity: 1,
            retry_after_s: 2,
        });
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert_eq!(full.metadata().get("retry-after").unwrap(), "2");
        assert_eq!(
            full.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(2))
        );
    }

    #[tokio::test]
    async fn faults_of_ours_answer_without_their_details() {
        let secret = "/srv/models/secret.onnx";
        let fault = || Error::io(secret, std::io::Error::other("disk on fire"));
        let response = request_id::scope("abc123".into(), async { fault().into_response() }).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = body_text(response).await;
        assert!(!text.contains(secret) && !text.contains("fire"), "{text}");
        assert!(
            text.contains("abc123") && text.contains("\"internal\""),
            "{text}"
        );
        let text = body_text(oip_error(fault())).await;
        assert!(!text.contains(secret), "{text}");
        let grpc = status(fault());
        assert!(!grpc.message().contains(secret), "{}", grpc.message());
        // A client's own mistake keeps its explanation.
        let text =
            body_text(Error::BadRequest("top_k must be 1..1000".into()).into_response()).await;
        assert!(text.contains("top_k must be 1..1000"), "{text}");
    }
}
