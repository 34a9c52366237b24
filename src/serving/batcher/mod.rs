//! Dynamic batching: one bounded queue per variant, drained by the engine threads.
//!
//! Request handlers [`Batcher::submit`] preprocessed images (all of a request's images or none)
//! and await their replies. Engine threads call [`Batcher::next_batch`], which blocks until the
//! [`BatchPolicy`] says a queue is due, then takes up to `max_batch` live images from it. Images
//! whose client went away or whose deadline passed are dropped there, before any compute.

pub mod policy;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use self::policy::{BatchPolicy, Decision, QueueView};
use crate::error::{Error, Result};
use crate::serving::metrics::Metrics;

/// What an engine thread sends back for one image.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// The model's outputs for this image (logits, or probabilities if the graph has a softmax).
    pub scores: Vec<f32>,
    /// Time from queueing to the start of its batch.
    pub queue: Duration,
    /// Inference time of its whole batch.
    pub inference: Duration,
    /// Images in its batch.
    pub batch_size: usize,
    /// Identifies the batch (for logs and traces).
    pub batch_id: u64,
}

/// One preprocessed image waiting for inference.
#[derive(Debug)]
pub struct Job {
    /// The NHWC input tensor of one image at the variant's resolution.
    pub input: Vec<f32>,
    /// When it was queued.
    pub enqueued: Instant,
    /// After this instant nobody wants the answer.
    pub deadline: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<JobOutput>>,
}

impl Job {
    /// A job for `input`, queued now, and the receiver of its answer.
    pub fn new(input: Vec<f32>, deadline: Instant) -> (Self, oneshot::Receiver<Result<JobOutput>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            input,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        (job, rx)
    }
}

/// A batch taken by an engine thread.
#[derive(Debug)]
pub struct Batch {
    /// Index of the variant (in the order given to [`Batcher::new`]).
    pub variant: usize,
    /// Sequential batch number.
    pub id: u64,
    /// The images, in queue order.
    pub jobs: Vec<Job>,
}

#[derive(Debug)]
struct State {
    queues: Vec<VecDeque<Job>>,
    /// No more submissions; the threads drain what is queued and stop.
    closed: bool,
    /// Admitted requests that have not submitted their images yet (see [`Incoming`]).
    incoming: usize,
    next_id: u64,
}

/// The per-variant queues shared by request handlers and engine threads.
#[derive(Debug)]
pub struct Batcher {
    state: Mutex<State>,
    /// Signalled when work arrives or the batcher closes.
    wake: Condvar,
    policy: BatchPolicy,
    max_queue: usize,
    names: Vec<String>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Queues for the variants called `names`, each holding at most `max_queue` images.
    pub fn new(
        names: Vec<String>,
        policy: BatchPolicy,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Batcher {
            state: Mutex::new(State {
                queues: names.iter().map(|_| VecDeque::new()).collect(),
                closed: false,
                incoming: 0,
                next_id: 0,
            }),
            wake: Condvar::new(),
            policy,
            max_queue,
            names,
            metrics,
        }
    }

    /// The batching limits.
    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    /// Announces a request whose images are on their way (being read or decoded). While any
    /// request is announced, partial batches wait up to `max_delay` for it; when none is, they
    /// run at once, since nothing could join them. Under load batches fill up anyway; at low
    /// load no request pays the delay for nothing.
    pub fn expect(self: &Arc<Self>) -> Incoming {
        self.lock().incoming += 1;
        Incoming {
            batcher: Some(self.clone()),
        }
    }

    /// Queues all of `jobs` for `variant`, or none of them when they do not fit.
    pub fn submit(&self, variant: usize, jobs: Vec<Job>) -> Result<()> {
        self.submit_locked(self.lock(), variant, jobs)
    }

