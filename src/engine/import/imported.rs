//! What an import gives: a float plan or an 8-bit one.

use crate::engine::plan::Plan;
use crate::engine::quant::plan::QuantPlan;

/// A graph as imported: float, or 8-bit quantized.
#[derive(Debug)]
pub enum Imported {
    /// A float graph.
    Float(Plan),
    /// A quantized graph (QDQ ONNX or uint8 TFLite).
    Quantized(QuantPlan),
}
