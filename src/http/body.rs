//! Request bodies in, JSON out: size limit (413), content type (415),
//! body timeout, and response helpers.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::error::ApiError;
use crate::config::ServerConfig;

/// Reads the whole body, refusing more than `server.max_body_bytes` (413)
/// and bodies that do not arrive within `server.body_timeout_ms` (400).
pub async fn read_limited(
    body: Incoming,
    headers: &HeaderMap,
    server: &ServerConfig,
) -> Result<Bytes, ApiError> {
    let limit = server.max_body_bytes;
    let timeout = Duration::from_millis(server.body_timeout_ms);
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::payload_too_large(limit));
        }
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::invalid(format!(
            "request body not received within {} ms",
            timeout.as_millis()
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(limit))
        }
        Ok(Err(_)) => Err(ApiError::invalid("request body could not be read")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The media type of the request without parameters, lower-cased; `None`
/// when absent.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()
        .unwrap_or("?");
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Accepts `application/json` (or no content type at all); anything else is 415.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers).as_deref() {
        None | Some("application/json") => Ok(()),
        Some(other) => Err(ApiError::unsupported_media_type(format!(
            "Content-Type must be application/json, got \"{other}\""
        ))),
    }
}

/// Refuses compressed request bodies, which Cascade does not decode.
pub fn require_identity_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(()),
        Some(_) => Err(ApiError::unsupported_media_type(
            "Content-Encoding is not supported; send the body uncompressed",
        )),
    }
}

/// Parses a JSON body, turning serde's message into a 400 that names the
/// field and position.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(ApiError::invalid(
                "request body is empty; expected a JSON object",
            ))
        }
        Some(_) => return Err(ApiError::invalid("request body must be a JSON object")),
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("request body is not valid JSON: {inner}"))
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("response values serialise");
    bytes_response(status, "application/json", body.into())
}

pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
