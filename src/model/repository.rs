//! The model repository, Triton style:
//!
//! ```text
//! models/<name>/config.toml          role, feature input, score output, batching
//! models/<name>/<version>/model.onnx  one folder per version, numeric
//! models/<name>/<version>/golden.json optional: vets the version before it serves
//! ```
//!
//! Folders without a `config.toml` (the catalog, the training script) are
//! not models. Every version found is loaded and vetted at start; the
//! highest version that loaded and passed its golden set serves.
//!
//! Lifecycle: [`Registry::reload`] rescans one model's folder, loads, warms
//! up and vets the versions it has not loaded yet, and only then swaps the
//! model's entry in one step; [`Registry::rollback`] serves the previous
//! vetted version again and retires the current one. Requests hold an
//! `Arc` of the version they started with, so a swap never cuts one short.
//!
//! A version serves only once vetted: without a `golden.json` it is refused
//! like one that fails it. The poller ([`Registry::poll`]) looks at a model
//! only when its files have stopped changing (the same sizes and times on
//! two scans in a row), so a version being copied in place is never loaded
//! half-written; a version that failed is tried again only when its files
//! change (a `golden.json` added, a model replaced), so a broken version is
//! logged once per change, not once per scan. A version an experiment arm or
//! a shadow pins (`name@version`) stays loaded when its folder disappears.
//!
//! Quality gate (`models.quality_gate`): a reload whose new version would
//! replace the serving one first compares their ranking quality on the same
//! labelled golden rows (see [`super::quality`]); a candidate worse by more
//! than `models.quality_tolerance` is refused like one that fails vetting,
//! and the next candidate below it, if any, is gated in turn. At start
//! nothing serves yet, so nothing is gated: the highest vetted version
//! serves and every version's quality is recorded. A rollback is the
//! operator's call and is not gated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::backend::{self, Backend, BackendKind, BackendOptions};
use super::golden::{GoldenSet, Vetting};
use super::quality::{self, GateCheck, GateOutcome};
use super::spec::ModelSpec;
use super::ModelError;

/// One loaded version of a model.
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub spec: Arc<ModelSpec>,
    pub backend: Box<dyn Backend>,
    pub vetting: Option<Vetting>,
    /// Recent inference cost per row in nanoseconds (a moving average;
    /// `u64::MAX` until the first call): small calls run inline.
    pub ns_per_row: std::sync::atomic::AtomicU64,
    /// Its inference metric handles, registered on first use.
    pub metrics: std::sync::OnceLock<crate::model::executor::ModelMetrics>,
}

impl LoadedModel {
    pub fn new(
        name: &str,
        version: u64,
        spec: Arc<ModelSpec>,
        backend: Box<dyn Backend>,
        vetting: Option<Vetting>,
    ) -> LoadedModel {
        LoadedModel {
            name: name.to_string(),
            version,
            spec,
            backend,
            vetting,
            ns_per_row: std::sync::atomic::AtomicU64::new(u64::MAX),
            metrics: std::sync::OnceLock::new(),
        }
    }
}

/// A version folder's state after loading.
#[derive(Clone)]
pub enum VersionState {
    Ready(Arc<LoadedModel>),
    /// Failed to load or to pass vetting; never serves. The reason is shown
    /// by the admin API and logged; `files` is the folder's fingerprint when
    /// it failed, so the poller tries again only once the files change.
    Failed {
        reason: String,
        files: u64,
    },
}

/// A model and all of its versions.
pub struct ModelEntry {
    pub name: String,
    pub spec: Arc<ModelSpec>,
    pub backend: BackendKind,
    pub versions: BTreeMap<u64, VersionState>,
    /// The version that answers unversioned requests.
    pub serving: u64,
    /// Versions rolled back from: they stay loaded (and can be called by
    /// version) but a reload does not make them serve again.
    pub retired: BTreeSet<u64>,
}

impl ModelEntry {
    pub fn serving(&self) -> Arc<LoadedModel> {
        match self.versions.get(&self.serving) {
            Some(VersionState::Ready(m)) => m.clone(),
            _ => unreachable!("an entry is only built with a ready serving version"),
        }
    }
}

