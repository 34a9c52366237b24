//! Dynamic batching: one bounded queue per loaded model, drained by the engine threads.
//!
//! Request handlers [`Batcher::submit`] preprocessed images (all of a request's images or none)
//! and await their replies. Engine threads call [`Batcher::next_batch`], which blocks until the
//! [`BatchPolicy`] says a queue is due, then takes up to `max_batch` live images from it. Images
//! whose client went away or whose deadline passed are dropped there, before any compute.
//!
//! Queues are keyed by the loaded model itself ([`QueueKey`]), not by a fixed index, so that
//! models come and go: a replaced model keeps its queue until what it holds has run, beside
//! its successor's, and the queue goes once it is empty and its model retired.

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

/// What a queue is for: a loaded model, which the batches of its queue carry to the engine.
pub trait QueueKey: std::fmt::Debug + Send + Sync + 'static {
    /// Tells this load apart from every other, a reload of the same name included.
    fn key(&self) -> u64;
    /// The variant name (the `variant` label of the queue's metrics).
    fn name(&self) -> &str;
    /// Replaced or unloaded: its queue goes once empty.
    fn is_retired(&self) -> bool;
}

/// A batch taken by an engine thread.
#[derive(Debug)]
pub struct Batch<K> {
    /// The model whose queue it came from.
    pub model: Arc<K>,
    /// Sequential batch number.
    pub id: u64,
    /// The images, in queue order.
    pub jobs: Vec<Job>,
}

#[derive(Debug)]
struct Queue<K> {
    model: Arc<K>,
    jobs: VecDeque<Job>,
}

#[derive(Debug)]
struct State<K> {
    queues: Vec<Queue<K>>,
    /// No more submissions; the threads drain what is queued and stop.
    closed: bool,
    /// Admitted requests that have not submitted their images yet (see [`Incoming`]).
    incoming: usize,
    next_id: u64,
}

/// The per-model queues shared by request handlers and engine threads.
#[derive(Debug)]
pub struct Batcher<K> {
    state: Mutex<State<K>>,
    /// Signalled when work arrives or the batcher closes.
    wake: Condvar,
    policy: BatchPolicy,
    max_queue: usize,
    metrics: Arc<Metrics>,
}

impl<K: QueueKey> Batcher<K> {
    /// Queues holding at most `max_queue` images each, made as models are first submitted to.
    pub fn new(policy: BatchPolicy, max_queue: usize, metrics: Arc<Metrics>) -> Self {
        Batcher {
            state: Mutex::new(State {
                queues: Vec::new(),
                closed: false,
                incoming: 0,
                next_id: 0,
            }),
            wake: Condvar::new(),
            policy,
            max_queue,
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
    pub fn expect(self: &Arc<Self>) -> Incoming<K> {
        self.lock().incoming += 1;
        Incoming {
            batcher: Some(self.clone()),
        }
    }

    /// Queues all of `jobs` for `model`, or none of them when they do not fit. A retired model
    /// still takes them: the request chose it before it was replaced, and runs on it.
    pub fn submit(&self, model: &Arc<K>, jobs: Vec<Job>) -> Result<()> {
        self.submit_locked(self.lock(), model, jobs)
    }

    fn submit_locked(
        &self,
        mut state: MutexGuard<'_, State<K>>,
        model: &Arc<K>,
        jobs: Vec<Job>,
    ) -> Result<()> {
        if state.closed {
            return Err(Error::Unavailable("the engine is shutting down".into()));
        }
        if jobs.len() > self.max_queue {
            return Err(Error::BadRequest(format!(
                "{} images in one request never fit the queue of {} images",
                jobs.len(),
                self.max_queue
            )));
        }
        let at = state
            .queues
            .iter()
            .position(|q| q.model.key() == model.key());
        let queued = at.map_or(0, |at| state.queues[at].jobs.len());
        if queued + jobs.len() > self.max_queue {
            return Err(Error::QueueFull {
                variant: model.name().to_string(),
                capacity: self.max_queue,
                retry_after_s: crate::error::RETRY_AFTER_S,
            });
        }
        match at {
            Some(at) => state.queues[at].jobs.extend(jobs),
            None => state.queues.push(Queue {
                model: model.clone(),
                jobs: jobs.into(),
            }),
        }
        // Under the lock, so that a concurrent take cannot leave a stale depth behind.
        self.set_depth(&state, model.name());
        drop(state);
        // Every waiting thread re-decides: one may take this batch, another may then be the
        // only one left to keep the timer of a partial batch elsewhere.
        self.wake.notify_all();
        Ok(())
    }

    /// Images waiting for the variant called `name` (its retired loads' included).
    pub fn queued(&self, name: &str) -> usize {
        depth_of(&self.lock(), name)
    }

    /// Images waiting for each of `names`, read under one lock.
    pub fn queued_all<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        let state = self.lock();
        names.into_iter().map(|n| depth_of(&state, n)).collect()
    }

    /// Called once `model` is retired: its queue goes now if empty, else once drained.
    pub fn retire(&self, model: &K) {
        let mut state = self.lock();
        state
            .queues
            .retain(|q| q.model.key() != model.key() || !q.jobs.is_empty());
    }

    /// Queues that exist now (retired ones still draining included).
    pub fn queue_count(&self) -> usize {
        self.lock().queues.len()
    }

    /// Refuses new submissions; engine threads finish what is queued, then
    /// [`Batcher::next_batch`] returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// What the policy says of the queues now.
    fn decide(&self, state: &State<K>, now: Instant) -> Decision {
        let views: Vec<QueueView> = state.queues.iter().map(|q| view(&q.jobs)).collect();
        let flush = state.closed || state.incoming == 0;
        self.policy.decide(now, &views, flush)
    }

    /// A batch that is due now, if any, without waiting: for an engine thread that could run
    /// another batch beside the one it has.
    pub fn try_next_batch(&self) -> Option<Batch<K>> {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let Decision::Run(variant) = self.decide(&state, now) else {
                return None;
            };
            if let Some(batch) = self.take(&mut state, variant, now) {
                return Some(batch);
            }
        }
    }

