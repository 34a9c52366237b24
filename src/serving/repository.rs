//! The live model repository: loads, replaces and unloads variants while the service runs.
//!
//! A change is prepared beside what is served (the file read, checked, imported and warmed up
//! through the real queues) and then installed as one new [`Snapshot`]: a request sees the old
//! set or the new one, never half of each. A replaced or unloaded load is retired: requests
//! that chose it before the swap still run on it, and its memory goes with the last of them.
//! A load that fails changes nothing that is served; it says why in the log, in the index and
//! in `mobilenet_model_loads_total`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::batcher::{Batcher, Job};
use super::config::{ControlMode, WARM_UP_DEADLINE, WARM_UP_RUNS};
use super::memory::release_free_memory;
use super::metrics::Metrics;
use super::registry::{publish, unpublish, Registry, Served, Snapshot, UNLOADED};
use crate::engine::pool::{LoadOptions, ModelSource, Unavailable, Variant};
use crate::engine::repository::{fingerprint, load_variant, Catalogue, FileStamp, Fingerprint};
use crate::error::{Error, Result};

/// A variant's state in the repository index (the Open Inference Protocol's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// Served.
    Ready,
    /// Being loaded (its previous load, if any, still answers).
    Loading,
    /// Not served: see the reason.
    Unavailable,
}

impl ModelState {
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Loading => "LOADING",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One variant of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Variant name.
    pub name: String,
    /// Its state.
    pub state: ModelState,
    /// Why it is not served (empty when it is).
    pub reason: String,
}

/// What a rescan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescan {
    /// Variants loaded or replaced.
    pub loaded: Vec<String>,
    /// Variants unloaded because the catalogue no longer has them.
    pub unloaded: Vec<String>,
    /// Variants whose load failed, and why.
    pub failed: Vec<(String, String)>,
}

/// The repository's state and the parts a change touches.
#[derive(Debug)]
pub struct Repository {
    mode: ControlMode,
    opts: LoadOptions,
    registry: Arc<Registry>,
    batcher: Arc<Batcher<Served>>,
    metrics: Arc<Metrics>,
    /// One change at a time; holds the fingerprint of the directory as last scanned.
    changing: tokio::sync::Mutex<Option<Fingerprint>>,
    /// The catalogue as last scanned (what the index lists besides what is served).
    catalogue: Mutex<Catalogue>,
    /// Variants being loaded now.
    loading: Mutex<BTreeSet<String>>,
    /// Why the last load of a variant failed, until one succeeds or it is unloaded: shown in
    /// the index even while its previous load serves.
    failures: Mutex<HashMap<String, String>>,
}

impl Repository {
    /// The repository of `registry`'s models directory, loading with `opts`.
    pub fn new(
        mode: ControlMode,
        opts: LoadOptions,
        registry: Arc<Registry>,
        batcher: Arc<Batcher<Served>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Repository {
            mode,
            opts,
            registry,
            batcher,
            metrics,
            changing: tokio::sync::Mutex::new(None),
            catalogue: Mutex::new(Catalogue::default()),
            loading: Mutex::new(BTreeSet::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Who changes what is served.
    pub fn mode(&self) -> ControlMode {
        self.mode
    }

    /// Every variant known: served, failed, unloaded, being loaded, or (in `explicit` mode)
    /// offered by the directory and never loaded. `ready_only` keeps the served ones.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let snapshot = self.registry.snapshot();
        let loading = lock(&self.loading).clone();
        let failures = lock(&self.failures).clone();
        let mut names: Vec<String> = snapshot.names().map(str::to_string).collect();
        let mut add = |name: &str| {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        };
        snapshot.unavailable.iter().for_each(|u| add(&u.name));
        let catalogue = lock(&self.catalogue);
        catalogue.specs.iter().for_each(|s| add(&s.name));
        catalogue.unavailable.iter().for_each(|u| add(&u.name));
        loading.iter().for_each(|n| add(n));
        drop(catalogue);
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let (state, reason) = if loading.contains(&name) {
                    (ModelState::Loading, String::new())
                } else if snapshot.get(&name).is_some() {
                    let reason = failures.get(&name).map_or(String::new(), |why| {
                        format!("serving the previous load: the new one failed: {why}")
                    });
                    (ModelState::Ready, reason)
                } else {
                    let reason = snapshot
                        .unavailable
                        .iter()
                        .find(|u| u.name == name)
                        .map_or(UNLOADED.to_string(), |u| u.error.clone());
                    (ModelState::Unavailable, reason)
                };
                IndexEntry {
                    name,
                    state,
                    reason,
                }
            })
            .filter(|e| !ready_only || e.state == ModelState::Ready)
            .collect()
    }