/// How models are loaded: which backend, where the runtime lives.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub default_backend: BackendKind,
    pub backend_overrides: BTreeMap<String, BackendKind>,
    pub backend: BackendOptions,
    /// The quality gate's tolerance (absolute AUC) when the gate is on.
    pub quality_gate: Option<f64>,
}

/// An extra test every version must pass before it may serve, beyond
/// loading, warm-up and the golden set (the ranking pipeline checks that
/// the declared features exist in the catalog).
pub type VersionCheck = Box<CheckFn>;
pub type CheckFn = dyn Fn(&LoadedModel) -> Result<(), String> + Send + Sync;

/// All models, by name. Readers take a cheap snapshot of an entry; a reload
/// swaps whole entries, so no request sees a half-loaded model.
pub struct Registry {
    root: PathBuf,
    options: LoadOptions,
    check: Option<VersionCheck>,
    models: crate::snapshot::Snapshot<BTreeMap<String, Arc<ModelEntry>>>,
    /// One reload or rollback at a time.
    changing: Mutex<()>,
    /// What the poller saw of each model's files: on the last scan, and
    /// when it last loaded from them.
    scans: Mutex<BTreeMap<String, Scan>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    seen: u64,
    loaded: u64,
    /// `config.toml`'s fingerprint at the last load.
    config: u64,
}

/// Versions that must stay loaded whatever the folder holds, with who pins
/// them (e.g. `experiment arm "b"`).
pub type Pins = BTreeMap<u64, String>;

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub name: String,
    /// Serving before and after.
    pub previous: Option<String>,
    pub serving: String,
    /// Versions loaded (and vetted) by this reload.
    pub loaded: Vec<String>,
    /// Versions that failed to load or vet, with the reason.
    pub failed: Vec<VersionFailure>,
    /// Versions gone from disk that stay loaded, and why.
    pub kept: Vec<VersionKept>,
    /// Quality-gate decisions on candidates to replace the serving version
    /// (a refused one is also in `failed`).
    pub quality_gate: Vec<GateCheck>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionFailure {
    pub version: String,
    pub error: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionKept {
    pub version: String,
    pub reason: String,
}

/// Which failed versions a reload tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Every one (an operator asked, or the model's config.toml changed).
    All,
    /// Only those whose files changed since they failed (the poller).
    Changed,
}

/// Why a reload or rollback changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("model \"{0}\" not found")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn read_text(path: &Path, shown: &str) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::load(shown, e))
}

