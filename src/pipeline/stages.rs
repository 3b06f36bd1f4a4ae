//! The stage implementations: candidate generation and model scoring.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::catalog::index::RowSet;
use crate::catalog::{index, Catalog, VectorIndex};
use crate::data::features::{FeatureSet, Sources, Subject};
use crate::events::online::{Online, Trending};
use crate::model::batcher::{BatchError, Batcher};
use crate::model::executor::InferencePool;
use crate::model::{LoadedModel, Tensor, TensorData};
use crate::telemetry::drift::{DriftMonitor, MonitoringConfig};
use crate::telemetry::metrics as m;

/// Sort by score descending, ties by item row ascending (deterministic).
pub fn sort_scored(v: &mut Vec<(u32, f32)>) {
    index::top_scored(v, usize::MAX);
}

/// The `keep` best by score, sorted as [`sort_scored`] does.
pub fn top_scored(v: &mut Vec<(u32, f32)>, keep: usize) {
    index::top_scored(v, keep);
}

/// The caller's candidates: known ids only (unknown ones are counted),
/// first occurrence of each, none excluded. The score is the retrieval
/// similarity for a known user and popularity otherwise, so that even an
/// answer no model could score is ordered sensibly.
pub fn caller_candidates(
    catalog: &Catalog,
    subject: &Subject,
    ids: &[String],
    excluded: &HashSet<u32>,
) -> Vec<(u32, f32)> {
    let mut seen = HashSet::with_capacity(ids.len());
    let mut unknown = 0u64;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match catalog.items.row(id) {
            None => unknown += 1,
            Some(row) if !excluded.contains(&row) && seen.insert(row) => {
                out.push((row, base_score(catalog, subject, row)))
            }
            Some(_) => {}
        }
    }
    if unknown > 0 {
        metrics::counter!(m::UNKNOWN_CANDIDATES_TOTAL).increment(unknown);
    }
    out
}

fn base_score(catalog: &Catalog, subject: &Subject, row: u32) -> f32 {
    match subject.user {
        Some(u) if catalog.dim() > 0 => {
            index::dot(catalog.user_vector(u), catalog.item_vector(row))
        }
        _ => catalog.popularity(row),
    }
}

/// Items of a cold-start user's event history that seed retrieval when the
/// request names no `recent_items`.
const RECENT_FROM_HISTORY: usize = 10;

/// The request's session: its `recent_items` in the catalog or, for a
/// cold-start user without any, the latest of their event `history`.
pub fn session_rows(
    catalog: &Catalog,
    subject: &Subject,
    recent_items: &[String],
    history: &[u32],
) -> Vec<u32> {
    let mut recent: Vec<u32> = recent_items
        .iter()
        .filter_map(|id| catalog.items.row(id))
        .collect();
    if recent.is_empty() && subject.user.is_none() {
        recent.extend(history.iter().take(RECENT_FROM_HISTORY));
    }
    recent
}

/// The mean of `rows`' retrieval vectors — a cold-start query, and
/// `session.*` for features — with the augmentation coordinate zeroed when
/// the schema declares one (`item_vector_augmented`); `None` without rows
/// or vectors.
pub fn session_vector(catalog: &Catalog, rows: &[u32]) -> Option<Vec<f32>> {
    if rows.is_empty() || catalog.dim() == 0 {
        return None;
    }
    let mut mean = vec![0f32; catalog.dim()];
    for &r in rows {
        for (m, x) in mean.iter_mut().zip(catalog.item_vector(r)) {
            *m += x;
        }
    }
    let n = rows.len() as f32;
    for m in &mut mean {
        *m /= n;
    }
    if catalog.schema.retrieval.item_vector_augmented {
        if let Some(last) = mean.last_mut() {
            *last = 0.0;
        }
    }
    Some(mean)
}

/// What retrieval reads besides the catalog and the request.
pub struct Retrieval<'a> {
    pub index: &'a dyn VectorIndex,
    /// What the user did since the snapshot (events), newest first.
    pub history: &'a [u32],
    /// The most-counted items of `[retrieval] trending`, when declared.
    pub trending: Option<&'a Trending>,
    /// How many trending items an embedding retrieval adds to what it
    /// found.
    pub trending_with_embedding: usize,
    pub excluded: &'a HashSet<u32>,
    pub n: usize,
    pub exclude_seen: bool,
}

