//! Live events (`POST /v1/events`, API.md §2): what users do and what the
//! catalog holds, applied to an in-process view that `/v1/rank` reads, and
//! made durable first in an embedded write-ahead log.
//!
//! - [`log`]: the write-ahead log — framed, checksummed, fsynced batches;
//!   replayed at start, a torn tail cut and reported.
//! - [`online`]: the view: each user's recent interactions (newest first,
//!   bounded), per item and per user the declared windowed counters and
//!   last-interaction times, items made unavailable, the ids already
//!   applied, and the versions the caches key by.
//! - [`counters`]: bucketed cumulative counts behind `count()`.
//!
//! Interactions feed user histories (`exclude_seen`, a cold-start user's
//! recent items), the counters behind `count()`/`recency()` and the
//! trending list; item events set availability and insert or update
//! items, user events insert or update users (`catalog::changes`: each
//! batch that changes entities publishes a new catalog generation).

pub mod counters;
pub mod dedupe;
pub mod log;
pub mod online;
pub mod redis;
pub mod shared_answers;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::{changes, Catalog};
use crate::telemetry::metrics as m;

/// Sets `cascade_state_store_up{backend}`.
pub(crate) fn store_up(backend: &'static str, up: bool) {
    metrics::gauge!(m::STATE_STORE_UP, "backend" => backend).set(if up { 1.0 } else { 0.0 });
}

/// Counts a failed store call, marks the store down, and warns (once per
/// 10 s per backend and operation).
pub(crate) fn store_failed(backend: &'static str, op: &'static str, e: &dyn std::fmt::Display) {
    store_up(backend, false);
    metrics::counter!(m::STATE_STORE_ERRORS_TOTAL, "backend" => backend, "op" => op).increment(1);
    if let Some(suppressed) = crate::telemetry::throttle(
        &format!("state store:{backend}:{op}"),
        std::time::Duration::from_secs(10),
    ) {
        tracing::warn!(backend, op, error = %e, suppressed, "state store call failed; ranking from the in-process view");
    }
}

/// `[state]`: where live state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// `embedded`: a write-ahead log in `dir`, one process. `redis`: a log
    /// shared by every replica in the Redis at `redis_url` (see
    /// [`redis`]).
    pub backend: String,
    /// `redis://host:port/db`, for `backend = "redis"`.
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys (`<prefix>:events`, `<prefix>:id:<id>`,
    /// `<prefix>:snapshot`, …): one per app sharing a Redis.
    pub redis_prefix: String,
    /// Stream entries past which a replica snapshots the view into Redis
    /// and trims the stream.
    pub redis_compact_entries: u64,
    /// The log's folder (created if needed; one process at a time).
    pub dir: std::path::PathBuf,
    /// fsync every acknowledged batch before answering 200 (`true`), or
    /// leave it to the kernel (`false`: an OS crash may lose the last few
    /// seconds; a process crash loses nothing either way).
    pub fsync: bool,
    /// Most events in one `POST /v1/events`.
    pub max_batch_events: usize,
    /// Interactions kept per user, newest first.
    pub max_history: usize,
    /// Past this many bytes of log, the view is written as a snapshot and
    /// the log starts over (embedded backend).
    pub compact_bytes: u64,
    /// How long an event id is remembered for deduplication (`"7d"`),
    /// from when the server accepted it.
    pub dedupe_window: String,
    /// Users whose events live state holds at most; past it the least
    /// recently active are forgotten (`cascade_live_state_evictions_total`).
    pub max_users: usize,
    /// Event ids remembered at most (~35 bytes each); past it the oldest
    /// are forgotten before `dedupe_window` ends (counted the same way).
    pub max_ids: usize,
    /// How far after the server's clock an event's `timestamp` may be
    /// (`"5m"`): a later one is a 400 naming it, so a wrong clock or a
    /// bad value cannot push every windowed counter out of its window.
    pub max_clock_skew: String,
}

impl StateConfig {
    /// The bounds of live state. Durations were checked with the config.
    pub fn limits(&self) -> online::Limits {
        online::Limits {
            max_history: self.max_history,
            dedupe_window_ms: crate::data::schema::duration_ms(&self.dedupe_window)
                .unwrap_or(7 * 86_400_000),
            max_users: self.max_users,
            max_ids: self.max_ids,
        }
    }