impl Registry {
    /// Scans `root` and loads every model and version. Any model that has no
    /// version able to serve is an error naming the file and the reason.
    pub fn load(
        root: &Path,
        options: &LoadOptions,
        check: Option<VersionCheck>,
    ) -> Result<Registry, ModelError> {
        let entries =
            std::fs::read_dir(root).map_err(|e| ModelError::load(root.display().to_string(), e))?;
        let mut names: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ModelError::load(root.display().to_string(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join("config.toml").is_file() {
                if !valid_name(&name) {
                    return Err(ModelError::load(
                        name,
                        "model names may use only letters, digits, '_', '-' and '.'",
                    ));
                }
                names.push(name);
            }
        }
        names.sort();
        for name in options.backend_overrides.keys() {
            if !names.contains(name) {
                return Err(ModelError::load(
                    format!("models.overrides.{name}"),
                    "no such model in the repository",
                ));
            }
        }
        let mut models = BTreeMap::new();
        let mut scans = BTreeMap::new();
        for name in names {
            let files = model_fingerprint(&root.join(&name));
            let (entry, _) = load_model(
                root,
                &name,
                options,
                check.as_deref(),
                None,
                Retry::All,
                &Pins::new(),
            )?;
            models.insert(name.clone(), Arc::new(entry));
            scans.insert(
                name.clone(),
                Scan {
                    seen: files,
                    loaded: files,
                    config: config_fingerprint(&root.join(&name)),
                },
            );
        }
        Ok(Registry {
            root: root.to_path_buf(),
            options: options.clone(),
            check,
            models: crate::snapshot::Snapshot::new(models),
            changing: Mutex::new(()),
            scans: Mutex::new(scans),
        })
    }

    /// The poller's rescan of `name`: `None` when there is nothing to do —
    /// its files are unchanged since the last load, or still changing since
    /// the last scan (a version being written). Otherwise a reload that
    /// retries failed versions only if their files changed.
    pub fn poll(&self, name: &str, pins: &Pins) -> Option<Result<ReloadReport, LifecycleError>> {
        if !valid_name(name) {
            return None;
        }
        let dir = self.root.join(name);
        let files = model_fingerprint(&dir);
        let (retry, config) = {
            let mut scans = self.scans.lock().unwrap_or_else(|e| e.into_inner());
            let scan = scans.entry(name.to_string()).or_default();
            let stable = scan.seen == files;
            scan.seen = files;
            if !stable || scan.loaded == files {
                return None;
            }
            let config = config_fingerprint(&dir);
            let retry = if config == scan.config {
                Retry::Changed
            } else {
                Retry::All
            };
            (retry, config)
        };
        let result = self.reload_with(name, retry, pins);
        let mut scans = self.scans.lock().unwrap_or_else(|e| e.into_inner());
        let scan = scans.entry(name.to_string()).or_default();
        scan.loaded = files;
        scan.config = config;
        Some(result)
    }

    /// Rescans `name`'s folder (a model new since start included) and loads
    /// the versions not loaded yet, or that failed before. The highest
    /// version that is ready and not retired then serves; every version that
    /// fails leaves what serves untouched. Blocking: loads run here.
    /// `pins` are versions that must stay loaded even if their folder is
    /// gone (an experiment arm or a shadow uses them).
    pub fn reload(&self, name: &str, pins: &Pins) -> Result<ReloadReport, LifecycleError> {
        // A name that cannot be a model folder never reaches the file
        // system (`..`, `a/b`, hidden folders).
        if !valid_name(name) {
            return Err(LifecycleError::NotFound(name.to_string()));
        }
        let dir = self.root.join(name);
        let (files, config) = (model_fingerprint(&dir), config_fingerprint(&dir));
        let result = self.reload_with(name, Retry::All, pins);
        let mut scans = self.scans.lock().unwrap_or_else(|e| e.into_inner());
        let scan = scans.entry(name.to_string()).or_default();
        *scan = Scan {
            seen: files,
            loaded: files,
            config,
        };
        result
    }

    fn reload_with(
        &self,
        name: &str,
        retry: Retry,
        pins: &Pins,
    ) -> Result<ReloadReport, LifecycleError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.entry(name).ok();
        if current.is_none()
            && !(valid_name(name) && self.root.join(name).join("config.toml").is_file())
        {
            return Err(LifecycleError::NotFound(name.to_string()));
        }
        let (entry, report) = load_model(
            &self.root,
            name,
            &self.options,
            self.check.as_deref(),
            current.as_deref(),
            retry,
            pins,
        )
        .map_err(|e| LifecycleError::Refused(e.to_string()))?;
        if report.previous.as_deref() != Some(report.serving.as_str()) {
            tracing::info!(model = name, from = ?report.previous, to = %report.serving, "serving version changed");
        }
        self.swap(entry);
        Ok(report)
    }

