//! Closing the loop (API.md §3): what users did with the answers.
//!
//! - [`answers`]: the answers served recently, by request id (bounded).
//! - [`tally`]: the counters behind the reports: rankings, users and
//!   attributed outcomes per arm; where the live model and each shadow
//!   ranked the items outcomes named.
//! - [`stats`]: the normal and chi-square functions the reports need.
//!
//! An interaction of a kind the schema declares an outcome
//! (`[events] outcomes`) may name the answer it came from (`request_id`).
//! When the event is accepted, [`Feedback::attribute`] looks the answer up
//! and writes what it found into the event — attributed (arm, model
//! versions, the item's 0-based position, each shadow's position for it,
//! and which process served it) or why not (`unknown_request`, `expired`,
//! `item_not_shown`, `no_request_id`) — so the log and the shared stream
//! carry it. The process that served the answer counts it
//! ([`Feedback::count`]) when it applies the event: with Redis, replicas
//! count the outcomes of their own answers, and the reports of all
//! replicas add up (`cascade_outcomes_total` summed across them). The
//! reports are counters of this process, since the experiment (or the
//! shadows) was set: they start over with the process, as Prometheus
//! counters do; what was served and what users did stays in the logs.

pub mod answers;
pub mod dataset;
pub mod log;
pub mod stats;
pub mod tally;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::telemetry::metrics as m;
use answers::{Answer, Found, RecentAnswers};
use tally::Tally;

/// `[feedback]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// How long after an answer an outcome naming it is attributed
    /// (`"30m"`).
    pub attribution_window: String,
    /// Answers kept for attribution at most; past it the oldest go first
    /// (`cascade_recent_answers_dropped_total`). About 300 bytes each.
    pub max_recent_answers: usize,
    /// Where the ranking log goes ([`log`]); none: no log.
    pub log_dir: Option<std::path::PathBuf>,
    /// The share of answers logged (a stable draw per request id).
    pub log_sample_rate: f64,
    /// A log file is closed past this many bytes…
    pub log_max_bytes: u64,
    /// …or this age (`"1h"`), and the next one started.
    pub log_max_age: String,
    /// Records waiting for the writer at most; past it they are dropped
    /// (counted), never waited for.
    pub log_queue: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            attribution_window: "30m".into(),
            max_recent_answers: 100_000,
            log_dir: None,
            log_sample_rate: 1.0,
            log_max_bytes: 64 * 1024 * 1024,
            log_max_age: "1h".into(),
            log_queue: 4096,
        }
    }
}

/// Why an outcome was (not) attributed: the `result` label of
/// `cascade_outcome_attribution_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionResult {
    Attributed,
    /// No answer with that request id (never served here, or forgotten).
    UnknownRequest,
    /// The answer is older than the attribution window.
    Expired,
    /// The answer did not hold the item.
    ItemNotShown,
    /// The outcome named no `request_id`.
    NoRequestId,
}

impl AttributionResult {
    pub const ALL: [AttributionResult; 5] = [
        AttributionResult::Attributed,
        AttributionResult::UnknownRequest,
        AttributionResult::Expired,
        AttributionResult::ItemNotShown,
        AttributionResult::NoRequestId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttributionResult::Attributed => "attributed",
            AttributionResult::UnknownRequest => "unknown_request",
            AttributionResult::Expired => "expired",
            AttributionResult::ItemNotShown => "item_not_shown",
            AttributionResult::NoRequestId => "no_request_id",
        }
    }
}

/// What an outcome was attributed to, written into the event when it is
/// accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub result: AttributionResult,
    /// The rest only when attributed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<String>,
    /// The item's 0-based position in the answer, and the answer's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
    /// Per shadow that ran on the request, the item's position in the
    /// shadow's order of the stage's rows (none: not among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadows: Vec<(String, Option<u32>)>,
    /// The process that served the answer, and its experiment then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    #[serde(default)]
    pub experiment: u64,
}

