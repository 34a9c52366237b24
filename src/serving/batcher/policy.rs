//! When to run a batch, and of which variant: a pure function of the queues and the clock.

use std::time::{Duration, Instant};

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// A queue holding this many images is flushed at once.
    pub max_batch: usize,
    /// A queue is flushed when its oldest image has waited this long, however few it holds.
    pub max_delay: Duration,
}

/// What a worker sees of one variant's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueView {
    /// Images waiting.
    pub len: usize,
    /// When the oldest of them was queued.
    pub oldest: Option<Instant>,
    /// The earliest deadline among them.
    pub earliest_deadline: Option<Instant>,
}

/// What a free worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take a batch from this queue now.
    Run(usize),
    /// Nothing is due: sleep until this instant (or until new work arrives).
    WaitUntil(Instant),
    /// Every queue is empty.
    Idle,
}

impl BatchPolicy {
    /// Decides for a free worker. A queue is due when it holds a full batch, when its oldest image
    /// has waited `max_delay`, or when `flush` is set (shutting down: nothing will arrive to fill
    /// the batch). Among due queues the one holding the earliest deadline runs first, so that
    /// variants sharing the engine threads are served earliest-deadline-first.
    pub fn decide(&self, now: Instant, queues: &[QueueView], flush: bool) -> Decision {
        let mut due: Option<(usize, Option<Instant>)> = None;
        let mut wake: Option<Instant> = None;
        for (i, q) in queues.iter().enumerate() {
            let Some(oldest) = q.oldest.filter(|_| q.len > 0) else {
                continue;
            };
            let flush_at = oldest + self.max_delay;
            if flush || q.len >= self.max_batch || now >= flush_at {
                let earlier = match (due, q.earliest_deadline) {
                    (None, _) => true,
                    (Some((_, Some(best))), Some(d)) => d < best,
                    (Some((_, None)), Some(_)) => true,
                    (Some(_), None) => false,
                };
                if earlier {
                    due = Some((i, q.earliest_deadline));
                }
            } else {
                wake = Some(wake.map_or(flush_at, |w| w.min(flush_at)));
            }
        }
        match (due, wake) {
            (Some((i, _)), _) => Decision::Run(i),
            (None, Some(t)) => Decision::WaitUntil(t),
            (None, None) => Decision::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BatchPolicy = BatchPolicy {
        max_batch: 4,
        max_delay: Duration::from_millis(2),
    };

    fn view(len: usize, oldest: Instant, deadline: Instant) -> QueueView {
        QueueView {
            len,
            oldest: Some(oldest),
            earliest_deadline: Some(deadline),
        }
    }

    #[test]
    fn empty_queues_mean_idle() {
        let now = Instant::now();
        assert_eq!(POLICY.decide(now, &[], false), Decision::Idle);
        assert_eq!(
            POLICY.decide(now, &[QueueView::default(); 3], false),
            Decision::Idle
        );
    }

    #[test]
    fn a_partial_batch_waits_for_the_delay_then_runs() {
        let t0 = Instant::now();
        let q = [view(1, t0, t0 + Duration::from_secs(1))];
        let wake = t0 + POLICY.max_delay;
        assert_eq!(POLICY.decide(t0, &q, false), Decision::WaitUntil(wake));
        assert_eq!(
            POLICY.decide(t0 + Duration::from_millis(1), &q, false),
            Decision::WaitUntil(wake)
        );
        assert_eq!(POLICY.decide(wake, &q, false), Decision::Run(0));
    }

    #[test]
    fn a_full_batch_runs_at_once() {
        let t0 = Instant::now();
        let q = [view(4, t0, t0 + Duration::from_secs(1))];
        assert_eq!(POLICY.decide(t0, &q, false), Decision::Run(0));
    }

    #[test]
    fn flushing_runs_partial_batches_at_once() {
        let t0 = Instant::now();
        let q = [
            QueueView::default(),
            view(1, t0, t0 + Duration::from_secs(1)),
        ];
        assert_eq!(POLICY.decide(t0, &q, true), Decision::Run(1));
    }

    #[test]
    fn the_earliest_deadline_among_due_queues_runs_first() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(5);
        let soon = t0 + Duration::from_secs(1);
        let q = [view(4, t0, late), view(4, t0, soon), view(1, t0, t0)];
        // Queue 2 has the earliest deadline but is not due yet.
        assert_eq!(POLICY.decide(t0, &q, false), Decision::Run(1));
        // Once it is due, it goes first.
        assert_eq!(
            POLICY.decide(t0 + POLICY.max_delay, &q, false),
            Decision::Run(2)
        );
    }

    #[test]
    fn the_soonest_flush_time_is_the_wake_up() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(1);
        let q = [view(1, t0 + Duration::from_micros(500), d), view(2, t0, d)];
        assert_eq!(
            POLICY.decide(t0, &q, false),
            Decision::WaitUntil(t0 + POLICY.max_delay)
        );
    }
}
