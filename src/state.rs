//! What every request handler shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::model::executor::InferencePool;
use crate::model::repository::{LifecycleError, LoadOptions, Registry, ReloadReport, VersionCheck};
use crate::model::{backend::BackendOptions, ModelError};
use crate::pipeline::Pipeline;
use crate::pipeline::Precompiled;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Ranking(String),
    /// The live state (`[state]`): the folder, its log and snapshot, Redis.
    #[error("opening the live state: {0}")]
    State(String),
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
    /// `cascade_in_flight`, registered once (admission moves it twice per request).
    pub in_flight: metrics::Gauge,
    /// Set once everything is loaded, warmed up and vetted.
    pub ready: AtomicBool,
    /// Set when shutdown starts: readiness drops so balancers drain us.
    pub draining: AtomicBool,
    /// Where accepted events are recorded before they are applied (with
    /// ranking on): the embedded write-ahead log, or the log replicas
    /// share in Redis.
    pub events: Option<crate::events::Store>,
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
            quality_gate: config
                .models
                .quality_gate
                .then_some(config.models.quality_tolerance),
        };
        crate::telemetry::metrics::install();
        // With ranking on, a version whose declared features the catalog
        // cannot supply is refused like one that fails its golden set.
        let catalog = if config.ranking.enabled {
            Some(Arc::new(
                Catalog::load(&config.ranking.catalog)
                    .map_err(|e| StartupError::Ranking(e.to_string()))?,
            ))
        } else {
            None
        };
        // Each version's features are compiled (and its drift profile read)
        // by this check, while it loads: requests never do it.
        let precompiled = catalog.clone().map(|catalog| {
            Precompiled::new(catalog, &config.models.repository, &config.monitoring)
        });
        let check: Option<VersionCheck> = precompiled.clone().map(|store| {
            Box::new(move |m: &crate::model::LoadedModel| store.check(m)) as VersionCheck
        });
        let registry = Registry::load(&config.models.repository, &options, check)?;
        record_models(&registry);
        let pool = InferencePool::new(config.models.inference_threads)
            .with_inline_below(config.models.inline_below_us);
        let pipeline = match catalog.zip(precompiled) {
            Some((catalog, precompiled)) => Some(
                Pipeline::load(&config, catalog, &registry, &pool, precompiled)
                    .map_err(StartupError::Ranking)?,
            ),
            None => None,
        };
        let events = match &pipeline {
            Some(p) => Some(open_events(&config, p)?),
            None => None,
        };
        metrics::gauge!(crate::telemetry::metrics::READY).set(1.0);
        Ok(AppState {
            events,
            admission: Arc::new(Semaphore::new(config.server.max_in_flight)),
            in_flight: metrics::gauge!(crate::telemetry::metrics::IN_FLIGHT),
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

    /// `POST /admin/models/{name}/reload`. Blocking (models load here).
    pub fn reload_model(&self, name: &str) -> Result<ReloadReport, LifecycleError> {
        let result = self.registry.reload(name, &self.pins(name));
        self.after_change(name, &result, "swapped");
        result
    }

    /// The poller's look at one model: loads only once its files have
    /// settled, and only what changed (see `Registry::poll`).
    pub fn poll_model(&self, name: &str) {
        if let Some(result) = self.registry.poll(name, &self.pins(name)) {
            self.after_change(name, &result, "swapped");
        }
    }

    /// Versions of `name` that the ranking config, an arm or a shadow pins.
    fn pins(&self, name: &str) -> crate::model::repository::Pins {
        self.pipeline
            .as_ref()
            .map(|p| p.pins(name))
            .unwrap_or_default()
    }

    /// `POST /admin/models/{name}/rollback`.
    pub fn rollback_model(&self, name: &str) -> Result<ReloadReport, LifecycleError> {
        let result = self.registry.rollback(name);
        self.after_change(name, &result, "rolled_back");
        result
    }

    fn after_change(
        &self,
        name: &str,
        result: &Result<ReloadReport, LifecycleError>,
        changed: &'static str,
    ) {
        use crate::telemetry::metrics as m;
        let outcome = match result {
            Err(LifecycleError::NotFound(_)) => return,
            Err(LifecycleError::Refused(e)) => {
                tracing::error!(model = name, error = %e, "reload refused; serving version unchanged");
                "refused"
            }
            Ok(r) if r.previous.as_deref() == Some(r.serving.as_str()) => "unchanged",
            Ok(_) => changed,
        };
        metrics::counter!(m::MODEL_RELOADS_TOTAL, "name" => name.to_string(), "outcome" => outcome)
            .increment(1);
        if let Some(pipeline) = &self.pipeline {
            pipeline.prepare_versions(&self.registry, name);
        }
        record_models(&self.registry);
    }

    /// Reloads every model folder of the repository (new models included).
    /// Blocking.
    pub fn reload_all(&self) {
        for name in model_folders(self.registry.root()) {
            let _ = self.reload_model(&name);
        }
    }

    /// Rescans every model folder every `models.poll_interval_s` seconds,
    /// on a blocking thread, until the process ends.
    pub fn spawn_poller(self: &Arc<Self>) {
        let every = self.config.models.poll_interval_s;
        if every == 0 {
            return;
        }
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(state) = state.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || {
                    for name in model_folders(state.registry.root()) {
                        state.poll_model(&name);
                    }
                })
                .await;
            }
        });
    }
}

