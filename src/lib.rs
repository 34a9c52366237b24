//! mobilenet-serve: MobileNet v1 image classification on CPUs with our own engine.
//!
//! Layers, highest first; each names only the layers below it (`tests/integration/layers.rs`
//! checks this, and that no two modules import each other):
//! - [`commands`] the binary's subcommands (serve, bench, eval, verify, classify, ...) and
//!   [`fuzzing`] the bodies of the fuzz targets;
//! - [`api`] the transports: HTTP and gRPC, our API and the Open Inference Protocol's bindings;
//! - [`oip`] the Open Inference Protocol without transport;
//! - [`serving`] the request path without a wire: the [`serving::Service`] façade, admission,
//!   routing, batching, the engine threads, latency, metrics;
//! - [`engine`] models and how to run them: ONNX import, plan, model, pool, the tract reference;
//! - [`pipeline`] image bytes to model input, outputs to predictions (pure functions);
//! - [`kernels`] the compute kernels behind a dispatch chosen once at start;
//! - [`error`] and [`telemetry`] below everything.

// No panic reachable from input: outside tests, fallible steps are handled, not unwrapped.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod commands;
pub mod engine;
pub mod error;
pub mod fuzzing;
pub mod kernels;
pub mod oip;
pub mod pipeline;
pub mod serving;
pub mod telemetry;

pub use api::http::app;
pub use error::{Error, Result};
