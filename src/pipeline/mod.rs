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
//! - [`request`]: the request/response contract and its validation.
//! - [`rules`]: declared drop and diversity rules.
//! - [`cache`]: the response cache in front of the cascade.
//! - [`stages`]: the stage implementations.

pub mod cache;
pub mod experiments;
pub mod request;
pub mod rules;
pub mod score_cache;
pub mod shadow;
pub mod stages;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::catalog::{self, Catalog, VectorIndex};
use crate::config::{OnOverload, RankingConfig};
use crate::data::features::Subject;
use crate::model::batcher::{BatchPolicy, Batcher};
use crate::model::executor::InferencePool;
use crate::model::{LoadedModel, Registry};
use crate::telemetry::drift::MonitoringConfig;
use crate::telemetry::metrics as m;
use cache::{CacheKey, ResponseCache, Uncached};
use experiments::{ExperimentsConfig, ModelRef};
use request::{Fallback, Limits, RankResponse, ScoredItem, StageReport, ValidRequest};
use score_cache::{ScoreCache, ScoreKey};
use shadow::{ShadowConfig, ShadowJob, ShadowRunner, ShadowSpec, ShadowStage};
use stages::{StageError, StageModel};

/// Why a request could not be ranked at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RankError {
    #[error("{0}")]
    Unavailable(String),
    /// The re-ranker's queue is full and `ranking.on_overload = "reject"`.
    #[error("overloaded")]
    Overloaded,
}

/// The variant of requests outside any experiment.
pub const CONTROL: &str = "control";

pub struct Pipeline {
    pub catalog: Arc<Catalog>,
    index: Box<dyn VectorIndex>,
    config: RankingConfig,
    monitoring: MonitoringConfig,
    /// The model repository (for each version's `profile.json`).
    repository: PathBuf,
    pub limits: Limits,
    /// Stage models outside experiments.
    filter: Option<ModelRef>,
    ranker: Option<ModelRef>,
    cold_start: Option<ModelRef>,
    /// Every model version a stage has used, prepared once.
    prepared: RwLock<HashMap<(String, u64), Arc<StageModel>>>,
    /// Re-ranker batchers, one per model version (created on first use,
    /// with that version's `[batching]`; dropped when the version goes).
    batchers: RwLock<HashMap<(String, u64), Batcher>>,
    pool: InferencePool,
    experiments: RwLock<Arc<ExperimentsConfig>>,
    pub shadow: ShadowRunner,
    cache: Option<ResponseCache>,
    score_cache: Option<ScoreCache>,
    rules: rules::Rules,
}

/// Candidates with the score of the stage that ordered them last.
type Scored = Vec<(u32, f32)>;

/// What one request runs with, fixed when it starts: its arm, and the
/// exact model versions of its stages (a reload or an experiment change
/// mid-request does not touch it).
struct Plan {
    variant: Arc<str>,
    filter: Option<Result<Arc<StageModel>, String>>,
    rerank: Option<Result<Arc<StageModel>, String>>,
    retrieve_n: usize,
    filter_keep: usize,
    /// The shadows that sample this request, per stage, with their models.
    filter_shadows: Vec<Shadowing>,
    rerank_shadows: Vec<Shadowing>,
}

type Shadowing = (ShadowSpec, Result<Arc<StageModel>, String>);