impl Attribution {
    fn not(result: AttributionResult) -> Attribution {
        Attribution {
            result,
            variant: None,
            models: None,
            position: None,
            k: None,
            shadows: Vec::new(),
            served_by: None,
            experiment: 0,
        }
    }
}

pub struct Feedback {
    answers: RecentAnswers,
    window_ms: i64,
    /// The schema's outcome kinds, in order.
    kinds: Vec<String>,
    /// This process, as `served_by` names it.
    replica: Arc<str>,
    tally: Mutex<Tally>,
    attribution: [metrics::Counter; 5],
    srm: metrics::Gauge,
    /// The ranking log, when `feedback.log_dir` is set.
    log: Option<log::RankingLog>,
    /// Answers shared with the other replicas (with Redis).
    shared: std::sync::OnceLock<Shared>,
}

/// What sharing answers needs: where they go, and the item ids of rows.
struct Shared {
    answers: Arc<dyn SharedAnswers>,
    item_id: Box<dyn Fn(u32) -> Option<String> + Send + Sync>,
}

/// Answers shared between replicas: each replica publishes the answers it
/// shows (and its shadows' orders), and looks up one it does not hold when
/// an outcome names it. Never waits on the ranking path: publishing hands
/// the record to a writer.
pub trait SharedAnswers: Send + Sync {
    fn publish(&self, request_id: &str, answer: SharedAnswer);
    fn publish_shadow(&self, request_id: &str, shadow: &str, items: Vec<String>);
    /// The answers `request_ids` name, where another replica shared them.
    fn lookup(&self, request_ids: &[&str]) -> Vec<Option<SharedAnswer>>;
}

/// An answer as replicas share it: by item ids (rows are each process's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedAnswer {
    pub at_ms: i64,
    pub variant: String,
    pub models: String,
    pub experiment: u64,
    pub served_by: String,
    pub items: Vec<String>,
    #[serde(default)]
    pub shadows: Vec<(String, Vec<String>)>,
}

impl SharedAnswer {
    /// What an outcome on `item` at `now_ms` is attributed to.
    fn attribute(&self, item: &str, now_ms: i64, window_ms: i64) -> Attribution {
        if now_ms - self.at_ms > window_ms {
            return Attribution::not(AttributionResult::Expired);
        }
        let Some(p) = self.items.iter().position(|x| x == item) else {
            return Attribution::not(AttributionResult::ItemNotShown);
        };
        Attribution {
            result: AttributionResult::Attributed,
            variant: Some(self.variant.clone()),
            models: Some(self.models.clone()),
            position: Some(p as u32),
            k: Some(self.items.len() as u32),
            shadows: self
                .shadows
                .iter()
                .map(|(name, order)| {
                    (
                        name.clone(),
                        order.iter().position(|x| x == item).map(|p| p as u32),
                    )
                })
                .collect(),
            served_by: Some(self.served_by.clone()),
            experiment: self.experiment,
        }
    }
}

/// The SRM gauge is recomputed every this many rankings of an arm (a χ²
/// over at most 16 arms: microseconds).
const SRM_EVERY: u64 = 256;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A name for this process: unique across restarts and replicas.
fn replica_id() -> Arc<str> {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(now_ms());
    format!("{:016x}", h.finish()).into()
}

