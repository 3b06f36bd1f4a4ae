//! One error type for the HTTP layer and the single, exhaustive mapping
//! from lower layers' errors to status codes and the documented bodies:
//! `{"error": {"code", "message"}}` on Cascade's own paths, and
//! `{"error": "message"}` on the inference-protocol paths (`/v2/*`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::model::ModelError;
use crate::pipeline::RankError;

/// Which error body shape a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    Cascade,
    InferenceProtocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (with 503 `overloaded`).
    pub retry_after: Option<u64>,
    /// Methods the path does allow, sent as `Allow` (with 405).
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401, sent with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method not allowed here; use {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// 413 for an answer that would exceed `server.max_response_bytes`.
    pub fn response_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the response would exceed the limit of {limit} bytes (server.max_response_bytes); ask for fewer rows or outputs, or for binary outputs"
            ),
        )
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    pub fn overloaded(retry_after: u64) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "server is overloaded; retry later",
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 503 when the shared state store cannot record events.
    pub fn store_unavailable() -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_store_unavailable",
            "the shared state store is unavailable; nothing was recorded, retry (ids make retries safe)",
        );
        e.retry_after = Some(1);
        e
    }

    pub fn model_not_ready(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_not_ready", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn into_response(self, shape: ErrorShape) -> Response<Full<Bytes>> {
        let body = match shape {
            ErrorShape::Cascade => serde_json::json!({
                "error": {"code": self.code, "message": self.message}
            }),
            ErrorShape::InferenceProtocol => serde_json::json!({"error": self.message}),
        };
        let mut resp = super::body::json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cascade-admin\""),
            );
        }
        resp
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        match e {
            ModelError::NotFound(_) | ModelError::VersionNotFound { .. } => {
                ApiError::not_found(e.to_string())
            }
            ModelError::BadInput { .. } => ApiError::invalid(e.to_string()),
            ModelError::Unavailable => ApiError::model_not_ready(e.to_string()),
            ModelError::Inference(detail) => {
                tracing::error!(error = %detail, "inference failed");
                ApiError::internal("inference failed")
            }
            // Load errors name files; they are for logs and the admin API.
            ModelError::Load { .. } => {
                tracing::error!(error = %e, "model load error on a request path");
                ApiError::internal("model could not be loaded")
            }
        }
    }
}

impl From<RankError> for ApiError {
    fn from(e: RankError) -> ApiError {
        match e {
            RankError::Invalid(msg) => ApiError::invalid(msg),
            RankError::Unavailable(msg) => ApiError::model_not_ready(msg),
            RankError::Overloaded => ApiError::overloaded(1),
        }
    }
}