    /// Serves the highest ready version below the serving one, and retires
    /// the serving one so that a reload does not bring it back.
    pub fn rollback(&self, name: &str) -> Result<ReloadReport, LifecycleError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self
            .entry(name)
            .map_err(|_| LifecycleError::NotFound(name.to_string()))?;
        let previous = current
            .versions
            .range(..current.serving)
            .rev()
            .find(|(v, s)| matches!(s, VersionState::Ready(_)) && !current.retired.contains(v))
            .map(|(v, _)| *v)
            .ok_or_else(|| {
                LifecycleError::Refused(format!(
                    "model \"{name}\" has no vetted version below {} to roll back to",
                    current.serving
                ))
            })?;
        let mut retired = current.retired.clone();
        retired.insert(current.serving);
        let entry = ModelEntry {
            name: current.name.clone(),
            spec: current.spec.clone(),
            backend: current.backend,
            versions: current
                .versions
                .iter()
                .map(|(v, s)| (*v, s.clone()))
                .collect(),
            serving: previous,
            retired,
        };
        tracing::warn!(
            model = name,
            from = current.serving,
            to = previous,
            "rolled back"
        );
        let report = ReloadReport {
            name: name.to_string(),
            previous: Some(current.serving.to_string()),
            serving: previous.to_string(),
            loaded: Vec::new(),
            failed: Vec::new(),
            kept: Vec::new(),
            quality_gate: Vec::new(),
        };
        self.swap(entry);
        Ok(report)
    }

    fn swap(&self, entry: ModelEntry) {
        self.models
            .update(|m| m.insert(entry.name.clone(), Arc::new(entry)));
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Snapshot of every entry, in name order.
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.models.load().values().cloned().collect()
    }

    pub fn entry(&self, name: &str) -> Result<Arc<ModelEntry>, ModelError> {
        self.models
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::NotFound(name.to_string()))
    }

    /// The serving version of `name`, or the given version if it is ready.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ModelError> {
        let version = match version {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ModelError::VersionNotFound {
                name: name.to_string(),
                version: v.to_string(),
            })?),
        };
        self.get_version(name, version)
    }

    /// [`Registry::get`] with the version as a number (a parsed reference).
    pub fn get_version(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        let models = self.models.load();
        let entry = models
            .get(name)
            .ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        let Some(v) = version else {
            return Ok(entry.serving());
        };
        match entry.versions.get(&v) {
            Some(VersionState::Ready(m)) => Ok(m.clone()),
            _ => Err(ModelError::VersionNotFound {
                name: name.to_string(),
                version: v.to_string(),
            }),
        }
    }
}

/// Loads `name`'s versions. With `current` (a reload), versions it already
/// has ready are kept as they are and only the others are (re)loaded; with
/// [`Retry::Changed`], a failed version whose files are as they were when it
/// failed stays failed without another attempt (or another log line).
fn load_model(
    root: &Path,
    name: &str,
    options: &LoadOptions,
    check: Option<&CheckFn>,
    current: Option<&ModelEntry>,
    retry: Retry,
    pins: &Pins,
) -> Result<(ModelEntry, ReloadReport), ModelError> {
    let dir = root.join(name);
    let config_shown = format!("{name}/config.toml");
    let spec = Arc::new(ModelSpec::parse(
        &read_text(&dir.join("config.toml"), &config_shown)?,
        &config_shown,
    )?);
    let kind = options
        .backend_overrides
        .get(name)
        .copied()
        .unwrap_or(options.default_backend);

    let mut version_numbers = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| ModelError::load(name, e))? {
        let entry = entry.map_err(|e| ModelError::load(name, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            match file_name.parse::<u64>() {
                Ok(v) if v > 0 => version_numbers.push(v),
                _ => tracing::debug!(model = name, folder = file_name, "not a version folder"),
            }
        }
    }
    version_numbers.sort_unstable();
    if version_numbers.is_empty() {
        return Err(ModelError::load(
            name,
            "no version folders (expected e.g. 1/model.onnx)",
        ));
    }

    let mut versions = BTreeMap::new();
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    let mut last_error = None;
    for &v in &version_numbers {
        let files = fingerprint(&dir.join(v.to_string()));
        match current.and_then(|c| c.versions.get(&v)) {
            Some(VersionState::Ready(m)) => {
                versions.insert(v, VersionState::Ready(m.clone()));
                continue;
            }
            Some(failed @ VersionState::Failed { files: then, .. })
                if retry == Retry::Changed && *then == files =>
            {
                versions.insert(v, failed.clone());
                continue;
            }
            _ => {}
        }
        let outcome = load_version(&dir, name, v, &spec, kind, &options.backend).and_then(|m| {
            match check.map_or(Ok(()), |check| check(&m)) {
                Ok(()) => Ok(m),
                Err(reason) => Err(ModelError::load(format!("{name}/{v}"), reason)),
            }
        });
        match outcome {
            Ok(model) => {
                tracing::info!(model = name, version = v, backend = %kind, "model version ready");
                versions.insert(v, VersionState::Ready(Arc::new(model)));
                loaded.push(v.to_string());
            }
            Err(e) => {
                record_load(name, false);
                tracing::error!(model = name, version = v, error = %e, "model version will not serve");
                versions.insert(
                    v,
                    VersionState::Failed {
                        reason: e.to_string(),
                        files,
                    },
                );
                failed.push(VersionFailure {
                    version: v.to_string(),
                    error: e.to_string(),
                });
                last_error = Some(e);
            }
        }
    }
    // A ready version that vanished from disk stays while it serves or
    // while an arm or a shadow pins it; the report says which and why.
    let mut kept = Vec::new();
    if let Some(current) = current {
        for (v, state) in &current.versions {
            if versions.contains_key(v) || !matches!(state, VersionState::Ready(_)) {
                continue;
            }
            let reason = if *v == current.serving {
                "it serves; its folder is gone".to_string()
            } else if let Some(who) = pins.get(v) {
                format!("{who} pins it; its folder is gone")
            } else {
                continue;
            };
            tracing::warn!(model = name, version = v, reason = %reason, "version kept loaded");
            versions.insert(*v, state.clone());
            kept.push(VersionKept {
                version: v.to_string(),
                reason,
            });
        }
    }
    let retired = current.map(|c| c.retired.clone()).unwrap_or_default();
    let quality_gate = match (current, options.quality_gate) {
        (Some(current), Some(tolerance)) => {
            let (checks, refused) = gate(&dir, name, current, &mut versions, &retired, tolerance);
            for f in refused {
                loaded.retain(|v| *v != f.version);
                failed.push(f);
            }
            checks
        }
        _ => Vec::new(),
    };
    for _ in &loaded {
        record_load(name, true);
    }
    let serving = next_serving(&versions, &retired).or(current.map(|c| c.serving));
    let Some(serving) = serving else {
        return Err(last_error.expect("at least one version failed"));
    };
    let report = ReloadReport {
        name: name.to_string(),
        previous: current.map(|c| c.serving.to_string()),
        serving: serving.to_string(),
        loaded,
        failed,
        kept,
        quality_gate,
    };
    let entry = ModelEntry {
        name: name.to_string(),
        spec,
        backend: kind,
        versions,
        serving,
        retired,
    };
    Ok((entry, report))
}

