//! The importer on synthetic graphs: every accepted export style must give the same outputs as
//! tract on the same graph; every refused construct must name its node and op.

use crate::common;

use common::onnx_builder::{Attr, Dim, GraphBuilder};
use common::random_vec;
use mobilenet_serve::engine::import::{import_bytes, import_model};
use mobilenet_serve::engine::model::Model;
use mobilenet_serve::engine::plan::{ConvKind, InputLayout, Layer};
use mobilenet_serve::engine::reference::TractReference;
use mobilenet_serve::kernels::KernelSet;
use mobilenet_serve::Error;

/// Which conventions a synthetic MobileNet-like graph is exported with.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// NHWC input followed by a Transpose (tf2onnx).
    nhwc: bool,
    /// Bias-free convs followed by BatchNormalization (PyTorch).
    unfolded_bn: bool,
    /// ONNX opset: below 11 Clip takes attributes, from 11 on inputs.
    opset: i64,
    /// ReLU6 as Clip (else Relu).
    relu6: bool,
    /// Stride-2 padding as a separate Pad op (else explicit asymmetric `pads`); `auto_pad` SAME_UPPER
    /// when `same_upper`.
    pad_op: bool,
    same_upper: bool,
    /// How the map is pooled.
    pool: Pool,
    /// How the classifier is written.
    head: Head,
    softmax: bool,
    /// Fixed spatial input size (else symbolic).
    fixed: bool,
}

#[derive(Debug, Clone, Copy)]
enum Pool {
    Global,
    ReduceMean,
    WholeMapAverage,
}

#[derive(Debug, Clone, Copy)]
enum Head {
    FlattenGemm { trans_b: bool },
    ReshapeMatMulAdd,
    SqueezeGemm,
    Conv1x1ThenFlatten,
}

const BASE: Style = Style {
    nhwc: false,
    unfolded_bn: false,
    opset: 13,
    relu6: true,
    pad_op: false,
    same_upper: false,
    pool: Pool::Global,
    head: Head::FlattenGemm { trans_b: true },
    softmax: false,
    fixed: false,
};

const SIZE: i64 = 32;
const CLASSES: i64 = 11;

struct Net {
    b: GraphBuilder,
    seed: u64,
    style: Style,
}

impl Net {
    fn weights(&mut self, dims: &[i64], scale: f32) -> String {
        self.seed += 1;
        let n = dims.iter().product::<i64>() as usize;
        self.b.init(dims, random_vec(n, self.seed, scale))
    }

    fn positive(&mut self, c: i64) -> String {
        self.seed += 1;
        let v = random_vec(c as usize, self.seed, 0.4)
            .into_iter()
            .map(|x| 1.0 + x)
            .collect();
        self.b.init(&[c], v)
    }

    fn act(&mut self, x: &str) -> String {
        let s = self.style;
        if !s.relu6 {
            return self.b.node("Relu", &[x], vec![]);
        }
        if s.opset < 11 {
            return self.b.node(
                "Clip",
                &[x],
                vec![("min", Attr::Float(0.0)), ("max", Attr::Float(6.0))],
            );
        }
        let lo = self.b.init(&[], vec![0.0]);
        let hi = self.b.init(&[], vec![6.0]);
        self.b.node("Clip", &[x, &lo, &hi], vec![])
    }

