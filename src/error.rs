//! The crate's error type: one enum, so that every front end (CLI now, HTTP and gRPC later) maps
//! the same kinds to its own status codes in one place.

use std::path::PathBuf;

/// Everything that can go wrong while loading models or classifying an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ONNX graph uses something the engine does not implement; names the node and op.
    #[error("unsupported ONNX graph: node `{node}` (op {op}): {reason}")]
    Unsupported {
        /// Name of the offending node (or its output when it has no name).
        node: String,
        /// Its ONNX operator type.
        op: String,
        /// Why it was refused.
        reason: String,
    },
    /// The ONNX file is not a well-formed model (bad protobuf, missing tensors, wrong shapes).
    #[error("malformed ONNX model: {0}")]
    MalformedModel(String),
    /// The models directory or its manifest is unusable.
    #[error("model catalogue: {0}")]
    Catalog(String),
    /// A variant name that is not loaded.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Comma-separated list of valid names.
        known: String,
    },
    /// An input tensor whose shape does not fit the model.
    #[error("bad input shape: {0}")]
    BadInput(String),
    /// The bytes are not an image we can decode.
    #[error("cannot decode image: {0}")]
    Undecodable(String),
    /// The image format is recognised but not supported.
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    /// The encoded image or its decoded size exceeds the configured limits.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The reference runtime (tract) failed.
    #[error("reference runtime: {0}")]
    Reference(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
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

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
