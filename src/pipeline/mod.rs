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
//! - [`cache`]: the response cache in front of the cascade.
//! - [`features`]: feature assembly shared by every model.
//! - [`stages`]: the stage implementations.

pub mod cache;
pub mod features;
pub mod request;
pub mod stages;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::catalog::{self, Catalog, VectorIndex};
use crate::config::{OnOverload, RankingConfig};
use crate::model::batcher::{BatchPolicy, Batcher};
use crate::model::executor::InferencePool;
use crate::model::Registry;
use crate::telemetry::drift::{DriftMonitor, MonitoringConfig};
use crate::telemetry::metrics as m;
use cache::{CacheKey, ResponseCache, Uncached};
use features::{FeatureSet, Subject};
use request::{Fallback, Limits, RankResponse, ScoredItem, StageReport, ValidRequest};
use stages::{ScoringModel, StageError};

/// Why a request could not be ranked at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RankError {
    #[error("{0}")]
    Unavailable(String),
    /// The re-ranker's queue is full and `ranking.on_overload = "reject"`.
    #[error("overloaded")]
    Overloaded,
}

pub struct Pipeline {
    pub catalog: Catalog,
    index: Box<dyn VectorIndex>,
    config: RankingConfig,
    pub limits: Limits,
    filter: Option<ScoringModel>,
    ranker: Option<ScoringModel>,
    cold_start: Option<ScoringModel>,
    cache: Option<ResponseCache>,
}

/// Candidates with the score of the stage that ordered them last.
type Scored = Vec<(u32, f32)>;

