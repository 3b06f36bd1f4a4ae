//! HTTP: routing, bodies, errors. Two listeners share one router; which
//! paths a request may reach depends on the listener it came in on, so
//! admin paths are never served publicly.
//!
//! - [`oip`] + [`oip_codec`]: the Open Inference Protocol (`/v2/*`).
//! - [`rank`]: the ranking API (`/v1/rank`, `/v1/rank/batch`).
//! - [`events`]: live events (`/v1/events`).
//! - [`ops`]: health, readiness and the admin API.
//! - [`body`], [`error`]: limits, content types, the error bodies.

pub mod body;
pub mod error;
pub mod events;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Public,
    Admin,
}

/// Entry point for every request on either listener. Never fails: every
/// error becomes a response in the route's documented shape.
///
/// The body is read first, for every route (see [`body::read_body`]); a body
/// that cannot be read is answered with `Connection: close`, since unread
/// bytes are left on the connection. While the server drains, every answer
/// says `Connection: close` so keep-alive clients move to other replicas.
pub async fn handle(
    state: Arc<AppState>,
    listener: Listener,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let started = Instant::now();
    let (parts, incoming) = req.into_parts();
    let path = parts.uri.path().to_string();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let shape = if listener == Listener::Public && segments.first() == Some(&"v2") {
        ErrorShape::InferenceProtocol
    } else {
        ErrorShape::Cascade
    };
    // One id per request, on every log line and echoed in `X-Request-Id`: a
    // rank request's own `request_id`, else the caller's `X-Request-Id`
    // when it is a sane token, else a fresh one.
    let header_id = parts
        .headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map(str::to_string);
    let method = parts.method.clone();
    let body = body::read_body(incoming, &parts.headers, &state.config.server).await;
    let request_id = match (&body, segments.as_slice()) {
        (Ok(bytes), ["v1", "rank"]) if listener == Listener::Public => body_request_id(bytes),
        _ => None,
    }
    .or(header_id)
    .unwrap_or_else(new_request_id);
    let span = tracing::info_span!("request", request_id = %request_id);
    let respond = async {
        let (mut response, close) = match body {
            Err(body::BodyError(e)) => (e.into_response(shape), true),
            Ok(bytes) => {
                let req = Request::from_parts(parts, bytes);
                let response = dispatch(&state, listener, req, &segments, shape, &request_id).await;
                (response, false)
            }
        };
        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        if close || state.draining.load(std::sync::atomic::Ordering::Relaxed) {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        finish(listener, &segments, &method, &path, started, response)
    };
    Ok(respond.instrument(span).await)
}

/// The request-id header, read and echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// What a request id may be: 1 to 128 visible ASCII characters, so that it
/// can be echoed in a header and logged as it is.
pub fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The `request_id` of a rank request's body, when it has a valid one
/// (anything else is left for the request's own validation to refuse).
fn body_request_id(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        request_id: Option<String>,
    }
    serde_json::from_slice::<Id>(bytes)
        .ok()?
        .request_id
        .filter(|s| valid_request_id(s))
}

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
    state: &Arc<AppState>,
    listener: Listener,
    req: Request<Bytes>,
    segments: &[&str],
    shape: ErrorShape,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let result = match (listener, segments) {
        (Listener::Public, ["v2", rest @ ..]) => oip::route(state, req, rest).await,
        (Listener::Public, ["v1", "events"]) => events::route(state, req).await,
        (Listener::Public, ["v1", rest @ ..]) => rank::route(state, req, rest, request_id).await,
        (_, ["healthz"]) | (_, ["readyz"]) => ops::health(state, req.method(), segments[0]),
        (Listener::Admin, ["admin", rest @ ..]) => ops::admin(state, req, rest).await,
        (Listener::Admin, ["metrics"]) => ops::metrics(req.method()),
        _ => Err(ApiError::not_found(format!(
            "no route for {}",
            req.uri().path()
        ))),
    };
    result.unwrap_or_else(|e| e.into_response(shape))
}

/// An admission permit for `n` rankings or inferences: held until the
/// answer is ready, refused at once (503 `overloaded`) when the server
/// already runs `server.max_in_flight`. Taken only after the body has been
/// read and parsed, so slow or broken uploads never hold one.
pub struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    n: u32,
    gauge: metrics::Gauge,
}

impl AppState {
    /// Admits `n` units of work (a batch of `n` rankings counts `n`; never
    /// more than the whole capacity, so any batch can be admitted).
    pub fn admit(&self, n: usize) -> Result<Admitted, ApiError> {
        let n = n.clamp(1, self.config.server.max_in_flight) as u32;
        let permit = self
            .admission
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| ApiError::overloaded(1))?;
        self.in_flight.increment(n as f64);
        Ok(Admitted {
            _permit: permit,
            n,
            gauge: self.in_flight.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.decrement(self.n as f64);
    }
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
    record_request(listener, route, status, elapsed.as_secs_f64());
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

/// Counts a request and records its duration through handles kept per
/// thread by (listener, route, status): label values are a bounded set, and
/// the hot path then builds no label strings and does no registry look-up.
/// Until the recorder is installed nothing is kept (its handles would be
/// inert for good).
fn record_request(listener: Listener, route: &'static str, status: u16, seconds: f64) {
    type Handles = std::collections::HashMap<
        (Listener, &'static str, u16),
        (metrics::Counter, metrics::Histogram),
    >;
    thread_local! {
        static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::default();
    }
    let register = || {
        (
            metrics::counter!(
                m::HTTP_REQUESTS_TOTAL,
                "listener" => listener.as_str(), "route" => route, "status" => status.to_string()
            ),
            metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route),
        )
    };
    if !m::installed() {
        let (count, duration) = register();
        count.increment(1);
        duration.record(seconds);
        return;
    }
    HANDLES.with(|cell| {
        let mut handles = cell.borrow_mut();
        let (count, duration) = handles
            .entry((listener, route, status))
            .or_insert_with(register);
        count.increment(1);
        duration.record(seconds);
    })
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
        ["v1", "events"] => "/v1/events",
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
