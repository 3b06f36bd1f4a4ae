//! Cascade: a low-latency online inference and multi-stage ranking server.
//!
//! A request flows through the modules in this order:
//!
//! - [`server`]: accepts connections on the public and admin listeners
//!   (hyper + tokio) and shuts down gracefully.
//! - [`http`]: routes, request bodies, the error contract of `API.md`, and
//!   the Open Inference Protocol (`/v2/*`).
//! - [`model`]: the model repository, the backend trait with its tract and
//!   ONNX Runtime implementations, golden-set vetting, and the bounded pool
//!   that runs inference off the reactor.
//! - [`pipeline`]: the ranking cascade (retrieve, filter, rerank, select).
//! - [`data`]: the app's declared data — schema, catalog snapshot, context,
//!   and the feature language compiled into plans.
//! - [`catalog`]: the loaded catalog and the vector index over it.
//! - [`events`]: live events (`POST /v1/events`): the write-ahead log and
//!   the in-process view ranking reads.
//! - [`feedback`]: what users did with the answers: outcomes attributed to
//!   the answers, arms and shadows that produced them, and the reports.
//! - [`telemetry`]: logging, metric names, drift.
//!
//! [`eval`] replays held-out requests offline; [`offline`] computes declared
//! features for historical rows (`cascade features`).
//!
//! [`config`] is the typed configuration; [`state`] is what handlers share;
//! [`snapshot`] holds what requests read and rarely changes.
//! `main.rs` only parses the command line and starts things.

pub mod catalog;
pub mod config;
pub mod data;
pub mod eval;
pub mod events;
pub mod feedback;
pub(crate) mod http;
pub mod model;
pub mod offline;
pub mod pipeline;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