    /// [`StateConfig::max_clock_skew`] in ms.
    pub fn max_skew_ms(&self) -> i64 {
        crate::data::schema::duration_ms(&self.max_clock_skew).unwrap_or(300_000)
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: "embedded".into(),
            redis_url: None,
            redis_prefix: "cascade".into(),
            redis_compact_entries: 100_000,
            dir: ".cache/state".into(),
            fsync: true,
            max_batch_events: 1000,
            max_history: 500,
            compact_bytes: 64 * 1024 * 1024,
            dedupe_window: "7d".into(),
            max_users: 1_000_000,
            max_ids: 10_000_000,
            max_clock_skew: "5m".into(),
        }
    }
}

/// Where accepted events go before they are applied.
pub enum Store {
    /// The write-ahead log in `state.dir`; one batch at a time.
    Embedded(std::sync::Mutex<log::EventLog>),
    /// The log every replica shares.
    Redis(Box<redis::RedisStore>),
}

/// One event, validated. Ids are the caller's; rows are the catalog's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Interaction {
        id: String,
        user_id: String,
        item_id: String,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        timestamp: i64,
        /// The `/v1/rank` answer it came from (API.md §3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// What the outcome was attributed to, found when it was accepted
        /// (never from the caller).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attribution: Option<Box<crate::feedback::Attribution>>,
    },
    /// Inserts or updates an item: `fields` (checked against the schema)
    /// on top of its current values, and/or its availability.
    Item {
        id: String,
        item_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        available: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields: Option<Map<String, Value>>,
        timestamp: i64,
    },
    /// Inserts or updates a user.
    User {
        id: String,
        user_id: String,
        fields: Map<String, Value>,
        timestamp: i64,
    },
}

impl Event {
    pub fn id(&self) -> &str {
        match self {
            Event::Interaction { id, .. } | Event::Item { id, .. } | Event::User { id, .. } => id,
        }
    }

    /// Epoch milliseconds.
    pub fn timestamp(&self) -> i64 {
        match self {
            Event::Interaction { timestamp, .. }
            | Event::Item { timestamp, .. }
            | Event::User { timestamp, .. } => *timestamp,
        }
    }

    /// Whether it sets catalog fields (inserts or updates an entity).
    pub fn sets_fields(&self) -> bool {
        matches!(
            self,
            Event::Item {
                fields: Some(_),
                ..
            } | Event::User { .. }
        )
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Interaction { .. } => "interaction",
            Event::Item { .. } => "item",
            Event::User { .. } => "user",
        }
    }
}

/// `{"events": [...]}` as the caller sent it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    pub events: Vec<Map<String, Value>>,
}

fn id_field(e: &Map<String, Value>, key: &str, at: &str) -> Result<String, String> {
    match e.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("{at}.{key}: missing")),
        Some(v) => Err(format!(
            "{at}.{key}: must be a string of 1 to 128 characters, got {v}"
        )),
    }
}

