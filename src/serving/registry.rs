//! The served variants: each with its measured or published accuracy, its cost, its live
//! latency, and which one answers requests that name none; swapped whole as models are loaded,
//! replaced and unloaded.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::batcher::QueueKey;
use super::latency::LatencyTracker;
use super::memory::release_free_memory;
use super::metrics::{Metrics, NO_VARIANT};
use super::router::{self, Candidate};
use crate::engine::catalog::format_alpha;
use crate::engine::network::Precision;
use crate::engine::pool::{ModelPool, ModelSource, Unavailable, Variant};
use crate::engine::repository::FileStamp;
use crate::error::{Error, Result};

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

/// One load of a variant, as the service serves it: the model, what it costs and scores, and
/// its live latency. A reload of the same name is another `Served` (another queue key); the
/// old one lives on while requests that chose it still hold it, then its memory goes.
#[derive(Debug)]
pub struct Served {
    key: u64,
    variant: Variant,
    accuracy: Accuracy,
    cost: Cost,
    latency: LatencyTracker,
    stamp: Option<FileStamp>,
    retired: AtomicBool,
    /// Last, so that it drops after the model: a load leaves when its last holder (a request,
    /// a batch, the registry) lets it go, and its weights then go back to the system.
    _release: ReleaseOnDrop,
}

/// Gives freed memory back to the system when dropped ([`release_free_memory`]).
#[derive(Debug)]
struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        release_free_memory();
    }
}

impl Served {
    /// The variant.
    pub fn variant(&self) -> &Variant {
        &self.variant
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.variant.spec.name
    }

    /// Its accuracy and where the figure comes from.
    pub fn accuracy(&self) -> Accuracy {
        self.accuracy
    }

    /// Its live latency.
    pub fn latency(&self) -> &LatencyTracker {
        &self.latency
    }

    /// Its file's stamp when it was read (`None` for the embedded model).
    pub fn stamp(&self) -> Option<FileStamp> {
        self.stamp
    }

    /// Marks it replaced or unloaded: new requests no longer find it.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

impl QueueKey for Served {
    fn key(&self) -> u64 {
        self.key
    }

    fn name(&self) -> &str {
        &self.variant.spec.name
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// What is served at one moment: requests take it once and route within it, so that a swap
/// never shows them half a change.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The loaded variants, in catalogue order.
    pub served: Vec<Arc<Served>>,
    /// Variants of the catalogue that are not served, and why (failed to load, or unloaded).
    pub unavailable: Vec<Unavailable>,
    /// Index in `served` of the variant answering requests that select none.
    pub default: Option<usize>,
}

impl Snapshot {
    /// The served variant called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Served>> {
        self.served.iter().find(|s| s.name() == name)
    }

    /// The names of the served variants, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.served.iter().map(|s| s.name())
    }
}

/// The served variants as they change: the current [`Snapshot`], swapped whole.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    class_names: Vec<String>,
    eval_results: Option<PathBuf>,
    default_model: Option<String>,
    current: RwLock<Arc<Snapshot>>,
    next_key: AtomicU64,
}