    /// Conv (+ BN) + activation.
    fn conv(
        &mut self,
        x: &str,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        depthwise: bool,
    ) -> String {
        let s = self.style;
        let group = if depthwise { cin } else { 1 };
        // He-style scale keeps the signal alive through the stack, so that a wrong tap or pad
        // changes the logits well beyond the tolerance.
        let fan_in = ((cin / group) * k * k) as f32;
        let w = self.weights(&[cout, cin / group, k, k], 2.5 / fan_in.sqrt());
        let mut attrs = vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![stride, stride])),
            ("group", Attr::Int(group)),
        ];
        let mut x = x.to_string();
        if k > 1 {
            if s.same_upper {
                attrs.push(("auto_pad", Attr::Str("SAME_UPPER")));
            } else if stride == 2 && s.pad_op {
                let pads = [0, 0, 0, 0, 0, 0, 1, 1];
                x = if s.opset < 11 {
                    self.b.node(
                        "Pad",
                        &[&x],
                        vec![
                            ("pads", Attr::Ints(pads.to_vec())),
                            ("mode", Attr::Str("constant")),
                        ],
                    )
                } else {
                    let p = self.b.init_i64(&[8], pads.to_vec());
                    self.b.node("Pad", &[&x, &p], vec![])
                };
            } else if stride == 2 {
                attrs.push(("pads", Attr::Ints(vec![0, 0, 1, 1])));
            } else {
                attrs.push(("pads", Attr::Ints(vec![1, 1, 1, 1])));
            }
        }
        let y = if s.unfolded_bn {
            let y = self.b.node("Conv", &[&x, &w], attrs);
            let gamma = self.positive(cout);
            let beta = self.weights(&[cout], 0.3);
            let mean = self.weights(&[cout], 0.3);
            let var = self.positive(cout);
            self.b.node(
                "BatchNormalization",
                &[&y, &gamma, &beta, &mean, &var],
                vec![("epsilon", Attr::Float(1e-3))],
            )
        } else {
            let bias = self.weights(&[cout], 0.3);
            self.b.node("Conv", &[&x, &w, &bias], attrs)
        };
        self.act(&y)
    }
}

