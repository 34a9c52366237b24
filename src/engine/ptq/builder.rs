//! Builds an ONNX graph node by node: typed initializers, nodes with attributes, and the graph's
//! input and output descriptions. Only what the QDQ writer needs.

use crate::engine::onnx::pb;
use pb::attribute_proto::AttributeType;
use pb::tensor_shape_proto::dimension::Value as Dim;

/// ONNX element types written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// float32.
    F32 = 1,
    /// uint8.
    U8 = 2,
    /// int8.
    I8 = 3,
    /// int32.
    I32 = 6,
}

/// A node attribute's value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// An integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A string.
    Str(&'static str),
}

/// The nodes and initializers of a graph under construction, in order.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

impl GraphBuilder {
    /// Adds an initializer `name` of type `elem` and shape `dims` from little-endian `raw` bytes.
    pub fn initializer(&mut self, name: &str, elem: Elem, dims: &[usize], raw: Vec<u8>) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            data_type: elem as i32,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// A float32 initializer.
    pub fn f32s(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, Elem::F32, dims, raw)
    }

    /// An int32 initializer.
    pub fn i32s(&mut self, name: &str, dims: &[usize], values: &[i32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, Elem::I32, dims, raw)
    }

    /// An int8 initializer.
    pub fn i8s(&mut self, name: &str, dims: &[usize], values: &[i8]) -> String {
        let raw = values.iter().map(|&v| v as u8).collect();
        self.initializer(name, Elem::I8, dims, raw)
    }

    /// A uint8 initializer.
    pub fn u8s(&mut self, name: &str, dims: &[usize], values: &[u8]) -> String {
        self.initializer(name, Elem::U8, dims, values.to_vec())
    }

    /// Adds node `name` running `op` on `inputs` (an empty name skips an optional input) into
    /// one output, `output`, which it returns.
    pub fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: &[(&str, Attr)],
    ) -> String {
        let given = inputs
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |i| i + 1);
        self.nodes.push(pb::NodeProto {
            name: name.to_string(),
            op_type: op.to_string(),
            input: inputs[..given].iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
        output.to_string()
    }

    /// The finished graph with float32 `input` and `output` of the given dimensions (`None`:
    /// symbolic, named by the matching entry of `symbols`).
    pub fn finish(
        self,
        name: &str,
        input: (&str, &[Option<usize>]),
        output: (&str, &[Option<usize>]),
        symbols: &[&str],
    ) -> pb::GraphProto {
        pb::GraphProto {
            name: name.to_string(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(input.0, input.1, symbols)],
            output: vec![value_info(output.0, output.1, symbols)],
            ..Default::default()
        }
    }
}

fn attribute(name: &str, value: &Attr) -> pb::AttributeProto {
    let mut a = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = *i;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v.clone();
        }
        Attr::Str(s) => {
            a.r#type = AttributeType::String as i32;
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

fn value_info(name: &str, dims: &[Option<usize>], symbols: &[&str]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .enumerate()
        .map(|(i, d)| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(n) => Dim::DimValue(*n as i64),
                None => Dim::DimParam(symbols.get(i).copied().unwrap_or("d").to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Elem::F32 as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
