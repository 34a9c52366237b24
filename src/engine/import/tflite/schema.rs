//! The parts of the TFLite schema (`tensorflow/lite/schema/schema.fbs`) that MobileNet files use,
//! read into plain values: the model's first subgraph, its tensors with their quantization and
//! constant data, and its operators with their options. Field numbers are the schema's.

use super::flatbuffer::{Table, Vector};
use crate::error::{Error, Result};

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::MalformedModel(format!("TFLite: {what}"))
}

/// The file identifier at bytes 4..8 of every TFLite model.
pub const IDENTIFIER: &[u8; 4] = b"TFL3";

/// The builtin operators the importer knows by name (schema `BuiltinOperator`).
pub mod op {
    /// `AVERAGE_POOL_2D`.
    pub const AVERAGE_POOL_2D: i32 = 1;
    /// `CONV_2D`.
    pub const CONV_2D: i32 = 3;
    /// `DEPTHWISE_CONV_2D`.
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    /// `RESHAPE`.
    pub const RESHAPE: i32 = 22;
    /// `SOFTMAX`.
    pub const SOFTMAX: i32 = 25;
    /// `SQUEEZE`.
    pub const SQUEEZE: i32 = 43;

    /// A readable name for an operator code, for error messages.
    pub fn name(code: i32) -> String {
        let known = match code {
            0 => "ADD",
            AVERAGE_POOL_2D => "AVERAGE_POOL_2D",
            2 => "CONCATENATION",
            CONV_2D => "CONV_2D",
            DEPTHWISE_CONV_2D => "DEPTHWISE_CONV_2D",
            6 => "DEQUANTIZE",
            9 => "FULLY_CONNECTED",
            14 => "LOGISTIC",
            17 => "MAX_POOL_2D",
            18 => "MUL",
            19 => "RELU",
            21 => "RELU6",
            RESHAPE => "RESHAPE",
            23 => "RESIZE_BILINEAR",
            SOFTMAX => "SOFTMAX",
            28 => "TANH",
            34 => "PAD",
            40 => "MEAN",
            SQUEEZE => "SQUEEZE",
            114 => "QUANTIZE",
            32 => "CUSTOM",
            _ => return format!("builtin operator {code}"),
        };
        known.to_string()
    }
}

/// Element types (schema `TensorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// `FLOAT32`.
    F32,
    /// `INT32`.
    I32,
    /// `UINT8`.
    U8,
    /// `INT8`.
    I8,
    /// Anything else, by its schema number.
    Other(u8),
}

impl ElementType {
    fn from_code(code: u8) -> Self {
        match code {
            0 => ElementType::F32,
            2 => ElementType::I32,
            3 => ElementType::U8,
            9 => ElementType::I8,
            other => ElementType::Other(other),
        }
    }
}

/// A tensor's quantization: `real = (stored - zero) * scale`, per tensor or per channel along
/// `dimension`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quantization {
    /// One scale, or one per channel.
    pub scale: Vec<f32>,
    /// One zero point, or one per channel.
    pub zero: Vec<i64>,
    /// The channel axis of per-channel parameters.
    pub dimension: usize,
}

/// One tensor of the subgraph.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Its name (the layer's name for activations and weights).
    pub name: String,
    /// Its dimensions (`-1` unknown).
    pub shape: Vec<i32>,
    /// Its element type.
    pub element: ElementType,
    /// The index of its data in the model's buffers (0: none, it is computed).
    pub buffer: usize,
    /// Its quantization, when it has one.
    pub quantization: Option<Quantization>,
}

/// One operator: the builtin it runs, its tensor indices, and its options table.
#[derive(Debug, Clone)]
pub struct Operator<'a> {
    /// The builtin operator code (`op::*`), or -1 for a custom operator.
    pub code: i32,
    /// Input tensor indices (-1: an omitted optional input).
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
    /// Its builtin options, when present.
    pub options: Option<Table<'a>>,
}

/// Padding of a convolution or pool (schema `Padding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingKind {
    /// TensorFlow SAME.
    Same,
    /// No padding.
    Valid,
}

/// A fused activation (schema `ActivationFunctionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None.
    None,
    /// max(x, 0).
    Relu,
    /// clamp(x, -1, 1).
    ReluN1To1,
    /// clamp(x, 0, 6).
    Relu6,
    /// Any other, by its schema number.
    Other(u8),
}

/// The options of a convolution or pool that the importer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOptions {
    /// SAME or VALID.
    pub padding: PaddingKind,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Fused activation.
    pub activation: Activation,
    /// Dilation (columns, rows).
    pub dilation: (i32, i32),
    /// Depth multiplier (depthwise convolutions only).
    pub depth_multiplier: i32,
    /// Filter size (columns, rows) for pools.
    pub filter: (usize, usize),
}