/// Checks every event of a batch against the catalog; the first problem is
/// an error naming it (`events[2].item_id: …`) and nothing is applied.
/// `now_ms` is the default timestamp; one more than `max_skew_ms` after it
/// is refused.
pub fn validate(
    body: EventsBody,
    catalog: &Catalog,
    max_events: usize,
    now_ms: i64,
    max_skew_ms: i64,
) -> Result<Vec<Event>, String> {
    if body.events.is_empty() {
        return Err("events: must hold at least one event".into());
    }
    if body.events.len() > max_events {
        return Err(format!(
            "events: at most {max_events} events per call, got {}",
            body.events.len()
        ));
    }
    let mut out = Vec::with_capacity(body.events.len());
    for (i, e) in body.events.iter().enumerate() {
        let at = format!("events[{i}]");
        let allowed: &[&str] = match e.get("type").and_then(Value::as_str) {
            Some("interaction") => &[
                "type",
                "id",
                "user_id",
                "item_id",
                "kind",
                "value",
                "timestamp",
                "request_id",
            ],
            Some("item") => &["type", "id", "item_id", "available", "timestamp", "fields"],
            Some("user") => &["type", "id", "user_id", "timestamp", "fields"],
            Some(t) => {
                return Err(format!(
                    "{at}.type: \"{t}\" is not one of interaction, item, user"
                ))
            }
            None => return Err(format!("{at}.type: missing (interaction, item or user)")),
        };
        if let Some(k) = e.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("{at}.{k}: unknown field"));
        }
        let id = id_field(e, "id", &at)?;
        let timestamp = match e.get("timestamp") {
            None | Some(Value::Null) => now_ms,
            Some(v) => match v.as_i64() {
                Some(t) if t > now_ms.saturating_add(max_skew_ms) => {
                    return Err(format!(
                        "{at}.timestamp: {t} is more than {} s after the server's clock ({now_ms}); see state.max_clock_skew",
                        max_skew_ms / 1000
                    ))
                }
                Some(t) if t > 0 => t,
                _ => {
                    return Err(format!(
                        "{at}.timestamp: must be epoch milliseconds (a positive integer), got {v}"
                    ))
                }
            },
        };
        let fields = match e.get("fields") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(v) => return Err(format!("{at}.fields: must be an object, got {v}")),
        };
        // Items this batch inserts before the event at hand count as known.
        let known = |id: &str| {
            catalog.items.row(id).or_else(|| {
                out.iter()
                    .any(|e| matches!(e, Event::Item { item_id, .. } if item_id == id))
                    .then_some(u32::MAX)
            })
        };
        if e["type"].as_str() == Some("user") {
            let user_id = id_field(e, "user_id", &at)?;
            let fields =
                fields.ok_or_else(|| format!("{at}.fields: missing (the user's fields to set)"))?;
            changes::check(&catalog.schema.users, &fields, &known)
                .map_err(|m| format!("{at}.{m}"))?;
            out.push(Event::User {
                id,
                user_id,
                fields,
                timestamp,
            });
            continue;
        }
        let item_id = id_field(e, "item_id", &at)?;
        out.push(match e["type"].as_str() {
            Some("interaction") => {
                let user_id = id_field(e, "user_id", &at)?;
                if known(&item_id).is_none() {
                    return Err(format!(
                        "{at}.item_id: \"{item_id}\" is not in the catalog"
                    ));
                }
                let kind = match e.get("kind") {
                    Some(Value::String(k)) if catalog.schema.event_kinds.contains(k) => k.clone(),
                    other => {
                        return Err(format!(
                            "{at}.kind: must be one of the schema's events.kinds {:?}, got {}",
                            catalog.schema.event_kinds,
                            other.map_or("nothing".into(), Value::to_string)
                        ))
                    }
                };
                let value = match e.get("value") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_f64()
                            .filter(|x| x.is_finite())
                            .ok_or_else(|| format!("{at}.value: must be a finite number, got {v}"))?,
                    ),
                };
                let request_id = match e.get("request_id") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if crate::http::valid_request_id(s) => Some(s.clone()),
                    Some(v) => {
                        return Err(format!(
                            "{at}.request_id: must be 1 to 128 visible ASCII characters (a /v1/rank answer's request_id), got {v}"
                        ))
                    }
                };
                Event::Interaction {
                    id,
                    user_id,
                    item_id,
                    kind,
                    value,
                    timestamp,
                    request_id,
                    attribution: None,
                }
            }
            _ => {
                let available = match e.get("available") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(v) => return Err(format!("{at}.available: must be true or false, got {v}")),
                };
                if let Some(fields) = &fields {
                    changes::check(&catalog.schema.items, fields, &known)
                        .map_err(|m| format!("{at}.{m}"))?;
                } else if available.is_none() {
                    return Err(format!(
                        "{at}: an item event sets \"fields\", \"available\" or both"
                    ));
                }
                if known(&item_id).is_none() && fields.is_none() {
                    return Err(format!(
                        "{at}.item_id: \"{item_id}\" is not in the catalog (a new item needs \"fields\")"
                    ));
                }
                Event::Item {
                    id,
                    item_id,
                    available,
                    fields,
                    timestamp,
                }
            }
        });
    }
    Ok(out)
}
