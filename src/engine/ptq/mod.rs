//! Post-training quantization: a float [`Plan`] and the activation ranges calibrated on images
//! become a QDQ ONNX model that our int8 importer, ONNX Runtime and OpenVINO all load.
//!
//! The scheme is the one ONNX Runtime's `quantize_static` writes for CPUs: int8 weights,
//! symmetric per output channel; int32 biases in accumulator units; uint8 activations, per
//! tensor, asymmetric. The graph is the float one as a chain of `QuantizeLinear` ->
//! `DequantizeLinear` -> `Conv` (-> `Relu` | `Clip`) steps, then `GlobalAveragePool` and the
//! classifier as a 1x1 `Conv`, its output quantized too (the int8 engine's logits are uint8
//! steps, as in Google's QAT releases), and a `Flatten` to `[N, classes]`. The input is NCHW,
//! whatever layout the float file had.

pub mod builder;
pub mod calibrate;
pub mod histogram;
pub mod weights;

use self::builder::{Attr, GraphBuilder};
use self::calibrate::Range;
use self::weights::{conv_weights_oihw, fc_weights_oihw, quantize_weights, QuantizedWeights};
use crate::engine::onnx::pb;
use crate::engine::plan::{Layer, Padding, Plan};
use crate::engine::quant::plan::QuantParams;
use crate::error::{Error, Result};
use crate::kernels::Clamp;

/// The ONNX opset written: the first with per-axis `DequantizeLinear`.
const OPSET: i64 = 13;
/// The IR version of opset 13.
const IR_VERSION: i64 = 7;

/// The QDQ model of `plan`, its input quantized over `input` and each layer's output over the
/// matching entry of `ranges` (from [`calibrate::Calibrator::ranges`]); `doc` becomes the
/// model's doc string (how it was made).
pub fn quantize_plan(
    plan: &Plan,
    input: Range,
    ranges: &[Range],
    doc: &str,
) -> Result<pb::ModelProto> {
    if ranges.len() != plan.layers.len() {
        return Err(Error::Config(format!(
            "{} ranges for {} layers",
            ranges.len(),
            plan.layers.len()
        )));
    }
    if plan.softmax {
        return Err(Error::Unsupported {
            node: plan.output_name.clone(),
            op: "Softmax".into(),
            reason: "the int8 engine returns logits: quantize the model without its final \
                     Softmax"
                .into(),
        });
    }
    if !plan
        .layers
        .iter()
        .any(|l| matches!(l, Layer::GlobalAvgPool { .. }))
    {
        return Err(Error::Config(
            "the int8 engine needs a global average pool before the classifier".into(),
        ));
    }
    let mut g = GraphBuilder::default();
    let mut params = input.uint8();
    let mut x = qdq(&mut g, "input", &plan.input_name, params);
    for (i, (layer, range)) in plan.layers.iter().zip(ranges).enumerate() {
        let out = range.uint8();
        let tag = format!("l{i}");
        let y = match layer {
            Layer::Conv(c) => {
                let (dims, group, w) = conv_weights_oihw(c);
                let q = quantize_weights(dims, group, &w, &c.bias, params.scale);
                let strides = [c.stride_h, c.stride_w];
                let y = conv(&mut g, &tag, &c.name, &x, &q, strides, c.padding);
                activation(&mut g, &tag, &c.name, &y, c.act)
            }
            Layer::Fc(f) => {
                let (dims, group, w) = fc_weights_oihw(f);
                let q = quantize_weights(dims, group, &w, &f.bias, params.scale);
                let y = conv(&mut g, &tag, &f.name, &x, &q, [1, 1], Padding::NONE);
                activation(&mut g, &tag, &f.name, &y, f.act)
            }
            Layer::GlobalAvgPool { .. } => g.node(
                &format!("{tag}_pool"),
                "GlobalAveragePool",
                &[&x],
                &format!("{tag}_pool"),
                &[],
            ),
        };
        x = qdq(&mut g, &tag, &y, out);
        params = out;
    }
    g.node(
        "flatten",
        "Flatten",
        &[&x],
        &plan.output_name,
        &[("axis", Attr::Int(1))],
    );
    let graph = g.finish(
        "mobilenet_ptq",
        (
            &plan.input_name,
            &[None, Some(plan.in_c), plan.height, plan.width],
        ),
        (&plan.output_name, &[None, Some(plan.classes)]),
        &["N", "C", "height", "width"],
    );
    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "mobilenet-serve quantize".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.to_string(),
        graph: Some(graph),
        ..Default::default()
    })
}

