//! The serving loop: accepts on both listeners, serves HTTP/1.1 with hyper,
//! and shuts down the way a load balancer needs.
//!
//! - Each listener has its own connection cap (`server.max_connections`,
//!   `server.max_admin_connections`): a permit is taken *before* `accept`, so
//!   beyond the cap new connections wait in the kernel's backlog instead of
//!   costing a task each, and a flood on the public port never locks the
//!   operator out of the admin port.
//! - Connections have separate idle and header deadlines ([`conn`]).
//! - Shutdown, on the first SIGTERM: readiness drops at once while the
//!   listeners keep accepting for `server.drain_delay_ms` (so the balancer
//!   sees the 503 and moves traffic away, and keep-alive clients are told
//!   `Connection: close`); then accepting stops, in-flight requests finish
//!   (up to `server.shutdown_grace_ms`), idle connections close, `run`
//!   returns. SIGINT skips the drain delay (nobody balances an interactive
//!   run). A second signal ends the process at once (`main`).
//!
//! `run` takes bound listeners and a shutdown future, so tests can bind
//! `127.0.0.1:0` and stop the server whenever they like.

pub mod conn;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::{handle, Listener};
use crate::state::AppState;
use crate::telemetry::metrics as m;

/// How the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM (an orchestrator): drain for `server.drain_delay_ms` first.
    Terminate,
    /// SIGINT (Ctrl-C): stop accepting at once, still finish in-flight work.
    Interrupt,
}

/// Serves until `shutdown` resolves, then drains. Returns once every
/// connection has finished or the grace period has passed.
pub async fn run(
    public: TcpListener,
    admin: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = Stop>,
) {
    state.spawn_poller();
    let server = &state.config.server;
    let graceful = GracefulShutdown::new();
    let public_cap = Arc::new(Semaphore::new(server.max_connections));
    let admin_cap = Arc::new(Semaphore::new(server.max_admin_connections));
    let drain_delay = Duration::from_millis(server.drain_delay_ms);
    // Resolves when accepting must stop: after the signal and, for SIGTERM,
    // the drain delay during which readiness is already down.
    let stop_accepting = {
        let state = state.clone();
        async move {
            let how = shutdown.await;
            state.start_draining();
            if how == Stop::Terminate && !drain_delay.is_zero() {
                tracing::info!(
                    drain_delay_ms = drain_delay.as_millis() as u64,
                    "draining: not ready, still accepting"
                );
                tokio::time::sleep(drain_delay).await;
            }
        }
    };
    tokio::pin!(stop_accepting);
    loop {
        let (permit, accepted, listener) = tokio::select! {
            biased;
            _ = &mut stop_accepting => break,
            (p, a) = accept_within(&public, &public_cap) => (p, a, Listener::Public),
            (p, a) = accept_within(&admin, &admin_cap) => (p, a, Listener::Admin),
        };
        match accepted {
            Ok((stream, _peer)) => serve_connection(stream, listener, permit, &state, &graceful),
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    drop(public);
    drop(admin);
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: no longer accepting; finishing in-flight requests"
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

/// A connection permit, then a connection: at the cap, `accept` is not
/// called and new connections wait in the backlog. Cancel-safe (a dropped
/// future returns its permit; `accept` loses nothing).
async fn accept_within(
    listener: &TcpListener,
    cap: &Arc<Semaphore>,
) -> (
    OwnedSemaphorePermit,
    std::io::Result<(TcpStream, std::net::SocketAddr)>,
) {
    let permit = cap
        .clone()
        .acquire_owned()
        .await
        .expect("connection semaphores are never closed");
    (permit, listener.accept().await)
}

fn serve_connection(
    stream: TcpStream,
    listener: Listener,
    permit: OwnedSemaphorePermit,
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let server = &state.config.server;
    let clock = Arc::new(conn::Clock::new(
        Duration::from_millis(server.idle_timeout_ms),
        Duration::from_millis(server.header_timeout_ms),
    ));
    let io = TokioIo::new(conn::TimedIo::new(stream, clock.clone()));
    let state = state.clone();
    let service = service_fn(move |req| {
        let (state, clock) = (state.clone(), clock.clone());
        async move {
            clock.busy();
            let response = handle(state, listener, req).await;
            clock.idle();
            response
        }
    });
    let conn = http1::Builder::new()
        // Header and idle deadlines are the clock's (see `conn`).
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    let conn = graceful.watch(conn);
    metrics::gauge!(m::OPEN_CONNECTIONS, "listener" => listener.as_str()).increment(1.0);
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        metrics::gauge!(m::OPEN_CONNECTIONS, "listener" => listener.as_str()).decrement(1.0);
    });
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), saying which.
pub async fn shutdown_signal() -> Stop {
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
    let stop = tokio::select! {
        _ = ctrl_c => Stop::Interrupt,
        _ = term => Stop::Terminate,
    };
    tracing::info!(signal = ?stop, "shutdown signal received");
    stop
}
