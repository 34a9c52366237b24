//! 8-bit quantized networks: their plan (imported from ONNX QDQ graphs by
//! `engine::import::qdq`) and how it runs on the integer kernels. Float images go in and float
//! logits come out, as for a float model: the input is quantized by the graph's own
//! `QuantizeLinear`, and the last layer's uint8 output is dequantized.

pub mod plan;

use self::plan::{QuantLayer, QuantPlan};
use super::model::Nhwc;
use super::plan::ConvKind;
use crate::error::{Error, Result};
use crate::kernels::int8::requant::quantize;
use crate::kernels::int8::{generic, QuantLayer as Operands, Requant};
use crate::kernels::GemmShape;

/// A quantized network bound to the scalar integer kernels.
#[derive(Debug, Clone)]
pub struct QuantModel {
    plan: QuantPlan,
}

impl QuantModel {
    /// The model of `plan`.
    pub fn new(plan: QuantPlan) -> Self {
        QuantModel { plan }
    }

    /// Its plan.
    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }

    /// Runs a batch of NHWC float images (as preprocessed for the float model) and returns
    /// `batch x classes` logits.
    pub fn run(&self, images: Nhwc) -> Result<Vec<f32>> {
        let Nhwc { data, batch, h, w } = images;
        let plan = &self.plan;
        if data.len() != batch * h * w * plan.in_c || batch == 0 {
            return Err(Error::BadInput(format!(
                "expected {batch} images of {h}x{w}x{} values, got {} values",
                plan.in_c,
                data.len()
            )));
        }
        let (scale, zero) = (plan.input.scale, plan.input.zero);
        let mut current: Vec<u8> = data.iter().map(|&x| quantize(x, scale, zero)).collect();
        let (mut h, mut w, mut c) = (h, w, plan.in_c);
        for layer in &plan.layers {
            match layer {
                QuantLayer::Conv(conv) => {
                    let g = conv.shape.geometry(&conv.name, batch, h, w)?;
                    if g.in_c != c {
                        return Err(Error::Internal(format!(
                            "layer `{}` expects {} channels, gets {c}",
                            conv.name, g.in_c
                        )));
                    }
                    let operands = Operands {
                        weights: &conv.weights,
                        bias: &conv.bias,
                        input_zero: conv.input.zero,
                        requant: &conv.requant,
                    };
                    let mut out = vec![0u8; g.output_len()];
                    match conv.shape.kind {
                        ConvKind::Dense => generic::dense_conv(&g, &current, &operands, &mut out),
                        ConvKind::Depthwise => {
                            generic::depthwise(&g, &current, &operands, &mut out)
                        }
                        ConvKind::Pointwise => {
                            let shape = GemmShape {
                                m: batch * h * w,
                                k: g.in_c,
                                n: g.out_c,
                            };
                            generic::gemm(&shape, &current, &operands, &mut out)
                        }
                    }
                    current = out;
                    (h, w, c) = (g.out_h, g.out_w, g.out_c);
                }
                QuantLayer::GlobalAvgPool { input, output, .. } => {
                    let positions = h * w;
                    let requant = Requant {
                        scale: vec![
                            Requant::pool_multiplier(input.scale, output.scale, positions);
                            c
                        ],
                        zero: output.zero,
                        lo: 0,
                        hi: 255,
                    };
                    let mut out = vec![0u8; batch * c];
                    generic::global_avg_pool(
                        batch, positions, c, &current, input.zero, &requant, &mut out,
                    );
                    current = out;
                    (h, w) = (1, 1);
                }
            }
        }
        let last = plan
            .layers
            .last()
            .ok_or_else(|| Error::Internal("a quantized plan without layers".into()))?
            .output();
        if h * w * c != plan.classes {
            return Err(Error::Internal(format!(
                "the network ends on {h}x{w}x{c} values, not {} classes",
                plan.classes
            )));
        }
        Ok(current.iter().map(|&q| last.dequantize(q)).collect())
    }
}