/// Opens the state store and loads what it holds into the pipeline's live
/// view: the embedded log is replayed; the Redis log is read (when Redis
/// answers) and then followed.
fn open_events(config: &Config, pipeline: &Pipeline) -> Result<crate::events::Store, StartupError> {
    let started = std::time::Instant::now();
    if config.state.backend == "redis" {
        let url = config.state.redis_url.as_deref().unwrap_or_default();
        let compaction = crate::events::redis::Compaction {
            entries: config.state.redis_compact_entries,
            window_ms: crate::data::schema::duration_ms(&config.state.dedupe_window)
                .map_err(StartupError::State)?,
        };
        let store =
            crate::events::redis::RedisStore::new(url, &config.state.redis_prefix, compaction)
                .map_err(StartupError::State)?;
        // Answers shown here are shared, so that an outcome posted to
        // another replica is attributed to them.
        let client = redis::Client::open(url)
            .map_err(|e| StartupError::State(format!("state.redis_url: {e}")))?;
        let shared = crate::events::shared_answers::RedisAnswers::start(
            client,
            &config.state.redis_prefix,
            pipeline.feedback.window_ms(),
            SHARED_ANSWERS_QUEUE,
        )
        .map_err(StartupError::State)?;
        let online = pipeline.online.clone();
        pipeline.feedback.share(
            std::sync::Arc::new(shared),
            Box::new(move |row| {
                let c = online.catalog();
                ((row as usize) < c.items.len()).then(|| c.items.id(row).to_string())
            }),
        );
        let mut follower = store.follower(pipeline.online.clone(), pipeline.feedback.clone());
        match follower.catch_up() {
            Ok(entries) => tracing::info!(
                entries,
                millis = started.elapsed().as_millis() as u64,
                "shared event log (Redis) read"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "state store (Redis) unavailable at start: ranking on the snapshot alone until it answers"
            ),
        }
        pipeline.online.report_size();
        store.follow(follower);
        return Ok(crate::events::Store::Redis(Box::new(store)));
    }
    let (log, recovered) =
        crate::events::log::EventLog::open(&config.state.dir, config.state.fsync)
            .map_err(StartupError::State)?;
    let mut events = 0;
    if let Some(snapshot) = &recovered.snapshot {
        let users = pipeline
            .online
            .restore(snapshot)
            .map_err(StartupError::State)?;
        tracing::info!(users, bytes = snapshot.len(), "live-state snapshot loaded");
    }
    // Replayed in chunks of many batches, not batch by batch: a batch that
    // changes items or users lays every change so far over the snapshot
    // (O(changes)), which a replay of many such batches would repeat for
    // each. The order of events, and so the result, is the same; a chunk
    // counts as arrived with its last batch (ids are remembered from then:
    // a little longer, never shorter).
    let batches = recovered.batches.len();
    let mut chunk = Vec::new();
    let mut arrived = i64::MIN;
    let mut pending = recovered.batches.into_iter().peekable();
    while let Some(batch) = pending.next() {
        arrived = arrived.max(batch.arrived_ms);
        chunk.extend(batch.events);
        if chunk.len() >= REPLAY_CHUNK || pending.peek().is_none() {
            events += pipeline.online.apply_arrived(&chunk, arrived).accepted;
            chunk.clear();
        }
    }
    if recovered.torn_bytes > 0 {
        tracing::warn!(
            bytes = recovered.torn_bytes,
            "event log: a torn last record (never acknowledged) was cut off"
        );
    }
    tracing::info!(
        batches,
        events,
        log_bytes = recovered.log_bytes,
        millis = started.elapsed().as_millis() as u64,
        "event log replayed"
    );
    metrics::gauge!(crate::telemetry::metrics::EVENT_LOG_BYTES).set(recovered.log_bytes as f64);
    metrics::counter!(crate::telemetry::metrics::STATE_STORE_ERRORS_TOTAL, "backend" => "embedded", "op" => "append")
        .increment(0);
    crate::events::store_up("embedded", true);
    pipeline.online.report_size();
    Ok(crate::events::Store::Embedded(std::sync::Mutex::new(log)))
}

/// Answers waiting to be shared with the other replicas at most.
const SHARED_ANSWERS_QUEUE: usize = 65_536;

/// Events applied at once when the embedded log is replayed at start.
const REPLAY_CHUNK: usize = 100_000;

/// Folder names under the repository that hold a `config.toml`.
fn model_folders(root: &std::path::Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.path().join("config.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Exports which version of each model serves (1) and which do not (0),
/// and each ready version's quality on its golden set, when measured.
fn record_models(registry: &Registry) {
    use crate::model::repository::VersionState;
    use crate::telemetry::metrics as m;
    for entry in registry.entries() {
        metrics::counter!(m::MODEL_ERRORS_TOTAL, "model" => entry.name.clone()).increment(0);
        for (version, state) in &entry.versions {
            let serving = if *version == entry.serving { 1.0 } else { 0.0 };
            metrics::gauge!(
                m::MODEL_INFO,
                "name" => entry.name.clone(),
                "version" => version.to_string(),
                "backend" => entry.backend.as_str()
            )
            .set(serving);
            let VersionState::Ready(model) = state else {
                continue;
            };
            if let Some(q) = model.vetting.as_ref().and_then(|v| v.quality.as_ref()) {
                metrics::gauge!(
                    m::MODEL_QUALITY,
                    "name" => entry.name.clone(),
                    "version" => version.to_string(),
                    "metric" => q.metric
                )
                .set(q.value);
            }
        }
    }
}