    /// Reads the catalogue for the index (at start, in `explicit` and `poll` modes).
    pub async fn scan_catalogue(&self) -> Result<()> {
        if self.mode == ControlMode::None {
            return Ok(());
        }
        let catalogue = self.scan().await?;
        *lock(&self.catalogue) = catalogue;
        Ok(())
    }

    /// Loads (or reloads) variant `name` from the models directory: `explicit` mode only. The
    /// old load, if any, answers until the new one is warmed up; if the new one fails, the old
    /// one stays and the error says why.
    pub async fn load(&self, name: &str) -> Result<()> {
        self.check_explicit("load", name)?;
        let _changing = self.changing.lock().await;
        let catalogue = self.scan().await?;
        *lock(&self.catalogue) = catalogue.clone();
        let Some(spec) = catalogue.spec(name).cloned() else {
            let why = catalogue.unavailable.iter().find(|u| u.name == name);
            return Err(match why {
                Some(u) => self.failed(name, &u.error, Duration::ZERO),
                None => Error::NotFound(format!(
                    "model `{name}` is not in the models directory `{}`",
                    self.registry.dir().display()
                )),
            });
        };
        let snapshot = self.registry.snapshot();
        match self.prepare(&snapshot, name, spec).await {
            Ok(Some(served)) => {
                self.install(&snapshot, vec![served], &[], &[]);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if snapshot.get(name).is_none() {
                    let file = catalogue.spec(name).map(|s| s.file.clone());
                    self.install(
                        &snapshot,
                        Vec::new(),
                        &[],
                        &[unavailable(name, file, &e.to_string())],
                    );
                }
                Err(e)
            }
        }
    }

    /// Stops serving variant `name`: `explicit` mode only. Requests already queued on it are
    /// answered; new ones get the not-found error of an unloaded model. Unloading a variant
    /// that is not served does nothing.
    pub async fn unload(&self, name: &str) -> Result<()> {
        self.check_explicit("unload", name)?;
        let _changing = self.changing.lock().await;
        let snapshot = self.registry.snapshot();
        let Some(served) = snapshot.get(name) else {
            let known = snapshot.unavailable.iter().any(|u| u.name == name)
                || lock(&self.catalogue).knows(name);
            return if known {
                Ok(())
            } else {
                Err(Error::NotFound(format!("model `{name}` is not known")))
            };
        };
        if served.variant().source == ModelSource::Embedded {
            // Nothing could load it back.
            return Err(Error::BadRequest(format!(
                "model `{name}` is the embedded default model: it cannot be unloaded"
            )));
        }
        let gone = unavailable(name, Some(served.variant().spec.file.clone()), UNLOADED);
        lock(&self.failures).remove(name);
        self.install(&snapshot, Vec::new(), &[name.to_string()], &[gone]);
        self.metrics
            .loads
            .with_label_values(&[name, "unloaded"])
            .inc();
        tracing::info!(variant = %name, "unloaded");
        Ok(())
    }

