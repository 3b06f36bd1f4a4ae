//! Ranking quality on the golden set, and the gate a reload applies with it.
//!
//! A feature model's `golden.json` may label its rows (`"labels": [0, 1, …]`;
//! the training script writes 1 when the user rated the item 4 or more in
//! the evaluation period). Vetting then measures the version on them: the
//! ROC AUC ([`auc`]) of the scores its backend produced, recorded as its
//! [`Quality`].
//!
//! A reload that would replace the serving version first runs the quality
//! gate ([`gate`]) on the candidate. Both AUCs must come from the same rows:
//!
//! - same input features (names, expressions, defaults): the serving
//!   version also scores the candidate's labelled golden rows, and the two
//!   AUCs are compared on those identical rows;
//! - different features: the two recorded AUCs are compared only if both
//!   golden sets are the same rows with the same labels (equal
//!   [`Quality::golden_set`] digests);
//! - otherwise (no labels, one class only, different golden sets) the gate
//!   cannot compare: the candidate is accepted and the report says why.
//!
//! A candidate is refused when its AUC is below the serving one's by more
//! than `models.quality_tolerance`.

use std::sync::Arc;

use serde::Serialize;

use super::golden::scores;
use super::repository::LoadedModel;
use super::{Tensor, TensorData};

/// The one metric measured so far.
pub const AUC: &str = "auc";

/// A version's quality on its labelled golden rows, shown with its vetting.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    /// `auc`: ROC AUC, ties counted half.
    pub metric: &'static str,
    pub value: f64,
    /// Labelled rows measured, and how many of them are positive.
    pub rows: usize,
    pub positives: usize,
    /// A digest of the golden rows' provenance (`rows`) and labels: two
    /// versions' recorded values are comparable only when theirs are
    /// equal. Absent when the golden set does not say where each row came
    /// from.
    pub golden_set: Option<String>,
    /// The labelled rows, for the serving version to score at a reload.
    #[serde(skip)]
    pub sample: Arc<Labelled>,
}

/// Golden feature rows with their labels.
#[derive(Debug)]
pub struct Labelled {
    pub width: usize,
    /// Row-major, `labels.len()` rows of `width`.
    pub inputs: Vec<f32>,
    pub labels: Vec<bool>,
}

impl Labelled {
    pub fn tensor(&self, input: &str) -> Tensor {
        Tensor::new(
            input,
            vec![self.labels.len(), self.width],
            TensorData::F32(self.inputs.clone()),
        )
    }
}

impl Quality {
    /// The quality of `scores` on `sample`; `None` when it cannot be
    /// measured (one class only, or a NaN score).
    pub fn measure(
        scores: &[f32],
        sample: Arc<Labelled>,
        golden_set: Option<String>,
    ) -> Option<Quality> {
        let value = auc(scores, &sample.labels)?;
        Some(Quality {
            metric: AUC,
            value,
            rows: sample.labels.len(),
            positives: sample.labels.iter().filter(|&&l| l).count(),
            golden_set,
            sample,
        })
    }
}

/// ROC AUC: the chance that a random positive row scores above a random
/// negative one, ties counted half (the Mann–Whitney U over midranks).
/// `None` when only one class is present, the lengths differ, or a score
/// is NaN.
pub fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if scores.len() != labels.len()
        || positives == 0
        || negatives == 0
        || scores.iter().any(|s| s.is_nan())
    {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Ranks are 1-based; a run of equal scores shares the mean of its ranks.
    let mut positive_ranks = 0f64;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let midrank = (start + 1 + end) as f64 / 2.0;
        let hits = order[start..end].iter().filter(|&&i| labels[i]).count();
        positive_ranks += midrank * hits as f64;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((positive_ranks - p * (p + 1.0) / 2.0) / (p * n))
}

/// The digest of a golden set's provenance and labels (FNV-1a over the rows
/// as JSON, then the labels), or `None` without one provenance entry per
/// labelled row.
pub fn golden_set_digest(rows: &[serde_json::Value], labels: &[bool]) -> Option<String> {
    if rows.is_empty() || rows.len() != labels.len() {
        return None;
    }
    let text = serde_json::to_string(rows).ok()?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes().chain(labels.iter().map(|&l| l as u8)) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Some(format!("{h:016x}"))
}

/// What the gate decided about one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOutcome {
    Passed,
    Refused,
    /// No like-for-like comparison was possible; the candidate was accepted.
    NotComparable,
}

