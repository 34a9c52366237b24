//! Live latency of each variant in this process: what the router predicts from and what
//! `/v1/models` reports.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Samples kept for the p50/p95 window.
const WINDOW: usize = 512;
/// Weight of the newest sample in the moving averages.
const EWMA_WEIGHT: f64 = 0.2;
/// The queue-wait average halves every this long without new samples, so that a variant whose
/// queue was once long is not avoided forever once its load is gone.
const QUEUE_HALF_LIFE: Duration = Duration::from_secs(1);

/// A snapshot of one variant's latency statistics, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySnapshot {
    /// Median of the recent per-image latencies (queue wait + batch inference), if any.
    pub p50_ms: Option<f64>,
    /// 95th percentile of the same window.
    pub p95_ms: Option<f64>,
    /// Samples in the window.
    pub samples: usize,
    /// Moving average of one batch's inference time.
    pub batch_ms: Option<f64>,
    /// Moving average of the queue wait, decayed by the time since its last sample.
    pub queue_ms: f64,
}

impl LatencySnapshot {
    /// The latency a new request should expect: queue wait plus one batch's inference time.
    /// `None` before anything was measured.
    pub fn predicted_ms(&self) -> Option<f64> {
        self.batch_ms.map(|b| b + self.queue_ms)
    }
}

#[derive(Debug, Default)]
struct Inner {
    window: VecDeque<f64>,
    batch_ms: Option<f64>,
    queue_ms: f64,
    queue_updated: Option<Instant>,
}

/// Thread-safe latency statistics of one variant.
#[derive(Debug, Default)]
pub struct LatencyTracker {
    inner: Mutex<Inner>,
}

fn ewma(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => o + EWMA_WEIGHT * (new - o),
        None => new,
    }
}

fn decayed(value: f64, since: Option<Instant>, now: Instant) -> f64 {
    match since {
        Some(t) => {
            let halves =
                now.saturating_duration_since(t).as_secs_f64() / QUEUE_HALF_LIFE.as_secs_f64();
            value * 0.5f64.powf(halves)
        }
        None => value,
    }
}

impl LatencyTracker {
    /// Records one batch's inference time (also the warm-up's, which seeds the prediction).
    pub fn record_batch(&self, inference: Duration) {
        let mut s = self.lock();
        s.batch_ms = Some(ewma(s.batch_ms, inference.as_secs_f64() * 1e3));
    }

    /// Replaces the batch-time average by a measurement (the warm-up's last run, once the
    /// weights are in cache).
    pub fn seed_batch(&self, inference: Duration) {
        self.lock().batch_ms = Some(inference.as_secs_f64() * 1e3);
    }

    /// Records what one image experienced: its queue wait and its batch's inference time.
    pub fn record_image(&self, queue: Duration, inference: Duration, now: Instant) {
        let queue_ms = queue.as_secs_f64() * 1e3;
        let mut s = self.lock();
        // The first sample starts the average; later ones move the decayed average.
        let current = s.queue_updated.map(|t| decayed(s.queue_ms, Some(t), now));
        s.queue_ms = ewma(current, queue_ms);
        s.queue_updated = Some(now);
        if s.window.len() == WINDOW {
            s.window.pop_front();
        }
        s.window.push_back(queue_ms + inference.as_secs_f64() * 1e3);
    }

    /// The latency a new request should expect now (see [`LatencySnapshot::predicted_ms`]),
    /// without the quantiles: cheap enough for every routing decision.
    pub fn predicted_ms(&self, now: Instant) -> Option<f64> {
        let s = self.lock();
        s.batch_ms
            .map(|b| b + decayed(s.queue_ms, s.queue_updated, now))
    }

    /// The moving average of one batch's inference time, if any was measured.
    pub fn batch_ms(&self) -> Option<f64> {
        self.lock().batch_ms
    }

    /// The current statistics.
    pub fn snapshot(&self, now: Instant) -> LatencySnapshot {
        let s = self.lock();
        let mut sorted: Vec<f64> = s.window.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        LatencySnapshot {
            p50_ms: quantile(&sorted, 0.50),
            p95_ms: quantile(&sorted, 0.95),
            samples: sorted.len(),
            batch_ms: s.batch_ms,
            queue_ms: decayed(s.queue_ms, s.queue_updated, now),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The data is plain numbers, valid even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `q` quantile of sorted samples (nearest rank), `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], 0.5), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn prediction_is_batch_time_plus_decaying_queue_wait() {
        let t = LatencyTracker::default();
        let now = Instant::now();
        assert_eq!(t.snapshot(now).predicted_ms(), None);
        t.record_batch(Duration::from_millis(4));
        t.record_image(Duration::from_millis(10), Duration::from_millis(4), now);
        let s = t.snapshot(now);
        assert_eq!(s.batch_ms, Some(4.0));
        assert!((s.predicted_ms().unwrap() - 14.0).abs() < 1e-9);
        assert_eq!(t.predicted_ms(now), s.predicted_ms());
        assert_eq!(s.p50_ms, Some(14.0));
        // Two half-lives later the queue part is a quarter.
        let later = t.snapshot(now + 2 * QUEUE_HALF_LIFE);
        assert!((later.queue_ms - 2.5).abs() < 1e-9, "{later:?}");
        // A new batch moves the average a fifth of the way.
        t.record_batch(Duration::from_millis(9));
        assert!((t.snapshot(now).batch_ms.unwrap() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn window_keeps_the_latest_samples() {
        let t = LatencyTracker::default();
        let now = Instant::now();
        for i in 0..(WINDOW + 10) {
            t.record_image(Duration::ZERO, Duration::from_micros(i as u64 * 1000), now);
        }
        let s = t.snapshot(now);
        assert_eq!(s.samples, WINDOW);
        assert_eq!(s.p50_ms, Some((10 + WINDOW / 2 - 1) as f64));
    }
}
