//! Prometheus metrics: every name defined once, here; seconds and `_total`
//! by convention; histogram buckets chosen for a service answering in a few
//! milliseconds; labels bounded (route templates, model names from the
//! repository, never user or item ids).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests by listener, route template and status code.
pub const HTTP_REQUESTS_TOTAL: &str = "cascade_http_requests_total";
/// Request latency by route template, from first byte of the request to the response.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "cascade_http_request_duration_seconds";
/// One model inference (one batch) by model, version and backend.
pub const MODEL_INFERENCE_DURATION_SECONDS: &str = "cascade_model_inference_duration_seconds";
/// Rows per inference by model.
pub const MODEL_BATCH_ROWS: &str = "cascade_model_batch_rows";
/// Time an inference waited for a free inference thread.
pub const INFERENCE_QUEUE_WAIT_SECONDS: &str = "cascade_inference_queue_wait_seconds";
/// Inference failures by model.
pub const MODEL_ERRORS_TOTAL: &str = "cascade_model_errors_total";
/// 1 for every model version that serves, labelled name/version/backend.
pub const MODEL_INFO: &str = "cascade_model_info";
/// A ready model version's ranking quality on its labelled golden set, by
/// name, version and metric (`auc`); absent for versions without labels.
pub const MODEL_QUALITY: &str = "cascade_model_quality";
/// Model versions loaded at start or reload, by outcome (ready / failed; a
/// version the quality gate refuses counts as failed).
pub const MODEL_LOADS_TOTAL: &str = "cascade_model_loads_total";
/// Per pipeline stage (retrieve, filter, rerank, select): time spent.
pub const STAGE_DURATION_SECONDS: &str = "cascade_stage_duration_seconds";
/// Per pipeline stage: candidates passed on.
pub const STAGE_CANDIDATES_OUT: &str = "cascade_stage_candidates_out_rows";
/// Answers that did not come from the full cascade, by reason
/// (cold_start, deadline, model_error, overload).
pub const RANK_FALLBACKS_TOTAL: &str = "cascade_rank_fallbacks_total";
/// Caller-supplied candidate ids that are not in the catalog (dropped).
pub const UNKNOWN_CANDIDATES_TOTAL: &str = "cascade_unknown_candidates_total";
/// Feature values that had to take their default, by model and feature.
pub const FEATURE_DEFAULTED_TOTAL: &str = "cascade_feature_defaulted_total";
/// Feature rows assembled, by model (the denominator of coverage).
pub const FEATURE_ROWS_TOTAL: &str = "cascade_feature_rows_total";
/// Jobs waiting in a model's batch queue, sampled when a batch closes.
pub const BATCH_QUEUE_DEPTH: &str = "cascade_batch_queue_depth";
/// Time a job waited in the batch queue before its batch ran.
pub const BATCH_QUEUE_WAIT_SECONDS: &str = "cascade_batch_queue_wait_seconds";
/// Rows dropped before inference, by reason (deadline, caller_gone, overload).
pub const BATCH_ROWS_DROPPED_TOTAL: &str = "cascade_batch_rows_dropped_total";
/// Cache look-ups by cache and result (hit / miss).
pub const CACHE_REQUESTS_TOTAL: &str = "cascade_cache_requests_total";
/// Entries evicted (size or TTL) by cache.
pub const CACHE_EVICTIONS_TOTAL: &str = "cascade_cache_evictions_total";
/// Entries held, by cache.
pub const CACHE_ENTRIES: &str = "cascade_cache_entries";
/// The response cache's estimated size against `ranking.cache.max_bytes`.
pub const RESPONSE_CACHE_BYTES: &str = "cascade_response_cache_bytes";
/// Scores held by the score cache, against `ranking.score_cache.max_scores`.
pub const SCORE_CACHE_SCORES: &str = "cascade_score_cache_scores";
/// Scores a model produced, by model (sampled rows): the response
/// distribution, to see a collapsed or shifted model without labels.
pub const MODEL_SCORE: &str = "cascade_model_score";
/// Population stability index of a feature over the last window against
/// the model's reference profile.
pub const FEATURE_PSI: &str = "cascade_feature_psi";
/// Population stability index of the score over the last window.
pub const SCORE_PSI: &str = "cascade_score_psi";
/// 1 when the server is ready (models loaded, warmed up, vetted), 0 while
/// starting or draining.
pub const READY: &str = "cascade_ready";
/// Ranking answers by experiment arm and outcome (`ok`, a fallback
/// reason, or `error`), cache hits included.
pub const RANK_REQUESTS_TOTAL: &str = "cascade_rank_requests_total";
/// Ranking latency by experiment arm, cache hits included.
pub const RANK_DURATION_SECONDS: &str = "cascade_rank_duration_seconds";
/// Shadow work by shadow and outcome: `compared`, `dropped` (queue full,
/// shed before any live work), `error`.
pub const SHADOW_REQUESTS_TOTAL: &str = "cascade_shadow_requests_total";
/// Per shadowed request: share of the live top-k the shadow also ranks top-k.
pub const SHADOW_OVERLAP: &str = "cascade_shadow_overlap_ratio";
/// Per shadowed request: Kendall's τ-b between live and shadow orders.
pub const SHADOW_RANK_CORRELATION: &str = "cascade_shadow_rank_correlation";
/// Per shadowed row: shadow score − live score.
pub const SHADOW_SCORE_DELTA: &str = "cascade_shadow_score_delta";
/// Shadow inference time, and time from offer to start.
pub const SHADOW_DURATION_SECONDS: &str = "cascade_shadow_duration_seconds";
pub const SHADOW_LAG_SECONDS: &str = "cascade_shadow_lag_seconds";
/// Shadow jobs waiting or running.
pub const SHADOW_QUEUE_DEPTH: &str = "cascade_shadow_queue_depth";
/// Reloads and rollbacks by model and outcome (`swapped`, `unchanged`,
/// `refused`, `rolled_back`).
pub const MODEL_RELOADS_TOTAL: &str = "cascade_model_reloads_total";
/// Connections open now, by listener (bounded by `server.max_connections`
/// and `server.max_admin_connections`).
pub const OPEN_CONNECTIONS: &str = "cascade_open_connections";
/// Ranking and inference requests admitted and not yet answered (a batch
/// counts each ranking it holds), against `server.max_in_flight`.
pub const IN_FLIGHT: &str = "cascade_in_flight_requests";
/// Events by type and outcome (`accepted`, `duplicate`, `rejected`).
pub const EVENTS_TOTAL: &str = "cascade_events_total";
/// Time from an events call arriving to its batch applied (log write and
/// fsync included).
pub const EVENT_APPLY_SECONDS: &str = "cascade_event_apply_seconds";
/// Size of the event write-ahead log.
pub const EVENT_LOG_BYTES: &str = "cascade_event_log_bytes";
/// Failed writes to the event log (each a 500 to the caller).
pub const EVENT_LOG_ERRORS_TOTAL: &str = "cascade_event_log_errors_total";
/// 1 while the state store takes writes, by backend (`embedded`, `redis`).
pub const STATE_STORE_UP: &str = "cascade_state_store_up";
/// Failed state-store calls by backend and operation (`append`: an events
/// call refused; `follow`: reading other replicas' events, Redis).
pub const STATE_STORE_ERRORS_TOTAL: &str = "cascade_state_store_errors_total";
/// From an event batch being recorded (the embedded log, or the shared log
/// in Redis) to this process applying it.
pub const EVENT_APPLY_LAG_SECONDS: &str = "cascade_event_apply_lag_seconds";
/// Embedded log compactions (a snapshot written, the log started over).
pub const STATE_COMPACTIONS_TOTAL: &str = "cascade_state_compactions_total";
/// Live state held in memory, by part: `users` and `items` with events,
/// `buckets` of their windowed counters.
pub const LIVE_STATE_SIZE: &str = "cascade_live_state_size";
/// Live state forgotten to stay within its bounds, by part (`users`: the
/// least recently active, past `state.max_users`).
pub const LIVE_STATE_EVICTIONS_TOTAL: &str = "cascade_live_state_evictions_total";
/// Times the Redis follower panicked and was started over.
pub const STATE_FOLLOWER_RESTARTS_TOTAL: &str = "cascade_state_follower_restarts_total";
/// Times this replica re-seeded a shared state that Redis had lost.
pub const STATE_RESEEDS_TOTAL: &str = "cascade_state_reseeds_total";
/// Outcomes attributed to answers this process served, by arm and kind.
pub const OUTCOMES_TOTAL: &str = "cascade_outcomes_total";
/// Outcome events accepted here, by what attribution found (`result`:
/// attributed, unknown_request, expired, item_not_shown, no_request_id).
pub const OUTCOME_ATTRIBUTION_TOTAL: &str = "cascade_outcome_attribution_total";
/// Attributed outcomes on requests a shadow ran on, by shadow and kind;
/// and those the shadow ranked within the answer's length.
pub const SHADOW_OUTCOMES_TOTAL: &str = "cascade_shadow_outcomes_total";
pub const SHADOW_OUTCOMES_TOP_K_TOTAL: &str = "cascade_shadow_outcomes_top_k_total";
/// Answers kept for attribution, and those dropped before the window ended
/// (past `feedback.max_recent_answers`).
pub const RECENT_ANSWERS: &str = "cascade_recent_answers";
pub const RECENT_ANSWERS_DROPPED_TOTAL: &str = "cascade_recent_answers_dropped_total";
/// The experiment's sample-ratio-mismatch p-value (χ² of the rankings per
/// arm against the configured shares).
pub const EXPERIMENT_SRM_P_VALUE: &str = "cascade_experiment_srm_p_value";
/// Ranking-log records (`result`: written, dropped (queue full), failed
/// (the disk refused the write)).
pub const RANKINGS_LOGGED_TOTAL: &str = "cascade_rankings_logged_total";
/// Answers this replica could not share with the others (its writer's
/// queue was full).
pub const SHARED_ANSWERS_DROPPED_TOTAL: &str = "cascade_shared_answers_dropped_total";
/// Time to lay the catalog changes from events over the snapshot (a new
/// catalog generation, after each batch that changed items or users).
pub const CATALOG_REBUILD_SECONDS: &str = "cascade_catalog_rebuild_seconds";
/// Items and users that events inserted or changed, by `entity`.
pub const CATALOG_CHANGES: &str = "cascade_catalog_changes";
/// 1, labelled with the build's version.
pub const BUILD_INFO: &str = "cascade_build_info";

