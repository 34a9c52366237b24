//! ONNX QDQ graph -> [`QuantPlan`]: a float graph whose activations pass through
//! `QuantizeLinear`/`DequantizeLinear` pairs and whose weights and biases are
//! `DequantizeLinear`s of integer initializers. Each `DQ -> Conv (-> Relu | Clip) -> Q` becomes
//! one integer convolution, `DQ -> GlobalAveragePool -> Q` an integer pool, and the last
//! layer's `DQ` the float logits.
//!
//! What loads: uint8 activations (per tensor); uint8 or int8 weights, per tensor or per output
//! channel; int32 biases whose scale is the input scale times the weight scale. Anything else is
//! refused with the node named, as the float importer does.

use std::collections::HashMap;

use super::attrs::{self, conv_padding, conv_strides, image_input, pads_nothing_1x1, unsupported};
use super::weights::pack_conv;
use crate::engine::onnx::{self, node_label, pb, Attrs, Constant, Element};
use crate::engine::plan::{ConvKind, ConvShape, InputLayout, Padding};
use crate::engine::quant::plan::{
    overflowing_channel, QuantConv, QuantLayer, QuantParams, QuantPlan,
};
use crate::error::{Error, Result};
use crate::kernels::int8::Requant;
use crate::kernels::int8::MAX_DEPTHWISE_TAPS;

/// Imports a quantized ONNX model from its bytes.
pub fn import_quantized_bytes(bytes: &[u8]) -> Result<QuantPlan> {
    import_quantized(&onnx::decode_model(bytes)?)
}

/// Imports a decoded quantized ONNX model.
pub fn import_quantized(model: &pb::ModelProto) -> Result<QuantPlan> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::MalformedModel("the model has no graph".into()))?;
    Walk::new(graph)?.run()
}

/// An integer initializer seen through its `DequantizeLinear`.
#[derive(Debug, Clone)]
struct Dequantized {
    dims: Vec<usize>,
    values: Vec<i64>,
    element: Element,
    /// One scale, or one per output channel.
    scales: Vec<f32>,
    /// One zero point, or one per output channel.
    zeros: Vec<i64>,
    /// The axis of the per-channel scales (meaningless for one scale).
    axis: usize,
}

impl Dequantized {
    fn scale(&self, channel: usize) -> f32 {
        self.scales[if self.scales.len() == 1 { 0 } else { channel }]
    }

    fn zero(&self, channel: usize) -> i64 {
        self.zeros[if self.zeros.len() == 1 { 0 } else { channel }]
    }

    /// Refuses weights that are not 8-bit, or quantized per channel along any axis but
    /// `output` (the output channels).
    fn check_weights(&self, node: &pb::NodeProto, output: usize) -> Result<()> {
        if !matches!(self.element, Element::U8 | Element::I8) {
            return Err(unsupported(node, "weights must be uint8 or int8".into()));
        }
        if self.scales.len() > 1 && self.axis != output {
            return Err(unsupported(
                node,
                format!(
                    "weights quantized per channel along axis {}, not along the output \
                     channels (axis {output})",
                    self.axis
                ),
            ));
        }
        Ok(())
    }
}

/// A float `Conv` whose output has not been quantized yet.
#[derive(Debug, Clone)]
struct PendingConv {
    name: String,
    shape: ConvShape,
    weights: Vec<i16>,
    bias: Vec<i32>,
    input: QuantParams,
    weight_scales: Vec<f32>,
    /// A fused Relu/Clip's real bounds.
    lo: f32,
    hi: f32,
}

/// What the tensor at the end of the chain is.
#[derive(Debug, Clone)]
enum State {
    /// The float graph input.
    Input,
    /// The output of a `QuantizeLinear`: stored uint8 values.
    Quantized(QuantParams),
    /// The output of a `DequantizeLinear`: real values on a quantization grid.
    Real(QuantParams),
    /// The float output of a convolution, to be quantized next.
    Conv(Box<PendingConv>),
    /// The float output of a global average pool of the given input.
    Pool { name: String, input: QuantParams },
}

struct Walk<'g> {
    graph: &'g pb::GraphProto,
    consts: HashMap<String, Constant>,
    dequantized: HashMap<String, Dequantized>,
    input_name: String,
    input_dims: Vec<Option<usize>>,
    input: Option<QuantParams>,
    layers: Vec<QuantLayer>,
    state: State,
    current: String,
    /// Channels of the feature map at the end of the chain.
    channels: usize,
    /// Whether the map has been pooled to 1x1.
    pooled: bool,
}

