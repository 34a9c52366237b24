//! The 8-bit engine on the zoo's quantization-aware-trained QDQ files (`int8/` of the zoo):
//! every file imports into the expected plan, and the integer run agrees with tract running the
//! same graph in float with its fake quantization, to the quantum.

use std::path::PathBuf;

use crate::common::onnx_builder::{Attr, Dim, GraphBuilder};
use crate::common::{imagenet_dir, random_vec, zoo_dir};
use mobilenet_serve::engine::import::import_quantized_bytes;
use mobilenet_serve::engine::model::Nhwc;
use mobilenet_serve::engine::onnx::decode_model;
use mobilenet_serve::engine::plan::InputLayout;
use mobilenet_serve::engine::quant::plan::QuantLayer;
use mobilenet_serve::engine::quant::QuantModel;
use mobilenet_serve::engine::reference::TractReference;
use mobilenet_serve::kernels::int8::Int8Kernels;
use mobilenet_serve::kernels::{KernelSet, Tier, TierChoice};
use mobilenet_serve::pipeline::decode::{decode, DecodeLimits};
use mobilenet_serve::pipeline::postprocess::argmax;
use mobilenet_serve::pipeline::preprocess::{preprocess, Normalization};

/// The fastest kernels of this machine.
fn best() -> KernelSet {
    KernelSet::select(TierChoice::Auto).unwrap()
}

fn int8_dir() -> PathBuf {
    zoo_dir().join("int8")
}