    /// Blocks until a batch is due and returns it; `None` once closed and empty. For engine
    /// threads only (it blocks the calling OS thread).
    pub fn next_batch(&self) -> Option<Batch<K>> {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            match self.decide(&state, now) {
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

    /// Takes up to `max_batch` live jobs from the front of queue `at`, and removes the queue
    /// when that empties a retired model's.
    fn take(&self, state: &mut State<K>, at: usize, now: Instant) -> Option<Batch<K>> {
        let model = state.queues[at].model.clone();
        let name = model.name();
        let queue = &mut state.queues[at].jobs;
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
        if queue.is_empty() && model.is_retired() {
            state.queues.swap_remove(at);
        }
        self.set_depth(&*state, name);
        if jobs.is_empty() {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        Some(Batch { model, id, jobs })
    }

    fn set_depth(&self, state: &State<K>, name: &str) {
        self.metrics
            .queue_depth
            .with_label_values(&[name])
            .set(depth_of(state, name) as i64);
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Queues of plain values stay consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request announced to the batcher (see [`Batcher::expect`]); it stops counting when it
/// submits its images or is dropped.
#[derive(Debug)]
pub struct Incoming<K: QueueKey> {
    batcher: Option<Arc<Batcher<K>>>,
}

impl<K: QueueKey> Incoming<K> {
    /// Queues the request's images (see [`Batcher::submit`]) and stops counting it, atomically,
    /// so that no engine thread sees neither.
    pub fn submit(mut self, model: &Arc<K>, jobs: Vec<Job>) -> Result<()> {
        let Some(batcher) = self.batcher.take() else {
            return Err(Error::Internal("a request was submitted twice".into()));
        };
        let mut state = batcher.lock();
        state.incoming -= 1;
        let submitted = batcher.submit_locked(state, model, jobs);
        if submitted.is_err() {
            // Refused: partial batches elsewhere may have been waiting for this request only.
            batcher.wake.notify_all();
        }
        submitted
    }
}

impl<K: QueueKey> Drop for Incoming<K> {
    fn drop(&mut self) {
        if let Some(batcher) = self.batcher.take() {
            batcher.lock().incoming -= 1;
            // Partial batches may have been waiting for this request only.
            batcher.wake.notify_all();
        }
    }
}

/// Images queued for `name`: a replaced model's queue still draining counts with its successor's.
fn depth_of<K: QueueKey>(state: &State<K>, name: &str) -> usize {
    state
        .queues
        .iter()
        .filter(|q| q.model.name() == name)
        .map(|q| q.jobs.len())
        .sum()
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

    /// A queue key without a model.
    #[derive(Debug)]
    struct Model {
        key: u64,
        name: &'static str,
        retired: std::sync::atomic::AtomicBool,
    }

    impl QueueKey for Model {
        fn key(&self) -> u64 {
            self.key
        }
        fn name(&self) -> &str {
            self.name
        }
        fn is_retired(&self) -> bool {
            self.retired.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    fn model(key: u64, name: &'static str) -> Arc<Model> {
        Arc::new(Model {
            key,
            name,
            retired: false.into(),
        })
    }

    fn batcher(max_batch: usize, max_queue: usize) -> Batcher<Model> {
        let policy = BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(1),
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        Batcher::new(policy, max_queue, metrics)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn submission_is_all_or_nothing_within_the_bound() {
        let b = batcher(4, 3);
        let (a, c) = (model(1, "a"), model(2, "b"));
        let (j1, _r1) = Job::new(vec![1.0], far());
        let (j2, _r2) = Job::new(vec![2.0], far());
        b.submit(&a, vec![j1, j2]).unwrap();
        let (j3, _r3) = Job::new(vec![3.0], far());
        let (j4, _r4) = Job::new(vec![4.0], far());
        let err = b.submit(&a, vec![j3, j4]).unwrap_err();
        assert_eq!(err.kind().status, 429);
        assert_eq!(b.queued("a"), 2);
        assert_eq!(b.queued("b"), 0);
        let (j5, _r5) = Job::new(vec![5.0], far());
        b.submit(&c, vec![j5]).unwrap();
        assert_eq!(b.queued_all(["a", "b", "c"]), vec![2, 1, 0]);
    }

    #[test]
    fn a_retired_model_keeps_its_queue_until_drained_beside_its_successor() {
        let b = batcher(8, 10);
        let (old, new) = (model(1, "a"), model(2, "a"));
        let (j1, _r1) = Job::new(vec![1.0], far());
        b.submit(&old, vec![j1]).unwrap();
        old.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
        b.retire(&old);
        // Queued work is not dropped by the retirement, and a late submission still runs on
        // the model its request chose.
        let (j2, _r2) = Job::new(vec![2.0], far());
        b.submit(&old, vec![j2]).unwrap();
        let (j3, _r3) = Job::new(vec![3.0], far());
        b.submit(&new, vec![j3]).unwrap();
        assert_eq!((b.queued("a"), b.queue_count()), (3, 2));
        let first = b.next_batch().unwrap();
        assert_eq!(first.model.key, 1);
        assert_eq!(first.jobs.len(), 2);
        assert_eq!(b.queue_count(), 1, "the drained retired queue stays");
        let second = b.next_batch().unwrap();
        assert_eq!((second.model.key, second.jobs.len()), (2, 1));
        assert_eq!(b.queue_count(), 1, "a live model's empty queue stays");
        new.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
        b.retire(&new);
        assert_eq!(b.queue_count(), 0);
        assert!(b
            .metrics
            .render()
            .contains(r#"mobilenet_queue_depth{variant="a"} 0"#));
    }

    #[test]
    fn batches_take_at_most_max_batch_in_order() {
        let b = batcher(2, 10);
        let m = model(7, "b");
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (j, rx) = Job::new(vec![i as f32], far());
            rxs.push(rx);
            b.submit(&m, vec![j]).unwrap();
        }
        let first = b.next_batch().unwrap();
        assert_eq!(first.model.key, 7);
        let inputs: Vec<f32> = first.jobs.iter().map(|j| j.input[0]).collect();
        assert_eq!(inputs, vec![0.0, 1.0]);
        // The single remaining image is flushed after max_delay.
        let second = b.next_batch().unwrap();
        assert_eq!((second.jobs.len(), second.id), (1, first.id + 1));
    }

    #[test]
    fn partial_batches_wait_only_while_a_request_is_on_its_way() {
        let m = model(1, "a");
        let b = Arc::new(Batcher::new(
            BatchPolicy {
                max_batch: 8,
                max_delay: Duration::from_secs(3600),
            },
            10,
            Arc::new(Metrics::new().unwrap()),
        ));
        // Nothing announced: a lone image runs at once despite the hour-long delay.
        let (j, _rx) = Job::new(vec![0.0], far());
        b.submit(&m, vec![j]).unwrap();
        assert_eq!(b.next_batch().unwrap().jobs.len(), 1);
        // With a request announced, the partial batch waits for it and then runs with it.
        let (first, _r1) = Job::new(vec![1.0], far());
        let coming = b.expect();
        b.submit(&m, vec![first]).unwrap();
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
        coming.submit(&m, vec![second]).unwrap();
        assert_eq!(worker.join().unwrap(), 2);
        // A request that gives up releases the waiting batch too.
        let (third, _r3) = Job::new(vec![3.0], far());
        let coming = b.expect();
        b.submit(&m, vec![third]).unwrap();
        drop(coming);
        assert_eq!(b.next_batch().unwrap().jobs.len(), 1);
    }

    #[test]
    fn a_batch_due_now_is_taken_without_waiting() {
        let b = batcher(4, 10);
        let a = model(1, "a");
        assert!(b.try_next_batch().is_none(), "nothing queued");
        let (six, _rx): (Vec<Job>, Vec<_>) =
            (0..6).map(|i| Job::new(vec![i as f32], far())).unzip();
        b.submit(&a, six).unwrap();
        // Nothing is on its way, so the queue is due; its front first.
        let first = b.try_next_batch().unwrap();
        assert_eq!(
            first.jobs.iter().map(|j| j.input[0]).collect::<Vec<_>>(),
            [0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(b.try_next_batch().unwrap().jobs.len(), 2);
        assert!(b.try_next_batch().is_none(), "all taken");
    }

    #[test]
    fn dead_jobs_are_dropped_before_compute() {
        let b = batcher(4, 10);
        let m = model(1, "a");
        let (expired, mut expired_rx) = Job::new(vec![0.0], Instant::now());
        let (gone, gone_rx) = Job::new(vec![1.0], far());
        let (live, _live_rx) = Job::new(vec![2.0], far());
        drop(gone_rx);
        b.submit(&m, vec![expired, gone, live]).unwrap();
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
        let m = model(1, "a");
        let (j, _rx) = Job::new(vec![0.0], far());
        b.submit(&m, vec![j]).unwrap();
        b.close();
        let (late, _late_rx) = Job::new(vec![1.0], far());
        assert_eq!(b.submit(&m, vec![late]).unwrap_err().kind().status, 503);
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
