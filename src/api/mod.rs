//! Protocol front ends over the [`crate::serving::Service`]: HTTP (axum) and gRPC (tonic), each
//! with our own API and the Open Inference Protocol.

pub mod auth;
pub mod grpc;
pub mod http;
pub mod openapi;
pub mod request_id;
pub mod web;
