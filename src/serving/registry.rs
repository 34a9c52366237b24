//! The served variants: each with its measured or published accuracy, its cost, its live
//! latency, and which one answers requests that name none. The live model repository grows here.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::latency::LatencyTracker;
use super::metrics::{Metrics, NO_VARIANT};
use super::request::Prediction;
use super::router::{self, Candidate};
use crate::engine::catalog::format_alpha;
use crate::engine::network::Precision;
use crate::engine::pool::{ModelPool, ModelSource, Unavailable, Variant};
use crate::error::{Error, Result};
use crate::pipeline::postprocess::{softmax_in_place, top_k};

/// File name of the accuracy results (`eval --json`) looked for in the models directory.
pub const EVAL_RESULTS: &str = "eval.json";

/// What the registry reads of an accuracy results file (`eval --json` writes more): one entry
/// per measured variant.
#[derive(Debug, Clone, Deserialize)]
pub struct MeasuredAccuracies {
    /// The measured variants.
    pub variants: Vec<MeasuredAccuracy>,
}

/// One variant's measured accuracy.
#[derive(Debug, Clone, Deserialize)]
pub struct MeasuredAccuracy {
    /// Variant name.
    pub name: String,
    /// Images evaluated.
    pub images: usize,
    /// Top-1 in percent.
    pub top1: f64,
    /// Top-5 in percent.
    pub top5: f64,
}

/// What a variant costs per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Multiply-adds.
    pub mult_adds: u64,
    /// Learned parameters.
    pub params: u64,
}

/// The served variants, indexed like the batcher's queues.
#[derive(Debug)]
pub struct Registry {
    pool: ModelPool,
    variants: Arc<[Variant]>,
    accuracy: Vec<Accuracy>,
    costs: Vec<Cost>,
    latency: Arc<[LatencyTracker]>,
    default_index: usize,
}

impl Registry {
    /// The variants of `pool`, with the accuracy of `eval_results` (default: `eval.json` in the
    /// models directory, when present) and `default_model` answering requests that name none
    /// (default: the most accurate).
    pub fn new(
        pool: ModelPool,
        eval_results: Option<&Path>,
        default_model: Option<&str>,
    ) -> Result<Self> {
        let variants: Arc<[Variant]> = pool.variants().to_vec().into();
        let accuracy = read_accuracy(&pool, eval_results)?;
        let mut costs = Vec::with_capacity(variants.len());
        for v in variants.iter() {
            let r = v.spec.resolution;
            costs.push(Cost {
                mult_adds: v.model.mult_adds(r, r)?,
                params: v.model.params() as u64,
            });
        }
        let failed = |name: &str| pool.unavailable().iter().any(|u| u.name == name);
        let default_index = match default_model {
            Some(name) if failed(name) => {
                // Serving the rest is the point of loading what loads.
                tracing::warn!(variant = %name,
                    "the default model failed to load: the most accurate of the rest answers");
                most_accurate(&variants, &accuracy, &costs)
            }
            Some(name) => variants
                .iter()
                .position(|v| v.spec.name == name)
                .ok_or_else(|| Error::UnknownModel {
                    name: name.to_string(),
                    known: pool.names().join(", "),
                })?,
            None => most_accurate(&variants, &accuracy, &costs),
        };
        let latency = variants.iter().map(|_| LatencyTracker::default()).collect();
        Ok(Registry {
            pool,
            variants,
            accuracy,
            costs,
            latency,
            default_index,
        })
    }

    /// The loaded variants.
    pub fn variants(&self) -> &Arc<[Variant]> {
        &self.variants
    }

    /// The live latency of each variant, same indices.
    pub fn latency(&self) -> &Arc<[LatencyTracker]> {
        &self.latency
    }

    /// The variant answering requests that select none.
    pub fn default_index(&self) -> usize {
        self.default_index
    }

    /// The variants of the catalogue that failed to load, and why.
    pub fn unavailable(&self) -> &[Unavailable] {
        self.pool.unavailable()
    }

