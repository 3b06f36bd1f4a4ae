//! `POST /v1/rank` and `POST /v1/rank/batch` (API.md §1).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::body::{self, json_response};
use super::error::ApiError;
use crate::pipeline::request::RankRequest;
use crate::pipeline::Pipeline;
use crate::state::AppState;

type Resp = Result<Response<Full<Bytes>>, ApiError>;

/// `segments` are the path's parts after `v1`.
/// `request_id` is the HTTP request's id, used when a rank request has none.
pub async fn route(
    state: &AppState,
    req: Request<Bytes>,
    segments: &[&str],
    request_id: &str,
) -> Resp {
    let batch = match segments {
        ["rank"] => false,
        ["rank", "batch"] => true,
        _ => return Err(ApiError::not_found("no such path")),
    };
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    let pipeline = state
        .pipeline
        .as_ref()
        .ok_or_else(|| ApiError::not_found("ranking is not enabled on this server"))?;
    let (parts, bytes) = req.into_parts();
    let variant = forced_variant(&parts.headers, pipeline)?;
    body::require_identity_encoding(&parts.headers)?;
    body::require_json(&parts.headers)?;
    if batch {
        let value: BatchBody = body::parse_json(&bytes)?;
        let max = state.config.ranking.max_batch_requests;
        if value.requests.len() > max {
            return Err(ApiError::invalid(format!(
                "requests may hold at most {max} rank requests, got {}",
                value.requests.len()
            )));
        }
        // A batch costs what its rankings cost.
        let _admitted = state.admit(value.requests.len())?;
        let answers =
            futures_util::future::join_all(value.requests.into_iter().enumerate().map(|(i, r)| {
                rank_value(
                    state,
                    pipeline,
                    r,
                    format!("{request_id}.{i}"),
                    variant.clone(),
                )
            }))
            .await;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "responses": answers }),
        ))
    } else {
        let request: RankRequest = body::parse_json(&bytes)?;
        let _admitted = state.admit(1)?;
        let response = rank(state, pipeline, request, request_id.to_string(), variant).await?;
        Ok(json_response(StatusCode::OK, &response))
    }
}

/// The header that forces an experiment arm, for testing.
pub const VARIANT_HEADER: &str = "x-cascade-variant";

fn forced_variant(
    headers: &http::HeaderMap,
    pipeline: &Pipeline,
) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(VARIANT_HEADER) else {
        return Ok(None);
    };
    let name = value.to_str().unwrap_or("");
    let experiments = pipeline.experiments();
    if experiments.arm(name).is_none() {
        let arms: Vec<&str> = experiments.arms.iter().map(|a| a.name.as_str()).collect();
        return Err(ApiError::invalid(format!(
            "X-Cascade-Variant: no experiment arm named {name:?} (arms: {arms:?})"
        )));
    }
    Ok(Some(name.to_string()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    requests: Vec<Value>,
}

async fn rank(
    state: &AppState,
    pipeline: &Pipeline,
    request: RankRequest,
    fallback_id: String,
    variant: Option<String>,
) -> Result<crate::pipeline::request::RankResponse, ApiError> {
    let mut valid = request.validate(&pipeline.limits, pipeline.schema(), || fallback_id)?;
    valid.variant = variant;
    Ok(pipeline
        .rank_cached(&state.registry, &state.pool, valid)
        .await?)
}

/// One slot of a batch: the response, or the error object in its place.
async fn rank_value(
    state: &AppState,
    pipeline: &Pipeline,
    value: Value,
    fallback_id: String,
    variant: Option<String>,
) -> Value {
    let result = match serde_path_to_error::deserialize::<_, RankRequest>(value) {
        Err(e) => Err(ApiError::invalid(format!("{}: {}", e.path(), e.inner()))),
        Ok(request) => rank(state, pipeline, request, fallback_id, variant).await,
    };
    match result {
        Ok(response) => serde_json::to_value(response).expect("responses serialise"),
        Err(e) => json!({"error": {"code": e.code, "message": e.message}}),
    }
}
