//! The `eval` command: top-1 / top-5 accuracy and latency of every variant on a labelled folder.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use image::RgbImage;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::commands::chart::{self, Point};
use crate::commands::dataset::{self, LabeledImage};
use crate::engine::model::Nhwc;
use crate::engine::pool::{ModelPool, Variant};
use crate::engine::workspace::Workspace;
use crate::error::{Error, Result};
use crate::kernels::Tier;
use crate::pipeline::decode::{decode_for, DecodeLimits, Resize};
use crate::pipeline::postprocess::top_k;
use crate::pipeline::preprocess::{preprocess_into, resize_target};

/// Accuracy and speed of one variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Resize, crop and normalisation time per image in milliseconds.
    pub preprocess_ms_per_image: f64,
    /// Multiply-adds per image, when known.
    pub mult_adds: Option<u64>,
    /// Published top-1 of the corresponding TF-slim model, for comparison.
    pub published_top1: Option<f32>,
    /// The top answer for each image, in image order: its ImageNet class, or -1 for the
    /// background output. What a cross-check with another engine compares, image by image.
    #[serde(default)]
    pub top1_classes: Vec<i32>,
}

/// Everything `eval --json` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The folder evaluated.
    pub dataset: String,
    /// Images per variant.
    pub images: usize,
    /// Images per engine call.
    pub batch: usize,
    /// Kernel tier used.
    pub kernels: String,
    /// Mean time to decode one image, in milliseconds.
    pub decode_ms_per_image: f64,
    /// How the images came down to the models' sizes (reports before it was a choice: exact).
    #[serde(default = "exact")]
    pub resize: Resize,
    /// One entry per variant.
    pub variants: Vec<VariantResult>,
}

/// Decoded labelled images and the total time their decoding took.
pub type LoadedImages = (Vec<(LabeledImage, RgbImage)>, Duration);

fn exact() -> Resize {
    Resize::Exact
}

/// Decodes the labelled images of `dir` (the first `limit` of them), in full.
pub fn load_images(dir: &Path, limit: Option<usize>) -> Result<LoadedImages> {
    load_images_for(dir, limit, Resize::Exact, 0)
}

/// [`load_images`] for a resize to `short_target` the `resize` way (`fast`: large JPEGs come at
/// a reduced scale).
pub fn load_images_for(
    dir: &Path,
    limit: Option<usize>,
    resize: Resize,
    short_target: usize,
) -> Result<LoadedImages> {
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
    let mut decoding = Duration::ZERO;
    let mut images = Vec::with_capacity(labels.len());
    for l in labels {
        let bytes = std::fs::read(&l.path).map_err(|e| Error::io(&l.path, e))?;
        let started = Instant::now();
        let img = decode_for(&bytes, &DecodeLimits::default(), resize, short_target)
            .map_err(|e| Error::Catalog(format!("{}: {e}", l.path.display())))?;
        decoding += started.elapsed();
        images.push((l, img));
    }
    Ok((images, decoding))
}

/// Evaluates one variant over `images`, `batch` images per engine call.
pub fn eval_variant(
    pool: &ModelPool,
    v: &Variant,
    images: &[(LabeledImage, RgbImage)],
    batch: usize,
    progress: &ProgressBar,
) -> Result<VariantResult> {
    let r = v.spec.resolution;
    let per = v.input_len();
    let classes = v.model.classes();
    let mut input = vec![0.0f32; batch * per];
    let mut out = Vec::new();
    let mut ws = Workspace::new();
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut top1_classes = Vec::with_capacity(images.len());
    let (mut engine_time, mut preprocess_time) = (Duration::ZERO, Duration::ZERO);
    for chunk in images.chunks(batch) {
        let started = Instant::now();
        for (slot, (_, img)) in input.chunks_exact_mut(per).zip(chunk) {
            preprocess_into(img, r, v.spec.normalization, v.model.kernels().tier, slot)?;
        }
        preprocess_time += started.elapsed();
        let n = chunk.len();
        let started = Instant::now();
        v.model
            .run_with(&mut ws, Nhwc::new(&input[..n * per], n, r, r), &mut out)?;
        engine_time += started.elapsed();
        for ((label, _), scores) in chunk.iter().zip(out.chunks_exact(classes)) {
            let best: Vec<Option<usize>> = top_k(scores, 5)
                .into_iter()
                .map(|(i, _)| pool.class_of(v, i))
                .collect();
            top1 += usize::from(best[0] == Some(label.class));
            top1_classes.push(best[0].map_or(-1, |c| c as i32));
            top5 += usize::from(best.contains(&Some(label.class)));
        }
        progress.inc(n as u64);
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
        preprocess_ms_per_image: preprocess_time.as_secs_f64() * 1000.0 / n,
        // The graph's own count: a manifest's claim can be stale (see the zoo test).
        mult_adds: v.model.mult_adds(r, r).ok(),
        published_top1: v.spec.published_top1,
        top1_classes,
    })
}

