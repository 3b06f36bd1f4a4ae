//! HTTP: routing, bodies, errors. Two listeners share one router; which
//! paths a request may reach depends on the listener it came in on, so
//! admin paths are never served publicly.
//!
//! - [`oip`] + [`oip_codec`]: the Open Inference Protocol (`/v2/*`).
//! - [`rank`]: the ranking API (`/v1/rank`, `/v1/rank/batch`).
//! - [`ops`]: health, readiness and the admin API.
//! - [`body`], [`error`]: limits, content types, the error bodies.

pub mod body;
pub mod error;
pub mod oip;
pub mod oip_codec;
pub mod ops;
pub mod rank;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::state::AppState;
use crate::telemetry::metrics as m;
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
    // Every log line of a request carries its id: the caller's
    // `X-Request-Id` when it is a sane token, else a fresh one. It is echoed
    // in the response and used for a rank request without `request_id`.
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = dispatch(state, listener, req, &request_id)
        .instrument(span)
        .await;
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

/// The request-id header, read and echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// A request id unique within this process and across restarts.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let boot = *BOOT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    });
    format!("{boot:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn dispatch(
    state: Arc<AppState>,
    listener: Listener,
    req: Request<Incoming>,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // Admission control: work that costs inference holds a permit for its
    // whole life; when none is left the answer is an immediate 503.
    let costly = listener == Listener::Public
        && matches!(
            segments.as_slice(),
            ["v1", ..] | ["v2", "models", .., "infer"]
        );
    let _permit = if costly {
        match state.admission.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let shape = if segments.first() == Some(&"v2") {
                    ErrorShape::InferenceProtocol
                } else {
                    ErrorShape::Cascade
                };
                let response = ApiError::overloaded(1).into_response(shape);
                return finish(listener, &segments, &method, &path, started, response);
            }
        }
    } else {
        None
    };
    let (shape, result) = match (listener, segments.as_slice()) {
        (Listener::Public, ["v2", rest @ ..]) => (
            ErrorShape::InferenceProtocol,
            oip::route(&state, req, rest).await,
        ),
        (Listener::Public, ["v1", rest @ ..]) => (
            ErrorShape::Cascade,
            rank::route(&state, req, rest, request_id).await,
        ),
        (_, ["healthz"]) | (_, ["readyz"]) => (
            ErrorShape::Cascade,
            ops::health(&state, &method, segments[0]),
        ),
        (Listener::Admin, ["admin", rest @ ..]) => {
            (ErrorShape::Cascade, ops::admin(&state, req, rest).await)
        }
        (Listener::Admin, ["metrics"]) => (ErrorShape::Cascade, ops::metrics(&method)),
        _ => (
            ErrorShape::Cascade,
            Err(ApiError::not_found(format!("no route for {path}"))),
        ),
    };
    let response = result.unwrap_or_else(|e| e.into_response(shape));
    finish(listener, &segments, &method, &path, started, response)
}

/// Records the request's metrics and log line.
fn finish(
    listener: Listener,
    segments: &[&str],
    method: &http::Method,
    path: &str,
    started: Instant,
    response: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    let route = route_template(segments);
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::counter!(
        m::HTTP_REQUESTS_TOTAL,
        "listener" => listener.as_str(), "route" => route, "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route)
        .record(elapsed.as_secs_f64());
    tracing::debug!(%method, path, status, micros = elapsed.as_micros() as u64, "request");
    response
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Admin => "admin",
        }
    }
}

/// The route a path matched, as a bounded metric label (names and
/// versions replaced by placeholders; anything unknown is `other`).
fn route_template(segments: &[&str]) -> &'static str {
    match segments {
        ["v2"] => "/v2",
        ["v2", "health", "live"] => "/v2/health/live",
        ["v2", "health", "ready"] => "/v2/health/ready",
        ["v2", "models", _] | ["v2", "models", _, "versions", _] => "/v2/models/{name}",
        ["v2", "models", _, "ready"] | ["v2", "models", _, "versions", _, "ready"] => {
            "/v2/models/{name}/ready"
        }
        ["v2", "models", _, "infer"] | ["v2", "models", _, "versions", _, "infer"] => {
            "/v2/models/{name}/infer"
        }
        ["v1", "rank"] => "/v1/rank",
        ["v1", "rank", "batch"] => "/v1/rank/batch",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["admin", "models"] => "/admin/models",
        ["admin", "models", _, "reload"] => "/admin/models/{name}/reload",
        ["admin", "models", _, "rollback"] => "/admin/models/{name}/rollback",
        ["admin", "shadow"] => "/admin/shadow",
        ["admin", "experiments"] => "/admin/experiments",
        _ => "other",
    }
}
