//! 8-bit quantized networks: their plan (imported from ONNX QDQ graphs by
//! `engine::import::qdq`) and how it runs on one tier's integer kernels. Float images go in and float
//! logits come out, as for a float model: the input is quantized by the graph's own
//! `QuantizeLinear`, and the last layer's uint8 output is dequantized.

pub mod plan;

use self::plan::{QuantLayer, QuantPlan};
use super::model::Nhwc;
use super::plan::ConvKind;
use crate::error::{Error, Result};
use crate::kernels::int8::{generic, QuantLayer as Operands, Requant};
use crate::kernels::{GemmShape, KernelSet};

/// A quantized network bound to one tier's integer kernels, its weights packed for them.
#[derive(Debug, Clone)]
pub struct QuantModel {
    plan: QuantPlan,
    kernels: KernelSet,
    /// Each layer's weights in the tier's layout (empty for a pool).
    packed: Vec<Vec<i16>>,
}

impl QuantModel {
    /// Binds `plan` to `kernels`, packing every layer's weights for them.
    pub fn new(plan: QuantPlan, kernels: KernelSet) -> Self {
        let k = kernels.int8;
        let packed = plan
            .layers
            .iter()
            .map(|layer| match layer {
                QuantLayer::Conv(conv) => {
                    let s = conv.shape;
                    match s.kind {
                        ConvKind::Dense => {
                            (k.pack_gemm)(s.kh * s.kw * s.in_c, s.out_c, &conv.weights)
                        }
                        ConvKind::Pointwise => (k.pack_gemm)(s.in_c, s.out_c, &conv.weights),
                        ConvKind::Depthwise => {
                            (k.pack_depthwise)(s.kh * s.kw, s.out_c, &conv.weights)
                        }
                    }
                }
                QuantLayer::GlobalAvgPool { .. } => Vec::new(),
            })
            .collect();
        QuantModel {
            plan,
            kernels,
            packed,
        }
    }

    /// The kernels it runs on.
    pub fn kernels(&self) -> &KernelSet {
        &self.kernels
    }

    /// Its plan.
    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }

    /// Runs a batch of NHWC float images (as preprocessed for the float model) and returns
    /// `batch x classes` logits, on the calling thread. It allocates each layer's output: the
    /// reusable buffers and the team of threads of the float model are the next step.
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
        let mut current = vec![0u8; data.len()];
        (self.kernels.int8.quantize)(data, plan.input.scale, plan.input.zero, &mut current);
        let (mut h, mut w, mut c) = (h, w, plan.in_c);
        let k = self.kernels.int8;
        for (layer, weights) in plan.layers.iter().zip(&self.packed) {
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
                        weights,
                        bias: &conv.bias,
                        input_zero: conv.input.zero,
                        requant: &conv.requant,
                    };
                    let mut out = vec![0u8; g.output_len()];
                    let pixels = batch * g.out_h * g.out_w;
                    match conv.shape.kind {
                        ConvKind::Dense => {
                            // The stem as a GEMM on its patches.
                            let patch = g.kh * g.kw * g.in_c;
                            let mut patches = vec![0u8; pixels * patch];
                            generic::im2col(&g, &current, conv.input.zero, &mut patches);
                            let shape = GemmShape {
                                m: pixels,
                                k: patch,
                                n: g.out_c,
                            };
                            (k.gemm)(&shape, &patches, &operands, &mut out)
                        }
                        ConvKind::Depthwise => (k.depthwise)(&g, &current, &operands, &mut out),
                        ConvKind::Pointwise => {
                            let shape = GemmShape {
                                m: pixels,
                                k: g.in_c,
                                n: g.out_c,
                            };
                            (k.gemm)(&shape, &current, &operands, &mut out)
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