/// Evaluates `variants` of `pool`, `jobs` variants at a time; results in their order.
fn eval_all(
    pool: &ModelPool,
    variants: &[&Variant],
    images: &[(LabeledImage, RgbImage)],
    batch: usize,
    jobs: usize,
    progress: &ProgressBar,
) -> Result<Vec<VariantResult>> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<VariantResult>>>> =
        variants.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, variants.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(v) = variants.get(i) else { break };
                let r = eval_variant(pool, v, images, batch, progress);
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(Error::Catalog("an evaluation thread stopped".into())))
        })
        .collect()
}

/// The `eval` command: prints a table, and writes JSON and SVG when asked.
pub fn run(pool: &ModelPool, args: &crate::commands::cli::EvalArgs) -> Result<EvalReport> {
    // Exact decodes once for every variant; fast decodes for each resize target, since the
    // scale a JPEG is decoded at depends on it.
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, v) in pool.variants().iter().enumerate() {
        let target = match args.resize {
            Resize::Exact => 0,
            Resize::Fast => resize_target(v.spec.resolution),
        };
        match groups.iter_mut().find(|(t, _)| *t == target) {
            Some((_, members)) => members.push(i),
            None => groups.push((target, vec![i])),
        }
    }
    let batch = args.batch as usize;
    let mut slots: Vec<Option<VariantResult>> = pool.variants().iter().map(|_| None).collect();
    let (mut decoding, mut decoded, mut count) = (Duration::ZERO, 0usize, 0usize);
    println!(
        "{:<28} {:>7} {:>7} {:>10} {:>9} {:>8} {:>8}",
        "variant", "top-1", "top-5", "published", "ms/img", "img/s", "prep ms"
    );
    for (target, members) in &groups {
        let (images, took) = load_images_for(&args.data, args.limit, args.resize, *target)?;
        decoding += took;
        decoded += images.len();
        count = images.len();
        let variants: Vec<&Variant> = members.iter().map(|i| &pool.variants()[*i]).collect();
        let progress = crate::commands::progress::bar(
            (images.len() * variants.len()) as u64,
            "{elapsed_precise} [{bar:40}] {pos}/{len} images x variants, {eta} left",
        );
        let results = eval_all(
            pool,
            &variants,
            &images,
            batch,
            args.jobs as usize,
            &progress,
        )?;
        drop(progress);
        for (i, r) in members.iter().zip(results) {
            slots[*i] = Some(r);
        }
    }
    let results: Vec<VariantResult> = slots.into_iter().flatten().collect();
    let decode_ms = decoding.as_secs_f64() * 1000.0 / decoded.max(1) as f64;
    println!(
        "decoded {count} images ({}): {decode_ms:.3} ms/img",
        args.resize
    );
    for r in &results {
        println!(
            "{:<28} {:>6.2}% {:>6.2}% {:>10} {:>9.3} {:>8.1} {:>8.3}",
            r.name,
            r.top1,
            r.top5,
            r.published_top1
                .map(|p| format!("{p:.1}%"))
                .unwrap_or_else(|| "-".into()),
            r.ms_per_image,
            1000.0 / r.ms_per_image,
            r.preprocess_ms_per_image
        );
    }
    let report = EvalReport {
        dataset: args.data.display().to_string(),
        images: count,
        batch,
        kernels: pool
            .variants()
            .first()
            .map(|v| v.model.kernels().tier.to_string())
            .unwrap_or_default(),
        decode_ms_per_image: decode_ms,
        resize: args.resize,
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
            "MobileNet v1: top-1 on {} images against latency ({} kernels, batch {batch}, \
             resize {})",
            report.images, report.kernels, report.resize
        );
        std::fs::write(path, chart::accuracy_vs_latency(&title, &points))
            .map_err(|e| Error::io(path, e))?;
        println!("wrote {}", path.display());
    }
    Ok(report)
}

/// The `preprocess` command: writes our model inputs for a labelled folder as one .npy file.
pub fn dump_inputs(args: &crate::commands::cli::PreprocessArgs, tier: Tier) -> Result<usize> {
    let (images, _) = load_images(&args.data, args.limit)?;
    let r = args.size;
    let per = r * r * 3;
    let mut data = vec![0.0f32; images.len() * per];
    for ((_, img), slot) in images.iter().zip(data.chunks_exact_mut(per)) {
        preprocess_into(img, r, Default::default(), tier, slot)?;
    }
    let file = std::fs::File::create(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let mut w = std::io::BufWriter::new(file);
    crate::commands::npy::write_f32(&mut w, &[images.len(), r, r, 3], &data)
        .map_err(|e| Error::io(&args.out, e))?;
    Ok(images.len())
}