impl Plan {
    /// `name@version` of each stage model, for the cache key.
    fn versions(&self) -> String {
        [&self.filter, &self.rerank]
            .into_iter()
            .map(|s| match s {
                None => "-".to_string(),
                Some(Ok(m)) => m.label().to_string(),
                Some(Err(_)) => "?".to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn model_ref(key: &str, name: &Option<String>) -> Result<Option<ModelRef>, String> {
    match name.as_deref().filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(n) => ModelRef::parse(n)
            .map(Some)
            .map_err(|e| format!("ranking.{key}: {e}")),
    }
}

impl Pipeline {
    /// Builds the index over `catalog` and checks every configured stage
    /// model, experiment arm and shadow. Errors name the config key.
    /// Batchers (when `ranking.batching`) start on the current tokio runtime.
    pub fn load(
        config: &crate::config::Config,
        catalog: Arc<Catalog>,
        registry: &Registry,
        pool: &InferencePool,
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
        for reason in ["cold_start", "deadline", "model_error", "overload"] {
            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => reason, "variant" => CONTROL)
                .increment(0);
        }
        let rules = rules::Rules::compile(&ranking.rules, &catalog)?;
        let pipeline = Pipeline {
            limits: ranking.limits(),
            filter: model_ref("filter_model", &ranking.filter_model)?,
            ranker: model_ref("ranker_model", &ranking.ranker_model)?,
            cold_start: model_ref("cold_start_model", &ranking.cold_start_model)?,
            catalog,
            index,
            config: ranking.clone(),
            monitoring: config.monitoring.clone(),
            repository: registry.root().to_path_buf(),
            prepared: RwLock::new(HashMap::new()),
            batchers: RwLock::new(HashMap::new()),
            pool: pool.clone(),
            experiments: RwLock::new(Arc::new(ExperimentsConfig::default())),
            shadow: ShadowRunner::start(&ShadowConfig {
                shadows: Vec::new(),
                ..config.shadow.clone()
            })?,
            cache: ranking
                .cache
                .enabled
                .then(|| ResponseCache::new(&ranking.cache)),
            score_cache: ranking
                .score_cache
                .enabled
                .then(|| ScoreCache::new(&ranking.score_cache)),
            rules,
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

    /// Re-rank score cache rows found and not found (None when it is off).
    pub fn score_cache_stats(&self) -> Option<(u64, u64)> {
        self.score_cache.as_ref().map(ScoreCache::stats)
    }

    pub fn index_name(&self) -> &'static str {
        self.index.name()
    }

    /// The prepared form of `model` (compiled on first use).
    fn prepared(&self, model: Arc<LoadedModel>) -> Result<Arc<StageModel>, String> {
        let key = (model.name.clone(), model.version);
        if let Some(p) = self
            .prepared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let profile = std::fs::read_to_string(
            self.repository
                .join(&model.name)
                .join(model.version.to_string())
                .join("profile.json"),
        )
        .ok();
        let prepared = Arc::new(StageModel::prepare(
            model,
            &self.catalog,
            profile.as_deref(),
            &self.monitoring,
        )?);
        Ok(self
            .prepared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(prepared)
            .clone())
    }

    /// The version `r` names (or the serving one), prepared for a stage.
    fn resolve(&self, registry: &Registry, r: &ModelRef) -> Result<Arc<StageModel>, String> {
        let version = r.version.map(|v| v.to_string());
        let loaded = registry
            .get(&r.name, version.as_deref())
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
        // Batchers of versions no longer loaded stop once their last job is done.
        self.batchers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, v), _| n != name || entry.versions.contains_key(v));
        for state in entry.versions.values() {
            if let crate::model::repository::VersionState::Ready(m) = state {
                if m.spec.input.is_some() {
                    let _ = self.prepared(m.clone());
                }
            }
        }
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
        for shadow in self.shadow.active().iter() {
            pin(&shadow.model, format!("shadow \"{}\"", shadow.name));
        }
        pins
    }

    pub fn experiments(&self) -> Arc<ExperimentsConfig> {
        self.experiments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Validates and installs an experiment; `prefix` names where it came from.
    pub fn set_experiments(
        &self,
        registry: &Registry,
        experiments: ExperimentsConfig,
        prefix: &str,
    ) -> Result<(), String> {
        experiments.validate(prefix, &|r| self.check_model(registry, r))?;
        for arm in &experiments.arms {
            for reason in ["cold_start", "deadline", "model_error", "overload"] {
                metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => reason, "variant" => arm.name.clone())
                    .increment(0);
            }
        }
        tracing::info!(arms = ?experiments.arms.iter().map(|a| (&a.name, a.share)).collect::<Vec<_>>(), "experiment set");
        *self.experiments.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(experiments);
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
        Ok(())
    }

    /// The arm a request falls in: forced by name, or the stable hash of
    /// its user id (its request id when it has none).
    pub fn arm_of(&self, req: &ValidRequest) -> Option<experiments::ArmConfig> {
        let experiments = self.experiments();
        if let Some(name) = &req.variant {
            return experiments.arm(name).cloned();
        }
        if experiments.arms.is_empty() {
            return None;
        }
        let unit = req.user_id.as_deref().unwrap_or(&req.request_id);
        experiments.assign(unit).cloned()
    }

    fn plan(&self, registry: &Registry, req: &ValidRequest, subject: &Subject) -> Plan {
        let arm = self.arm_of(req);
        let pick = |over: Option<&String>,
                    default: &Option<ModelRef>|
         -> Option<Result<Arc<StageModel>, String>> {
            let r = match over {
                Some(o) => Some(ModelRef::parse(o)),
                None => default.clone().map(Ok),
            }?;
            Some(r.and_then(|r| self.resolve(registry, &r)))
        };
        let arm_ref = arm.as_ref();
        let (filter, rerank) = if subject.user.is_some() {
            (
                pick(arm_ref.and_then(|a| a.filter_model.as_ref()), &self.filter),
                pick(arm_ref.and_then(|a| a.ranker_model.as_ref()), &self.ranker),
            )
        } else {
            (
                None,
                pick(
                    arm_ref.and_then(|a| a.cold_start_model.as_ref()),
                    &self.cold_start,
                ),
            )
        };
        let shadows = |stage| -> Vec<Shadowing> {
            self.shadow
                .sampled(stage, &req.request_id)
                .into_iter()
                .map(|spec| {
                    let model =
                        ModelRef::parse(&spec.model).and_then(|r| self.resolve(registry, &r));
                    (spec, model)
                })
                .collect()
        };
        Plan {
            filter_shadows: shadows(ShadowStage::Filter),
            rerank_shadows: shadows(ShadowStage::Rerank),
            variant: arm_ref.map_or(CONTROL, |a| a.name.as_str()).into(),
            filter,
            rerank,
            retrieve_n: arm_ref
                .and_then(|a| a.retrieve_n)
                .unwrap_or(self.config.retrieve_n),
            filter_keep: arm_ref
                .and_then(|a| a.filter_keep)
                .unwrap_or(self.config.filter_keep),
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
        let key = (loaded.name.clone(), loaded.version);
        if let Some(b) = self
            .batchers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
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
        let mut batchers = self.batchers.write().unwrap_or_else(|e| e.into_inner());
        Some(
            batchers
                .entry(key)
                .or_insert_with(|| Batcher::spawn(model.name(), output, policy, self.pool.clone()))
                .clone(),
        )
    }

    /// Who the request is for: a known user's row (or none: cold start),
    /// and the context with its defaults applied at the request's time.
    pub fn subject(&self, req: &ValidRequest) -> Subject {
        let now = SystemTime::now();
        Subject {
            user: req
                .user_id
                .as_deref()
                .and_then(|u| self.catalog.users.row(u)),
            ctx: req.context.resolve(&self.catalog.schema, now),
            now_ms: now
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_millis() as f64),
        }
    }

    /// Ranks through the response cache (debug requests always compute,
    /// since they report stage timings).
    pub async fn rank_cached(
        &self,
        registry: &Registry,
        _pool: &InferencePool,
        req: ValidRequest,
    ) -> Result<RankResponse, RankError> {
        let started = Instant::now();
        let subject = self.subject(&req);
        let plan = self.plan(registry, &req, &subject);
        let variant = plan.variant.clone();
        let result = match self.cache.as_ref().filter(|_| !req.debug) {
            None => self.rank_for(subject, plan, req).await,
            Some(cache) => {
                let key = CacheKey::new(&plan.variant, plan.versions(), &req, &subject);
                let request_id = req.request_id.clone();
                match cache
                    .get_or_compute(key, self.rank_for(subject, plan, req))
                    .await
                {
                    Ok((mut response, hit)) => {
                        response.request_id = request_id;
                        response.cached = hit;
                        // Fallbacks count answers served: a cached cold-start answer is one.
                        if hit && response.fallback == Some(Fallback::ColdStart) {
                            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => "cold_start", "variant" => variant.to_string())
                                .increment(1);
                        }
                        Ok(response)
                    }
                    Err(uncached) => match &*uncached {
                        // Shared with the identical requests that waited on
                        // it, each under its own id.
                        Uncached::Degraded(r) => Ok(RankResponse {
                            request_id,
                            ..r.clone()
                        }),
                        Uncached::Failed(e) => Err(e.clone()),
                    },
                }
            }
        };
        let outcome = match &result {
            Ok(r) => r.fallback.map_or("ok", fallback_label),
            Err(_) => "error",
        };
        metrics::counter!(m::RANK_REQUESTS_TOTAL, "variant" => variant.to_string(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(m::RANK_DURATION_SECONDS, "variant" => variant.to_string())
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Ranks without the cache.
    pub async fn rank(
        &self,
        registry: &Registry,
        _pool: &InferencePool,
        req: ValidRequest,
    ) -> Result<RankResponse, RankError> {
        let subject = self.subject(&req);
        let plan = self.plan(registry, &req, &subject);
        self.rank_for(subject, plan, req).await
    }

    async fn rank_for(
        &self,
        subject: Subject,
        plan: Plan,
        req: ValidRequest,
    ) -> Result<RankResponse, RankError> {
        let started = Instant::now();
        // Model stages must finish before `deadline`, which keeps the
        // configured reserve for replying.
        let deadline = started
            + Duration::from_millis(
                req.deadline_ms
                    .saturating_sub(self.config.deadline_reserve_ms),
            );
        let mut reports = Vec::new();
        let mut models = Map::new();
        let variant = plan.variant.clone();
        let mut fallback = if subject.user.is_none() {
            Some(Fallback::ColdStart)
        } else {
            None
        };

        // 1. retrieve
        let t = Instant::now();
        let excluded: HashSet<u32> = req
            .exclude
            .iter()
            .filter_map(|id| self.catalog.items.row(id))
            .collect();
        let mut current: Scored = match &req.candidates {
            Some(ids) => stages::caller_candidates(&self.catalog, &subject, ids, &excluded),
            None => stages::retrieve(
                &self.catalog,
                self.index.as_ref(),
                &subject,
                &req.recent_items,
                &excluded,
                plan.retrieve_n,
                self.config.exclude_seen,
            ),
        };
        let asked = req.candidates.as_ref().map_or(plan.retrieve_n, Vec::len);
        report(&mut reports, &variant, "retrieve", asked, current.len(), t);
        if self.rules.has_drop() {
            let t = Instant::now();
            let n_in = current.len();
            self.rules
                .drop_candidates(&self.catalog, &subject, &mut current);
            report(&mut reports, &variant, "rules", n_in, current.len(), t);
        }
        if current.is_empty() {
            return Ok(self.respond(req, &variant, current, models, fallback, reports));
        }

        // 2. filter (known users only), 3. rerank
        let stage_plan = [
            ("filter", plan.filter, plan.filter_keep, plan.filter_shadows),
            ("rerank", plan.rerank, usize::MAX, plan.rerank_shadows),
        ];
        for (stage, model, keep, shadows) in stage_plan {
            let Some(model) = model else { continue };
            let t = Instant::now();
            let rows: Vec<u32> = current.iter().map(|(r, _)| *r).collect();
            let scored = match &model {
                Err(e) => Err(StageError::Model(e.clone())),
                Ok(model) => {
                    self.score_stage(
                        model,
                        stage == "rerank",
                        &subject,
                        &rows,
                        deadline,
                        !shadows.is_empty(),
                    )
                    .await
                }
            };
            match scored {
                Ok(out) => {
                    let model = model.as_ref().expect("it scored, so it resolved");
                    let n_in = current.len();
                    if let Some(matrix) = out.matrix {
                        let k = if stage == "filter" { keep } else { req.k };
                        self.offer_shadows(
                            shadows,
                            model,
                            &subject,
                            &rows,
                            matrix,
                            &out.scores,
                            k,
                            &variant,
                            &req.request_id,
                        );
                    }
                    current = rows.into_iter().zip(out.scores).collect();
                    stages::sort_scored(&mut current);
                    current.truncate(keep);
                    models.insert(
                        stage_key(stage, subject.user.is_some()).into(),
                        model.label().into(),
                    );
                    report(&mut reports, &variant, stage, n_in, current.len(), t);
                }
                Err(e) => {
                    let reason = match e {
                        StageError::Deadline => Fallback::Deadline,
                        StageError::Overload if self.config.on_overload == OnOverload::Reject => {
                            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => "overload", "variant" => variant.to_string())
                                .increment(1);
                            return Err(RankError::Overloaded);
                        }
                        StageError::Overload => Fallback::Overload,
                        StageError::Model(msg) => {
                            // A broken model fails every request: one line
                            // per stage and model every 10 s, not one per request.
                            let who = model.as_ref().map_or(msg.as_str(), |m| m.label());
                            if let Some(suppressed) = crate::telemetry::throttle(
                                &format!("stage failed:{stage}:{who}"),
                                Duration::from_secs(10),
                            ) {
                                tracing::warn!(stage, model = who, error = %msg, suppressed, "stage failed; answering from the previous stage");
                            }
                            Fallback::ModelError
                        }
                    };
                    metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => fallback_label(reason), "variant" => variant.to_string())
                        .increment(1);
                    // A cold-start answer stays marked cold_start.
                    if fallback.is_none() {
                        fallback = Some(reason);
                    }
                    report(
                        &mut reports,
                        &variant,
                        stage,
                        current.len(),
                        current.len(),
                        t,
                    );
                    break;
                }
            }
        }
        if fallback == Some(Fallback::ColdStart) {
            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => "cold_start", "variant" => variant.to_string())
                .increment(1);
        }
        Ok(self.respond(req, &variant, current, models, fallback, reports))
    }

