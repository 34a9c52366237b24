//! The gRPC server (tonic): our `mobilenet.v1.Classifier` ([`classifier`]) and the Open
//! Inference Protocol's `inference.GRPCInferenceService` ([`oip`]) side by side, with
//! `grpc.health.v1.Health` following readiness, server reflection, the API key where required,
//! and request ids. The bindings share [`deadline`] and `api::errors`, not each other; the
//! inference binding decodes within a [`budget`].

pub mod budget;
pub mod classifier;
pub mod deadline;
pub mod oip;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;

pub use self::classifier::{pb, SERVICE_NAME};
use self::classifier::{ClassifierApi, ClassifierServer};
use crate::api::auth::{Access, Auth};
use crate::api::h2_heads::{HeadDeadline, HEAD_DEADLINE};
use crate::api::request_id::GrpcRequestIds;
use crate::error::{Error, Result};
use crate::serving::Service;

/// Serves gRPC on `listener` until `stopping` turns true, then lets the calls in flight finish
/// and ends open streams. Health follows the service's readiness: NOT_SERVING while warming up
/// and once draining.
pub async fn serve(
    service: Arc<Service>,
    auth: Auth,
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
            for name in ["", classifier::SERVICE_NAME, oip::SERVICE_NAME] {
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
    let classifier = ClassifierServer::new(ClassifierApi::new(service.clone(), stopping.clone()))
        // The images of one message may use the whole body limit, as over HTTP.
        .max_decoding_message_size(body_limit.saturating_add(64 << 10));
    let inference = oip::GrpcInferenceServiceServer::new(oip::InferenceApi::new(service.clone()))
        .max_decoding_message_size(body_limit.saturating_add(64 << 10));
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
    tracing::info!(%addr, "gRPC listening");
    tonic::transport::Server::builder()
        .layer(GrpcRequestIds)
        // HTTP/2 connections live long: without an age limit, pods added by an autoscaler
        // would get no traffic from clients already connected. Calls in flight get a grace.
        .max_connection_age(Duration::from_secs(300))
        .max_connection_age_grace(Duration::from_secs(30))
        // gRPC clients send a handful of small metadata entries: a header list over the HTTP
        // port's limit (api::head) is refused by h2 (hyper's default, said here so that it
        // stays).
        .http2_max_header_list_size(crate::api::head::MAX_HEAD_BYTES as u32)
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
            // h2 has no deadline on request heads of its own (api::h2_heads).
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(|tcp| tcp.map(|tcp| HeadDeadline::new(tcp, HEAD_DEADLINE))),
            async move { classifier::drained(&mut stopping).await },
        )
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}
