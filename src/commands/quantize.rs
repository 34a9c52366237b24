//! The `quantize` command: post-training quantization of a float variant into an int8 QDQ ONNX
//! file (calibrated on an image folder), written with a manifest entry so that `serve --models
//! DIR` serves it, and optionally evaluated before and after.

use std::path::{Path, PathBuf};

use prost::Message;
use serde::Serialize;
use serde_json::{json, Value};

use crate::commands::cli::{QuantizeArgs, RangeMethodArg};
use crate::commands::eval::{eval_variant, load_images, VariantResult};
use crate::commands::{dataset, manifest_file};
use crate::engine::catalog;
use crate::engine::import::{import_any, Imported};
use crate::engine::model::{Model, Nhwc};
use crate::engine::pool::{sha256_hex, LoadOptions, ModelPool, Variant};
use crate::engine::ptq::calibrate::{Calibrator, Range, RangeMethod};
use crate::engine::ptq::quantize_plan;
use crate::error::{Error, Result};
use crate::pipeline::decode::{decode, DecodeLimits};
use crate::pipeline::preprocess::{preprocess_into, Normalization};

/// What the quantized variant is called: the float name and this suffix (`_quant` is taken by
/// Google's quantization-aware-trained releases).
pub const PTQ_SUFFIX: &str = "_ptq";
/// Images per calibration run of the float model.
const CALIBRATION_BATCH: usize = 8;

/// Accuracy of the float variant and of its quantized twin on the same images.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    /// The file written.
    pub file: String,
    /// Its sha256.
    pub sha256: String,
    /// Calibration images used.
    pub calibration_images: usize,
    /// `minmax` or `percentile <p>`.
    pub method: String,
    /// The float variant on the evaluation folder, when `--eval` was given.
    pub float: Option<VariantResult>,
    /// The quantized variant on the same images.
    pub int8: Option<VariantResult>,
}

/// Runs `quantize` as `args` says, on the float variant of `models_dir`, loading models as
/// `opts` says (its variant list is ignored).
pub fn run(models_dir: &Path, opts: &LoadOptions, args: &QuantizeArgs) -> Result<QuantizeReport> {
    let only = |name: &str| LoadOptions {
        variants: Some(vec![name.to_string()]),
        ..opts.clone()
    };
    let pool = ModelPool::load(models_dir, &only(&args.variant))?;
    let variant = pool.get(&args.variant)?;
    let model = variant.model.as_float().ok_or_else(|| {
        Error::Config(format!(
            "{} is already {}: quantize takes a float variant",
            variant.spec.name, variant.spec.precision
        ))
    })?;
    let method = match args.method {
        RangeMethodArg::Minmax => RangeMethod::MinMax,
        RangeMethodArg::Percentile => RangeMethod::Percentile(args.percentile),
    };
    let ranges = calibrate(model, variant, args, method)?;
    let input = input_range(variant.spec.normalization);
    let name = format!("{}{PTQ_SUFFIX}", variant.spec.name);
    let method_text = match method {
        RangeMethod::MinMax => "minmax".to_string(),
        RangeMethod::Percentile(p) => format!("percentile {p}"),
    };
    let doc = format!(
        "{name}: post-training quantization of {} (sha256 {}) by mobilenet-serve quantize: int8 \
         weights symmetric per output channel, uint8 activations per tensor, ranges by {} on \
         the first {} images of {}",
        variant.spec.file.display(),
        variant.sha256,
        method_text,
        args.calibration_images,
        args.calibration.display()
    );
    let bytes = quantize_plan(model.plan(), input, &ranges, &doc)?.encode_to_vec();
    // Our own importer must take what we write, or nothing is written.
    let imported = import_any(&bytes)
        .map_err(|e| Error::MalformedModel(format!("the quantized graph does not load: {e}")))?;
    if !matches!(imported, Imported::Quantized(_)) {
        return Err(Error::MalformedModel(
            "the quantized graph imported as a float one".into(),
        ));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let file = PathBuf::from(format!("{name}.onnx"));
    let path = args.out.join(&file);
    std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    let sha256 = sha256_hex(&bytes);
    // An earlier entry of the same name (a re-run) is replaced.
    let entries = manifest_file::merge(
        manifest_file::read(&args.out)?,
        vec![manifest_entry(variant, &name, &file, &sha256, &doc)],
    );
    manifest_file::write(&args.out, &entries)?;
    println!(
        "wrote {} ({} KB, sha256 {sha256}) and its entry in {}",
        path.display(),
        bytes.len() / 1024,
        args.out.join(catalog::MANIFEST).display()
    );
    let mut report = QuantizeReport {
        file: path.display().to_string(),
        sha256,
        calibration_images: args.calibration_images as usize,
        method: method_text,
        float: None,
        int8: None,
    };
    if let Some(data) = &args.eval {
        let (images, _) = load_images(data, args.eval_limit)?;
        let quantized = ModelPool::load(&args.out, &only(&name))?;
        let progress = crate::commands::progress::bar(
            2 * images.len() as u64,
            "{elapsed_precise} [{bar:40}] {pos}/{len} images, {eta} left",
        );
        let before = eval_variant(&pool, variant, &images, 8, &progress)?;
        let after = eval_variant(&quantized, quantized.get(&name)?, &images, 8, &progress)?;
        drop(progress);
        println!(
            "{:<32} {:>8} {:>8} {:>9}",
            "variant", "top-1", "top-5", "ms/img"
        );
        for r in [&before, &after] {
            println!(
                "{:<32} {:>7.2}% {:>7.2}% {:>9.3}",
                r.name, r.top1, r.top5, r.ms_per_image
            );
        }
        println!(
            "on {} images of {}: top-1 {:+.2} pt, top-5 {:+.2} pt",
            images.len(),
            data.display(),
            after.top1 - before.top1,
            after.top5 - before.top5
        );
        report.float = Some(before);
        report.int8 = Some(after);
    }
    if let Some(json) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Catalog(e.to_string()))?;
        std::fs::write(json, text + "\n").map_err(|e| Error::io(json, e))?;
    }
    Ok(report)
}