/// One gate decision, listed in the reload's report.
#[derive(Debug, Clone, Serialize)]
pub struct GateCheck {
    pub candidate: String,
    pub serving: String,
    pub outcome: GateOutcome,
    pub metric: &'static str,
    /// The two values compared, on the same rows (absent when not comparable).
    pub candidate_value: Option<f64>,
    pub serving_value: Option<f64>,
    pub rows: usize,
    pub tolerance: f64,
    pub detail: String,
}

/// Gates `candidate` against `serving` (see the module docs). Blocking:
/// the serving version may run one inference over the candidate's rows.
pub fn gate(serving: &LoadedModel, candidate: &LoadedModel, tolerance: f64) -> GateCheck {
    let mut check = GateCheck {
        candidate: candidate.version.to_string(),
        serving: serving.version.to_string(),
        outcome: GateOutcome::NotComparable,
        metric: AUC,
        candidate_value: None,
        serving_value: None,
        rows: 0,
        tolerance,
        detail: String::new(),
    };
    let (c, s) = (candidate.version, serving.version);
    match compare(serving, candidate) {
        Err(why) => {
            check.detail =
                format!("quality gate not comparable ({why}): version {c} accepted unchecked");
        }
        Ok(Compared {
            candidate: cv,
            serving: sv,
            rows,
            how,
        }) => {
            check.candidate_value = Some(cv);
            check.serving_value = Some(sv);
            check.rows = rows;
            let refused = cv < sv - tolerance;
            check.outcome = if refused {
                GateOutcome::Refused
            } else {
                GateOutcome::Passed
            };
            check.detail = if refused {
                format!(
                    "quality gate: version {c} has AUC {cv:.4} against {sv:.4} for serving version {s}, {how} ({rows} rows): worse by more than the tolerance {tolerance}"
                )
            } else {
                format!(
                    "quality gate passed: version {c} has AUC {cv:.4} against {sv:.4} for serving version {s}, {how} ({rows} rows, tolerance {tolerance})"
                )
            };
        }
    }
    check
}

struct Compared {
    candidate: f64,
    serving: f64,
    rows: usize,
    how: &'static str,
}

/// The two AUCs on the same rows, or why there are none.
fn compare(serving: &LoadedModel, candidate: &LoadedModel) -> Result<Compared, String> {
    let quality = |m: &LoadedModel| m.vetting.as_ref().and_then(|v| v.quality.clone());
    let Some(q) = quality(candidate) else {
        return Err("the candidate's golden set has no labels of both classes".into());
    };
    let same_features = match (&serving.spec.input, &candidate.spec.input) {
        (Some(a), Some(b)) => a.features == b.features,
        _ => false,
    };
    if same_features {
        let serving_auc = score(serving, &q.sample).map_err(|e| {
            format!("the serving version could not score the candidate's golden rows: {e}")
        })?;
        return Ok(Compared {
            candidate: q.value,
            serving: serving_auc,
            rows: q.rows,
            how: "both scoring the candidate's golden rows",
        });
    }
    let Some(sq) = quality(serving) else {
        return Err("the features differ and the serving version has no recorded quality".into());
    };
    match (&q.golden_set, &sq.golden_set) {
        (Some(a), Some(b)) if a == b => Ok(Compared {
            candidate: q.value,
            serving: sq.value,
            rows: q.rows,
            how: "as recorded on the same golden set",
        }),
        _ => Err(
            "the features differ and the two golden sets are not the same rows and labels".into(),
        ),
    }
}

