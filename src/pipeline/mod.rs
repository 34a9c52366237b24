//! Image bytes -> model input -> labelled predictions.

pub mod decode;
pub mod postprocess;
pub mod preprocess;