impl<'g> Walk<'g> {
    fn new(graph: &'g pb::GraphProto) -> Result<Self> {
        let consts = onnx::constants(graph)?;
        let (input, input_dims) = image_input(graph, &consts)?;
        Ok(Walk {
            graph,
            consts,
            dequantized: HashMap::new(),
            input_name: input.name.clone(),
            channels: input_dims[1].unwrap_or(0),
            input_dims,
            input: None,
            layers: Vec::new(),
            state: State::Input,
            current: input.name.clone(),
            pooled: false,
        })
    }

    fn run(mut self) -> Result<QuantPlan> {
        for node in &self.graph.node {
            if node.op_type == "Constant" {
                continue;
            }
            if node.op_type == "DequantizeLinear"
                && node
                    .input
                    .first()
                    .is_some_and(|x| self.consts.contains_key(x))
            {
                self.dequantize_constant(node)?;
                continue;
            }
            self.step(node)?;
        }
        let output = attrs::chain_output(self.graph, &self.current)?;
        if !matches!(self.state, State::Real(_)) || !self.pooled {
            return Err(Error::MalformedModel(
                "a quantized graph must end on the dequantized output of its classifier \
                 (QuantizeLinear then DequantizeLinear after the last Conv)"
                    .into(),
            ));
        }
        let input = self
            .input
            .ok_or_else(|| Error::MalformedModel("the graph input is never quantized".into()))?;
        let in_c = self
            .layers
            .iter()
            .find_map(|l| match l {
                QuantLayer::Conv(c) => Some(c.shape.in_c),
                QuantLayer::GlobalAvgPool { .. } => None,
            })
            .ok_or_else(|| Error::MalformedModel("the graph has no convolution".into()))?;
        Ok(QuantPlan {
            input_name: self.input_name,
            input_layout: InputLayout::Nchw,
            in_c,
            height: self.input_dims[2],
            width: self.input_dims[3],
            input,
            layers: self.layers,
            output_name: output.name.clone(),
            classes: self.channels,
            pixel_input: false,
        })
    }

