//! The engine's own description of a network: a chain of layers with weights already in the
//! kernels' layouts, batch-norm folded and activations fused. The importer builds it; the model
//! runs it.

use crate::error::{Error, Result};
use crate::kernels::{Clamp, ConvGeometry};

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Fixed zero padding (ONNX `pads`, possibly asymmetric).
    Explicit {
        /// Rows above.
        top: usize,
        /// Columns left.
        left: usize,
        /// Rows below.
        bottom: usize,
        /// Columns right.
        right: usize,
    },
    /// ONNX `SAME_UPPER` (TensorFlow SAME): the odd extra row/column goes at the end.
    SameUpper,
    /// ONNX `SAME_LOWER`: the odd extra row/column goes at the start.
    SameLower,
}

impl Padding {
    /// No padding.
    pub const NONE: Padding = Padding::Explicit {
        top: 0,
        left: 0,
        bottom: 0,
        right: 0,
    };

    /// Output size and leading pad along one axis, or `None` when the kernel does not fit.
    pub fn resolve(
        &self,
        size: usize,
        k: usize,
        stride: usize,
        axis: Axis,
    ) -> Option<(usize, usize)> {
        match *self {
            Padding::Explicit {
                top,
                left,
                bottom,
                right,
            } => {
                let (begin, end) = match axis {
                    Axis::Rows => (top, bottom),
                    Axis::Cols => (left, right),
                };
                let padded = size + begin + end;
                (padded >= k && size > 0).then(|| ((padded - k) / stride + 1, begin))
            }
            Padding::SameUpper | Padding::SameLower => {
                if size == 0 {
                    return None;
                }
                let out = size.div_ceil(stride);
                let total = ((out - 1) * stride + k).saturating_sub(size);
                let begin = if *self == Padding::SameUpper {
                    total / 2
                } else {
                    total - total / 2
                };
                Some((out, begin))
            }
        }
    }
}

/// Which spatial axis a padding is resolved along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Height.
    Rows,
    /// Width.
    Cols,
}

/// The flavour of a convolution, which decides its kernel and weight layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// groups = 1, any kernel size; weights `[kh][kw][in_c][out_c]`.
    Dense,
    /// One filter per channel; weights `[kh][kw][c]`.
    Depthwise,
    /// 1x1, stride 1, no padding: a GEMM; weights `[in_c][out_c]`.
    Pointwise,
}

/// One convolution with its prepacked weights and fused activation.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    /// The ONNX node it came from (for error messages).
    pub name: String,
    /// Which kernel runs it.
    pub kind: ConvKind,
    /// Input channels.
    pub in_c: usize,
    /// Output channels.
    pub out_c: usize,
    /// Kernel rows.
    pub kh: usize,
    /// Kernel columns.
    pub kw: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Padding rule.
    pub padding: Padding,
    /// Weights in the layout of `kind`, output channel fastest.
    pub weights: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
    /// Fused activation.
    pub act: Clamp,
}

impl ConvLayer {
    /// Resolves the geometry for an input of `batch x in_h x in_w`.
    pub fn geometry(&self, batch: usize, in_h: usize, in_w: usize) -> Result<ConvGeometry> {
        self.shape().geometry(&self.name, batch, in_h, in_w)
    }

    /// Its shape without the weights.
    pub fn shape(&self) -> ConvShape {
        ConvShape {
            kind: self.kind,
            in_c: self.in_c,
            out_c: self.out_c,
            kh: self.kh,
            kw: self.kw,
            stride_h: self.stride_h,
            stride_w: self.stride_w,
            padding: self.padding,
        }
    }
}

/// A convolution's shape, whatever its number type: what its geometry follows from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Which kernel runs it.
    pub kind: ConvKind,
    /// Input channels.
    pub in_c: usize,
    /// Output channels.
    pub out_c: usize,
    /// Kernel rows.
    pub kh: usize,
    /// Kernel columns.
    pub kw: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Padding rule.
    pub padding: Padding,
}

impl ConvShape {
    /// Multiply-adds per output value: the taps it sums over.
    pub fn mult_adds_per_output(&self) -> usize {
        match self.kind {
            ConvKind::Depthwise => self.kh * self.kw,
            _ => self.kh * self.kw * self.in_c,
        }
    }

