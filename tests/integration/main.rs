//! The integration tests, in one binary: each module is one area of the service. One binary
//! builds in about a quarter of the CPU time that one per file took (README, Tests). Tests that
//! need the process to themselves stay apart: `tests/alloc.rs` (a counting global allocator) and
//! `tests/tracing.rs` (a global subscriber).

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod bad_input;
mod drain;
mod embedded;
mod fetch_zoo;
mod grpc;
mod http;
mod import;
mod int8_kernels;
mod integrity;
mod kernels;
mod layers;
mod oip;
mod openapi;
mod pipeline;
mod ptq;
mod quant;
mod repository;
mod tflite;
mod zoo;