    fn step(&mut self, node: &pb::NodeProto) -> Result<()> {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(unsupported(
                node,
                format!("custom domain `{}`", node.domain),
            ));
        }
        match node.input.first() {
            Some(x) if *x == self.current => {}
            Some(x) => {
                return Err(unsupported(
                    node,
                    format!(
                        "the graph must be a single chain: input `{x}` is not the output of \
                         the previous layer (`{}`)",
                        self.current
                    ),
                ))
            }
            None => return Err(unsupported(node, "node has no input".into())),
        }
        let out = node
            .output
            .first()
            .ok_or_else(|| unsupported(node, "node has no output".into()))?
            .clone();
        match node.op_type.as_str() {
            "QuantizeLinear" => self.quantize(node)?,
            "DequantizeLinear" => self.dequantize(node)?,
            "Conv" => self.conv(node)?,
            "Gemm" if self.pooled => self.gemm(node)?,
            "Relu" => self.activation(node, 0.0, f32::INFINITY)?,
            "Clip" => {
                let (lo, hi) = self.clip_bounds(node)?;
                self.activation(node, lo, hi)?
            }
            "GlobalAveragePool" => {
                let State::Real(input) = self.state else {
                    return Err(unsupported(
                        node,
                        "the pool's input must be a DequantizeLinear output".into(),
                    ));
                };
                self.state = State::Pool {
                    name: node_label(node),
                    input,
                };
                self.pooled = true;
            }
            "Flatten" | "Reshape" | "Squeeze" if self.pooled => {
                if !matches!(self.state, State::Real(_)) {
                    return Err(unsupported(
                        node,
                        "only the dequantized classifier output may be reshaped".into(),
                    ));
                }
            }
            "Identity" | "Dropout" => {}
            other => {
                return Err(unsupported(
                    node,
                    format!("operator {other} is not supported in a quantized graph here"),
                ))
            }
        }
        self.current = out;
        Ok(())
    }

    /// A `QuantizeLinear` on the chain: of the graph input, or closing a conv or pool.
    fn quantize(&mut self, node: &pb::NodeProto) -> Result<()> {
        let params = self.activation_params(node)?;
        let state = std::mem::replace(&mut self.state, State::Quantized(params));
        match state {
            State::Input if self.input.is_none() => self.input = Some(params),
            State::Conv(conv) => {
                let conv = finish_conv(node, *conv, params)?;
                self.channels = conv.shape.out_c;
                self.layers.push(QuantLayer::Conv(conv));
            }
            State::Pool { name, input } => self.layers.push(QuantLayer::GlobalAvgPool {
                name,
                input,
                output: params,
            }),
            // Quantizing again with the same parameters (after a Flatten) changes nothing.
            State::Real(q) if q == params => {}
            other => {
                return Err(unsupported(
                    node,
                    format!(
                        "a QuantizeLinear must follow the input, a Conv or a pool, not {other:?}"
                    ),
                ))
            }
        }
        Ok(())
    }

    /// A `DequantizeLinear` on the chain: it must undo the `QuantizeLinear` before it exactly.
    fn dequantize(&mut self, node: &pb::NodeProto) -> Result<()> {
        let params = self.activation_params(node)?;
        match self.state {
            State::Quantized(q) if q == params => {
                self.state = State::Real(params);
                Ok(())
            }
            State::Quantized(q) => Err(unsupported(
                node,
                format!("dequantizes with {params:?}, but the tensor was quantized with {q:?}"),
            )),
            _ => Err(unsupported(
                node,
                "a DequantizeLinear on the chain must follow a QuantizeLinear".into(),
            )),
        }
    }

    /// The per-tensor uint8 scale and zero point of a quantization node on the chain.
    fn activation_params(&self, node: &pb::NodeProto) -> Result<QuantParams> {
        let scale = self.constant(node, 1, "scale")?;
        let zero = self.constant(node, 2, "zero point")?;
        if zero.element != Element::U8 {
            return Err(unsupported(
                node,
                format!(
                    "activations must be uint8; this zero point is {:?}",
                    zero.element
                ),
            ));
        }
        let (Some(scale), Some(zero)) = (scale.scalar(), zero.scalar()) else {
            return Err(unsupported(
                node,
                "activations must be quantized per tensor (one scale, one zero point)".into(),
            ));
        };
        let scale = scale as f32;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(unsupported(node, format!("scale {scale} is not positive")));
        }
        Ok(QuantParams {
            scale,
            zero: zero as u8,
        })
    }

    /// Registers a `DequantizeLinear` of an integer initializer (weights or bias).
    fn dequantize_constant(&mut self, node: &pb::NodeProto) -> Result<()> {
        let x = self.constant(node, 0, "input")?;
        let scale = self.constant(node, 1, "scale")?;
        let zero = match self.optional_constant(node, 2)? {
            Some(z) => z.clone(),
            None => Constant {
                dims: vec![],
                values: vec![0.0],
                element: x.element,
            },
        };
        if !matches!(x.element, Element::U8 | Element::I8 | Element::I32) {
            return Err(unsupported(
                node,
                format!(
                    "dequantizes {:?} values; uint8, int8 or int32 expected",
                    x.element
                ),
            ));
        }
        if zero.element != x.element || zero.values.len() != scale.values.len() {
            return Err(unsupported(
                node,
                "the zero point must have the input's type and the scale's length".into(),
            ));
        }
        if scale.values.is_empty() || x.dims.contains(&0) {
            return Err(unsupported(
                node,
                format!(
                    "{} scales for shape {:?}: an empty tensor or no scale",
                    scale.values.len(),
                    x.dims
                ),
            ));
        }
        let per_channel = scale.values.len() > 1;
        let rank = x.dims.len() as i64;
        let axis = Attrs(node).int("axis").unwrap_or(1);
        let axis = if axis < 0 { axis + rank } else { axis };
        let fits = (0..rank).contains(&axis) && x.dims[axis as usize] == scale.values.len();
        if per_channel && !fits {
            return Err(unsupported(
                node,
                format!(
                    "{} scales along axis {axis} of shape {:?}",
                    scale.values.len(),
                    x.dims
                ),
            ));
        }
        let scales = scale.to_f32();
        if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(unsupported(node, "a scale is not positive".into()));
        }
        let value = Dequantized {
            dims: x.dims.clone(),
            values: x.to_i64(),
            element: x.element,
            scales,
            zeros: zero.to_i64(),
            axis: axis.max(0) as usize,
        };
        for out in &node.output {
            self.dequantized.insert(out.clone(), value.clone());
        }
        Ok(())
    }

    fn conv(&mut self, node: &pb::NodeProto) -> Result<()> {
        let State::Real(input) = self.state else {
            return Err(unsupported(
                node,
                "a Conv's input must be a DequantizeLinear output".into(),
            ));
        };
        let w = self.dequantized_input(node, 1, "weight")?;
        w.check_weights(node, 0)?;
        let [m, cg, kh, kw] = w.dims[..] else {
            return Err(unsupported(
                node,
                format!("weight shape {:?} is not 4-D", w.dims),
            ));
        };
        let a = Attrs(node);
        let group = a.int("group").unwrap_or(1).max(1) as usize;
        let in_c = cg * group;
        let (sh, sw) = conv_strides(node)?;
        let padding = conv_padding(node)?;
        if self.channels != in_c && !(self.layers.is_empty() && self.channels == 0) {
            return Err(unsupported(
                node,
                format!("expects {in_c} input channels, gets {}", self.channels),
            ));
        }
        let pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pads_nothing_1x1(padding);
        if self.pooled && !(pointwise && group == 1) {
            return Err(unsupported(
                node,
                "only a 1x1 classifier may follow the pool".into(),
            ));
        }
        // Weights minus their zero point: within -255..=255, exact in i16.
        let mut centred = vec![0i16; w.values.len()];
        let per_out = cg * kh * kw;
        for (o, chunk) in w.values.chunks_exact(per_out).enumerate() {
            let zero = w.zero(o);
            for (c, &v) in centred[o * per_out..].iter_mut().zip(chunk) {
                *c = (v - zero) as i16;
            }
        }
        let (kind, weights) = pack_conv(node, &centred, [m, cg, kh, kw], group, pointwise)?;
        if kind == ConvKind::Depthwise && kh * kw > MAX_DEPTHWISE_TAPS {
            return Err(unsupported(
                node,
                format!("a {kh}x{kw} depthwise kernel: the integer kernels take up to {MAX_DEPTHWISE_TAPS} taps"),
            ));
        }
        let shape = ConvShape {
            kind,
            in_c,
            out_c: m,
            kh,
            kw,
            stride_h: sh,
            stride_w: sw,
            padding,
        };
        let weight_scales: Vec<f32> = (0..m).map(|o| w.scale(o)).collect();
        self.open_layer(node, input, shape, weights, weight_scales)
    }

    /// The classifier as a `Gemm` on the pooled vector: a 1x1 convolution.
    fn gemm(&mut self, node: &pb::NodeProto) -> Result<()> {
        let State::Real(input) = self.state else {
            return Err(unsupported(
                node,
                "a Gemm's input must be a DequantizeLinear output".into(),
            ));
        };
        let a = Attrs(node);
        if a.int("transA").unwrap_or(0) != 0
            || a.float("alpha").unwrap_or(1.0) != 1.0
            || a.float("beta").unwrap_or(1.0) != 1.0
        {
            return Err(unsupported(
                node,
                "only Gemm with transA = 0 and alpha = beta = 1 is supported".into(),
            ));
        }
        let w = self.dequantized_input(node, 1, "weight")?;
        let trans_b = a.int("transB").unwrap_or(0) != 0;
        w.check_weights(node, usize::from(!trans_b))?;
        let [rows, cols] = w.dims[..] else {
            return Err(unsupported(
                node,
                format!("weight shape {:?} is not 2-D", w.dims),
            ));
        };
        let (k, n) = if trans_b { (cols, rows) } else { (rows, cols) };
        if k != self.channels {
            return Err(unsupported(
                node,
                format!("expects {k} features, gets {}", self.channels),
            ));
        }
        // Centred, in the GEMM layout [k][n].
        let mut weights = vec![0i16; k * n];
        for (i, &v) in w.values.iter().enumerate() {
            let (r, c) = (i / cols, i % cols);
            let (p, o) = if trans_b { (c, r) } else { (r, c) };
            weights[p * n + o] = (v - w.zero(o)) as i16;
        }
        let shape = ConvShape {
            kind: ConvKind::Pointwise,
            in_c: k,
            out_c: n,
            kh: 1,
            kw: 1,
            stride_h: 1,
            stride_w: 1,
            padding: Padding::Explicit {
                top: 0,
                left: 0,
                bottom: 0,
                right: 0,
            },
        };
        let weight_scales: Vec<f32> = (0..n).map(|o| w.scale(o)).collect();
        self.open_layer(node, input, shape, weights, weight_scales)
    }

    /// Starts the integer layer of `node` (its output is quantized by the next node): reads and
    /// checks its bias, and refuses weights that could overflow an int32 accumulator.
    fn open_layer(
        &mut self,
        node: &pb::NodeProto,
        input: QuantParams,
        shape: ConvShape,
        weights: Vec<i16>,
        weight_scales: Vec<f32>,
    ) -> Result<()> {
        let m = shape.out_c;
        let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
            None => vec![0; m],
            Some(_) => {
                let b = self.dequantized_input(node, 2, "bias")?;
                bias_values(node, b, input.scale, &weight_scales, m)?
            }
        };
        if let Some(o) = overflowing_channel(&weights, &bias) {
            return Err(unsupported(
                node,
                format!("output channel {o} could overflow a 32-bit accumulator"),
            ));
        }
        self.state = State::Conv(Box::new(PendingConv {
            name: node_label(node),
            shape,
            weights,
            bias,
            input,
            weight_scales,
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
        }));
        Ok(())
    }

    fn activation(&mut self, node: &pb::NodeProto, lo: f32, hi: f32) -> Result<()> {
        let State::Conv(conv) = &mut self.state else {
            return Err(unsupported(
                node,
                "an activation must follow a Conv directly".into(),
            ));
        };
        if lo > hi {
            return Err(unsupported(node, format!("empty range [{lo}, {hi}]")));
        }
        conv.lo = conv.lo.max(lo);
        conv.hi = conv.hi.min(hi);
        Ok(())
    }

    fn clip_bounds(&self, node: &pb::NodeProto) -> Result<(f32, f32)> {
        let bound = |i: usize, default: f32| -> Result<f32> {
            match self.optional_constant(node, i)? {
                None => Ok(default),
                Some(c) => c
                    .scalar()
                    .map(|v| v as f32)
                    .ok_or_else(|| unsupported(node, "clip bounds must be scalars".into())),
            }
        };
        let a = Attrs(node);
        Ok((
            a.float("min")
                .map_or_else(|| bound(1, f32::NEG_INFINITY), Ok)?,
            a.float("max").map_or_else(|| bound(2, f32::INFINITY), Ok)?,
        ))
    }

    fn dequantized_input(
        &self,
        node: &pb::NodeProto,
        index: usize,
        what: &str,
    ) -> Result<&Dequantized> {
        let name = node
            .input
            .get(index)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| unsupported(node, format!("missing {what} input")))?;
        self.dequantized.get(name).ok_or_else(|| {
            unsupported(
                node,
                format!("{what} `{name}` must be a DequantizeLinear of an integer initializer"),
            )
        })
    }

    fn constant(&self, node: &pb::NodeProto, index: usize, what: &str) -> Result<&Constant> {
        attrs::constant(&self.consts, node, index, what)
    }

    fn optional_constant(&self, node: &pb::NodeProto, index: usize) -> Result<Option<&Constant>> {
        attrs::optional_constant(&self.consts, node, index)
    }
}