impl Registry {
    /// The variants of `pool`, with the accuracy of `eval_results` (default: `eval.json` in the
    /// models directory, when present) and `default_model` answering requests that name none
    /// (default: the most accurate).
    /// An unknown `default_model` is an error unless `may_load_later` (`explicit` model
    /// control, where it may be loaded after start).
    pub fn new(
        pool: ModelPool,
        eval_results: Option<&Path>,
        default_model: Option<&str>,
        may_load_later: bool,
    ) -> Result<Self> {
        let registry = Registry {
            dir: pool.dir().to_path_buf(),
            class_names: pool.class_names().to_vec(),
            eval_results: eval_results.map(Path::to_path_buf),
            default_model: default_model.map(str::to_string),
            current: RwLock::new(Arc::default()),
            next_key: AtomicU64::new(0),
        };
        let measured = registry.read_measured()?;
        let served = pool
            .variants()
            .iter()
            .map(|v| registry.serve(v.clone(), None, measured.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if let Some(name) = default_model {
            let failed = pool.unavailable().iter().any(|u| u.name == name);
            if failed {
                // Serving the rest is the point of loading what loads.
                tracing::warn!(variant = %name,
                    "the default model failed to load: the most accurate of the rest answers");
            } else if !pool.variants().iter().any(|v| v.spec.name == name) && !may_load_later {
                return Err(Error::UnknownModel {
                    name: name.to_string(),
                    known: pool.names().join(", "),
                });
            }
        }
        registry.install(served, pool.unavailable().to_vec());
        Ok(registry)
    }

    /// What is served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces what is served by `served` and `unavailable`, and returns the loads that are no
    /// longer served (to retire once no request holds them). Callers serialise their changes.
    pub fn install(
        &self,
        served: Vec<Arc<Served>>,
        unavailable: Vec<Unavailable>,
    ) -> Vec<Arc<Served>> {
        let default = self.default_of(&served);
        let next = Arc::new(Snapshot {
            served,
            unavailable,
            default,
        });
        let previous = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            next.clone(),
        );
        previous
            .served
            .iter()
            .filter(|old| !next.served.iter().any(|s| s.key == old.key))
            .cloned()
            .collect()
    }

    /// A load of `variant`, ready to install: its cost, its accuracy (`measured` by `eval`
    /// when given, else the manifest's), a fresh latency tracker and queue key.
    pub fn serve(
        &self,
        variant: Variant,
        stamp: Option<FileStamp>,
        measured: Option<&MeasuredAccuracies>,
    ) -> Result<Arc<Served>> {
        let r = variant.spec.resolution;
        let cost = Cost {
            mult_adds: variant.model.mult_adds(r, r)?,
            params: variant.model.params() as u64,
        };
        Ok(Arc::new(Served {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            accuracy: accuracy_of(&variant, measured),
            variant,
            cost,
            latency: LatencyTracker::default(),
            stamp,
            retired: AtomicBool::new(false),
            _release: ReleaseOnDrop,
        }))
    }

    /// The models directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The accuracy results file (`--eval-results`, else `eval.json` in the models directory
    /// when present), read now: a rescan sees a new measurement.
    pub fn read_measured(&self) -> Result<Option<MeasuredAccuracies>> {
        read_measured(&self.dir, self.eval_results.as_deref())
    }

    /// The configured default: the named variant while it is served, else the most accurate.
    fn default_of(&self, served: &[Arc<Served>]) -> Option<usize> {
        let named = self
            .default_model
            .as_deref()
            .and_then(|name| served.iter().position(|s| s.name() == name));
        named.or_else(|| most_accurate(served))
    }

    /// The served variant called `name`; a variant that failed to load or was unloaded, or an
    /// unknown name, is an error saying which.
    pub fn resolve(&self, name: &str) -> Result<Arc<Served>> {
        let snapshot = self.snapshot();
        if let Some(s) = snapshot.get(name) {
            return Ok(s.clone());
        }
        match snapshot.unavailable.iter().find(|u| u.name == name) {
            Some(u) => Err(Error::ModelUnavailable {
                name: name.to_string(),
                reason: if u.error == UNLOADED {
                    "it was unloaded".to_string()
                } else {
                    format!("it failed to load: {}", u.error)
                },
            }),
            None => Err(Error::UnknownModel {
                name: name.to_string(),
                known: snapshot.names().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The `variant` label under which a request for model `name` is counted: the name when such
    /// a variant is served, else `none` (unknown names must not grow the label set).
    pub fn metrics_label(&self, name: &str) -> String {
        match self.snapshot().get(name) {
            Some(s) => s.name().to_string(),
            None => NO_VARIANT.to_string(),
        }
    }

    /// The class name of output `index` of `variant` (`background` for TF-slim's extra class).
    pub fn label(&self, variant: &Variant, index: usize) -> String {
        match index.checked_sub(variant.spec.label_offset) {
            None => "background".into(),
            Some(c) => self
                .class_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("class_{c}")),
        }
    }
}

/// What the router sees of `snapshot`: each variant's accuracy and predicted latency (one
/// batch plus the decayed queue wait plus the `queued` images' full batches of `max_batch`
/// ahead). Unmeasured variants are predicted as infinitely slow: they never fit a latency
/// budget. Each finite prediction is also published to `metrics`.
pub fn candidates(
    snapshot: &Snapshot,
    now: Instant,
    queued: &[usize],
    max_batch: usize,
    metrics: &Metrics,
) -> Vec<Candidate> {
    let max_batch = max_batch.max(1);
    snapshot
        .served
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = &s.variant;
            // Full batches queued ahead; batches run one at a time, each on every engine
            // thread, so their measured time already counts the threads.
            let ahead = (queued[i] / max_batch) as f64;
            let predicted_ms = match (s.latency.predicted_ms(now), s.latency.batch_ms()) {
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
                top1: s.accuracy.top1,
                predicted_ms,
            }
        })
        .collect()
}

/// Every variant of `snapshot` as `/v1/models` lists it, given the images `queued` per variant.
pub fn describe(
    snapshot: &Snapshot,
    now: Instant,
    queued: &[usize],
    max_batch: usize,
    metrics: &Metrics,
) -> Vec<ModelInfo> {
    let candidates = candidates(snapshot, now, queued, max_batch, metrics);
    let dominated = router::dominated(&candidates);
    snapshot
        .served
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = &s.variant;
            let snap = s.latency.snapshot(now);
            ModelInfo {
                name: v.spec.name.clone(),
                alpha: v.spec.alpha,
                resolution: v.spec.resolution,
                precision: v.spec.precision,
                num_classes: v.spec.num_classes,
                params: s.cost.params,
                mult_adds: s.cost.mult_adds,
                weights: v.spec.weights.clone(),
                accuracy: s.accuracy,
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
                default: Some(i) == snapshot.default,
                sha256: v.sha256.clone(),
                verified: v.verified,
                source: v.source,
            }
        })
        .collect()
}