/// A TFLite model: its single subgraph's tensors and operators, and its constant buffers.
#[derive(Debug)]
pub struct Model<'a> {
    /// Every tensor of the subgraph.
    pub tensors: Vec<Tensor>,
    /// Its operators, in execution order.
    pub operators: Vec<Operator<'a>>,
    /// Graph input tensor indices.
    pub inputs: Vec<i32>,
    /// Graph output tensor indices.
    pub outputs: Vec<i32>,
    buffers: Option<Vector<'a>>,
}

/// Whether `bytes` look like a TFLite model (the FlatBuffers file identifier `TFL3`).
pub fn is_tflite(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(IDENTIFIER.as_slice())
}

impl<'a> Model<'a> {
    /// Reads the model's structure (the weights stay in `bytes` until asked for).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if !is_tflite(bytes) {
            return Err(malformed("no `TFL3` file identifier"));
        }
        let root = Table::root(bytes)?;
        let codes = operator_codes(&root)?;
        let subgraphs = root.vector(2)?.ok_or_else(|| malformed("no subgraphs"))?;
        if subgraphs.len() != 1 {
            return Err(malformed(format!(
                "{} subgraphs: only single-graph models are supported",
                subgraphs.len()
            )));
        }
        let graph = subgraphs.table(0)?;
        let tensors = match graph.vector(0)? {
            Some(v) => (0..v.len())
                .map(|i| tensor(&v.table(i)?))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let operators = match graph.vector(3)? {
            Some(v) => (0..v.len())
                .map(|i| operator(&v.table(i)?, &codes))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let indices = |id: usize| -> Result<Vec<i32>> {
            Ok(graph
                .vector(id)?
                .map(|v| v.i32s())
                .transpose()?
                .unwrap_or_default())
        };
        Ok(Model {
            tensors,
            operators,
            inputs: indices(1)?,
            outputs: indices(2)?,
            buffers: root.vector(4)?,
        })
    }

    /// Tensor `index`, checked.
    pub fn tensor(&self, index: i32) -> Result<&Tensor> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.tensors.get(i))
            .ok_or_else(|| malformed(format!("tensor index {index} of {}", self.tensors.len())))
    }

    /// The constant data of `tensor`: its bytes, checked to hold `elements` values of `size`
    /// bytes. An error when the tensor is computed rather than constant.
    pub fn data(&self, tensor: &Tensor, elements: usize, size: usize) -> Result<&'a [u8]> {
        let empty = || malformed(format!("tensor `{}` has no constant data", tensor.name));
        let buffers = self.buffers.ok_or_else(empty)?;
        if tensor.buffer == 0 || tensor.buffer >= buffers.len() {
            return Err(empty());
        }
        let buffer = buffers.table(tensor.buffer)?;
        let data = match buffer.vector(0)? {
            Some(v) => v.bytes(1)?,
            // Files over 2 GB keep their data outside the flatbuffer (`offset`, `size`).
            None => return Err(empty()),
        };
        if Some(data.len()) != elements.checked_mul(size) {
            return Err(malformed(format!(
                "tensor `{}` holds {} bytes where its shape needs {elements} values of {size}",
                tensor.name,
                data.len()
            )));
        }
        Ok(data)
    }
}

/// The builtin code of each operator code entry: the larger of the deprecated 1-byte field and
/// the 4-byte one, as TFLite reads them (files before 2.3 fill only the first).
fn operator_codes(root: &Table<'_>) -> Result<Vec<i32>> {
    let Some(codes) = root.vector(1)? else {
        return Ok(Vec::new());
    };
    (0..codes.len())
        .map(|i| {
            let c = codes.table(i)?;
            if c.string(1)?.is_some() {
                return Ok(-1);
            }
            let deprecated = i32::from(c.u8(0, 0)? as i8);
            Ok(deprecated.max(c.i32(3, 0)?))
        })
        .collect()
}

fn tensor(t: &Table<'_>) -> Result<Tensor> {
    let quantization = match t.table(4)? {
        None => None,
        Some(q) => {
            let scale = q
                .vector(2)?
                .map(|v| v.f32s())
                .transpose()?
                .unwrap_or_default();
            let zero = q
                .vector(3)?
                .map(|v| v.i64s())
                .transpose()?
                .unwrap_or_default();
            let dimension = usize::try_from(q.i32(6, 0)?)
                .map_err(|_| malformed("a negative quantized dimension"))?;
            (!scale.is_empty()).then_some(Quantization {
                scale,
                zero,
                dimension,
            })
        }
    };
    Ok(Tensor {
        name: t.string(3)?.unwrap_or_default(),
        shape: t
            .vector(0)?
            .map(|v| v.i32s())
            .transpose()?
            .unwrap_or_default(),
        element: ElementType::from_code(t.u8(1, 0)?),
        buffer: t.u32(2, 0)? as usize,
        quantization,
    })
}

