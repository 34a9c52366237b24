//! Post-training quantization end to end, as `mobilenet-serve quantize` runs it: a float zoo
//! variant calibrated on ImageNet images becomes a QDQ file and a manifest entry in the output
//! folder; that folder loads as an int8 variant, which agrees with tract running the written
//! graph to the quantum and keeps the float model's accuracy.

use std::path::PathBuf;

use crate::common::{imagenet_dir, zoo_dir};
use mobilenet_serve::commands::cli::{QuantizeArgs, RangeMethodArg};
use mobilenet_serve::commands::quantize;
use mobilenet_serve::engine::crosscheck::{check_variant, image_inputs};
use mobilenet_serve::engine::network::Precision;
use mobilenet_serve::engine::onnx::decode_model;
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::engine::reference::ModelFile;
use mobilenet_serve::kernels::{KernelSet, TierChoice};

const FLOAT: &str = "mobilenet_v1_0.25_128";

fn opts() -> LoadOptions {
    LoadOptions {
        variants: None,
        resolution: None,
        kernels: KernelSet::select(TierChoice::Auto).unwrap(),
    }
}

fn args(out: PathBuf, method: RangeMethodArg) -> QuantizeArgs {
    QuantizeArgs {
        variant: FLOAT.into(),
        calibration: imagenet_dir(),
        calibration_images: 16,
        method,
        percentile: 99.99,
        out,
        eval: Some(imagenet_dir()),
        eval_limit: Some(200),
        json: None,
    }
}

/// Images of the sample after the calibration ones.
fn held_out(n: usize) -> Vec<PathBuf> {
    let dir = imagenet_dir();
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    labels
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(500)
        .take(n)
        .map(|l| dir.join(l.split('\t').next().unwrap()))
        .collect()
}

#[test]
fn a_quantized_zoo_variant_serves_agrees_with_tract_and_keeps_its_accuracy() {
    let out = tempfile::tempdir().unwrap();
    let a = args(out.path().into(), RangeMethodArg::Minmax);
    let report = quantize::run(&zoo_dir(), &opts(), &a).unwrap();
    let name = format!("{FLOAT}_ptq");
    let pool = ModelPool::load(out.path(), &opts()).unwrap();
    let v = pool.get(&name).unwrap();
    assert_eq!(v.spec.precision, Precision::Int8);
    assert!(v.verified, "the manifest entry carries the file's digest");
    assert_eq!(v.sha256, report.sha256);
    let bytes = std::fs::read(out.path().join(&v.spec.file)).unwrap();
    let file = ModelFile::Onnx(Box::new(decode_model(&bytes).unwrap()));
    let inputs = image_inputs(&held_out(8), v).unwrap();
    let check = check_variant(v, &file, &inputs).unwrap();
    assert!(check.passed(), "against tract: {check:?}");
    // 200 images: 0.5 point each. The tool loses about 2 points on this variant (README); a
    // broken scale or layout loses tens.
    let (float, int8) = (report.float.unwrap(), report.int8.unwrap());
    assert_eq!((float.images, int8.images), (200, 200));
    assert!(
        int8.top1 >= float.top1 - 6.0,
        "top-1 {:.1} after, {:.1} before",
        int8.top1,
        float.top1
    );
}

#[test]
fn percentile_calibration_writes_a_loadable_file_and_int8_input_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let mut a = args(out.path().into(), RangeMethodArg::Percentile);
    a.eval = None;
    a.calibration_images = 4;
    let report = quantize::run(&zoo_dir(), &opts(), &a).unwrap();
    assert!(report.method.starts_with("percentile"), "{}", report.method);
    assert!(report.float.is_none());
    // Quantizing the written int8 variant again is refused, by name.
    let mut b = args(
        tempfile::tempdir().unwrap().path().into(),
        RangeMethodArg::Minmax,
    );
    b.variant = format!("{FLOAT}_ptq");
    let err = quantize::run(out.path(), &opts(), &b)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already int8"), "{err}");
    // More calibration images than the folder holds: a clear error before any work.
    let mut c = args(out.path().join("x"), RangeMethodArg::Minmax);
    c.calibration_images = 100_000;
    let err = quantize::run(&zoo_dir(), &opts(), &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("asked for calibration"), "{err}");
}

/// `bench --layers` profiles an 8-bit variant layer by layer, as it does a float one: every
/// layer of the QAT 0.25_128 has its row, the types add up, and throughput is in GOP/s.
#[test]
fn bench_layers_profiles_an_int8_variant() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"))
        .arg("--models")
        .arg(zoo_dir())
        .args([
            "bench",
            "--variants",
            "mobilenet_v1_0.25_128_quant",
            "--layers",
            "--iters",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("GOP/s"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|f| f.parse::<usize>().is_ok())
        })
        .collect();
    assert_eq!(rows.len(), 29, "stem, 13 pairs, pool, classifier:\n{text}");
    assert!(
        rows[0].contains("full conv") && rows[28].contains("fc"),
        "{text}"
    );
    assert_eq!(rows.iter().filter(|r| r.contains("depthwise")).count(), 13);
}
