//! `cascade eval`: offline replay. Each line of a JSONL file is a held-out
//! user's evaluation-period request and the items they went on to like;
//! each goes through the very pipeline code that serves `/v1/rank`
//! (in-process), and recall@k / NDCG@10 come out per segment, to compare
//! with the training script's report (`models/eval_report.json`).
//!
//! Line format (written by `models/train/run.sh` into
//! `models/train/.cache/eval_requests.jsonl`; derived from the data set, so
//! never committed):
//! `{"segment": "known_users", "user_id": "1", "context": {...}, "relevant": ["12", "50"]}`
//! and optionally `"timestamp"` (epoch ms): the moment the request is
//! ranked at, and `"recent_items"` (ids): the request's recent items.
//!
//! With `--events interactions.parquet` (the columns `cascade features
//! --events` reads) the replay also plays the interactions as live events,
//! in time order: cases are ranked in timestamp order, each after exactly
//! the interactions before its timestamp, and as of that time — so windowed
//! counters, recency and the trending list are measured the way they serve.
//! Cases without a timestamp are ranked last, after every interaction, at
//! the wall clock.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::pipeline::request::RankRequest;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct EvalCase {
    pub segment: String,
    pub user_id: Option<String>,
    #[serde(default)]
    pub context: serde_json::Map<String, serde_json::Value>,
    pub relevant: Vec<String>,
    /// When the request is ranked (epoch ms); the wall clock when absent.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// The request's `recent_items` (a cold-start session's history).
    #[serde(default)]
    pub recent_items: Vec<String>,
}

/// Metrics of one segment, averaged over its users.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SegmentScore {
    pub users: usize,
    pub ndcg_at_10: f64,
    pub recall_at_k: f64,
    /// Answers that did not come from the full cascade (cold start aside).
    pub degraded: usize,
}

/// Binary-gain NDCG@10 and recall@k of `ranked` against `relevant`.
pub fn ndcg_recall(ranked: &[String], relevant: &HashSet<&str>) -> (f64, f64) {
    if relevant.is_empty() {
        return (0.0, 0.0);
    }
    let gain = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .filter(|(_, id)| relevant.contains(id.as_str()))
        .map(|(i, _)| gain(i))
        .sum();
    let ideal: f64 = (0..relevant.len().min(10)).map(gain).sum();
    let hits = ranked
        .iter()
        .filter(|id| relevant.contains(id.as_str()))
        .count();
    (dcg / ideal, hits as f64 / relevant.len() as f64)
}

pub fn read_cases(path: &Path) -> anyhow::Result<Vec<EvalCase>> {
    let file = std::fs::File::open(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (run models/train/run.sh to write it)",
            path.display()
        )
    })?;
    let mut cases = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        cases.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(cases)
}

/// Replays `cases` with top-`k` requests through the serving pipeline.
pub async fn run(
    state: &AppState,
    mut cases: Vec<EvalCase>,
    k: usize,
    events: Vec<crate::events::Event>,
) -> anyhow::Result<BTreeMap<String, SegmentScore>> {
    let pipeline = state
        .pipeline
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("ranking.enabled is false"))?;
    let mut sums: BTreeMap<String, SegmentScore> = BTreeMap::new();
    // In time order, so that the replay only moves forward; untimed last.
    cases.sort_by_key(|c| c.timestamp.unwrap_or(i64::MAX));
    let mut played = 0;
    for case in cases {
        let before =
            events[played..].partition_point(|e| case.timestamp.is_none_or(|t| e.timestamp() < t));
        pipeline.online.apply(&events[played..played + before]);
        played += before;
        let now = case.timestamp.map_or_else(std::time::SystemTime::now, |t| {
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.max(0) as u64)
        });
        let request: RankRequest = serde_json::from_value(serde_json::json!({
            "user_id": case.user_id,
            "context": case.context,
            "recent_items": case.recent_items,
            "k": k,
            "deadline_ms": pipeline.limits.max_deadline_ms,
        }))?;
        let valid = request
            .validate(&pipeline.limits, pipeline.schema(), || "eval".into())
            .map_err(|e| anyhow::anyhow!("segment {}: {e}", case.segment))?;
        let response = pipeline
            .rank_at(&state.registry, &state.pool, valid, now)
            .await?;
        let ranked: Vec<String> = response.items.into_iter().map(|i| i.item_id).collect();
        let relevant: HashSet<&str> = case.relevant.iter().map(String::as_str).collect();
        let (ndcg, recall) = ndcg_recall(&ranked, &relevant);
        let s = sums.entry(case.segment).or_default();
        s.users += 1;
        s.ndcg_at_10 += ndcg;
        s.recall_at_k += recall;
        let degraded = matches!(
            response.fallback,
            Some(f) if f != crate::pipeline::request::Fallback::ColdStart
        );
        s.degraded += degraded as usize;
    }
    for s in sums.values_mut() {
        s.ndcg_at_10 /= s.users.max(1) as f64;
        s.recall_at_k /= s.users.max(1) as f64;
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndcg_and_recall_by_hand() {
        let ranked: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let rel: HashSet<&str> = ["a", "c", "z"].into_iter().collect();
        let (ndcg, recall) = ndcg_recall(&ranked, &rel);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((ndcg - dcg / ideal).abs() < 1e-12);
        assert!((recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(ndcg_recall(&ranked, &HashSet::new()), (0.0, 0.0));
    }
}
