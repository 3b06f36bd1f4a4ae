//! What every request handler shares.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;
use crate::model::executor::InferencePool;
use crate::model::repository::{LoadOptions, Registry};
use crate::model::{backend::BackendOptions, ModelError};

pub struct AppState {
    pub config: Config,
    pub registry: Registry,
    pub pool: InferencePool,
    /// Set once everything is loaded, warmed up and vetted.
    pub ready: AtomicBool,
    /// Set when shutdown starts: readiness drops so balancers drain us.
    pub draining: AtomicBool,
}

impl AppState {
    /// Loads every model (warm-up and vetting included) per `config`.
    pub fn load(config: Config) -> Result<AppState, ModelError> {
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
        let registry = Registry::load(&config.models.repository, &options)?;
        let pool = InferencePool::new(config.models.inference_threads);
        Ok(AppState {
            config,
            registry,
            pool,
            ready: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}
