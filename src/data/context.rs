//! A request's `context` object, checked against the schema's context
//! fields: each value typed and bounded, errors naming `context.<field>`;
//! keys the schema does not declare are accepted and ignored. Values are
//! kept as `f32` (a category as its code), absent ones as `None` until the
//! request is served, when defaults (including the clock's) fill them in.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::schema::{Default, Field, FieldType, Schema};

/// Validated context values, one per declared context field, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context(pub Vec<Option<f32>>);

fn bounds(f: &Field) -> String {
    match (f.min, f.max) {
        (Some(lo), Some(hi)) => format!(" between {lo} and {hi}"),
        (Some(lo), None) => format!(" of at least {lo}"),
        (None, Some(hi)) => format!(" of at most {hi}"),
        (None, None) => String::new(),
    }
}

fn within(f: &Field, x: f64) -> bool {
    f.min.is_none_or(|lo| x >= lo) && f.max.is_none_or(|hi| x <= hi)
}

impl Context {
    /// Checks `ctx` against the schema's context fields.
    pub fn parse(schema: &Schema, ctx: &Map<String, Value>) -> Result<Context, String> {
        let mut out = Vec::with_capacity(schema.context.len());
        for f in &schema.context {
            let key = format!("context.{}", f.name);
            let Some(v) = ctx.get(&f.name).filter(|v| !v.is_null()) else {
                if f.required {
                    return Err(format!("{key} is required"));
                }
                out.push(None);
                continue;
            };
            out.push(match &f.ty {
                FieldType::Number => match v.as_f64() {
                    Some(x) if x.is_finite() && within(f, x) && x.abs() <= f32::MAX as f64 => {
                        Some(x as f32)
                    }
                    _ => return Err(format!("{key} must be a number{}, got {v}", bounds(f))),
                },
                FieldType::Integer => match v.as_i64() {
                    Some(n) if within(f, n as f64) && n.unsigned_abs() <= 1 << 24 => Some(n as f32),
                    _ => return Err(format!("{key} must be an integer{}, got {v}", bounds(f))),
                },
                FieldType::Category(vocab) => {
                    let s = v
                        .as_str()
                        .ok_or_else(|| format!("{key} must be a string, got {v}"))?;
                    match f.code_of(s, false) {
                        Ok(code) => code.map(|c| c as f32),
                        Err(_) => {
                            let values = vocab.values();
                            let shown: Vec<&String> = values.iter().take(20).collect();
                            let more = if values.len() > 20 { ", …" } else { "" };
                            return Err(format!("{key}: {v} is not one of {shown:?}{more}"));
                        }
                    }
                }
                // The schema allows nothing else in the context.
                _ => None,
            });
        }
        Ok(Context(out))
    }

    /// The values a request is served with, at `now`: absent ones take
    /// their default (the clock's for `now.hour` / `now.weekday`), else NaN
    /// (missing).
    pub fn resolve(&self, schema: &Schema, now: SystemTime) -> Vec<f32> {
        let (hour, weekday) = utc_hour_weekday(now);
        schema
            .context
            .iter()
            .zip(&self.0)
            .map(|(f, v)| match (v, f.default) {
                (Some(x), _) => *x,
                (None, Some(Default::Value(d))) => d as f32,
                (None, Some(Default::NowHour)) => hour as f32,
                (None, Some(Default::NowWeekday)) => weekday as f32,
                (None, None) => f32::NAN,
            })
            .collect()
    }
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
    use std::time::Duration;

    fn schema() -> Schema {
        Schema::parse(
            r#"
            [vocabularies]
            size = ["S", "M", "L", "other"]
            [items]
            fields.x = { type = "number" }
            [context]
            fields.hour = { type = "integer", min = 0, max = 23, default = "now.hour" }
            fields.weekday = { type = "integer", min = 0, max = 6, default = "now.weekday" }
            fields.budget = { type = "number", min = 0 }
            fields.size = { type = "category", vocabulary = "size", unknown = "missing" }
            fields.fit = { type = "category", vocabulary = "size", unknown = "other" }
            fields.channel = { type = "category", values = ["web", "app"], required = true }
            "#,
        )
        .unwrap()
    }

    fn parse(json: &str) -> Result<Context, String> {
        Context::parse(&schema(), &serde_json::from_str(json).unwrap())
    }

    #[test]
    fn values_are_typed_and_defaults_resolved() {
        let c =
            parse(r#"{"hour": 21, "size": "L", "fit": "XL", "channel": "app", "device": "ios"}"#)
                .unwrap();
        assert_eq!(
            c.0,
            vec![Some(21.0), None, None, Some(2.0), Some(3.0), Some(1.0)]
        );
        // 2026-11-29 (a Sunday) 21:30 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(1_795_987_800);
        let v = c.resolve(&schema(), t);
        assert_eq!(v[..2], [21.0, 6.0]);
        assert!(v[2].is_nan(), "no default: missing");
        let c = parse(r#"{"size": "XXL", "channel": "web"}"#).unwrap();
        assert_eq!(c.0[3], None, "unknown = missing");
        assert_eq!(utc_hour_weekday(UNIX_EPOCH), (0, 3));
    }

    #[test]
    fn errors_name_the_field() {
        for (json, want) in [
            (
                r#"{"hour": 24, "channel": "web"}"#,
                "context.hour must be an integer between 0 and 23, got 24",
            ),
            (
                r#"{"hour": "9", "channel": "web"}"#,
                "context.hour must be an integer",
            ),
            (
                r#"{"budget": -1, "channel": "web"}"#,
                "context.budget must be a number of at least 0, got -1",
            ),
            (
                r#"{"size": 3, "channel": "web"}"#,
                "context.size must be a string, got 3",
            ),
            (
                r#"{"channel": "tv"}"#,
                "context.channel: \"tv\" is not one of [\"web\", \"app\"]",
            ),
            (r#"{}"#, "context.channel is required"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.starts_with(want), "{json}: {e}");
        }
    }
}
