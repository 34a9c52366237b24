//! The crate's error type: one enum, and the one classification of its variants for clients
//! ([`ErrorKind`]: an [`ErrorClass`], a status, a stable code and a retry delay) from which every
//! front end (HTTP, gRPC, the CLI) derives its own statuses.

use std::path::PathBuf;

/// Everything that can go wrong while loading models or classifying an image, grouped by when
/// it happens (the groups map to client statuses in [`Error::kind`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Loading models and configuration: the service does not start, or a variant is not served.
    /// The model graph (ONNX or TFLite) uses something the engine does not implement; names the
    /// node (a TFLite operator by its output tensor) and op.
    #[error("unsupported model graph: node `{node}` (op {op}): {reason}")]
    Unsupported {
        /// Name of the offending node (or its output when it has no name).
        node: String,
        /// Its ONNX operator type.
        op: String,
        /// Why it was refused.
        reason: String,
    },
    /// The model file is not well formed (bad protobuf or flatbuffer, missing tensors, wrong
    /// shapes).
    #[error("malformed model: {0}")]
    MalformedModel(String),
    /// The models directory or its manifest is unusable.
    #[error("model catalogue: {0}")]
    Catalog(String),
    /// The reference runtime (tract) failed.
    #[error("reference runtime: {0}")]
    Reference(String),
    /// The service was configured inconsistently.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    // A request's content.
    /// A request that is malformed or asks for something contradictory (bad query, bad JSON).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An input tensor whose shape or values do not fit the model, or malformed tensor data.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The bytes are not an image we can decode.
    #[error("cannot decode image: {0}")]
    Undecodable(String),
    /// The image format is recognised but not supported.
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    /// The request body's media type is not one we accept.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The encoded image or its decoded size exceeds the configured limits.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The request's head (request line and headers) is over the limit.
    #[error("request head too large: {0}")]
    HeadersTooLarge(String),
    /// A variant name that is not loaded.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Comma-separated list of valid names.
        known: String,
    },
    /// A variant of the catalogue that failed to load (missing, corrupt or tampered file) or
    /// was unloaded.
    #[error("model `{name}` is not served: {reason}")]
    ModelUnavailable {
        /// The name asked for.
        name: String,
        /// Why: "it failed to load: ..." or "it was unloaded".
        reason: String,
    },
    /// A valid latency/accuracy target that no loaded variant is predicted to meet.
    #[error("no variant meets the target: {0}")]
    TargetUnreachable(String),

    // Routing and transport.
    /// No such route.
    #[error("not found: {0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// The request lacks the API key, or carries a wrong one.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The client took too long to send its request body.
    #[error("request timeout: {0}")]
    RequestTimeout(String),

    // Capacity and time: retrying later may help.
    /// A variant's queue is full: try again later.
    #[error("the queue of `{variant}` is full ({capacity} images); retry later")]
    QueueFull {
        /// The variant whose queue is full.
        variant: String,
        /// Its bound, in images.
        capacity: usize,
        /// Suggested wait before retrying, in seconds.
        retry_after_s: u64,
    },
    /// Too many requests are in flight in the whole process.
    #[error("too many requests in flight (limit {limit}); retry later")]
    Overloaded {
        /// The in-flight limit.
        limit: usize,
        /// Suggested wait before retrying, in seconds.
        retry_after_s: u64,
    },
    /// The service is shutting down or not ready yet.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The request's deadline passed before it was answered.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    // A fault of ours while serving.
    /// A fault of ours, not the client's (an engine thread stopped, a model failed).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// What a client is told an error was. Each protocol maps a class to its own status in one
/// place (`api::errors`); the HTTP status of each class is also the `code` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or its content cannot be used.
    BadRequest,
    /// The API key is missing or wrong.
    Unauthorized,
    /// No such model or route.
    NotFound,
    /// The route does not take that method.
    MethodNotAllowed,
    /// The body arrived too slowly.
    RequestTimeout,
    /// Over a size limit.
    TooLarge,
    /// The request's headers are over their size limit.
    HeadersTooLarge,
    /// A media type or image format we do not take.
    UnsupportedMediaType,
    /// Valid, but no variant can serve it.
    Unprocessable,
    /// Overloaded: retry later.
    TooManyRequests,
    /// Warming up or draining: retry later.
    Unavailable,
    /// The request's deadline passed.
    DeadlineExceeded,
    /// A fault of ours, not the client's.
    Internal,
}

