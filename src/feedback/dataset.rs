//! `cascade dataset`: the ranking log joined with the outcomes into
//! training rows — one per (ranking, shown item) — so the next model
//! trains on the feature values that were served, with the position each
//! item was shown at.
//!
//! Columns: `request_id`, `timestamp` (epoch ms the answer was served),
//! `user_id`, `item_id`, `position` (0-based), `variant`, `cached` (1 for
//! an answer from the response cache), per stage that scored the answer
//! `model_<stage>` (`name@version`) and `score_<stage>`, every feature the
//! stage's model read under `<stage>.<feature name>` (missing where that
//! stage did not score the item, or the answer was logged without its
//! feature rows), and per outcome kind `label_<kind>`: how many outcomes
//! of that kind named this answer and item within the attribution window
//! (a count, not 0/1). Outcomes come from the log's outcome lines, the
//! state folder's event log (read without disturbing a running server)
//! and an events Parquet file, each event once (by id).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use crate::data::parquet::Out;
use crate::events::Event;

/// Where `cascade dataset` reads from.
pub struct Sources<'a> {
    /// The ranking log's folder (`feedback.log_dir`).
    pub logs: &'a Path,
    /// An embedded state folder whose event log holds outcomes.
    pub state_dir: Option<&'a Path>,
    /// Outcome events read from a Parquet file (already parsed).
    pub events: Vec<Event>,
    /// The schema's outcome kinds (one label column each).
    pub kinds: &'a [String],
    /// Outcomes later than this after their answer are not its labels.
    pub window_ms: i64,
    /// Answers served in `[since, until)` only (epoch ms).
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// What a build read and wrote.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub rankings: usize,
    pub rows: usize,
    /// Outcomes that labelled a row, and those that named no logged
    /// answer's item (unsampled answers, other periods).
    pub outcomes_joined: usize,
    pub outcomes_unjoined: usize,
    /// Log lines that did not parse (a line cut short by a crash).
    pub lines_skipped: usize,
}

struct Row {
    request_id: String,
    ts: i64,
    user_id: Option<String>,
    item_id: String,
    position: usize,
    variant: String,
    cached: bool,
    models: Vec<(String, String)>,
    scores: Vec<(String, f32)>,
    features: Vec<(String, f32)>,
}

/// One outcome: (request id, item id) it names, kind index, timestamp.
struct Outcome {
    key: (String, String),
    kind: usize,
    ts: i64,
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key)?.as_str().map(str::to_string)
}

fn outcome_of(
    id: &str,
    kind: &str,
    request_id: Option<&str>,
    item_id: &str,
    ts: i64,
    kinds: &[String],
    seen: &mut HashSet<String>,
) -> Option<Outcome> {
    let k = kinds.iter().position(|x| x == kind)?;
    let rid = request_id?;
    seen.insert(id.to_string()).then(|| Outcome {
        key: (rid.to_string(), item_id.to_string()),
        kind: k,
        ts,
    })
}

