//! The request path without a wire. [`Service`] is its façade: it wires the parts below and
//! offers what every protocol needs (admit, classify, infer, describe the models, readiness).
//! The parts never name the façade; this layer uses `engine`, `pipeline`, `kernels` (a
//! variant's tier) and `error` only.

pub mod admission;
pub mod batcher;
pub mod config;
pub mod latency;
pub mod memory;
pub mod metrics;
pub mod prepare;
pub mod readiness;
pub mod registry;
pub mod repository;
pub mod request;
pub mod router;
pub mod shutdown;
pub mod workers;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;

pub use self::admission::Admission;
use self::admission::{count_refusal, Gate};
use self::batcher::{Batcher, Job, JobOutput};
pub use self::config::{ControlMode, ServiceConfig};
use self::metrics::Metrics;
use self::prepare::prepare;
use self::readiness::Readiness;
use self::registry::{candidates, describe, publish, Registry, Snapshot};
pub use self::registry::{Accuracy, LatencyInfo, ModelInfo, Served, EVAL_RESULTS};
use self::repository::{warm_up, Repository};
pub use self::repository::{IndexEntry, ModelState, Rescan};
pub use self::request::{
    millis, ClassifyRequest, ClassifyResponse, Images, InferRequest, InferResponse, Prediction,
    Timings, MAX_TOP_K,
};
use self::router::Selection;
use self::workers::{EngineContext, EngineThreads};
use crate::engine::pool::{ModelPool, Unavailable, Variant};
use crate::error::{Error, Result};
use crate::pipeline::postprocess::{softmax_in_place, top_k};

/// The running service: the variants, their queues and engine threads, and the metrics.
/// Dropping it blocks until the engine threads have answered what is queued.
#[derive(Debug)]
pub struct Service {
    registry: Arc<Registry>,
    repository: Repository,
    batcher: Arc<Batcher<Served>>,
    gate: Gate,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    config: ServiceConfig,
    /// The engine threads, once started; dropping the service stops them.
    engine: Mutex<Option<EngineThreads>>,
}

impl Service {
    /// Builds the service over `pool` and starts its engine threads.
    pub fn new(pool: ModelPool, config: ServiceConfig) -> Result<Arc<Self>> {
        let service = Self::without_engine(pool, config)?;
        service.start_engine()?;
        Ok(service)
    }