    /// Brings what is served in line with the models directory: `poll` mode. Unless `force`
    /// (SIGHUP), does nothing when no file of the directory changed since the last scan (one
    /// `stat` per file). New and changed variants (a new file, a new digest or manifest entry)
    /// are loaded beside the old, and all changes installed at once; variants gone from the
    /// directory are unloaded. A failed load keeps its old one serving.
    pub async fn rescan(&self, force: bool) -> Result<Rescan> {
        let mut changing = self.changing.lock().await;
        let dir = self.registry.dir().to_path_buf();
        let seen = tokio::task::spawn_blocking(move || fingerprint(&dir))
            .await
            .map_err(|e| Error::Internal(format!("scanning the models directory: {e}")))?;
        if !force && changing.as_ref() == Some(&seen) {
            return Ok(Rescan::default());
        }
        let catalogue = self.scan().await?;
        *lock(&self.catalogue) = catalogue.clone();
        let wanted = |name: &str| {
            self.opts
                .variants
                .as_ref()
                .is_none_or(|w| w.iter().any(|n| n == name))
        };
        let snapshot = self.registry.snapshot();
        let mut report = Rescan::default();
        let mut added = Vec::new();
        let mut failures = Vec::new();
        for spec in catalogue.specs.iter().filter(|s| wanted(&s.name)) {
            let current = snapshot.get(&spec.name);
            let unchanged = current.is_some_and(|c| {
                c.variant().spec == *spec
                    && c.stamp().is_some()
                    && c.stamp() == FileStamp::of(&self.registry.dir().join(&spec.file))
            });
            if unchanged {
                continue;
            }
            match self.prepare(&snapshot, &spec.name, spec.clone()).await {
                Ok(Some(served)) => {
                    report.loaded.push(spec.name.clone());
                    added.push(served);
                }
                Ok(None) => {}
                Err(e) => {
                    report.failed.push((spec.name.clone(), e.to_string()));
                    if current.is_none() {
                        failures.push(unavailable(
                            &spec.name,
                            Some(spec.file.clone()),
                            &e.to_string(),
                        ));
                    }
                }
            }
        }
        for u in catalogue.unavailable.iter().filter(|u| wanted(&u.name)) {
            if snapshot.get(&u.name).is_none() {
                failures.push(u.clone());
            }
        }
        for s in &snapshot.served {
            let file = s.variant().source == ModelSource::File;
            if file && catalogue.spec(s.name()).is_none_or(|_| !wanted(s.name())) {
                report.unloaded.push(s.name().to_string());
            }
        }
        self.install(&snapshot, added, &report.unloaded, &failures);
        for name in &report.unloaded {
            self.metrics
                .loads
                .with_label_values(&[name, "unloaded"])
                .inc();
            tracing::info!(variant = %name, "unloaded: no longer in the models directory");
        }
        *changing = Some(seen);
        Ok(report)
    }

    /// Refuses a load or unload outside `explicit` mode: with the not-found error for a name
    /// the server does not know, so that the answer is the same whatever the mode.
    fn check_explicit(&self, what: &str, name: &str) -> Result<()> {
        let snapshot = self.registry.snapshot();
        let known = snapshot.get(name).is_some()
            || snapshot.unavailable.iter().any(|u| u.name == name)
            || lock(&self.catalogue).knows(name);
        if self.mode == ControlMode::Explicit {
            Ok(())
        } else if !known {
            Err(Error::NotFound(format!("model `{name}` is not known")))
        } else {
            Err(Error::BadRequest(format!(
                "explicit model {what} is not allowed: the server's model control mode is `{}` \
                 (start it with --model-control-mode explicit)",
                self.mode.as_str()
            )))
        }
    }

    async fn scan(&self) -> Result<Catalogue> {
        let dir = self.registry.dir().to_path_buf();
        let opts = self.opts.clone();
        tokio::task::spawn_blocking(move || Catalogue::scan(&dir, &opts))
            .await
            .map_err(|e| Error::Internal(format!("scanning the models directory: {e}")))?
    }

    /// Loads and warms up `spec` beside what `snapshot` serves: `None` when the served load of
    /// that name already has these bytes and this manifest entry.
    async fn prepare(
        &self,
        snapshot: &Snapshot,
        name: &str,
        spec: crate::engine::catalog::VariantSpec,
    ) -> Result<Option<Arc<Served>>> {
        let started = Instant::now();
        let _loading = Loading::start(&self.loading, name);
        let dir = self.registry.dir().to_path_buf();
        let opts = self.opts.clone();
        let in_memory: Vec<Variant> = snapshot
            .served
            .iter()
            .map(|s| s.variant().clone())
            .collect();
        let loaded = tokio::task::spawn_blocking(move || {
            let refs: Vec<&Variant> = in_memory.iter().collect();
            let loaded = load_variant(&dir, &spec, &opts, &refs);
            // The file's bytes and the importer's temporaries are freed by now.
            release_free_memory();
            loaded
        })
        .await
        .map_err(|e| Error::Internal(format!("loading `{name}`: {e}")))?;
        let (variant, stamp) = match loaded {
            Ok(l) => l,
            Err(e) => return Err(self.failed(name, &e.to_string(), started.elapsed())),
        };
        if let Some(current) = snapshot.get(name) {
            if current.variant().sha256 == variant.sha256 && current.variant().spec == variant.spec
            {
                lock(&self.failures).remove(name);
                return Ok(None);
            }
        }
        let measured = self.registry.read_measured()?;
        let served = self.registry.serve(variant, stamp, measured.as_ref())?;
        if let Err(e) = warm_up(&self.batcher, &served).await {
            // Its queue may hold nothing more: no request can find it.
            served.retire();
            self.batcher.retire(&served);
            return Err(self.failed(name, &e.to_string(), started.elapsed()));
        }
        let took = started.elapsed();
        lock(&self.failures).remove(name);
        self.metrics
            .loads
            .with_label_values(&[name, "loaded"])
            .inc();
        self.metrics
            .load_duration
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
        tracing::info!(variant = %name, sha256 = %served.variant().sha256,
            ms = took.as_secs_f64() * 1e3, "loaded");
        Ok(Some(served))
    }