    /// The index of the loaded variant called `name`; a variant that failed to load, or an
    /// unknown name, is an error saying which.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        if let Some(i) = self.variants.iter().position(|v| v.spec.name == name) {
            return Ok(i);
        }
        match self.unavailable().iter().find(|u| u.name == name) {
            Some(u) => Err(Error::ModelUnavailable {
                name: name.to_string(),
                reason: u.error.clone(),
            }),
            None => Err(Error::UnknownModel {
                name: name.to_string(),
                known: self.pool.names().join(", "),
            }),
        }
    }

    /// The `variant` label under which a request for model `name` is counted: the name when such
    /// a variant is loaded, else `none` (unknown names must not grow the label set).
    pub fn metrics_label(&self, name: &str) -> &str {
        match self.index_of(name) {
            Ok(i) => &self.variants[i].spec.name,
            Err(_) => NO_VARIANT,
        }
    }

    /// The class name of output `index` of `variant` (`background` for TF-slim's extra class).
    pub fn label(&self, variant: &Variant, index: usize) -> String {
        self.pool.label(variant, index)
    }

    /// Softmax (unless the graph has one), then the top `k` ImageNet classes of variant
    /// `index`; the background output of 1001-class models is never a prediction.
    pub fn predictions(&self, index: usize, scores: &[f32], k: usize) -> Vec<Prediction> {
        let variant = &self.variants[index];
        let mut probs = scores.to_vec();
        if !variant.model.softmax() {
            softmax_in_place(&mut probs);
        }
        let offset = variant.spec.label_offset;
        top_k(&probs[offset.min(probs.len())..], k)
            .into_iter()
            .map(|(class, score)| Prediction {
                index: class,
                label: self.pool.label(variant, class + offset),
                score,
            })
            .collect()
    }

    /// What the router sees: each variant's accuracy and predicted latency (one batch plus the
    /// decayed queue wait plus the `queued` images' full batches of `max_batch` ahead).
    /// Unmeasured variants are predicted as infinitely slow: they never fit a latency budget.
    /// Each finite prediction is also published to `metrics`.
    pub fn candidates(
        &self,
        now: Instant,
        queued: &[usize],
        max_batch: usize,
        metrics: &Metrics,
    ) -> Vec<Candidate> {
        let max_batch = max_batch.max(1);
        self.variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let tracker = &self.latency[i];
                // Full batches queued ahead; batches run one at a time, each on every engine
                // thread, so their measured time already counts the threads.
                let ahead = (queued[i] / max_batch) as f64;
                let predicted_ms = match (tracker.predicted_ms(now), tracker.batch_ms()) {
                    (Some(p), Some(b)) => p + ahead * b,
                    _ => f64::INFINITY,
                };
                if predicted_ms.is_finite() {
                    metrics
                        .predicted_latency
                        .with_label_values(&[&v.spec.name])
                        .set(predicted_ms / 1e3);
                }
                Candidate {
                    name: v.spec.name.clone(),
                    alpha: v.spec.alpha,
                    resolution: v.spec.resolution,
                    precision: v.spec.precision,
                    top1: self.accuracy[i].top1,
                    predicted_ms,
                }
            })
            .collect()
    }

    /// Every variant as `/v1/models` lists it, given the images `queued` per variant.
    pub fn describe(
        &self,
        now: Instant,
        queued: &[usize],
        max_batch: usize,
        metrics: &Metrics,
    ) -> Vec<ModelInfo> {
        let candidates = self.candidates(now, queued, max_batch, metrics);
        let dominated = router::dominated(&candidates);
        self.variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let snap = self.latency[i].snapshot(now);
                ModelInfo {
                    name: v.spec.name.clone(),
                    alpha: v.spec.alpha,
                    resolution: v.spec.resolution,
                    precision: v.spec.precision,
                    num_classes: v.spec.num_classes,
                    params: self.costs[i].params,
                    mult_adds: self.costs[i].mult_adds,
                    weights: v.spec.weights.clone(),
                    accuracy: self.accuracy[i],
                    latency_ms: LatencyInfo {
                        p50: snap.p50_ms,
                        p95: snap.p95_ms,
                        samples: snap.samples,
                        predicted: candidates[i]
                            .predicted_ms
                            .is_finite()
                            .then_some(candidates[i].predicted_ms),
                    },
                    queue_depth: queued[i],
                    dominated: dominated[i],
                    default: i == self.default_index,
                    sha256: v.sha256.clone(),
                    verified: v.verified,
                    source: v.source,
                }
            })
            .collect()
    }

    /// Sets the metrics that do not change while the variants stay: costs, accuracy, failures.
    pub fn publish(&self, metrics: &Metrics) {
        metrics
            .models_unavailable
            .set(self.unavailable().len() as i64);
        for (i, v) in self.variants.iter().enumerate() {
            let name = v.spec.name.as_str();
            let cost = self.costs[i];
            metrics
                .mult_adds
                .with_label_values(&[name])
                .set(cost.mult_adds as f64);
            metrics
                .parameters
                .with_label_values(&[name])
                .set(cost.params as f64);
            let (alpha, resolution) = (format_alpha(v.spec.alpha), v.spec.resolution.to_string());
            metrics
                .variant_info
                .with_label_values(&[name, v.spec.precision.as_str(), &alpha, &resolution])
                .set(1.0);
            let acc = &self.accuracy[i];
            if let Some(t) = acc.top1 {
                metrics.top1.with_label_values(&[name, acc.source]).set(t);
            }
            if let Some(t) = acc.top5 {
                metrics.top5.with_label_values(&[name, acc.source]).set(t);
            }
            metrics.queue_depth.with_label_values(&[name]).set(0);
        }
    }
}