/// Latency buckets (seconds): 50 µs to 2.5 s, dense in the 0.5–20 ms range.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Scores are probabilities: twenty equal bins.
const SCORE_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85,
    0.9, 0.95, 1.0,
];
/// Ratios and correlations: steps of 0.1 over [-1, 1].
const UNIT_BUCKETS: &[f64] = &[
    -0.9, -0.8, -0.7, -0.6, -0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
    0.8, 0.9, 1.0,
];
/// Score differences: symmetric, fine near zero.
const DELTA_BUCKETS: &[f64] = &[
    -0.5, -0.2, -0.1, -0.05, -0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
];
/// Rows per batch: powers of two up to 4096.
const ROW_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether [`install`] has run: metric handles taken before it are inert.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// Installs the process-wide recorder once and returns its handle. Later
/// calls (tests start many servers in one process) share it.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), ROW_BUCKETS))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(MODEL_SCORE.into()), SCORE_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(SHADOW_OVERLAP.into()), UNIT_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(SHADOW_RANK_CORRELATION.into()),
                    UNIT_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(SHADOW_SCORE_DELTA.into()), DELTA_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // Histograms buffer samples until upkeep folds them into buckets:
        // do it every few seconds, not only on scrape, so memory stays
        // bounded when nobody scrapes.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            })
            .expect("spawn metrics upkeep thread");
        handle
    })
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}