/// The zoo's int8 manifest: `(file, resolution, params)` of each variant.
fn manifest() -> Vec<(String, usize, usize)> {
    let text = std::fs::read_to_string(int8_dir().join("manifest.json")).unwrap();
    let entries: serde_json::Value = serde_json::from_str(&text).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_string(),
                e["resolution"].as_u64().unwrap() as usize,
                e["params"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// The first `n` labelled images with their classes, preprocessed for the QAT models
/// (`(pixel - 128) / 128`) one at a time, so that the whole sample never sits in memory.
fn images(n: usize, rho: usize) -> impl Iterator<Item = (Vec<f32>, usize)> {
    let dir = imagenet_dir();
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    let norm = Normalization {
        scale: 1.0 / 128.0,
        offset: -1.0,
    };
    let entries: Vec<(String, usize)> = labels
        .lines()
        .filter(|l| !l.starts_with('#'))
        .take(n)
        .map(|l| {
            let mut fields = l.split('\t');
            let file = fields.next().unwrap().to_string();
            (file, fields.next().unwrap().parse().unwrap())
        })
        .collect();
    entries.into_iter().map(move |(file, class)| {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let rgb = decode(&bytes, &DecodeLimits::default()).unwrap();
        (preprocess(&rgb, rho, norm, Tier::Scalar).unwrap(), class)
    })
}

#[test]
fn every_int8_zoo_file_imports_into_the_mobilenet_chain() {
    let mut files: Vec<(String, usize)> = manifest()
        .into_iter()
        .map(|(file, _, params)| (file, params))
        .collect();
    files.dedup();
    assert_eq!(files.len(), 13, "the int8 zoo has 13 files");
    for (file, params) in files {
        let bytes = std::fs::read(int8_dir().join(&file)).unwrap();
        let plan = import_quantized_bytes(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        let convs = plan
            .layers
            .iter()
            .filter(|l| matches!(l, QuantLayer::Conv(_)))
            .count();
        assert_eq!(
            convs, 28,
            "{file}: stem, 13 depthwise-pointwise pairs, classifier"
        );
        assert_eq!(plan.layers.len(), 29, "{file}: the pool too");
        assert_eq!(plan.classes, 1001, "{file}");
        assert_eq!(
            plan.params(),
            params,
            "{file}: parameters against the manifest"
        );
        // The zoo's input quantization makes the stored input the 8-bit pixel itself.
        assert_eq!(
            (plan.input.scale, plan.input.zero),
            (1.0 / 128.0, 128),
            "{file}"
        );
    }
}

#[test]
fn the_float_importer_refuses_a_qdq_graph_by_name() {
    let (file, _, _) = &manifest()[0];
    let bytes = std::fs::read(int8_dir().join(file)).unwrap();
    let err = mobilenet_serve::engine::import::import_bytes(&bytes).unwrap_err();
    assert!(err.to_string().contains("QuantizeLinear"), "{err}");
}

/// Our integer run against tract's float run of the same QDQ graph on real images. Two correct
/// implementations round differently at a few points per layer, and the differences travel:
/// the limits are those of the zoo's README (95-99% top-1 agreement, about half the logits
/// identical, nearly all the rest one quantum apart), which a wrong requantization, zero point
/// or padding misses by far.
#[test]
fn int8_runs_agree_with_tract_to_the_quantum() {
    let file = "mobilenet_v1_0.25_128_quant.onnx";
    let rho = 128;
    let bytes = std::fs::read(int8_dir().join(file)).unwrap();
    let plan = import_quantized_bytes(&bytes).unwrap();
    let quantum = plan.layers.last().unwrap().output().scale;
    let model = QuantModel::new(plan, best());
    let tract = TractReference::new(
        &decode_model(&bytes).unwrap(),
        InputLayout::Nchw,
        rho,
        rho,
        3,
    )
    .unwrap();
    let (mut n, mut same_top1, mut right_ours, mut right_tract) = (0, 0, 0, 0);
    let (mut logits, mut identical, mut within_one, mut worst) = (0usize, 0usize, 0usize, 0i64);
    for (input, class) in images(200, rho) {
        n += 1;
        let ours = model.run(Nhwc::new(&input, 1, rho, rho)).unwrap();
        let theirs = tract.run_nhwc(&input).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            let quanta = ((a - b) / quantum).round() as i64;
            logits += 1;
            identical += usize::from(quanta == 0);
            within_one += usize::from(quanta.abs() <= 1);
            worst = worst.max(quanta.abs());
        }
        let (top_ours, top_tract) = (argmax(&ours[1..]), argmax(&theirs[1..]));
        same_top1 += usize::from(top_ours == top_tract);
        right_ours += usize::from(top_ours == class);
        right_tract += usize::from(top_tract == class);
    }
    println!(
        "{file}: top-1 agreement {same_top1}/{n}, correct ours {right_ours} tract {right_tract}; \
         logits identical {:.1}%, within one quantum {:.1}%, worst {worst} quanta",
        100.0 * identical as f64 / logits as f64,
        100.0 * within_one as f64 / logits as f64
    );
    assert!(same_top1 * 100 >= n * 95, "top-1 agreement {same_top1}/{n}");
    assert!(
        identical * 100 >= logits * 40,
        "{identical} of {logits} logits identical"
    );
    assert!(
        within_one * 100 >= logits * 98,
        "{within_one} of {logits} within a quantum"
    );
    assert!(
        right_ours + 3 >= right_tract,
        "{right_ours} vs {right_tract} correct"
    );
}

/// Top-1 of the integer engine on the whole labelled sample, against ONNX Runtime on the same
/// file (53.5% for 0.25_128, measured on val1300: the zoo's README): within 0.6 pt.
#[test]
fn int8_accuracy_on_the_sample_matches_onnx_runtime() {
    let (file, rho, ort_top1) = ("mobilenet_v1_0.25_128_quant.onnx", 128, 53.5);
    let bytes = std::fs::read(int8_dir().join(file)).unwrap();
    let model = QuantModel::new(import_quantized_bytes(&bytes).unwrap(), best());
    let (mut n, mut right) = (0, 0);
    for (input, class) in images(usize::MAX, rho) {
        let out = model.run(Nhwc::new(&input, 1, rho, rho)).unwrap();
        n += 1;
        right += usize::from(argmax(&out[1..]) == class);
    }
    let top1 = 100.0 * right as f64 / n as f64;
    println!("{file}: top-1 {top1:.2}% on {n} images (ORT {ort_top1}%)");
    assert_eq!(n, 1300, "the whole sample");
    assert!(
        (top1 - ort_top1).abs() <= 0.6,
        "top-1 {top1:.2}% vs ORT {ort_top1}%"
    );
}

/// How a synthetic QDQ network is written: the two styles that must load, and the deviations
/// that must be refused.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// onnxruntime's `quantize_static`: int8 symmetric weights per output channel, no Clip
    /// (the output quantization clips), a Gemm classifier after a re-quantized Flatten. Else the
    /// TF QAT style: uint8 asymmetric weights per tensor, Clip(0, 6), a 1x1 Conv classifier.
    ort: bool,
    /// Quantize activations to int8 (refused).
    int8_activations: bool,
    /// The axis of per-channel conv weights (only 0 loads).
    conv_axis: i64,
    /// The bias scale over input scale x weight scale (only 1 loads).
    bias_scale_factor: f32,
}

const ORT_STYLE: Style = Style {
    ort: true,
    int8_activations: false,
    conv_axis: 0,
    bias_scale_factor: 1.0,
};
const QAT_STYLE: Style = Style {
    ort: false,
    ..ORT_STYLE
};

/// A deterministic generator for weights.
struct Lcg(u64);
impl Lcg {
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + ((self.0 >> 33) as i64).rem_euclid(hi - lo + 1)
    }
}

