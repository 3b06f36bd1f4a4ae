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

/// The longest error message sent: a message quoting a hostile value (a
/// megabyte-long id, say) is cut, so an error is never a copy of the input.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `message`, cut to [`MAX_MESSAGE_BYTES`] at a character boundary, saying
/// how much was cut.
pub fn cut_message(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut at = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(at) {
        at -= 1;
    }
    let cut = message.len() - at;
    message.truncate(at);
    message.push_str(&format!("… ({cut} more bytes not shown)"));
    message
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: cut_message(message.into()),
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
    /// 503 `state_store_unavailable`: `message` says whether the batch may
    /// have been recorded.
    pub fn store_unavailable(message: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_store_unavailable",
            message,
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
