//! Request bodies in, JSON out: size limit (413), content type (415),
//! body deadlines (total and minimum rate), and response helpers.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;

use super::error::ApiError;
use crate::config::ServerConfig;

/// The first second of a body is free of the rate rule: a client needs a
/// moment to start sending.
const RATE_GRACE: Duration = Duration::from_secs(1);

/// Why a body could not be read. Every case leaves unread bytes on the
/// connection, so the answer must close it.
#[derive(Debug)]
pub struct BodyError(pub ApiError);

/// Reads the whole body, refusing more than `server.max_body_bytes` (413,
/// from `Content-Length` before reading when it is declared), a body that
/// trickles in below `server.min_body_rate_bytes_per_s` after its first
/// second, and one that takes longer than `server.body_timeout_ms` in all
/// (400). Every request's body is read here, before any route runs, so a
/// rejection never leaves a half-read request on a keep-alive connection,
/// and no admission permit is held while a client uploads.
pub async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    server: &ServerConfig,
) -> Result<Bytes, BodyError> {
    let limit = server.max_body_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(BodyError(ApiError::payload_too_large(limit)));
        }
    }
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let started = tokio::time::Instant::now();
    let hard_stop = started + Duration::from_millis(server.body_timeout_ms);
    let rate = server.min_body_rate_bytes_per_s;
    let mut parts: Vec<Bytes> = Vec::new();
    let mut received = 0usize;
    loop {
        // The moment the average rate would fall below the minimum if no
        // more bytes came.
        let rate_stop = if rate == 0 {
            hard_stop
        } else {
            started + RATE_GRACE + Duration::from_secs_f64(received as f64 / rate as f64)
        };
        let deadline = rate_stop.min(hard_stop);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if deadline == hard_stop => {
                return Err(BodyError(ApiError::invalid(format!(
                    "request body not received within {} ms",
                    server.body_timeout_ms
                ))))
            }
            Err(_) => {
                return Err(BodyError(ApiError::invalid(format!(
                    "request body arrived slower than {rate} bytes/s ({received} bytes in {} ms)",
                    started.elapsed().as_millis()
                ))))
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(BodyError(ApiError::invalid(
                    "request body could not be read",
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            received += data.len();
            if received > limit {
                return Err(BodyError(ApiError::payload_too_large(limit)));
            }
            parts.push(data);
        }
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => {
            let mut all = Vec::with_capacity(received);
            for p in &parts {
                all.extend_from_slice(p);
            }
            all.into()
        }
    })
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
    // Most bodies are valid: parse without tracking the path (a third of
    // the parse's cost), and only for an error parse again to name where.
    // Either way, the value must be all there is (`{"k":1}garbage` is not
    // a JSON body).
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    if let Ok(value) = T::deserialize(&mut *de) {
        if de.end().is_ok() {
            return Ok(value);
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("request body is not valid JSON: {inner}"))
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
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
