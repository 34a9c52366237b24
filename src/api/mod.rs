//! The transports: HTTP ([`http`], axum) and gRPC ([`grpc`], tonic), each with our own API and
//! the Open Inference Protocol's binding side by side; [`errors`] maps every error to both
//! protocols' statuses, [`auth`] asks for the API key. Uses `oip`, `serving` and below.

pub mod auth;
pub mod errors;
pub mod grpc;
pub mod h2_heads;
pub mod head;
pub mod http;
pub mod openapi;
pub mod request_id;
pub mod web;