    /// Scores one stage's rows. Re-rank rows go through the model's batcher
    /// and, for known users, the score cache: only rows it does not hold are
    /// scored. A request that keeps its matrix for shadows scores every row
    /// (the shadow needs them all), so it bypasses the cache.
    async fn score_stage(
        &self,
        model: &StageModel,
        rerank: bool,
        subject: &Subject,
        rows: &[u32],
        deadline: Instant,
        keep_matrix: bool,
    ) -> Result<stages::StageScores, StageError> {
        let batcher = if rerank { self.batcher(model) } else { None };
        let cached = self
            .score_cache
            .as_ref()
            .filter(|_| rerank && !keep_matrix)
            .zip(subject.user.map(|user| ScoreKey {
                model: model.id(),
                user,
                context: score_cache::context_key(&subject.ctx, &model.features().context_reads),
            }));
        let Some((cache, key)) = cached else {
            return model
                .score(
                    &self.catalog,
                    batcher.as_ref(),
                    &self.pool,
                    subject,
                    rows,
                    deadline,
                    keep_matrix,
                )
                .await;
        };
        let (known, missing) = cache.lookup(key, rows);
        let fresh = if missing.is_empty() {
            Vec::new()
        } else {
            model
                .score(
                    &self.catalog,
                    batcher.as_ref(),
                    &self.pool,
                    subject,
                    &missing,
                    deadline,
                    false,
                )
                .await?
                .scores
        };
        cache.insert(key, &missing, &fresh);
        Ok(stages::StageScores {
            scores: score_cache::merge(known, &fresh),
            matrix: None,
        })
    }