/// Reads every source and builds the columns.
pub fn build(src: &Sources<'_>) -> Result<(Vec<(String, Out)>, Summary), String> {
    let mut summary = Summary::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut seen = HashSet::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let files = super::log::files(src.logs).map_err(|e| {
        format!(
            "{}: cannot list the ranking log: {}",
            src.logs.display(),
            e.kind()
        )
    })?;
    for path in files {
        let file =
            std::fs::File::open(&path).map_err(|e| format!("{}: {}", path.display(), e.kind()))?;
        // Feature names per model, as this file declares them.
        let mut names: HashMap<String, Vec<String>> = HashMap::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|e| format!("{}: {}", path.display(), e.kind()))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                summary.lines_skipped += 1;
                continue;
            };
            match v.get("type").and_then(Value::as_str) {
                Some("features") => {
                    let (Some(model), Some(list)) = (
                        str_of(&v, "model"),
                        v.get("names").and_then(Value::as_array),
                    ) else {
                        summary.lines_skipped += 1;
                        continue;
                    };
                    names.insert(
                        model,
                        list.iter()
                            .filter_map(|n| n.as_str().map(str::to_string))
                            .collect(),
                    );
                }
                Some("outcome") => {
                    let (Some(id), Some(kind), Some(item)) =
                        (str_of(&v, "id"), str_of(&v, "kind"), str_of(&v, "item_id"))
                    else {
                        summary.lines_skipped += 1;
                        continue;
                    };
                    let rid = str_of(&v, "request_id");
                    let ts = v.get("ts_ms").and_then(Value::as_i64).unwrap_or(0);
                    outcomes.extend(outcome_of(
                        &id,
                        &kind,
                        rid.as_deref(),
                        &item,
                        ts,
                        src.kinds,
                        &mut seen,
                    ));
                }
                Some("ranking") => match read_ranking(&v, &names, src, &mut rows) {
                    None => summary.lines_skipped += 1,
                    Some(true) => summary.rankings += 1,
                    Some(false) => {}
                },
                _ => summary.lines_skipped += 1,
            }
        }
    }
    let logged = match src.state_dir.filter(|d| d.is_dir()) {
        Some(dir) => crate::events::log::peek(dir)?,
        None => Vec::new(),
    };
    for e in logged.iter().flat_map(|b| &b.events).chain(&src.events) {
        if let Event::Interaction {
            id,
            item_id,
            kind,
            timestamp,
            request_id,
            ..
        } = e
        {
            outcomes.extend(outcome_of(
                id,
                kind,
                request_id.as_deref(),
                item_id,
                *timestamp,
                src.kinds,
                &mut seen,
            ));
        }
    }
    // Labels: outcomes per (request, item), by kind.
    let served: HashMap<(&str, &str), (usize, i64)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.request_id.as_str(), r.item_id.as_str()), (i, r.ts)))
        .collect();
    let mut labels = vec![vec![0f32; src.kinds.len()]; rows.len()];
    for o in &outcomes {
        match served.get(&(o.key.0.as_str(), o.key.1.as_str())) {
            Some(&(i, ts)) if o.ts <= ts.saturating_add(src.window_ms) => {
                labels[i][o.kind] += 1.0;
                summary.outcomes_joined += 1;
            }
            _ => summary.outcomes_unjoined += 1,
        }
    }
    summary.rows = rows.len();
    Ok((columns(&rows, &labels, src.kinds), summary))
}

/// The rows of one `ranking` line: whether it was in the time window,
/// none if it does not parse.
fn read_ranking(
    v: &Value,
    names: &HashMap<String, Vec<String>>,
    src: &Sources<'_>,
    rows: &mut Vec<Row>,
) -> Option<bool> {
    let request_id = str_of(v, "request_id")?;
    let ts = v.get("ts_ms")?.as_i64()?;
    if src.since.is_some_and(|s| ts < s) || src.until.is_some_and(|u| ts >= u) {
        return Some(false);
    }
    let models: Vec<(String, String)> = v
        .get("models")?
        .as_object()?
        .iter()
        .filter_map(|(k, m)| Some((k.clone(), m.as_str()?.to_string())))
        .collect();
    let model_of = |key: &str| {
        models
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, m)| m.as_str())
    };
    for item in v.get("items")?.as_array()? {
        let scores = item
            .get("scores")
            .and_then(Value::as_object)
            .map(|s| {
                s.iter()
                    .filter_map(|(k, x)| Some((k.clone(), x.as_f64()? as f32)))
                    .collect()
            })
            .unwrap_or_default();
        let mut features = Vec::new();
        for (key, _) in &models {
            let Some(model) = model_of(key) else { continue };
            let (Some(row), Some(names)) = (
                item.get("features")
                    .and_then(|f| f.get(model))
                    .and_then(Value::as_array),
                names.get(model),
            ) else {
                continue;
            };
            for (name, x) in names.iter().zip(row) {
                features.push((
                    format!("{key}.{name}"),
                    x.as_f64().map_or(f32::NAN, |x| x as f32),
                ));
            }
        }
        rows.push(Row {
            request_id: request_id.clone(),
            ts,
            user_id: str_of(v, "user_id"),
            item_id: str_of(item, "item_id")?,
            position: item.get("position")?.as_u64()? as usize,
            variant: str_of(v, "variant").unwrap_or_default(),
            cached: v.get("cached").and_then(Value::as_bool).unwrap_or(false),
            models: models.clone(),
            scores,
            features,
        });
    }
    Some(true)
}

