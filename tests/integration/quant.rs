//! The 8-bit engine on the zoo's quantization-aware-trained QDQ files (`int8/` of the zoo):
//! every file imports into the expected plan, and the integer run agrees with tract running the
//! same graph in float with its fake quantization, to the quantum.

use std::path::PathBuf;

use crate::common::{imagenet_dir, zoo_dir};
use mobilenet_serve::engine::import::import_quantized_bytes;
use mobilenet_serve::engine::model::Nhwc;
use mobilenet_serve::engine::onnx::decode_model;
use mobilenet_serve::engine::plan::InputLayout;
use mobilenet_serve::engine::quant::plan::QuantLayer;
use mobilenet_serve::engine::quant::QuantModel;
use mobilenet_serve::engine::reference::TractReference;
use mobilenet_serve::kernels::Tier;
use mobilenet_serve::pipeline::decode::{decode, DecodeLimits};
use mobilenet_serve::pipeline::postprocess::argmax;
use mobilenet_serve::pipeline::preprocess::{preprocess, Normalization};

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

/// The first `n` labelled images, preprocessed for the QAT models (`(pixel - 128) / 128`).
fn images(n: usize, rho: usize) -> Vec<(Vec<f32>, usize)> {
    let dir = imagenet_dir();
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    let norm = Normalization {
        scale: 1.0 / 128.0,
        offset: -1.0,
    };
    labels
        .lines()
        .filter(|l| !l.starts_with('#'))
        .take(n)
        .map(|l| {
            let mut fields = l.split('\t');
            let file = fields.next().unwrap();
            let class: usize = fields.next().unwrap().parse().unwrap();
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let rgb = decode(&bytes, &DecodeLimits::default()).unwrap();
            (preprocess(&rgb, rho, norm, Tier::Scalar).unwrap(), class)
        })
        .collect()
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
    let model = QuantModel::new(plan);
    let tract = TractReference::new(
        &decode_model(&bytes).unwrap(),
        InputLayout::Nchw,
        rho,
        rho,
        3,
    )
    .unwrap();
    let images = images(200, rho);
    let (mut same_top1, mut right_ours, mut right_tract) = (0, 0, 0);
    let (mut logits, mut identical, mut within_one, mut worst) = (0usize, 0usize, 0usize, 0i64);
    for (input, class) in &images {
        let ours = model.run(Nhwc::new(input, 1, rho, rho)).unwrap();
        let theirs = tract.run_nhwc(input).unwrap();
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
        right_ours += usize::from(top_ours == *class);
        right_tract += usize::from(top_tract == *class);
    }
    let n = images.len();
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