/// Retrieval for a known user (their embedding), a cold-start user with
/// recent items (the mean of those items' embeddings, an augmentation
/// coordinate zeroed; without any in the request, the latest of their event
/// `history`) — either then adds the first `trending_with_embedding`
/// trending items it did not find — or anyone else (the
/// trending list from live counters, then the popularity list). Returns up
/// to `n` items, never an excluded one, never one the user has already
/// seen — in the snapshot or since, by events — (when `exclude_seen`),
/// never a recent item.
///
/// `recent` is the request's session ([`session_rows`]); a cold-start
/// query is its vector, `subject.session` ([`session_vector`]).
pub fn retrieve(
    catalog: &Catalog,
    subject: &Subject,
    recent: &[u32],
    r: &Retrieval<'_>,
) -> Vec<(u32, f32)> {
    let (index, history, excluded, n) = (r.index, r.history, r.excluded, r.n);
    let query: Option<&[f32]> = match subject.user {
        Some(u) if !catalog.user_vector(u).is_empty() => Some(catalog.user_vector(u)),
        None => subject.session.as_deref(),
        _ => None,
    };
    let seen: &[u32] = match subject.user {
        Some(u) if r.exclude_seen => catalog.seen(u),
        _ => &[],
    };
    let since: &[u32] = if r.exclude_seen { history } else { &[] };
    // Every row to skip, as one bit each: the index asks about each row it
    // considers.
    let mut skipped: Vec<u32> =
        Vec::with_capacity(seen.len() + since.len() + recent.len() + excluded.len());
    skipped.extend_from_slice(seen);
    skipped.extend_from_slice(since);
    skipped.extend_from_slice(recent);
    skipped.extend(excluded.iter());
    RowSet::with(&skipped, |set| {
        let skip = |row: u32| set.contains(row);
        if let Some(q) = query {
            match search(catalog, index, q, n, &skip) {
                Ok(mut found) => {
                    add_trending(&mut found, r.trending, r.trending_with_embedding, &skip);
                    return found;
                }
                // e.g. recent items whose embeddings cancel out: fall
                // through to popularity rather than fail the request.
                Err(e) => {
                    tracing::debug!(error = %e, "embedding retrieval not possible; using popularity")
                }
            }
        }
        by_popularity(catalog, r.trending, n, &skip)
    })
}

/// Makes the candidates the union of what the embedding `found` and the
/// first `take` trending items not skipped: those it did not find are
/// appended in trending order, scored below every similarity (-2, -3, …).
/// What is popular right now reaches the filter even when the user's
/// embedding points elsewhere.
fn add_trending(
    found: &mut Vec<(u32, f32)>,
    trending: Option<&Trending>,
    take: usize,
    skip: &dyn Fn(u32) -> bool,
) {
    let Some(trending) = trending.filter(|_| take > 0) else {
        return;
    };
    let mut extra: Vec<u32> = trending
        .rows
        .iter()
        .map(|&(row, _)| row)
        .filter(|&row| !skip(row))
        .take(take)
        .collect();
    if extra.is_empty() {
        // No traffic counted yet: nothing to add, nothing to hash.
        return;
    }
    // At most `take` extras against a few hundred found: the extras, sorted,
    // are probed by each found row, and the ones found are struck out.
    let mut sorted = extra.clone();
    sorted.sort_unstable();
    let mut struck = vec![false; sorted.len()];
    for &(row, _) in found.iter() {
        if let Ok(i) = sorted.binary_search(&row) {
            struck[i] = true;
        }
    }
    extra.retain(|row| sorted.binary_search(row).map_or(true, |i| !struck[i]));
    found.extend(
        extra
            .into_iter()
            .enumerate()
            .map(|(i, row)| (row, -2.0 - i as f32)),
    );
}

/// What is counted most right now first, scored by its count (above any
/// static popularity), then the snapshot's popularity order.
fn by_popularity(
    catalog: &Catalog,
    trending: Option<&Trending>,
    n: usize,
    skip: &dyn Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    let trending = trending.map_or(&[][..], |t| &t.rows[..]);
    let mut out: Vec<(u32, f32)> = trending
        .iter()
        .filter(|&&(row, _)| !skip(row))
        .take(n)
        .map(|&(row, count)| (row, count as f32))
        .collect();
    if out.len() < n {
        let taken: HashSet<u32> = out.iter().map(|(row, _)| *row).collect();
        let after_trending = !out.is_empty();
        let rest = catalog
            .popular
            .iter()
            .copied()
            .filter(|&row| !skip(row) && !taken.contains(&row))
            .take(n - out.len());
        // Below every trending item, in popularity order, whatever the
        // popularity field's scale.
        out.extend(rest.enumerate().map(|(i, row)| {
            let score = if after_trending {
                -1.0 - i as f32
            } else {
                catalog.popularity(row)
            };
            (row, score)
        }));
    }
    out
}

