//! Stage models: every model version a stage uses, prepared once (its
//! features compiled against the catalog, its drift profile read), and the
//! re-ranker's batcher of each version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::experiments::ModelRef;
use super::stages::{Compiled, StageModel};
use super::Pipeline;
use crate::catalog::Catalog;
use crate::model::batcher::{BatchPolicy, Batcher};
use crate::model::{LoadedModel, Registry};
use crate::telemetry::drift::MonitoringConfig;

/// Every model version's [`Compiled`] part, made by the registry's version
/// check while the version loads (off any request), and taken by the
/// pipeline when a stage first uses the version.
pub struct Precompiled {
    catalog: Arc<Catalog>,
    repository: PathBuf,
    monitoring: MonitoringConfig,
    ready: Mutex<HashMap<(String, u64), Compiled>>,
}

impl Precompiled {
    pub fn new(
        catalog: Arc<Catalog>,
        repository: &Path,
        monitoring: &MonitoringConfig,
    ) -> Arc<Precompiled> {
        Arc::new(Precompiled {
            catalog,
            repository: repository.to_path_buf(),
            monitoring: monitoring.clone(),
            ready: Mutex::new(HashMap::new()),
        })
    }

    /// The registry's check of a loading version: a model that declares
    /// input features must have every one of them in the catalog (else it
    /// is refused, naming the feature); the compiled form is kept.
    pub fn check(&self, model: &LoadedModel) -> Result<(), String> {
        if model.spec.input.is_none() {
            return Ok(());
        }
        let compiled = self.compile(model).map_err(|e| format!("features: {e}"))?;
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((model.name.clone(), model.version), compiled);
        Ok(())
    }

    fn compile(&self, model: &LoadedModel) -> Result<Compiled, String> {
        let profile = std::fs::read_to_string(
            self.repository
                .join(&model.name)
                .join(model.version.to_string())
                .join("profile.json"),
        )
        .ok();
        Compiled::new(model, &self.catalog, profile.as_deref(), &self.monitoring)
    }

    /// The compiled part of `model`: the one its check made, or made now.
    fn take(&self, model: &LoadedModel) -> Result<Compiled, String> {
        let kept = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(model.name.clone(), model.version));
        kept.map_or_else(|| self.compile(model), Ok)
    }
}

impl Pipeline {
    /// The prepared form of `model` (from what its version check compiled).
    pub(super) fn prepared(&self, model: Arc<LoadedModel>) -> Result<Arc<StageModel>, String> {
        if let Some(p) = self
            .prepared
            .load()
            .get(model.name.as_str())
            .and_then(|versions| versions.get(&model.version))
        {
            return Ok(p.clone());
        }
        let (name, version) = (model.name.clone(), model.version);
        // Built before the writers' turn: a concurrent first use of the
        // same version may build it twice; the first one published stays.
        let compiled = self.precompiled.take(&model)?;
        let prepared = Arc::new(StageModel::from_compiled(model, compiled)?);
        Ok(self.prepared.update(|all| {
            all.entry(name)
                .or_default()
                .entry(version)
                .or_insert(prepared)
                .clone()
        }))
    }

    /// The version `r` names (or the serving one), prepared for a stage.
    pub(super) fn resolve(
        &self,
        registry: &Registry,
        r: &ModelRef,
    ) -> Result<Arc<StageModel>, String> {
        let loaded = registry
            .get_version(&r.name, r.version)
            .map_err(|e| e.to_string())?;
        self.prepared(loaded)
    }

    /// Whether `r` can serve a stage now.
    pub fn check_model(&self, registry: &Registry, r: &ModelRef) -> Result<(), String> {
        self.resolve(registry, r).map(|_| ())
    }

    /// Prepares every ready version of every model the pipeline may use, so
    /// that requests after a reload do not pay for it.
    pub fn prepare_versions(&self, registry: &Registry, name: &str) {
        let Ok(entry) = registry.entry(name) else {
            return;
        };
        // Prepared versions no longer loaded go (requests in flight keep
        // theirs alive until they finish).
        let gone = |versions: Option<&HashMap<u64, Arc<StageModel>>>| {
            versions.is_some_and(|v| v.keys().any(|v| !entry.versions.contains_key(v)))
        };
        if gone(self.prepared.load().get(name)) {
            self.prepared.update(|all| {
                if let Some(versions) = all.get_mut(name) {
                    versions.retain(|v, _| entry.versions.contains_key(v));
                }
            });
        }
        // Batchers of versions no longer loaded stop once their last job is done.
        if self.batchers.load().contains_key(name) {
            self.batchers.update(|all| {
                if let Some(versions) = all.get_mut(name) {
                    versions.retain(|v, _| entry.versions.contains_key(v));
                }
            });
        }
        for state in entry.versions.values() {
            if let crate::model::repository::VersionState::Ready(m) = state {
                if m.spec.input.is_some() {
                    let _ = self.prepared(m.clone());
                }
            }
        }
    }

    /// The re-ranker batcher of `model`'s version, started on first use with
    /// that version's batching policy (a reload that changes `[batching]`
    /// takes effect with the new version).
    pub fn batcher(&self, model: &StageModel) -> Option<Batcher> {
        if !self.config.batching {
            return None;
        }
        let loaded = model.model();
        if let Some(b) = self
            .batchers
            .load()
            .get(loaded.name.as_str())
            .and_then(|versions| versions.get(&loaded.version))
        {
            return Some(b.clone());
        }
        let spec = &loaded.spec;
        let output = spec.output.as_ref().map_or("score", |o| o.name.as_str());
        let policy = BatchPolicy {
            max_batch_rows: spec.batching.max_batch_rows,
            max_wait: Duration::from_micros(spec.batching.max_wait_us),
            queue_capacity: self.config.batch_queue_capacity,
            workers: self.config.batch_workers,
        };
        // Spawned inside the writers' turn: one batcher per version.
        Some(self.batchers.update(|all| {
            all.entry(loaded.name.clone())
                .or_default()
                .entry(loaded.version)
                .or_insert_with(|| Batcher::spawn(model.name(), output, policy, self.pool.clone()))
                .clone()
        }))
    }

    /// The default stage model of `role` (`filter`, `ranker`, `cold_start`)
    /// at its serving version, for tests and tools.
    pub fn stage_model(&self, registry: &Registry, role: &str) -> Option<Arc<StageModel>> {
        let r = match role {
            "filter" => self.filter.as_ref(),
            "ranker" => self.ranker.as_ref(),
            "cold_start" => self.cold_start.as_ref(),
            _ => None,
        }?;
        self.resolve(registry, r).ok()
    }
}
