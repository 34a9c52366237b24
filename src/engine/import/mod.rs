//! ONNX graph -> [`Plan`]: walks the node chain, folds batch-norm into the convolutions, fuses
//! activations and prepacks weights. Anything outside the supported set is refused with the node
//! and op named: a model we cannot run exactly must not load.
//!
//! This module walks the graph and checks its shape (one input, a single chain of nodes from it
//! to the output, each op allowed at the current stage, logits at the end); the lowering of each
//! op is in [`conv`] (the convolution family) and [`head`] (pooling to the classifier), the
//! weight layouts in [`weights`]. Quantized (QDQ) graphs have their own walk, [`qdq`], and
//! TFLite files theirs, [`tflite`].

mod attrs;
mod conv;
mod head;
mod imported;
mod qdq;
mod tflite;
mod weights;

pub use imported::Imported;
pub use qdq::{import_quantized, import_quantized_bytes};
pub use tflite::{import_tflite, is_tflite, squeeze_axes_for_tract};

use std::collections::HashMap;

use super::onnx::{self, node_label, pb, Attrs, Constant};
use super::plan::{InputLayout, Layer, Plan};
use crate::error::{Error, Result};
use crate::kernels::Clamp;

/// Imports a model of either kind from its bytes: a TFLite file (float32 or uint8), or an ONNX
/// graph, quantized when it has `QuantizeLinear` or `DequantizeLinear` nodes (and then
/// throughout).
pub fn import_any(bytes: &[u8]) -> Result<Imported> {
    if is_tflite(bytes) {
        return import_tflite(bytes);
    }
    let model = onnx::decode_model(bytes)?;
    let quantized = model.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")
    });
    if quantized {
        import_quantized(&model).map(Imported::Quantized)
    } else {
        import_model(&model).map(Imported::Float)
    }
}

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
        let (input, input_dims) = attrs::image_input(graph, &consts)?;
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
        let output = attrs::chain_output(self.graph, &self.current)?;
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
        attrs::constant(&self.consts, node, index, what)
    }

    fn optional_constant(&self, node: &pb::NodeProto, index: usize) -> Result<Option<&Constant>> {
        attrs::optional_constant(&self.consts, node, index)
    }
}