/// Sets the metrics that do not change while a load is served (costs, accuracy, readiness),
/// and the count of failures.
pub fn publish(snapshot: &Snapshot, metrics: &Metrics) {
    let failed = snapshot
        .unavailable
        .iter()
        .filter(|u| u.error != UNLOADED)
        .count();
    metrics.models_unavailable.set(failed as i64);
    for s in &snapshot.served {
        let name = s.name();
        metrics
            .mult_adds
            .with_label_values(&[name])
            .set(s.cost.mult_adds as f64);
        metrics
            .parameters
            .with_label_values(&[name])
            .set(s.cost.params as f64);
        metrics
            .variant_info
            .with_label_values(&info_labels(s).each_ref().map(String::as_str))
            .set(1.0);
        let acc = &s.accuracy;
        if let Some(t) = acc.top1 {
            metrics.top1.with_label_values(&[name, acc.source]).set(t);
        }
        if let Some(t) = acc.top5 {
            metrics.top5.with_label_values(&[name, acc.source]).set(t);
        }
        metrics.model_ready.with_label_values(&[name]).set(1);
        // Listed from the start (at 0) without overwriting a queue already in use.
        metrics.queue_depth.with_label_values(&[name]);
    }
    for u in &snapshot.unavailable {
        metrics.model_ready.with_label_values(&[&u.name]).set(0);
    }
}

/// Removes the series of a load that is no longer served, so that dashboards stop showing a
/// variant that left (or its old accuracy and cost once replaced); `publish` then sets those
/// of what is served.
pub fn unpublish(retired: &Served, metrics: &Metrics) {
    let name = retired.name();
    let _ = metrics.mult_adds.remove_label_values(&[name]);
    let _ = metrics.parameters.remove_label_values(&[name]);
    let labels = info_labels(retired);
    let _ = metrics
        .variant_info
        .remove_label_values(&labels.each_ref().map(String::as_str));
    let source = retired.accuracy.source;
    let _ = metrics.top1.remove_label_values(&[name, source]);
    let _ = metrics.top5.remove_label_values(&[name, source]);
    let _ = metrics.predicted_latency.remove_label_values(&[name]);
}

/// The labels of `mobilenet_variant_info`: name, precision, alpha, resolution.
fn info_labels(s: &Served) -> [String; 4] {
    let spec = &s.variant.spec;
    [
        spec.name.clone(),
        spec.precision.as_str().to_string(),
        format_alpha(spec.alpha),
        spec.resolution.to_string(),
    ]
}

/// The `reason` of a variant unloaded on request (not failed).
pub const UNLOADED: &str = "unloaded";

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
fn most_accurate(served: &[Arc<Served>]) -> Option<usize> {
    let any_float = served
        .iter()
        .any(|s| s.variant.spec.precision == Precision::Fp32);
    (0..served.len())
        .filter(|&i| !any_float || served[i].variant.spec.precision == Precision::Fp32)
        .max_by(|&a, &b| {
            let t = |i: usize| served[i].accuracy.top1.unwrap_or(f64::NEG_INFINITY);
            t(a).total_cmp(&t(b))
                .then(served[b].cost.mult_adds.cmp(&served[a].cost.mult_adds))
        })
}

/// The measured accuracies of `path` (required), else of `dir/eval.json` when present.
fn read_measured(dir: &Path, path: Option<&Path>) -> Result<Option<MeasuredAccuracies>> {
    let default_path = dir.join(EVAL_RESULTS);
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
        tracing::debug!(path = %path.display(), "measured accuracy read");
    }
    Ok(report)
}

/// A variant's accuracy: measured by `eval` when the report has the variant, else the
/// manifest's published figure.
fn accuracy_of(v: &Variant, report: Option<&MeasuredAccuracies>) -> Accuracy {
    let measured = report.and_then(|r| r.variants.iter().find(|m| m.name == v.spec.name));
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
}
