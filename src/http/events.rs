//! `POST /v1/events` (API.md §2): a batch of events, validated as a whole
//! (one bad event is a 400 naming it, and nothing is applied), written to
//! the write-ahead log, then applied — visible to the next `/v1/rank`
//! before the 200 goes out.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::body::{self, json_response};
use super::error::ApiError;
use crate::events::{self, EventsBody};
use crate::state::AppState;
use crate::telemetry::metrics as m;

pub async fn route(
    state: &Arc<AppState>,
    req: Request<Bytes>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    let started = Instant::now();
    let pipeline = state
        .pipeline
        .as_ref()
        .ok_or_else(|| ApiError::not_found("ranking is not enabled on this server"))?;
    body::require_identity_encoding(req.headers())?;
    body::require_json(req.headers())?;
    let parsed: EventsBody = body::parse_json(req.body())?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let batch = events::validate(
        parsed,
        &pipeline.catalog,
        state.config.state.max_batch_events,
        now_ms,
    )
    .map_err(|e| {
        metrics::counter!(m::EVENTS_TOTAL, "type" => "batch", "outcome" => "rejected").increment(1);
        ApiError::invalid(e)
    })?;
    let _admitted = state.admit(1)?;
    let state = state.clone();
    // Logging (and fsync) blocks: off the reactor.
    let outcome = tokio::task::spawn_blocking(move || {
        let pipeline = state.pipeline.as_ref().expect("checked above");
        let log = state.events.as_ref().expect("ranking on: a log");
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        let (fresh, duplicates) = pipeline.online.fresh(batch);
        if !fresh.is_empty() {
            let written = log.append(&fresh).inspect_err(|e| {
                metrics::counter!(m::EVENT_LOG_ERRORS_TOTAL).increment(1);
                tracing::error!(error = %e, "event log write failed; batch not applied");
            })?;
            metrics::gauge!(m::EVENT_LOG_BYTES).increment(written as f64);
        }
        let applied = pipeline.online.apply(&pipeline.catalog, &fresh);
        pipeline.online.report_size();
        for e in &fresh {
            metrics::counter!(m::EVENTS_TOTAL, "type" => e.type_name(), "outcome" => "accepted")
                .increment(1);
        }
        Ok::<_, std::io::Error>((applied.accepted, duplicates + applied.duplicates))
    })
    .await
    .map_err(|_| ApiError::internal("events could not be stored"))?
    .map_err(|_| ApiError::internal("events could not be stored"))?;
    let (accepted, duplicates) = outcome;
    if duplicates > 0 {
        metrics::counter!(m::EVENTS_TOTAL, "type" => "any", "outcome" => "duplicate")
            .increment(duplicates as u64);
    }
    metrics::histogram!(m::EVENT_APPLY_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(json_response(
        StatusCode::OK,
        &json!({"accepted": accepted, "duplicates": duplicates}),
    ))
}