/// `QuantizeLinear` then `DequantizeLinear` of `x` with one scale and zero point.
fn fake_quant(b: &mut GraphBuilder, x: &str, scale: f32, zero: i64, style: Style) -> String {
    let s = b.init(&[], vec![scale]);
    let (ty, zero) = if style.int8_activations {
        (3, zero - 128)
    } else {
        (2, zero)
    };
    let z = b.init_int(&[], ty, &[zero]);
    let q = b.node("QuantizeLinear", &[x, &s, &z], vec![]);
    b.node("DequantizeLinear", &[&q, &s, &z], vec![])
}

/// Dequantized weights of `dims` (per output channel along `axis` in the ORT style) and the
/// int32 bias of `outputs` channels for an input of scale `input_scale`.
fn weights_and_bias(
    b: &mut GraphBuilder,
    rng: &mut Lcg,
    dims: &[i64],
    axis: i64,
    outputs: usize,
    input_scale: f32,
    style: Style,
) -> (String, String) {
    let count = dims.iter().product::<i64>() as usize;
    let (values, scales, zeros, ty): (Vec<i64>, Vec<f32>, Vec<i64>, i32) = if style.ort {
        let scales = (0..outputs)
            .map(|_| 0.002 * rng.int(2, 12) as f32)
            .collect();
        let values = (0..count).map(|_| rng.int(-127, 127)).collect();
        (values, scales, vec![0; outputs], 3)
    } else {
        let values = (0..count).map(|_| rng.int(0, 255)).collect();
        (values, vec![0.01], vec![rng.int(100, 156)], 2)
    };
    let q = b.init_int(dims, ty, &values);
    let zero_dims: &[i64] = if zeros.len() > 1 {
        &[outputs as i64]
    } else {
        &[]
    };
    let s = b.init(zero_dims, scales.clone());
    let z = b.init_int(zero_dims, ty, &zeros);
    let w = b.node(
        "DequantizeLinear",
        &[&q, &s, &z],
        vec![("axis", Attr::Int(axis))],
    );
    let bias_scales: Vec<f32> = (0..outputs)
        .map(|o| input_scale * scales[o.min(scales.len() - 1)] * style.bias_scale_factor)
        .collect();
    let bias: Vec<i64> = (0..outputs).map(|_| rng.int(-3000, 3000)).collect();
    let bq = b.init_int(&[outputs as i64], 6, &bias);
    let bs = b.init(&[outputs as i64], bias_scales);
    let bz = b.init_int(&[outputs as i64], 6, &vec![0; outputs]);
    let bias = b.node(
        "DequantizeLinear",
        &[&bq, &bs, &bz],
        vec![("axis", Attr::Int(0))],
    );
    (w, bias)
}

/// A small MobileNet-shaped QDQ network on 3x16x16 images: stem (stride 2, TF SAME padding),
/// depthwise, pointwise, pool, a 10-class classifier.
fn synthetic_qdq(style: Style) -> Vec<u8> {
    let mut rng = Lcg(7);
    let mut b = GraphBuilder::new(
        &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(16), Dim::Fixed(16)],
        13,
    );
    let relu6 = 6.0 / 255.0;
    let mut x = fake_quant(&mut b, "input", 1.0 / 128.0, 128, style);
    let mut scale = 1.0 / 128.0;
    // (in, out, kernel, group, stride, pads)
    let layers = [
        (3, 8, 3, 1, 2, [0, 0, 1, 1]),
        (8, 8, 3, 8, 1, [1, 1, 1, 1]),
        (8, 16, 1, 1, 1, [0, 0, 0, 0]),
    ];
    for (i, (cin, cout, k, group, stride, pads)) in layers.into_iter().enumerate() {
        let axis = if i == 0 { style.conv_axis } else { 0 };
        let dims = [cout, cin / group, k, k];
        let (w, bias) =
            weights_and_bias(&mut b, &mut rng, &dims, axis, cout as usize, scale, style);
        let mut y = b.node(
            "Conv",
            &[&x, &w, &bias],
            vec![
                ("group", Attr::Int(group)),
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(pads.to_vec())),
            ],
        );
        if !style.ort {
            let (lo, hi) = (b.init(&[], vec![0.0]), b.init(&[], vec![6.0]));
            y = b.node("Clip", &[&y, &lo, &hi], vec![]);
        }
        x = fake_quant(&mut b, &y, relu6, 0, style);
        scale = relu6;
    }
    let pooled = b.node("GlobalAveragePool", &[&x], vec![]);
    let pooled = fake_quant(&mut b, &pooled, relu6, 0, style);
    let logits = if style.ort {
        let flat = b.node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))]);
        let flat = fake_quant(&mut b, &flat, relu6, 0, style);
        let (w, bias) = weights_and_bias(&mut b, &mut rng, &[16, 10], 1, 10, relu6, style);
        let y = b.node("Gemm", &[&flat, &w, &bias], vec![]);
        fake_quant(&mut b, &y, 0.05, 128, style)
    } else {
        let (w, bias) = weights_and_bias(&mut b, &mut rng, &[10, 16, 1, 1], 0, 10, relu6, style);
        let y = b.node("Conv", &[&pooled, &w, &bias], vec![]);
        let y = fake_quant(&mut b, &y, 0.05, 128, style);
        b.node("Flatten", &[&y], vec![("axis", Attr::Int(1))])
    };
    b.finish(&logits)
}

