//! What every request handler shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::model::executor::InferencePool;
use crate::model::repository::{LoadOptions, Registry};
use crate::model::{backend::BackendOptions, ModelError};
use crate::pipeline::Pipeline;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Ranking(String),
}

pub struct AppState {
    pub config: Config,
    pub registry: Registry,
    pub pool: InferencePool,
    /// The ranking cascade, when `ranking.enabled`.
    pub pipeline: Option<Pipeline>,
    /// Admission control: one permit per ranking or inference request in
    /// flight (`server.max_in_flight`); none left means a fast 503.
    pub admission: Arc<Semaphore>,
    /// Set once everything is loaded, warmed up and vetted.
    pub ready: AtomicBool,
    /// Set when shutdown starts: readiness drops so balancers drain us.
    pub draining: AtomicBool,
}

impl AppState {
    /// Loads every model (warm-up and vetting included) per `config`.
    pub fn load(config: Config) -> Result<AppState, StartupError> {
        let options = LoadOptions {
            default_backend: config.models.backend,
            backend_overrides: config
                .models
                .overrides
                .iter()
                .filter_map(|(name, o)| o.backend.map(|b| (name.clone(), b)))
                .collect(),
            backend: BackendOptions {
                ort_library: config.models.ort_library.clone(),
                sessions: config.models.inference_threads,
            },
        };
        crate::telemetry::metrics::install();
        let registry = Registry::load(&config.models.repository, &options)?;
        record_models(&registry);
        let pool = InferencePool::new(config.models.inference_threads);
        let pipeline = if config.ranking.enabled {
            Some(
                Pipeline::load(&config.ranking, &config.monitoring, &registry, &pool)
                    .map_err(StartupError::Ranking)?,
            )
        } else {
            None
        };
        metrics::gauge!(crate::telemetry::metrics::READY).set(1.0);
        Ok(AppState {
            admission: Arc::new(Semaphore::new(config.server.max_in_flight)),
            config,
            registry,
            pool,
            pipeline,
            ready: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        })
    }

    /// Marks the server as draining: readiness and `cascade_ready` drop.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::metrics::READY).set(0.0);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}

/// Exports what serves and how each version's load went.
fn record_models(registry: &Registry) {
    use crate::model::repository::VersionState;
    use crate::telemetry::metrics as m;
    for entry in registry.entries() {
        for (version, state) in &entry.versions {
            let outcome = match state {
                VersionState::Ready(_) => "ready",
                VersionState::Failed(_) => "failed",
            };
            metrics::counter!(m::MODEL_LOADS_TOTAL, "name" => entry.name.clone(), "outcome" => outcome)
                .increment(1);
            metrics::counter!(m::MODEL_ERRORS_TOTAL, "model" => entry.name.clone()).increment(0);
            let serving = if *version == entry.serving { 1.0 } else { 0.0 };
            metrics::gauge!(
                m::MODEL_INFO,
                "name" => entry.name.clone(),
                "version" => version.to_string(),
                "backend" => entry.backend.as_str()
            )
            .set(serving);
        }
    }
}
