//! The request path without a wire. [`Service`] is its façade: it wires the parts below and
//! offers what every protocol needs (admit, classify, infer, describe the models, readiness).
//! The parts never name the façade; this layer uses `engine`, `pipeline`, `kernels` (a
//! variant's tier) and `error` only.

pub mod admission;
pub mod batcher;
pub mod config;
pub mod latency;
pub mod metrics;
pub mod prepare;
pub mod readiness;
pub mod registry;
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
pub use self::config::ServiceConfig;
use self::config::{WARM_UP_DEADLINE, WARM_UP_RUNS};
use self::metrics::Metrics;
use self::prepare::prepare;
use self::readiness::Readiness;
use self::registry::Registry;
pub use self::registry::{Accuracy, LatencyInfo, ModelInfo, EVAL_RESULTS};
pub use self::request::{
    millis, ClassifyRequest, ClassifyResponse, Images, InferRequest, InferResponse, Prediction,
    Timings, MAX_TOP_K,
};
use self::router::Selection;
use self::workers::{EngineContext, EngineThreads};
use crate::engine::pool::{ModelPool, Unavailable, Variant};
use crate::error::{Error, Result};

/// The running service: the variants, their queues and engine threads, and the metrics.
/// Dropping it blocks until the engine threads have answered what is queued.
#[derive(Debug)]
pub struct Service {
    registry: Registry,
    batcher: Arc<Batcher>,
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
        let registry = Registry::new(
            pool,
            config.eval_results.as_deref(),
            config.default_model.as_deref(),
        )?;
        let names = registry
            .variants()
            .iter()
            .map(|v| v.spec.name.clone())
            .collect();
        let batcher = Arc::new(Batcher::new(
            names,
            config.batch,
            config.max_queue,
            metrics.clone(),
        ));
        registry.publish(&metrics);
        Ok(Arc::new(Service {
            registry,
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
                variants: self.registry.variants().clone(),
                latency: self.registry.latency().clone(),
                metrics: self.metrics.clone(),
            };
            *engine = Some(EngineThreads::spawn(
                self.config.engine_threads,
                self.config.engine_nice,
                ctx,
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
        for (i, v) in self.registry.variants().iter().enumerate() {
            let mut last = None;
            for _ in 0..WARM_UP_RUNS {
                let deadline = Instant::now() + WARM_UP_DEADLINE;
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
                self.registry.latency()[i].seed_batch(t);
            }
            tracing::info!(
                variant = %v.spec.name,
                ms = last.unwrap_or_default().as_secs_f64() * 1e3,
                "warmed up"
            );
        }
        self.readiness.mark_warm();
        Ok(())
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

    /// Every variant, as `/v1/models` lists them.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.registry.describe(
            Instant::now(),
            &self.batcher.queued_all(),
            self.config.batch.max_batch,
            &self.metrics,
        )
    }

    /// One variant, as `/v1/models/{name}` shows it.
    pub fn model(&self, name: &str) -> Result<ModelInfo> {
        let index = self.registry.index_of(name)?;
        Ok(self.models().swap_remove(index))
    }

    /// The variants of the catalogue that failed to load, and why.
    pub fn unavailable(&self) -> &[Unavailable] {
        self.registry.unavailable()
    }

    /// The loaded variant called `name`.
    pub fn variant(&self, name: &str) -> Result<&Variant> {
        self.registry
            .index_of(name)
            .map(|i| &self.registry.variants()[i])
    }

    /// The class name of output `index` of `variant` (`background` for TF-slim's extra class).
    pub fn label(&self, variant: &Variant, index: usize) -> String {
        self.registry.label(variant, index)
    }

    /// The `variant` label under which a request for model `name` is counted: the name when such
    /// a variant is loaded, else `none` (unknown names must not grow the label set).
    pub fn metrics_label(&self, name: &str) -> &str {
        self.registry.metrics_label(name)
    }

    /// Elements of the largest variant's input image.
    pub fn largest_input_len(&self) -> usize {
        self.registry
            .variants()
            .iter()
            .map(|v| v.input_len())
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
        if let Selection::Name(name) = &request.selection {
            // A name the catalogue has but that failed to load says why.
            self.registry.index_of(name)?;
        }
        let candidates = self.registry.candidates(
            started,
            &self.batcher.queued_all(),
            self.config.batch.max_batch,
            &self.metrics,
        );
        let choice = router::choose(
            &request.selection,
            &candidates,
            self.registry.default_index(),
        )?;
        let variant = &self.registry.variants()[choice.index];
        admission.count_as(&variant.spec.name);
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
                .map(|o| {
                    self.registry
                        .predictions(choice.index, &o.scores, request.top_k)
                })
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

    /// Runs the request's images through the named variant and returns its raw outputs. The
    /// outcome is left to the caller to settle on `admission`, once its own postprocessing is
    /// timed.
    pub async fn infer(
        &self,
        admission: &mut Admission,
        request: InferRequest,
    ) -> Result<InferResponse> {
        let index = self.registry.index_of(&request.model)?;
        let started = admission.admitted();
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

    /// Prepares the images, queues them on variant `index` and waits for every answer, or for
    /// the deadline; then gives the request's slot back. Fills every timing but postprocess
    /// and total.
    async fn run(
        &self,
        admission: &mut Admission,
        index: usize,
        images: Images,
        timeout: Duration,
    ) -> Result<Ran> {
        let ran = self.run_held(admission, index, images, timeout).await;
        admission.release();
        ran
    }

    async fn run_held(
        &self,
        admission: &mut Admission,
        index: usize,
        images: Images,
        timeout: Duration,
    ) -> Result<Ran> {
        let deadline = admission.admitted() + timeout;
        let variant = &self.registry.variants()[index];
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
        admission.take_incoming()?.submit(index, jobs)?;

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
            self.registry.latency()[index].record_image(o.queue, o.inference, now);
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
