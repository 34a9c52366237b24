//! mobilenet-serve: MobileNet v1 image classification on CPUs with our own engine.
//!
//! Module map (data flows top to bottom):
//! - [`pipeline`]: image bytes -> RGB8 ([`pipeline::decode`]) -> normalised NHWC tensor
//!   ([`pipeline::preprocess`]); outputs -> softmax and top-k ([`pipeline::postprocess`]).
//! - [`engine`]: ONNX import into our own [`engine::plan::Plan`], the [`engine::model::Model`]
//!   that runs it, the [`engine::pool::ModelPool`] of variants and the tract reference.
//! - [`kernels`]: the compute kernels behind a dispatch table chosen once at start.
//! - [`verify`], [`eval`], [`bench`], [`classify`]: the cross-check, accuracy, speed and
//!   classification commands; [`chart`], [`npy`] their outputs, [`progress`] their bars.
//! - Serving: [`api`] (HTTP and gRPC, our API and the Open Inference Protocol of [`oip`]) hands
//!   requests to the [`service`], which admits them, picks the
//!   variant ([`router`]), decodes on the blocking pool, queues images in the [`batcher`] and
//!   awaits the engine threads ([`engine::worker`]); [`latency`] keeps what the router predicts
//!   from, [`metrics`] what Prometheus scrapes; [`serve`] and [`shutdown`] run and drain it.
//! - [`config`], [`telemetry`], [`error`]: command line, logging, the one error type;
//!   [`fuzzing`] the bodies of the fuzz targets;
//!   [`client`] the HTTP client of
//!   `healthcheck` and `classify --url`.

// No panic reachable from input: outside tests, fallible steps are handled, not unwrapped.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod batcher;
pub mod bench;
pub mod chart;
pub mod classify;
pub mod client;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod eval;
pub mod fuzzing;
pub mod kernels;
pub mod latency;
pub mod metrics;
pub mod npy;
pub mod oip;
pub mod pipeline;
pub mod progress;
pub mod router;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod verify;

pub use api::http::app;
pub use error::{Error, Result};
