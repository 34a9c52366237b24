//! Our gRPC service, `mobilenet.v1.Classifier`: classify (one message or a stream), list and
//! describe the models, over the same [`Service`] as HTTP.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::deadline::{grpc_timeout, request_timeout};
use crate::api::errors::status;
use crate::api::request_id;
use crate::error::Result;
use crate::serving::router::SelectionParams;
use crate::serving::{ClassifyRequest, ClassifyResponse, ModelInfo, Service};

/// The code generated from `proto/mobilenet.proto`, and its descriptors for reflection.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("mobilenet.v1");

    /// The encoded file descriptor set of `proto/` (both services), for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("mobilenet_descriptor");
}

use pb::classifier_server::Classifier;
pub use pb::classifier_server::ClassifierServer;

/// Protocol label of gRPC requests in the metrics.
const PROTOCOL: &str = "grpc";
/// The fully qualified name health checks ask about.
pub const SERVICE_NAME: &str = "mobilenet.v1.Classifier";
/// Predictions per image when the request says 0.
const DEFAULT_TOP_K: usize = 5;

/// Translates a protobuf request; `deadline` is the client's grpc-timeout, if any, and
/// `longest` the server's largest request timeout.
fn to_request(
    msg: pb::ClassifyRequest,
    deadline: Option<Duration>,
    longest: Duration,
) -> Result<ClassifyRequest> {
    let asked = match msg.timeout_ms {
        0 => None,
        ms => Some(Duration::from_millis(u64::from(ms))),
    };
    let timeout = request_timeout(asked, deadline, longest)?;
    let selection = SelectionParams {
        model: msg.model,
        alpha: msg.alpha,
        resolution: msg.resolution.map(|r| r as usize),
        max_latency_ms: msg.max_latency_ms,
        min_top1: msg.min_top1,
        fallback_fastest: msg.fallback_fastest,
        precision: msg.precision.as_deref().map(str::parse).transpose()?,
    }
    .selection()?;
    Ok(ClassifyRequest {
        images: msg.images.into_iter().map(Bytes::from).collect(),
        selection,
        top_k: match msg.top_k {
            0 => DEFAULT_TOP_K,
            k => k as usize,
        },
        timeout,
        resize: msg.resize.as_deref().map(str::parse).transpose()?,
    })
}

fn to_response(answer: ClassifyResponse) -> pb::ClassifyResponse {
    let t = answer.timings;
    pb::ClassifyResponse {
        model: answer.model,
        images: answer
            .predictions
            .into_iter()
            .map(|list| pb::ImagePredictions {
                predictions: list
                    .into_iter()
                    .map(|p| pb::Prediction {
                        index: p.index as u32,
                        label: p.label,
                        score: p.score,
                    })
                    .collect(),
            })
            .collect(),
        target_met: answer.target_met,
        timings_ms: Some(pb::Timings {
            decode: t.decode,
            preprocess: t.preprocess,
            queue: t.queue,
            inference: t.inference,
            postprocess: t.postprocess,
            total: t.total,
        }),
    }
}

fn to_model_info(m: ModelInfo) -> pb::ModelInfo {
    pb::ModelInfo {
        name: m.name,
        alpha: m.alpha,
        resolution: m.resolution as u32,
        num_classes: m.num_classes as u32,
        params: m.params,
        mult_adds: m.mult_adds,
        weights: m.weights,
        top1: m.accuracy.top1,
        top5: m.accuracy.top5,
        accuracy_source: m.accuracy.source.to_string(),
        latency_p50_ms: m.latency_ms.p50,
        latency_p95_ms: m.latency_ms.p95,
        latency_samples: m.latency_ms.samples as u64,
        predicted_latency_ms: m.latency_ms.predicted,
        queue_depth: m.queue_depth as u64,
        dominated: m.dominated,
        default: m.default,
        precision: m.precision.to_string(),
    }
}

/// Admits, translates and classifies one request; the admission counts its outcome.
async fn classify_one(
    service: &Service,
    msg: pb::ClassifyRequest,
    deadline: Option<Duration>,
) -> Result<pb::ClassifyResponse, Status> {
    let mut admission = service.admit(PROTOCOL).map_err(status)?;
    let longest = service.config().max_request_timeout;
    let request = admission
        .check(to_request(msg, deadline, longest))
        .map_err(status)?;
    service
        .classify(admission, request)
        .await
        .map(to_response)
        .map_err(status)
}

/// The `mobilenet.v1.Classifier` implementation.
#[derive(Debug, Clone)]
pub struct ClassifierApi {
    service: Arc<Service>,
    /// Becomes true when the server drains: open streams end, so shutdown need not wait for
    /// clients to close them.
    stopping: watch::Receiver<bool>,
}

impl ClassifierApi {
    /// The service over `service`; its streams end when `stopping` turns true.
    pub fn new(service: Arc<Service>, stopping: watch::Receiver<bool>) -> Self {
        ClassifierApi { service, stopping }
    }
}

/// Responses of `ClassifyStream`.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ClassifyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Classifier for ClassifierApi {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        classify_one(&self.service, request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    type ClassifyStreamStream = ResponseStream;

    async fn classify_stream(
        &self,
        request: Request<Streaming<pb::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        let service = self.service.clone();
        let mut stopping = self.stopping.clone();
        let mut inbound = request.into_inner();
        // Bounded: a client that stops reading stops the stream's progress, not our memory.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The stream's messages are served on their own task: it keeps the call's id and span,
        // so that their logs and errors name the call.
        let id = request_id::current().unwrap_or_else(request_id::generate);
        let span = tracing::Span::current();
        let serve_messages = async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = drained(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("the server is draining"))).await;
                        break;
                    }
                };
                let msg = match next {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                // A stream has no per-message grpc-timeout: each message gets its timeout_ms
                // or the server's default. A client that goes away cancels the work in flight.
                let answer = tokio::select! {
                    answer = classify_one(&service, msg, None) => answer,
                    _ = tx.closed() => break,
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        };
        tokio::spawn(request_id::scope(id, serve_messages).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Ok(Response::new(pb::ListModelsResponse {
            models: self
                .service
                .models()
                .into_iter()
                .map(to_model_info)
                .collect(),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.service
            .model(&request.into_inner().name)
            .map(|m| Response::new(to_model_info(m)))
            .map_err(status)
    }
}

/// Resolves once `stopping` is true (or its sender is gone).
pub async fn drained(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, never held across another await.
    let _ = stopping.wait_for(|s| *s).await.map(|_| ());
}
