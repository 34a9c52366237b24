//! The classification service, independent of any protocol: admission, routing, decoding on the
//! blocking pool, batching onto the engine threads, postprocessing, and the metrics of each step.
//! HTTP (and later gRPC) handlers only translate to and from it.

pub mod batcher;
pub mod latency;
pub mod metrics;
pub mod router;
pub mod shutdown;
pub mod workers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::api::auth::Auth;
use crate::commands::eval::EvalReport;
use crate::engine::pool::{ModelPool, Unavailable, Variant};
use crate::error::{Error, Result};
use crate::pipeline::decode::{decode, DecodeLimits};
use crate::pipeline::postprocess::{softmax_in_place, top_k};
use crate::pipeline::preprocess::{preprocess, Normalization};
use crate::serving::batcher::{BatchPolicy, Batcher, Incoming, Job, JobOutput};
use crate::serving::latency::LatencyTracker;
use crate::serving::metrics::{Metrics, NO_VARIANT};
use crate::serving::router::{Candidate, Selection};
use crate::serving::workers::{EngineContext, EngineThreads};

/// File name of the accuracy results (`eval --json`) looked for in the models directory.
pub const EVAL_RESULTS: &str = "eval.json";
/// Largest `top_k` a request may ask for.
pub const MAX_TOP_K: usize = 1000;

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Batch size and delay limits.
    pub batch: BatchPolicy,
    /// Images each variant's queue holds at most.
    pub max_queue: usize,
    /// Requests handled at once in the whole process; more get 429.
    pub max_concurrent_requests: usize,
    /// Deadline of a request that gives none.
    pub request_timeout: Duration,
    /// Largest deadline a request may ask for.
    pub max_request_timeout: Duration,
    /// Images per request at most.
    pub max_images_per_request: usize,
    /// Byte and pixel limits of each image.
    pub decode_limits: DecodeLimits,
    /// The variant answering requests that select none (default: the most accurate).
    pub default_model: Option<String>,
    /// Engine threads.
    pub engine_threads: usize,
    /// Accuracy results to read (default: `eval.json` in the models directory, when present).
    pub eval_results: Option<PathBuf>,
    /// Who needs the API key (nobody without one).
    pub auth: Auth,
}

impl ServiceConfig {
    /// Refuses settings under which the service could not work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.batch.max_batch == 0 {
            return bad("the batch size must be at least 1".into());
        }
        if self.engine_threads == 0 {
            return bad("at least one engine thread is needed".into());
        }
        if self.max_concurrent_requests == 0 {
            return bad("at least one concurrent request must be allowed".into());
        }
        if self.max_images_per_request > self.max_queue {
            return bad(format!(
                "a request of {} images would never fit a queue of {}: raise the queue bound or \
                 lower the images per request",
                self.max_images_per_request, self.max_queue
            ));
        }
        Ok(())
    }
}

/// One classification request, as every protocol hands it over.
#[derive(Debug, Clone)]
pub struct ClassifyRequest {
    /// Encoded images (JPEG, PNG, WebP, BMP, GIF).
    pub images: Vec<Bytes>,
    /// Which variant should answer.
    pub selection: Selection,
    /// Predictions per image.
    pub top_k: usize,
    /// The client's deadline, from now (the configured default when `None`).
    pub timeout: Option<Duration>,
}

/// Images in one of the two forms a request may carry.
#[derive(Debug, Clone)]
pub enum Images {
    /// Encoded images (JPEG, PNG, WebP, BMP, GIF), decoded and preprocessed by the service.
    Encoded(Vec<Bytes>),
    /// `count` images already preprocessed the way the ONNX model takes them: normalised, NCHW,
    /// at the variant's resolution, flattened in row-major order.
    Nchw {
        /// The elements, `count x channels x resolution x resolution`.
        data: Vec<f32>,
        /// Images in `data`.
        count: usize,
    },
}

impl Images {
    /// How many images.
    pub fn len(&self) -> usize {
        match self {
            Images::Encoded(list) => list.len(),
            Images::Nchw { count, .. } => *count,
        }
    }

    /// No image at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request for one named variant's raw outputs (the Open Inference Protocol's inference).
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// The variant.
    pub model: String,
    /// Its inputs.
    pub images: Images,
    /// The client's deadline, from now (the configured default when `None`).
    pub timeout: Option<Duration>,
}

