//! Thin helpers over the ONNX protobuf types (tract-onnx's generated `pb` module): decoding a
//! model, reading constant tensors and node attributes.

use std::collections::HashMap;

use prost::Message;
pub use tract_onnx::pb;

use crate::error::{Error, Result};

const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;
const INT64: i32 = 7;
const DOUBLE: i32 = 11;

/// Decodes an ONNX model from its protobuf bytes.
pub fn decode_model(bytes: &[u8]) -> Result<pb::ModelProto> {
    pb::ModelProto::decode(bytes)
        .map_err(|e| Error::MalformedModel(format!("not an ONNX protobuf: {e}")))
}

/// Opset of the default ONNX domain (the `ai.onnx` operators).
pub fn default_opset(model: &pb::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(1)
}

/// A constant tensor read out of an initializer or a `Constant` node.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    /// Its shape.
    pub dims: Vec<usize>,
    /// Its values converted to f64 (exact for every integer type read: 8 and 32 bits, and the
    /// small 64-bit integers used as shapes and axes).
    pub values: Vec<f64>,
    /// Its element type, as the quantization ops need it (a zero point's type is the type of
    /// the quantized tensor).
    pub element: Element,
}

/// The element type of a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// float32 or float64.
    Float,
    /// uint8.
    U8,
    /// int8.
    I8,
    /// int32.
    I32,
    /// int64.
    I64,
}

impl Constant {
    /// The values as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }

    /// The values as integers (shapes, axes, pads).
    pub fn to_i64(&self) -> Vec<i64> {
        self.values.iter().map(|&v| v as i64).collect()
    }

    /// The single value of a scalar (or one-element) tensor.
    pub fn scalar(&self) -> Option<f64> {
        (self.values.len() == 1).then(|| self.values[0])
    }
}

/// Reads a tensor proto into a [`Constant`].
pub fn read_tensor(t: &pb::TensorProto) -> Result<Constant> {
    let bad = |why: &str| Error::MalformedModel(format!("tensor `{}`: {why}", t.name));
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(bad(
            "external data files are not supported; re-export with embedded weights",
        ));
    }
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad("negative dimension")))
        .collect::<Result<Vec<_>>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad("dimensions overflow"))?;
    let raw = &t.raw_data;
    let values: Vec<f64> = match t.data_type {
        FLOAT if !raw.is_empty() => le_chunks::<4>(raw)
            .map(|b| f32::from_le_bytes(b) as f64)
            .collect(),
        FLOAT => t.float_data.iter().map(|&v| v as f64).collect(),
        DOUBLE if !raw.is_empty() => le_chunks::<8>(raw).map(f64::from_le_bytes).collect(),
        DOUBLE => t.double_data.clone(),
        INT64 if !raw.is_empty() => le_chunks::<8>(raw)
            .map(|b| i64::from_le_bytes(b) as f64)
            .collect(),
        INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        INT32 if !raw.is_empty() => le_chunks::<4>(raw)
            .map(|b| i32::from_le_bytes(b) as f64)
            .collect(),
        INT32 => t.int32_data.iter().map(|&v| v as f64).collect(),
        UINT8 if !raw.is_empty() => raw.iter().map(|&b| f64::from(b)).collect(),
        INT8 if !raw.is_empty() => raw.iter().map(|&b| f64::from(b as i8)).collect(),
        // Without raw data, ONNX stores 8-bit values in int32_data.
        UINT8 | INT8 => t.int32_data.iter().map(|&v| v as f64).collect(),
        other => {
            return Err(bad(&format!(
                "data type {other} is not supported (float, double, int8, uint8, int32, int64 \
                 are)"
            )))
        }
    };
    let element = match t.data_type {
        UINT8 => Element::U8,
        INT8 => Element::I8,
        INT32 => Element::I32,
        INT64 => Element::I64,
        _ => Element::Float,
    };
    if values.len() != count {
        return Err(bad(&format!(
            "{} values for shape {:?}",
            values.len(),
            dims
        )));
    }
    Ok(Constant {
        dims,
        values,
        element,
    })
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        b
    })
}

/// Every constant of a graph by name: initializers and the outputs of `Constant` nodes.
pub fn constants(graph: &pb::GraphProto) -> Result<HashMap<String, Constant>> {
    let mut map = HashMap::new();
    for t in &graph.initializer {
        map.insert(t.name.clone(), read_tensor(t)?);
    }
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        let value = match n.attribute.iter().find(|a| a.name == "value") {
            Some(a) => a.t.as_ref().map(read_tensor).transpose()?,
            None => {
                let a = n.attribute.iter().find(|a| {
                    matches!(
                        a.name.as_str(),
                        "value_float" | "value_int" | "value_floats" | "value_ints"
                    )
                });
                a.map(|a| match a.name.as_str() {
                    "value_float" => Constant {
                        dims: vec![],
                        values: vec![a.f as f64],
                        element: Element::Float,
                    },
                    "value_int" => Constant {
                        dims: vec![],
                        values: vec![a.i as f64],
                        element: Element::I64,
                    },
                    "value_floats" => Constant {
                        dims: vec![a.floats.len()],
                        values: a.floats.iter().map(|&v| v as f64).collect(),
                        element: Element::Float,
                    },
                    _ => Constant {
                        dims: vec![a.ints.len()],
                        values: a.ints.iter().map(|&v| v as f64).collect(),
                        element: Element::I64,
                    },
                })
            }
        };
        let value = value.ok_or_else(|| Error::Unsupported {
            node: node_label(n),
            op: n.op_type.clone(),
            reason: "only tensor, float and int constants are supported".into(),
        })?;
        if let Some(out) = n.output.first() {
            map.insert(out.clone(), value);
        }
    }
    Ok(map)
}

/// A node's name for messages: its name, else its first output.
pub fn node_label(n: &pb::NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

/// Typed access to a node's attributes.
pub struct Attrs<'a>(pub &'a pb::NodeProto);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).map(|a| a.i)
    }

    /// A float attribute.
    pub fn float(&self, name: &str) -> Option<f32> {
        self.get(name).map(|a| a.f)
    }

    /// An integer-list attribute.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    /// A string attribute.
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// Names of every attribute present.
    pub fn names(&self) -> Vec<&str> {
        self.0.attribute.iter().map(|a| a.name.as_str()).collect()
    }
}

/// Static dimensions of a value: `Some(n)` for a fixed size, `None` for a symbolic one.
pub fn value_dims(v: &pb::ValueInfoProto) -> Option<Vec<Option<usize>>> {
    use pb::tensor_shape_proto::dimension::Value;
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(n)) if n > 0 => Some(n as usize),
                _ => None,
            })
            .collect(),
    )
}
