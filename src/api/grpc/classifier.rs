//! The gRPC API (tonic): our `mobilenet.v1.Classifier` service, `grpc.health.v1.Health`
//! following readiness, and server reflection, all over the same [`Service`] as HTTP; the
//! Open Inference Protocol's service ([`oip`]) shares the server.

pub mod oip;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::auth::Access;
use crate::error::{Error, Result};
use crate::serving::metrics::NO_VARIANT;
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

use pb::classifier_server::{Classifier, ClassifierServer};

/// Protocol label of gRPC requests in the metrics.
const PROTOCOL: &str = "grpc";
/// The fully qualified name health checks ask about.
pub const SERVICE_NAME: &str = "mobilenet.v1.Classifier";
/// Predictions per image when the request says 0.
const DEFAULT_TOP_K: usize = 5;

/// The one mapping from our error kinds to gRPC status codes; retryable refusals carry a
/// `google.rpc.RetryInfo` detail and a `retry-after` header, as HTTP's 429 and 503 do.
pub fn status(error: Error) -> Status {
    let kind = error.kind();
    let code = match kind.status {
        400 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        404 => Code::NotFound,
        405 => Code::Unimplemented,
        422 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        408 | 504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    let message = error.to_string();
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

/// Our deadline for a client's `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`): a
/// little earlier than the client's, because tonic's own timeout answers CANCELLED at the
/// client's instant, and the client should learn DEADLINE_EXCEEDED from us first.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    let margin = (timeout / 10).min(Duration::from_millis(20));
    Some(timeout - margin)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

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
    })
}

/// A request's timeout: the sooner of the one its message asks for and the client's
/// grpc-timeout (`deadline`). A grpc-timeout beyond what the server allows (`longest`) is capped
/// rather than refused; one that ran out already is DEADLINE_EXCEEDED.
pub(crate) fn request_timeout(
    asked: Option<Duration>,
    deadline: Option<Duration>,
    longest: Duration,
) -> Result<Option<Duration>> {
    if deadline.is_some_and(|d| d.is_zero()) {
        return Err(Error::DeadlineExceeded(
            "the grpc-timeout had run out on arrival".into(),
        ));
    }
    Ok(match (asked, deadline) {
        (None, d) => d.map(|d| d.min(longest)),
        (Some(asked), d) => Some(d.map_or(asked, |d| d.min(asked))),
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
    }
}

/// Admits, translates and classifies one request, counting refusals like HTTP does.
async fn classify_one(
    service: &Service,
    msg: pb::ClassifyRequest,
    deadline: Option<Duration>,
) -> Result<pb::ClassifyResponse, Status> {
    let admission = service.admit(PROTOCOL).map_err(status)?;
    let request = match to_request(msg, deadline, service.config().max_request_timeout) {
        Ok(r) => r,
        Err(e) => {
            service.record_outcome(NO_VARIANT, PROTOCOL, Err(&e));
            return Err(status(e));
        }
    };
    service
        .classify(admission, request, PROTOCOL)
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
        tokio::spawn(async move {
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
        });
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
async fn drained(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, never held across another await.
    let _ = stopping.wait_for(|s| *s).await.map(|_| ());
}

/// Serves gRPC on `listener` until `stopping` turns true, then lets the calls in flight finish
/// and ends open streams. Health follows the service's readiness: NOT_SERVING while warming up
/// and once draining.
pub async fn serve(
    service: Arc<Service>,
    listener: TcpListener,
    mut stopping: watch::Receiver<bool>,
) -> Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut readiness = service.watch_readiness();
    let report = move |ready: bool| {
        let reporter = reporter.clone();
        async move {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            // "" is the whole server, as health-checking clients ask by default.
            for name in ["", SERVICE_NAME, oip::SERVICE_NAME] {
                reporter.set_service_status(name, status).await;
            }
        }
    };
    // The reporter starts as SERVING: correct it before the first connection is accepted.
    let ready = *readiness.borrow_and_update();
    report(ready).await;
    tokio::spawn(async move {
        while readiness.changed().await.is_ok() {
            // Copied out first: the borrow must not be held across the await.
            let ready = *readiness.borrow_and_update();
            report(ready).await;
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("gRPC reflection: {e}")))?;
    let body_limit = service.config().decode_limits.max_bytes;
    let classifier = ClassifierServer::new(ClassifierApi {
        service: service.clone(),
        stopping: stopping.clone(),
    })
    // The images of one message may use the whole body limit, as over HTTP.
    .max_decoding_message_size(body_limit.saturating_add(64 << 10));
    let inference = oip::GrpcInferenceServiceServer::new(oip::InferenceApi::new(service.clone()))
        .max_decoding_message_size(body_limit.saturating_add(64 << 10));
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
    tracing::info!(%addr, "gRPC listening");
    let auth = service.config().auth.clone();
    tonic::transport::Server::builder()
        .trace_fn(crate::api::request_id::grpc_span)
        // HTTP/2 connections live long: without an age limit, pods added by an autoscaler
        // would get no traffic from clients already connected. Calls in flight get a grace.
        .max_connection_age(Duration::from_secs(300))
        .max_connection_age_grace(Duration::from_secs(30))
        .add_service(InterceptedService::new(
            health,
            auth.interceptor(Access::Health),
        ))
        .add_service(reflection)
        .add_service(InterceptedService::new(
            classifier,
            auth.interceptor(Access::Protected),
        ))
        .add_service(InterceptedService::new(
            inference,
            auth.interceptor(Access::Protected),
        ))
        .serve_with_incoming_shutdown(
            // No Nagle delay on small replies (see the HTTP server).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move { drained(&mut stopping).await },
        )
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "10", "10x", "-1m", "123456789m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_kinds_map_to_grpc_codes() {
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
}