    /// Counts and logs a failed load of `name`, and remembers why for the index; the error to
    /// return.
    fn failed(&self, name: &str, why: &str, took: Duration) -> Error {
        self.metrics
            .loads
            .with_label_values(&[name, "failed"])
            .inc();
        if !took.is_zero() {
            self.metrics
                .load_duration
                .with_label_values(&[name])
                .observe(took.as_secs_f64());
        }
        tracing::warn!(variant = %name, error = %why, "load failed: what was served stays");
        lock(&self.failures).insert(name.to_string(), why.to_string());
        // A 4xx, as Triton answers: the directory's file is what the operator must fix.
        Error::BadRequest(format!("failed to load `{name}`: {why}"))
    }

    /// Installs `snapshot` with `added` (replacing loads of the same names), without
    /// `removed`, and with `failed` listed; retires what left.
    fn install(
        &self,
        snapshot: &Snapshot,
        added: Vec<Arc<Served>>,
        removed: &[String],
        failed: &[Unavailable],
    ) {
        let catalogue = lock(&self.catalogue).clone();
        let mut served: Vec<Arc<Served>> = snapshot
            .served
            .iter()
            .filter(|s| !removed.iter().any(|r| r == s.name()))
            .filter(|s| !added.iter().any(|a| a.name() == s.name()))
            .cloned()
            .collect();
        served.extend(added);
        // Catalogue order; what the catalogue does not have (the embedded model) last.
        let order = |s: &Arc<Served>| {
            catalogue
                .specs
                .iter()
                .position(|c| c.name == s.name())
                .unwrap_or(usize::MAX)
        };
        served.sort_by_key(order);
        let mut not_served: Vec<Unavailable> = snapshot
            .unavailable
            .iter()
            .filter(|u| !served.iter().any(|s| s.name() == u.name))
            .filter(|u| !failed.iter().any(|f| f.name == u.name))
            .cloned()
            .collect();
        not_served.extend(failed.iter().cloned());
        let retired = self.registry.install(served, not_served);
        for old in &retired {
            old.retire();
            self.batcher.retire(old);
            unpublish(old, &self.metrics);
        }
        publish(&self.registry.snapshot(), &self.metrics);
    }
}

/// Runs `served` a few times through the real queue and engine threads, so that its weights are
/// paged in and the router has its latency before any request can choose it.
pub async fn warm_up(batcher: &Batcher<Served>, served: &Arc<Served>) -> Result<Duration> {
    let mut last = Duration::ZERO;
    for _ in 0..WARM_UP_RUNS {
        let deadline = Instant::now() + WARM_UP_DEADLINE;
        // Traffic may already fill the queue: wait for room rather than fail.
        let out = loop {
            let (job, rx) = Job::new(vec![0.0; served.variant().input_len()], deadline);
            match batcher.submit(served, vec![job]) {
                Ok(()) => {
                    break rx.await.map_err(|_| {
                        Error::Internal("the engine stopped during warm-up".into())
                    })??
                }
                Err(Error::QueueFull { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => return Err(e),
            }
        };
        last = out.inference;
    }
    served.latency().seed_batch(last);
    Ok(last)
}

/// Marks a variant as loading while it lives.
struct Loading<'a> {
    set: &'a Mutex<BTreeSet<String>>,
    name: String,
}

impl<'a> Loading<'a> {
    fn start(set: &'a Mutex<BTreeSet<String>>, name: &str) -> Self {
        lock(set).insert(name.to_string());
        Loading {
            set,
            name: name.to_string(),
        }
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.name);
    }
}

fn unavailable(name: &str, file: Option<PathBuf>, why: &str) -> Unavailable {
    Unavailable {
        name: name.to_string(),
        file: file.unwrap_or_default(),
        error: why.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain collections stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