/// The model's outputs for an [`InferRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// The variant that answered.
    pub model: String,
    /// The model's output row of each image (logits, or probabilities when the graph ends with
    /// a softmax), in request order.
    pub outputs: Vec<Vec<f32>>,
    /// Where the time went (`postprocess` is left to the protocol).
    pub timings: Timings,
}

/// One predicted class.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"index": 207, "label": "golden retriever", "score": 0.91}))]
pub struct Prediction {
    /// ImageNet class index (0..999).
    #[schema(maximum = 999)]
    pub index: usize,
    /// Its human-readable name.
    pub label: String,
    /// Softmax probability.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub score: f32,
}

/// Where a request's time went, in milliseconds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Timings {
    /// Decoding every image.
    pub decode: f64,
    /// Resizing, cropping and normalising every image.
    pub preprocess: f64,
    /// Waiting for a batch (the longest of the request's images).
    pub queue: f64,
    /// The batch inference (the longest of the request's images).
    pub inference: f64,
    /// Softmax, top-k and labels.
    pub postprocess: f64,
    /// Everything, from admission to the answer.
    pub total: f64,
}

impl Timings {
    /// Each stage's name (the `stage` label in the metrics) and its milliseconds, in order.
    pub fn stages(&self) -> [(&'static str, f64); 6] {
        [
            ("decode", self.decode),
            ("preprocess", self.preprocess),
            ("queue", self.queue),
            ("inference", self.inference),
            ("postprocess", self.postprocess),
            ("total", self.total),
        ]
    }
}

/// The answer to a [`ClassifyRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyResponse {
    /// The variant that answered.
    pub model: String,
    /// The top-k predictions of each image, in request order.
    pub predictions: Vec<Vec<Prediction>>,
    /// Whether the latency/accuracy target was met, when one was given.
    pub target_met: Option<bool>,
    /// Where the time went.
    pub timings: Timings,
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
    /// The sha256 of its ONNX file, as loaded.
    pub sha256: String,
    /// Whether that digest matched an expected one (the manifest's or `SHA256SUMS`).
    pub verified: bool,
}

/// The running service: the variants, their queues and engine threads, and the metrics.
#[derive(Debug)]
pub struct Service {
    variants: Arc<[Variant]>,
    pool: Arc<ModelPool>,
    batcher: Arc<Batcher>,
    latency: Arc<[LatencyTracker]>,
    accuracy: Vec<Accuracy>,
    costs: Vec<(u64, u64)>,
    metrics: Arc<Metrics>,
    admission: Arc<Semaphore>,
    config: ServiceConfig,
    default_index: usize,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Readiness as a watchable value (for gRPC health), kept equal to [`Service::is_ready`].
    readiness: watch::Sender<bool>,
    engine: Mutex<Option<EngineThreads>>,
}

