//! The ranking cascade behind `POST /v1/rank`:
//!
//! 1. **retrieve** — top-N by inner product over item embeddings (exact or
//!    HNSW), seeded by the user's embedding; for cold-start users by the mean
//!    embedding of `recent_items` or the popularity list; or exactly the
//!    caller's `candidates`. Excluded, already-seen and duplicate items are
//!    removed before, not after, the cut.
//! 2. **filter** — the lightweight model scores the N candidates, keeps M.
//! 3. **rerank** — the heavy model (for cold-start users, the cold-start
//!    ranker) scores what is left.
//! 4. **select** — sort by score, ties by item row, top k.
//!
//! Each request has a deadline. A stage whose estimated cost no longer fits,
//! which times out, or whose model fails, is skipped: the answer keeps the
//! previous stage's order and says why (`fallback`). Only when nothing at
//! all can rank is it an error.
//!
//! The pipeline's own parts:
//!
//! - [`request`]: the request/response contract and its validation.
//! - `plan`: what a request runs with — its arm, its stage models.
//! - `models`: stage models prepared per version, and their batchers.
//! - `run`: the stages in order, the deadline, the fallbacks, the caches.
//! - [`stages`]: retrieval and model scoring.
//! - [`rules`]: declared drop and diversity rules.
//! - [`cache`], [`score_cache`]: the response cache and the re-rank score cache.
//! - [`experiments`], [`shadow`]: A/B arms and shadow models.

pub mod cache;
pub mod experiments;
mod models;
pub use models::Precompiled;
mod plan;
pub mod request;
pub mod rules;
mod run;
pub mod score_cache;
pub mod shadow;
pub mod stages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::catalog::{self, Catalog, VectorIndex};
use crate::config::RankingConfig;
use crate::data::features::Subject;
use crate::model::batcher::Batcher;
use crate::model::executor::InferencePool;
use crate::model::Registry;
use crate::snapshot::Snapshot;
use cache::ResponseCache;
use experiments::{ExperimentsConfig, ModelRef};
use plan::model_ref;
use request::{Limits, ValidRequest};
use score_cache::ScoreCache;
use shadow::{ShadowConfig, ShadowRunner, ShadowSpec};
use stages::StageModel;

/// Why a request could not be ranked at all. `http::error` maps each to
/// its status, in one place.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RankError {
    /// The request breaks the contract; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No model can serve the request now.
    #[error("{0}")]
    Unavailable(String),
    /// The re-ranker's queue is full and `ranking.on_overload = "reject"`.
    #[error("overloaded")]
    Overloaded,
}

/// The variant of requests outside any experiment.
pub const CONTROL: &str = "control";

pub struct Pipeline {
    index: Box<dyn VectorIndex>,
    config: RankingConfig,
    /// What version checks compiled, for `prepared`.
    precompiled: Arc<models::Precompiled>,
    pub limits: Limits,
    /// Stage models outside experiments.
    filter: Option<ModelRef>,
    ranker: Option<ModelRef>,
    cold_start: Option<ModelRef>,
    /// Every model version a stage has used, prepared once.
    /// Keyed by model name, then version: a lookup borrows the name.
    prepared: Snapshot<HashMap<String, HashMap<u64, Arc<StageModel>>>>,
    /// Re-ranker batchers, one per model version (created on first use,
    /// with that version's `[batching]`; dropped when the version goes).
    batchers: Snapshot<HashMap<String, HashMap<u64, Batcher>>>,
    pool: InferencePool,
    /// The experiment in force, its arms compiled when it was set.
    experiment: Snapshot<plan::Experiment>,
    /// The arm of requests outside any experiment.
    control: Arc<plan::Arm>,
    /// Metric handles by arm name (`control` and every arm ever set).
    arm_metrics: Mutex<HashMap<String, Arc<plan::ArmMetrics>>>,
    pub shadow: ShadowRunner,
    cache: Option<ResponseCache>,
    score_cache: Option<ScoreCache>,
    rules: rules::Rules,
    /// Live state from events: histories, availability.
    pub online: Arc<crate::events::online::Online>,
    /// The answers shown, the outcomes attributed to them, the reports.
    pub feedback: Arc<crate::feedback::Feedback>,
}