impl Pipeline {
    /// Loads the catalog, builds the index and resolves each configured
    /// model's features. Errors name the config key or file.
    /// Batchers (when `ranking.batching`) start on the current tokio runtime.
    pub fn load(
        config: &RankingConfig,
        monitoring: &MonitoringConfig,
        registry: &Registry,
        pool: &InferencePool,
    ) -> Result<Pipeline, String> {
        let catalog = Catalog::load(&config.catalog).map_err(|e| e.to_string())?;
        let started = Instant::now();
        // Builds the index, or loads `ranking.hnsw.index_file` when set.
        let index = catalog::index::open(
            config.index,
            config.exact_below,
            &catalog.items.embedding,
            catalog.items.dim,
            &config.hnsw,
        )?;
        tracing::info!(
            index = index.name(),
            items = index.len(),
            millis = started.elapsed().as_millis() as u64,
            "retrieval index ready"
        );
        let model = |key: &str,
                     name: &Option<String>,
                     batched: bool|
         -> Result<Option<ScoringModel>, String> {
            let Some(name) = name.as_deref().filter(|n| !n.is_empty()) else {
                return Ok(None);
            };
            let loaded = registry
                .get(name, None)
                .map_err(|e| format!("ranking.{key}: {e}"))?;
            let input = loaded.spec.input.as_ref().ok_or_else(|| {
                format!("ranking.{key}: model \"{name}\" declares no [input] features")
            })?;
            let features = FeatureSet::compile(&input.features, &catalog)
                .map_err(|e| format!("ranking.{key}: {name}/config.toml: {e}"))?;
            let batcher = (batched && config.batching).then(|| {
                let output = loaded
                    .spec
                    .output
                    .as_ref()
                    .map_or("score", |o| o.name.as_str());
                let policy = BatchPolicy {
                    max_batch_rows: loaded.spec.batching.max_batch_rows,
                    max_wait: Duration::from_micros(loaded.spec.batching.max_wait_us),
                    queue_capacity: config.batch_queue_capacity,
                    workers: config.batch_workers,
                };
                Batcher::spawn(name, output, policy, pool.clone())
            });
            let profile = registry
                .root()
                .join(name)
                .join(loaded.version.to_string())
                .join("profile.json");
            let drift = match std::fs::read_to_string(&profile) {
                Err(_) => None,
                Ok(text) => match DriftMonitor::new(name, &input.features, &text, monitoring) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(model = name, error = %e, "profile.json unreadable; drift not monitored");
                        None
                    }
                },
            };
            Ok(Some(ScoringModel::new(name, features, batcher, drift)))
        };
        // The filter runs once per request on all N candidates; the
        // re-rankers' rows are the ones worth bulking across requests.
        for reason in ["cold_start", "deadline", "model_error", "overload"] {
            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => reason).increment(0);
        }
        let filter = model("filter_model", &config.filter_model, false)?;
        let ranker = model("ranker_model", &config.ranker_model, true)?;
        let cold_start = model("cold_start_model", &config.cold_start_model, true)?;
        Ok(Pipeline {
            limits: config.limits(),
            catalog,
            index,
            config: config.clone(),
            filter,
            ranker,
            cold_start,
            cache: config
                .cache
                .enabled
                .then(|| ResponseCache::new(&config.cache)),
        })
    }

    pub fn index_name(&self) -> &'static str {
        self.index.name()
    }

    /// Who the request is for: a known user's row, or the cold-start
    /// demographics it carries; hour and weekday default to now (UTC).
    pub fn subject(&self, req: &ValidRequest) -> Subject {
        let user = req
            .user_id
            .as_deref()
            .and_then(|u| self.catalog.users.row(u));
        let (now_hour, now_weekday) = utc_hour_weekday(SystemTime::now());
        let ctx = &req.context;
        Subject {
            user,
            age: if user.is_none() { ctx.age } else { None },
            gender: if user.is_none() { ctx.gender } else { None },
            occupation: if user.is_none() {
                ctx.occupation
                    .as_deref()
                    .and_then(|o| self.catalog.occupation_index(o))
            } else {
                None
            },
            hour: ctx.hour.unwrap_or(now_hour) as f32,
            weekday: ctx.weekday.unwrap_or(now_weekday) as f32,
        }
    }

    /// Ranks through the response cache (debug requests always compute,
    /// since they report stage timings).
    pub async fn rank_cached(
        &self,
        registry: &Registry,
        pool: &InferencePool,
        req: ValidRequest,
    ) -> Result<RankResponse, RankError> {
        let subject = self.subject(&req);
        let Some(cache) = self.cache.as_ref().filter(|_| !req.debug) else {
            return self.rank_for(subject, registry, pool, req).await;
        };
        let key = CacheKey::new("control", self.serving_versions(registry), &req, &subject);
        let request_id = req.request_id.clone();
        let (mut response, hit) = match cache
            .get_or_compute(key, self.rank_for(subject, registry, pool, req))
            .await
        {
            Ok(answer) => answer,
            Err(uncached) => match &*uncached {
                Uncached::Degraded(r) => (r.clone(), false),
                Uncached::Failed(e) => return Err(e.clone()),
            },
        };
        response.request_id = request_id;
        response.cached = hit;
        // Fallbacks count answers served: a cached cold-start answer is one.
        if hit && response.fallback == Some(Fallback::ColdStart) {
            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => "cold_start").increment(1);
        }
        Ok(response)
    }

    /// `name@version` of every stage model's serving version.
    fn serving_versions(&self, registry: &Registry) -> String {
        [&self.filter, &self.ranker, &self.cold_start]
            .into_iter()
            .flatten()
            .map(|m| match registry.get(m.name(), None) {
                Ok(loaded) => format!("{}@{}", loaded.name, loaded.version),
                Err(_) => format!("{}@?", m.name()),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ranks without the cache.
    pub async fn rank(
        &self,
        registry: &Registry,
        pool: &InferencePool,
        req: ValidRequest,
    ) -> Result<RankResponse, RankError> {
        let subject = self.subject(&req);
        self.rank_for(subject, registry, pool, req).await
    }

    async fn rank_for(
        &self,
        subject: Subject,
        registry: &Registry,
        pool: &InferencePool,
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
                self.config.retrieve_n,
                self.config.exclude_seen,
            ),
        };
        let asked = req
            .candidates
            .as_ref()
            .map_or(self.config.retrieve_n, Vec::len);
        report(&mut reports, "retrieve", asked, current.len(), t);
        if current.is_empty() {
            return Ok(self.respond(req, current, models, fallback, reports));
        }

        // 2. filter (known users only), 3. rerank
        let (filter, rerank) = if subject.user.is_some() {
            (self.filter.as_ref(), self.ranker.as_ref())
        } else {
            (None, self.cold_start.as_ref())
        };
        let stage_plan = [
            ("filter", filter, self.config.filter_keep),
            ("rerank", rerank, usize::MAX),
        ];
        for (stage, model, keep) in stage_plan {
            let Some(model) = model else { continue };
            let t = Instant::now();
            let rows: Vec<u32> = current.iter().map(|(r, _)| *r).collect();
            match model
                .score(&self.catalog, registry, pool, &subject, &rows, deadline)
                .await
            {
                Ok((scores, version)) => {
                    let n_in = current.len();
                    current = rows.into_iter().zip(scores).collect();
                    stages::sort_scored(&mut current);
                    current.truncate(keep);
                    models.insert(
                        stage_key(stage, subject.user.is_some()).into(),
                        version.into(),
                    );
                    report(&mut reports, stage, n_in, current.len(), t);
                }
                Err(e) => {
                    let reason = match e {
                        StageError::Deadline => Fallback::Deadline,
                        StageError::Overload if self.config.on_overload == OnOverload::Reject => {
                            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => "overload")
                                .increment(1);
                            return Err(RankError::Overloaded);
                        }
                        StageError::Overload => Fallback::Overload,
                        StageError::Model(msg) => {
                            tracing::warn!(stage, model = model.name(), error = %msg, "stage failed; answering from the previous stage");
                            Fallback::ModelError
                        }
                    };
                    metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => fallback_label(reason))
                        .increment(1);
                    // A cold-start answer stays marked cold_start.
                    if fallback.is_none() {
                        fallback = Some(reason);
                    }
                    report(&mut reports, stage, current.len(), current.len(), t);
                    break;
                }
            }
        }
        if fallback == Some(Fallback::ColdStart) {
            metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => "cold_start").increment(1);
        }
        Ok(self.respond(req, current, models, fallback, reports))
    }

    fn respond(
        &self,
        req: ValidRequest,
        mut current: Scored,
        models: Map<String, Value>,
        fallback: Option<Fallback>,
        mut reports: Vec<StageReport>,
    ) -> RankResponse {
        let t = Instant::now();
        let n_in = current.len();
        stages::sort_scored(&mut current);
        current.truncate(req.k);
        report(&mut reports, "select", n_in, current.len(), t);
        RankResponse {
            request_id: req.request_id,
            items: current
                .into_iter()
                .map(|(row, score)| ScoredItem {
                    item_id: self.catalog.items.ids[row as usize].clone(),
                    score,
                })
                .collect(),
            variant: "control".into(),
            models,
            fallback,
            cached: false,
            stages: req.debug.then_some(reports),
        }
    }

    /// The filter's and ranker's serving versions' features, for tests and tools.
    pub fn feature_set(&self, role: &str) -> Option<&FeatureSet> {
        match role {
            "filter" => self.filter.as_ref(),
            "ranker" => self.ranker.as_ref(),
            "cold_start" => self.cold_start.as_ref(),
            _ => None,
        }
        .map(ScoringModel::features)
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
    name: &'static str,
    n_in: usize,
    n_out: usize,
    t: Instant,
) {
    let took = t.elapsed();
    metrics::histogram!(m::STAGE_DURATION_SECONDS, "stage" => name).record(took.as_secs_f64());
    metrics::histogram!(m::STAGE_CANDIDATES_OUT, "stage" => name).record(n_out as f64);
    reports.push(StageReport {
        name,
        candidates_in: n_in,
        candidates_out: n_out,
        micros: took.as_micros() as u64,
    });
}

/// UTC hour (0–23) and weekday (0–6, Monday = 0) of `t`.
pub fn utc_hour_weekday(t: SystemTime) -> (u8, u8) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hour = (secs / 3600 % 24) as u8;
    // 1970-01-01 was a Thursday (3 with Monday = 0).
    let weekday = ((secs / 86_400 + 3) % 7) as u8;
    (hour, weekday)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_hour_and_weekday() {
        // 2026-11-29 (a Sunday) 21:30 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(1_795_987_800);
        assert_eq!(utc_hour_weekday(t), (21, 6));
        assert_eq!(utc_hour_weekday(UNIX_EPOCH), (0, 3));
    }
}