/// A miniature MobileNet: stem 3->8 s2, dw s1, pw 8->16, dw s2, pw 16->16, pool, classifier.
fn mini_mobilenet(style: Style) -> Vec<u8> {
    let s = if style.fixed {
        Dim::Fixed(SIZE)
    } else {
        Dim::Sym("H")
    };
    let shape = if style.nhwc {
        vec![Dim::Sym("N"), s.clone(), s, Dim::Fixed(3)]
    } else {
        vec![Dim::Sym("N"), Dim::Fixed(3), s.clone(), s]
    };
    let mut n = Net {
        b: GraphBuilder::new(&shape, style.opset),
        seed: 7,
        style,
    };
    let mut x = "input".to_string();
    if style.nhwc {
        x = n.b.node(
            "Transpose",
            &[&x],
            vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))],
        );
    }
    x = n.conv(&x, 3, 8, 3, 2, false);
    x = n.conv(&x, 8, 8, 3, 1, true);
    x = n.conv(&x, 8, 16, 1, 1, false);
    x = n.conv(&x, 16, 16, 3, 2, true);
    x = n.conv(&x, 16, 16, 1, 1, false);
    x = match style.pool {
        Pool::Global => n.b.node("GlobalAveragePool", &[&x], vec![]),
        Pool::ReduceMean => n.b.node(
            "ReduceMean",
            &[&x],
            vec![("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(1))],
        ),
        Pool::WholeMapAverage => n.b.node(
            "AveragePool",
            &[&x],
            vec![("kernel_shape", Attr::Ints(vec![SIZE / 4, SIZE / 4]))],
        ),
    };
    x = match style.head {
        Head::FlattenGemm { trans_b } => {
            let f = n.b.node("Flatten", &[&x], vec![("axis", Attr::Int(1))]);
            let w = if trans_b {
                n.weights(&[CLASSES, 16], 0.3)
            } else {
                n.weights(&[16, CLASSES], 0.3)
            };
            let c = n.weights(&[CLASSES], 0.3);
            n.b.node(
                "Gemm",
                &[&f, &w, &c],
                vec![
                    ("transB", Attr::Int(trans_b as i64)),
                    ("alpha", Attr::Float(0.5)),
                    ("beta", Attr::Float(2.0)),
                ],
            )
        }
        Head::ReshapeMatMulAdd => {
            let shape = n.b.init_i64(&[2], vec![-1, 16]);
            let f = n.b.node("Reshape", &[&x, &shape], vec![]);
            let w = n.weights(&[16, CLASSES], 0.3);
            let m = n.b.node("MatMul", &[&f, &w], vec![]);
            let c = n.weights(&[CLASSES], 0.3);
            n.b.node("Add", &[&m, &c], vec![])
        }
        Head::SqueezeGemm => {
            let f = if style.opset >= 13 {
                let axes = n.b.init_i64(&[2], vec![2, 3]);
                n.b.node("Squeeze", &[&x, &axes], vec![])
            } else {
                n.b.node("Squeeze", &[&x], vec![("axes", Attr::Ints(vec![2, 3]))])
            };
            let w = n.weights(&[CLASSES, 16], 0.3);
            n.b.node("Gemm", &[&f, &w], vec![("transB", Attr::Int(1))])
        }
        Head::Conv1x1ThenFlatten => {
            let w = n.weights(&[CLASSES, 16, 1, 1], 0.3);
            let c = n.weights(&[CLASSES], 0.3);
            let y = n.b.node(
                "Conv",
                &[&x, &w, &c],
                vec![("kernel_shape", Attr::Ints(vec![1, 1]))],
            );
            n.b.node("Flatten", &[&y], vec![])
        }
    };
    if style.softmax {
        x = n.b.node("Softmax", &[&x], vec![("axis", Attr::Int(1))]);
    }
    n.b.finish(&x)
}

/// Imports `bytes`, runs a batch of 3 through our engine and each image through tract.
fn assert_matches_tract(bytes: &[u8]) {
    let plan = import_bytes(bytes).expect("import");
    let layout = plan.input_layout;
    let model = Model::new(plan, KernelSet::scalar());
    let proto = mobilenet_serve::engine::onnx::decode_model(bytes).unwrap();
    let s = SIZE as usize;
    let reference = TractReference::new(&proto, layout, s, s, 3).expect("tract");
    // Noise plus a per-image colour cast: pooled noise alone averages out to the same features
    // for every image.
    let inputs: Vec<Vec<f32>> = (0..3u64)
        .map(|i| {
            let noise = random_vec(s * s * 3, 100 + i, 0.5);
            noise
                .iter()
                .enumerate()
                .map(|(p, v)| v + 0.5 * ((i * 3 + (p % 3) as u64) as f32).sin())
                .collect()
        })
        .collect();
    let ours = model.run(&inputs.concat(), 3, s, s).expect("run");
    let classes = model.plan().classes;
    assert_eq!(classes, CLASSES as usize);
    // The outputs must depend on the image, or a wrong tap or pad could hide behind the biases
    // (compared as logits, since a softmax compresses differences).
    let logit = |v: f32| if model.plan().softmax { v.ln() } else { v };
    let spread = (0..classes)
        .map(|j| (logit(ours[j]) - logit(ours[classes + j])).abs())
        .fold(0.0f32, f32::max);
    let first: Vec<f32> = ours[..classes].iter().map(|&v| logit(v)).collect();
    let range = first.iter().fold(f32::MIN, |m, &v| m.max(v))
        - first.iter().fold(f32::MAX, |m, &v| m.min(v));
    assert!(
        spread > 0.05 * range,
        "outputs barely depend on the input: {:?}",
        &ours[..2 * classes]
    );
    for (i, input) in inputs.iter().enumerate() {
        let theirs = reference.run_nhwc(input).unwrap();
        let mine = &ours[i * classes..(i + 1) * classes];
        let range = theirs.iter().copied().fold(f32::NEG_INFINITY, f32::max)
            - theirs.iter().copied().fold(f32::INFINITY, f32::min);
        for (a, b) in mine.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-4 * range.max(1e-3),
                "ours {a} vs tract {b} (range {range})\nours {mine:?}\ntract {theirs:?}"
            );
        }
    }
}