/// `QuantizeLinear` then `DequantizeLinear` of `x` with `q`; returns the dequantized tensor.
fn qdq(g: &mut GraphBuilder, tag: &str, x: &str, q: QuantParams) -> String {
    let scale = g.f32s(&format!("{tag}_out_scale"), &[], &[q.scale]);
    let zero = g.u8s(&format!("{tag}_out_zero"), &[], &[q.zero]);
    let stored = g.node(
        &format!("{tag}_quantize"),
        "QuantizeLinear",
        &[x, &scale, &zero],
        &format!("{tag}_q"),
        &[],
    );
    g.node(
        &format!("{tag}_dequantize"),
        "DequantizeLinear",
        &[&stored, &scale, &zero],
        &format!("{tag}_dq"),
        &[],
    )
}

/// `DequantizeLinear` of the integer initializer `values` (named `name`), one scale per output
/// channel along axis 0; returns the dequantized tensor.
fn dequantize_per_channel(
    g: &mut GraphBuilder,
    name: &str,
    values: &str,
    scales: &[f32],
    zero: &str,
) -> String {
    let scale = g.f32s(&format!("{name}_scale"), &[scales.len()], scales);
    g.node(
        &format!("{name}_dequantize"),
        "DequantizeLinear",
        &[values, &scale, zero],
        &format!("{name}_dq"),
        &[("axis", Attr::Int(0))],
    )
}

/// A `Conv` of `x` with the dequantized weights and bias `q`.
fn conv(
    g: &mut GraphBuilder,
    tag: &str,
    name: &str,
    x: &str,
    q: &QuantizedWeights,
    strides: [usize; 2],
    padding: Padding,
) -> String {
    let out_c = q.dims[0];
    let name_w = format!("{tag}_w");
    let w = g.i8s(&name_w, &q.dims, &q.values);
    let w_zero = g.i8s(&format!("{name_w}_zero"), &[out_c], &vec![0; out_c]);
    let w = dequantize_per_channel(g, &name_w, &w, &q.scales, &w_zero);
    let name_b = format!("{tag}_b");
    let b = g.i32s(&name_b, &[out_c], &q.bias);
    let b_zero = g.i32s(&format!("{name_b}_zero"), &[out_c], &vec![0; out_c]);
    let b = dequantize_per_channel(g, &name_b, &b, &q.bias_scales, &b_zero);
    let mut attrs = vec![
        ("group", Attr::Int(q.group as i64)),
        (
            "kernel_shape",
            Attr::Ints(vec![q.dims[2] as i64, q.dims[3] as i64]),
        ),
        (
            "strides",
            Attr::Ints(vec![strides[0] as i64, strides[1] as i64]),
        ),
    ];
    attrs.push(match padding {
        Padding::Explicit {
            top,
            left,
            bottom,
            right,
        } => (
            "pads",
            Attr::Ints(
                [top, left, bottom, right]
                    .iter()
                    .map(|&p| p as i64)
                    .collect(),
            ),
        ),
        Padding::SameUpper => ("auto_pad", Attr::Str("SAME_UPPER")),
        Padding::SameLower => ("auto_pad", Attr::Str("SAME_LOWER")),
    });
    g.node(name, "Conv", &[x, &w, &b], &format!("{tag}_conv"), &attrs)
}

