//! ONNX graph -> [`Plan`]: walks the node chain, folds batch-norm into the convolutions, fuses
//! activations and prepacks weights. Anything outside the supported set is refused with the node
//! and op named: a model we cannot run exactly must not load.

use std::collections::HashMap;

use super::onnx::{self, node_label, pb, Attrs, Constant};
use super::plan::{ConvKind, ConvLayer, FcLayer, InputLayout, Layer, Padding, Plan};
use crate::error::{Error, Result};
use crate::kernels::Clamp;

/// Imports an ONNX model from its bytes.
pub fn import_bytes(bytes: &[u8]) -> Result<Plan> {
    import_model(&onnx::decode_model(bytes)?)
}

/// Imports a decoded ONNX model.
pub fn import_model(model: &pb::ModelProto) -> Result<Plan> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::MalformedModel("the model has no graph".into()))?;
    Importer::new(graph, onnx::default_opset(model))?.run()
}

/// What the tensor flowing through the chain currently looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// A 4-D feature map in the graph's logical layout.
    Map {
        layout: InputLayout,
        channels: usize,
    },
    /// A 4-D `[N, C, 1, 1]` (or `[N, 1, 1, C]`) tensor after global pooling.
    Pooled { channels: usize },
    /// A 2-D `[N, C]` tensor.
    Flat { channels: usize },
    /// After the final softmax: nothing may follow.
    Softmaxed,
}

struct Importer<'g> {
    graph: &'g pb::GraphProto,
    opset: i64,
    consts: HashMap<String, Constant>,
    input_name: String,
    input_dims: Vec<Option<usize>>,
    layers: Vec<Layer>,
    stage: Stage,
    current: String,
    pending_pad: Option<[usize; 4]>,
    input_layout: InputLayout,
}