    /// Hands the live stage's inputs and scores to each sampled shadow.
    /// Never waits: a full shadow queue drops the work.
    #[allow(clippy::too_many_arguments)]
    fn offer_shadows(
        &self,
        shadows: Vec<Shadowing>,
        live: &StageModel,
        subject: &Subject,
        rows: &[u32],
        matrix: Vec<f32>,
        scores: &[f32],
        k: usize,
        variant: &Arc<str>,
        request_id: &str,
    ) {
        for (spec, model) in shadows {
            let model = match model {
                Ok(m) => m,
                Err(e) => {
                    self.shadow.error(&spec.name, &e);
                    continue;
                }
            };
            // The exact matrix the live model saw when the features agree;
            // else the same rows assembled in the shadow's feature order.
            let matrix = if model.features().names == live.features().names {
                matrix.clone()
            } else {
                let mut own = Vec::new();
                let mut missing = vec![0u32; model.features().width()];
                model.features().assemble(
                    &self.catalog.items,
                    &self.catalog.users,
                    subject,
                    rows,
                    &mut own,
                    &mut missing,
                );
                own
            };
            self.shadow.offer(ShadowJob {
                shadow: spec.name.as_str().into(),
                stage: spec.stage,
                model,
                live_model: live.label().to_string(),
                matrix,
                live_scores: scores.to_vec(),
                k,
                variant: variant.clone(),
                request_id: request_id.to_string(),
                enqueued: Instant::now(),
            });
        }
    }

