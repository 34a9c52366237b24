//! The `eval` command: top-1 / top-5 accuracy and latency of every variant on a labelled folder.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::chart::{self, Point};
use crate::dataset::{self, LabeledImage};
use crate::engine::model::Workspace;
use crate::engine::pool::{ModelPool, Variant};
use crate::error::{Error, Result};
use crate::pipeline::decode::{decode, DecodeLimits};
use crate::pipeline::postprocess::top_k;
use crate::pipeline::preprocess::preprocess_into;

/// Accuracy and speed of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    /// Variant name.
    pub name: String,
    /// Width multiplier.
    pub alpha: f32,
    /// Input resolution.
    pub resolution: usize,
    /// Images evaluated.
    pub images: usize,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent.
    pub top5: f64,
    /// Engine time per image in milliseconds (excluding decode and preprocessing).
    pub ms_per_image: f64,
    /// Multiply-adds per image, when known.
    pub mult_adds: Option<u64>,
    /// Published top-1 of the corresponding TF-slim model, for comparison.
    pub published_top1: Option<f32>,
}

/// Everything `eval --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The folder evaluated.
    pub dataset: String,
    /// Images per variant.
    pub images: usize,
    /// Images per engine call.
    pub batch: usize,
    /// Kernel tier used.
    pub kernels: String,
    /// One entry per variant.
    pub variants: Vec<VariantResult>,
}

/// Decodes the labelled images of `dir` (the first `limit` of them).
pub fn load_images(dir: &Path, limit: Option<usize>) -> Result<Vec<(LabeledImage, RgbImage)>> {
    let mut labels = dataset::read_labels(dir)?;
    if let Some(n) = limit {
        labels.truncate(n);
    }
    if labels.is_empty() {
        return Err(Error::Catalog(format!(
            "{}: no labelled images",
            dir.display()
        )));
    }
    labels
        .into_iter()
        .map(|l| {
            let bytes = std::fs::read(&l.path).map_err(|e| Error::io(&l.path, e))?;
            let img = decode(&bytes, &DecodeLimits::default())
                .map_err(|e| Error::Catalog(format!("{}: {e}", l.path.display())))?;
            Ok((l, img))
        })
        .collect()
}

/// Evaluates one variant over `images`, `batch` images per engine call.
pub fn eval_variant(
    pool: &ModelPool,
    v: &Variant,
    images: &[(LabeledImage, RgbImage)],
    batch: usize,
    progress: bool,
) -> Result<VariantResult> {
    let r = v.spec.resolution;
    let per = v.input_len();
    let classes = v.model.plan().classes;
    let mut input = vec![0.0f32; batch * per];
    let mut out = Vec::new();
    let mut ws = Workspace::new();
    let (mut top1, mut top5, mut engine_time) = (0usize, 0usize, Duration::ZERO);
    for (chunk_no, chunk) in images.chunks(batch).enumerate() {
        for (slot, (_, img)) in input.chunks_exact_mut(per).zip(chunk) {
            preprocess_into(img, r, v.spec.normalization, slot)?;
        }
        let n = chunk.len();
        let started = Instant::now();
        v.model
            .run_with(&mut ws, &input[..n * per], n, r, r, &mut out)?;
        engine_time += started.elapsed();
        for ((label, _), scores) in chunk.iter().zip(out.chunks_exact(classes)) {
            let best: Vec<Option<usize>> = top_k(scores, 5)
                .into_iter()
                .map(|(i, _)| pool.class_of(v, i))
                .collect();
            top1 += usize::from(best[0] == Some(label.class));
            top5 += usize::from(best.contains(&Some(label.class)));
        }
        if progress {
            eprint!(
                "\r{:<24} {:>5}/{}",
                v.spec.name,
                (chunk_no * batch + n),
                images.len()
            );
        }
    }
    if progress {
        eprint!("\r{:<40}\r", "");
    }
    let n = images.len() as f64;
    Ok(VariantResult {
        name: v.spec.name.clone(),
        alpha: v.spec.alpha,
        resolution: r,
        images: images.len(),
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
        ms_per_image: engine_time.as_secs_f64() * 1000.0 / n,
        mult_adds: v.spec.mult_adds,
        published_top1: v.spec.published_top1,
    })
}

/// The `eval` command: prints a table, and writes JSON and SVG when asked.
pub fn run(pool: &ModelPool, args: &crate::config::EvalArgs) -> Result<EvalReport> {
    let images = load_images(&args.data, args.limit)?;
    let batch = args.batch as usize;
    let progress = std::io::stderr().is_terminal();
    println!(
        "{:<24} {:>7} {:>7} {:>10} {:>9} {:>8}",
        "variant", "top-1", "top-5", "published", "ms/img", "img/s"
    );
    let mut results = Vec::new();
    for v in pool.variants() {
        let r = eval_variant(pool, v, &images, batch, progress)?;
        println!(
            "{:<24} {:>6.2}% {:>6.2}% {:>10} {:>9.3} {:>8.1}",
            r.name,
            r.top1,
            r.top5,
            r.published_top1
                .map(|p| format!("{p:.1}%"))
                .unwrap_or_else(|| "-".into()),
            r.ms_per_image,
            1000.0 / r.ms_per_image
        );
        results.push(r);
    }
    let report = EvalReport {
        dataset: args.data.display().to_string(),
        images: images.len(),
        batch,
        kernels: pool
            .variants()
            .first()
            .map(|v| v.model.kernels().tier.to_string())
            .unwrap_or_default(),
        variants: results,
    };
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Catalog(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let points: Vec<Point> = report
            .variants
            .iter()
            .map(|r| Point {
                label: r.name.trim_start_matches("mobilenet_v1_").to_string(),
                latency_ms: r.ms_per_image,
                top1: r.top1,
            })
            .collect();
        let title = format!(
            "MobileNet v1: top-1 on {} images against latency ({} kernels, batch {batch})",
            report.images, report.kernels
        );
        std::fs::write(path, chart::accuracy_vs_latency(&title, &points))
            .map_err(|e| Error::io(path, e))?;
        println!("wrote {}", path.display());
    }
    Ok(report)
}

/// The `preprocess` command: writes our model inputs for a labelled folder as one .npy file.
pub fn dump_inputs(args: &crate::config::PreprocessArgs) -> Result<usize> {
    let images = load_images(&args.data, args.limit)?;
    let r = args.size;
    let per = r * r * 3;
    let mut data = vec![0.0f32; images.len() * per];
    for ((_, img), slot) in images.iter().zip(data.chunks_exact_mut(per)) {
        preprocess_into(img, r, Default::default(), slot)?;
    }
    let file = std::fs::File::create(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let mut w = std::io::BufWriter::new(file);
    crate::npy::write_f32(&mut w, &[images.len(), r, r, 3], &data)
        .map_err(|e| Error::io(&args.out, e))?;
    Ok(images.len())
}