impl Service {
    /// Builds the service over `pool` and starts its engine threads (unless `start_engine` is
    /// false: tests use that to hold work in the queues).
    pub fn new(pool: ModelPool, config: ServiceConfig, start_engine: bool) -> Result<Arc<Self>> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new().map_err(|e| Error::Internal(e.to_string()))?);
        let variants: Arc<[Variant]> = pool.variants().to_vec().into();
        let names: Vec<String> = variants.iter().map(|v| v.spec.name.clone()).collect();
        let accuracy = read_accuracy(&pool, config.eval_results.as_deref())?;
        let mut costs = Vec::with_capacity(variants.len());
        for v in variants.iter() {
            let r = v.spec.resolution;
            costs.push((
                v.model.plan().mult_adds(r, r)?,
                v.model.plan().params() as u64,
            ));
        }
        let failed = |name: &String| pool.unavailable().iter().any(|u| &u.name == name);
        let default_index = match &config.default_model {
            Some(name) if failed(name) => {
                // Serving the rest is the point of loading what loads.
                tracing::warn!(variant = %name,
                    "the default model failed to load: the most accurate of the rest answers");
                most_accurate(&accuracy, &costs)
            }
            Some(name) => {
                names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| Error::UnknownModel {
                        name: name.clone(),
                        known: names.join(", "),
                    })?
            }
            None => most_accurate(&accuracy, &costs),
        };
        let batcher = Arc::new(Batcher::new(
            names,
            config.batch,
            config.max_queue,
            metrics.clone(),
        ));
        let latency: Arc<[LatencyTracker]> =
            variants.iter().map(|_| LatencyTracker::default()).collect();
        let service = Arc::new(Service {
            admission: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            pool: Arc::new(pool),
            variants,
            batcher,
            latency,
            accuracy,
            costs,
            metrics,
            config,
            default_index,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            readiness: watch::channel(false).0,
            engine: Mutex::new(None),
        });
        service.publish_static_metrics();
        if start_engine {
            service.start_engine()?;
        }
        Ok(service)
    }

    /// Starts the engine threads (once).
    pub fn start_engine(&self) -> Result<()> {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        if engine.is_none() {
            let ctx = EngineContext {
                batcher: self.batcher.clone(),
                variants: self.variants.clone(),
                latency: self.latency.clone(),
                metrics: self.metrics.clone(),
            };
            *engine = Some(EngineThreads::spawn(self.config.engine_threads, ctx)?);
        }
        Ok(())
    }

    fn publish_static_metrics(&self) {
        self.metrics
            .models_unavailable
            .set(self.unavailable().len() as i64);
        for (i, v) in self.variants.iter().enumerate() {
            let name = v.spec.name.as_str();
            let (mult_adds, params) = self.costs[i];
            self.metrics
                .mult_adds
                .with_label_values(&[name])
                .set(mult_adds as f64);
            self.metrics
                .parameters
                .with_label_values(&[name])
                .set(params as f64);
            let acc = &self.accuracy[i];
            if let Some(t) = acc.top1 {
                self.metrics
                    .top1
                    .with_label_values(&[name, acc.source])
                    .set(t);
            }
            if let Some(t) = acc.top5 {
                self.metrics
                    .top5
                    .with_label_values(&[name, acc.source])
                    .set(t);
            }
            self.metrics.queue_depth.with_label_values(&[name]).set(0);
        }
    }

    /// The metrics (for `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Runs every variant a few times through the real queue and engine threads, so that weights
    /// are paged in and the router has a latency for each before traffic arrives; then the
    /// service reports ready.
    pub async fn warm_up(&self) -> Result<()> {
        for (i, v) in self.variants.iter().enumerate() {
            let mut last = None;
            for _ in 0..3 {
                let deadline = Instant::now() + Duration::from_secs(60);
                // Traffic may already fill the queue: wait for room rather than never being ready.
                let out = loop {
                    let (job, rx) = Job::new(vec![0.0; v.input_len()], deadline);
                    match self.batcher.submit(i, vec![job]) {
                        Ok(()) => {
                            break rx.await.map_err(|_| {
                                Error::Internal("the engine stopped during warm-up".into())
                            })??
                        }
                        Err(Error::QueueFull { .. }) => {
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        Err(e) => return Err(e),
                    }
                };
                last = Some(out.inference);
            }
            if let Some(t) = last {
                self.latency[i].seed_batch(t);
            }
            tracing::info!(
                variant = %v.spec.name,
                ms = last.unwrap_or_default().as_secs_f64() * 1e3,
                "warmed up"
            );
        }
        self.ready.store(true, Ordering::SeqCst);
        // Evaluated under the channel's lock, so a drain starting meanwhile cannot be overwritten.
        self.readiness.send_modify(|r| {
            *r = self.is_ready();
            self.metrics.ready.set(i64::from(*r));
        });
        Ok(())
    }

    /// Ready: warmed up and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    /// Shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Fails readiness and refuses new requests; admitted ones still get their answers.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.readiness.send_modify(|r| {
            *r = false;
            self.metrics.ready.set(0);
        });
    }

    /// Follows readiness: `true` once warmed up, `false` again when draining starts.
    pub fn watch_readiness(&self) -> watch::Receiver<bool> {
        self.readiness.subscribe()
    }

    /// Lets the engine threads finish what is queued, then stops them. Blocks.
    pub fn stop_engine(&self) {
        self.batcher.close();
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(engine) = engine {
            engine.join();
        }
    }

    /// Every variant, as `/v1/models` lists them.
    pub fn models(&self) -> Vec<ModelInfo> {
        let now = Instant::now();
        let queued = self.batcher.queued_all();
        let candidates = self.candidates(now, &queued);
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
                    num_classes: v.spec.num_classes,
                    params: self.costs[i].1,
                    mult_adds: self.costs[i].0,
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
                }
            })
            .collect()
    }

    /// One variant, as `/v1/models/{name}` shows it.
    pub fn model(&self, name: &str) -> Result<ModelInfo> {
        let index = self.index_of(name)?;
        Ok(self.models().swap_remove(index))
    }

    /// The variants of the catalogue that failed to load, and why.
    pub fn unavailable(&self) -> &[Unavailable] {
        self.pool.unavailable()
    }

    /// What the router sees: each variant's accuracy and predicted latency (one batch plus the
    /// decayed queue wait plus the batches already queued ahead). Unmeasured variants are
    /// predicted as infinitely slow: they never fit a latency budget.
    fn candidates(&self, now: Instant, queued: &[usize]) -> Vec<Candidate> {
        let max_batch = self.config.batch.max_batch.max(1);
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
                    self.metrics
                        .predicted_latency
                        .with_label_values(&[&v.spec.name])
                        .set(predicted_ms / 1e3);
                }
                Candidate {
                    name: v.spec.name.clone(),
                    alpha: v.spec.alpha,
                    resolution: v.spec.resolution,
                    top1: self.accuracy[i].top1,
                    predicted_ms,
                }
            })
            .collect()
    }

    /// Admits a request before its body is read: refuses it while draining or when
    /// `max_concurrent_requests` are in flight (counted under variant `none`). The returned
    /// ticket holds the slot until the request, and any decoding it started, is finished.
    pub fn admit(&self, protocol: &str) -> Result<Admission> {
        let refused = if self.is_draining() {
            Some(Error::Unavailable("the service is shutting down".into()))
        } else {
            None
        };
        let permit = match refused {
            Some(e) => Err(e),
            None => self
                .admission
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::Overloaded {
                    limit: self.config.max_concurrent_requests,
                    retry_after_s: 1,
                }),
        };
        match permit {
            Ok(permit) => {
                self.metrics.in_flight.inc();
                self.metrics.admitted.with_label_values(&[protocol]).inc();
                Ok(Admission {
                    slot: Arc::new(Slot {
                        _permit: permit,
                        metrics: self.metrics.clone(),
                    }),
                    incoming: self.batcher.expect(),
                    admitted: Instant::now(),
                })
            }
            Err(e) => {
                self.record_outcome(NO_VARIANT, protocol, Err(&e));
                Err(e)
            }
        }
    }

    /// Counts a request's outcome, under its variant (or `none` before routing).
    pub fn record_outcome(&self, variant: &str, protocol: &str, outcome: Result<&Timings, &Error>) {
        let status = match outcome {
            Ok(_) => 200,
            Err(e) => e.kind().status,
        };
        self.metrics.count_request(variant, protocol, status);
        match outcome {
            Ok(t) => tracing::debug!(
                status,
                decode_ms = t.decode,
                preprocess_ms = t.preprocess,
                queue_ms = t.queue,
                inference_ms = t.inference,
                postprocess_ms = t.postprocess,
                total_ms = t.total,
                "answered"
            ),
            Err(e) => tracing::debug!(status, error = %e, "not answered"),
        }
        match outcome {
            Ok(t) => {
                for (stage, ms) in t.stages() {
                    self.metrics.observe_stage(variant, stage, ms / 1e3);
                }
            }
            Err(e) => {
                let reason = match e {
                    Error::QueueFull { .. } => Some("queue_full"),
                    Error::Overloaded { .. } => Some("overloaded"),
                    Error::Unavailable(_) => Some("unavailable"),
                    Error::DeadlineExceeded(_) => Some("deadline"),
                    _ => None,
                };
                if let Some(reason) = reason {
                    self.metrics.count_rejected(variant, reason);
                }
            }
        }
    }

    /// Classifies the request's images and records its metrics under `protocol`.
    pub async fn classify(
        &self,
        admission: Admission,
        request: ClassifyRequest,
        protocol: &str,
    ) -> Result<ClassifyResponse> {
        let mut chosen = None;
        let span = request_span(protocol);
        let result = self
            .classify_inner(admission, request, &mut chosen)
            .instrument(span.clone())
            .await;
        let name = chosen
            .map(|i: usize| self.variants[i].spec.name.as_str())
            .unwrap_or(NO_VARIANT);
        span.in_scope(|| self.record_outcome(name, protocol, result.as_ref().map(|r| &r.timings)));
        result
    }

    async fn classify_inner(
        &self,
        admission: Admission,
        request: ClassifyRequest,
        chosen: &mut Option<usize>,
    ) -> Result<ClassifyResponse> {
        let started = admission.admitted;
        self.check_count(request.images.len())?;
        if !(1..=MAX_TOP_K).contains(&request.top_k) {
            return Err(Error::BadRequest(format!(
                "top_k must be between 1 and {MAX_TOP_K}, got {}",
                request.top_k
            )));
        }
        let timeout = self.check_timeout(request.timeout)?;
        if matches!(request.selection, Selection::Target { .. })
            && !self.ready.load(Ordering::SeqCst)
        {
            return Err(Error::Unavailable(
                "warming up: latency targets are served once every variant is measured".into(),
            ));
        }
        if let Selection::Name(name) = &request.selection {
            // A name the catalogue has but that failed to load says why.
            self.index_of(name)?;
        }
        let choice = router::choose(
            &request.selection,
            &self.candidates(started, &self.batcher.queued_all()),
            self.default_index,
        )?;
        *chosen = Some(choice.index);
        let variant = &self.variants[choice.index];
        tracing::Span::current().record("variant", variant.spec.name.as_str());
        let ran = self
            .run(
                admission,
                choice.index,
                Images::Encoded(request.images),
                timeout,
            )
            .await?;

        let post_started = Instant::now();
        let predictions = tracing::debug_span!("postprocess").in_scope(|| {
            ran.outputs
                .iter()
                .map(|o| self.predictions(variant, &o.scores, request.top_k))
                .collect()
        });
        let mut timings = ran.timings;
        let now = Instant::now();
        timings.postprocess = millis(now - post_started);
        timings.total = millis(now - started);
        Ok(ClassifyResponse {
            model: variant.spec.name.clone(),
            predictions,
            target_met: choice.target_met,
            timings,
        })
    }

    /// Runs the request's images through the named variant and returns its raw outputs. Records
    /// no metrics: the protocol does, with [`Service::record_outcome`], once its own
    /// postprocessing is timed.
    pub async fn infer(
        &self,
        admission: Admission,
        request: InferRequest,
    ) -> Result<InferResponse> {
        let index = self.index_of(&request.model)?;
        self.infer_inner(admission, index, request).await
    }

    /// The `variant` label under which a request for model `name` is counted: the name when such
    /// a variant is loaded, else `none` (unknown names must not grow the label set).
    pub fn metrics_label(&self, name: &str) -> &str {
        match self.index_of(name) {
            Ok(i) => &self.variants[i].spec.name,
            Err(_) => NO_VARIANT,
        }
    }

    /// Elements of the largest variant's input image.
    pub fn largest_input_len(&self) -> usize {
        self.variants
            .iter()
            .map(|v| v.input_len())
            .max()
            .unwrap_or(0)
    }

    async fn infer_inner(
        &self,
        admission: Admission,
        index: usize,
        request: InferRequest,
    ) -> Result<InferResponse> {
        let started = admission.admitted;
        self.check_count(request.images.len())?;
        let timeout = self.check_timeout(request.timeout)?;
        let ran = self.run(admission, index, request.images, timeout).await?;
        let mut timings = ran.timings;
        timings.total = millis(started.elapsed());
        Ok(InferResponse {
            model: request.model,
            outputs: ran.outputs.into_iter().map(|o| o.scores).collect(),
            timings,
        })
    }

    fn check_count(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::BadRequest("the request holds no image".into()));
        }
        if n > self.config.max_images_per_request {
            return Err(Error::BadRequest(format!(
                "{n} images in one request; the limit is {}",
                self.config.max_images_per_request
            )));
        }
        Ok(())
    }

    /// The request's timeout, or the default; refuses zero and more than the maximum.
    fn check_timeout(&self, timeout: Option<Duration>) -> Result<Duration> {
        let timeout = timeout.unwrap_or(self.config.request_timeout);
        if timeout.is_zero() || timeout > self.config.max_request_timeout {
            return Err(Error::BadRequest(format!(
                "the request's timeout must be between 1 ms and {} ms",
                self.config.max_request_timeout.as_millis()
            )));
        }
        Ok(timeout)
    }

    fn index_of(&self, name: &str) -> Result<usize> {
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

    /// The loaded variant called `name`.
    pub fn variant(&self, name: &str) -> Result<&Variant> {
        self.index_of(name).map(|i| &self.variants[i])
    }

    /// The class name of output `index` of `variant` (`background` for TF-slim's extra class).
    pub fn label(&self, variant: &Variant, index: usize) -> String {
        self.pool.label(variant, index)
    }

    /// Prepares the images, queues them on variant `index` and waits for every answer, or for
    /// the deadline. Fills every timing but postprocess and total.
    async fn run(
        &self,
        admission: Admission,
        index: usize,
        images: Images,
        timeout: Duration,
    ) -> Result<Ran> {
        let deadline = admission.admitted + timeout;
        let variant = &self.variants[index];
        let n = images.len();
        let prepared = self.prepare(&admission, variant, images).await?;
        if Instant::now() >= deadline {
            return Err(Error::DeadlineExceeded(
                "the deadline passed while decoding".into(),
            ));
        }
        let mut receivers = Vec::with_capacity(n);
        let mut jobs = Vec::with_capacity(n);
        for input in prepared.inputs {
            let (job, rx) = Job::new(input, deadline);
            jobs.push(job);
            receivers.push(rx);
        }
        admission.incoming.submit(index, jobs)?;

        let mut outputs: Vec<JobOutput> = Vec::with_capacity(n);
        for rx in receivers {
            let answer = tokio::time::timeout_at(deadline.into(), rx)
                .await
                .map_err(|_| {
                    Error::DeadlineExceeded(format!("no answer within {} ms", timeout.as_millis()))
                })?
                .map_err(|_| Error::Internal("the engine thread stopped".into()))??;
            outputs.push(answer);
        }
        let now = Instant::now();
        for o in &outputs {
            self.latency[index].record_image(o.queue, o.inference, now);
        }
        let mut batches: Vec<u64> = outputs.iter().map(|o| o.batch_id).collect();
        batches.dedup();
        tracing::Span::current().record("batches", tracing::field::debug(&batches));
        let longest =
            |f: fn(&JobOutput) -> Duration| outputs.iter().map(f).max().unwrap_or_default();
        let timings = Timings {
            decode: millis(prepared.decode),
            preprocess: millis(prepared.preprocess),
            queue: millis(longest(|o| o.queue)),
            inference: millis(longest(|o| o.inference)),
            postprocess: 0.0,
            total: 0.0,
        };
        Ok(Ran { outputs, timings })
    }

    /// Decodes and preprocesses on the blocking pool, so that the async workers keep serving.
    async fn prepare(
        &self,
        admission: &Admission,
        variant: &Variant,
        images: Images,
    ) -> Result<Prepared> {
        let limits = self.config.decode_limits;
        let rho = variant.spec.resolution;
        let channels = variant.model.plan().in_c;
        let norm = variant.spec.normalization;
        // The decode keeps the request's admission slot even if the client goes away and the
        // handler is dropped: abandoned decodes cannot pile up beyond the in-flight limit.
        let slot = admission.slot.clone();
        let span = tracing::debug_span!("prepare", images = images.len());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _span = span.enter();
            match images {
                Images::Encoded(list) => decode_all(&list, &limits, rho, norm),
                Images::Nchw { data, count } => {
                    let t0 = Instant::now();
                    let inputs = nchw_to_nhwc(&data, count, channels, rho)?;
                    Ok(Prepared {
                        inputs,
                        decode: Duration::ZERO,
                        preprocess: t0.elapsed(),
                    })
                }
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("decoding stopped: {e}")))?
    }

    /// Softmax (unless the graph has one), then the top `k` ImageNet classes; the background
    /// output of 1001-class models is never a prediction.
    fn predictions(&self, variant: &Variant, scores: &[f32], k: usize) -> Vec<Prediction> {
        let mut probs = scores.to_vec();
        if !variant.model.plan().softmax {
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
}

struct Prepared {
    inputs: Vec<Vec<f32>>,
    decode: Duration,
    preprocess: Duration,
}

/// A request's answers from the engine, and its timings so far.
struct Ran {
    outputs: Vec<JobOutput>,
    timings: Timings,
}

/// Milliseconds at microsecond resolution: more digits would be noise in the JSON.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn decode_all(
    images: &[Bytes],
    limits: &DecodeLimits,
    rho: usize,
    norm: Normalization,
) -> Result<Prepared> {
    let mut prepared = Prepared {
        inputs: Vec::with_capacity(images.len()),
        decode: Duration::ZERO,
        preprocess: Duration::ZERO,
    };
    for (i, bytes) in images.iter().enumerate() {
        let which = |e: Error| {
            if images.len() == 1 {
                e
            } else {
                prefix_image_error(i, e)
            }
        };
        let t0 = Instant::now();
        let rgb = decode(bytes, limits).map_err(which)?;
        let t1 = Instant::now();
        prepared
            .inputs
            .push(preprocess(&rgb, rho, norm).map_err(which)?);
        prepared.decode += t1 - t0;
        prepared.preprocess += t1.elapsed();
    }
    Ok(prepared)
}

