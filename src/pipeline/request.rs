//! `POST /v1/rank` bodies (API.md §1): parsing is serde's job, bounds and
//! meaning are checked here, and every rejection names the field.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::RankError;
use crate::data::context::Context;
use crate::data::schema::Schema;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    pub request_id: Option<String>,
    pub user_id: Option<String>,
    #[serde(default)]
    pub context: Map<String, Value>,
    pub candidates: Option<Vec<String>>,
    #[serde(default)]
    pub recent_items: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub k: Option<i64>,
    pub deadline_ms: Option<i64>,
    #[serde(default)]
    pub debug: bool,
}

/// Limits a request must respect (from `[ranking]` in the config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_k: usize,
    pub max_k: usize,
    pub max_list_items: usize,
    pub default_deadline_ms: u64,
    pub max_deadline_ms: u64,
}

/// A request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub request_id: String,
    pub user_id: Option<String>,
    pub context: Context,
    pub candidates: Option<Vec<String>>,
    pub recent_items: Vec<String>,
    pub exclude: Vec<String>,
    pub k: usize,
    pub deadline_ms: u64,
    pub debug: bool,
    /// An experiment arm forced by the `X-Cascade-Variant` header.
    pub variant: Option<String>,
}

fn check_list(field: &str, list: &[String], max: usize) -> Result<(), String> {
    if list.len() > max {
        return Err(format!(
            "{field} may hold at most {max} ids, got {}",
            list.len()
        ));
    }
    if let Some(i) = list.iter().position(|id| id.is_empty() || id.len() > 128) {
        return Err(format!(
            "{field}[{i}] must be a non-empty id of at most 128 characters"
        ));
    }
    Ok(())
}

impl RankRequest {
    /// Checks bounds and, against the app's `schema`, the context.
    pub fn validate(
        self,
        limits: &Limits,
        schema: &Schema,
        fresh_id: impl FnOnce() -> String,
    ) -> Result<ValidRequest, RankError> {
        self.checked(limits, schema, fresh_id)
            .map_err(RankError::Invalid)
    }

    fn checked(
        self,
        limits: &Limits,
        schema: &Schema,
        fresh_id: impl FnOnce() -> String,
    ) -> Result<ValidRequest, String> {
        let k = match self.k {
            None => limits.default_k,
            Some(k) if k >= 1 && k as u64 <= limits.max_k as u64 => k as usize,
            Some(k) => return Err(format!("k must be between 1 and {}, got {k}", limits.max_k)),
        };
        let deadline_ms = match self.deadline_ms {
            None => limits.default_deadline_ms,
            Some(d) if d >= 1 && d as u64 <= limits.max_deadline_ms => d as u64,
            Some(d) => {
                return Err(format!(
                    "deadline_ms must be between 1 and {}, got {d}",
                    limits.max_deadline_ms
                ))
            }
        };
        if let Some(id) = &self.request_id {
            // Echoed in a header and in log lines as it is: visible ASCII
            // only (the same rule as `X-Request-Id`).
            if !crate::http::valid_request_id(id) {
                return Err(
                    "request_id must be 1 to 128 visible ASCII characters (no spaces or control characters)"
                        .into(),
                );
            }
        }
        if let Some(u) = &self.user_id {
            if u.is_empty() || u.len() > 128 {
                return Err("user_id must be 1 to 128 characters".into());
            }
        }
        if let Some(c) = &self.candidates {
            check_list("candidates", c, limits.max_list_items)?;
        }
        check_list("recent_items", &self.recent_items, limits.max_list_items)?;
        check_list("exclude", &self.exclude, limits.max_list_items)?;
        let context = Context::parse(schema, &self.context)?;
        Ok(ValidRequest {
            request_id: self.request_id.unwrap_or_else(fresh_id),
            user_id: self.user_id,
            context,
            candidates: self.candidates,
            recent_items: self.recent_items,
            exclude: self.exclude,
            k,
            deadline_ms,
            debug: self.debug,
            variant: None,
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoredItem {
    pub item_id: String,
    pub score: f32,
}

/// The stages of the cascade, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Retrieve,
    Rules,
    Filter,
    Rerank,
    Select,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Retrieve,
        Stage::Rules,
        Stage::Filter,
        Stage::Rerank,
        Stage::Select,
    ];

    /// The name in `debug` answers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Retrieve => "retrieve",
            Stage::Rules => "rules",
            Stage::Filter => "filter",
            Stage::Rerank => "rerank",
            Stage::Select => "select",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub name: Stage,
    pub candidates_in: usize,
    pub candidates_out: usize,
    pub micros: u64,
}

/// Why an answer did not come from the full cascade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    ColdStart,
    Deadline,
    ModelError,
    Overload,
}

impl Fallback {
    pub const ALL: [Fallback; 4] = [
        Fallback::ColdStart,
        Fallback::Deadline,
        Fallback::ModelError,
        Fallback::Overload,
    ];

    /// The name in answers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::ColdStart => "cold_start",
            Fallback::Deadline => "deadline",
            Fallback::ModelError => "model_error",
            Fallback::Overload => "overload",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RankResponse {
    pub request_id: String,
    pub items: Vec<ScoredItem>,
    pub variant: String,
    pub models: Map<String, Value>,
    pub fallback: Option<Fallback>,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageReport>>,
    /// The items' catalog rows, in order (what outcomes are attributed
    /// to; not part of the answer).
    #[serde(skip)]
    pub rows: Vec<u32>,
    /// What the stages scored and read for these items, when the answer
    /// was computed for a request sampled into the ranking log (a cache
    /// hit logs it too).
    #[serde(skip)]
    pub served: Option<Arc<crate::feedback::log::Served>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            default_k: 10,
            max_k: 100,
            max_list_items: 5,
            default_deadline_ms: 50,
            max_deadline_ms: 1000,
        }
    }

    fn check(json: &str) -> Result<ValidRequest, String> {
        let schema = Schema::parse(
            r#"
            [items]
            fields.x = { type = "number" }
            [context]
            fields.hour = { type = "integer", min = 0, max = 23 }
            "#,
        )
        .unwrap();
        let r: RankRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        r.validate(&limits(), &schema, || "generated".into())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_bounds() {
        let v = check("{}").unwrap();
        assert_eq!(
            (v.k, v.deadline_ms, v.request_id.as_str()),
            (10, 50, "generated")
        );
        for (json, needle) in [
            (r#"{"k": 0}"#, "k must be between 1 and 100, got 0"),
            (r#"{"k": 101}"#, "k must be between 1 and 100"),
            (r#"{"deadline_ms": 0}"#, "deadline_ms"),
            (
                r#"{"candidates": ["1","2","3","4","5","6"]}"#,
                "candidates may hold at most 5",
            ),
            (r#"{"exclude": [""]}"#, "exclude[0]"),
            (r#"{"context": {"hour": 24}}"#, "context.hour"),
            (r#"{"user_id": ""}"#, "user_id"),
        ] {
            let e = check(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn the_context_is_checked_by_the_schema() {
        let v = check(r#"{"context": {"hour": 21, "device": "ios"}}"#).unwrap();
        assert_eq!(v.context, Context(vec![Some(21.0)]));
    }
}