/// Candidates with the score of the stage that ordered them last.
type Scored = Vec<(u32, f32)>;

impl Pipeline {
    /// Builds the index over `catalog` and checks every configured stage
    /// model, experiment arm and shadow. Errors name the config key.
    /// Batchers (when `ranking.batching`) start on the current tokio runtime.
    /// `precompiled` is the store `registry`'s version check filled
    /// ([`Precompiled::check`]).
    pub fn load(
        config: &crate::config::Config,
        catalog: Arc<Catalog>,
        registry: &Registry,
        pool: &InferencePool,
        precompiled: Arc<models::Precompiled>,
    ) -> Result<Pipeline, String> {
        let ranking = &config.ranking;
        let started = Instant::now();
        let (vectors, dim) = catalog.item_vectors().ok_or_else(|| {
            format!(
                "ranking.catalog: {} declares no retrieval.item_vector to retrieve by",
                crate::catalog::SCHEMA_FILE
            )
        })?;
        // Builds the index, or loads `ranking.hnsw.index_file` when set.
        let index = catalog::index::open(
            ranking.index,
            ranking.exact_below,
            vectors,
            dim,
            &ranking.hnsw,
        )?;
        tracing::info!(
            index = index.name(),
            items = index.len(),
            millis = started.elapsed().as_millis() as u64,
            "retrieval index ready"
        );
        let rules = rules::Rules::compile(&ranking.rules, &catalog)?;
        let online = Arc::new(crate::events::online::Online::new(
            catalog.clone(),
            config.state.limits(),
        ));
        let feedback = Arc::new(crate::feedback::Feedback::new(
            &config.feedback,
            catalog.schema.outcome_kinds.clone(),
        )?);
        // `control`'s handles, shared with an arm that takes its name.
        let control = Arc::new(plan::ArmMetrics::register(CONTROL));
        let pipeline = Pipeline {
            limits: ranking.limits(),
            filter: model_ref("filter_model", &ranking.filter_model)?,
            ranker: model_ref("ranker_model", &ranking.ranker_model)?,
            cold_start: model_ref("cold_start_model", &ranking.cold_start_model)?,
            index,
            config: ranking.clone(),
            precompiled,
            prepared: Snapshot::default(),
            batchers: Snapshot::default(),
            pool: pool.clone(),
            experiment: Snapshot::default(),
            control: Arc::new(plan::Arm::control(control.clone())),
            arm_metrics: Mutex::new(HashMap::from([(CONTROL.to_string(), control)])),
            shadow: ShadowRunner::start(
                &ShadowConfig {
                    shadows: Vec::new(),
                    ..config.shadow.clone()
                },
                Some(feedback.clone()),
            )?,
            cache: ranking
                .cache
                .enabled
                .then(|| ResponseCache::new(&ranking.cache)),
            score_cache: ranking
                .score_cache
                .enabled
                .then(|| ScoreCache::new(&ranking.score_cache)),
            rules,
            online,
            feedback,
        };
        for (key, r) in [
            ("ranking.filter_model", &pipeline.filter),
            ("ranking.ranker_model", &pipeline.ranker),
            ("ranking.cold_start_model", &pipeline.cold_start),
        ] {
            if let Some(r) = r {
                pipeline
                    .check_model(registry, r)
                    .map_err(|e| format!("{key}: {e}"))?;
            }
        }
        pipeline.set_experiments(registry, config.experiments.clone(), "experiments")?;
        pipeline.set_shadows(registry, config.shadow.shadows.clone(), "shadow.shadows")?;
        Ok(pipeline)
    }

