//! The compute threads one model run is split across: every layer is cut into as many parts as
//! the team has threads (bands of output rows, or of GEMM rows), which run at once.
//!
//! A layer of a small variant takes tens of microseconds, so handing out its parts must take far
//! less. The team's threads therefore spin for a while when they run out of work before they
//! sleep, and a layer is published through one atomic word: no queue, no allocation, no wake-up
//! between the layers of a run. A general-purpose pool (rayon) measured slower with two threads
//! than one on 0.25_128: its idle threads fall asleep between layers and each layer paid for a
//! wake-up.
//!
//! Part `i` of every layer always runs on thread `i` (the caller is thread 0). So a thread finds
//! in its own cache the rows it wrote in the layer before, and its kernel scratch sees the same
//! sizes on every run: after the first run, nothing grows and nothing allocates.
//!
//! One run uses the team at a time; runs started from several threads at once take turns, so the
//! cores are never oversubscribed.

use std::any::Any;
use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long an idle team thread keeps looking for work before it sleeps: longer than the gap
/// between two layers, far shorter than the gap between two batches of an idle service.
const SPIN: Duration = Duration::from_micros(200);

/// The most threads a team can have: far above any core count this serves, low enough that a
/// typo in `--engine-threads` is refused instead of starting thousands of spinning threads.
pub const MAX_THREADS: usize = 256;

/// A fixed set of compute threads: the caller of a run plus `threads - 1` helpers.
pub struct Team {
    threads: usize,
    shared: Arc<Shared>,
    /// Held for a whole run: one run at a time.
    turn: Mutex<()>,
    helpers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads)
            .finish()
    }
}

/// A piece of parallel work: part `i` of it is `job(i)`.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// `epoch << 32 | parts`: the current job's number and its part count.
    state: AtomicU64,
    /// The current job, written by the caller before it publishes a new epoch. Thread `i` reads
    /// it only when the epoch has a part `i`, which the caller waits for before it replaces the
    /// job, so a read never meets a write.
    job: UnsafeCell<Option<Job<'static>>>,
    /// Parts of the current job finished.
    done: AtomicUsize,
    /// The first panic of a part of the current job, raised again by the caller.
    panicked: Mutex<Option<Box<dyn Any + Send>>>,
    /// Helpers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

// SAFETY: `job` is the only non-Sync field; the protocol above orders its writes (caller, with
// no part outstanding) before its reads (by the threads that have a part), through `state` and
// `done`.
unsafe impl Sync for Shared {}

const fn pack(epoch: u64, parts: usize) -> u64 {
    (epoch << 32) | parts as u64
}

const fn unpack(state: u64) -> (u64, usize) {
    (state >> 32, (state & 0xffff_ffff) as usize)
}