    /// Resolves the geometry of layer `name` for an input of `batch x in_h x in_w`.
    pub fn geometry(
        &self,
        name: &str,
        batch: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<ConvGeometry> {
        let rows = self
            .padding
            .resolve(in_h, self.kh, self.stride_h, Axis::Rows);
        let cols = self
            .padding
            .resolve(in_w, self.kw, self.stride_w, Axis::Cols);
        let (Some((out_h, pad_top)), Some((out_w, pad_left))) = (rows, cols) else {
            return Err(Error::BadInput(format!(
                "layer `{name}`: a {in_h}x{in_w} input is too small for its {}x{} kernel",
                self.kh, self.kw
            )));
        };
        Ok(ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c: self.in_c,
            out_h,
            out_w,
            out_c: self.out_c,
            kh: self.kh,
            kw: self.kw,
            stride_h: self.stride_h,
            stride_w: self.stride_w,
            pad_top,
            pad_left,
        })
    }
}

/// A fully connected layer (ONNX `Gemm`, `MatMul`+`Add`, or a 1x1 conv after pooling).
#[derive(Debug, Clone)]
pub struct FcLayer {
    /// The ONNX node it came from.
    pub name: String,
    /// Input features.
    pub in_c: usize,
    /// Output features.
    pub out_c: usize,
    /// Weights `[in_c][out_c]`.
    pub weights: Vec<f32>,
    /// Bias `[out_c]`.
    pub bias: Vec<f32>,
    /// Fused activation.
    pub act: Clamp,
}

/// One step of the network.
#[derive(Debug, Clone)]
pub enum Layer {
    /// A convolution.
    Conv(ConvLayer),
    /// Mean over the whole feature map. `window` is set when the graph used a fixed-size
    /// `AveragePool`: the map must then be exactly that size.
    GlobalAvgPool {
        /// Required map size `(rows, cols)`, if any.
        window: Option<(usize, usize)>,
    },
    /// A fully connected layer.
    Fc(FcLayer),
}

/// Memory layout of the graph's input tensor (the engine itself always runs NHWC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// `[N, C, H, W]`.
    Nchw,
    /// `[N, H, W, C]` followed by a `Transpose` in the graph (tf2onnx style).
    Nhwc,
}

/// A whole network, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
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
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// Name of the graph output.
    pub output_name: String,
    /// Output features (classes).
    pub classes: usize,
    /// Whether the graph ends with a softmax (the output is probabilities, not logits).
    pub softmax: bool,
}

impl Plan {
    /// Output channels of the first convolution (32 x alpha for MobileNet v1).
    pub fn stem_width(&self) -> Option<usize> {
        self.layers.iter().find_map(|l| match l {
            Layer::Conv(c) => Some(c.out_c),
            _ => None,
        })
    }

    /// Number of learned parameters (weights and biases).
    pub fn params(&self) -> usize {
        self.layers.iter().map(Layer::params).sum()
    }

    /// Multiply-adds for one image of `h x w` (convolutions and FC only, as the paper counts).
    pub fn mult_adds(&self, h: usize, w: usize) -> Result<u64> {
        Ok(self.layer_mult_adds(h, w)?.iter().sum())
    }

    /// Multiply-adds of each layer for one image of `h x w`, in layer order.
    pub fn layer_mult_adds(&self, h: usize, w: usize) -> Result<Vec<u64>> {
        let outputs = self.layer_outputs(h, w)?;
        Ok(self
            .layers
            .iter()
            .zip(outputs)
            .map(|(layer, (out_h, out_w, out_c))| match layer {
                Layer::Conv(c) => (out_h * out_w * out_c * c.shape().mult_adds_per_output()) as u64,
                Layer::GlobalAvgPool { .. } => 0,
                Layer::Fc(f) => (f.in_c * f.out_c) as u64,
            })
            .collect())
    }

    /// Each layer's output `(height, width, channels)` for one image of `h x w`, in layer order.
    pub fn layer_outputs(&self, h: usize, w: usize) -> Result<Vec<(usize, usize, usize)>> {
        let (mut h, mut w, mut c) = (h, w, self.in_c);
        let mut shapes = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            match layer {
                Layer::Conv(conv) => {
                    let g = conv.geometry(1, h, w)?;
                    (h, w, c) = (g.out_h, g.out_w, g.out_c);
                }
                Layer::GlobalAvgPool { .. } => (h, w) = (1, 1),
                Layer::Fc(f) => c = f.out_c,
            }
            shapes.push((h, w, c));
        }
        Ok(shapes)
    }
}

impl Layer {
    /// Learned parameters of this layer (weights and biases).
    pub fn params(&self) -> usize {
        match self {
            Layer::Conv(c) => c.weights.len() + c.bias.len(),
            Layer::Fc(f) => f.weights.len() + f.bias.len(),
            Layer::GlobalAvgPool { .. } => 0,
        }
    }
}
