//! Protocol front ends over the [`crate::service::Service`]: HTTP (axum) and gRPC (tonic).

pub mod grpc;
pub mod http;