/// The highest ready version that is not retired: the one that serves.
fn next_serving(versions: &BTreeMap<u64, VersionState>, retired: &BTreeSet<u64>) -> Option<u64> {
    versions
        .iter()
        .rev()
        .find(|(v, s)| matches!(s, VersionState::Ready(_)) && !retired.contains(v))
        .map(|(v, _)| *v)
}

/// The quality gate: while the version that would serve next is not the
/// one serving now, it is gated against it; a refused one becomes a failed
/// version (retried only when its files change, or on an operator's
/// reload) and the next candidate is gated in turn.
fn gate(
    dir: &Path,
    name: &str,
    current: &ModelEntry,
    versions: &mut BTreeMap<u64, VersionState>,
    retired: &BTreeSet<u64>,
    tolerance: f64,
) -> (Vec<GateCheck>, Vec<VersionFailure>) {
    let serving = current.serving();
    let (mut checks, mut refused) = (Vec::new(), Vec::new());
    while let Some(v) = next_serving(versions, retired).filter(|v| *v != current.serving) {
        let Some(VersionState::Ready(candidate)) = versions.get(&v) else {
            break;
        };
        let check = quality::gate(&serving, candidate, tolerance);
        let passed = check.outcome != GateOutcome::Refused;
        if passed {
            tracing::info!(model = name, version = v, detail = %check.detail, "quality gate");
        } else {
            tracing::error!(model = name, version = v, detail = %check.detail, "quality gate refused the version");
            let reason =
                ModelError::load(format!("{name}/{v}/golden.json"), &check.detail).to_string();
            versions.insert(
                v,
                VersionState::Failed {
                    reason: reason.clone(),
                    files: fingerprint(&dir.join(v.to_string())),
                },
            );
            record_load(name, false);
            refused.push(VersionFailure {
                version: v.to_string(),
                error: reason,
            });
        }
        checks.push(check);
        if passed {
            break;
        }
    }
    (checks, refused)
}