    fn submit_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        variant: usize,
        jobs: Vec<Job>,
    ) -> Result<()> {
        if state.closed {
            return Err(Error::Unavailable("the engine is shutting down".into()));
        }
        let queue = state
            .queues
            .get_mut(variant)
            .ok_or_else(|| Error::Internal(format!("no queue for variant {variant}")))?;
        if jobs.len() > self.max_queue {
            return Err(Error::BadRequest(format!(
                "{} images in one request never fit the queue of {} images",
                jobs.len(),
                self.max_queue
            )));
        }
        if queue.len() + jobs.len() > self.max_queue {
            return Err(Error::QueueFull {
                variant: self.names[variant].clone(),
                capacity: self.max_queue,
                retry_after_s: crate::error::RETRY_AFTER_S,
            });
        }
        queue.extend(jobs);
        let depth = queue.len();
        // Under the lock, so that a concurrent take cannot leave a stale depth behind.
        self.set_depth(variant, depth);
        drop(state);
        // Every waiting thread re-decides: one may take this batch, another may then be the
        // only one left to keep the timer of a partial batch elsewhere.
        self.wake.notify_all();
        Ok(())
    }

    /// Images waiting for `variant`.
    pub fn queued(&self, variant: usize) -> usize {
        self.lock().queues.get(variant).map_or(0, VecDeque::len)
    }

    /// Images waiting for every variant, read under one lock.
    pub fn queued_all(&self) -> Vec<usize> {
        self.lock().queues.iter().map(VecDeque::len).collect()
    }

    /// Refuses new submissions; engine threads finish what is queued, then
    /// [`Batcher::next_batch`] returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Blocks until a batch is due and returns it; `None` once closed and empty. For engine
    /// threads only (it blocks the calling OS thread).
    pub fn next_batch(&self) -> Option<Batch> {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let views: Vec<QueueView> = state.queues.iter().map(view).collect();
            let flush = state.closed || state.incoming == 0;
            match self.policy.decide(now, &views, flush) {
                Decision::Run(variant) => {
                    if let Some(batch) = self.take(&mut state, variant, now) {
                        return Some(batch);
                    }
                    // Everything taken was dead; look again.
                }
                Decision::WaitUntil(t) => {
                    let timeout = t.saturating_duration_since(now);
                    state = self
                        .wake
                        .wait_timeout(state, timeout)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Decision::Idle if state.closed => {
                    // Let the other threads see the empty, closed state too.
                    self.wake.notify_all();
                    return None;
                }
                Decision::Idle => {
                    state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Takes up to `max_batch` live jobs from the front of `variant`'s queue.
    fn take(&self, state: &mut State, variant: usize, now: Instant) -> Option<Batch> {
        let name = &self.names[variant];
        let queue = &mut state.queues[variant];
        let mut jobs = Vec::with_capacity(self.policy.max_batch.min(queue.len()));
        while jobs.len() < self.policy.max_batch {
            let Some(job) = queue.pop_front() else { break };
            if job.reply.is_closed() {
                let reason = if now >= job.deadline {
                    "deadline"
                } else {
                    "cancelled"
                };
                self.metrics.count_dropped(name, reason);
            } else if now >= job.deadline {
                self.metrics.count_dropped(name, "deadline");
                let _ = job.reply.send(Err(Error::DeadlineExceeded(
                    "the deadline passed while the image was queued".into(),
                )));
            } else {
                jobs.push(job);
            }
        }
        let depth = queue.len();
        self.set_depth(variant, depth);
        if jobs.is_empty() {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        Some(Batch { variant, id, jobs })
    }

    fn set_depth(&self, variant: usize, depth: usize) {
        self.metrics
            .queue_depth
            .with_label_values(&[&self.names[variant]])
            .set(depth as i64);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Queues of plain values stay consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request announced to the batcher (see [`Batcher::expect`]); it stops counting when it
/// submits its images or is dropped.
#[derive(Debug)]
pub struct Incoming {
    batcher: Option<Arc<Batcher>>,
}

impl Incoming {
    /// Queues the request's images (see [`Batcher::submit`]) and stops counting it, atomically,
    /// so that no engine thread sees neither.
    pub fn submit(mut self, variant: usize, jobs: Vec<Job>) -> Result<()> {
        let Some(batcher) = self.batcher.take() else {
            return Err(Error::Internal("a request was submitted twice".into()));
        };
        let mut state = batcher.lock();
        state.incoming -= 1;
        let submitted = batcher.submit_locked(state, variant, jobs);
        if submitted.is_err() {
            // Refused: partial batches elsewhere may have been waiting for this request only.
            batcher.wake.notify_all();
        }
        submitted
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(batcher) = self.batcher.take() {
            batcher.lock().incoming -= 1;
            // Partial batches may have been waiting for this request only.
            batcher.wake.notify_all();
        }
    }
}

fn view(queue: &VecDeque<Job>) -> QueueView {
    QueueView {
        len: queue.len(),
        oldest: queue.front().map(|j| j.enqueued),
        earliest_deadline: queue.iter().map(|j| j.deadline).min(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher(max_batch: usize, max_queue: usize) -> Batcher {
        let policy = BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(1),
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        Batcher::new(vec!["a".into(), "b".into()], policy, max_queue, metrics)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn submission_is_all_or_nothing_within_the_bound() {
        let b = batcher(4, 3);
        let (j1, _r1) = Job::new(vec![1.0], far());
        let (j2, _r2) = Job::new(vec![2.0], far());
        b.submit(0, vec![j1, j2]).unwrap();
        let (j3, _r3) = Job::new(vec![3.0], far());
        let (j4, _r4) = Job::new(vec![4.0], far());
        let err = b.submit(0, vec![j3, j4]).unwrap_err();
        assert_eq!(err.kind().status, 429);
        assert_eq!(b.queued(0), 2);
        assert_eq!(b.queued(1), 0);
    }

    #[test]
    fn batches_take_at_most_max_batch_in_order() {
        let b = batcher(2, 10);
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (j, rx) = Job::new(vec![i as f32], far());
            rxs.push(rx);
            b.submit(1, vec![j]).unwrap();
        }
        let first = b.next_batch().unwrap();
        assert_eq!(first.variant, 1);
        let inputs: Vec<f32> = first.jobs.iter().map(|j| j.input[0]).collect();
        assert_eq!(inputs, vec![0.0, 1.0]);
        // The single remaining image is flushed after max_delay.
        let second = b.next_batch().unwrap();
        assert_eq!((second.jobs.len(), second.id), (1, first.id + 1));
    }

    #[test]
    fn partial_batches_wait_only_while_a_request_is_on_its_way() {
        let b = Arc::new(Batcher::new(
            vec!["a".into()],
            BatchPolicy {
                max_batch: 8,
                max_delay: Duration::from_secs(3600),
            },
            10,
            Arc::new(Metrics::new().unwrap()),
        ));
        // Nothing announced: a lone image runs at once despite the hour-long delay.
        let (j, _rx) = Job::new(vec![0.0], far());
        b.submit(0, vec![j]).unwrap();
        assert_eq!(b.next_batch().unwrap().jobs.len(), 1);
        // With a request announced, the partial batch waits for it and then runs with it.
        let (first, _r1) = Job::new(vec![1.0], far());
        let coming = b.expect();
        b.submit(0, vec![first]).unwrap();
        let worker = {
            let b = b.clone();
            std::thread::spawn(move || b.next_batch().unwrap().jobs.len())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !worker.is_finished(),
            "a partial batch ran while a request was on its way"
        );
        let (second, _r2) = Job::new(vec![2.0], far());
        coming.submit(0, vec![second]).unwrap();
        assert_eq!(worker.join().unwrap(), 2);
        // A request that gives up releases the waiting batch too.
        let (third, _r3) = Job::new(vec![3.0], far());
        let coming = b.expect();
        b.submit(0, vec![third]).unwrap();
        drop(coming);
        assert_eq!(b.next_batch().unwrap().jobs.len(), 1);
    }

    #[test]
    fn dead_jobs_are_dropped_before_compute() {
        let b = batcher(4, 10);
        let (expired, mut expired_rx) = Job::new(vec![0.0], Instant::now());
        let (gone, gone_rx) = Job::new(vec![1.0], far());
        let (live, _live_rx) = Job::new(vec![2.0], far());
        drop(gone_rx);
        b.submit(0, vec![expired, gone, live]).unwrap();
        let batch = b.next_batch().unwrap();
        assert_eq!(batch.jobs.len(), 1);
        assert_eq!(batch.jobs[0].input, vec![2.0]);
        let answer = expired_rx.try_recv().unwrap();
        assert_eq!(answer.unwrap_err().kind().status, 504);
        let text = b.metrics.render();
        assert!(text.contains(r#"mobilenet_dropped_images_total{reason="deadline",variant="a"} 1"#));
        assert!(
            text.contains(r#"mobilenet_dropped_images_total{reason="cancelled",variant="a"} 1"#)
        );
    }

    #[test]
    fn closing_drains_then_stops_every_thread() {
        let b = Arc::new(batcher(8, 10));
        let (j, _rx) = Job::new(vec![0.0], far());
        b.submit(0, vec![j]).unwrap();
        b.close();
        let (late, _late_rx) = Job::new(vec![1.0], far());
        assert_eq!(b.submit(0, vec![late]).unwrap_err().kind().status, 503);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while let Some(batch) = b.next_batch() {
                        n += batch.jobs.len();
                    }
                    n
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1);
    }
}