    /// The catalog as events have changed it so far (a snapshot: later
    /// events publish a new one).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.online.catalog()
    }

    /// The catalog's schema (events never change it).
    pub fn schema(&self) -> &crate::data::schema::Schema {
        &self.online.base().schema
    }

    /// Re-rank score cache rows found and not found (None when it is off).
    pub fn score_cache_stats(&self) -> Option<(u64, u64)> {
        self.score_cache.as_ref().map(ScoreCache::stats)
    }

    pub fn index_name(&self) -> &'static str {
        self.index.name()
    }

    /// Versions of `name` that a stage, an experiment arm or a shadow names
    /// explicitly (`name@version`), with who does: a reload keeps them loaded.
    pub fn pins(&self, name: &str) -> crate::model::repository::Pins {
        let mut pins = crate::model::repository::Pins::new();
        let mut pin = |model: &str, who: String| {
            if let Ok(ModelRef {
                name: n,
                version: Some(v),
            }) = ModelRef::parse(model)
            {
                if n == name {
                    pins.entry(v).or_insert(who);
                }
            }
        };
        for (key, r) in [
            ("filter_model", &self.config.filter_model),
            ("ranker_model", &self.config.ranker_model),
            ("cold_start_model", &self.config.cold_start_model),
        ] {
            if let Some(model) = r {
                pin(model, format!("ranking.{key}"));
            }
        }
        for arm in &self.experiments().arms {
            for model in [&arm.filter_model, &arm.ranker_model, &arm.cold_start_model]
                .into_iter()
                .flatten()
            {
                pin(model, format!("experiment arm \"{}\"", arm.name));
            }
        }
        for shadow in &self.shadow.active() {
            pin(&shadow.model, format!("shadow \"{}\"", shadow.name));
        }
        pins
    }

    pub fn experiments(&self) -> Arc<ExperimentsConfig> {
        self.experiment.load().config.clone()
    }

    /// Validates and installs an experiment; `prefix` names where it came from.
    pub fn set_experiments(
        &self,
        registry: &Registry,
        experiments: ExperimentsConfig,
        prefix: &str,
    ) -> Result<(), String> {
        experiments.validate(prefix, &|r| self.check_model(registry, r))?;
        tracing::info!(arms = ?experiments.arms.iter().map(|a| (&a.name, a.share)).collect::<Vec<_>>(), "experiment set");
        // Its outcome counters start over (the report is "since it was set").
        let shares = if experiments.arms.is_empty() {
            vec![(CONTROL.to_string(), 1.0)]
        } else {
            experiments
                .arms
                .iter()
                .map(|a| (a.name.clone(), a.share))
                .collect()
        };
        let number = self.feedback.experiment_set(&experiments.salt, shares);
        let compiled = self.compile_experiment(experiments, number)?;
        self.experiment.store(Arc::new(compiled));
        Ok(())
    }

    /// Validates and installs the shadow list.
    pub fn set_shadows(
        &self,
        registry: &Registry,
        shadows: Vec<ShadowSpec>,
        prefix: &str,
    ) -> Result<(), String> {
        shadow::validate_shadows(&shadows, prefix, &|r| self.check_model(registry, r))?;
        self.shadow.set(shadows);
        self.feedback.shadows_set();
        Ok(())
    }

    /// Who the request is for: a known user's row (or none: cold start),
    /// and the context with its defaults applied at the request's time.
    pub fn subject(&self, req: &ValidRequest) -> Subject {
        self.subject_at(req, SystemTime::now())
    }

    /// The request's context as served (defaults applied), by field name:
    /// numbers as numbers, categories by their value, missing as null —
    /// what the ranking log records.
    pub fn context_values(&self, subject: &Subject) -> serde_json::Map<String, serde_json::Value> {
        use crate::data::schema::FieldType;
        use serde_json::Value;
        self.schema()
            .context
            .iter()
            .zip(&subject.ctx)
            .map(|(field, &v)| {
                let value = match &field.ty {
                    _ if v.is_nan() => Value::Null,
                    FieldType::Category(vocab) => {
                        vocab.value(v as u32).map_or(Value::Null, Value::String)
                    }
                    _ => serde_json::Number::from_f64(f64::from(v))
                        .map_or(Value::Null, Value::Number),
                };
                (field.name.clone(), value)
            })
            .collect()
    }

    /// [`Pipeline::subject`] as of `now`.
    pub fn subject_at(&self, req: &ValidRequest, now: SystemTime) -> Subject {
        Subject {
            user: req
                .user_id
                .as_deref()
                .and_then(|u| self.online.catalog().users.row(u)),
            ctx: req.context.resolve(self.schema(), now),
            now_ms: now
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_millis() as f64),
            user_id: req.user_id.clone(),
            // Set with the user's history, when the request is ranked.
            session: None,
        }
    }
}
