//! The same TFLite file run by tract-tflite: the independent reference for the TFLite importer,
//! as tract-onnx is for ONNX files.
//!
//! A uint8 file is read at the tensor our engine stops at, the classifier's uint8 logits, and
//! both sides are compared dequantized; a float file at its output. Its input gets the pixels
//! our preprocessing produced, quantized with the file's own input parameters.

use tract_tflite::prelude::*;

use crate::engine::import::squeeze_axes_for_tract;
use crate::error::{Error, Result};
use crate::kernels::int8::requant::quantize;

fn tract_err(e: impl std::fmt::Display) -> Error {
    Error::Reference(format!("tract-tflite: {e:#}"))
}

/// A tract-tflite model of one file, fed one image at a time.
pub struct TfliteReference {
    plan: Arc<TypedRunnableModel>,
    input: DatumType,
    shape: [usize; 4],
}

impl std::fmt::Debug for TfliteReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TfliteReference({:?}, {:?})", self.shape, self.input)
    }
}

impl TfliteReference {
    /// Builds the reference for the TFLite file `bytes`, its output read at the tensor called
    /// `output` (the graph's own output when `None`).
    pub fn new(bytes: &[u8], output: Option<&str>) -> Result<Self> {
        let bytes = squeeze_axes_for_tract(bytes)?;
        let mut model = tract_tflite::tflite()
            .model_for_read(&mut &bytes[..])
            .map_err(tract_err)?;
        if let Some(name) = output {
            model.select_outputs_by_name([name]).map_err(tract_err)?;
        }
        let fact = model.input_fact(0).map_err(tract_err)?.clone();
        let dims: Vec<usize> = fact
            .shape
            .as_concrete()
            .map(|d| d.to_vec())
            .unwrap_or_default();
        let [1, h, w, c] = dims[..] else {
            return Err(Error::Reference(format!(
                "tract-tflite: input shape {:?}, where [1, h, w, c] is needed",
                fact.shape
            )));
        };
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(tract_err)?;
        Ok(TfliteReference {
            plan,
            input: fact.datum_type,
            shape: [1, h, w, c],
        })
    }

    /// Runs one NHWC image (our preprocessed floats) and returns the output row as real values.
    pub fn run_nhwc(&self, image: &[f32]) -> Result<Vec<f32>> {
        let len: usize = self.shape.iter().product();
        if image.len() != len {
            return Err(Error::BadInput(format!(
                "expected {len} values, got {}",
                image.len()
            )));
        }
        let tensor = if self.input.is_quantized() {
            let (zero, scale) = self.input.zp_scale();
            let zero = u8::try_from(zero).map_err(tract_err)?;
            let stored: Vec<u8> = image.iter().map(|&x| quantize(x, scale, zero)).collect();
            let mut t = Tensor::from_shape(&self.shape, &stored).map_err(tract_err)?;
            // The same bytes, read with the file's quantization.
            unsafe { t.set_datum_type(self.input) };
            t
        } else {
            Tensor::from_shape(&self.shape, image).map_err(tract_err)?
        };
        let out = self.plan.run(tvec!(tensor.into())).map_err(tract_err)?;
        let out = out[0].clone().into_tensor();
        let dt = out.datum_type();
        if dt.is_quantized() {
            let (zero, scale) = dt.zp_scale();
            let mut raw = out;
            // Read back as the plain bytes they are, then dequantized.
            unsafe { raw.set_datum_type(u8::datum_type()) };
            let stored = raw.to_plain_array_view::<u8>().map_err(tract_err)?;
            Ok(stored
                .iter()
                .map(|&q| (i32::from(q) - zero) as f32 * scale)
                .collect())
        } else {
            let view = out.to_plain_array_view::<f32>().map_err(tract_err)?;
            Ok(view.iter().copied().collect())
        }
    }
}