/// The fused activation `act` of a layer as its own node (`Relu` or `Clip`), or `y` itself.
fn activation(g: &mut GraphBuilder, tag: &str, name: &str, y: &str, act: Clamp) -> String {
    if act.is_identity() {
        return y.to_string();
    }
    let node = format!("{name}_activation");
    let out = format!("{tag}_act");
    if act == Clamp::RELU {
        return g.node(&node, "Relu", &[y], &out, &[]);
    }
    let bound = |g: &mut GraphBuilder, which: &str, v: f32| {
        if v.is_finite() {
            g.f32s(&format!("{tag}_clip_{which}"), &[], &[v])
        } else {
            String::new()
        }
    };
    let lo = bound(g, "min", act.lo);
    let hi = bound(g, "max", act.hi);
    g.node(&node, "Clip", &[y, &lo, &hi], &out, &[])
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::calibrate::{Calibrator, RangeMethod};
    use super::*;
    use crate::engine::import::import_quantized_bytes;
    use crate::engine::model::{Model, Nhwc};
    use crate::engine::plan::{ConvKind, ConvLayer, FcLayer, InputLayout};
    use crate::engine::quant::plan::QuantLayer;
    use crate::engine::quant::QuantModel;
    use crate::kernels::KernelSet;

    /// Deterministic values in [-scale, scale].
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn conv(name: &str, kind: ConvKind, io: (usize, usize), k: usize, stride: usize) -> ConvLayer {
        let (in_c, out_c) = io;
        let taps = if kind == ConvKind::Depthwise { 1 } else { in_c };
        let fan_in = (k * k * taps) as f32;
        ConvLayer {
            name: name.into(),
            kind,
            in_c,
            out_c,
            kh: k,
            kw: k,
            stride_h: stride,
            stride_w: stride,
            padding: if k == 1 {
                Padding::NONE
            } else if stride == 2 {
                Padding::SameUpper
            } else {
                Padding::Explicit {
                    top: 1,
                    left: 1,
                    bottom: 1,
                    right: 1,
                }
            },
            weights: values(k * k * taps * out_c, out_c as u64, 2.0 / fan_in.sqrt()),
            bias: values(out_c, 7, 0.2),
            act: Clamp::RELU6,
        }
    }

    /// Stem, depthwise, pointwise, pool and classifier: one layer of each kind MobileNet has.
    fn tiny_plan() -> Plan {
        Plan {
            input_name: "input".into(),
            input_layout: InputLayout::Nchw,
            in_c: 3,
            height: None,
            width: None,
            layers: vec![
                Layer::Conv(conv("stem", ConvKind::Dense, (3, 8), 3, 2)),
                Layer::Conv(conv("dw", ConvKind::Depthwise, (8, 8), 3, 1)),
                Layer::Conv(conv("pw", ConvKind::Pointwise, (8, 16), 1, 1)),
                Layer::GlobalAvgPool { window: None },
                Layer::Fc(FcLayer {
                    name: "fc".into(),
                    in_c: 16,
                    out_c: 10,
                    weights: values(160, 3, 0.5),
                    bias: values(10, 4, 0.1),
                    act: Clamp::NONE,
                }),
            ],
            output_name: "logits".into(),
            classes: 10,
            softmax: false,
        }
    }

    #[test]
    fn the_quantized_graph_imports_and_tracks_the_float_network() {
        let plan = tiny_plan();
        let float = Model::new(plan.clone(), KernelSet::scalar());
        let (n, side) = (8, 12);
        let x = values(n * side * side * 3, 11, 1.0);
        let images = Nhwc::new(&x, n, side, side);
        let mut calibrator = Calibrator::new(&float, RangeMethod::MinMax);
        calibrator.observe(images).unwrap();
        let ranges = calibrator.ranges().unwrap();
        let proto = quantize_plan(&plan, Range::new(-1.0, 1.0), &ranges, "test").unwrap();
        let q = import_quantized_bytes(&proto.encode_to_vec()).unwrap();
        let kinds: Vec<Option<ConvKind>> = q
            .layers
            .iter()
            .map(|l| match l {
                QuantLayer::Conv(c) => Some(c.shape.kind),
                QuantLayer::GlobalAvgPool { .. } => None,
            })
            .collect();
        use ConvKind::*;
        assert_eq!(
            kinds,
            [
                Some(Dense),
                Some(Depthwise),
                Some(Pointwise),
                None,
                Some(Pointwise)
            ]
        );
        assert_eq!((q.input.zero, q.classes), (127, 10));
        let want = float.run(&x, n, side, side).unwrap();
        let got = QuantModel::new(q, KernelSet::scalar()).run(images).unwrap();
        let span = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = want
            .iter()
            .zip(&got)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        // Five 8-bit layers in a row: a few percent of the logits' range. A wrong layout, scale
        // or zero point is off by the range itself.
        assert!(worst <= 0.05 * span, "worst {worst}, logits up to {span}");
    }

    #[test]
    fn a_softmax_output_and_a_range_count_mismatch_are_refused() {
        let mut plan = tiny_plan();
        let ranges = vec![Range::new(0.0, 6.0); plan.layers.len()];
        let input = Range::new(-1.0, 1.0);
        assert!(quantize_plan(&plan, input, &ranges[1..], "").is_err());
        plan.softmax = true;
        let err = quantize_plan(&plan, input, &ranges, "").unwrap_err();
        assert!(err.to_string().contains("Softmax"), "{err}");
    }
}
