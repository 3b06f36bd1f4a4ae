//! Logs and metrics: one place that sets them up.
//!
//! - [`metrics`]: every metric name, the buckets, the Prometheus recorder.
//! - [`drift`]: feature and score distributions against the shipped profiles (PSI).
//! - [`jsonl`]: append-only JSON-lines files a crash cannot tear (the shadow log).

pub mod drift;
pub(crate) mod jsonl;
pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, wins
/// over `logging.level`. Text logs are coloured only on a terminal (and
/// never with `NO_COLOR` set), so files and log shippers get plain text.
/// Safe to call twice (the second call is a no-op).
pub fn init_logging(config: &LoggingConfig) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether a line about a persistent condition may be logged now: at most
/// once per `every` for each `key` (a stage and model, say), so a broken
/// model is one line every few seconds, not one per request. Returns how
/// many were held back since the last line, to log with it.
pub fn throttle(key: &str, every: std::time::Duration) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<Option<HashMap<String, (Instant, u64)>>> = Mutex::new(None);
    let mut guard = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match map.get_mut(key) {
        Some((last, held)) if now.duration_since(*last) < every => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            let suppressed = *held;
            *last = now;
            *held = 0;
            Some(suppressed)
        }
        None => {
            map.insert(key.to_string(), (now, 0));
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_persistent_condition_is_logged_once_per_interval() {
        let every = Duration::from_millis(200);
        let allowed = (0..1000)
            .filter(|_| throttle("test:a", every).is_some())
            .count();
        assert_eq!(allowed, 1, "1000 failures in a burst log one line");
        // Another key has its own budget.
        assert_eq!(throttle("test:b", every), Some(0));
        std::thread::sleep(every);
        assert_eq!(
            throttle("test:a", every),
            Some(999),
            "says how many were held back"
        );
    }
}
