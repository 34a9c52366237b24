//! The engine threads: dedicated OS threads (never the async runtime's) that take batches from the
//! [`Batcher`] and run them. One thread takes the batches. A lone batch runs split across all of
//! them (a [`Team`]), so a lone request gets every core. When more batches are due at once
//! (throughput mode), it takes up to one per thread and each thread runs one alone: no
//! synchronisation per layer, which on small variants costs more than the split gains. Either
//! way the threads never oversubscribe the cores, whatever mix of variants is queued.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::engine::model::Nhwc;
use crate::engine::pool::Variant;
use crate::engine::team::{split, Team};
use crate::engine::workspace::{resident_vec, Footprint, Workspace};
use crate::error::{Error, Result};
use crate::serving::batcher::{Batch, Batcher, JobOutput};
use crate::serving::metrics::Metrics;
use crate::serving::registry::Served;

/// What the engine threads share.
#[derive(Debug, Clone)]
pub struct EngineContext {
    /// Where batches come from; each carries its model.
    pub batcher: Arc<Batcher<Served>>,
    /// Batch sizes go here.
    pub metrics: Arc<Metrics>,
    /// Whether batches due together run one per thread.
    pub throughput_mode: bool,
}

/// How much nicer than the rest of the process the engine threads run by default
/// (`--engine-nice`): not at all. Measured on 2 cores, old and new settings alternating:
/// - beside one busy loop per core at nice 0 (an ordinary process on a shared host;
///   `tests/load/neighbour.sh`), 0.5_160's inference took 1.5-4.0 ms at p50, 8.1-8.2 at p95
///   and 13-14 at most with the engine at nice 0, against 7.7-13.5, 44-57 and 78-152 ms at
///   nice 10;
/// - at 5x capacity (`tests/load/pressure.sh overload`), 429s took 3.3-3.5 ms at p50 and
///   13-14 ms at p99 at nice 0, against 1.9-2.7 and 6.7-12.6 ms at nice 10.
///
/// The refusals stay fast either way; the inference of a shared host does not. Where the
/// server has a CPU cgroup of its own (a Kubernetes pod: `deploy/k8s` sets 10), its engine
/// competes only with its own accepting threads, and a higher niceness costs nothing.
pub const DEFAULT_ENGINE_NICE: i32 = 0;

/// Lowers the calling engine thread's priority by `nice` (Linux: the nice value is per thread).
/// A failure only costs latency under load, so it is logged, not fatal.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        use rustix::process::{getpriority_process, setpriority_process};
        // `None` is the calling thread on Linux; the nice value ends at 19.
        let result = getpriority_process(None)
            .and_then(|now| setpriority_process(None, (now + nice).min(19)));
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot lower the engine thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The largest batch worth running on one thread beside others rather than split across all of
/// them: throughput mode starts only from a batch no larger. Engine-only on 2 cores
/// (`bench --threads 2` against `--threads 1 --streams 2`, same run): at batch 1 to 4, one batch per thread gave 1.1-1.9x the images per second of split
/// batches (0.25_128: 5,900-6,100 img/s against 3,100-5,500; 0.5_160: 1,170-1,230 against
/// 810-1,160); at batch 8 splitting was as fast or faster (0.25_128: 6,650 against 5,580).
pub const SOLO_MAX_BATCH: usize = 4;

/// The running engine threads. Dropping them closes the batcher's queues and waits for the
/// threads to finish what is queued and stop, so that no thread outlives its service.
#[derive(Debug)]
pub struct EngineThreads {
    handles: Vec<JoinHandle<()>>,
    batcher: Arc<Batcher<Served>>,
}