/// Top `n` by cosine similarity to `query`: the index over the snapshot's
/// vectors, and an exact scan of the rows whose vectors events set (the
/// delta segment; the index's copy of those rows is skipped).
pub fn search(
    catalog: &Catalog,
    index: &dyn VectorIndex,
    query: &[f32],
    n: usize,
    skip: &dyn Fn(u32) -> bool,
) -> Result<Vec<(u32, f32)>, crate::catalog::CatalogError> {
    let (rows, units) = catalog.items.delta_segment();
    index::search_with_segment(index, query, n, skip, rows, units)
}

/// `features` for `rows`, reading live state (under one read of the view)
/// only when a feature asks for it.
pub fn assemble(
    features: &FeatureSet,
    catalog: &Catalog,
    online: &Online,
    subject: &Subject,
    rows: &[u32],
    out: &mut Vec<f32>,
    missing: &mut [u32],
) {
    if features.live.item || features.live.user {
        online.read(|view| {
            let src = Sources {
                live: Some(view),
                ..catalog.sources()
            };
            features.assemble(&src, subject, rows, out, missing)
        })
    } else {
        features.assemble(&catalog.sources(), subject, rows, out, missing)
    }
}

/// Why a scoring stage produced nothing.
#[derive(Debug)]
pub enum StageError {
    /// The remaining budget cannot cover the stage, or it ran out.
    Deadline,
    /// The model's batch queue is full.
    Overload,
    Model(String),
}

/// One model version prepared for a pipeline stage: its features compiled
/// against the catalog, its drift monitor, and a running estimate of what a
/// call costs, to skip calls that cannot fit the deadline. Prepared once
/// per version, so a reload that changes the features gets its own.
pub struct StageModel {
    /// Unique per prepared version in this process (score cache keys).
    id: u32,
    model: Arc<LoadedModel>,
    label: String,
    /// `label` and the feature names, shared by every ranking-log record.
    logged: (Arc<str>, Arc<[String]>),
    features: FeatureSet,
    /// Feature and score distributions against the version's profile.
    drift: Option<DriftMonitor>,
    cost: CostEstimate,
    feature_metrics: FeatureMetrics,
}

/// A stage model's feature metric handles, each registered on first use.
struct FeatureMetrics {
    rows: std::sync::OnceLock<metrics::Counter>,
    /// Per feature, in input order.
    defaulted: Vec<std::sync::OnceLock<metrics::Counter>>,
}

/// What a model call costs: an exponentially weighted mean of recent call
/// durations (µs), to skip calls that cannot fit what is left of a deadline.
#[derive(Default)]
pub struct CostEstimate(AtomicU64);

impl CostEstimate {
    /// Whether a call is expected to finish within `remaining_us`. Skipped
    /// calls never measure, so a skip also shrinks the estimate by 1/16:
    /// else one burst of slow calls (an overload) would keep the stage
    /// skipped long after it is fast again. A probe soon goes through.
    pub fn fits(&self, remaining_us: u64) -> bool {
        let estimate = self.0.load(Ordering::Relaxed);
        if remaining_us > estimate {
            return true;
        }
        self.0.store(
            estimate.saturating_sub(estimate / 16 + 1),
            Ordering::Relaxed,
        );
        false
    }

    pub fn record(&self, took_us: u64) {
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == 0 {
            took_us
        } else {
            (old * 7 + took_us) / 8
        };
        self.0.store(new, Ordering::Relaxed);
    }
}

/// What a scoring call produced.
pub struct StageScores {
    pub scores: Vec<f32>,
    /// The feature matrix the model saw, when the caller asked to keep it.
    pub matrix: Option<Vec<f32>>,
}

/// What a stage needs of one model version beyond the model: its features
/// compiled against the catalog and its drift monitor. Made when the
/// version loads (the registry's version check), before it can serve, so
/// that no request compiles features or reads a file.
pub struct Compiled {
    features: FeatureSet,
    drift: Option<DriftMonitor>,
}

impl Compiled {
    /// Compiles `model`'s declared features against `catalog` (an error
    /// names the feature); `profile` is its `profile.json`, if any.
    pub fn new(
        model: &LoadedModel,
        catalog: &Catalog,
        profile: Option<&str>,
        monitoring: &MonitoringConfig,
    ) -> Result<Compiled, String> {
        let input = model
            .spec
            .input
            .as_ref()
            .ok_or_else(|| format!("model \"{}\" declares no [input] features", model.name))?;
        let features = FeatureSet::compile(&input.features, &catalog.tables())?;
        let drift = profile.and_then(|text| {
            DriftMonitor::new(&model.name, &features.names, text, monitoring)
                .map_err(|e| tracing::warn!(model = %model.name, version = model.version, error = %e, "profile.json unreadable; drift not monitored"))
                .ok()
        });
        Ok(Compiled { features, drift })
    }
}