/// The table, column by column (feature columns in the order they first
/// appear; a value a row lacks is missing).
fn columns(rows: &[Row], labels: &[Vec<f32>], kinds: &[String]) -> Vec<(String, Out)> {
    let mut out = vec![
        (
            "request_id".to_string(),
            Out::Strings(rows.iter().map(|r| r.request_id.clone()).collect()),
        ),
        (
            "timestamp".to_string(),
            Out::OptF64(rows.iter().map(|r| Some(r.ts as f64)).collect()),
        ),
        (
            "user_id".to_string(),
            Out::OptStrings(rows.iter().map(|r| r.user_id.clone()).collect()),
        ),
        (
            "item_id".to_string(),
            Out::Strings(rows.iter().map(|r| r.item_id.clone()).collect()),
        ),
        (
            "position".to_string(),
            Out::F32(rows.iter().map(|r| r.position as f32).collect()),
        ),
        (
            "variant".to_string(),
            Out::Strings(rows.iter().map(|r| r.variant.clone()).collect()),
        ),
        (
            "cached".to_string(),
            Out::F32(rows.iter().map(|r| f32::from(u8::from(r.cached))).collect()),
        ),
    ];
    // Stage keys in a stable order, then feature columns as they appear.
    let mut stages: BTreeMap<String, ()> = BTreeMap::new();
    for r in rows {
        for (k, _) in &r.models {
            stages.insert(k.clone(), ());
        }
    }
    for key in stages.keys() {
        out.push((
            format!("model_{key}"),
            Out::OptStrings(
                rows.iter()
                    .map(|r| {
                        r.models
                            .iter()
                            .find(|(k, _)| k == key)
                            .map(|(_, m)| m.clone())
                    })
                    .collect(),
            ),
        ));
        out.push((
            format!("score_{key}"),
            Out::OptF32(
                rows.iter()
                    .map(|r| r.scores.iter().find(|(k, _)| k == key).map(|(_, s)| *s))
                    .collect(),
            ),
        ));
    }
    let mut feature_names: Vec<&str> = Vec::new();
    let mut column_of: HashMap<&str, usize> = HashMap::new();
    for r in rows {
        for (name, _) in &r.features {
            column_of.entry(name.as_str()).or_insert_with(|| {
                feature_names.push(name.as_str());
                feature_names.len() - 1
            });
        }
    }
    let mut features = vec![vec![None; rows.len()]; feature_names.len()];
    for (i, r) in rows.iter().enumerate() {
        for (name, x) in &r.features {
            features[column_of[name.as_str()]][i] = Some(*x).filter(|x| !x.is_nan());
        }
    }
    for (name, column) in feature_names.into_iter().zip(features) {
        out.push((name.to_string(), Out::OptF32(column)));
    }
    for (k, kind) in kinds.iter().enumerate() {
        out.push((
            format!("label_{kind}"),
            Out::F32(labels.iter().map(|l| l[k]).collect()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(v: Value) -> String {
        format!("{v}\n")
    }

    /// Two answers (one with feature rows, one a cache hit without), a
    /// torn last line, outcomes from the log, the state's event log and a
    /// Parquet-like list, one of them twice and one too late.
    #[test]
    fn rankings_and_outcomes_join_into_rows_with_counted_labels() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("rankings-0000000000001.jsonl");
        let mut text = String::new();
        text += &line(
            serde_json::json!({"type": "features", "model": "ranker@1", "names": ["a", "b"]}),
        );
        text += &line(
            serde_json::json!({"type": "ranking", "request_id": "r1", "ts_ms": 1000,
            "user_id": "u1", "context": {}, "variant": "control",
            "models": {"filter": "filter@1", "ranker": "ranker@1"}, "fallback": null, "cached": false, "features": true,
            "items": [
                {"item_id": "i1", "position": 0, "score": 0.9, "scores": {"filter": 0.5, "ranker": 0.9}, "features": {"ranker@1": [1.0, 2.0]}},
                {"item_id": "i2", "position": 1, "score": 0.8, "scores": {"ranker": 0.8}, "features": {"ranker@1": [3.0, null]}}]}),
        );
        text += &line(
            serde_json::json!({"type": "ranking", "request_id": "r2", "ts_ms": 2000,
            "user_id": null, "context": {}, "variant": "b", "models": {"cold_start": "cold_start@1"},
            "fallback": "cold_start", "cached": true, "features": false,
            "items": [{"item_id": "i3", "position": 0, "score": 0.7, "scores": {}, "features": {}}]}),
        );
        text += &line(
            serde_json::json!({"type": "outcome", "id": "o1", "ts_ms": 1500, "user_id": "u1",
            "item_id": "i2", "kind": "click", "request_id": "r1", "result": "attributed", "position": 1}),
        );
        text += &line(
            serde_json::json!({"type": "outcome", "id": "o9", "ts_ms": 1500, "user_id": "u1",
            "item_id": "i9", "kind": "click", "request_id": "r1", "result": "item_not_shown"}),
        );
        text += "{\"type\": \"ranking\", \"request_id\": \"r3\"";
        std::fs::write(&log, text).unwrap();
        let event = |id: &str, item: &str, rid: &str, ts: i64| Event::Interaction {
            id: id.into(),
            user_id: "u1".into(),
            item_id: item.into(),
            kind: "click".into(),
            value: None,
            timestamp: ts,
            request_id: Some(rid.into()),
            attribution: None,
        };
        let kinds = ["click".to_string()];
        let src = Sources {
            logs: dir.path(),
            state_dir: None,
            events: vec![
                event("o1", "i2", "r1", 1500),          // again: counted once
                event("o2", "i2", "r1", 1600),          // a second click
                event("o3", "i3", "r2", 2100),          // on the cache hit
                event("o4", "i1", "r1", 1000 + 61_000), // too late
            ],
            kinds: &kinds,
            window_ms: 60_000,
            since: None,
            until: None,
        };
        let (columns, summary) = build(&src).unwrap();
        assert_eq!(
            summary,
            Summary {
                rankings: 2,
                rows: 3,
                outcomes_joined: 3,
                outcomes_unjoined: 2,
                lines_skipped: 1,
            }
        );
        let col = |name: &str| {
            &columns
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name}"))
                .1
        };
        let Out::F32(labels) = col("label_click") else {
            panic!()
        };
        assert_eq!(labels, &[0.0, 2.0, 1.0]);
        let Out::OptF32(a) = col("ranker.a") else {
            panic!()
        };
        assert_eq!(a, &[Some(1.0), Some(3.0), None]);
        let Out::OptF32(b) = col("ranker.b") else {
            panic!()
        };
        assert_eq!(b, &[Some(2.0), None, None]);
        let Out::OptF32(filter) = col("score_filter") else {
            panic!()
        };
        assert_eq!(filter, &[Some(0.5), None, None]);
        let Out::OptStrings(models) = col("model_cold_start") else {
            panic!()
        };
        assert_eq!(models, &[None, None, Some("cold_start@1".to_string())]);
        let Out::F32(positions) = col("position") else {
            panic!()
        };
        assert_eq!(positions, &[0.0, 1.0, 0.0]);
        let Out::F32(cached) = col("cached") else {
            panic!()
        };
        assert_eq!(cached, &[0.0, 0.0, 1.0]);
        // A time window keeps the answers served in it.
        let (_, s) = build(&Sources {
            since: Some(1500),
            ..src
        })
        .unwrap();
        assert_eq!((s.rankings, s.rows), (1, 1));
    }
}
