//! Operations endpoints: `/healthz` (process up), `/readyz` (models loaded,
//! warmed up and vetted; not during shutdown), and the admin API.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::body::json_response;
use super::error::ApiError;
use crate::model::repository::VersionState;
use crate::state::AppState;

type Resp = Result<Response<Full<Bytes>>, ApiError>;

pub fn health(state: &AppState, method: &Method, which: &str) -> Resp {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    if which == "healthz" {
        return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    if state.is_ready() {
        Ok(json_response(StatusCode::OK, &json!({"status": "ready"})))
    } else {
        let why = if state.draining.load(Ordering::Relaxed) {
            "shutting down"
        } else {
            "starting"
        };
        Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": why}),
        ))
    }
}

/// `GET /metrics`: the Prometheus text exposition.
pub fn metrics(method: &Method) -> Resp {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    Ok(super::body::bytes_response(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        crate::telemetry::metrics::render().into(),
    ))
}

pub fn admin(state: &AppState, method: &Method, segments: &[&str]) -> Resp {
    match segments {
        ["models"] => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            Ok(json_response(StatusCode::OK, &models(state)))
        }
        _ => Err(ApiError::not_found("no such admin path")),
    }
}

/// Every model, its versions, which one serves, and each version's vetting.
fn models(state: &AppState) -> serde_json::Value {
    let models: Vec<_> = state
        .registry
        .entries()
        .iter()
        .map(|entry| {
            let versions: Vec<_> = entry
                .versions
                .iter()
                .map(|(v, s)| match s {
                    VersionState::Ready(m) => json!({
                        "version": v.to_string(),
                        "state": "ready",
                        "vetting": m.vetting,
                    }),
                    VersionState::Failed(reason) => json!({
                        "version": v.to_string(),
                        "state": "failed",
                        "error": reason,
                    }),
                })
                .collect();
            json!({
                "name": entry.name,
                "role": entry.spec.role,
                "backend": entry.backend.as_str(),
                "serving": entry.serving.to_string(),
                "versions": versions,
            })
        })
        .collect();
    json!({"models": models})
}
