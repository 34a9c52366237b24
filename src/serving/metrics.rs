//! Prometheus metrics: every name in one place, registered once, rendered by `GET /metrics`.
//!
//! Labels stay low-cardinality: `variant` (the loaded variants, or `none` before routing),
//! `stage`, `code`, `protocol`, `reason`, `source`.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Variant label for requests rejected before a variant was chosen.
pub const NO_VARIANT: &str = "none";

/// The service's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by variant, protocol and status code.
    pub requests: IntCounterVec,
    /// Time per request stage in seconds, by variant and stage.
    pub duration: HistogramVec,
    /// Images per engine batch, by variant.
    pub batch_size: HistogramVec,
    /// Batches run, by variant and mode (`team`: split across every engine thread; `solo`: one
    /// thread each, beside other batches).
    pub batches: IntCounterVec,
    /// Images waiting in each variant's queue.
    pub queue_depth: IntGaugeVec,
    /// Requests refused or timed out, by variant and reason.
    pub rejected: IntCounterVec,
    /// Queued images dropped before inference (deadline passed, client gone), by reason.
    pub dropped: IntCounterVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// Requests given a slot, by protocol: once drained, each also has its line in
    /// `requests_total`, which is how a lost request would show.
    pub admitted: IntCounterVec,
    /// 1 while the service takes requests (warmed up, not draining), else 0.
    pub ready: IntGauge,
    /// Variants of the catalogue that failed to load (missing, corrupt or tampered file).
    pub models_unavailable: IntGauge,
    /// Top-1 accuracy in percent, by variant and source (`measured` or `published`).
    pub top1: GaugeVec,
    /// Top-5 accuracy in percent, by variant and source.
    pub top5: GaugeVec,
    /// Multiply-adds per image, by variant.
    pub mult_adds: GaugeVec,
    /// Learned parameters, by variant.
    pub parameters: GaugeVec,
    /// 1 per served variant, labelled with its precision and cell: what dashboards join on to
    /// group the other per-variant series by precision.
    pub variant_info: GaugeVec,
    /// The router's current latency prediction in seconds, by variant.
    pub predicted_latency: GaugeVec,
    /// 1 while the variant is served, 0 while the catalogue has it but it is not (failed to
    /// load, or unloaded).
    pub model_ready: IntGaugeVec,
    /// Loads and unloads by the live repository after start, by variant and outcome
    /// (`loaded`, `failed`, `unloaded`).
    pub loads: IntCounterVec,
    /// Time to read, import and warm up a variant, by variant.
    pub load_duration: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("mobilenet")
}

