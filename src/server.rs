//! The serving loop: accepts on both listeners, serves HTTP/1.1 with hyper,
//! and shuts down gracefully: stop accepting, mark not-ready, let in-flight
//! requests finish (up to the grace period), return.
//!
//! `run` takes bound listeners and a shutdown future, so tests can bind
//! `127.0.0.1:0` and stop the server whenever they like.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::http::{handle, Listener};
use crate::state::AppState;

/// Serves until `shutdown` resolves, then drains. Returns once every
/// connection has finished or the grace period has passed.
pub async fn run(
    public: TcpListener,
    admin: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    state.spawn_poller();
    let graceful = GracefulShutdown::new();
    let header_timeout = Duration::from_millis(state.config.server.header_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        let (accepted, listener) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            a = public.accept() => (a, Listener::Public),
            a = admin.accept() => (a, Listener::Admin),
        };
        match accepted {
            Ok((stream, _peer)) => {
                serve_connection(stream, listener, &state, &graceful, header_timeout)
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    state.start_draining();
    drop(public);
    drop(admin);
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; closing remaining connections"
        );
    }
}

fn serve_connection(
    stream: TcpStream,
    listener: Listener,
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    header_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let state = state.clone();
    let service = service_fn(move |req| handle(state.clone(), listener, req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
