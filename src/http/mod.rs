//! HTTP: routing, bodies, errors. Two listeners share one router; which
//! paths a request may reach depends on the listener it came in on, so
//! admin paths are never served publicly.
//!
//! - [`oip`] + [`oip_codec`]: the Open Inference Protocol (`/v2/*`).
//! - [`ops`]: health, readiness and the admin API.
//! - [`body`], [`error`]: limits, content types, the error bodies.

pub mod body;
pub mod error;
pub mod oip;
pub mod oip_codec;
pub mod ops;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::state::AppState;
use error::{ApiError, ErrorShape};

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Entry point for every request on either listener. Never fails: every
/// error becomes a response in the route's documented shape.
pub async fn handle(
    state: Arc<AppState>,
    listener: Listener,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (shape, result) = match (listener, segments.as_slice()) {
        (_, ["v2", rest @ ..]) if listener == Listener::Public => (
            ErrorShape::InferenceProtocol,
            oip::route(&state, req, rest).await,
        ),
        (_, ["healthz"]) | (_, ["readyz"]) => (
            ErrorShape::Cascade,
            ops::health(&state, &method, segments[0]),
        ),
        (Listener::Admin, ["admin", rest @ ..]) => {
            (ErrorShape::Cascade, ops::admin(&state, &method, rest))
        }
        _ => (
            ErrorShape::Cascade,
            Err(ApiError::not_found(format!("no route for {path}"))),
        ),
    };
    let response = result.unwrap_or_else(|e| e.into_response(shape));
    tracing::debug!(
        %method, path, status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64, "request"
    );
    Ok(response)
}