#[test]
fn zoo_style_folded_bn_clip_inputs_explicit_pads() {
    assert_matches_tract(&mini_mobilenet(BASE));
}

#[test]
fn pytorch_style_unfolded_batch_norm_and_relu() {
    assert_matches_tract(&mini_mobilenet(Style {
        unfolded_bn: true,
        relu6: false,
        ..BASE
    }));
}

#[test]
fn tf2onnx_style_nhwc_pad_ops_reduce_mean_matmul_add_softmax() {
    let bytes = mini_mobilenet(Style {
        nhwc: true,
        pad_op: true,
        pool: Pool::ReduceMean,
        head: Head::ReshapeMatMulAdd,
        softmax: true,
        ..BASE
    });
    let plan = import_bytes(&bytes).unwrap();
    assert_eq!(plan.input_layout, InputLayout::Nhwc);
    assert!(plan.softmax);
    assert_matches_tract(&bytes);
}

#[test]
fn old_opset_clip_attributes_pad_attributes_whole_map_average_pool() {
    let bytes = mini_mobilenet(Style {
        opset: 9,
        pad_op: true,
        pool: Pool::WholeMapAverage,
        fixed: true,
        head: Head::FlattenGemm { trans_b: false },
        ..BASE
    });
    let plan = import_bytes(&bytes).unwrap();
    assert_eq!(
        (plan.height, plan.width),
        (Some(SIZE as usize), Some(SIZE as usize))
    );
    assert_matches_tract(&bytes);
}

#[test]
fn same_upper_auto_pad_squeeze_and_conv_classifier() {
    assert_matches_tract(&mini_mobilenet(Style {
        same_upper: true,
        head: Head::SqueezeGemm,
        ..BASE
    }));
    assert_matches_tract(&mini_mobilenet(Style {
        head: Head::Conv1x1ThenFlatten,
        opset: 11,
        ..BASE
    }));
}

#[test]
fn plan_has_the_expected_layers() {
    let plan = import_bytes(&mini_mobilenet(Style {
        unfolded_bn: true,
        ..BASE
    }))
    .unwrap();
    let kinds: Vec<String> = plan
        .layers
        .iter()
        .map(|l| match l {
            Layer::Conv(c) => format!("{:?}", c.kind),
            Layer::GlobalAvgPool { .. } => "Pool".into(),
            Layer::Fc(_) => "Fc".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Dense",
            "Depthwise",
            "Pointwise",
            "Depthwise",
            "Pointwise",
            "Pool",
            "Fc"
        ]
    );
    let Layer::Conv(stem) = &plan.layers[0] else {
        unreachable!()
    };
    assert_eq!(stem.kind, ConvKind::Dense);
    assert_eq!(stem.act, mobilenet_serve::kernels::Clamp::RELU6);
    assert_eq!(plan.stem_width(), Some(8));
}

/// A chain: input -> Conv -> `op` -> Flatten... enough for the refusal under test.
fn refused(build: impl FnOnce(&mut GraphBuilder, &str) -> String) -> Error {
    let mut b = GraphBuilder::new(
        &[Dim::Sym("N"), Dim::Fixed(3), Dim::Sym("H"), Dim::Sym("W")],
        13,
    );
    let w = b.init(&[4, 3, 3, 3], vec![0.1; 108]);
    let c = b.node(
        "Conv",
        &["input", &w],
        vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))],
    );
    let out = build(&mut b, &c);
    import_model(&b.model(&out)).expect_err("must be refused")
}

fn assert_names(err: Error, op: &str, why: &str) {
    let msg = err.to_string();
    match &err {
        Error::Unsupported {
            node,
            op: o,
            reason,
        } => {
            assert_eq!(o, op, "{msg}");
            assert!(!node.is_empty(), "{msg}");
            assert!(reason.contains(why), "`{why}` not in: {msg}");
        }
        other => panic!("expected Unsupported for {op}, got {other}"),
    }
}