impl StageModel {
    /// `model` with what [`Compiled::new`] made of it.
    pub fn from_compiled(
        model: Arc<LoadedModel>,
        compiled: Compiled,
    ) -> Result<StageModel, String> {
        if model.spec.output.is_none() {
            return Err(format!(
                "model \"{}\" declares no [output] score",
                model.name
            ));
        }
        let Compiled { features, drift } = compiled;
        let feature_metrics = FeatureMetrics {
            rows: std::sync::OnceLock::new(),
            defaulted: features.names.iter().map(|_| Default::default()).collect(),
        };
        static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let label = format!("{}@{}", model.name, model.version);
        Ok(StageModel {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            logged: (label.as_str().into(), features.names.as_slice().into()),
            label,
            model,
            features,
            feature_metrics,
            drift,
            cost: CostEstimate::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.model.name
    }

    /// Its label and feature names, as the ranking log records them.
    pub fn logged(&self) -> (Arc<str>, Arc<[String]>) {
        (self.logged.0.clone(), self.logged.1.clone())
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// `name@version`.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    pub fn features(&self) -> &FeatureSet {
        &self.features
    }

    /// Scores `rows` for `subject`, through `batcher` when given.
    #[allow(clippy::too_many_arguments)]
    pub async fn score(
        &self,
        catalog: &Catalog,
        online: &Online,
        batcher: Option<&Batcher>,
        pool: &InferencePool,
        subject: &Subject,
        rows: &[u32],
        deadline: Instant,
        keep_matrix: bool,
    ) -> Result<StageScores, StageError> {
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Err(StageError::Deadline);
        }
        if !self.cost.fits(remaining.as_micros() as u64) {
            return Err(StageError::Deadline);
        }
        let model = &self.model;
        let (Some(input), Some(output)) = (&model.spec.input, &model.spec.output) else {
            return Err(StageError::Model(
                "model has no feature input / score output".into(),
            ));
        };
        let width = self.features.width();
        let mut matrix = Vec::new();
        let mut missing = vec![0u32; width];
        assemble(
            &self.features,
            catalog,
            online,
            subject,
            rows,
            &mut matrix,
            &mut missing,
        );
        for (j, &n) in missing.iter().enumerate() {
            if n > 0 {
                self.feature_metrics.defaulted[j]
                    .get_or_init(|| {
                        metrics::counter!(
                            m::FEATURE_DEFAULTED_TOTAL,
                            "model" => model.name.clone(), "feature" => self.features.names[j].clone()
                        )
                    })
                    .increment(n as u64);
            }
        }
        self.feature_metrics
            .rows
            .get_or_init(|| metrics::counter!(m::FEATURE_ROWS_TOTAL, "model" => model.name.clone()))
            .increment(rows.len() as u64);
        // A sampled request keeps a copy of its rows for drift monitoring,
        // and one for the shadows when asked.
        let observe = self.drift.as_ref().filter(|d| d.sample());
        let kept = (keep_matrix || observe.is_some()).then(|| matrix.clone());
        let scores = match batcher {
            Some(batcher) => {
                let run = batcher.score(
                    model.clone(),
                    matrix,
                    rows.len(),
                    tokio::time::Instant::from_std(deadline),
                );
                match tokio::time::timeout(remaining, run).await {
                    Err(_) | Ok(Err(BatchError::Deadline)) => return Err(StageError::Deadline),
                    Ok(Err(BatchError::Overloaded)) => return Err(StageError::Overload),
                    Ok(Err(e)) => return Err(StageError::Model(e.to_string())),
                    Ok(Ok(scored)) => scored.scores,
                }
            }
            None => {
                let tensor = Tensor::new(
                    input.name.clone(),
                    vec![rows.len(), width],
                    TensorData::F32(matrix),
                );
                let run = pool.run(model.clone(), vec![tensor]);
                let outputs = match tokio::time::timeout(remaining, run).await {
                    Err(_) => return Err(StageError::Deadline),
                    Ok(Err(e)) => return Err(StageError::Model(e.to_string())),
                    Ok(Ok(o)) => o,
                };
                scores_from(outputs, &output.name, rows.len()).map_err(StageError::Model)?
            }
        };
        self.cost.record(now.elapsed().as_micros() as u64);
        if scores.iter().any(|s| !s.is_finite()) {
            return Err(StageError::Model(
                "model produced a non-finite score".into(),
            ));
        }
        if let (Some(drift), Some(m)) = (observe, &kept) {
            drift.observe(m, &scores);
        }
        Ok(StageScores {
            scores,
            matrix: if keep_matrix { kept } else { None },
        })
    }
}

/// The `output` tensor of a scoring model's answer as one score per row.
pub fn scores_from(outputs: Vec<Tensor>, output: &str, rows: usize) -> Result<Vec<f32>, String> {
    match outputs
        .into_iter()
        .find(|t| t.name == output)
        .map(|t| t.data)
    {
        Some(TensorData::F32(scores)) if scores.len() == rows => Ok(scores),
        _ => Err(format!(
            "output \"{output}\" missing or not one FP32 score per row"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::CostEstimate;

    #[test]
    fn a_slow_burst_does_not_skip_a_stage_forever() {
        let cost = CostEstimate::default();
        assert!(cost.fits(1), "no estimate yet: try");
        cost.record(80_000); // one call slowed by an overload: 80 ms
        assert!(!cost.fits(49_000));
        // The stage is fast again, but skipped calls do not measure: the
        // estimate still has to come down by itself.
        let skips = (0..100).take_while(|_| !cost.fits(49_000)).count();
        assert!(skips < 20, "{skips} skips before a probe");
        cost.record(300);
        assert!(cost.fits(49_000));
        assert!(!CostEstimate::default().fits(0), "no time left: skip");
    }

    /// Trending rows the embedding did not find are appended in trending
    /// order below every similarity; found and skipped rows are not.
    #[test]
    fn trending_rows_are_added_once_in_their_order() {
        use crate::events::online::Trending;
        let trending = Trending {
            key: (0, 0),
            rows: vec![(9, 50), (4, 40), (7, 30), (2, 20), (8, 10), (5, 5)],
        };
        let mut found = vec![(4, 0.9), (1, 0.5), (8, 0.1)];
        // Row 7 is skipped (seen); take the first 5 not skipped: 9 4 2 8 5.
        super::add_trending(&mut found, Some(&trending), 5, &|row| row == 7);
        assert_eq!(
            found,
            vec![
                (4, 0.9),
                (1, 0.5),
                (8, 0.1),
                (9, -2.0),
                (2, -3.0),
                (5, -4.0)
            ]
        );
        let mut none = vec![(3, 0.2)];
        super::add_trending(
            &mut none,
            Some(&Trending {
                key: (0, 0),
                rows: vec![],
            }),
            5,
            &|_| false,
        );
        super::add_trending(&mut none, Some(&trending), 0, &|_| false);
        assert_eq!(none, vec![(3, 0.2)]);
    }

    /// The index plus the delta segment answers exactly what one exact
    /// scan over the changed catalog's vectors answers.
    #[test]
    fn the_delta_segment_is_searched_beside_the_index() {
        use crate::catalog::changes::Changes;
        use crate::catalog::index::{self, ExactIndex};
        use crate::catalog::Catalog;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let catalog = Catalog::load(&root.join("models/catalog")).unwrap();
        let (vectors, dim) = catalog.item_vectors().unwrap();
        let index = ExactIndex::new(index::unit_rows(vectors, dim), dim);
        let mut changes = Changes::default();
        // 300 new items and 50 moved ones, pointing near user 1's taste.
        let user = catalog
            .user_vector(catalog.users.row("1").unwrap())
            .to_vec();
        for i in 0..350usize {
            let v: Vec<f32> = user
                .iter()
                .enumerate()
                .map(|(j, x)| x + ((i * 7 + j * 3) % 11) as f32 * 0.05 - 0.25)
                .collect();
            let id = if i < 300 {
                format!("new-{i}")
            } else {
                catalog
                    .items
                    .id(((i * 13) % catalog.items.len()) as u32)
                    .to_string()
            };
            let fields = serde_json::json!({ "embedding": v });
            changes.items.merge(&id, fields.as_object().unwrap());
        }
        let changed = catalog.with_changes(&changes, 1);
        let skip = |r: u32| r.is_multiple_of(5);
        for n in [10, 100] {
            let got = super::search(&changed, &index, &user, n, &skip).unwrap();
            let all: Vec<f32> = (0..changed.items.len() as u32)
                .flat_map(|r| changed.item_vector(r).to_vec())
                .collect();
            let exact = ExactIndex::new(index::unit_rows(&all, dim), dim);
            let want = index::search(&exact, &user, n, &skip).unwrap();
            let rows = |v: &[(u32, f32)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(rows(&got), rows(&want), "n = {n}");
            for (g, w) in got.iter().zip(&want) {
                assert!((g.1 - w.1).abs() < 1e-5, "{g:?} {w:?}");
            }
        }
    }
}