impl<'g> Importer<'g> {
    fn new(graph: &'g pb::GraphProto, opset: i64) -> Result<Self> {
        let consts = onnx::constants(graph)?;
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !consts.contains_key(&i.name))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(Error::MalformedModel(format!(
                "expected exactly one graph input (the image), found {}",
                inputs.len()
            )));
        };
        let input_dims = onnx::value_dims(input).unwrap_or_else(|| vec![None; 4]);
        if input_dims.len() != 4 {
            return Err(Error::MalformedModel(format!(
                "input `{}` has rank {}, expected a 4-D image batch",
                input.name,
                input_dims.len()
            )));
        }
        // The layout is decided by the first op: a Transpose to NCHW means the input is NHWC.
        let first = graph.node.iter().find(|n| n.op_type != "Constant");
        let nhwc = first.is_some_and(|n| {
            n.op_type == "Transpose" && Attrs(n).ints("perm").as_deref() == Some(&[0, 3, 1, 2][..])
        });
        let input_layout = if nhwc {
            InputLayout::Nhwc
        } else {
            InputLayout::Nchw
        };
        let channels_at = if nhwc { 3 } else { 1 };
        Ok(Importer {
            graph,
            opset,
            consts,
            input_name: input.name.clone(),
            stage: Stage::Map {
                layout: input_layout,
                channels: input_dims[channels_at].unwrap_or(0),
            },
            input_dims,
            layers: Vec::new(),
            current: input.name.clone(),
            pending_pad: None,
            input_layout,
        })
    }

    fn run(mut self) -> Result<Plan> {
        for node in &self.graph.node {
            if node.op_type == "Constant" {
                continue;
            }
            self.step(node)?;
        }
        let output = self
            .graph
            .output
            .first()
            .ok_or_else(|| Error::MalformedModel("the graph has no output".into()))?;
        if output.name != self.current {
            return Err(Error::MalformedModel(format!(
                "the graph output `{}` is not the end of the layer chain (`{}`)",
                output.name, self.current
            )));
        }
        let (classes, softmax) = match self.stage {
            Stage::Flat { channels } | Stage::Pooled { channels } => (channels, false),
            Stage::Softmaxed => (self.last_width(), true),
            Stage::Map { .. } => {
                return Err(Error::MalformedModel(
                    "the graph ends on a feature map; expected [N, classes] logits".into(),
                ))
            }
        };
        if self.pending_pad.is_some() {
            return Err(Error::MalformedModel(
                "a Pad op is not followed by a Conv".into(),
            ));
        }
        let (hi, wi) = match self.input_layout {
            InputLayout::Nchw => (2, 3),
            InputLayout::Nhwc => (1, 2),
        };
        let in_c = self
            .layers
            .iter()
            .find_map(|l| match l {
                Layer::Conv(c) => Some(c.in_c),
                _ => None,
            })
            .ok_or_else(|| Error::MalformedModel("the graph has no convolution".into()))?;
        Ok(Plan {
            input_name: self.input_name,
            input_layout: self.input_layout,
            in_c,
            height: self.input_dims[hi],
            width: self.input_dims[wi],
            layers: self.layers,
            output_name: output.name.clone(),
            classes,
            softmax,
        })
    }

    fn last_width(&self) -> usize {
        match self.layers.last() {
            Some(Layer::Conv(c)) => c.out_c,
            Some(Layer::Fc(f)) => f.out_c,
            _ => 0,
        }
    }

    fn step(&mut self, node: &pb::NodeProto) -> Result<()> {
        let refuse = |reason: String| Error::Unsupported {
            node: node_label(node),
            op: node.op_type.clone(),
            reason,
        };
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(refuse(format!("custom domain `{}`", node.domain)));
        }
        match node.input.first() {
            Some(x) if *x == self.current => {}
            Some(x) => {
                return Err(refuse(format!(
                    "the graph must be a single chain: input `{x}` is not the output of the \
                     previous layer (`{}`)",
                    self.current
                )))
            }
            None => return Err(refuse("node has no input".into())),
        }
        if self.stage == Stage::Softmaxed {
            return Err(refuse("nothing may follow the final Softmax".into()));
        }
        if self.pending_pad.is_some() && node.op_type != "Conv" {
            return Err(refuse("a Pad must be followed directly by a Conv".into()));
        }
        let out = node
            .output
            .first()
            .ok_or_else(|| refuse("node has no output".into()))?;
        match node.op_type.as_str() {
            "Conv" => self.conv(node),
            "BatchNormalization" => self.batch_norm(node),
            "Relu" => self.activation(node, Clamp::RELU),
            "Clip" => {
                let clamp = self.clip_bounds(node)?;
                self.activation(node, clamp)
            }
            "Pad" => self.pad(node),
            "Transpose" => self.transpose(node),
            "GlobalAveragePool" => self.pool(node, None),
            "AveragePool" => self.average_pool(node),
            "ReduceMean" => self.reduce_mean(node),
            "Flatten" => self.flatten(node),
            "Reshape" => self.reshape(node),
            "Squeeze" => self.squeeze(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            "Add" => self.add_bias(node),
            "Softmax" => self.softmax(node),
            "Dropout" | "Identity" => Ok(()),
            other => Err(refuse(format!(
                "operator {other} is not supported by the engine"
            ))),
        }
        .map_err(|e| match e {
            Error::MalformedModel(m) => refuse(m),
            e => e,
        })?;
        self.current = out.clone();
        Ok(())
    }

    fn constant(&self, node: &pb::NodeProto, index: usize, what: &str) -> Result<&Constant> {
        let name = node
            .input
            .get(index)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| unsupported(node, format!("missing {what} input")))?;
        self.consts.get(name).ok_or_else(|| {
            unsupported(
                node,
                format!("{what} `{name}` must be a constant (initializer)"),
            )
        })
    }

    fn optional_constant(&self, node: &pb::NodeProto, index: usize) -> Result<Option<&Constant>> {
        match node.input.get(index).filter(|n| !n.is_empty()) {
            None => Ok(None),
            Some(name) => self
                .consts
                .get(name)
                .map(Some)
                .ok_or_else(|| unsupported(node, format!("input `{name}` must be a constant"))),
        }
    }

    fn conv(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let w = self.constant(node, 1, "weight")?.clone();
        let [m, cg, kh, kw] = w.dims[..] else {
            return Err(unsupported(
                node,
                format!("weight shape {:?} is not 4-D", w.dims),
            ));
        };
        let group = a.int("group").unwrap_or(1).max(1) as usize;
        let in_c = cg * group;
        let bias = match self.optional_constant(node, 2)? {
            Some(b) if b.values.len() == m => b.to_f32(),
            Some(b) => {
                return Err(unsupported(
                    node,
                    format!("bias has {} values for {m} channels", b.values.len()),
                ))
            }
            None => vec![0.0; m],
        };
        if a.ints("dilations")
            .is_some_and(|d| d.iter().any(|&x| x != 1))
        {
            return Err(unsupported(
                node,
                "dilated convolutions are not supported".into(),
            ));
        }
        let strides = a.ints("strides").unwrap_or_else(|| vec![1, 1]);
        let [sh, sw] = strides[..] else {
            return Err(unsupported(node, format!("strides {strides:?}")));
        };
        if sh < 1 || sw < 1 {
            return Err(unsupported(node, format!("strides {strides:?}")));
        }
        if let Some(k) = a.ints("kernel_shape") {
            if k != [kh as i64, kw as i64] {
                return Err(unsupported(
                    node,
                    format!("kernel_shape {k:?} disagrees with the weights"),
                ));
            }
        }
        let mut padding = conv_padding(node)?;
        if let Some([t, l, b, r]) = self.pending_pad.take() {
            padding = match padding {
                Padding::Explicit {
                    top,
                    left,
                    bottom,
                    right,
                } => Padding::Explicit {
                    top: top + t,
                    left: left + l,
                    bottom: bottom + b,
                    right: right + r,
                },
                _ => return Err(unsupported(node, "a Pad before a SAME-padded Conv".into())),
            };
        }
        let channels = match self.stage {
            Stage::Map {
                layout: InputLayout::Nchw,
                channels,
            } => channels,
            Stage::Pooled { channels }
                if kh == 1 && kw == 1 && group == 1 && pads_nothing_1x1(padding) =>
            {
                // A 1x1 conv on the pooled vector is the classifier: a fully connected layer.
                if channels != in_c {
                    return Err(unsupported(
                        node,
                        format!("expects {in_c} channels, gets {channels}"),
                    ));
                }
                let weights = transpose_oi(&w.to_f32(), m, in_c);
                self.layers.push(Layer::Fc(FcLayer {
                    name: node_label(node),
                    in_c,
                    out_c: m,
                    weights,
                    bias,
                    act: Clamp::NONE,
                }));
                self.stage = Stage::Pooled { channels: m };
                return Ok(());
            }
            _ => {
                return Err(unsupported(
                    node,
                    format!(
                        "a Conv needs an NCHW feature map here, found {:?}",
                        self.stage
                    ),
                ))
            }
        };
        // The first conv fixes the channel count when the input shape left it symbolic.
        if channels != in_c && !(self.layers.is_empty() && channels == 0) {
            return Err(unsupported(
                node,
                format!("expects {in_c} input channels, gets {channels}"),
            ));
        }
        let raw = w.to_f32();
        let (kind, weights) = if group == 1 {
            let pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pads_nothing_1x1(padding);
            if pointwise {
                (ConvKind::Pointwise, transpose_oi(&raw, m, in_c))
            } else {
                (ConvKind::Dense, pack_dense(&raw, m, in_c, kh, kw))
            }
        } else if group == in_c && m == in_c && cg == 1 {
            (ConvKind::Depthwise, pack_depthwise(&raw, m, kh, kw))
        } else {
            return Err(unsupported(
                node,
                format!("grouped conv with group={group}, {in_c} -> {m} channels (only group=1 or depthwise)"),
            ));
        };
        self.layers.push(Layer::Conv(ConvLayer {
            name: node_label(node),
            kind,
            in_c,
            out_c: m,
            kh,
            kw,
            stride_h: sh as usize,
            stride_w: sw as usize,
            padding,
            weights,
            bias,
            act: Clamp::NONE,
        }));
        self.stage = Stage::Map {
            layout: InputLayout::Nchw,
            channels: m,
        };
        Ok(())
    }

    /// The last layer's output-channel-fastest weights, bias and activation, if it may still
    /// absorb a per-channel affine map or an activation.
    fn open_layer(
        &mut self,
        node: &pb::NodeProto,
    ) -> Result<(&mut Vec<f32>, &mut Vec<f32>, &mut Clamp)> {
        let last = match self.layers.last_mut() {
            Some(Layer::Conv(c)) => (&mut c.weights, &mut c.bias, &mut c.act),
            Some(Layer::Fc(f)) => (&mut f.weights, &mut f.bias, &mut f.act),
            _ => {
                return Err(unsupported(
                    node,
                    "must follow a Conv or a fully connected layer".into(),
                ))
            }
        };
        if !last.2.is_identity() {
            return Err(unsupported(
                node,
                "the previous layer already has an activation".into(),
            ));
        }
        Ok(last)
    }

    fn batch_norm(&mut self, node: &pb::NodeProto) -> Result<()> {
        let eps = Attrs(node).float("epsilon").unwrap_or(1e-5) as f64;
        let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|i| {
            self.constant(node, i, "batch-norm parameter")
                .map(|c| c.values.clone())
        });
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let (weights, bias, _) = self.open_layer(node)?;
        let c = bias.len();
        if [&gamma, &beta, &mean, &var].iter().any(|v| v.len() != c) {
            return Err(unsupported(
                node,
                format!("parameters do not have {c} channels"),
            ));
        }
        let scale: Vec<f64> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
        for (i, w) in weights.iter_mut().enumerate() {
            *w = (*w as f64 * scale[i % c]) as f32;
        }
        for i in 0..c {
            bias[i] = ((bias[i] as f64 - mean[i]) * scale[i] + beta[i]) as f32;
        }
        Ok(())
    }

    fn clip_bounds(&self, node: &pb::NodeProto) -> Result<Clamp> {
        let a = Attrs(node);
        if self.opset < 11 {
            return Ok(Clamp {
                lo: a.float("min").unwrap_or(f32::NEG_INFINITY),
                hi: a.float("max").unwrap_or(f32::INFINITY),
            });
        }
        let bound = |i: usize, default: f32| -> Result<f32> {
            match self.optional_constant(node, i)? {
                None => Ok(default),
                Some(c) => c
                    .scalar()
                    .map(|v| v as f32)
                    .ok_or_else(|| unsupported(node, "clip bounds must be scalars".into())),
            }
        };
        Ok(Clamp {
            lo: bound(1, f32::NEG_INFINITY)?,
            hi: bound(2, f32::INFINITY)?,
        })
    }

    fn activation(&mut self, node: &pb::NodeProto, clamp: Clamp) -> Result<()> {
        if clamp.lo > clamp.hi {
            return Err(unsupported(
                node,
                format!("empty range [{}, {}]", clamp.lo, clamp.hi),
            ));
        }
        let (_, _, act) = self.open_layer(node)?;
        *act = clamp;
        Ok(())
    }

    fn pad(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let mode = a.string("mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(unsupported(
                node,
                format!("pad mode `{mode}` (only constant zero padding)"),
            ));
        }
        let (pads, value) = if self.opset < 11 {
            (
                a.ints("pads").unwrap_or_default(),
                a.float("value").unwrap_or(0.0) as f64,
            )
        } else {
            let pads = self.constant(node, 1, "pads")?.to_i64();
            let value = self
                .optional_constant(node, 2)?
                .and_then(|c| c.scalar())
                .unwrap_or(0.0);
            (pads, value)
        };
        if value != 0.0 {
            return Err(unsupported(node, format!("pad value {value} (only zero)")));
        }
        let Stage::Map { layout, .. } = self.stage else {
            return Err(unsupported(
                node,
                "Pad is only supported on a feature map".into(),
            ));
        };
        let [n0, a1, a2, a3, n1, b1, b2, b3] = pads[..] else {
            return Err(unsupported(node, format!("pads {pads:?} are not 4-D")));
        };
        let (ch, [t, l, b, r]) = match layout {
            InputLayout::Nchw => ([a1, b1], [a2, a3, b2, b3]),
            InputLayout::Nhwc => ([a3, b3], [a1, a2, b1, b2]),
        };
        if n0 != 0
            || n1 != 0
            || ch != [0, 0]
            || [t, l, b, r].iter().any(|p| !(0..=MAX_PAD).contains(p))
        {
            return Err(unsupported(
                node,
                format!("pads {pads:?}: only spatial padding of 0..={MAX_PAD}"),
            ));
        }
        self.pending_pad = Some([t, l, b, r].map(|p| p as usize));
        Ok(())
    }

    fn transpose(&mut self, node: &pb::NodeProto) -> Result<()> {
        let perm = Attrs(node).ints("perm").unwrap_or_default();
        self.stage = match (self.stage, perm.as_slice()) {
            (
                Stage::Map {
                    layout: InputLayout::Nhwc,
                    channels,
                },
                [0, 3, 1, 2],
            ) => Stage::Map {
                layout: InputLayout::Nchw,
                channels,
            },
            (
                Stage::Map {
                    layout: InputLayout::Nchw,
                    channels,
                },
                [0, 2, 3, 1],
            ) => Stage::Map {
                layout: InputLayout::Nhwc,
                channels,
            },
            // With both spatial dims of size 1, any permutation that keeps the batch first leaves
            // the data in the same order.
            (Stage::Pooled { channels }, [0, ..]) if perm.len() == 4 => Stage::Pooled { channels },
            (stage, _) => return Err(unsupported(node, format!("perm {perm:?} on {stage:?}"))),
        };
        Ok(())
    }

    fn pool(&mut self, node: &pb::NodeProto, window: Option<(usize, usize)>) -> Result<()> {
        let Stage::Map {
            layout: InputLayout::Nchw,
            channels,
        } = self.stage
        else {
            return Err(unsupported(
                node,
                format!("pooling needs an NCHW feature map, found {:?}", self.stage),
            ));
        };
        self.layers.push(Layer::GlobalAvgPool { window });
        self.stage = Stage::Pooled { channels };
        Ok(())
    }

    fn average_pool(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let k = a.ints("kernel_shape").unwrap_or_default();
        let [kh, kw] = k[..] else {
            return Err(unsupported(node, format!("kernel_shape {k:?}")));
        };
        let pads = a.ints("pads").unwrap_or_default();
        let auto_pad = a.string("auto_pad").unwrap_or_default();
        if pads.iter().any(|&p| p != 0)
            || !matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID")
            || a.int("ceil_mode").unwrap_or(0) != 0
        {
            return Err(unsupported(
                node,
                "only an unpadded AveragePool over the whole map is supported".into(),
            ));
        }
        self.pool(node, Some((kh.max(0) as usize, kw.max(0) as usize)))
    }

    /// The `axes` of a reduction or squeeze on a 4-D tensor (an attribute before opset 13/18,
    /// an input after), made non-negative and sorted.
    fn axes(&self, node: &pb::NodeProto) -> Result<Vec<i64>> {
        let axes = match Attrs(node).ints("axes") {
            Some(axes) => axes,
            None => self
                .optional_constant(node, 1)?
                .map(|c| c.to_i64())
                .unwrap_or_default(),
        };
        let mut axes: Vec<i64> = axes
            .iter()
            .map(|&x| if x < 0 { x + 4 } else { x })
            .collect();
        axes.sort_unstable();
        Ok(axes)
    }

    fn reduce_mean(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let axes = self.axes(node)?;
        let Stage::Map { layout, channels } = self.stage else {
            return Err(unsupported(
                node,
                "ReduceMean must reduce a feature map".into(),
            ));
        };
        let spatial: &[i64] = match layout {
            InputLayout::Nchw => &[2, 3],
            InputLayout::Nhwc => &[1, 2],
        };
        if axes != spatial {
            return Err(unsupported(
                node,
                format!("reduces axes {axes:?}; only the spatial axes {spatial:?}"),
            ));
        }
        self.layers.push(Layer::GlobalAvgPool { window: None });
        // keepdims=0 gives [N, C] directly.
        self.stage = if a.int("keepdims").unwrap_or(1) == 0 {
            Stage::Flat { channels }
        } else {
            Stage::Pooled { channels }
        };
        Ok(())
    }

    fn flatten_pooled(&mut self, node: &pb::NodeProto) -> Result<()> {
        self.stage = match self.stage {
            Stage::Pooled { channels } | Stage::Flat { channels } => Stage::Flat { channels },
            stage => {
                return Err(unsupported(
                    node,
                    format!("flattening {stage:?} is not supported (only after global pooling)"),
                ))
            }
        };
        Ok(())
    }

    fn flatten(&mut self, node: &pb::NodeProto) -> Result<()> {
        let axis = Attrs(node).int("axis").unwrap_or(1);
        if axis != 1 {
            return Err(unsupported(node, format!("axis {axis} (only 1)")));
        }
        self.flatten_pooled(node)
    }

    fn reshape(&mut self, node: &pb::NodeProto) -> Result<()> {
        let shape = self.constant(node, 1, "shape")?.to_i64();
        let channels = match self.stage {
            Stage::Pooled { channels } | Stage::Flat { channels } => channels as i64,
            _ => -2,
        };
        let ok = matches!(shape[..], [n, c] if (n == -1 || n == 0) && (c == channels || c == -1) && !(n == -1 && c == -1));
        if !ok {
            return Err(unsupported(
                node,
                format!("reshape to {shape:?}; only [N, C] after global pooling"),
            ));
        }
        self.flatten_pooled(node)
    }

    fn squeeze(&mut self, node: &pb::NodeProto) -> Result<()> {
        let axes = self.axes(node)?;
        if !(axes == [2, 3] || axes == [1, 2]) {
            return Err(unsupported(
                node,
                format!("squeeze axes {axes:?}; only the two spatial axes"),
            ));
        }
        self.flatten_pooled(node)
    }

    fn fc_input(&self, node: &pb::NodeProto) -> Result<usize> {
        match self.stage {
            Stage::Flat { channels } => Ok(channels),
            stage => Err(unsupported(
                node,
                format!("needs a [N, C] input, found {stage:?}"),
            )),
        }
    }

    fn gemm(&mut self, node: &pb::NodeProto) -> Result<()> {
        let a = Attrs(node);
        let in_c = self.fc_input(node)?;
        if a.int("transA").unwrap_or(0) != 0 {
            return Err(unsupported(node, "transA=1".into()));
        }
        let trans_b = a.int("transB").unwrap_or(0) != 0;
        let alpha = a.float("alpha").unwrap_or(1.0);
        let beta = a.float("beta").unwrap_or(1.0);
        let b = self.constant(node, 1, "B")?;
        let [r, c] = b.dims[..] else {
            return Err(unsupported(node, format!("B shape {:?}", b.dims)));
        };
        let (k, n) = if trans_b { (c, r) } else { (r, c) };
        if k != in_c {
            return Err(unsupported(
                node,
                format!("B expects {k} features, gets {in_c}"),
            ));
        }
        let raw = b.to_f32();
        let mut weights = if trans_b {
            transpose_oi(&raw, n, k)
        } else {
            raw
        };
        weights.iter_mut().for_each(|w| *w *= alpha);
        let bias = match self.optional_constant(node, 2)? {
            None => vec![0.0; n],
            Some(c) => broadcast_bias(node, c, n)?
                .into_iter()
                .map(|v| v * beta)
                .collect(),
        };
        self.push_fc(node, in_c, n, weights, bias);
        Ok(())
    }

    fn matmul(&mut self, node: &pb::NodeProto) -> Result<()> {
        let in_c = self.fc_input(node)?;
        let b = self.constant(node, 1, "B")?;
        let [k, n] = b.dims[..] else {
            return Err(unsupported(node, format!("B shape {:?}", b.dims)));
        };
        if k != in_c {
            return Err(unsupported(
                node,
                format!("B expects {k} features, gets {in_c}"),
            ));
        }
        let weights = b.to_f32();
        self.push_fc(node, in_c, n, weights, vec![0.0; n]);
        Ok(())
    }

    fn push_fc(
        &mut self,
        node: &pb::NodeProto,
        in_c: usize,
        out_c: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) {
        self.layers.push(Layer::Fc(FcLayer {
            name: node_label(node),
            in_c,
            out_c,
            weights,
            bias,
            act: Clamp::NONE,
        }));
        self.stage = Stage::Flat { channels: out_c };
    }

    fn add_bias(&mut self, node: &pb::NodeProto) -> Result<()> {
        let addend = self.constant(node, 1, "addend")?.clone();
        let (_, bias, _) = self.open_layer(node)?;
        let c = bias.len();
        let per_channel = broadcast_bias(node, &addend, c)?;
        for (b, v) in bias.iter_mut().zip(per_channel) {
            *b += v;
        }
        Ok(())
    }

    fn softmax(&mut self, node: &pb::NodeProto) -> Result<()> {
        let default_axis = if self.opset < 13 { 1 } else { -1 };
        let axis = Attrs(node).int("axis").unwrap_or(default_axis);
        if !matches!(self.stage, Stage::Flat { .. }) || !(axis == 1 || axis == -1) {
            return Err(unsupported(
                node,
                format!(
                    "softmax over axis {axis} of {:?}; only over the classes of [N, C]",
                    self.stage
                ),
            ));
        }
        self.stage = Stage::Softmaxed;
        Ok(())
    }
}

