//! The engine's description of an 8-bit quantized network: the float plan's chain of layers,
//! with integer weights centred on their zero points, int32 biases, and each layer's
//! requantization into the next layer's uint8 activations.

use crate::engine::plan::{ConvShape, InputLayout};
use crate::error::Result;
use crate::kernels::int8::Requant;

/// A real value `x` is stored as `round(x / scale) + zero`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantParams {
    /// The real value of one step.
    pub scale: f32,
    /// The stored value of a real 0.
    pub zero: u8,
}

impl QuantParams {
    /// The real value of a stored one.
    pub fn dequantize(&self, q: u8) -> f32 {
        (i32::from(q) - i32::from(self.zero)) as f32 * self.scale
    }

    /// The stored bounds of a fused activation that clamps real values to `[lo, hi]` (an
    /// infinite bound clamps nothing); `None` when no stored value is left between them. ONNX
    /// and TFLite clip the real value and then round; rounding is monotonic, so clipping the
    /// rounded value at the rounded bounds is the same.
    pub fn stored_range(&self, lo: f32, hi: f32) -> Option<(u8, u8)> {
        let stored = |bound: f32, unbounded: u8| -> u8 {
            if bound.is_finite() {
                ((f64::from(bound) / f64::from(self.scale)).round_ties_even()
                    + f64::from(self.zero))
                .clamp(0.0, 255.0) as u8
            } else {
                unbounded
            }
        };
        let (lo, hi) = (stored(lo, 0), stored(hi, 255));
        (lo <= hi).then_some((lo, hi))
    }
}

/// The first output channel whose int32 accumulator could overflow on uint8 inputs, for
/// centred `weights` in any packed layout with the output channel fastest and one `bias` per
/// output channel.
pub fn overflowing_channel(weights: &[i16], bias: &[i32]) -> Option<usize> {
    let m = bias.len();
    (0..m).find(|&o| {
        let worst: i64 = weights
            .iter()
            .skip(o)
            .step_by(m)
            .map(|&v| 255 * i64::from(v).abs())
            .sum::<i64>()
            + i64::from(bias[o]).abs();
        worst > i64::from(i32::MAX)
    })
}

/// A quantized convolution: its shape, integer weights and requantization.
#[derive(Debug, Clone)]
pub struct QuantConv {
    /// The ONNX node it came from (for error messages).
    pub name: String,
    /// Kind, channels, kernel, strides, padding.
    pub shape: ConvShape,
    /// Weights minus their zero point, in the float layout of `shape.kind`.
    pub weights: Vec<i16>,
    /// One bias per output channel, in accumulator units.
    pub bias: Vec<i32>,
    /// The input activations' quantization.
    pub input: QuantParams,
    /// From accumulator to output activation (a fused ReLU/ReLU6 narrows its range).
    pub requant: Requant,
    /// The output activations' quantization.
    pub output: QuantParams,
}

/// One step of a quantized network.
#[derive(Debug, Clone)]
pub enum QuantLayer {
    /// A convolution (the classifier too, as a 1x1 convolution on the pooled 1x1 map).
    Conv(QuantConv),
    /// The mean over the whole feature map, requantized.
    GlobalAvgPool {
        /// The ONNX node it came from.
        name: String,
        /// The input activations' quantization.
        input: QuantParams,
        /// The output activations' quantization.
        output: QuantParams,
    },
}

impl QuantLayer {
    /// The layer's output quantization.
    pub fn output(&self) -> QuantParams {
        match self {
            QuantLayer::Conv(c) => c.output,
            QuantLayer::GlobalAvgPool { output, .. } => *output,
        }
    }
}

/// A whole quantized network, ready to run: float images in, float logits out.
#[derive(Debug, Clone)]
pub struct QuantPlan {
    /// Name of the graph input.
    pub input_name: String,
    /// Layout the graph expects (the engine takes NHWC regardless).
    pub input_layout: InputLayout,
    /// Input channels (3 for RGB).
    pub in_c: usize,
    /// Fixed input height, if the graph fixes it.
    pub height: Option<usize>,
    /// Fixed input width, if the graph fixes it.
    pub width: Option<usize>,
    /// How the float input is quantized (`QuantizeLinear` on the graph input).
    pub input: QuantParams,
    /// The layers, in order; the last one's output is dequantized into the logits.
    pub layers: Vec<QuantLayer>,
    /// Name of the graph output.
    pub output_name: String,
    /// Output features (classes).
    pub classes: usize,
    /// Whether the quantized input is the 8-bit pixel itself (TFLite's convention for uint8
    /// models): the preprocessing must then map pixel `p` to `(p - zero) x scale` of
    /// [`QuantPlan::input`] for the model to see the pixels exactly.
    pub pixel_input: bool,
}

impl QuantPlan {
    /// Number of learned parameters (weights and biases).
    pub fn params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                QuantLayer::Conv(c) => c.weights.len() + c.bias.len(),
                QuantLayer::GlobalAvgPool { .. } => 0,
            })
            .sum()
    }

    /// Output channels of the first convolution: 32 x alpha for a MobileNet.
    pub fn stem_width(&self) -> Option<usize> {
        self.layers.iter().find_map(|l| match l {
            QuantLayer::Conv(c) => Some(c.shape.out_c),
            QuantLayer::GlobalAvgPool { .. } => None,
        })
    }

    /// Multiply-adds for one image of `h x w`, counted as for the float plan.
    pub fn mult_adds(&self, h: usize, w: usize) -> Result<u64> {
        let (mut h, mut w) = (h, w);
        let mut total = 0u64;
        for layer in &self.layers {
            match layer {
                QuantLayer::Conv(c) => {
                    let g = c.shape.geometry(&c.name, 1, h, w)?;
                    total += (g.output_len() * c.shape.mult_adds_per_output()) as u64;
                    (h, w) = (g.out_h, g.out_w);
                }
                QuantLayer::GlobalAvgPool { .. } => (h, w) = (1, 1),
            }
        }
        Ok(total)
    }
}