impl Shared {
    /// Runs part `me` of the job published with `state`, if it has one. Never unwinds: a panic
    /// in the part is kept for the caller.
    fn run_part(&self, state: u64, me: usize) {
        let (_, parts) = unpack(state);
        if me >= parts {
            return;
        }
        // SAFETY: the job has a part `me` that is not done yet, so the caller is still waiting
        // and the job it published before `state` is alive and unchanged.
        let job = unsafe { *self.job.get() };
        if let Some(job) = job {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(me))) {
                self.keep_panic(payload);
            }
        }
        self.done.fetch_add(1, Ordering::Release);
    }

    /// Keeps the first panic of a job. Later payloads are leaked, not dropped: dropping a payload
    /// can panic again, and nothing may unwind out of [`Shared::run_part`].
    fn keep_panic(&self, payload: Box<dyn Any + Send>) {
        let mut first = lock_panics(&self.panicked);
        if first.is_none() {
            *first = Some(payload);
        } else {
            std::mem::forget(payload);
        }
    }

    /// Helper `me`'s life: wait for a new job, run its part of it, until the team is dropped.
    fn helper(&self, me: usize) {
        // The state the team started with, not a fresh load: a job published before this thread
        // got here must still count as new.
        let mut seen = pack(0, 0);
        loop {
            // Spin a while for the next job, then sleep until it comes.
            let idle_since = Instant::now();
            let mut spins = 0u32;
            let mut now = self.state.load(Ordering::Acquire);
            while now == seen && !self.stop.load(Ordering::Acquire) {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) && idle_since.elapsed() > SPIN {
                    self.sleep_while(seen);
                }
                now = self.state.load(Ordering::Acquire);
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            seen = now;
            self.run_part(now, me);
        }
    }

    /// Sleeps until the state moves on from `seen` (or the team stops).
    fn sleep_while(&self, seen: u64) {
        let mut guard = lock(&self.sleep);
        // Announced before the last look, which the caller's publish-then-count mirrors: either
        // the caller sees a sleeper and notifies (under the lock, so not before the wait), or
        // this look sees the new state.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while self.state.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Team {
    /// A team of one: runs everything on the calling thread.
    pub fn single() -> Self {
        Self::build(1, Vec::new(), Arc::new(Shared::new()))
    }

    /// A team of `threads` threads (at most [`MAX_THREADS`]): the caller of each run and
    /// `threads - 1` helpers named `{name}-{i}`, which first run `on_start` (the service lowers
    /// their priority there).
    pub fn new(
        threads: usize,
        name: &str,
        on_start: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self> {
        let on_start = Arc::new(on_start);
        if threads > MAX_THREADS {
            return Err(Error::BadInput(format!(
                "{threads} compute threads: at most {MAX_THREADS}"
            )));
        }
        let shared = Arc::new(Shared::new());
        let mut helpers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            let on_start = Arc::clone(&on_start);
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    on_start();
                    s.helper(i);
                });
            match spawned {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    // Dropping the partial team stops the helpers already started.
                    drop(Self::build(i, helpers, shared));
                    return Err(Error::Internal(format!(
                        "cannot start compute thread {i}: {e}"
                    )));
                }
            }
        }
        Ok(Self::build(threads.max(1), helpers, shared))
    }

    fn build(threads: usize, helpers: Vec<JoinHandle<()>>, shared: Arc<Shared>) -> Self {
        Team {
            threads,
            shared,
            turn: Mutex::new(()),
            helpers,
        }
    }

    /// Threads in the team, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` with the team to itself; inside it, [`split`] spreads work over the team. A team
    /// of one has nothing to share: its runs go ahead at once, each on its caller's thread.
    pub fn install<R>(&self, f: impl FnOnce(&Crew<'_>) -> R) -> R {
        if self.threads <= 1 {
            return f(&Crew::ALONE);
        }
        let _turn = lock(&self.turn);
        f(&Crew {
            team: Some(self),
            not_shared: PhantomData,
        })
    }

    /// Runs `job(0..parts)` on the team (the calling thread included) and returns when every
    /// part is done. A panic in any part is raised here, after all of them have finished.
    fn run(&self, parts: usize, job: Job<'_>) {
        let s = &*self.shared;
        // SAFETY: no part of the previous job is outstanding (every run waits for all of its
        // parts), so no helper reads `job` now. The lifetime is extended only for the duration
        // of this call, which does not return before every part that could read it is done.
        unsafe {
            *s.job.get() = Some(std::mem::transmute::<Job<'_>, Job<'static>>(job));
        }
        s.done.store(0, Ordering::Relaxed);
        let (epoch, _) = unpack(s.state.load(Ordering::Relaxed));
        let state = pack(epoch.wrapping_add(1) & 0xffff_ffff, parts);
        s.state.store(state, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&s.sleep);
            s.wake.notify_all();
        }
        // Waits for every part even if something below unwinds: the parts borrow the caller's
        // stack, which must outlive them.
        let all_done = AllDone { shared: s, parts };
        s.run_part(state, 0);
        drop(all_done);
        let first_panic = lock_panics(&s.panicked).take();
        if let Some(payload) = first_panic {
            resume_unwind(payload);
        }
    }
}

/// Waits, when dropped, until every part of the current job is done, then clears the job.
struct AllDone<'a> {
    shared: &'a Shared,
    parts: usize,
}

impl Drop for AllDone<'_> {
    fn drop(&mut self) {
        let s = self.shared;
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < self.parts {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                // A helper was descheduled mid-part: let it have the core.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: every part is done; nothing reads the job any more.
        unsafe {
            *s.job.get() = None;
        }
    }
}

fn lock_panics(
    m: &Mutex<Option<Box<dyn Any + Send>>>,
) -> MutexGuard<'_, Option<Box<dyn Any + Send>>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new() -> Self {
        Shared {
            state: AtomicU64::new(pack(0, 0)),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panicked: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        {
            let _guard = lock(&s.sleep);
            s.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A team held for one run (or no team: everything on the calling thread). It stays on the
/// thread that holds the team (neither `Send` nor `Sync`): a part cannot start a split of its own
/// on the same team while the team runs it.
#[derive(Debug, Clone, Copy)]
pub struct Crew<'t> {
    team: Option<&'t Team>,
    not_shared: PhantomData<*const ()>,
}

impl Crew<'_> {
    /// No team: [`split`] runs every piece of work on the calling thread.
    pub const ALONE: Crew<'static> = Crew {
        team: None,
        not_shared: PhantomData,
    };

    /// How many parts work is cut into: the team's size.
    pub fn parts(&self) -> usize {
        self.team.map_or(1, Team::threads)
    }
}

/// Cuts `units` units of work, each owning `unit_len` consecutive values of `out`, into at most
/// one contiguous range per thread of the crew, with boundaries at multiples of `align`, and runs
/// `f(range, its values of out)` on each at once.
pub fn split<T: Send, F>(
    crew: &Crew<'_>,
    units: usize,
    align: usize,
    unit_len: usize,
    out: &mut [T],
    f: &F,
) where
    F: Fn(Range<usize>, &mut [T]) + Sync,
{
    split_pair(
        crew,
        units,
        align,
        (out, unit_len),
        (&mut [] as &mut [T], 0),
        &|range, out, _| f(range, out),
    );
}

