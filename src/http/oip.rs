//! Open Inference Protocol (v2) REST routes, the protocol KServe, Triton
//! and MLServer clients speak:
//!
//! ```text
//! GET  /v2                                          server metadata
//! GET  /v2/health/live | /v2/health/ready
//! GET  /v2/models/{name}[/versions/{v}]             model metadata
//! GET  /v2/models/{name}[/versions/{v}]/ready
//! POST /v2/models/{name}[/versions/{v}]/infer       JSON or binary tensors
//! ```

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::body::{self, bytes_response, json_response};
use super::error::ApiError;
use super::oip_codec::{self, InferRequest};
use crate::model::{repository::VersionState, TensorSpec};
use crate::state::AppState;

/// The binary tensor data extension's header: length of the JSON part.
pub const HEADER_LEN: &str = "inference-header-content-length";

type Resp = Result<Response<Full<Bytes>>, ApiError>;

fn only(method: &Method, allowed: Method, allow: &'static str) -> Result<(), ApiError> {
    if *method == allowed {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allow))
    }
}

/// Routes `/v2…`; `segments` are the path's parts after `v2`.
pub async fn route(state: &AppState, req: Request<Bytes>, segments: &[&str]) -> Resp {
    let method = req.method().clone();
    match segments {
        [] => {
            only(&method, Method::GET, "GET")?;
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "name": "cascade",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data"],
                }),
            ))
        }
        ["health", "live"] => {
            only(&method, Method::GET, "GET")?;
            Ok(json_response(StatusCode::OK, &json!({"live": true})))
        }
        ["health", "ready"] => {
            only(&method, Method::GET, "GET")?;
            let ready = state.is_ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Ok(json_response(status, &json!({"ready": ready})))
        }
        ["models", name, rest @ ..] => {
            let (version, action) = match rest {
                [] => (None, None),
                [a] => (None, Some(*a)),
                ["versions", v] => (Some(*v), None),
                ["versions", v, a] => (Some(*v), Some(*a)),
                _ => return Err(ApiError::not_found("no such path")),
            };
            match action {
                None => {
                    only(&method, Method::GET, "GET")?;
                    metadata(state, name, version)
                }
                Some("ready") => {
                    only(&method, Method::GET, "GET")?;
                    model_ready(state, name, version)
                }
                Some("infer") => {
                    only(&method, Method::POST, "POST")?;
                    infer(state, req, name, version).await
                }
                Some(_) => Err(ApiError::not_found("no such path")),
            }
        }
        _ => Err(ApiError::not_found("no such path")),
    }
}

fn tensor_meta(specs: &[TensorSpec]) -> serde_json::Value {
    specs
        .iter()
        .map(|s| json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.wire_shape()}))
        .collect()
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Resp {
    let model = state.registry.get(name, version)?;
    let entry = state.registry.entry(name)?;
    let versions: Vec<String> = entry
        .versions
        .iter()
        .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
        .map(|(v, _)| v.to_string())
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "name": model.name,
            "versions": versions,
            "platform": "onnx",
            "backend": model.backend.kind().as_str(),
            "role": model.spec.role,
            "inputs": tensor_meta(model.backend.inputs()),
            "outputs": tensor_meta(model.backend.outputs()),
        }),
    ))
}

fn model_ready(state: &AppState, name: &str, version: Option<&str>) -> Resp {
    let model = state.registry.get(name, version)?;
    let ready = !state.draining.load(Ordering::Relaxed);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(
        status,
        &json!({"name": model.name, "version": model.version.to_string(), "ready": ready}),
    ))
}

async fn infer(state: &AppState, req: Request<Bytes>, name: &str, version: Option<&str>) -> Resp {
    let model = state.registry.get(name, version)?;
    let (parts, bytes) = req.into_parts();
    body::require_identity_encoding(&parts.headers)?;
    let header_len = match parts.headers.get(HEADER_LEN) {
        None => {
            body::require_json(&parts.headers)?;
            None
        }
        Some(v) => {
            match body::media_type(&parts.headers).as_deref() {
                None | Some("application/json") | Some("application/octet-stream") => {}
                Some(other) => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "Content-Type must be application/octet-stream or application/json with binary tensors, got \"{other}\""
                    )))
                }
            }
            Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::invalid("Inference-Header-Content-Length: must be a byte count")
                    })?,
            )
        }
    };
    let (json_part, binary) = match header_len {
        None => (&bytes[..], &[][..]),
        Some(n) if n <= bytes.len() => bytes.split_at(n),
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "Inference-Header-Content-Length: {n} exceeds the body's {} bytes",
                bytes.len()
            )))
        }
    };
    let request: InferRequest = body::parse_json(json_part)?;
    let inputs = oip_codec::decode_inputs(&request, binary, model.backend.inputs(), &model.name)?;
    let selected = oip_codec::select_outputs(&request, model.backend.outputs())?;
    let _admitted = state.admit(1)?;
    let outputs = state.pool.run(model.clone(), inputs).await?;
    let (body, json_len) = oip_codec::encode_response(
        &model.name,
        model.version,
        request.id.as_deref(),
        &outputs,
        &selected,
        state.config.server.max_response_bytes,
    )?;
    Ok(match json_len {
        None => bytes_response(StatusCode::OK, "application/json", body.into()),
        Some(n) => {
            let mut resp = bytes_response(StatusCode::OK, "application/octet-stream", body.into());
            resp.headers_mut().insert(HEADER_LEN, HeaderValue::from(n));
            resp
        }
    })
}