impl EngineThreads {
    /// Starts `threads` engine threads: `engine-0` takes the batches, and every batch is split
    /// across it and the `threads - 1` others. Buffers are sized for the largest batch of the
    /// largest of `variants` first, so that serving them never allocates activations (a larger
    /// variant loaded later grows them once).
    pub fn spawn(
        threads: usize,
        nice: i32,
        ctx: EngineContext,
        variants: &[Variant],
    ) -> Result<Self> {
        let max_batch = ctx.batcher.policy().max_batch;
        let mut activations = Footprint::default();
        let mut inputs = 0;
        let mut outputs = 0;
        for v in variants {
            let r = v.spec.resolution;
            activations = activations.max(v.model.footprint(max_batch, r, r)?);
            inputs = inputs.max(max_batch * v.input_len());
            outputs = outputs.max(max_batch * v.spec.num_classes);
        }
        // The helpers are named engine-1.. and the thread taking batches engine-0.
        let team = Team::new(threads, "engine", move || lower_priority(nice))?;
        let batcher = ctx.batcher.clone();
        let handle = std::thread::Builder::new()
            .name("engine-0".into())
            .spawn(move || {
                lower_priority(nice);
                let new_buffers = || Buffers {
                    workspace: Workspace::with_capacity(activations),
                    input: resident_vec(inputs),
                    output: resident_vec(outputs),
                };
                // One set per thread, the first at once, the others when throughput mode first
                // needs them.
                let mut buffers = vec![new_buffers()];
                let solo = Team::single();
                let mut due = Vec::with_capacity(team.threads());
                while let Some(batch) = ctx.batcher.next_batch() {
                    let small = batch.jobs.len() <= SOLO_MAX_BATCH;
                    due.push(batch);
                    while ctx.throughput_mode && small && due.len() < team.threads() {
                        // Another queue's batch of any size: capping it at 4 measured no better.
                        match ctx.batcher.try_next_batch() {
                            Some(more) => due.push(more),
                            None => break,
                        }
                    }
                    if due.len() == 1 {
                        if let Some(batch) = due.pop() {
                            run_batch(&ctx, &team, &mut buffers[0], batch, "team");
                        }
                        continue;
                    }
                    while buffers.len() < due.len() {
                        buffers.push(new_buffers());
                    }
                    let mut work: Vec<(Option<Batch<Served>>, &mut Buffers)> =
                        due.drain(..).map(Some).zip(buffers.iter_mut()).collect();
                    team.install(|crew| {
                        split(crew, work.len(), 1, 1, &mut work, &|_, mine| {
                            for (batch, buffers) in mine {
                                if let Some(batch) = batch.take() {
                                    run_batch(&ctx, &solo, buffers, batch, "solo");
                                }
                            }
                        })
                    });
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start an engine thread: {e}")))?;
        Ok(EngineThreads {
            handles: vec![handle],
            batcher,
        })
    }
}

impl Drop for EngineThreads {
    fn drop(&mut self) {
        self.batcher.close();
        for h in self.handles.drain(..) {
            // engine-0 owns the team: the helpers stop when it does.
            if h.join().is_err() {
                tracing::error!("an engine thread panicked");
            }
        }
    }
}

struct Buffers {
    workspace: Workspace,
    input: Vec<f32>,
    output: Vec<f32>,
}

/// Runs `batch` on `team` (the engine's, or a team of one beside other batches: `mode` says
/// which for the metrics).
fn run_batch(
    ctx: &EngineContext,
    team: &Team,
    buffers: &mut Buffers,
    batch: Batch<Served>,
    mode: &str,
) {
    let variant = batch.model.variant();
    let n = batch.jobs.len();
    let r = variant.spec.resolution;
    buffers.input.clear();
    for job in &batch.jobs {
        buffers.input.extend_from_slice(&job.input);
    }
    let started = Instant::now();
    // A panic in a kernel must not take the thread (and every later request) with it: it
    // becomes an error for this batch's requests only.
    let result = catch_unwind(AssertUnwindSafe(|| {
        variant.model.run_on(
            team,
            &mut buffers.workspace,
            Nhwc::new(&buffers.input, n, r, r),
            &mut buffers.output,
        )
    }))
    .unwrap_or_else(|_| Err(Error::Internal("the engine panicked on this batch".into())));
    let inference = started.elapsed();
    let name = variant.spec.name.as_str();
    ctx.metrics
        .batch_size
        .with_label_values(&[name])
        .observe(n as f64);
    ctx.metrics.batches.with_label_values(&[name, mode]).inc();
    tracing::debug!(
        variant = name,
        batch_id = batch.id,
        size = n,
        ms = inference.as_secs_f64() * 1e3,
        "batch"
    );
    let classes = variant.spec.num_classes;
    let result = result.and_then(|()| {
        if buffers.output.len() == n * classes {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "the model gave {} outputs for {n} images of {classes} classes",
                buffers.output.len()
            )))
        }
    });
    match result {
        Ok(()) => {
            batch.model.latency().record_batch(inference);
            for (job, scores) in batch
                .jobs
                .into_iter()
                .zip(buffers.output.chunks_exact(classes))
            {
                let out = JobOutput {
                    scores: scores.to_vec(),
                    queue: started.saturating_duration_since(job.enqueued),
                    inference,
                    batch_size: n,
                    batch_id: batch.id,
                };
                let _ = job.reply.send(Ok(out));
            }
        }
        Err(e) => {
            tracing::error!(variant = name, batch_id = batch.id, error = %e, "batch failed");
            for job in batch.jobs {
                let _ = job
                    .reply
                    .send(Err(Error::Internal(format!("inference failed: {e}"))));
            }
        }
    }
}
