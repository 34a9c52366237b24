//! Builds small ONNX graphs in memory, so importer tests need no files.

use mobilenet_serve::engine::onnx::pb;
use prost::Message;

/// A tensor dimension: fixed or symbolic.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Sym(&'static str),
}

/// An attribute value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

/// Accumulates nodes and initializers of one graph.
pub struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input: pb::ValueInfoProto,
    opset: i64,
    counter: usize,
}

impl GraphBuilder {
    /// A graph whose single float input `input` has `shape`.
    pub fn new(shape: &[Dim], opset: i64) -> Self {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = shape
            .iter()
            .map(|d| Dimension {
                denotation: String::new(),
                value: Some(match d {
                    Dim::Fixed(n) => Value::DimValue(*n),
                    Dim::Sym(s) => Value::DimParam(s.to_string()),
                }),
            })
            .collect();
        let input = pb::ValueInfoProto {
            name: "input".into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto { dim }),
                })),
            }),
            doc_string: String::new(),
        };
        GraphBuilder {
            nodes: vec![],
            inits: vec![],
            input,
            opset,
            counter: 0,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    /// Adds a float initializer and returns its name.
    pub fn init(&mut self, dims: &[i64], data: Vec<f32>) -> String {
        assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let name = self.fresh("w");
        // Alternate between raw_data and float_data so both encodings are exercised.
        let raw = self.counter.is_multiple_of(2);
        self.inits.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: 1,
            raw_data: if raw {
                data.iter().flat_map(|v| v.to_le_bytes()).collect()
            } else {
                vec![]
            },
            float_data: if raw { vec![] } else { data },
            ..Default::default()
        });
        name
    }

    /// Adds an int64 initializer and returns its name.
    pub fn init_i64(&mut self, dims: &[i64], data: Vec<i64>) -> String {
        let name = self.fresh("k");
        self.inits.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: 7,
            int64_data: data,
            ..Default::default()
        });
        name
    }

    /// Adds an integer initializer of ONNX type `data_type` (2 uint8, 3 int8, 6 int32) and
    /// returns its name. 8-bit values go in `raw_data`, int32 ones in `int32_data`, as exporters
    /// write them.
    pub fn init_int(&mut self, dims: &[i64], data_type: i32, data: &[i64]) -> String {
        assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let name = self.fresh("q");
        let mut t = pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type,
            ..Default::default()
        };
        match data_type {
            2 | 3 => t.raw_data = data.iter().map(|&v| v as u8).collect(),
            6 => t.int32_data = data.iter().map(|&v| v as i32).collect(),
            other => panic!("init_int: type {other}"),
        }
        self.inits.push(t);
        name
    }

    /// Adds a node with a generated name and output; returns the output name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_lowercase());
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = pb::AttributeProto {
                    name: name.into(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.r#type = 2;
                        p.i = i
                    }
                    Attr::Ints(v) => {
                        p.r#type = 7;
                        p.ints = v
                    }
                    Attr::Float(f) => {
                        p.r#type = 1;
                        p.f = f
                    }
                    Attr::Str(s) => {
                        p.r#type = 3;
                        p.s = s.as_bytes().to_vec()
                    }
                }
                p
            })
            .collect();
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("{}_node", out),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        out
    }

    /// The finished model, with `output` as the graph output, as protobuf bytes.
    pub fn finish(self, output: &str) -> Vec<u8> {
        self.model(output).encode_to_vec()
    }

    /// The finished model proto.
    pub fn model(self, output: &str) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: "test".into(),
                initializer: self.inits,
                input: vec![self.input],
                output: vec![pb::ValueInfoProto {
                    name: output.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