impl Metrics {
    /// Creates and registers every metric, plus the process collector (CPU, memory, fds).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let latency_buckets = prometheus::exponential_buckets(0.000_1, 2.0, 18)?;
        let batch_buckets = vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];
        let m = Metrics {
            requests: IntCounterVec::new(
                opts(
                    "requests_total",
                    "Requests answered, by variant, protocol and status code.",
                ),
                &["variant", "protocol", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::from(opts(
                    "request_duration_seconds",
                    "Time spent per request in each stage (decode, preprocess, queue, inference, \
                     postprocess, total).",
                ))
                .buckets(latency_buckets),
                &["variant", "stage"],
            )?,
            batch_size: HistogramVec::new(
                HistogramOpts::from(opts("batch_size", "Images per engine batch."))
                    .buckets(batch_buckets),
                &["variant"],
            )?,
            batches: IntCounterVec::new(
                opts(
                    "batches_total",
                    "Engine batches run, by mode: `team` (split across every engine thread, \
                     the latency mode) or `solo` (one thread each, beside other batches, when \
                     more than one batch is due).",
                ),
                &["variant", "mode"],
            )?,
            queue_depth: IntGaugeVec::new(
                opts(
                    "queue_depth",
                    "Images waiting in the variant's batching queue.",
                ),
                &["variant"],
            )?,
            rejected: IntCounterVec::new(
                opts(
                    "rejected_total",
                    "Requests refused (queue_full, overloaded, draining) or timed out (deadline).",
                ),
                &["variant", "reason"],
            )?,
            dropped: IntCounterVec::new(
                opts(
                    "dropped_images_total",
                    "Queued images dropped before inference because their deadline passed or \
                     their client went away.",
                ),
                &["variant", "reason"],
            )?,
            in_flight: IntGauge::with_opts(opts("in_flight_requests", "Requests being handled."))?,
            admitted: IntCounterVec::new(
                opts(
                    "admitted_requests_total",
                    "Requests admitted (given one of the concurrency slots), by protocol.",
                ),
                &["protocol"],
            )?,
            ready: IntGauge::with_opts(opts(
                "ready",
                "1 while the service takes requests (warmed up, not draining), else 0.",
            ))?,
            models_unavailable: IntGauge::with_opts(opts(
                "models_unavailable",
                "Variants of the catalogue not served because their file failed to load.",
            ))?,
            top1: GaugeVec::new(
                opts("top1_accuracy", "ImageNet top-1 accuracy in percent."),
                &["variant", "source"],
            )?,
            top5: GaugeVec::new(
                opts("top5_accuracy", "ImageNet top-5 accuracy in percent."),
                &["variant", "source"],
            )?,
            mult_adds: GaugeVec::new(opts("mult_adds", "Multiply-adds per image."), &["variant"])?,
            parameters: GaugeVec::new(
                opts("parameters", "Learned parameters of the variant."),
                &["variant"],
            )?,
            variant_info: GaugeVec::new(
                opts(
                    "variant_info",
                    "1 per served variant: its precision (fp32, int8), width multiplier and \
                     resolution.",
                ),
                &["variant", "precision", "alpha", "resolution"],
            )?,
            predicted_latency: GaugeVec::new(
                opts(
                    "predicted_latency_seconds",
                    "The router's latency prediction (queue wait + batch inference).",
                ),
                &["variant"],
            )?,
            model_ready: IntGaugeVec::new(
                opts(
                    "model_ready",
                    "1 while the variant is served, 0 while the catalogue has it and it is not \
                     (failed to load, or unloaded).",
                ),
                &["variant"],
            )?,
            loads: IntCounterVec::new(
                opts(
                    "model_loads_total",
                    "Model loads and unloads after start, by outcome (loaded, failed, unloaded).",
                ),
                &["variant", "outcome"],
            )?,
            load_duration: HistogramVec::new(
                HistogramOpts::from(opts(
                    "model_load_duration_seconds",
                    "Time to read, check, import and warm up a variant.",
                ))
                .buckets(prometheus::exponential_buckets(0.01, 2.0, 12)?),
                &["variant"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.duration.clone()))?;
        m.registry.register(Box::new(m.batch_size.clone()))?;
        m.registry.register(Box::new(m.batches.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.rejected.clone()))?;
        m.registry.register(Box::new(m.dropped.clone()))?;
        m.registry.register(Box::new(m.in_flight.clone()))?;
        m.registry.register(Box::new(m.admitted.clone()))?;
        m.registry.register(Box::new(m.ready.clone()))?;
        m.registry
            .register(Box::new(m.models_unavailable.clone()))?;
        m.registry.register(Box::new(m.top1.clone()))?;
        m.registry.register(Box::new(m.top5.clone()))?;
        m.registry.register(Box::new(m.mult_adds.clone()))?;
        m.registry.register(Box::new(m.parameters.clone()))?;
        m.registry.register(Box::new(m.variant_info.clone()))?;
        m.registry.register(Box::new(m.predicted_latency.clone()))?;
        m.registry.register(Box::new(m.model_ready.clone()))?;
        m.registry.register(Box::new(m.loads.clone()))?;
        m.registry.register(Box::new(m.load_duration.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric family that fails to encode is
        // skipped rather than failing the whole scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Records the time one request spent in `stage`.
    pub fn observe_stage(&self, variant: &str, stage: &str, seconds: f64) {
        self.duration
            .with_label_values(&[variant, stage])
            .observe(seconds);
    }

    /// Counts one answered request.
    pub fn count_request(&self, variant: &str, protocol: &str, status: u16) {
        self.requests
            .with_label_values(&[variant, protocol, &status.to_string()])
            .inc();
    }

    /// Requests admitted since start, every protocol.
    pub fn admitted_total(&self) -> u64 {
        use prometheus::core::Collector as _;
        self.admitted
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Counts one refused or timed-out request.
    pub fn count_rejected(&self, variant: &str, reason: &str) {
        self.rejected.with_label_values(&[variant, reason]).inc();
    }

    /// Counts one queued image dropped before inference.
    pub fn count_dropped(&self, variant: &str, reason: &str) {
        self.dropped.with_label_values(&[variant, reason]).inc();
    }
}