/// Splits `count` NCHW images into the engine's per-image NHWC inputs, refusing a wrong element
/// count and non-finite values (they would come out as NaN scores: a silent wrong answer).
fn nchw_to_nhwc(data: &[f32], count: usize, channels: usize, rho: usize) -> Result<Vec<Vec<f32>>> {
    let plane = rho * rho;
    let per_image = channels * plane;
    if data.len() != count * per_image {
        return Err(Error::BadInput(format!(
            "{} elements for {count} images of {channels}x{rho}x{rho} ({} expected)",
            data.len(),
            count * per_image
        )));
    }
    if let Some(at) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::BadInput(format!(
            "element {at} is {}; inputs must be finite",
            data[at]
        )));
    }
    Ok(data
        .chunks_exact(per_image.max(1))
        .map(|image| {
            let mut nhwc = vec![0.0; per_image];
            for (c, src) in image.chunks_exact(plane.max(1)).enumerate() {
                for (p, &v) in src.iter().enumerate() {
                    nhwc[p * channels + c] = v;
                }
            }
            nhwc
        })
        .collect())
}

/// An admitted request's ticket (see [`Service::admit`]).
#[derive(Debug)]
pub struct Admission {
    slot: Arc<Slot>,
    /// Tells the batcher images are on their way, until they are submitted.
    incoming: Incoming,
    admitted: Instant,
}