/// The int32 bias of a conv with `m` outputs, checked to be in accumulator units: zero point 0
/// and scale equal to the input scale times the weight scale (up to the f32 rounding of that
/// product), so that it adds to the accumulator as it is.
fn bias_values(
    node: &pb::NodeProto,
    b: &Dequantized,
    input_scale: f32,
    weight_scales: &[f32],
    m: usize,
) -> Result<Vec<i32>> {
    if b.element != Element::I32 || b.values.len() != m {
        return Err(unsupported(
            node,
            format!("the bias must be {m} int32 values"),
        ));
    }
    let mut bias = Vec::with_capacity(m);
    for (o, &v) in b.values.iter().enumerate() {
        let want = f64::from(input_scale) * f64::from(weight_scales[o]);
        let scale = f64::from(b.scale(o));
        if b.zero(o) != 0 || ((scale - want) / want).abs() > 1e-6 {
            return Err(unsupported(
                node,
                format!(
                    "bias channel {o}: scale {scale:e} and zero point {} where the input scale \
                     times the weight scale ({want:e}) and 0 are required",
                    b.zero(o)
                ),
            ));
        }
        bias.push(v as i32);
    }
    Ok(bias)
}

/// A pending conv closed by the `QuantizeLinear` `node` with output `params`: its
/// requantization, with a fused activation's bounds turned into the output range.
fn finish_conv(node: &pb::NodeProto, conv: PendingConv, params: QuantParams) -> Result<QuantConv> {
    let Some((lo, hi)) = params.stored_range(conv.lo, conv.hi) else {
        return Err(unsupported(
            node,
            "the activation's range is empty once quantized".into(),
        ));
    };
    let scale = conv
        .weight_scales
        .iter()
        .map(|&ws| Requant::multiplier(conv.input.scale, ws, params.scale))
        .collect();
    Ok(QuantConv {
        name: conv.name,
        shape: conv.shape,
        weights: conv.weights,
        bias: conv.bias,
        input: conv.input,
        requant: Requant {
            scale,
            zero: params.zero,
            lo,
            hi,
        },
        output: params,
    })
}