fn unsupported(node: &pb::NodeProto, reason: String) -> Error {
    Error::Unsupported {
        node: node_label(node),
        op: node.op_type.clone(),
        reason,
    }
}

/// A per-channel bias from a constant of `c` values (any shape whose non-unit dims are `[c]`) or
/// a scalar.
fn broadcast_bias(node: &pb::NodeProto, k: &Constant, c: usize) -> Result<Vec<f32>> {
    let non_unit: Vec<usize> = k.dims.iter().copied().filter(|&d| d != 1).collect();
    if k.values.len() == 1 {
        return Ok(vec![k.values[0] as f32; c]);
    }
    // A 4-D addend on a feature map must sit on the channel axis (NCHW: [1, C, 1, 1]).
    let on_channel_axis = k.dims.len() != 4 || k.dims[1] == c;
    if non_unit == [c] && on_channel_axis {
        return Ok(k.to_f32());
    }
    Err(unsupported(
        node,
        format!(
            "addend of shape {:?} is not a per-channel bias of {c}",
            k.dims
        ),
    ))
}

/// Largest padding accepted on one side; real networks pad by a few pixels, and the bound keeps
/// size arithmetic far from overflow on hostile files.
const MAX_PAD: i64 = 1024;

/// Whether a 1x1 kernel with this padding reads exactly its own pixel (SAME pads a 1x1 kernel by
/// nothing).
fn pads_nothing_1x1(padding: Padding) -> bool {
    matches!(
        padding,
        Padding::SameUpper
            | Padding::SameLower
            | Padding::Explicit {
                top: 0,
                left: 0,
                bottom: 0,
                right: 0
            }
    )
}