/// A variant's accuracy and where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Accuracy {
    /// Top-1 in percent.
    pub top1: Option<f64>,
    /// Top-5 in percent.
    pub top5: Option<f64>,
    /// `measured` (this project's `eval`), `published` (the manifest), or `unknown`.
    #[schema(value_type = String, example = "measured")]
    pub source: &'static str,
    /// Images the measurement used.
    pub images: Option<usize>,
}

/// Live latency in `/v1/models`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LatencyInfo {
    /// Median per-image latency (queue + inference) in this process.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// Images measured.
    pub samples: usize,
    /// What the router predicts for a new request now.
    pub predicted: Option<f64>,
}

/// What `/v1/models` says about one variant.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// Variant name.
    #[schema(example = "mobilenet_v1_0.5_160")]
    pub name: String,
    /// Width multiplier.
    pub alpha: f32,
    /// Input resolution.
    pub resolution: usize,
    /// Number format: `fp32` or `int8`.
    pub precision: Precision,
    /// Model outputs (1001 with TF-slim's background class).
    pub num_classes: usize,
    /// Learned parameters.
    pub params: u64,
    /// Multiply-adds per image.
    pub mult_adds: u64,
    /// `float` or `dequantized-uint8-qat`, when the manifest says.
    pub weights: Option<String>,
    /// Accuracy and its source.
    pub accuracy: Accuracy,
    /// Live latency.
    pub latency_ms: LatencyInfo,
    /// Images queued now.
    pub queue_depth: usize,
    /// Another variant is both faster here and more accurate.
    pub dominated: bool,
    /// Answers requests that select no variant.
    pub default: bool,
    /// The sha256 of its model file, as loaded.
    pub sha256: String,
    /// Whether that digest matched an expected one (the manifest's or `SHA256SUMS`).
    pub verified: bool,
    /// `file` (from the models directory) or `embedded` (the default model compiled into the
    /// binary).
    pub source: ModelSource,
}

/// A manifest percentage as f64 without float noise (70.9f32 is 70.90000152587891 as f64).
fn percent(p: f32) -> f64 {
    (f64::from(p) * 100.0).round() / 100.0
}

/// The default default: the most accurate variant, the cheaper one on ties; a float one when
/// there is one, so that serving the 8-bit zoo too does not change what a plain request gets.
fn most_accurate(variants: &[Variant], accuracy: &[Accuracy], costs: &[Cost]) -> usize {
    let any_float = variants.iter().any(|v| v.spec.precision == Precision::Fp32);
    (0..accuracy.len())
        .filter(|&i| !any_float || variants[i].spec.precision == Precision::Fp32)
        .max_by(|&a, &b| {
            let t = |i: usize| accuracy[i].top1.unwrap_or(f64::NEG_INFINITY);
            t(a).total_cmp(&t(b))
                .then(costs[b].mult_adds.cmp(&costs[a].mult_adds))
        })
        .unwrap_or(0)
}

/// Each variant's accuracy: measured by `eval` when its results file has the variant, else the
/// manifest's published figure.
fn read_accuracy(pool: &ModelPool, path: Option<&Path>) -> Result<Vec<Accuracy>> {
    let default_path = pool.dir().join(EVAL_RESULTS);
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (default_path, false),
    };
    let report: Option<MeasuredAccuracies> = match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).map_err(|e| {
            Error::Catalog(format!(
                "{}: not an `eval --json` report: {e}",
                path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
        Err(e) => return Err(Error::io(&path, e)),
    };
    if report.is_some() {
        tracing::info!(path = %path.display(), "measured accuracy read");
    }
    Ok(pool
        .variants()
        .iter()
        .map(|v| {
            let measured = report
                .as_ref()
                .and_then(|r| r.variants.iter().find(|m| m.name == v.spec.name));
            match measured {
                Some(m) => Accuracy {
                    top1: Some(m.top1),
                    top5: Some(m.top5),
                    source: "measured",
                    images: Some(m.images),
                },
                None if v.spec.published_top1.is_some() => Accuracy {
                    top1: v.spec.published_top1.map(percent),
                    top5: v.spec.published_top5.map(percent),
                    source: "published",
                    images: None,
                },
                None => Accuracy {
                    top1: None,
                    top5: None,
                    source: "unknown",
                    images: None,
                },
            }
        })
        .collect())
}