impl ErrorClass {
    /// The HTTP status of the class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::BadRequest => 400,
            ErrorClass::Unauthorized => 401,
            ErrorClass::NotFound => 404,
            ErrorClass::MethodNotAllowed => 405,
            ErrorClass::RequestTimeout => 408,
            ErrorClass::TooLarge => 413,
            ErrorClass::HeadersTooLarge => 431,
            ErrorClass::UnsupportedMediaType => 415,
            ErrorClass::Unprocessable => 422,
            ErrorClass::TooManyRequests => 429,
            ErrorClass::Unavailable => 503,
            ErrorClass::DeadlineExceeded => 504,
            ErrorClass::Internal => 500,
        }
    }
}

/// The wait suggested to a client refused for overload or while draining (`Retry-After`, gRPC's
/// `RetryInfo`), in seconds: long enough for a batch or two to drain, short next to a deadline.
pub const RETRY_AFTER_S: u64 = 1;

/// How an error is reported to a client: its class, its HTTP status, a stable machine-readable
/// code, and a suggested retry delay when retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind {
    /// What the client is told the error was.
    pub class: ErrorClass,
    /// HTTP status code (of `class`).
    pub status: u16,
    /// Stable identifier for clients (`error.code` in JSON bodies).
    pub code: &'static str,
    /// Seconds to wait before retrying (`Retry-After`), when retrying can help.
    pub retry_after_s: Option<u64>,
}

impl Error {
    /// The one classification of errors for clients; every protocol maps from it.
    pub fn kind(&self) -> ErrorKind {
        use ErrorClass as C;
        let (class, code, retry_after_s) = match self {
            Error::BadRequest(_) | Error::BadInput(_) => (C::BadRequest, "bad_request", None),
            Error::Undecodable(_) => (C::BadRequest, "undecodable_image", None),
            Error::UnknownModel { .. } => (C::NotFound, "unknown_model", None),
            Error::ModelUnavailable { .. } => (C::NotFound, "model_unavailable", None),
            Error::NotFound(_) => (C::NotFound, "not_found", None),
            Error::MethodNotAllowed(_) => (C::MethodNotAllowed, "method_not_allowed", None),
            Error::RequestTimeout(_) => (C::RequestTimeout, "request_timeout", None),
            Error::TooLarge(_) => (C::TooLarge, "too_large", None),
            Error::HeadersTooLarge(_) => (C::HeadersTooLarge, "headers_too_large", None),
            Error::UnsupportedMediaType(_) => {
                (C::UnsupportedMediaType, "unsupported_media_type", None)
            }
            Error::UnsupportedFormat(_) => {
                (C::UnsupportedMediaType, "unsupported_image_format", None)
            }
            Error::TargetUnreachable(_) => (C::Unprocessable, "target_unreachable", None),
            Error::QueueFull { retry_after_s, .. } => {
                (C::TooManyRequests, "queue_full", Some(*retry_after_s))
            }
            Error::Overloaded { retry_after_s, .. } => {
                (C::TooManyRequests, "overloaded", Some(*retry_after_s))
            }
            Error::Unauthorized(_) => (C::Unauthorized, "unauthorized", None),
            Error::Unavailable(_) => (C::Unavailable, "unavailable", Some(RETRY_AFTER_S)),
            Error::DeadlineExceeded(_) => (C::DeadlineExceeded, "deadline_exceeded", None),
            Error::Unsupported { .. }
            | Error::MalformedModel(_)
            | Error::Catalog(_)
            | Error::Reference(_)
            | Error::Config(_)
            | Error::Internal(_)
            | Error::Io { .. } => (C::Internal, "internal", None),
        };
        ErrorKind {
            class,
            status: class.http_status(),
            code,
            retry_after_s,
        }
    }
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