/// Like [`split`], with two outputs: each unit owns `unit_len` values of the first and
/// `scratch_len` of the second (a part's scratch, say), and `f` gets its values of both.
pub fn split_pair<T: Send, S: Send, F>(
    crew: &Crew<'_>,
    units: usize,
    align: usize,
    (out, unit_len): (&mut [T], usize),
    (scratch, scratch_len): (&mut [S], usize),
    f: &F,
) where
    F: Fn(Range<usize>, &mut [T], &mut [S]) + Sync,
{
    assert_eq!(out.len(), units * unit_len, "split output length");
    assert_eq!(scratch.len(), units * scratch_len, "split scratch length");
    let align = align.max(1);
    let blocks = units.div_ceil(align);
    let parts = crew.parts().min(blocks);
    let team = match crew.team {
        Some(team) if parts > 1 => team,
        _ => return f(0..units, out, scratch),
    };
    let bound = |i: usize| (blocks * i / parts * align).min(units);
    let (out, scratch) = (SendPtr(out.as_mut_ptr()), SendPtr(scratch.as_mut_ptr()));
    team.run(parts, &|i| {
        let range = bound(i)..bound(i + 1);
        // SAFETY: the ranges of different parts are disjoint and inside `out` and `scratch`,
        // which outlive the run; each part alone touches its values of each.
        let (values, scratch) = unsafe {
            (
                std::slice::from_raw_parts_mut(
                    out.get().add(range.start * unit_len),
                    range.len() * unit_len,
                ),
                std::slice::from_raw_parts_mut(
                    scratch.get().add(range.start * scratch_len),
                    range.len() * scratch_len,
                ),
            )
        };
        f(range, values, scratch)
    });
}

/// An output's pointer, shared by the parts of a split.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: the parts write disjoint ranges of `T: Send` values through it (see `split`).
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a split and returns the ranges it made, sorted, after checking each got its values.
    fn ranges(team: &Team, units: usize, align: usize) -> Vec<Range<usize>> {
        let seen = Mutex::new(Vec::new());
        let mut out = vec![0.0; units * 2];
        team.install(|crew| {
            split(crew, units, align, 2, &mut out, &|r, values| {
                assert_eq!(values.len(), r.len() * 2);
                values.fill(r.start as f32);
                seen.lock().unwrap().push(r);
            })
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|r| r.start);
        for r in &seen {
            assert!(out[r.start * 2..r.end * 2]
                .iter()
                .all(|&v| v == r.start as f32));
        }
        seen
    }

    #[test]
    fn ranges_cover_the_work_once_at_aligned_boundaries() {
        let team = Team::new(3, "test", || {}).unwrap();
        for (units, align) in [(196, 12), (49, 12), (10, 1), (7, 12), (1, 1), (36, 12)] {
            let got = ranges(&team, units, align);
            let mut next = 0;
            for r in &got {
                assert_eq!(r.start, next, "{units} units, align {align}: {got:?}");
                assert!(!r.is_empty());
                assert!(r.start % align == 0);
                next = r.end;
            }
            assert_eq!(next, units);
            assert_eq!(got.len(), 3.min(units.div_ceil(align)), "{got:?}");
        }
    }

    #[test]
    fn a_team_of_one_does_not_split() {
        assert_eq!(ranges(&Team::single(), 100, 1), vec![0..100]);
        assert_eq!(Team::new(1, "test", || {}).unwrap().threads(), 1);
    }

    #[test]
    fn helpers_do_part_of_the_work_and_wake_from_sleep() {
        let team = Team::new(2, "test", || {}).unwrap();
        let caller = std::thread::current().id();
        for round in 0..3 {
            // Long enough for the helper to fall asleep in between.
            std::thread::sleep(SPIN * 3);
            let helped = AtomicBool::new(false);
            team.install(|crew| {
                let mut out = vec![0.0; 2];
                split(crew, 2, 1, 1, &mut out, &|_, _| {
                    if std::thread::current().id() != caller {
                        helped.store(true, Ordering::Relaxed);
                    }
                    // Slow enough that the caller cannot take both parts alone.
                    std::thread::sleep(Duration::from_millis(20));
                })
            });
            assert!(helped.load(Ordering::Relaxed), "round {round}");
        }
    }

    #[test]
    fn a_job_published_while_the_helpers_start_still_reaches_them() {
        // Each round publishes a job at once after starting the team, racing its helpers' start.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let team = Team::new(3, "test", || {}).unwrap();
                let parts = ranges(&team, 3, 1).len();
                tx.send(parts).unwrap();
            }
        });
        for round in 0..50 {
            let parts = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("round {round}: the team hung"));
            assert_eq!(parts, 3);
        }
    }

    #[test]
    fn a_panic_in_a_part_reaches_the_caller_and_the_team_survives_it() {
        let team = Team::new(2, "test", || {}).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            team.install(|crew| {
                let mut out = vec![0.0; 4];
                split(crew, 4, 1, 1, &mut out, &|r, _| {
                    if r.start == 0 {
                        panic!("part 0");
                    }
                })
            })
        }));
        let payload = result.expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"part 0"));
        assert_eq!(ranges(&team, 10, 1).len(), 2);
    }
}