/// The AUC of `model`'s scores on `sample`.
fn score(model: &LoadedModel, sample: &Labelled) -> Result<f64, String> {
    let (Some(input), Some(output)) = (&model.spec.input, &model.spec.output) else {
        return Err("it has no feature input and score output".into());
    };
    let got = scores(
        model.backend.as_ref(),
        sample.tensor(&input.name),
        &output.name,
        sample.labels.len(),
    )?;
    auc(&got, &sample.labels).ok_or_else(|| "its scores give no AUC (a NaN score)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::FnBackend;
    use crate::model::golden::GoldenSet;
    use crate::model::spec::ModelSpec;
    use crate::model::ModelError;

    /// Scores each row as `weight` times its first feature.
    fn linear(weight: f32) -> Box<dyn crate::model::Backend> {
        Box::new(FnBackend(move |inputs: Vec<Tensor>| {
            let TensorData::F32(flat) = &inputs[0].data else {
                return Err(ModelError::Inference("not FP32".into()));
            };
            let (rows, width) = (inputs[0].shape[0], inputs[0].shape[1]);
            let scores = flat.chunks(width).map(|r| weight * r[0]).collect();
            Ok(vec![Tensor::new(
                "score",
                vec![rows, 1],
                TensorData::F32(scores),
            )])
        }))
    }

    /// Version `version` of a model on `features`, scoring `weight` × the
    /// first one, vetted on `rows` (one value per feature each) labelled
    /// `labels`, with provenance entries `from` (none when empty).
    fn version(
        version: u64,
        features: &[&str],
        weight: f32,
        rows: &[Vec<f32>],
        labels: Option<&[u8]>,
        from: &[&str],
    ) -> LoadedModel {
        let decls: Vec<String> = features
            .iter()
            .map(|f| format!("{{ name = \"{f}\", expr = \"item.{f}\" }}"))
            .collect();
        let spec = ModelSpec::parse(
            &format!(
                "role = \"ranker\"\n[input]\nname = \"features\"\nfeatures = [{}]\n[output]\nname = \"score\"\n",
                decls.join(", ")
            ),
            "config.toml",
        )
        .unwrap();
        let mut golden = serde_json::json!({
            "inputs": rows,
            "outputs": rows.iter().map(|r| weight * r[0]).collect::<Vec<_>>(),
            "rows": from.iter().map(|f| serde_json::json!({"item_id": f})).collect::<Vec<_>>(),
        });
        if let Some(labels) = labels {
            golden["labels"] = serde_json::json!(labels);
        }
        let golden = GoldenSet::parse(&golden.to_string(), "golden.json").unwrap();
        let backend = linear(weight);
        let vetting = golden.vet(&spec, backend.as_ref());
        assert!(vetting.passed, "{}", vetting.detail);
        LoadedModel::new("m", version, Arc::new(spec), backend, Some(vetting))
    }

    /// Four rows whose first feature ranks the labels 3 pairs in 4 right.
    fn rows(width: usize) -> Vec<Vec<f32>> {
        (1..=4).map(|x| vec![x as f32; width]).collect()
    }
    const LABELS: &[u8] = &[0, 1, 0, 1];
    const FROM: &[&str] = &["a", "b", "c", "d"];

    #[test]
    fn vetting_records_the_auc_of_the_scores_produced() {
        let m = version(1, &["x"], 1.0, &rows(1), Some(LABELS), FROM);
        let q = m.vetting.unwrap().quality.unwrap();
        assert_eq!((q.metric, q.rows, q.positives), ("auc", 4, 2));
        assert!(close(Some(q.value), 0.75));
        assert!(q.golden_set.is_some());
        // Negated scores rank the other way.
        let m = version(1, &["x"], -1.0, &rows(1), Some(LABELS), FROM);
        assert!(close(Some(m.vetting.unwrap().quality.unwrap().value), 0.25));
        // Without labels, or with one class, no quality.
        let m = version(1, &["x"], 1.0, &rows(1), None, FROM);
        assert!(m.vetting.unwrap().quality.is_none());
        let m = version(1, &["x"], 1.0, &rows(1), Some(&[1, 1, 1, 1]), FROM);
        assert!(m.vetting.unwrap().quality.is_none());
    }

    #[test]
    fn same_features_are_compared_on_the_candidates_rows() {
        let serving = version(1, &["x"], 1.0, &rows(1), Some(LABELS), FROM);
        let worse = version(2, &["x"], -1.0, &rows(1), Some(LABELS), FROM);
        let c = gate(&serving, &worse, 0.02);
        assert_eq!(c.outcome, GateOutcome::Refused, "{}", c.detail);
        assert_eq!(
            (c.candidate_value, c.serving_value),
            (Some(0.25), Some(0.75))
        );
        assert!(
            c.detail
                .starts_with("quality gate: version 2 has AUC 0.2500 against 0.7500"),
            "{}",
            c.detail
        );
        // Within a wide enough tolerance it passes.
        assert_eq!(gate(&serving, &worse, 0.6).outcome, GateOutcome::Passed);
        // As good (the same ranking at another scale) passes; so does
        // better. The serving version's own golden set does not matter:
        // it scores the candidate's rows, even without labels of its own.
        let unlabelled = version(1, &["x"], 1.0, &rows(1), None, &[]);
        let as_good = version(2, &["x"], 3.0, &rows(1), Some(LABELS), FROM);
        let c = gate(&unlabelled, &as_good, 0.0);
        assert_eq!(c.outcome, GateOutcome::Passed, "{}", c.detail);
        assert_eq!(c.serving_value, Some(0.75));
        assert_eq!(gate(&worse, &serving, 0.0).outcome, GateOutcome::Passed);
    }

    #[test]
    fn different_features_compare_only_on_the_same_golden_set() {
        let serving = version(1, &["x", "y"], 1.0, &rows(2), Some(LABELS), FROM);
        let worse = version(2, &["x"], -1.0, &rows(1), Some(LABELS), FROM);
        let c = gate(&serving, &worse, 0.02);
        assert_eq!(c.outcome, GateOutcome::Refused, "{}", c.detail);
        assert!(
            c.detail.contains("as recorded on the same golden set"),
            "{}",
            c.detail
        );
        // Other rows, or other labels: nothing to compare, accepted.
        let elsewhere = version(
            2,
            &["x"],
            -1.0,
            &rows(1),
            Some(LABELS),
            &["e", "f", "g", "h"],
        );
        let c = gate(&serving, &elsewhere, 0.02);
        assert_eq!(c.outcome, GateOutcome::NotComparable);
        assert!(
            c.detail.contains("not the same rows and labels"),
            "{}",
            c.detail
        );
        let relabelled = version(2, &["x"], -1.0, &rows(1), Some(&[1, 0, 1, 0]), FROM);
        assert_eq!(
            gate(&serving, &relabelled, 0.02).outcome,
            GateOutcome::NotComparable
        );
        // No provenance: never "the same set".
        let anonymous = version(1, &["x", "y"], 1.0, &rows(2), Some(LABELS), &[]);
        let c = gate(
            &anonymous,
            &version(2, &["x"], -1.0, &rows(1), Some(LABELS), &[]),
            0.02,
        );
        assert_eq!(c.outcome, GateOutcome::NotComparable);
    }

    #[test]
    fn a_candidate_without_labels_is_not_comparable() {
        let serving = version(1, &["x"], 1.0, &rows(1), Some(LABELS), FROM);
        let c = gate(
            &serving,
            &version(2, &["x"], -1.0, &rows(1), None, FROM),
            0.02,
        );
        assert_eq!(c.outcome, GateOutcome::NotComparable);
        assert_eq!((c.candidate_value, c.serving_value), (None, None));
        assert!(c.detail.contains("no labels"), "{}", c.detail);
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn auc_counts_pairs_and_ties_half() {
        // Perfect, reversed, and a known mixed case.
        let labels = [false, false, true, true];
        assert!(close(auc(&[0.1, 0.2, 0.3, 0.4], &labels), 1.0));
        assert!(close(auc(&[0.4, 0.3, 0.2, 0.1], &labels), 0.0));
        // Pairs (neg, pos): (0.1,0.15) win, (0.1,0.4) win, (0.2,0.15) loss,
        // (0.2,0.4) win: 3 of 4.
        assert!(close(auc(&[0.1, 0.2, 0.15, 0.4], &labels), 0.75));
        // Every score tied: every pair half.
        assert!(close(auc(&[0.5; 4], &labels), 0.5));
        // One tie across classes among four pairs: (0.3 neg, 0.3 pos) half,
        // (0.3 neg, 0.9 pos) win, (0.1 neg, both) wins: 3.5 / 4.
        assert!(close(
            auc(&[0.3, 0.1, 0.3, 0.9], &[false, false, true, true]),
            0.875
        ));
        // Ties within a class change nothing.
        assert!(close(
            auc(&[0.2, 0.2, 0.7, 0.7], &[false, false, true, true]),
            1.0
        ));
        // Order of rows does not matter.
        assert!(close(
            auc(&[0.9, 0.3, 0.1, 0.3], &[true, true, false, false]),
            0.875
        ));
    }

    #[test]
    fn auc_is_none_with_one_class_or_a_nan() {
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auc(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(auc(&[], &[]), None);
        assert_eq!(auc(&[0.1, f32::NAN], &[false, true]), None);
        assert_eq!(auc(&[0.1], &[false, true]), None);
        // Infinite scores still rank.
        assert!(close(
            auc(&[f32::NEG_INFINITY, f32::INFINITY], &[false, true]),
            1.0
        ));
    }

    #[test]
    fn the_digest_follows_rows_and_labels() {
        let rows = vec![serde_json::json!({"user_id": "1", "item_id": "2"}); 2];
        let d = golden_set_digest(&rows, &[true, false]);
        assert!(d.is_some());
        assert_eq!(d, golden_set_digest(&rows, &[true, false]));
        assert_ne!(d, golden_set_digest(&rows, &[false, true]));
        let other = vec![
            serde_json::json!({"user_id": "1", "item_id": "2"}),
            serde_json::json!({"user_id": "1", "item_id": "3"}),
        ];
        assert_ne!(d, golden_set_digest(&other, &[true, false]));
        // No provenance, no digest: such sets are never "the same".
        assert_eq!(golden_set_digest(&[], &[true, false]), None);
        assert_eq!(golden_set_digest(&rows[..1], &[true, false]), None);
    }
}