#[test]
fn unknown_op_is_refused_by_name() {
    let e = refused(|b, x| b.node("LeakyRelu", &[x], vec![]));
    assert!(
        e.to_string().contains("leakyrelu_"),
        "node name missing: {e}"
    );
    assert_names(e, "LeakyRelu", "not supported");
}

#[test]
fn dilated_and_grouped_convs_are_refused() {
    let e = refused(|b, x| {
        let w = b.init(&[4, 4, 3, 3], vec![0.1; 144]);
        b.node(
            "Conv",
            &[x, &w],
            vec![("dilations", Attr::Ints(vec![2, 2]))],
        )
    });
    assert_names(e, "Conv", "dilated");
    let e = refused(|b, x| {
        let w = b.init(&[4, 2, 3, 3], vec![0.1; 72]);
        b.node("Conv", &[x, &w], vec![("group", Attr::Int(2))])
    });
    assert_names(e, "Conv", "group=2");
}

#[test]
fn residual_branches_are_refused() {
    let e = refused(|b, x| {
        let w = b.init(&[4, 4, 1, 1], vec![0.1; 16]);
        let y = b.node("Conv", &[x, &w], vec![]);
        b.node("Add", &[&y, x], vec![])
    });
    assert_names(e, "Add", "must be a constant");
}

#[test]
fn reflect_padding_and_mid_graph_softmax_are_refused() {
    let e = refused(|b, x| {
        let p = b.init_i64(&[8], vec![0, 0, 1, 1, 0, 0, 1, 1]);
        b.node("Pad", &[x, &p], vec![("mode", Attr::Str("reflect"))])
    });
    assert_names(e, "Pad", "reflect");
    let e = refused(|b, x| {
        let p = b.node("GlobalAveragePool", &[x], vec![]);
        let f = b.node("Flatten", &[&p], vec![]);
        let s = b.node("Softmax", &[&f], vec![]);
        b.node("Relu", &[&s], vec![])
    });
    assert_names(e, "Relu", "follow the final Softmax");
}

#[test]
fn activation_stacking_and_flatten_before_pooling_are_refused() {
    let e = refused(|b, x| {
        let r = b.node("Relu", &[x], vec![]);
        b.node("Relu", &[&r], vec![])
    });
    assert_names(e, "Relu", "already has an activation");
    let e = refused(|b, x| b.node("Flatten", &[x], vec![]));
    assert_names(e, "Flatten", "only after global pooling");
}

#[test]
fn garbage_and_headless_graphs_are_malformed_not_panics() {
    assert!(matches!(
        import_bytes(b"definitely not protobuf \xff\xff"),
        Err(Error::MalformedModel(_))
    ));
    let mut b = GraphBuilder::new(
        &[Dim::Sym("N"), Dim::Fixed(3), Dim::Sym("H"), Dim::Sym("W")],
        13,
    );
    let w = b.init(&[4, 3, 3, 3], vec![0.1; 108]);
    let c = b.node("Conv", &["input", &w], vec![]);
    assert!(
        matches!(import_model(&b.model(&c)), Err(Error::MalformedModel(m)) if m.contains("feature map"))
    );
}

#[test]
fn absurd_padding_is_refused() {
    let e = refused(|b, x| {
        let w = b.init(&[4, 4, 3, 3], vec![0.1; 144]);
        b.node(
            "Conv",
            &[x, &w],
            vec![("pads", Attr::Ints(vec![0, 0, 1 << 40, 0]))],
        )
    });
    assert_names(e, "Conv", "pads");
    let e = refused(|b, x| {
        let p = b.init_i64(&[8], vec![0, 0, -1, 0, 0, 0, 1, 1]);
        b.node("Pad", &[x, &p], vec![])
    });
    assert_names(e, "Pad", "only spatial padding");
}