    /// Builds the service over `pool` without engine threads: requests queue up until
    /// [`Service::start_engine`] (tests hold work in the queues this way).
    pub fn without_engine(pool: ModelPool, config: ServiceConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new().map_err(|e| Error::Internal(e.to_string()))?);
        let opts = pool.options().clone();
        let registry = Arc::new(Registry::new(
            pool,
            config.eval_results.as_deref(),
            config.default_model.as_deref(),
            config.model_control == ControlMode::Explicit,
        )?);
        let batcher = Arc::new(Batcher::new(
            config.batch,
            config.max_queue,
            metrics.clone(),
        ));
        publish(&registry.snapshot(), &metrics);
        let repository = Repository::new(
            config.model_control,
            opts,
            registry.clone(),
            batcher.clone(),
            metrics.clone(),
        );
        Ok(Arc::new(Service {
            registry,
            repository,
            batcher,
            gate: Gate::new(config.max_concurrent_requests, metrics.clone()),
            readiness: Readiness::new(metrics.clone()),
            metrics,
            config,
            engine: Mutex::new(None),
        }))
    }

    /// Starts the engine threads (once).
    pub fn start_engine(&self) -> Result<()> {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        if engine.is_none() {
            let ctx = EngineContext {
                batcher: self.batcher.clone(),
                metrics: self.metrics.clone(),
                throughput_mode: self.config.throughput_mode,
            };
            let variants: Vec<Variant> = self
                .registry
                .snapshot()
                .served
                .iter()
                .map(|s| s.variant().clone())
                .collect();
            *engine = Some(EngineThreads::spawn(
                self.config.engine_threads,
                self.config.engine_nice,
                ctx,
                &variants,
            )?);
        }
        Ok(())
    }

    /// Lets the engine threads finish what is queued, then stops them. Blocks.
    pub fn stop_engine(&self) {
        self.batcher.close();
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(engine);
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
        for served in &self.registry.snapshot().served {
            let last = warm_up(&self.batcher, served).await?;
            tracing::info!(
                variant = %served.name(),
                ms = last.as_secs_f64() * 1e3,
                "warmed up"
            );
        }
        if let Err(e) = self.repository.scan_catalogue().await {
            // The index then lists what is served and what failed only.
            tracing::warn!(error = %e, "cannot read the models directory's catalogue");
        }
        self.readiness.mark_warm();
        Ok(())
    }

    /// Who changes the served models after start.
    pub fn model_control(&self) -> ControlMode {
        self.repository.mode()
    }

    /// The repository index: every variant known and its state (`ready_only`: the served).
    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        self.repository.index(ready_only)
    }

    /// Loads or reloads variant `name` (`explicit` model control only).
    pub async fn load_model(&self, name: &str) -> Result<()> {
        self.repository.load(name).await
    }

    /// Stops serving variant `name` (`explicit` model control only).
    pub async fn unload_model(&self, name: &str) -> Result<()> {
        self.repository.unload(name).await
    }

    /// Brings the served models in line with the models directory (`poll` model control);
    /// `force` rescans even when no file changed.
    pub async fn rescan_models(&self, force: bool) -> Result<Rescan> {
        self.repository.rescan(force).await
    }

    /// Ready: warmed up and not draining.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Shutting down.
    pub fn is_draining(&self) -> bool {
        self.readiness.is_draining()
    }

    /// Fails readiness and refuses new requests; admitted ones still get their answers.
    pub fn begin_drain(&self) {
        self.readiness.begin_drain();
    }

    /// Follows readiness: `true` once warmed up, `false` again when draining starts.
    pub fn watch_readiness(&self) -> watch::Receiver<bool> {
        self.readiness.watch()
    }

    /// Every served variant, as `/v1/models` lists them.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.describe(&self.registry.snapshot())
    }

    fn describe(&self, snapshot: &Snapshot) -> Vec<ModelInfo> {
        describe(
            snapshot,
            Instant::now(),
            &self.batcher.queued_all(snapshot.names()),
            self.config.batch.max_batch,
            &self.metrics,
        )
    }

    /// One variant, as `/v1/models/{name}` shows it.
    pub fn model(&self, name: &str) -> Result<ModelInfo> {
        self.registry.resolve(name)?;
        self.models()
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::ModelUnavailable {
                name: name.to_string(),
                reason: "it was unloaded just now".into(),
            })
    }

    /// The variants of the catalogue that are not served, and why (failed to load, unloaded).
    pub fn unavailable(&self) -> Vec<Unavailable> {
        self.registry.snapshot().unavailable.clone()
    }

    /// The served variant called `name`: the load a request for it runs on, even if it is
    /// replaced meanwhile.
    pub fn variant(&self, name: &str) -> Result<Arc<Served>> {
        self.registry.resolve(name)
    }

    /// The class name of output `index` of `variant` (`background` for TF-slim's extra class).
    pub fn label(&self, variant: &Variant, index: usize) -> String {
        self.registry.label(variant, index)
    }

    /// The `variant` label under which a request for model `name` is counted: the name when such
    /// a variant is served, else `none` (unknown names must not grow the label set).
    pub fn metrics_label(&self, name: &str) -> String {
        self.registry.metrics_label(name)
    }

    /// Elements of the largest served variant's input image.
    pub fn largest_input_len(&self) -> usize {
        self.registry
            .snapshot()
            .served
            .iter()
            .map(|s| s.variant().input_len())
            .max()
            .unwrap_or(0)
    }

    /// Admits a request of `protocol` before its body is read: refuses it while draining or
    /// when `max_concurrent_requests` are in flight (counted under variant `none`). The ticket
    /// holds the slot until the request, and any decoding it started, is finished, and counts
    /// the request's outcome when it drops (see [`Admission::check`]).
    pub fn admit(&self, protocol: &'static str) -> Result<Admission> {
        let admitted = if self.is_draining() {
            Err(Error::Unavailable("the service is shutting down".into()))
        } else {
            self.gate.enter(protocol, &self.batcher)
        };
        if let Err(e) = &admitted {
            count_refusal(&self.metrics, protocol, e);
        }
        admitted
    }

    /// Classifies the request's images; `admission` counts the outcome.
    pub async fn classify(
        &self,
        mut admission: Admission,
        request: ClassifyRequest,
    ) -> Result<ClassifyResponse> {
        let span = admission.span().clone();
        let result = self
            .classify_inner(&mut admission, request)
            .instrument(span)
            .await;
        admission.settle(result.as_ref().map(|r| &r.timings));
        result
    }

    async fn classify_inner(
        &self,
        admission: &mut Admission,
        request: ClassifyRequest,
    ) -> Result<ClassifyResponse> {
        let started = admission.admitted();
        self.check_count(request.images.len())?;
        if !(1..=MAX_TOP_K).contains(&request.top_k) {
            return Err(Error::BadRequest(format!(
                "top_k must be between 1 and {MAX_TOP_K}, got {}",
                request.top_k
            )));
        }
        let timeout = self.check_timeout(request.timeout)?;
        if matches!(request.selection, Selection::Target { .. }) && !self.readiness.is_warm() {
            return Err(Error::Unavailable(
                "warming up: latency targets are served once every variant is measured".into(),
            ));
        }
        let snapshot = self.registry.snapshot();
        if let Selection::Name(name) = &request.selection {
            // A name the catalogue has but that failed to load (or was unloaded) says why.
            self.registry.resolve(name)?;
        }
        let Some(default) = snapshot.default else {
            return Err(Error::Unavailable(
                "no model is loaded: load one through the repository API".into(),
            ));
        };
        let candidates = candidates(
            &snapshot,
            started,
            &self.batcher.queued_all(snapshot.names()),
            self.config.batch.max_batch,
            &self.metrics,
        );
        let choice = router::choose(&request.selection, &candidates, default)?;
        let served = snapshot.served[choice.index].clone();
        drop(snapshot);
        admission.count_as(served.name());
        let ran = self
            .run(
                admission,
                &served,
                Images::Encoded {
                    images: request.images,
                    resize: request.resize.unwrap_or(self.config.resize),
                },
                timeout,
            )
            .await?;

        let post_started = Instant::now();
        let predictions = tracing::debug_span!("postprocess").in_scope(|| {
            ran.outputs
                .iter()
                .map(|o| self.predictions(&served, &o.scores, request.top_k))
                .collect()
        });
        let mut timings = ran.timings;
        let now = Instant::now();
        timings.postprocess = millis(now - post_started);
        timings.total = millis(now - started);
        Ok(ClassifyResponse {
            model: served.name().to_string(),
            predictions,
            target_met: choice.target_met,
            timings,
        })
    }

    /// Runs the request's images through the named variant and returns its raw outputs. The
    /// outcome is left to the caller to settle on `admission`, once its own postprocessing is
    /// timed.
    pub async fn infer(
        &self,
        admission: &mut Admission,
        request: InferRequest,
    ) -> Result<InferResponse> {
        let started = admission.admitted();
        self.check_count(request.images.len())?;
        let timeout = self.check_timeout(request.timeout)?;
        let ran = self
            .run(admission, &request.model, request.images, timeout)
            .await?;
        let mut timings = ran.timings;
        timings.total = millis(started.elapsed());
        Ok(InferResponse {
            model: request.model.name().to_string(),
            outputs: ran.outputs.into_iter().map(|o| o.scores).collect(),
            timings,
        })
    }

    /// Softmax (unless the graph has one), then the top `k` ImageNet classes of `served`; the
    /// background output of 1001-class models is never a prediction.
    fn predictions(&self, served: &Served, scores: &[f32], k: usize) -> Vec<Prediction> {
        let variant = served.variant();
        let mut probs = scores.to_vec();
        if !variant.model.softmax() {
            softmax_in_place(&mut probs);
        }
        let offset = variant.spec.label_offset;
        top_k(&probs[offset.min(probs.len())..], k)
            .into_iter()
            .map(|(class, score)| Prediction {
                index: class,
                label: self.registry.label(variant, class + offset),
                score,
            })
            .collect()
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

    /// Prepares the images, queues them on `served` and waits for every answer, or for the
    /// deadline; then gives the request's slot back. Fills every timing but postprocess and
    /// total.
    async fn run(
        &self,
        admission: &mut Admission,
        served: &Arc<Served>,
        images: Images,
        timeout: Duration,
    ) -> Result<Ran> {
        let ran = self.run_held(admission, served, images, timeout).await;
        admission.release();
        ran
    }

    async fn run_held(
        &self,
        admission: &mut Admission,
        served: &Arc<Served>,
        images: Images,
        timeout: Duration,
    ) -> Result<Ran> {
        let deadline = admission.admitted() + timeout;
        let variant = served.variant();
        let n = images.len();
        let prepared = prepare(admission, variant, images, self.config.decode_limits).await?;
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
        admission.take_incoming()?.submit(served, jobs)?;

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
            served.latency().record_image(o.queue, o.inference, now);
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
}

/// A request's answers from the engine, and its timings so far.
struct Ran {
    outputs: Vec<JobOutput>,
    timings: Timings,
}
