//! What a request carries into the service and what it gets back, whatever the protocol.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::router::Selection;
use crate::pipeline::decode::Resize;

/// Largest `top_k` a request may ask for.
pub const MAX_TOP_K: usize = 1000;

/// One classification request, as every protocol hands it over.
#[derive(Debug, Clone)]
pub struct ClassifyRequest {
    /// Encoded images (JPEG, PNG, WebP, BMP, GIF).
    pub images: Vec<Bytes>,
    /// Which variant should answer.
    pub selection: Selection,
    /// Predictions per image.
    pub top_k: usize,
    /// The client's deadline, from now (the configured default when `None`).
    pub timeout: Option<Duration>,
    /// How the images come down to the model's size (the server's `--resize` when `None`).
    pub resize: Option<Resize>,
}

/// Images in one of the two forms a request may carry.
#[derive(Debug, Clone)]
pub enum Images {
    /// Encoded images (JPEG, PNG, WebP, BMP, GIF), decoded and preprocessed by the service.
    Encoded {
        /// The encoded bytes, one entry per image.
        images: Vec<Bytes>,
        /// How they come down to the model's size.
        resize: Resize,
    },
    /// `count` images already preprocessed the way the ONNX model takes them: normalised, NCHW,
    /// at the variant's resolution, flattened in row-major order.
    Nchw {
        /// The elements, `count x channels x resolution x resolution`.
        data: Vec<f32>,
        /// Images in `data`.
        count: usize,
    },
}

impl Images {
    /// How many images.
    pub fn len(&self) -> usize {
        match self {
            Images::Encoded { images, .. } => images.len(),
            Images::Nchw { count, .. } => *count,
        }
    }

    /// No image at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request for one named variant's raw outputs (the Open Inference Protocol's inference).
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// The variant's load (see `Service::variant`): the request runs on it
    /// even if the variant is replaced meanwhile.
    pub model: std::sync::Arc<super::registry::Served>,
    /// Its inputs.
    pub images: Images,
    /// The client's deadline, from now (the configured default when `None`).
    pub timeout: Option<Duration>,
}

/// The model's outputs for an [`InferRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// The variant that answered.
    pub model: String,
    /// The model's output row of each image (logits, or probabilities when the graph ends with
    /// a softmax), in request order.
    pub outputs: Vec<Vec<f32>>,
    /// Where the time went (`postprocess` is left to the protocol).
    pub timings: Timings,
}

/// One predicted class.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"index": 207, "label": "golden retriever", "score": 0.91}))]
pub struct Prediction {
    /// ImageNet class index (0..999).
    #[schema(maximum = 999)]
    pub index: usize,
    /// Its human-readable name.
    pub label: String,
    /// Softmax probability.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub score: f32,
}

/// Where a request's time went, in milliseconds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Timings {
    /// Decoding every image.
    pub decode: f64,
    /// Resizing, cropping and normalising every image.
    pub preprocess: f64,
    /// Waiting for a batch (the longest of the request's images).
    pub queue: f64,
    /// The batch inference (the longest of the request's images).
    pub inference: f64,
    /// Softmax, top-k and labels.
    pub postprocess: f64,
    /// Everything, from admission to the answer.
    pub total: f64,
}

impl Timings {
    /// Each stage's name (the `stage` label in the metrics) and its milliseconds, in order.
    pub fn stages(&self) -> [(&'static str, f64); 6] {
        [
            ("decode", self.decode),
            ("preprocess", self.preprocess),
            ("queue", self.queue),
            ("inference", self.inference),
            ("postprocess", self.postprocess),
            ("total", self.total),
        ]
    }
}

/// The answer to a [`ClassifyRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyResponse {
    /// The variant that answered.
    pub model: String,
    /// The top-k predictions of each image, in request order.
    pub predictions: Vec<Vec<Prediction>>,
    /// Whether the latency/accuracy target was met, when one was given.
    pub target_met: Option<bool>,
    /// Where the time went.
    pub timings: Timings,
}

/// Milliseconds at microsecond resolution: more digits would be noise in the JSON.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
