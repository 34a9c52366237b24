//! mobilenet-serve: MobileNet v1 image classification on CPUs with our own engine.
//!
//! Module map (data flows top to bottom):
//! - [`pipeline`]: image bytes -> RGB8 ([`pipeline::decode`]) -> normalised NHWC tensor
//!   ([`pipeline::preprocess`]); outputs -> softmax and top-k ([`pipeline::postprocess`]).
//! - [`engine`]: ONNX import into our own [`engine::plan::Plan`], the [`engine::model::Model`]
//!   that runs it, the [`engine::pool::ModelPool`] of variants and the tract reference.
//! - [`kernels`]: the compute kernels behind a dispatch table chosen once at start.
//! - [`verify`], [`eval`], [`bench`]: the cross-check, accuracy and speed commands; [`chart`],
//!   [`npy`] their outputs.
//! - [`config`], [`telemetry`], [`error`]: command line, logging, the one error type.

pub mod bench;
pub mod chart;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod eval;
pub mod kernels;
pub mod npy;
pub mod pipeline;
pub mod telemetry;
pub mod verify;

pub use error::{Error, Result};
