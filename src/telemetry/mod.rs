//! Logs and metrics: one place that sets them up.
//!
//! - [`metrics`]: every metric name, the buckets, the Prometheus recorder.
//! - [`drift`]: feature and score distributions against the shipped profiles (PSI).

pub mod drift;
pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, wins
/// over `logging.level`. Safe to call twice (the second call is a no-op).
pub fn init_logging(config: &LoggingConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
