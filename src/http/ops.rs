//! Operations endpoints: `/healthz` (process up), `/readyz` (models loaded,
//! warmed up and vetted; not during shutdown), and the admin API.

use std::sync::atomic::Ordering;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::body::{self, json_response};
use super::error::ApiError;
use crate::model::repository::{LifecycleError, VersionState};
use crate::pipeline::experiments::ExperimentsConfig;
use crate::pipeline::shadow::ShadowSpec;
use crate::pipeline::Pipeline;
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

/// `/admin/*` (admin listener only). With `server.admin_token` set, every
/// call needs `Authorization: Bearer <token>`.
pub async fn admin(state: &Arc<AppState>, req: Request<Bytes>, segments: &[&str]) -> Resp {
    if let Some(token) = &state.config.server.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        match given {
            Some(given) if token.matches(given) => {}
            Some(_) => return Err(ApiError::unauthorized("the bearer token is not valid")),
            None => {
                return Err(ApiError::unauthorized(
                    "admin calls need an Authorization: Bearer <token> header",
                ))
            }
        }
    }
    let method = req.method().clone();
    match segments {
        ["models"] => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            Ok(json_response(StatusCode::OK, &models(state)))
        }
        ["models", name, action @ ("reload" | "rollback")] => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("POST"));
            }
            lifecycle(state, name, action).await
        }
        ["shadow"] => {
            let pipeline = ranking(state)?;
            match method {
                Method::GET => Ok(json_response(StatusCode::OK, &pipeline.shadow.describe())),
                Method::PUT => {
                    let body: ShadowBody = read_json(&req)?;
                    pipeline
                        .set_shadows(&state.registry, body.shadows, "shadows")
                        .map_err(ApiError::invalid)?;
                    Ok(json_response(StatusCode::OK, &pipeline.shadow.describe()))
                }
                _ => Err(ApiError::method_not_allowed("GET, PUT")),
            }
        }
        ["experiments"] => {
            let pipeline = ranking(state)?;
            match method {
                Method::GET => Ok(json_response(StatusCode::OK, &*pipeline.experiments())),
                Method::PUT => {
                    let body: ExperimentsConfig = read_json(&req)?;
                    pipeline
                        .set_experiments(&state.registry, body, "")
                        .map_err(ApiError::invalid)?;
                    Ok(json_response(StatusCode::OK, &*pipeline.experiments()))
                }
                _ => Err(ApiError::method_not_allowed("GET, PUT")),
            }
        }
        ["experiments", "report"] | ["shadow", "report"] => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            let feedback = &ranking(state)?.feedback;
            let report = if segments[0] == "experiments" {
                feedback.report()
            } else {
                feedback.shadow_report()
            };
            Ok(json_response(StatusCode::OK, &report))
        }
        _ => Err(ApiError::not_found("no such admin path")),
    }
}

/// The credentials of an `Authorization: Bearer <token>` header. The scheme
/// name is case-insensitive and may be followed by several spaces (RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowBody {
    shadows: Vec<ShadowSpec>,
}

fn ranking(state: &AppState) -> Result<&Pipeline, ApiError> {
    state
        .pipeline
        .as_ref()
        .ok_or_else(|| ApiError::not_found("ranking is not enabled on this server"))
}

fn read_json<T: serde::de::DeserializeOwned>(req: &Request<Bytes>) -> Result<T, ApiError> {
    body::require_json(req.headers())?;
    body::parse_json(req.body())
}

/// Reload or rollback, on a blocking thread: loading and vetting a
/// version takes a while and must not stall the reactor.
async fn lifecycle(state: &Arc<AppState>, name: &str, action: &str) -> Resp {
    let (state, name_owned, reload) = (state.clone(), name.to_string(), action == "reload");
    let result = tokio::task::spawn_blocking(move || {
        if reload {
            state.reload_model(&name_owned)
        } else {
            state.rollback_model(&name_owned)
        }
    })
    .await
    .map_err(|_| ApiError::internal("reload task failed"))?;
    match result {
        Ok(report) => Ok(json_response(StatusCode::OK, &report)),
        Err(LifecycleError::NotFound(_)) => {
            Err(ApiError::not_found(format!("model \"{name}\" not found")))
        }
        Err(LifecycleError::Refused(why)) => Err(ApiError::invalid(format!(
            "{action} of \"{name}\" refused, serving version unchanged: {why}"
        ))),
    }
}

/// Every model, its versions, which one serves, each version's vetting
/// (with its quality on the golden set), and the quality gate's setting.
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
                        "state": if entry.retired.contains(v) { "retired" } else { "ready" },
                        "vetting": m.vetting,
                    }),
                    VersionState::Failed { reason, .. } => json!({
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
    let gate = &state.config.models;
    json!({
        "models": models,
        "quality_gate": {"enabled": gate.quality_gate, "tolerance": gate.quality_tolerance},
    })
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in [
            "Bearer tok-123",
            "bearer tok-123",
            "BEARER tok-123",
            "Bearer   tok-123",
        ] {
            assert_eq!(
                bearer_token(header.as_bytes()),
                Some(&b"tok-123"[..]),
                "{header}"
            );
        }
        for header in [
            "Basic dG9rOjE=",
            "Bearer",
            "Bearer ",
            "Bearertok-123",
            "Bear tok",
        ] {
            assert_eq!(bearer_token(header.as_bytes()), None, "{header}");
        }
    }
}