impl Feedback {
    /// `kinds`: the schema's outcome kinds. Starts the ranking log's
    /// writer when `feedback.log_dir` is set.
    pub fn new(config: &FeedbackConfig, kinds: Vec<String>) -> Result<Feedback, String> {
        let window_ms =
            crate::data::schema::duration_ms(&config.attribution_window).unwrap_or(30 * 60_000);
        let log = match &config.log_dir {
            None => None,
            Some(dir) => Some(log::RankingLog::start(log::LogSettings {
                dir: dir.clone(),
                sample_rate: config.log_sample_rate,
                max_bytes: config.log_max_bytes,
                max_age: std::time::Duration::from_millis(
                    crate::data::schema::duration_ms(&config.log_max_age).unwrap_or(3_600_000)
                        as u64,
                ),
                queue: config.log_queue,
            })?),
        };
        let attribution = AttributionResult::ALL.map(|r| {
            let c = metrics::counter!(m::OUTCOME_ATTRIBUTION_TOTAL, "result" => r.as_str());
            c.increment(0);
            c
        });
        Ok(Feedback {
            answers: RecentAnswers::new(window_ms, config.max_recent_answers),
            window_ms,
            kinds,
            replica: replica_id(),
            tally: Mutex::new(Tally::default()),
            attribution,
            srm: metrics::gauge!(m::EXPERIMENT_SRM_P_VALUE),
            log,
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Shares this replica's answers through `answers` from now on
    /// (`item_id`: a row's item id, in the current catalog).
    pub fn share(
        &self,
        answers: Arc<dyn SharedAnswers>,
        item_id: Box<dyn Fn(u32) -> Option<String> + Send + Sync>,
    ) {
        let _ = self.shared.set(Shared { answers, item_id });
    }

    /// Whether the answer to `request_id` goes into the ranking log (its
    /// stages then keep what they read for it).
    pub fn sampled(&self, request_id: &str) -> bool {
        self.log.as_ref().is_some_and(|l| l.sampled(request_id))
    }

    /// Logs a shown answer (never waits).
    pub fn log_ranking(&self, record: log::RankingRecord) {
        if let Some(l) = &self.log {
            l.ranking(record);
        }
    }

    /// Logs the outcomes of `events` (accepted and applied; never waits).
    pub fn log_outcomes(&self, events: &[Event]) {
        let Some(l) = &self.log else { return };
        for e in events {
            let Event::Interaction {
                id,
                user_id,
                item_id,
                kind,
                value,
                timestamp,
                request_id,
                attribution: Some(a),
            } = e
            else {
                continue;
            };
            l.outcome(log::OutcomeRecord {
                id: id.clone(),
                ts_ms: *timestamp,
                user_id: user_id.clone(),
                item_id: item_id.clone(),
                kind: kind.clone(),
                value: *value,
                request_id: request_id.clone(),
                result: a.result.as_str(),
                position: a.position,
            });
        }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// The schema's outcome kinds.
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new experiment (`name`: its salt; `shares`: its arms, or
    /// `control` alone outside any): its counters start at zero. Returns
    /// its number, which answers carry.
    pub fn experiment_set(&self, name: &str, shares: Vec<(String, f64)>) -> u64 {
        // Every arm's outcome series exist from the start, at 0; the SRM
        // gauge says "no mismatch" until there is a split to test.
        for (arm, _) in &shares {
            for kind in &self.kinds {
                metrics::counter!(m::OUTCOMES_TOTAL, "variant" => arm.clone(), "kind" => kind.clone())
                    .increment(0);
            }
        }
        self.srm.set(1.0);
        let mut t = self.tally();
        let number = t.experiment + 1;
        let shadows = std::mem::take(&mut t.shadows);
        let shadows_since_ms = t.shadows_since_ms;
        *t = Tally {
            experiment: number,
            name: name.to_string(),
            since_ms: now_ms(),
            shares,
            shadows,
            shadows_since_ms,
            ..Tally::default()
        };
        number
    }

    /// The experiment answers served now belong to.
    pub fn experiment(&self) -> u64 {
        self.tally().experiment
    }

    /// The shadows were set: their counters start at zero.
    pub fn shadows_set(&self) {
        let mut t = self.tally();
        t.shadows.clear();
        t.shadows_since_ms = now_ms();
    }

    /// An answer was shown (computed or from the cache): kept for
    /// attribution, counted for its arm.
    pub fn answered(&self, answer: Answer, user_id: Option<&str>) {
        {
            let kinds = self.kinds.len();
            let mut t = self.tally();
            if answer.experiment == t.experiment {
                let arm = t.arm(&answer.variant, kinds);
                arm.rankings += 1;
                let refresh = arm.rankings.is_multiple_of(SRM_EVERY);
                if let Some(u) = user_id {
                    arm.add_user(crate::pipeline::experiments::stable_hash("users", u));
                }
                if refresh {
                    if let Some(p) = t.srm_p_value() {
                        self.srm.set(p);
                    }
                }
            }
        }
        if let Some(shared) = self.shared.get() {
            shared.answers.publish(
                &answer.request_id,
                SharedAnswer {
                    at_ms: answer.at_ms,
                    variant: answer.variant.to_string(),
                    models: answer.models.to_string(),
                    experiment: answer.experiment,
                    served_by: self.replica.to_string(),
                    items: answer
                        .items
                        .iter()
                        .filter_map(|&r| (shared.item_id)(r))
                        .collect(),
                    shadows: Vec::new(),
                },
            );
        }
        self.answers.insert(answer);
    }

    /// A shadow ranked the rows of `request_id` in this order.
    pub fn shadow_ranked(&self, request_id: &str, shadow: Arc<str>, rows: Box<[u32]>) {
        if let Some(shared) = self.shared.get() {
            let items = rows.iter().filter_map(|&r| (shared.item_id)(r)).collect();
            shared.answers.publish_shadow(request_id, &shadow, items);
        }
        self.answers.shadow(request_id, shadow, rows, now_ms());
    }

    /// Attributes each outcome of `events` (accepted, not yet logged) to
    /// the answer it names, writing the result into the event, and counts
    /// the result. `row` finds an item's catalog row. An answer this
    /// process does not hold is looked up among the ones other replicas
    /// shared, when they share them ([`Feedback::share`]).
    pub fn attribute(&self, events: &mut [Event], row: &dyn Fn(&str) -> Option<u32>) {
        let now = now_ms();
        let mut results: Vec<(usize, Attribution)> = Vec::new();
        let mut remote: Vec<usize> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Event::Interaction {
                kind,
                item_id,
                request_id,
                ..
            } = e
            else {
                continue;
            };
            if !self.kinds.contains(kind) {
                continue;
            }
            let found = match request_id {
                None => Attribution::not(AttributionResult::NoRequestId),
                Some(rid) => self.answers.with(rid, now, |found| match found {
                    Found::Unknown => Attribution::not(AttributionResult::UnknownRequest),
                    Found::Expired => Attribution::not(AttributionResult::Expired),
                    Found::Answer(a) => {
                        let item = row(item_id);
                        match item.and_then(|r| a.items.iter().position(|&x| x == r)) {
                            None => Attribution::not(AttributionResult::ItemNotShown),
                            Some(p) => Attribution {
                                result: AttributionResult::Attributed,
                                variant: Some(a.variant.to_string()),
                                models: Some(a.models.to_string()),
                                position: Some(p as u32),
                                k: Some(a.items.len() as u32),
                                shadows: a
                                    .shadows
                                    .iter()
                                    .map(|(name, order)| {
                                        let r = item.expect("found in the answer");
                                        let at = order.iter().position(|&x| x == r);
                                        (name.to_string(), at.map(|p| p as u32))
                                    })
                                    .collect(),
                                served_by: Some(self.replica.to_string()),
                                experiment: a.experiment,
                            },
                        }
                    }
                }),
            };
            if found.result == AttributionResult::UnknownRequest {
                remote.push(results.len());
            }
            results.push((i, found));
        }
        if let (Some(shared), false) = (self.shared.get(), remote.is_empty()) {
            let ids: Vec<&str> = remote
                .iter()
                .filter_map(|&r| match &events[results[r].0] {
                    Event::Interaction { request_id, .. } => request_id.as_deref(),
                    _ => None,
                })
                .collect();
            for (&r, answer) in remote.iter().zip(shared.answers.lookup(&ids)) {
                let (Some(a), Event::Interaction { item_id, .. }) = (answer, &events[results[r].0])
                else {
                    continue;
                };
                results[r].1 = a.attribute(item_id, now, self.window_ms);
            }
        }
        let mut t = self.tally();
        for (i, found) in results {
            let r = AttributionResult::ALL
                .iter()
                .position(|r| *r == found.result)
                .expect("every result is listed");
            self.attribution[r].increment(1);
            t.attribution[r] += 1;
            if let Event::Interaction { attribution, .. } = &mut events[i] {
                *attribution = Some(Box::new(found));
            }
        }
    }

    /// Counts the attributed outcomes of `events` (being applied) whose
    /// answer this process served, under the experiment in force.
    pub fn count(&self, events: &[Event]) {
        for e in events {
            let Event::Interaction {
                kind,
                request_id: Some(rid),
                attribution: Some(a),
                ..
            } = e
            else {
                continue;
            };
            if a.result != AttributionResult::Attributed
                || a.served_by.as_deref() != Some(&*self.replica)
            {
                continue;
            }
            let Some(k) = self.kinds.iter().position(|x| x == kind) else {
                continue;
            };
            // Outcomes so far on this ranking, for its variance.
            let before = u64::from(self.answers.bump(rid, k, self.kinds.len()));
            let variant = a.variant.as_deref().unwrap_or(crate::pipeline::CONTROL);
            let position = u64::from(a.position.unwrap_or(0));
            let top_k = a.k.unwrap_or(0);
            let mut t = self.tally();
            if a.experiment == t.experiment {
                let kt = &mut t.arm(variant, self.kinds.len()).kinds[k];
                kt.count += 1;
                kt.sum_sq += 2 * before + 1;
                kt.sum_position += position;
            }
            for (shadow, at) in &a.shadows {
                let s = &mut t.shadow(shadow, self.kinds.len())[k];
                s.count += 1;
                s.live_position_sum += position;
                s.live_top_k += u64::from(position < u64::from(top_k));
                match at {
                    Some(p) => {
                        s.shadow_position_sum += u64::from(*p);
                        s.shadow_top_k += u64::from(*p < top_k);
                    }
                    None => s.shadow_missing += 1,
                }
                metrics::counter!(m::SHADOW_OUTCOMES_TOTAL, "shadow" => shadow.clone(), "kind" => kind.clone())
                    .increment(1);
                if at.is_some_and(|p| p < top_k) {
                    metrics::counter!(m::SHADOW_OUTCOMES_TOP_K_TOTAL, "shadow" => shadow.clone(), "kind" => kind.clone())
                        .increment(1);
                }
            }
            drop(t);
            metrics::counter!(m::OUTCOMES_TOTAL, "variant" => variant.to_string(), "kind" => kind.clone())
                .increment(1);
        }
    }

    /// `GET /admin/experiments/report`; also refreshes the SRM gauge.
    pub fn report(&self) -> serde_json::Value {
        let t = self.tally();
        if let Some(p) = t.srm_p_value() {
            self.srm.set(p);
        }
        t.report(&self.kinds)
    }

    /// `GET /admin/shadow/report`.
    pub fn shadow_report(&self) -> serde_json::Value {
        self.tally().shadow_report(&self.kinds)
    }
}

/// An answer's record for [`Feedback::answered`].
pub fn answer(
    request_id: &str,
    variant: Arc<str>,
    models: Arc<str>,
    experiment: u64,
    items: &[u32],
) -> Answer {
    Answer {
        request_id: request_id.into(),
        at_ms: now_ms(),
        variant,
        models,
        experiment,
        items: items.into(),
        shadows: Vec::new(),
        counts: Vec::new(),
    }
}
