//! Running a request through the cascade: retrieve, the rules, the model
//! stages under the deadline, select; the fallbacks when a stage cannot
//! run; the response cache in front and the score cache beside the
//! re-ranker; the shadows offered each stage's inputs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::cache::{CacheKey, Uncached};
use super::plan::{ArmMetrics, Plan, Shadowing};
use super::request::{Fallback, RankResponse, ScoredItem, Stage, StageReport, ValidRequest};
use super::score_cache::{self, ScoreKey};
use super::shadow::ShadowJob;
use super::stages::{self, StageError, StageModel};
use super::{Pipeline, RankError, Scored};
use crate::catalog::Catalog;
use crate::config::OnOverload;
use crate::data::features::Subject;
use crate::events::online::Trending;
use crate::model::executor::InferencePool;
use crate::model::Registry;

impl Pipeline {
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
        let arm = plan.metrics.clone();
        let (experiment, variant) = (plan.experiment, plan.variant.clone());
        let user_id = req.user_id.clone();
        // Sampled into the ranking log: the stages keep what they read.
        let logged = self
            .feedback
            .sampled(&req.request_id)
            .then(|| (self.context_values(&subject), now_ms()));
        let capture = logged.is_some();
        let trending = self.trending_for(&req, &subject);
        let result = match self.cache.as_ref().filter(|_| !req.debug) {
            None => self.rank_for(subject, plan, req, trending, capture).await,
            Some(cache) => {
                let (live, user_held) = self.live_key(&plan, &req, &subject, trending.as_deref());
                let key = CacheKey::new(
                    &plan.variant,
                    plan.versions(),
                    &req,
                    &subject,
                    subject.user.is_some() || user_held,
                    live,
                );
                let request_id = req.request_id.clone();
                match cache
                    .get_or_compute(key, self.rank_for(subject, plan, req, trending, capture))
                    .await
                {
                    Ok((mut response, hit)) => {
                        response.request_id = request_id;
                        response.cached = hit;
                        // Fallbacks count answers served: a cached cold-start answer is one.
                        if hit && response.fallback == Some(Fallback::ColdStart) {
                            arm.fallback(Fallback::ColdStart);
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
        arm.answered(
            result.as_ref().ok().and_then(|r| r.fallback),
            result.is_err(),
            started.elapsed().as_secs_f64(),
        );
        // Shown: kept for the outcomes that may name it, counted for its
        // arm, and (sampled) logged with what its stages read.
        if let Ok(r) = &result {
            if let Some((context, ts_ms)) = logged {
                self.feedback
                    .log_ranking(crate::feedback::log::RankingRecord {
                        request_id: r.request_id.clone(),
                        ts_ms,
                        user_id: user_id.clone(),
                        context,
                        variant: variant.clone(),
                        models: r.models.clone(),
                        fallback: r.fallback.map(Fallback::as_str),
                        cached: r.cached,
                        items: r
                            .items
                            .iter()
                            .map(|i| (i.item_id.clone(), i.score))
                            .collect(),
                        served: r.served.clone(),
                    });
            }
            let models: Vec<&str> = r.models.values().filter_map(Value::as_str).collect();
            self.feedback.answered(
                crate::feedback::answer(
                    &r.request_id,
                    variant,
                    models.join(",").into(),
                    experiment,
                    &r.rows,
                ),
                user_id.as_deref(),
            );
        }
        result
    }

    /// Ranks without the cache.
    pub async fn rank(
        &self,
        registry: &Registry,
        pool: &InferencePool,
        req: ValidRequest,
    ) -> Result<RankResponse, RankError> {
        self.rank_at(registry, pool, req, std::time::SystemTime::now())
            .await
    }

    /// Ranks without the cache as of `now`: context defaults and the
    /// windows of live counters read that time (offline replay).
    pub async fn rank_at(
        &self,
        registry: &Registry,
        _pool: &InferencePool,
        req: ValidRequest,
        now: std::time::SystemTime,
    ) -> Result<RankResponse, RankError> {
        let subject = self.subject_at(&req, now);
        let plan = self.plan(registry, &req, &subject);
        let trending = self.trending_for(&req, &subject);
        self.rank_for(subject, plan, req, trending, false).await
    }

    /// The trending list, for a request that may retrieve from it: one
    /// without candidates, from a cold-start user or — when the schema's
    /// `trending` sets `with_embedding` — from anyone.
    fn trending_for(&self, req: &ValidRequest, subject: &Subject) -> Option<Arc<Trending>> {
        let retrieval = &self.schema().retrieval;
        let window = retrieval.trending?;
        (req.candidates.is_none()
            && (subject.user.is_none() || retrieval.trending_with_embedding > 0))
            .then(|| self.online.trending(window, subject.now_ms))
    }

    /// What of live state a cached answer depends on, beyond the request:
    /// availability and the user's own events always; every item's live
    /// state and the clock's bucket when a stage model or a rule reads
    /// counters; the trending list it retrieved from. Also whether the
    /// view holds anything of the request's user: then the answer is
    /// theirs alone (their history seeds retrieval and is never offered
    /// back), even when the catalog does not know them.
    fn live_key(
        &self,
        plan: &Plan,
        req: &ValidRequest,
        subject: &Subject,
        trending: Option<&Trending>,
    ) -> ([u64; 5], bool) {
        let versions = self.online.versions(req.user_id.as_deref());
        let rules = self.rules.live_reads();
        let models = [&plan.filter, &plan.rerank]
            .into_iter()
            .flatten()
            .flatten()
            .map(|m| &m.features().live);
        let item = rules.item || models.clone().any(|r| r.item);
        let counters = rules
            .counters
            .iter()
            .chain(models.flat_map(|r| &r.counters));
        let trending = trending.map_or((0, 0), |t| t.key);
        let live = [
            versions.availability,
            versions.user,
            if item { versions.items } else { 0 },
            self.online.time_key(counters, subject.now_ms),
            trending.0 ^ (trending.1 as u64).rotate_left(32),
        ];
        (live, versions.user_held)
    }

    /// The cascade for one request; with `capture`, each stage's rows,
    /// scores and feature matrix are kept for the ranking log.
    async fn rank_for(
        &self,
        subject: Subject,
        plan: Plan,
        req: ValidRequest,
        trending: Option<Arc<Trending>>,
        capture: bool,
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
        let mut captured: Vec<Captured> = Vec::new();
        let variant = plan.variant.clone();
        let arm = plan.metrics.clone();
        let mut fallback = if subject.user.is_none() {
            Some(Fallback::ColdStart)
        } else {
            None
        };

        // 1. retrieve
        let t = Instant::now();
        // Never an excluded item, nor one an event made unavailable.
        let unavailable = self.online.unavailable();
        // What the user did since the snapshot (events), newest first.
        let history = req
            .user_id
            .as_deref()
            .map(|u| self.online.history(u))
            .unwrap_or_default();
        // Taken after reading the view: every row the view held is in it
        // (rows only grow, and a generation is published before the events
        // that use its rows are applied).
        let catalog = self.catalog();
        let catalog = &*catalog;
        // The request's session: what a cold-start query searches with and
        // what `session.*` features read, computed once.
        let mut subject = subject;
        let session = stages::session_rows(catalog, &subject, &req.recent_items, &history);
        subject.session = stages::session_vector(catalog, &session);
        let excluded: HashSet<u32> = req
            .exclude
            .iter()
            .filter_map(|id| catalog.items.row(id))
            .chain(unavailable)
            .collect();
        let mut current: Scored = match &req.candidates {
            Some(ids) => stages::caller_candidates(catalog, &subject, ids, &excluded),
            None => stages::retrieve(
                catalog,
                &subject,
                &session,
                &stages::Retrieval {
                    index: self.index.as_ref(),
                    history: &history,
                    trending: trending.as_deref(),
                    trending_with_embedding: self.schema().retrieval.trending_with_embedding,
                    excluded: &excluded,
                    n: plan.retrieve_n,
                    exclude_seen: self.config.exclude_seen,
                },
            ),
        };
        let asked = req.candidates.as_ref().map_or(plan.retrieve_n, Vec::len);
        report(&mut reports, &arm, Stage::Retrieve, asked, current.len(), t);
        if self.rules.has_drop() {
            let t = Instant::now();
            let n_in = current.len();
            let reads = self.rules.live_reads();
            if reads.item || reads.user {
                self.online.read(|view| {
                    self.rules
                        .drop_candidates(catalog, Some(view), &subject, &mut current)
                });
            } else {
                self.rules
                    .drop_candidates(catalog, None, &subject, &mut current);
            }
            report(&mut reports, &arm, Stage::Rules, n_in, current.len(), t);
        }
        if current.is_empty() {
            return Ok(self.respond(
                catalog, req, &variant, &arm, current, models, fallback, reports, captured,
            ));
        }

        // 2. filter (known users only), 3. rerank
        let stage_plan = [
            (
                Stage::Filter,
                plan.filter,
                Some(plan.filter_keep),
                plan.filter_shadows,
            ),
            (Stage::Rerank, plan.rerank, None, plan.rerank_shadows),
        ];
        for (stage, model, keep, shadows) in stage_plan {
            let Some(model) = model else { continue };
            let t = Instant::now();
            let rows: Vec<u32> = current.iter().map(|(r, _)| *r).collect();
            let scored = match &model {
                Err(e) => Err(StageError::Model(e.clone())),
                Ok(model) => {
                    self.score_stage(
                        catalog,
                        model,
                        stage == Stage::Rerank,
                        &subject,
                        &rows,
                        deadline,
                        !shadows.is_empty() || capture,
                    )
                    .await
                }
            };
            match scored {
                Ok(mut out) => {
                    let model = model.as_ref().expect("it scored, so it resolved");
                    let n_in = current.len();
                    if capture {
                        if let Some(matrix) = &out.matrix {
                            let (label, names) = model.logged();
                            captured.push(Captured {
                                key: model_key(stage, subject.user.is_some()),
                                model: label,
                                names,
                                rows: rows.clone(),
                                scores: out.scores.clone(),
                                matrix: if shadows.is_empty() {
                                    out.matrix.take().unwrap_or_default()
                                } else {
                                    matrix.clone()
                                },
                            });
                        }
                    }
                    if let Some(matrix) = out.matrix.filter(|_| !shadows.is_empty()) {
                        let k = keep.unwrap_or(req.k);
                        self.offer_shadows(
                            catalog,
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
                    stages::top_scored(&mut current, keep.unwrap_or(usize::MAX));
                    models.insert(
                        model_key(stage, subject.user.is_some()).into(),
                        model.label().into(),
                    );
                    report(&mut reports, &arm, stage, n_in, current.len(), t);
                }
                Err(e) => {
                    let reason = match e {
                        StageError::Deadline => Fallback::Deadline,
                        StageError::Overload if self.config.on_overload == OnOverload::Reject => {
                            arm.fallback(Fallback::Overload);
                            return Err(RankError::Overloaded);
                        }
                        StageError::Overload => Fallback::Overload,
                        StageError::Model(msg) => {
                            // A broken model fails every request: one line
                            // per stage and model every 10 s, not one per request.
                            let who = model.as_ref().map_or(msg.as_str(), |m| m.label());
                            if let Some(suppressed) = crate::telemetry::throttle(
                                &format!("stage failed:{}:{who}", stage.as_str()),
                                Duration::from_secs(10),
                            ) {
                                tracing::warn!(stage = stage.as_str(), model = who, error = %msg, suppressed, "stage failed; answering from the previous stage");
                            }
                            Fallback::ModelError
                        }
                    };
                    arm.fallback(reason);
                    // A cold-start answer stays marked cold_start.
                    if fallback.is_none() {
                        fallback = Some(reason);
                    }
                    report(&mut reports, &arm, stage, current.len(), current.len(), t);
                    break;
                }
            }
        }
        if fallback == Some(Fallback::ColdStart) {
            arm.fallback(Fallback::ColdStart);
        }
        Ok(self.respond(
            catalog, req, &variant, &arm, current, models, fallback, reports, captured,
        ))
    }

    /// Scores one stage's rows. Re-rank rows go through the model's batcher
    /// and, for known users, the score cache: only rows it does not hold are
    /// scored. A request that keeps its matrix for shadows scores every row
    /// (the shadow needs them all), so it bypasses the cache.
    #[allow(clippy::too_many_arguments)]
    async fn score_stage(
        &self,
        catalog: &Catalog,
        model: &StageModel,
        rerank: bool,
        subject: &Subject,
        rows: &[u32],
        deadline: Instant,
        keep_matrix: bool,
    ) -> Result<stages::StageScores, StageError> {
        let batcher = if rerank { self.batcher(model) } else { None };
        let reads = &model.features().live;
        let cached = self
            .score_cache
            .as_ref()
            // A session's scores are the request's own: no key holds it.
            .filter(|_| rerank && !keep_matrix && !model.features().reads_session)
            .zip(subject.user.map(|user| ScoreKey {
                model: model.id(),
                user,
                context: score_cache::context_key(&subject.ctx, &model.features().context_reads),
                // The user's own events, and the clock's bucket for
                // windows, when the features read them; the user's catalog
                // fields once events change users.
                live: {
                    let versions = (reads.user || catalog.users.delta_len() > 0)
                        .then(|| self.online.versions(subject.user_id.as_deref()));
                    versions.map_or(0, |v| {
                        (if reads.user { v.user } else { 0 }) ^ v.user_fields.rotate_left(32)
                    }) ^ self.online.time_key(&reads.counters, subject.now_ms)
                },
            }));
        let Some((cache, key)) = cached else {
            return model
                .score(
                    catalog,
                    &self.online,
                    batcher.as_ref(),
                    &self.pool,
                    subject,
                    rows,
                    deadline,
                    keep_matrix,
                )
                .await;
        };
        // Each item's live-state stamp, read before scoring: a score is
        // never stored under a stamp newer than the state it saw. Stamps
        // also move when an event changes an item's fields.
        let stamps: Vec<u32> = if reads.item || catalog.items.delta_len() > 0 {
            self.online
                .read(|view| rows.iter().map(|&r| view.stamp(r)).collect())
        } else {
            Vec::new()
        };
        let (known, missing, missing_stamps) = cache.lookup(key, rows, &stamps);
        let fresh = if missing.is_empty() {
            Vec::new()
        } else {
            model
                .score(
                    catalog,
                    &self.online,
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
        // Stamps and versions read after this request took its catalog may
        // already cover a newer generation than the one it scored with:
        // those scores are not kept.
        if self.online.generation() == catalog.generation {
            cache.insert(key, &missing, &fresh, &missing_stamps);
        }
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
        catalog: &Catalog,
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
        for (shadow, model) in shadows {
            let model = match model {
                Ok(m) => m,
                Err(e) => {
                    self.shadow.error(&shadow, &e);
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
                stages::assemble(
                    model.features(),
                    catalog,
                    &self.online,
                    subject,
                    rows,
                    &mut own,
                    &mut missing,
                );
                own
            };
            self.shadow.offer(ShadowJob {
                stage: shadow.spec.stage,
                shadow,
                model,
                live_model: live.label().to_string(),
                matrix,
                live_scores: scores.to_vec(),
                k,
                variant: variant.clone(),
                request_id: request_id.to_string(),
                enqueued: Instant::now(),
                rows: rows.to_vec(),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        catalog: &Catalog,
        req: ValidRequest,
        variant: &str,
        arm: &ArmMetrics,
        mut current: Scored,
        models: Map<String, Value>,
        fallback: Option<Fallback>,
        mut reports: Vec<StageReport>,
        captured: Vec<Captured>,
    ) -> RankResponse {
        let t = Instant::now();
        let n_in = current.len();
        if self.rules.takes_the_first() {
            // Only the first k are answered: select them, sort only them.
            stages::top_scored(&mut current, req.k);
        } else {
            stages::sort_scored(&mut current);
        }
        self.rules.select(catalog, &mut current, req.k);
        report(&mut reports, arm, Stage::Select, n_in, current.len(), t);
        let rows: Vec<u32> = current.iter().map(|(row, _)| *row).collect();
        let served = (!captured.is_empty()).then(|| Arc::new(served(captured, &rows)));
        RankResponse {
            request_id: req.request_id,
            rows,
            served,
            items: current
                .into_iter()
                .map(|(row, score)| ScoredItem {
                    item_id: catalog.item_id(row).to_string(),
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
}

/// One stage's rows, scores and feature matrix, kept for the ranking log.
struct Captured {
    key: &'static str,
    model: Arc<str>,
    names: Arc<[String]>,
    rows: Vec<u32>,
    scores: Vec<f32>,
    /// `[rows, names.len()]`.
    matrix: Vec<f32>,
}

/// What each captured stage scored and read for the shown `rows`.
fn served(captured: Vec<Captured>, rows: &[u32]) -> crate::feedback::log::Served {
    let stages = captured
        .into_iter()
        .map(|c| {
            // A few shown items among a few hundred rows: a scan is
            // cheaper than building a map.
            let found: Vec<Option<usize>> = if rows.len() * c.rows.len() <= 1 << 14 {
                rows.iter()
                    .map(|r| c.rows.iter().position(|x| x == r))
                    .collect()
            } else {
                let at: std::collections::HashMap<u32, usize> =
                    c.rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
                rows.iter().map(|r| at.get(r).copied()).collect()
            };
            let width = c.names.len();
            crate::feedback::log::StageServed {
                key: c.key,
                scores: found.iter().map(|i| i.map(|i| c.scores[i])).collect(),
                rows: found
                    .iter()
                    .map(|i| {
                        i.and_then(|i| c.matrix.get(i * width..(i + 1) * width).map(Into::into))
                    })
                    .collect(),
                model: c.model,
                names: c.names,
            }
        })
        .collect();
    crate::feedback::log::Served { stages }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Which stage model an answer's `models` names: `filter`, or for the
/// re-rank stage `ranker` (known users) or `cold_start`.
fn model_key(stage: Stage, known: bool) -> &'static str {
    match (stage, known) {
        (Stage::Rerank, true) => "ranker",
        (Stage::Rerank, false) => "cold_start",
        (other, _) => other.as_str(),
    }
}

fn report(
    reports: &mut Vec<StageReport>,
    arm: &ArmMetrics,
    name: Stage,
    n_in: usize,
    n_out: usize,
    t: Instant,
) {
    let took = t.elapsed();
    arm.stage(name, took.as_secs_f64(), n_out);
    reports.push(StageReport {
        name,
        candidates_in: n_in,
        candidates_out: n_out,
        micros: took.as_micros() as u64,
    });
}
