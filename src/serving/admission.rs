//! Admission: the bounded number of requests in flight, the ticket an admitted request holds,
//! and the record of its outcome, counted once when the ticket drops.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::batcher::{Batcher, Incoming};
use super::metrics::{Metrics, NO_VARIANT};
use super::registry::Served;
use super::request::Timings;
use crate::error::{Error, Result, RETRY_AFTER_S};

/// The bound on requests in flight in the whole process.
#[derive(Debug)]
pub(super) struct Gate {
    slots: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// At most `limit` requests at once.
    pub(super) fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        Gate {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
        }
    }

    /// A ticket for a request of `protocol`, or [`Error::Overloaded`] when every slot is taken;
    /// only an admitted request tells `batcher` that images are coming. The refusal is not
    /// counted here: see [`count_refusal`].
    pub(super) fn enter(
        &self,
        protocol: &'static str,
        batcher: &Arc<Batcher<Served>>,
    ) -> Result<Admission> {
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded {
                limit: self.limit,
                retry_after_s: RETRY_AFTER_S,
            })?;
        self.metrics.in_flight.inc();
        self.metrics.admitted.with_label_values(&[protocol]).inc();
        Ok(Admission {
            slot: Some(Arc::new(Slot {
                _permit: permit,
                metrics: self.metrics.clone(),
            })),
            incoming: Some(batcher.expect()),
            admitted: Instant::now(),
            report: Report {
                metrics: self.metrics.clone(),
                protocol,
                variant: NO_VARIANT.to_string(),
                span: request_span(protocol),
                outcome: None,
            },
        })
    }
}

/// An admitted request's ticket (`Service::admit` hands it out). It holds one of the in-flight
/// slots, and records the request's outcome (see [`Admission::check`]) when it drops: every
/// protocol counts its requests the same way, each exactly once.
#[derive(Debug)]
pub struct Admission {
    /// Held until the engine has answered (see [`Admission::release`]).
    slot: Option<Arc<Slot>>,
    /// Tells the batcher images are on their way, until they are submitted.
    incoming: Option<Incoming<Served>>,
    admitted: Instant,
    report: Report,
}

impl Admission {
    /// When the request was admitted (its deadline counts from there).
    pub fn admitted(&self) -> Instant {
        self.admitted
    }

    /// The request's span: its protocol, then its variant and batches as they become known.
    pub fn span(&self) -> &tracing::Span {
        &self.report.span
    }

    /// Counts the request under variant `label` (see [`super::registry::Registry::metrics_label`]).
    pub fn count_as(&mut self, label: &str) {
        self.report.span.record("variant", label);
        label.clone_into(&mut self.report.variant);
    }

    /// Passes `result` through, recording its error as the request's outcome: use it on every
    /// step that can end the request.
    pub fn check<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.report.settle(Err(e));
        }
        result
    }

    /// Records the request's answer, or why it got none, unless an outcome was recorded before.
    pub fn settle(&mut self, outcome: Result<&Timings, &Error>) {
        self.report.settle(outcome);
    }

    /// The slot, for work that must keep it even if the request is dropped (decoding).
    pub(super) fn slot(&self) -> Result<Arc<Slot>> {
        self.slot
            .clone()
            .ok_or_else(|| Error::Internal("a request used its slot after releasing it".into()))
    }

    /// Gives the slot back once the engine has answered (or the request failed): what is
    /// left, postprocessing and writing the answer, is cheap and must not hold new requests
    /// out. The outcome is still counted when the ticket drops.
    pub(super) fn release(&mut self) {
        self.slot = None;
        self.incoming = None;
    }

    /// The batcher's notice that images are coming, once: submitting consumes it.
    pub(super) fn take_incoming(&mut self) -> Result<Incoming<Served>> {
        self.incoming
            .take()
            .ok_or_else(|| Error::Internal("a request submitted its images twice".into()))
    }
}

/// One of the `max_concurrent_requests` slots, counted in the in-flight gauge while held.
#[derive(Debug)]
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// What a request ended with.
#[derive(Debug)]
enum Outcome {
    Answered(Timings),
    Refused {
        status: u16,
        reason: Option<&'static str>,
        message: String,
    },
}

impl Outcome {
    fn refused(error: &Error) -> Self {
        Outcome::Refused {
            status: error.kind().status,
            reason: rejection_reason(error),
            message: error.to_string(),
        }
    }
}

/// A request's outcome, counted when it drops; nothing is counted for a request dropped before
/// an outcome was set, that is one whose client went away first.
#[derive(Debug)]
struct Report {
    metrics: Arc<Metrics>,
    protocol: &'static str,
    variant: String,
    span: tracing::Span,
    outcome: Option<Outcome>,
}

impl Report {
    fn settle(&mut self, outcome: Result<&Timings, &Error>) {
        if self.outcome.is_none() {
            self.outcome = Some(match outcome {
                Ok(t) => Outcome::Answered(*t),
                Err(e) => Outcome::refused(e),
            });
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(outcome) = self.outcome.take() {
            let _in_request = self.span.enter();
            record(&self.metrics, &self.variant, self.protocol, &outcome);
        }
    }
}

/// Counts a request refused before admission (draining, or every slot taken) under variant
/// `none`.
pub fn count_refusal(metrics: &Metrics, protocol: &str, error: &Error) {
    record(metrics, NO_VARIANT, protocol, &Outcome::refused(error));
}

/// The `reason` label of a refusal that `mobilenet_rejected_total` counts.
fn rejection_reason(e: &Error) -> Option<&'static str> {
    match e {
        Error::QueueFull { .. } => Some("queue_full"),
        Error::Overloaded { .. } => Some("overloaded"),
        Error::Unavailable(_) => Some("unavailable"),
        Error::DeadlineExceeded(_) => Some("deadline"),
        _ => None,
    }
}

fn record(metrics: &Metrics, variant: &str, protocol: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Answered(t) => {
            metrics.count_request(variant, protocol, 200);
            tracing::debug!(
                status = 200,
                decode_ms = t.decode,
                preprocess_ms = t.preprocess,
                queue_ms = t.queue,
                inference_ms = t.inference,
                postprocess_ms = t.postprocess,
                total_ms = t.total,
                "answered"
            );
            for (stage, ms) in t.stages() {
                metrics.observe_stage(variant, stage, ms / 1e3);
            }
        }
        Outcome::Refused {
            status,
            reason,
            message,
        } => {
            metrics.count_request(variant, protocol, *status);
            tracing::debug!(status, error = %message, "not answered");
            if let Some(reason) = reason {
                metrics.count_rejected(variant, reason);
            }
        }
    }
}

/// The span of one request: its protocol, then its variant and the engine batches that ran its
/// images, recorded as they become known. `RUST_LOG=mobilenet_serve=debug` shows it with its
/// `prepare` and `postprocess` children and the `answered` event carrying every stage's time.
fn request_span(protocol: &str) -> tracing::Span {
    tracing::debug_span!(
        "request",
        protocol,
        variant = tracing::field::Empty,
        batches = tracing::field::Empty
    )
}