impl Admission {
    /// When the request was admitted (its deadline counts from there).
    pub fn admitted(&self) -> Instant {
        self.admitted
    }
}

/// One of the `max_concurrent_requests` slots, counted in the in-flight gauge while held.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

fn prefix_image_error(i: usize, e: Error) -> Error {
    match e {
        Error::Undecodable(m) => Error::Undecodable(format!("image {i}: {m}")),
        Error::UnsupportedFormat(m) => Error::UnsupportedFormat(format!("image {i}: {m}")),
        Error::TooLarge(m) => Error::TooLarge(format!("image {i}: {m}")),
        Error::BadInput(m) => Error::BadInput(format!("image {i}: {m}")),
        other => other,
    }
}

/// The span of one request: its protocol, then its variant and the engine batches that ran its
/// images, recorded as they become known. `RUST_LOG=mobilenet_serve=debug` shows it with its
/// `prepare` and `postprocess` children and the `answered` event carrying every stage's time.
pub fn request_span(protocol: &str) -> tracing::Span {
    tracing::debug_span!(
        "request",
        protocol,
        variant = tracing::field::Empty,
        batches = tracing::field::Empty
    )
}

/// A manifest percentage as f64 without float noise (70.9f32 is 70.90000152587891 as f64).
fn percent(p: f32) -> f64 {
    (f64::from(p) * 100.0).round() / 100.0
}

/// The default default: the most accurate variant, the cheaper one on ties.
fn most_accurate(accuracy: &[Accuracy], costs: &[(u64, u64)]) -> usize {
    (0..accuracy.len())
        .max_by(|&a, &b| {
            let t = |i: usize| accuracy[i].top1.unwrap_or(f64::NEG_INFINITY);
            t(a).total_cmp(&t(b)).then(costs[b].0.cmp(&costs[a].0))
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
    let report: Option<EvalReport> = match std::fs::read_to_string(&path) {
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
