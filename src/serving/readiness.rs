//! Readiness: warmed up and not draining, as flags for the request path and as a watchable value
//! for gRPC health, kept equal, and mirrored in the `mobilenet_ready` gauge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::metrics::Metrics;

/// Whether the service takes traffic.
#[derive(Debug)]
pub struct Readiness {
    warm: AtomicBool,
    draining: AtomicBool,
    /// Equal to [`Readiness::is_ready`], for those who wait on it.
    watch: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Readiness {
    /// Not ready: not warmed up yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Readiness {
            warm: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            watch: watch::channel(false).0,
            metrics,
        }
    }

    /// Every variant has run (the router has a latency for each).
    pub fn is_warm(&self) -> bool {
        self.warm.load(Ordering::SeqCst)
    }

    /// Shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Warmed up and not draining.
    pub fn is_ready(&self) -> bool {
        self.is_warm() && !self.is_draining()
    }

    /// Warm-up is over: ready, unless draining already started.
    pub fn mark_warm(&self) {
        self.warm.store(true, Ordering::SeqCst);
        // Evaluated under the channel's lock, so a drain starting meanwhile cannot be overwritten.
        self.watch.send_modify(|r| {
            *r = self.is_ready();
            self.metrics.ready.set(i64::from(*r));
        });
    }

    /// Not ready any more, for good.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.watch.send_modify(|r| {
            *r = false;
            self.metrics.ready.set(0);
        });
    }

    /// Follows readiness: `true` once warmed up, `false` again when draining starts.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.watch.subscribe()
    }
}