fn operator<'a>(o: &Table<'a>, codes: &[i32]) -> Result<Operator<'a>> {
    let index = o.u32(0, 0)? as usize;
    let code = *codes
        .get(index)
        .ok_or_else(|| malformed(format!("operator code {index} of {}", codes.len())))?;
    let list = |id: usize| -> Result<Vec<i32>> {
        Ok(o.vector(id)?
            .map(|v| v.i32s())
            .transpose()?
            .unwrap_or_default())
    };
    Ok(Operator {
        code,
        inputs: list(1)?,
        outputs: list(2)?,
        options: o.table(4)?,
    })
}

fn padding(code: u8) -> Result<PaddingKind> {
    match code {
        0 => Ok(PaddingKind::Same),
        1 => Ok(PaddingKind::Valid),
        other => Err(malformed(format!("padding {other}"))),
    }
}

fn activation(code: u8) -> Activation {
    match code {
        0 => Activation::None,
        1 => Activation::Relu,
        2 => Activation::ReluN1To1,
        3 => Activation::Relu6,
        other => Activation::Other(other),
    }
}

fn positive(v: i32, what: &str) -> Result<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| malformed(format!("{what} {v}")))
}

impl Operator<'_> {
    /// The options of a `CONV_2D` (`Conv2DOptions`), `DEPTHWISE_CONV_2D`
    /// (`DepthwiseConv2DOptions`) or `AVERAGE_POOL_2D` (`Pool2DOptions`): the three tables
    /// number their fields differently.
    pub fn window_options(&self) -> Result<WindowOptions> {
        let o = self
            .options
            .ok_or_else(|| malformed(format!("{} without options", op::name(self.code))))?;
        let stride = |id| positive(o.i32(id, 0)?, "stride");
        Ok(match self.code {
            op::CONV_2D => WindowOptions {
                padding: padding(o.u8(0, 0)?)?,
                stride_w: stride(1)?,
                stride_h: stride(2)?,
                activation: activation(o.u8(3, 0)?),
                dilation: (o.i32(4, 1)?, o.i32(5, 1)?),
                depth_multiplier: 1,
                filter: (0, 0),
            },
            op::DEPTHWISE_CONV_2D => WindowOptions {
                padding: padding(o.u8(0, 0)?)?,
                stride_w: stride(1)?,
                stride_h: stride(2)?,
                depth_multiplier: o.i32(3, 0)?,
                activation: activation(o.u8(4, 0)?),
                dilation: (o.i32(5, 1)?, o.i32(6, 1)?),
                filter: (0, 0),
            },
            op::AVERAGE_POOL_2D => WindowOptions {
                padding: padding(o.u8(0, 0)?)?,
                stride_w: stride(1)?,
                stride_h: stride(2)?,
                filter: (
                    positive(o.i32(3, 0)?, "filter width")?,
                    positive(o.i32(4, 0)?, "filter height")?,
                ),
                activation: activation(o.u8(5, 0)?),
                dilation: (1, 1),
                depth_multiplier: 1,
            },
            other => return Err(malformed(format!("{} has no window", op::name(other)))),
        })
    }

    /// `SoftmaxOptions.beta` (1 when absent).
    pub fn softmax_beta(&self) -> Result<f32> {
        self.options.map_or(Ok(1.0), |o| o.f32(0, 1.0))
    }
}

/// A copy of the model `bytes` for tract-tflite 0.23, whose `SQUEEZE` sorts the axes and removes
/// them one at a time without shifting the later ones past the removed ones (its
/// `ops/array.rs`, `de_squeeze`): the release's `[1, 2]` on `[1, 1, 1, 1001]` removes axis 1,
/// then fails on axis 2 of `[1, 1, 1001]`. Each list of non-negative axes is rewritten as that
/// removal needs it, sorted with the i-th less i (`[1, 2]` -> `[1, 1]`), so that tract removes
/// the axes the file means. For the reference engine only: the importer reads files as published.
pub fn squeeze_axes_for_tract(bytes: &[u8]) -> Result<Vec<u8>> {
    let model = Model::parse(bytes)?;
    let mut ranges = Vec::new();
    for o in model.operators.iter().filter(|o| o.code == op::SQUEEZE) {
        if let Some(dims) = o.options.map(|t| t.vector(0)).transpose()?.flatten() {
            ranges.push((dims.byte_range(4)?, dims.i32s()?));
        }
    }
    let mut out = bytes.to_vec();
    for (range, mut dims) in ranges {
        if dims.iter().any(|&d| d < 0) {
            continue;
        }
        dims.sort_unstable();
        let shifted: Vec<u8> = dims
            .iter()
            .enumerate()
            .flat_map(|(i, &d)| (d - i as i32).to_le_bytes())
            .collect();
        out[range].copy_from_slice(&shifted);
    }
    Ok(out)
}