#[test]
fn both_qdq_styles_load_and_agree_with_tract() {
    for style in [QAT_STYLE, ORT_STYLE] {
        let bytes = synthetic_qdq(style);
        let plan = import_quantized_bytes(&bytes).unwrap_or_else(|e| panic!("{style:?}: {e}"));
        assert_eq!((plan.layers.len(), plan.classes), (5, 10), "{style:?}");
        let quantum = plan.layers.last().unwrap().output().scale;
        let model = QuantModel::new(plan, best());
        let tract =
            TractReference::new(&decode_model(&bytes).unwrap(), InputLayout::Nchw, 16, 16, 3)
                .unwrap();
        let (mut identical, mut total, mut worst, mut spread) = (0, 0, 0i64, 0.0f32);
        for seed in 0..50 {
            let input = random_vec(16 * 16 * 3, seed, 1.0);
            let ours = model.run(Nhwc::new(&input, 1, 16, 16)).unwrap();
            let theirs = tract.run_nhwc(&input).unwrap();
            for (a, b) in ours.iter().zip(&theirs) {
                let quanta = ((a - b) / quantum).round() as i64;
                identical += usize::from(quanta == 0);
                total += 1;
                worst = worst.max(quanta.abs());
                spread = spread.max(b.abs());
            }
        }
        println!("{style:?}: {identical}/{total} logits identical, worst {worst} quanta");
        // The logits must not be saturated or constant, or the comparison proves nothing.
        assert!(spread > 10.0 * quantum, "{style:?}: logits within {spread}");
        assert!(worst <= 2, "{style:?}: {worst} quanta apart");
        assert!(
            identical * 10 >= total * 8,
            "{style:?}: {identical}/{total} identical"
        );
    }
}

#[test]
fn qdq_patterns_outside_the_two_styles_are_refused_by_name() {
    let cases = [
        (
            Style {
                int8_activations: true,
                ..ORT_STYLE
            },
            "uint8",
        ),
        (
            Style {
                conv_axis: 1,
                ..ORT_STYLE
            },
            "axis",
        ),
        (
            Style {
                bias_scale_factor: 2.0,
                ..QAT_STYLE
            },
            "bias",
        ),
    ];
    for (style, says) in cases {
        let err = import_quantized_bytes(&synthetic_qdq(style)).unwrap_err();
        let text = err.to_string();
        println!("{text}");
        assert!(
            text.contains(says) && text.contains("node `"),
            "{style:?}: {text}"
        );
    }
}

/// Every set of integer kernels this CPU runs (each tier's, and the emulated dot products)
/// gives the same logits, bit for bit, on a whole zoo model and real images.
#[test]
fn every_tier_runs_the_int8_zoo_bit_exactly() {
    let (file, rho) = ("mobilenet_v1_0.5_160_quant.onnx", 160);
    let plan = import_quantized_bytes(&std::fs::read(int8_dir().join(file)).unwrap()).unwrap();
    let scalar = KernelSet::scalar();
    let models: Vec<QuantModel> = Int8Kernels::supported()
        .into_iter()
        .map(|int8| QuantModel::new(plan.clone(), KernelSet { int8, ..scalar }))
        .collect();
    let inputs: Vec<f32> = images(3, rho).flat_map(|(x, _)| x).collect();
    let want = models[0].run(Nhwc::new(&inputs, 3, rho, rho)).unwrap();
    for m in &models[1..] {
        let got = m.run(Nhwc::new(&inputs, 3, rho, rho)).unwrap();
        assert!(
            got == want,
            "{} differs from the scalar kernels",
            m.kernels().int8.name
        );
    }
}