/// ONNX conv padding: `auto_pad` or explicit `pads` `[top, left, bottom, right]`.
fn conv_padding(node: &pb::NodeProto) -> Result<Padding> {
    let a = Attrs(node);
    match a.string("auto_pad").unwrap_or_default().as_str() {
        "SAME_UPPER" => return Ok(Padding::SameUpper),
        "SAME_LOWER" => return Ok(Padding::SameLower),
        "" | "NOTSET" | "VALID" => {}
        other => return Err(unsupported(node, format!("auto_pad `{other}`"))),
    }
    let pads = a.ints("pads").unwrap_or_else(|| vec![0; 4]);
    match pads[..] {
        [t, l, b, r] if pads.iter().all(|p| (0..=MAX_PAD).contains(p)) => Ok(Padding::Explicit {
            top: t as usize,
            left: l as usize,
            bottom: b as usize,
            right: r as usize,
        }),
        _ => Err(unsupported(node, format!("pads {pads:?}"))),
    }
}

/// `[out][in]` (ONNX OI, trailing 1x1 ignored) -> `[in][out]`.
fn transpose_oi(w: &[f32], out_c: usize, in_c: usize) -> Vec<f32> {
    let mut packed = vec![0.0; w.len()];
    for o in 0..out_c {
        for i in 0..in_c {
            packed[i * out_c + o] = w[o * in_c + i];
        }
    }
    packed
}

/// ONNX `[out][in][kh][kw]` -> `[kh][kw][in][out]`.
fn pack_dense(w: &[f32], out_c: usize, in_c: usize, kh: usize, kw: usize) -> Vec<f32> {
    let mut packed = vec![0.0; w.len()];
    for o in 0..out_c {
        for i in 0..in_c {
            for y in 0..kh {
                for x in 0..kw {
                    packed[((y * kw + x) * in_c + i) * out_c + o] =
                        w[((o * in_c + i) * kh + y) * kw + x];
                }
            }
        }
    }
    packed
}

/// ONNX `[c][1][kh][kw]` -> `[kh][kw][c]`.
fn pack_depthwise(w: &[f32], c: usize, kh: usize, kw: usize) -> Vec<f32> {
    let mut packed = vec![0.0; w.len()];
    for ch in 0..c {
        for y in 0..kh {
            for x in 0..kw {
                packed[(y * kw + x) * c + ch] = w[(ch * kh + y) * kw + x];
            }
        }
    }
    packed
}
