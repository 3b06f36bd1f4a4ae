//! Integration tests: each starts the real server on `127.0.0.1:0` over the
//! shipped model repository (or a temporary copy of it) and talks HTTP.
//! One binary, so fixtures compile once.

mod backends;
mod common;
mod data;
mod deploy;
mod errors;
mod events;
mod experiments;
mod feedback;
mod hardening;
mod lifecycle;
mod metrics;
mod oip;
mod python_client;
mod quality;
mod rank;
mod replicas;