/// The range of the model's input: what the normalisation makes of pixels 0 and 255.
fn input_range(n: Normalization) -> Range {
    let (a, b) = (n.offset, 255.0 * n.scale + n.offset);
    Range::new(a.min(b), a.max(b))
}

/// The calibration images of `args.calibration`: in `labels.tsv` order when the folder has one
/// (so that a labelled folder's first images are the ones other tools calibrate on), else by
/// file name; the first `args.calibration_images` of them.
fn calibration_files(args: &QuantizeArgs) -> Result<Vec<PathBuf>> {
    let dir = &args.calibration;
    let mut files = if dir.join("labels.tsv").exists() {
        dataset::read_labels(dir)?
            .into_iter()
            .map(|l| l.path)
            .collect()
    } else {
        dataset::image_files(dir)?
    };
    let wanted = args.calibration_images as usize;
    if files.len() < wanted {
        return Err(Error::Config(format!(
            "{}: {} images, {} asked for calibration",
            dir.display(),
            files.len(),
            wanted
        )));
    }
    files.truncate(wanted);
    Ok(files)
}

/// Runs the float model over the calibration images and returns each layer's range.
fn calibrate(
    model: &Model,
    variant: &Variant,
    args: &QuantizeArgs,
    method: RangeMethod,
) -> Result<Vec<Range>> {
    let files = calibration_files(args)?;
    let r = variant.spec.resolution;
    let per = variant.input_len();
    let mut calibrator = Calibrator::new(model, method);
    let mut input = vec![0.0f32; CALIBRATION_BATCH * per];
    let progress = crate::commands::progress::bar(
        files.len() as u64,
        "calibrating {elapsed_precise} [{bar:40}] {pos}/{len} images, {eta} left",
    );
    for chunk in files.chunks(CALIBRATION_BATCH) {
        for (slot, path) in input.chunks_exact_mut(per).zip(chunk) {
            let img = read_image(path)?;
            preprocess_into(
                &img,
                r,
                variant.spec.normalization,
                model.kernels().tier,
                slot,
            )?;
        }
        let n = chunk.len();
        calibrator.observe(Nhwc::new(&input[..n * per], n, r, r))?;
        progress.inc(n as u64);
    }
    calibrator.ranges()
}

fn read_image(path: &Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, &DecodeLimits::default())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// The manifest entry of the quantized variant: the float one's cell, classes and
/// preprocessing, with its own file, digest, precision and provenance.
fn manifest_entry(float: &Variant, name: &str, file: &Path, sha256: &str, doc: &str) -> Value {
    let s = &float.spec;
    json!({
        "name": name,
        "alpha": s.alpha,
        "resolution": s.resolution,
        "file": file,
        "num_classes": s.num_classes,
        "label_offset": s.label_offset,
        "precision": "int8",
        "preprocessing": {
            "scale": s.normalization.scale,
            "offset": s.normalization.offset,
            "layout": "NCHW",
            "color": "RGB",
        },
        "mult_adds": s.mult_adds,
        "params": s.params,
        "weights": "int8 post-training quantized (mobilenet-serve quantize)",
        "sha256": sha256,
        "provenance": {
            "float_variant": s.name,
            "float_sha256": float.sha256,
            "note": doc,
        },
    })
}