    fn respond(
        &self,
        req: ValidRequest,
        variant: &str,
        mut current: Scored,
        models: Map<String, Value>,
        fallback: Option<Fallback>,
        mut reports: Vec<StageReport>,
    ) -> RankResponse {
        let t = Instant::now();
        let n_in = current.len();
        stages::sort_scored(&mut current);
        self.rules.select(&self.catalog, &mut current, req.k);
        report(&mut reports, variant, "select", n_in, current.len(), t);
        RankResponse {
            request_id: req.request_id,
            items: current
                .into_iter()
                .map(|(row, score)| ScoredItem {
                    item_id: self.catalog.item_id(row).to_string(),
                    score,
                })
                .collect(),
            variant: variant.to_string(),
            models,
            fallback,
            cached: false,
            stages: req.debug.then_some(reports),
        }
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

fn stage_key(stage: &'static str, known: bool) -> &'static str {
    match (stage, known) {
        ("filter", _) => "filter",
        (_, true) => "ranker",
        (_, false) => "cold_start",
    }
}

fn fallback_label(f: Fallback) -> &'static str {
    match f {
        Fallback::ColdStart => "cold_start",
        Fallback::Deadline => "deadline",
        Fallback::ModelError => "model_error",
        Fallback::Overload => "overload",
    }
}

fn report(
    reports: &mut Vec<StageReport>,
    variant: &str,
    name: &'static str,
    n_in: usize,
    n_out: usize,
    t: Instant,
) {
    let took = t.elapsed();
    metrics::histogram!(m::STAGE_DURATION_SECONDS, "stage" => name, "variant" => variant.to_string())
        .record(took.as_secs_f64());
    metrics::histogram!(m::STAGE_CANDIDATES_OUT, "stage" => name, "variant" => variant.to_string())
        .record(n_out as f64);
    reports.push(StageReport {
        name,
        candidates_in: n_in,
        candidates_out: n_out,
        micros: took.as_micros() as u64,
    });
}
