//! TFLite model -> [`Plan`] (float32 files) or [`QuantPlan`] (uint8 quantized files): Google's
//! MobileNet v1 releases as published, read without TensorFlow.
//!
//! The accepted graph is the one those files hold, in NHWC: a chain of `CONV_2D` and
//! `DEPTHWISE_CONV_2D` (SAME or VALID padding, fused ReLU/ReLU6), one `AVERAGE_POOL_2D` over the
//! whole map, a 1x1 `CONV_2D` classifier, `RESHAPE` or `SQUEEZE` to `[1, classes]`, and an
//! optional final `SOFTMAX`. Any other operator is refused at load, by name.
//!
//! A float file keeps its softmax (the plan's outputs are probabilities). A quantized file's
//! uint8 softmax is left out: it only re-renders the classifier's logits in steps of 1/256, so
//! the plan ends at the uint8 logits, dequantized, and the service's own softmax gives the
//! probabilities (the top-k order is the logits' order, without the ties the 1/256 steps make).
//!
//! [`walk`] checks the chain and each tensor's shape against the engine's geometry; [`float`]
//! and [`quantized`] turn its steps into layers.

mod flatbuffer;
mod float;
mod quantized;
mod schema;
mod walk;

pub use schema::{is_tflite, squeeze_axes_for_tract};

use self::schema::{ElementType, Model};
use self::walk::{refused, walk};
use super::imported::Imported;
use crate::error::Result;

/// Imports a TFLite model from its bytes.
pub fn import_tflite(bytes: &[u8]) -> Result<Imported> {
    let model = Model::parse(bytes)?;
    let steps = walk(&model)?;
    let input = model.tensor(steps.input)?;
    match input.element {
        ElementType::F32 => float::lower(&model, &steps).map(Imported::Float),
        ElementType::U8 => quantized::lower(&model, &steps).map(Imported::Quantized),
        other => Err(refused(
            &input.name,
            "input",
            format!("a {other:?} input: only float32 and uint8 models are supported"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn not_a_tflite_file_is_malformed() {
        assert!(matches!(
            import_tflite(b"\x08\0\0\0ONNXgarbage"),
            Err(Error::MalformedModel(_))
        ));
        assert!(!is_tflite(b"abc"));
    }
}