fn record_load(name: &str, ok: bool) {
    let outcome = if ok { "ready" } else { "failed" };
    metrics::counter!(crate::telemetry::metrics::MODEL_LOADS_TOTAL, "name" => name.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Loads, checks, warms up and vets one version.
fn load_version(
    dir: &Path,
    name: &str,
    version: u64,
    spec: &Arc<ModelSpec>,
    kind: BackendKind,
    options: &BackendOptions,
) -> Result<LoadedModel, ModelError> {
    let vdir = dir.join(version.to_string());
    let file = vdir.join("model.onnx");
    let shown = format!("{name}/{version}/model.onnx");
    if !file.is_file() {
        return Err(ModelError::load(shown, "file not found"));
    }
    let backend = backend::load(kind, &file, &shown, options)?;
    spec.check_signature(
        backend.inputs(),
        backend.outputs(),
        &format!("{name}/config.toml"),
    )?;
    warm_up(backend.as_ref()).map_err(|e| ModelError::load(&shown, format!("warm-up: {e}")))?;

    // No golden set, no serving: a version is vetted or it is refused.
    let golden_file = vdir.join("golden.json");
    let golden_shown = format!("{name}/{version}/golden.json");
    if !golden_file.is_file() {
        return Err(ModelError::load(
            golden_shown,
            "no golden set: a version serves only after it is vetted on its golden.json",
        ));
    }
    let golden = GoldenSet::parse(&read_text(&golden_file, &golden_shown)?, &golden_shown)?;
    let vetting = golden.vet(spec, backend.as_ref());
    if !vetting.passed {
        return Err(ModelError::load(
            golden_shown,
            format!("vetting failed: {}", vetting.detail),
        ));
    }
    Ok(LoadedModel::new(
        name,
        version,
        spec.clone(),
        backend,
        Some(vetting),
    ))
}

/// A fingerprint of a folder's files (names, sizes, modification times):
/// equal on two scans means nothing was written in between.
fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<(String, u64, u128)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        meta.len(),
                        modified,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

/// The fingerprint of a model folder: its own entries and every version
/// folder's files.
fn model_fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fingerprint(dir).hash(&mut h);
    let mut versions: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<u64>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    for v in versions {
        v.hash(&mut h);
        fingerprint(&dir.join(&v)).hash(&mut h);
    }
    h.finish()
}

/// The fingerprint of a model's `config.toml` alone.
fn config_fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(dir.join("config.toml"))
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// One inference on a single all-zero row, so the first real request does
/// not pay for lazy initialisation and a model that cannot run is caught
/// at load time.
fn warm_up(backend: &dyn Backend) -> Result<(), ModelError> {
    let inputs = backend
        .inputs()
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec.shape.iter().map(|d| d.unwrap_or(1)).collect();
            let n: usize = shape.iter().product();
            let zeros = vec![0u8; n * spec.datatype.size_bytes()];
            super::Tensor::new(
                &spec.name,
                shape,
                super::TensorData::from_le_bytes(spec.datatype, &zeros),
            )
        })
        .collect();
    backend.run(inputs).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that cannot be a model folder is refused before anything
    /// under (or above) the repository is listed, read or remembered.
    #[test]
    fn a_hostile_name_never_reaches_the_file_system() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("models");
        std::fs::create_dir(&repo).unwrap();
        // What `models/../config.toml` would open.
        std::fs::write(root.path().join("config.toml"), "role = \"ranker\"").unwrap();
        let options = LoadOptions {
            default_backend: BackendKind::Tract,
            backend_overrides: BTreeMap::new(),
            backend: Default::default(),
            quality_gate: None,
        };
        let registry = Registry::load(&repo, &options, None).unwrap();
        for name in ["..", ".hidden", "a/b", ""] {
            assert!(
                matches!(
                    registry.reload(name, &Pins::new()),
                    Err(LifecycleError::NotFound(_))
                ),
                "{name}"
            );
            assert!(registry.poll(name, &Pins::new()).is_none(), "{name}");
        }
        let scans = registry.scans.lock().unwrap();
        assert!(scans.is_empty(), "nothing was scanned: {:?}", scans.keys());
    }
}
