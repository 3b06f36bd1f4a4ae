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
use crate::events::{self, EventsBody, Store};
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
        &pipeline.catalog(),
        state.config.state.max_batch_events,
        now_ms,
        state.config.state.max_skew_ms(),
    )
    .map_err(|e| {
        metrics::counter!(m::EVENTS_TOTAL, "type" => "batch", "outcome" => "rejected").increment(1);
        ApiError::invalid(e)
    })?;
    let _admitted = state.admit(1)?;
    let state = state.clone();
    // Logging (fsync, or a Redis round trip) blocks: off the reactor.
    let outcome = tokio::task::spawn_blocking(move || {
        let pipeline = state.pipeline.as_ref().expect("checked above");
        let store = state.events.as_ref().expect("ranking on: a store");
        let mut duplicates = 0;
        let accepted = match store {
            Store::Embedded(log) => {
                // One batch at a time: deduplicate, append (and fsync),
                // apply, so the log's order is the view's.
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let (mut fresh, dups) = pipeline.online.fresh(batch);
                duplicates += dups;
                // Outcomes find their answers before they are logged: the
                // log keeps what each was attributed to.
                attribute(pipeline, &mut fresh);
                if !fresh.is_empty() {
                    let written = log.append(&fresh, now_ms).map_err(|e| {
                        metrics::counter!(m::EVENT_LOG_ERRORS_TOTAL).increment(1);
                        events::store_failed("embedded", "append", &e);
                        tracing::error!(error = %e, "event log write failed; batch not applied");
                        ApiError::internal("events could not be stored; nothing was recorded, retry later (ids make retries safe)")
                    })?;
                    events::store_up("embedded", true);
                    metrics::gauge!(m::EVENT_LOG_BYTES).increment(written as f64);
                }
                let recorded = std::time::Instant::now();
                pipeline.online.apply_arrived(&fresh, now_ms);
                pipeline.feedback.count(&fresh);
                pipeline.feedback.log_outcomes(&fresh);
                metrics::histogram!(m::EVENT_APPLY_LAG_SECONDS)
                    .record(recorded.elapsed().as_secs_f64());
                if log.bytes() > state.config.state.compact_bytes {
                    compact(pipeline, &mut log);
                }
                fresh
            }
            Store::Redis(redis) => {
                // Redis decides which ids are new, across replicas; the
                // follower applies them in the shared log's order.
                let (mut fresh, dups) = pipeline.online.fresh(batch);
                duplicates += dups;
                attribute(pipeline, &mut fresh);
                let n = fresh.len();
                let recorded = redis.append(fresh).map_err(|e| {
                    tracing::debug!(error = %e, "events refused");
                    ApiError::store_unavailable(match e {
                        events::redis::Unavailable::Reset => "the shared state store lost its data and is being re-seeded from a replica; nothing was recorded, retry in a moment",
                        events::redis::Unavailable::Down(_) => "the shared state store is unavailable; the batch may or may not have been recorded: retry it with the same ids (a retry never counts twice)",
                    })
                })?;
                duplicates += n - recorded.fresh.len();
                pipeline.feedback.log_outcomes(&recorded.fresh);
                recorded.fresh
            }
        };
        pipeline.online.report_size();
        for e in &accepted {
            metrics::counter!(m::EVENTS_TOTAL, "type" => e.type_name(), "outcome" => "accepted")
                .increment(1);
        }
        Ok::<_, ApiError>((accepted.len(), duplicates))
    })
    .await
    .map_err(|_| ApiError::internal("events could not be stored"))??;
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

/// Attributes the outcomes of `fresh` to the answers they name.
fn attribute(pipeline: &crate::pipeline::Pipeline, fresh: &mut [events::Event]) {
    if pipeline.feedback.kinds().is_empty() {
        return;
    }
    let catalog = pipeline.catalog();
    pipeline
        .feedback
        .attribute(fresh, &|id| catalog.items.row(id));
}

/// Moves the log to a new file and writes the view as the snapshot
/// covering the old ones (under the log's lock: no batch is appended
/// meanwhile; rankings go on). A failure leaves a folder that replays
/// whole; the next batch past the threshold tries again.
fn compact(pipeline: &crate::pipeline::Pipeline, log: &mut events::log::EventLog) {
    let started = Instant::now();
    let before = log.bytes();
    let mut snapshot_bytes = 0u64;
    let result = log.compact(|w| {
        let mut counted = Counting { inner: w, n: 0 };
        pipeline.online.write_snapshot(&mut counted)?;
        snapshot_bytes = counted.n;
        Ok(())
    });
    match result {
        Ok(()) => {
            metrics::gauge!(m::EVENT_LOG_BYTES).set(0.0);
            metrics::counter!(m::STATE_COMPACTIONS_TOTAL).increment(1);
            tracing::info!(
                log_bytes = before,
                snapshot_bytes,
                millis = started.elapsed().as_millis() as u64,
                "event log compacted into a snapshot"
            );
        }
        Err(e) => {
            events::store_failed("embedded", "compact", &e);
        }
    }
}

/// Counts the bytes written through it.
struct Counting<'a> {
    inner: &'a mut dyn std::io::Write,
    n: u64,
}

impl std::io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
